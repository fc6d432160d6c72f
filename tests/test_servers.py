"""create_server and the Server object, on asyncio's loop and on ferroloop.

Real listening sockets on loopback (and on all interfaces where a test asks for
host=None). Where the exact outcome is asyncio's choice (exception types and
messages, which families get a socket), the scenario runs on asyncio's loop first
and the loop under test must match it.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import re
import socket
import ssl
import sys
from asyncio import trsock
from typing import Any

import pytest
from helpers_net import (
    HAS_IPV6,
    EchoProtocol,
    RecordingProtocol,
    ServerSide,
    asyncio_log,
    close_server,
    run_oracle,
    tcp_pair,
    tls_pair,
)
from loop_helpers import run

pytestmark = pytest.mark.timeout(60)


async def _echo_roundtrip(host: str, port: int, payload: bytes = b"ping") -> bytes:
    loop = asyncio.get_running_loop()
    tr, proto = await asyncio.wait_for(loop.create_connection(RecordingProtocol, host, port), 10)
    tr.write(payload)
    got = await proto.wait_for_bytes(len(payload))
    tr.close()
    await asyncio.wait_for(proto.lost, 10)
    return got


def test_accepted_connections_open_on_asyncio_s_schedule(loop_factory: Any) -> None:
    # asyncio opens an accepted connection in a task: the protocol factory
    # runs in the iteration after the accept, connection_made in the next.
    # Counted here in iterations after the client connected.
    async def main() -> list[tuple[str, int]]:
        loop = asyncio.get_running_loop()
        iterations = 0
        marks: list[tuple[str, int]] = []
        made = loop.create_future()

        class Marking(asyncio.Protocol):
            def __init__(self) -> None:
                marks.append(("protocol_factory", iterations))

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                marks.append(("connection_made", iterations))
                made.set_result(None)

        async def count_iterations() -> None:
            nonlocal iterations
            while not made.done():
                iterations += 1
                await asyncio.sleep(0)

        server = await loop.create_server(Marking, "127.0.0.1", 0)
        counter = asyncio.create_task(count_iterations())
        await asyncio.sleep(0)
        with socket.create_connection(server.sockets[0].getsockname()):
            start = iterations
            await asyncio.wait_for(made, 10)
        await counter
        await close_server(server)
        return [(name, at - start) for name, at in marks]

    expected = run_oracle(main)
    assert [name for name, _ in expected] == ["protocol_factory", "connection_made"]
    assert run(loop_factory, main) == expected


@pytest.mark.parametrize("how", ["create_connection", "sock_connect", "refused"])
def test_loopback_connections_complete_on_asyncio_s_schedule(loop_factory: Any, how: str) -> None:
    # A loopback handshake is over when connect() returns; asyncio still
    # learns it from its next poll. Counted in iterations after the call.
    async def main() -> list[tuple[str, int]]:
        loop = asyncio.get_running_loop()
        iterations = 0
        marks: list[tuple[str, int]] = []
        running = True

        class Marking(asyncio.Protocol):
            def __init__(self) -> None:
                marks.append(("protocol_factory", iterations))

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                marks.append(("connection_made", iterations))

        async def count_iterations() -> None:
            nonlocal iterations
            while running:
                iterations += 1
                await asyncio.sleep(0)

        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        address = server.sockets[0].getsockname()
        if how == "refused":
            server.close()
            await server.wait_closed()
        counter = asyncio.create_task(count_iterations())
        await asyncio.sleep(0)
        start = iterations
        try:
            if how == "sock_connect":
                with socket.socket() as sock:
                    sock.setblocking(False)
                    await loop.sock_connect(sock, address)
            else:
                transport, _ = await loop.create_connection(Marking, *address)
                transport.close()
            marks.append(("returned", iterations))
        except ConnectionRefusedError:
            marks.append(("refused", iterations))
        running = False
        await counter
        server.close()
        await server.wait_closed()
        return [(name, at - start) for name, at in marks]

    expected = run_oracle(main)
    assert expected[-1][0] == ("refused" if how == "refused" else "returned")
    assert run(loop_factory, main) == expected


def test_connection_accepted_just_before_the_server_closes(loop_factory: Any) -> None:
    # Accepted in one iteration, opened in the next, after close(): the
    # protocol is made, the transport cannot attach to the closed server, and
    # debug mode reports it. (asyncio then leaves the accepted socket to the
    # collector; ferroloop closes it: docs/compatibility.md.)
    async def main() -> tuple[list[str], list[str]]:
        loop = asyncio.get_running_loop()
        events: list[str] = []
        errors: list[str] = []
        loop.set_exception_handler(lambda _loop, context: errors.append(context["message"]))

        class Logging(asyncio.Protocol):
            def __init__(self) -> None:
                events.append("protocol_factory")

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                events.append("connection_made")

        server = await loop.create_server(Logging, "127.0.0.1", 0)
        with socket.create_connection(server.sockets[0].getsockname()):
            await asyncio.sleep(0)
            await asyncio.sleep(0)  # the accept's iteration
            server.close()
            for _ in range(5):
                await asyncio.sleep(0)
        await server.wait_closed()
        return events, errors

    assert run(loop_factory, main, debug=True) == (
        ["protocol_factory"],
        ["Error on transport creation for incoming connection"],
    )


def _families(server: Any) -> list[str]:
    return sorted(socket.AddressFamily(s.family).name for s in server.sockets)


def test_create_server_basic_and_server_object(loop_factory: Any) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(EchoProtocol, "127.0.0.1", 0)
        assert isinstance(server, asyncio.AbstractServer)
        assert server.get_loop() is loop
        assert server.is_serving()
        socks = server.sockets
        assert isinstance(socks, tuple) and len(socks) == 1
        assert isinstance(socks[0], trsock.TransportSocket)
        host, port = socks[0].getsockname()
        assert host == "127.0.0.1" and port > 0
        assert socks[0].getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        assert await _echo_roundtrip(host, port) == b"ping"
        server.close()
        assert not server.is_serving()
        assert server.sockets == ()
        server.close()  # idempotent
        await asyncio.wait_for(server.wait_closed(), 10)
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(asyncio.Protocol, host, port)

    run(loop_factory, main)


@pytest.mark.skipif(not HAS_IPV6, reason="no IPv6 loopback")
def test_create_server_host_list(loop_factory: Any) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(EchoProtocol, ["127.0.0.1", "::1"], 0)
        assert _families(server) == ["AF_INET", "AF_INET6"]
        for sock in server.sockets:
            host, port = sock.getsockname()[:2]
            assert await _echo_roundtrip(host, port, host.encode()) == host.encode()
        v6 = next(s for s in server.sockets if s.family == socket.AF_INET6)
        assert v6.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        await close_server(server)

    run(loop_factory, main)


@pytest.mark.parametrize("host", [None, ""])
def test_create_server_all_interfaces(loop_factory: Any, host: str | None) -> None:
    async def main() -> tuple[list[str], list[str]]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(EchoProtocol, host, 0)
        hosts = sorted(s.getsockname()[0] for s in server.sockets)
        for sock in server.sockets:
            if sock.family == socket.AF_INET:
                assert await _echo_roundtrip("127.0.0.1", sock.getsockname()[1]) == b"ping"
            elif HAS_IPV6:
                assert await _echo_roundtrip("::1", sock.getsockname()[1]) == b"ping"
        families = _families(server)
        await close_server(server)
        return families, hosts

    expected = run_oracle(main)
    assert "AF_INET" in expected[0]
    assert run(loop_factory, main) == expected


def test_create_server_family_restricts_sockets(loop_factory: Any) -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(EchoProtocol, None, 0, family=socket.AF_INET)
        fams = _families(server)
        assert server.sockets[0].getsockname()[0] == "0.0.0.0"
        await close_server(server)
        return fams

    assert run(loop_factory, main) == ["AF_INET"]


def test_create_server_flags_numerichost(loop_factory: Any) -> None:
    async def main() -> str:
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(
                EchoProtocol, "localhost", 0, flags=socket.AI_PASSIVE | socket.AI_NUMERICHOST
            )
        except OSError as exc:
            return type(exc).__name__ + str(exc.errno)
        await close_server(server)
        return "created"

    expected = run_oracle(main)
    assert expected.startswith("gaierror")
    assert run(loop_factory, main) == expected


def test_create_server_with_sock(loop_factory: Any) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = await loop.create_server(EchoProtocol, sock=sock, backlog=5)
        assert server.sockets[0].fileno() == sock.fileno()
        assert await _echo_roundtrip(*sock.getsockname()) == b"ping"
        await close_server(server)
        assert sock.fileno() == -1

    run(loop_factory, main)


def test_create_server_argument_errors(loop_factory: Any) -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        out = []
        calls = [
            lambda: loop.create_server(EchoProtocol),
            lambda: loop.create_server(EchoProtocol, "127.0.0.1", 0, sock=sock),
            lambda: loop.create_server(EchoProtocol, sock=udp),
            lambda: loop.create_server(EchoProtocol, "127.0.0.1", 0, ssl=True),
            lambda: loop.create_server(EchoProtocol, "127.0.0.1", 0, ssl_handshake_timeout=1),
            lambda: loop.create_server(
                EchoProtocol, "127.0.0.1", 0, ssl=ctx, ssl_handshake_timeout=-1
            ),
        ]
        try:
            for call in calls:
                try:
                    server = await call()
                except (ValueError, TypeError) as exc:
                    out.append(re.sub(r"fd=\d+", "fd=N", f"{type(exc).__name__}: {exc}"))
                else:
                    out.append("created")
                    await close_server(server)
        finally:
            sock.close()
            udp.close()
        return out

    expected = run_oracle(main)
    assert run(loop_factory, main) == expected


@pytest.mark.skipif(sys.version_info < (3, 13), reason="keep_alive is new in Python 3.13")
def test_create_server_keep_alive(loop_factory: Any) -> None:
    """keep_alive=True (3.13) turns on SO_KEEPALIVE for the listening socket, and
    so for the connections it accepts; the default leaves it off."""

    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        flags = []
        for keep_alive in (True, None):
            side = ServerSide()
            server = await loop.create_server(side, "127.0.0.1", 0, keep_alive=keep_alive)
            listening = server.sockets[0]
            flags.append(listening.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))
            tr, _ = await loop.create_connection(
                asyncio.Protocol, "127.0.0.1", listening.getsockname()[1]
            )
            proto = await side.first()
            await asyncio.wait_for(proto.made, 10)
            accepted = proto.transport.get_extra_info("socket")
            flags.append(accepted.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE))
            tr.close()
            await close_server(server)
        return [1 if flag else 0 for flag in flags]

    assert run(loop_factory, main) == [1, 1, 0, 0]


def test_create_server_on_an_address_the_host_lacks(loop_factory: Any) -> None:
    """Binding to an address no interface has fails with EADDRNOTAVAIL: an error
    naming the address up to 3.12; from 3.13 the address is skipped, and with
    none left create_server fails with "could not bind on any address"."""

    async def main() -> tuple[int | None, str]:
        loop = asyncio.get_running_loop()
        try:
            # TEST-NET-1 (RFC 5737): assigned to no host, so bind() fails; nothing is sent.
            server = await loop.create_server(EchoProtocol, "192.0.2.1", 0)
        except OSError as exc:
            return exc.errno, str(exc)
        await close_server(server)
        return None, "created"

    expected = run_oracle(main)
    assert "192.0.2.1" in expected[1]
    assert run(loop_factory, main) == expected


def test_create_server_address_in_use(loop_factory: Any) -> None:
    async def main() -> tuple[int | None, str]:
        loop = asyncio.get_running_loop()
        first = await loop.create_server(EchoProtocol, "127.0.0.1", 0)
        port = first.sockets[0].getsockname()[1]
        try:
            await loop.create_server(EchoProtocol, "127.0.0.1", port)
        except OSError as exc:
            return exc.errno, str(exc).replace(str(port), "PORT")
        finally:
            await close_server(first)
        return None, "created"

    expected = run_oracle(main)
    assert expected[0] == errno.EADDRINUSE
    assert run(loop_factory, main) == expected


@pytest.mark.parametrize("reuse_address", [None, True, False])
def test_reuse_address_option(loop_factory: Any, reuse_address: bool | None) -> None:
    async def main() -> bool:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(EchoProtocol, "127.0.0.1", 0, reuse_address=reuse_address)
        value = server.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0
        await close_server(server)
        return value

    expected = run_oracle(main)
    assert expected == (reuse_address is not False)
    assert run(loop_factory, main) == expected


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="no SO_REUSEPORT")
def test_reuse_port_two_servers_same_port(loop_factory: Any) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        a = await loop.create_server(EchoProtocol, "127.0.0.1", 0, reuse_port=True)
        port = a.sockets[0].getsockname()[1]
        b = await loop.create_server(EchoProtocol, "127.0.0.1", port, reuse_port=True)
        for server in (a, b):
            assert server.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        for i in range(10):
            assert await _echo_roundtrip("127.0.0.1", port, b"%d" % i) == b"%d" % i
        await close_server(a)
        assert await _echo_roundtrip("127.0.0.1", port) == b"ping"
        await close_server(b)

    run(loop_factory, main)


def test_start_serving_false_then_start_serving(loop_factory: Any) -> None:
    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(EchoProtocol, "127.0.0.1", 0, start_serving=False)
        out: list[Any] = [server.is_serving()]
        host, port = server.sockets[0].getsockname()
        out.append(server.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
        try:
            tr, _ = await loop.create_connection(asyncio.Protocol, host, port)
            out.append("connected")
            tr.close()
        except OSError as exc:
            out.append(type(exc).__name__)
        await server.start_serving()
        out.append(server.is_serving())
        await server.start_serving()  # again: no-op
        out.append(await _echo_roundtrip(host, port))
        await close_server(server)
        return out

    expected = run_oracle(main)
    assert expected == [False, 0, "ConnectionRefusedError", True, b"ping"]
    assert run(loop_factory, main) == expected


def test_start_serving_a_closed_server(loop_factory: Any) -> None:
    """asyncio raises TypeError (it iterates its closed server's sockets) and
    says it is serving; serve_forever() raises RuntimeError."""

    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(EchoProtocol, "127.0.0.1", 0, start_serving=False)
        server.close()
        out: list[Any] = []
        for start in (server.start_serving, server.serve_forever):
            try:
                await start()
            except (TypeError, RuntimeError) as exc:
                out.append(type(exc).__name__)
        out += [server.is_serving(), server.sockets]
        await asyncio.wait_for(server.wait_closed(), 10)
        return out

    expected = run_oracle(main)
    assert expected == ["TypeError", "RuntimeError", True, ()]
    assert run(loop_factory, main) == expected


def test_serve_forever_cancel_closes_server(loop_factory: Any) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(EchoProtocol, "127.0.0.1", 0, start_serving=False)
        host, port = server.sockets[0].getsockname()
        task = asyncio.create_task(server.serve_forever())
        await asyncio.sleep(0.01)
        assert server.is_serving()
        with pytest.raises(RuntimeError, match="already being awaited"):
            await server.serve_forever()
        assert await _echo_roundtrip(host, port) == b"ping"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not server.is_serving()
        assert server.sockets == ()
        with pytest.raises(RuntimeError, match="is closed"):
            await server.serve_forever()
        with pytest.raises(ConnectionRefusedError):
            await loop.create_connection(asyncio.Protocol, host, port)

    run(loop_factory, main)


def test_server_close_stops_serve_forever(loop_factory: Any) -> None:
    async def main() -> str:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(EchoProtocol, "127.0.0.1", 0)
        task = asyncio.create_task(server.serve_forever())
        await asyncio.sleep(0.01)
        server.close()
        try:
            await asyncio.wait_for(task, 10)
        except asyncio.CancelledError:
            return "cancelled"
        return "returned"

    expected = run_oracle(main)
    assert run(loop_factory, main) == expected


def test_async_with_server(loop_factory: Any) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(EchoProtocol, "127.0.0.1", 0)
        async with server as entered:
            assert entered is server
            assert server.is_serving()
            host, port = server.sockets[0].getsockname()
            assert await _echo_roundtrip(host, port) == b"ping"
        assert not server.is_serving()
        assert server.sockets == ()

    run(loop_factory, main)


def test_close_keeps_accepted_connections_and_wait_closed(loop_factory: Any) -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        side = ServerSide(RecordingProtocol)
        server = await loop.create_server(side, "127.0.0.1", 0)
        host, port = server.sockets[0].getsockname()
        tr, proto = await loop.create_connection(RecordingProtocol, host, port)
        sproto = await side.first()
        order: list[str] = []

        async def waiter() -> None:
            await server.wait_closed()
            order.append("wait_closed returned")

        early = asyncio.create_task(waiter())
        await asyncio.sleep(0.01)
        server.close()
        order.append("closed")
        await asyncio.sleep(0.05)
        # The accepted connection still works both ways.
        tr.write(b"still here")
        assert await sproto.wait_for_bytes(10) == b"still here"
        sproto.transport.write(b"me too")
        assert await proto.wait_for_bytes(6) == b"me too"
        order.append("connection alive")
        tr.close()
        await asyncio.wait_for(sproto.lost, 10)
        order.append("connection closed")
        await asyncio.wait_for(early, 10)
        await asyncio.wait_for(server.wait_closed(), 10)
        return order

    expected = run_oracle(main)
    # wait_closed() awaited before close() returns only once the connection is gone.
    assert expected.index("wait_closed returned") > expected.index("connection alive")
    assert run(loop_factory, main) == expected


@pytest.mark.parametrize("how", ["close_clients", "abort_clients"])
def test_server_ends_the_connections_it_accepted(
    loop_factory: Any, loop_name: str, how: str
) -> None:
    """Server.close_clients()/abort_clients() (asyncio from 3.13; ferroloop has
    them on every version, so before 3.13 this checks ferroloop's extra alone)."""
    if loop_name == "asyncio" and sys.version_info < (3, 13):
        pytest.skip("asyncio's Server has close_clients() from Python 3.13")

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        side = ServerSide(RecordingProtocol)
        server = await loop.create_server(side, "127.0.0.1", 0)
        host, port = server.sockets[0].getsockname()
        # Another server's connection and this loop's own outgoing ones to it
        # are not the first server's to end.
        other_side = ServerSide(RecordingProtocol)
        other = await loop.create_server(other_side, "127.0.0.1", 0)
        _, bystander = await loop.create_connection(
            RecordingProtocol, *other.sockets[0].getsockname()[:2]
        )
        clients = [await loop.create_connection(RecordingProtocol, host, port) for _ in range(3)]
        while len(side.protocols) < 3 or not all(p.made.done() for p in side.protocols):
            await asyncio.sleep(0.01)
        while not other_side.protocols:
            await asyncio.sleep(0.01)
        for accepted in side.protocols:
            accepted.transport.write(b"bye")
        # Paused and half-closed connections are ended too.
        side.protocols[1].transport.pause_reading()
        clients[2][0].write_eof()
        await asyncio.wait_for(side.protocols[2].eof, 10)
        getattr(server, how)()
        for _, client in clients:
            await asyncio.wait_for(client.lost, 10)
        for accepted in side.protocols:
            await asyncio.wait_for(accepted.lost, 10)
        # The server itself still accepts connections.
        serving = server.is_serving()
        late, _ = await loop.create_connection(RecordingProtocol, host, port)
        while len(side.protocols) < 4:
            await asyncio.sleep(0.01)
        late.close()
        await asyncio.wait_for(side.protocols[3].lost, 10)
        await close_server(server)
        untouched = (list(bystander.events), list(other_side.protocols[0].events))
        getattr(other, how)()
        await asyncio.wait_for(bystander.lost, 10)
        await close_server(other)
        return {
            "clients": [(bytes(client.data), client.events) for _, client in clients],
            "accepted": [(p.events, p.lost_exc) for p in side.protocols[:3]],
            "serving": serving,
            "untouched": untouched,
        }

    result = run(loop_factory, main)
    # What was written before is delivered, then the end of the stream.
    assert result["clients"][:2] == [(b"bye", ["made", "data", "eof", "lost"])] * 2
    assert result["accepted"][:2] == [(["made", "lost"], None)] * 2
    assert result["serving"] is True
    assert result["untouched"] == (["made"], ["made"])
    if sys.version_info >= (3, 13):
        assert result == run_oracle(main)


@pytest.mark.parametrize("debug", [False, True])
def test_protocol_factory_error_is_reported_and_server_keeps_serving(
    loop_factory: Any, loop_name: str, request: Any, debug: bool
) -> None:
    """asyncio reports a failing protocol factory to the exception handler only in
    debug mode; in both modes the connection is closed and the server keeps serving."""

    class Boom(Exception):
        pass

    async def main() -> tuple[list[tuple[str, str]], bytes, bytes]:
        loop = asyncio.get_running_loop()
        # Keep only strings: holding the context would keep asyncio's accepted
        # socket alive (it is closed by garbage collection there).
        reports: list[tuple[str, str]] = []
        loop.set_exception_handler(
            lambda lp, ctx: reports.append((ctx["message"], type(ctx.get("exception")).__name__))
        )
        calls = 0

        def factory() -> asyncio.Protocol:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise Boom("factory failed")
            return EchoProtocol()

        server = await loop.create_server(factory, "127.0.0.1", 0)
        host, port = server.sockets[0].getsockname()
        reader, writer = await asyncio.open_connection(host, port)
        # asyncio leaves the accepted socket to the garbage collector (in debug
        # mode it sits in a reference cycle through the exception context).
        await asyncio.sleep(0.1)
        gc.collect()
        first = await asyncio.wait_for(reader.read(), 10)  # closed by the server: EOF
        writer.close()
        second = await _echo_roundtrip(host, port)
        await close_server(server)
        loop.set_exception_handler(None)
        return reports, first, second

    expected = run_oracle(main, debug=debug)
    assert bool(expected[0]) == debug and expected[1:] == (b"", b"ping")
    assert run(loop_factory, main, debug=debug) == expected


def test_many_sequential_servers_release_ports_and_fds(loop_factory: Any) -> None:
    from helpers_net import count_fds

    async def main() -> None:
        loop = asyncio.get_running_loop()
        before = count_fds()
        for _ in range(100):
            server = await loop.create_server(EchoProtocol, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            assert await _echo_roundtrip("127.0.0.1", port) == b"ping"
            server.close()
            await server.wait_closed()
        await asyncio.sleep(0.05)
        assert count_fds() <= before + 2

    run(loop_factory, main)


@pytest.mark.parametrize("tls", [False, True])
def test_debug_mode_logs_each_accepted_connection(loop_factory: Any, tls: bool) -> None:
    async def main() -> int:
        server, side, transport, _ = await (tls_pair() if tls else tcp_pair())
        client_port = transport.get_extra_info("sockname")[1]
        peer = await side.first()
        await asyncio.wait_for(peer.made, 10)  # over TLS, after its handshake
        peer.transport.close()
        transport.close()
        await close_server(server)
        return int(client_port)

    with asyncio_log() as records:
        client_port = run(loop_factory, main, debug=True)
    accepted = [message for _, message in records if "got a new connection" in message]
    assert len(accepted) == 1, records
    assert re.fullmatch(
        rf"<Server sockets=\(<asyncio.TransportSocket fd=\d+, .*\)> got a new connection from "
        rf"\('127.0.0.1', {client_port}\): <socket.socket fd=\d+, family=2, type=1, proto=6, "
        rf"laddr=\('127.0.0.1', \d+\), raddr=\('127.0.0.1', {client_port}\)>",
        accepted[0],
    ), accepted[0]
