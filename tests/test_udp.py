"""Datagram endpoints (`create_datagram_endpoint`) on asyncio's loop and on ferroloop.

Every test runs on both loops (the ``loop_factory`` fixture of conftest.py);
asyncio's loop is the oracle, so a test encodes asyncio's behaviour and both
loops must pass it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
from cpython_bugs import DATAGRAM_HEADER_NEVER_DRAINS
from helpers_net import (
    DatagramEvents,
    as_any_class,
    asyncio_log,
    count_fds,
    order_after_pause_and_resume,
    run_and_drop_loop,
)

_T = TypeVar("_T")

LoopFactory = Callable[[], asyncio.AbstractEventLoop]

#: asyncio sends empty datagrams only from 3.13 on.
SENDS_EMPTY = sys.version_info >= (3, 13)


def _has_ipv6() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


HAS_IPV6 = _has_ipv6()


def run(loop_factory: LoopFactory, coro_fn: Callable[[], Awaitable[_T]]) -> _T:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(coro_fn())  # type: ignore[arg-type]


@pytest.fixture
def unix_dir() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="ferroloop-udp-") as path:
        yield path


class Recorder(asyncio.DatagramProtocol):
    """Records every callback; futures mark the interesting moments."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.events: list[str] = []
        self.datagrams: list[tuple[bytes, Any]] = []
        self.errors: list[Exception] = []
        self.transport: Any = None
        self.made = loop.create_future()
        self.lost: asyncio.Future[BaseException | None] = loop.create_future()
        self.waiting_for = 0
        self.enough: asyncio.Future[None] = loop.create_future()
        self.error_seen: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.events.append("made")
        self.transport = transport
        self.made.set_result(None)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.datagrams.append((data, addr))
        if self.waiting_for and len(self.datagrams) >= self.waiting_for and not self.enough.done():
            self.enough.set_result(None)

    def error_received(self, exc: Exception) -> None:
        self.events.append("error")
        self.errors.append(exc)
        if not self.error_seen.done():
            self.error_seen.set_result(None)

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append("lost")
        if not self.lost.done():
            self.lost.set_result(exc)

    async def wait_for_datagrams(self, count: int, timeout: float = 5.0) -> None:
        if len(self.datagrams) >= count:
            return
        self.waiting_for = count
        self.enough = asyncio.get_running_loop().create_future()
        await asyncio.wait_for(asyncio.shield(self.enough), timeout)


class Echo(Recorder):
    """Sends every datagram back to where it came from."""

    def datagram_received(self, data: bytes, addr: Any) -> None:
        super().datagram_received(data, addr)
        self.transport.sendto(data, addr)


async def _endpoint(**kwargs: Any) -> tuple[Any, Recorder]:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(Recorder, **kwargs)
    return transport, protocol  # type: ignore[return-value]


async def _close(*transports: Any) -> None:
    for transport in transports:
        transport.close()
    for transport in transports:
        protocol = transport.get_protocol()
        if isinstance(protocol, Recorder):
            await asyncio.wait_for(protocol.lost, 5)


def _is_datagram_transport(transport: Any) -> None:
    assert isinstance(transport, asyncio.BaseTransport)
    loop_module = type(asyncio.get_running_loop()).__module__
    if SENDS_EMPTY or loop_module.startswith("ferroloop"):
        # asyncio's own class subclasses DatagramTransport only from 3.13 on.
        assert isinstance(transport, asyncio.DatagramTransport)


# -- echo ----------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_echo_round_trip(loop_factory: LoopFactory, host: str) -> None:
    if host == "::1" and not HAS_IPV6:
        pytest.skip("IPv6 loopback unavailable")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server, server_proto = await loop.create_datagram_endpoint(Echo, local_addr=(host, 0))
        client, client_proto = await _endpoint(local_addr=(host, 0))
        _is_datagram_transport(server)
        server_addr = server.get_extra_info("sockname")
        client_addr = client.get_extra_info("sockname")
        assert server.get_extra_info("socket").family == family
        assert server.get_extra_info("peername") is None
        for i in range(5):
            client.sendto(b"ping %d" % i, server_addr)
        client.sendto(bytearray(b"from bytearray"), server_addr)
        client.sendto(memoryview(b"xx from memoryview")[3:], server_addr)
        await client_proto.wait_for_datagrams(7)
        expected = [b"ping %d" % i for i in range(5)] + [b"from bytearray", b"from memoryview"]
        assert [data for data, _ in client_proto.datagrams] == expected
        # The addresses are exactly what socket.recvfrom returns.
        assert {addr for _, addr in client_proto.datagrams} == {server_addr}
        assert {addr for _, addr in server_proto.datagrams} == {client_addr}  # type: ignore[attr-defined]
        assert all(type(data) is bytes for data, _ in client_proto.datagrams)
        assert client_proto.events == ["made"]
        await _close(client, server)
        assert client_proto.events == ["made", "lost"]
        assert client_proto.lost.result() is None

    run(loop_factory, main)


def test_addresses_match_socket_recvfrom(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        receiver, proto = await _endpoint(local_addr=("127.0.0.1", 0))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as plain:
            plain.bind(("127.0.0.1", 0))
            plain.sendto(b"one", receiver.get_extra_info("sockname"))
            await proto.wait_for_datagrams(1)
            assert proto.datagrams == [(b"one", plain.getsockname())]
            receiver.sendto(b"two", plain.getsockname())
            plain.settimeout(5)
            assert plain.recvfrom(100) == (b"two", receiver.get_extra_info("sockname"))
        await _close(receiver)

    run(loop_factory, main)


def test_hostname_resolution(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        transport, _ = await _endpoint(local_addr=("localhost", 0), family=socket.AF_INET)
        assert transport.get_extra_info("sockname")[0] == "127.0.0.1"
        await _close(transport)

    run(loop_factory, main)


def test_empty_datagram(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        receiver, proto = await _endpoint(local_addr=("127.0.0.1", 0))
        sender, _ = await _endpoint(remote_addr=receiver.get_extra_info("sockname"))
        sender.sendto(b"")
        sender.sendto(b"last")
        await proto.wait_for_datagrams(2 if SENDS_EMPTY else 1)
        payloads = [data for data, _ in proto.datagrams]
        assert payloads == ([b"", b"last"] if SENDS_EMPTY else [b"last"])
        await _close(sender, receiver)

    run(loop_factory, main)


# -- connected endpoints, sock=, options ------------------------------------------


def test_connected_endpoint(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        server, server_proto = await _endpoint(local_addr=("127.0.0.1", 0))
        server_addr = server.get_extra_info("sockname")
        client, client_proto = await _endpoint(remote_addr=server_addr)
        assert client.get_extra_info("peername") == server_addr
        client.sendto(b"a")
        client.sendto(b"b", server_addr)
        with pytest.raises(ValueError, match="Invalid address: must be None or"):
            client.sendto(b"c", ("127.0.0.1", server_addr[1] + 1 or 1))
        with pytest.raises(TypeError, match="data argument must be a bytes-like object, not 'str'"):
            client.sendto("text")  # type: ignore[arg-type]
        await server_proto.wait_for_datagrams(2)
        assert [d for d, _ in server_proto.datagrams] == [b"a", b"b"]
        client_addr = server_proto.datagrams[0][1]
        assert client_addr == client.get_extra_info("sockname")
        server.sendto(b"reply", client_addr)
        await client_proto.wait_for_datagrams(1)
        assert client_proto.datagrams == [(b"reply", server_addr)]
        assert not client.is_closing()
        await _close(client, server)

    run(loop_factory, main)


def test_sock_argument(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        address = sock.getsockname()
        transport, proto = await loop.create_datagram_endpoint(Recorder, sock=sock)
        assert not sock.getblocking()
        assert transport.get_extra_info("sockname") == address
        assert transport.get_extra_info("socket").fileno() == sock.fileno()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as plain:
            plain.sendto(b"via sock=", address)
            await proto.wait_for_datagrams(1)  # type: ignore[attr-defined]
        await _close(transport)
        # The transport closes the socket it was given.
        assert sock.fileno() == -1

    run(loop_factory, main)


def test_sock_argument_errors(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with (
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as stream,
            # 3.13 reworded the message (and accepts any socket but a stream).
            pytest.raises(ValueError, match=r"A (UDP Socket|datagram socket) was expected"),
        ):
            await loop.create_datagram_endpoint(Recorder, sock=stream)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            message = (
                r"socket modifier keyword arguments can not be used when sock is "
                r"specified. \(local_addr=\('127.0.0.1', 0\), reuse_port=True\)"
            )
            with pytest.raises(ValueError, match=message):
                await loop.create_datagram_endpoint(
                    Recorder, sock=sock, local_addr=("127.0.0.1", 0), reuse_port=True
                )
            assert sock.fileno() != -1

    run(loop_factory, main)


def test_reuse_port(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        first, _ = await _endpoint(local_addr=("127.0.0.1", 0), reuse_port=True)
        address = first.get_extra_info("sockname")
        sock = first.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) != 0
        second, _ = await _endpoint(local_addr=address, reuse_port=True)
        assert second.get_extra_info("sockname") == address
        with pytest.raises(OSError) as info:
            await _endpoint(local_addr=address)
        assert info.value.errno == 98  # EADDRINUSE
        await _close(first, second)

    run(loop_factory, main)


def test_reuse_address_is_not_accepted(loop_factory: LoopFactory) -> None:
    # Removed in 3.11 (disabled since 3.8.1): passing it at all is a TypeError.
    async def main() -> None:
        loop = asyncio.get_running_loop()
        for value in (True, False):
            with pytest.raises(TypeError):
                await loop.create_datagram_endpoint(
                    Recorder, local_addr=("127.0.0.1", 0), reuse_address=value
                )

    run(loop_factory, main)


def test_allow_broadcast(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        receiver, proto = await _endpoint(local_addr=("127.0.0.1", 0))
        target = receiver.get_extra_info("sockname")
        sender, _ = await _endpoint(
            local_addr=("127.0.0.1", 0), remote_addr=target, allow_broadcast=True
        )
        sock = sender.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST) != 0
        # With broadcast allowed the socket is not connected; remote_addr is the default.
        assert sender.get_extra_info("peername") is None
        sender.sendto(b"default destination")
        await proto.wait_for_datagrams(1)
        assert proto.datagrams[0] == (b"default destination", sender.get_extra_info("sockname"))
        await _close(sender, receiver)

    run(loop_factory, main)


# -- errors --------------------------------------------------------------------------


def _closed_udp_port() -> tuple[str, int]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()  # type: ignore[no-any-return]


def test_error_received_on_icmp_port_unreachable(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        transport, proto = await _endpoint(remote_addr=_closed_udp_port())
        for _ in range(3):
            transport.sendto(b"anyone?")
            await asyncio.sleep(0.01)
        await asyncio.wait_for(proto.error_seen, 5)
        assert all(isinstance(exc, ConnectionRefusedError) for exc in proto.errors)
        # An ICMP error does not close the transport.
        assert not transport.is_closing()
        assert "lost" not in proto.events
        await _close(transport)
        assert proto.lost.result() is None

    run(loop_factory, main)


def test_exception_in_datagram_received_is_reported(loop_factory: LoopFactory) -> None:
    class Failing(Recorder):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            super().datagram_received(data, addr)
            if data == b"boom":
                raise RuntimeError("protocol bug")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        reported: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: reported.append(context))
        receiver, proto = await loop.create_datagram_endpoint(Failing, local_addr=("127.0.0.1", 0))
        sender, _ = await _endpoint(remote_addr=receiver.get_extra_info("sockname"))
        sender.sendto(b"boom")
        await proto.wait_for_datagrams(1)  # type: ignore[attr-defined]
        sender.sendto(b"still open")
        await proto.wait_for_datagrams(2)  # type: ignore[attr-defined]
        assert len(reported) == 1
        assert isinstance(reported[0]["exception"], RuntimeError)
        # In asyncio's words: its transport's reader callback failed.
        reader = f"{type(receiver).__name__}._read_ready()"
        assert reported[0]["message"] == f"Exception in callback {reader}"
        assert not receiver.is_closing()
        await _close(sender, receiver)

    run(loop_factory, main)


def test_bad_destination_is_a_fatal_error(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        reported: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: reported.append(context))
        transport, proto = await _endpoint(local_addr=("127.0.0.1", 0))
        transport.sendto(b"data", "not an address")
        exc = await asyncio.wait_for(proto.lost, 5)
        assert isinstance(exc, TypeError)
        assert reported and reported[0]["message"] == "Fatal write error on datagram transport"
        assert reported[0]["exception"] is exc

    run(loop_factory, main)


def test_strided_memoryview_sent_at_once_is_a_fatal_error(loop_factory: LoopFactory) -> None:
    """asyncio hands a non-contiguous memoryview to socket.sendto(), which
    refuses it with BufferError: a fatal error, not error_received()."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        reported: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: reported.append(context))
        receiver, _ = await _endpoint(local_addr=("127.0.0.1", 0))
        transport, proto = await _endpoint(remote_addr=receiver.get_extra_info("sockname"))
        transport.sendto(memoryview(b"a-b-c-")[::2])
        exc = await asyncio.wait_for(proto.lost, 5)
        assert isinstance(exc, BufferError)
        assert [context["message"] for context in reported] == [
            "Fatal write error on datagram transport"
        ]
        assert "error" not in proto.events
        await _close(receiver)

    run(loop_factory, main)


def test_strided_memoryview_queued_is_sent_as_a_copy(
    loop_factory: LoopFactory, unix_dir: str
) -> None:
    """Behind queued datagrams, asyncio queues bytes(data): the view's
    contents, sent in order once the receiver reads."""
    path = os.path.join(unix_dir, "receiver")

    async def main() -> None:
        receiver, proto = await _endpoint(family=socket.AF_UNIX, local_addr=path)
        receiver.pause_reading()
        sender, sender_proto = await _endpoint(family=socket.AF_UNIX, remote_addr=path)
        sent = 0
        while sender.get_write_buffer_size() == 0 and sent < 10_000:
            sender.sendto(b"." * 1000)
            sent += 1
        assert sender.get_write_buffer_size() > 0
        view = memoryview(bytearray(b"a-b-c-"))[::2]
        sender.sendto(view)
        view.obj[:] = b"XXXXXX"  # queued as a copy
        receiver.resume_reading()
        await proto.wait_for_datagrams(sent + 1)
        assert proto.datagrams[-1][0] == b"abc"
        assert sender_proto.lost.done() is False
        await _close(sender, receiver)

    run(loop_factory, main)


def test_pause_and_resume_in_one_iteration_drops_the_queued_read(
    loop_factory: LoopFactory,
) -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        with peer:
            transport, protocol = await loop.create_datagram_endpoint(DatagramEvents, sock=ours)
            send = lambda: peer.send(b"x")  # noqa: E731
            return await order_after_pause_and_resume(transport, send, protocol.events)

    assert run(loop_factory, main) == ["queued after resume", "data"]


def test_unresolved_addr_on_unconnected_socket_goes_to_python(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        receiver, proto = await _endpoint(local_addr=("127.0.0.1", 0))
        port = receiver.get_extra_info("sockname")[1]
        sender, sender_proto = await _endpoint(family=socket.AF_INET)
        sender.sendto(b"by name", ("localhost", port))
        with pytest.raises(TypeError):
            sender.sendto(12)  # type: ignore[arg-type]
        await proto.wait_for_datagrams(1)
        assert proto.datagrams[0][0] == b"by name"
        sender.sendto(b"too far", ("127.0.0.1", 70000))
        exc = await asyncio.wait_for(sender_proto.lost, 5)
        assert isinstance(exc, OverflowError)
        await _close(receiver)

    run(loop_factory, main)


def test_bad_arguments(loop_factory: LoopFactory, unix_dir: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        create = loop.create_datagram_endpoint
        with pytest.raises(ValueError, match="unexpected address family"):
            await create(Recorder)
        with pytest.raises(TypeError, match="2-tuple is expected"):
            await create(Recorder, local_addr="127.0.0.1")
        with pytest.raises(TypeError, match="2-tuple is expected"):
            await create(Recorder, remote_addr=("127.0.0.1", 1, 2))
        with pytest.raises(TypeError, match="string is expected"):
            await create(Recorder, family=socket.AF_UNIX, local_addr=("x", 1))
        with pytest.raises(TypeError, match="string is expected"):
            await create(Recorder, family=socket.AF_UNIX, local_addr=os.fsencode(unix_dir) + b"/s")
        with pytest.raises(ValueError, match="can not get address information"):
            await create(Recorder, local_addr=("127.0.0.1", 0), remote_addr=("::1", 1))
        with pytest.raises(OSError):
            await create(Recorder, local_addr=("127.0.0.1", 0), family=socket.AF_INET6)
        with pytest.raises(TypeError):
            await create(Recorder, ("127.0.0.1", 0), None, 0)  # type: ignore[misc]

    run(loop_factory, main)


# -- volume and flow control --------------------------------------------------------


def test_many_datagrams(loop_factory: LoopFactory) -> None:
    total = 10_000
    window = 64

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
        client, proto = await _endpoint(remote_addr=server.get_extra_info("sockname"))
        sent = 0
        while sent < total:
            # Keep at most `window` datagrams in flight so the loopback never drops.
            while sent < total and sent - len(proto.datagrams) < window:
                client.sendto(sent.to_bytes(4, "big"))
                sent += 1
            await proto.wait_for_datagrams(max(sent - window // 2, 1), timeout=10)
        await proto.wait_for_datagrams(total, timeout=10)
        received = [int.from_bytes(data, "big") for data, _ in proto.datagrams]
        assert sorted(received) == list(range(total))
        assert client.get_write_buffer_size() == 0
        await _close(client, server)

    run(loop_factory, main)


def test_flow_control_and_close_flushes(
    loop_factory: LoopFactory, loop_name: str, request: Any, unix_dir: str
) -> None:
    """A full Unix datagram queue makes sendto buffer, pause and resume the protocol,
    and close() waits for the buffer to drain before connection_lost(None)."""
    DATAGRAM_HEADER_NEVER_DRAINS.xfail_on_asyncio(request, loop_name)
    path = os.path.join(unix_dir, "receiver")
    count = 200

    async def main() -> None:
        receiver, proto = await _endpoint(family=socket.AF_UNIX, local_addr=path)
        receiver.pause_reading()
        assert not receiver.is_reading()
        sender, sender_proto = await _endpoint(family=socket.AF_UNIX, remote_addr=path)
        sender.set_write_buffer_limits(high=4096)
        assert sender.get_write_buffer_limits() == (1024, 4096)
        for i in range(count):
            sender.sendto(b"%04d" % i + b"." * 996)
        assert sender.get_write_buffer_size() > 4096
        assert sender_proto.events == ["made", "pause"]
        sender.close()
        assert sender.is_closing()
        await asyncio.sleep(0.05)
        assert "lost" not in sender_proto.events  # still flushing
        receiver.resume_reading()
        await proto.wait_for_datagrams(count)
        assert await asyncio.wait_for(sender_proto.lost, 5) is None
        assert sender_proto.events == ["made", "pause", "resume", "lost"]
        assert [data[:4] for data, _ in proto.datagrams] == [b"%04d" % i for i in range(count)]
        assert sender.get_write_buffer_size() == 0
        await _close(receiver)

    run(loop_factory, main)


def test_abort_drops_buffer(loop_factory: LoopFactory, unix_dir: str) -> None:
    path = os.path.join(unix_dir, "receiver")

    async def main() -> None:
        receiver, _ = await _endpoint(family=socket.AF_UNIX, local_addr=path)
        receiver.pause_reading()
        sender, sender_proto = await _endpoint(family=socket.AF_UNIX, remote_addr=path)
        for _ in range(100):
            sender.sendto(b"x" * 1000)
        assert sender.get_write_buffer_size() > 0
        sender.abort()
        assert sender.is_closing()
        assert "lost" not in sender_proto.events  # connection_lost is scheduled, not called
        assert await asyncio.wait_for(sender_proto.lost, 5) is None
        assert sender_proto.events.count("lost") == 1
        sender.close()
        sender.abort()
        await asyncio.sleep(0.01)
        assert sender_proto.events.count("lost") == 1
        assert sender.get_protocol() is None or sender.get_protocol() is sender_proto
        await _close(receiver)

    run(loop_factory, main)


def test_close_semantics(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        transport, proto = await _endpoint(local_addr=("127.0.0.1", 0))
        sockname = transport.get_extra_info("sockname")
        assert not transport.is_closing()
        transport.close()
        assert transport.is_closing()
        assert proto.events == ["made"]  # connection_lost runs in a later iteration
        transport.close()
        assert await asyncio.wait_for(proto.lost, 5) is None
        await asyncio.sleep(0)
        assert proto.events == ["made", "lost"]
        assert transport.get_extra_info("sockname") == sockname
        assert transport.get_extra_info("socket").fileno() == -1

    run(loop_factory, main)


def test_sendto_after_close_of_connected_transport(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        receiver, proto = await _endpoint(local_addr=("127.0.0.1", 0))
        sender, _ = await _endpoint(remote_addr=receiver.get_extra_info("sockname"))
        sender.close()
        await asyncio.sleep(0.01)
        for _ in range(3):
            sender.sendto(b"ignored")
        await asyncio.sleep(0.05)
        assert proto.datagrams == []
        await _close(receiver)

    run(loop_factory, main)


# -- Unix datagram sockets ------------------------------------------------------------


def test_unix_datagram_endpoints(loop_factory: LoopFactory, unix_dir: str) -> None:
    server_path = os.path.join(unix_dir, "server")
    client_path = os.path.join(unix_dir, "client")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server, server_proto = await _endpoint(family=socket.AF_UNIX, local_addr=server_path)
        assert server.get_extra_info("sockname") == server_path
        client, proto = await _endpoint(
            family=socket.AF_UNIX, local_addr=client_path, remote_addr=server_path
        )
        assert client.get_extra_info("peername") == server_path
        client.sendto(b"hello unix")
        await server_proto.wait_for_datagrams(1)
        assert server_proto.datagrams == [(b"hello unix", client_path)]
        server.sendto(b"reply", client_path)
        await proto.wait_for_datagrams(1)
        assert proto.datagrams == [(b"reply", server_path)]

        # An unbound sender has no address: None, as socket.recvfrom says.
        unbound, _ = await _endpoint(family=socket.AF_UNIX, remote_addr=server_path)
        unbound.sendto(b"anonymous")
        await server_proto.wait_for_datagrams(2)
        assert server_proto.datagrams[1] == (b"anonymous", None)

        # An abstract-namespace sender is reported as bytes; bytes destinations work too.
        abstract = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        name = b"\0ferroloop-test-%d" % os.getpid()
        abstract.bind(name)
        transport, abstract_proto = await loop.create_datagram_endpoint(Recorder, sock=abstract)
        transport.sendto(b"from abstract", os.fsencode(server_path))
        await server_proto.wait_for_datagrams(3)
        assert server_proto.datagrams[2] == (b"from abstract", name)
        server.sendto(b"to abstract", name)
        await abstract_proto.wait_for_datagrams(1)  # type: ignore[attr-defined]
        assert abstract_proto.datagrams == [(b"to abstract", server_path)]  # type: ignore[attr-defined]
        await _close(client, unbound, transport, server)

        # A stale socket file left at local_addr is removed before binding.
        assert os.path.exists(server_path)
        again, _ = await _endpoint(family=socket.AF_UNIX, local_addr=server_path)
        await _close(again)

    run(loop_factory, main)


def test_unix_connect_to_missing_path(loop_factory: LoopFactory, unix_dir: str) -> None:
    async def main() -> None:
        with pytest.raises(FileNotFoundError):
            await _endpoint(family=socket.AF_UNIX, remote_addr=os.path.join(unix_dir, "none"))

    run(loop_factory, main)


# -- resources -----------------------------------------------------------------------------


def test_no_fd_leak(loop_factory: LoopFactory, unix_dir: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        for round_ in range(20):
            server, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
            address = server.get_extra_info("sockname")
            client, proto = await _endpoint(remote_addr=address)
            client.sendto(b"x")
            await proto.wait_for_datagrams(1)
            with pytest.raises(OSError):
                await _endpoint(local_addr=address)
            path = os.path.join(unix_dir, f"s{round_}")
            unix, _ = await _endpoint(family=socket.AF_UNIX, local_addr=path)
            client.abort()
            await _close(server, unix)
            await asyncio.wait_for(proto.lost, 5)

    def measured() -> int:
        run(loop_factory, main)
        return count_fds()

    measured()  # warm up: executor threads, lazily created descriptors
    before = count_fds()
    after = measured()
    assert after <= before


def test_unclosed_transport_warns_and_closes_socket(loop_factory: LoopFactory) -> None:
    async def leave_open() -> int:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
        )
        return int(transport.get_extra_info("socket").fileno())

    before = count_fds()
    fd, messages = run_and_drop_loop(loop_factory, leave_open)
    assert any(m.startswith("unclosed transport") and f"fd={fd}" in m for m in messages)
    assert not any(m.startswith("unclosed <socket") for m in messages)
    assert count_fds() <= before


def test_datagram_transport_repr_reads_as_asyncio_s(loop_factory: LoopFactory) -> None:
    async def main() -> list[str]:
        transport, protocol = await _endpoint(local_addr=("127.0.0.1", 0))
        shown = [as_any_class(repr(transport))]
        transport.close()
        shown.append(as_any_class(repr(transport)))
        await asyncio.wait_for(protocol.lost, 5)
        shown.append(as_any_class(repr(transport)))
        return shown

    assert run(loop_factory, main) == [
        "<T fd=F read=polling write=<idle, bufsize=0>>",
        "<T closing fd=F read=idle write=<idle, bufsize=0>>",
        "<T closed fd=F>",
    ]


def test_debug_mode_logs_reading_switches(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        transport, _ = await _endpoint(local_addr=("127.0.0.1", 0))
        transport.pause_reading()
        transport.resume_reading()
        await _close(transport)

    with asyncio_log() as records:
        with asyncio.Runner(loop_factory=loop_factory, debug=True) as runner:
            runner.run(main())
    about_reading = [
        (level, as_any_class(message)) for level, message in records if message.endswith("reading")
    ]
    assert about_reading == [
        ("DEBUG", "<T fd=F read=idle write=<idle, bufsize=0>> pauses reading"),
        ("DEBUG", "<T fd=F read=polling write=<idle, bufsize=0>> resumes reading"),
    ]
