"""Arguments at their edges (addresses, ports, sizes, water marks): the loops
must agree with asyncio.

asyncio's connection methods (`create_connection` and its `local_addr`,
`create_server`, `create_datagram_endpoint`, `sock_connect`) never call
getaddrinfo for an IP address literal: they turn the port into an `int`
themselves, so a float or bool port is a port, and a port out of 0-65535
reaches `connect`/`bind`, which raise OverflowError (getaddrinfo would keep
its low 16 bits: 70000 would become 4464). Zero-byte receives return at once,
as the socket module's do, without a system call that would fail on a socket
not connected or swallow a datagram.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from helpers_net import HAS_IPV6, close_server, listening_socket
from loop_helpers import LoopFactory, only_ferroloop, run

OUT_OF_RANGE_PORT = 70_000  # 70000 & 0xFFFF == 4464


class NoLookups:
    """A getaddrinfo that fails the test: IP literals must not reach it."""

    def __init__(self) -> None:
        self.hosts: list[Any] = []

    async def __call__(self, host: Any, port: Any, **kwargs: Any) -> Any:
        self.hosts.append(host)
        raise AssertionError(f"getaddrinfo({host!r}, {port!r}) called")


@pytest.mark.parametrize(
    "as_port", [float, str, lambda port: f" {port} "], ids=["float", "str", "padded"]
)
def test_ip_literal_port_is_converted_with_int(
    loop_factory: LoopFactory, as_port: Callable[[int], Any]
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            transport, _ = await loop.create_connection(
                asyncio.Protocol, "127.0.0.1", as_port(port)
            )
            assert transport.get_extra_info("peername") == ("127.0.0.1", port)
            transport.close()
            sock = socket.socket()
            sock.setblocking(False)
            with sock:
                await loop.sock_connect(sock, ("127.0.0.1", as_port(port)))
                assert sock.getpeername() == ("127.0.0.1", port)
        finally:
            await close_server(server)

    run(loop_factory, main)


def test_bool_port_is_port_one(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with pytest.raises(ConnectionRefusedError) as raised:
            await loop.create_connection(asyncio.Protocol, "127.0.0.1", True)
        assert "('127.0.0.1', 1)" in str(raised.value)

    run(loop_factory, main)


def _connect(port: Any) -> Callable[[asyncio.AbstractEventLoop], Awaitable[Any]]:
    return lambda loop: loop.create_connection(asyncio.Protocol, "127.0.0.1", port)


def _connect_v6(port: Any) -> Callable[[asyncio.AbstractEventLoop], Awaitable[Any]]:
    return lambda loop: loop.create_connection(asyncio.Protocol, "::1", port)


def _serve(port: Any) -> Callable[[asyncio.AbstractEventLoop], Awaitable[Any]]:
    return lambda loop: loop.create_server(asyncio.Protocol, "127.0.0.1", port)


def _bind_locally(port: Any) -> Callable[[asyncio.AbstractEventLoop], Awaitable[Any]]:
    return lambda loop: loop.create_connection(
        asyncio.Protocol, "127.0.0.1", 9, local_addr=("127.0.0.1", port)
    )


def _datagram_to(port: Any) -> Callable[[asyncio.AbstractEventLoop], Awaitable[Any]]:
    return lambda loop: loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, remote_addr=("127.0.0.1", port)
    )


async def _sock_connect(loop: asyncio.AbstractEventLoop, port: Any) -> None:
    sock = socket.socket()
    sock.setblocking(False)
    with sock:
        await loop.sock_connect(sock, ("127.0.0.1", port))


BAD_PORT_CALLS = {
    "create_connection 70000": _connect(OUT_OF_RANGE_PORT),
    "create_connection -1": _connect(-1),
    "create_connection inf": _connect(float("inf")),
    "create_server 70000": _serve(OUT_OF_RANGE_PORT),
    "create_server -1": _serve(-1),
    "create_server inf": _serve(float("inf")),
    "local_addr 70000": _bind_locally(OUT_OF_RANGE_PORT),
    "datagram remote 70000": _datagram_to(OUT_OF_RANGE_PORT),
    "sock_connect 70000": lambda loop: _sock_connect(loop, OUT_OF_RANGE_PORT),
}
if HAS_IPV6:
    BAD_PORT_CALLS["create_connection ::1 70000"] = _connect_v6(OUT_OF_RANGE_PORT)


@pytest.mark.parametrize("call", BAD_PORT_CALLS.values(), ids=BAD_PORT_CALLS.keys())
def test_port_out_of_range_raises_overflow_error(
    loop_factory: LoopFactory, call: Callable[[asyncio.AbstractEventLoop], Awaitable[Any]]
) -> None:
    async def main() -> None:
        with pytest.raises(OverflowError):
            result = await call(asyncio.get_running_loop())
            # Reached only on failure: do not leave it open.
            (result[0] if isinstance(result, tuple) else result).close()

    run(loop_factory, main)


def test_ip_literals_never_reach_getaddrinfo(loop_factory: LoopFactory) -> None:
    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        lookups = NoLookups()
        loop.getaddrinfo = lookups  # type: ignore[method-assign]
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            transport, _ = await loop.create_connection(
                asyncio.Protocol, "127.0.0.1", port, local_addr=("127.0.0.1", 0)
            )
            transport.close()
            transport, _ = await loop.create_connection(asyncio.Protocol, b"127.0.0.1", str(port))
            transport.close()
            await _sock_connect(loop, port)
            datagram, _ = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, remote_addr=("127.0.0.1", port)
            )
            datagram.close()
            with pytest.raises(AssertionError, match="getaddrinfo"):
                await loop.create_connection(asyncio.Protocol, "localhost", port)
        finally:
            await close_server(server)
        return lookups.hosts

    assert run(loop_factory, main) == ["localhost"]


@pytest.mark.skipif(not HAS_IPV6, reason="no IPv6 loopback")
def test_ipv6_local_addr_with_flowinfo_and_scope(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with listening_socket("::1", socket.AF_INET6) as listener:
            port = listener.getsockname()[1]
            transport, _ = await loop.create_connection(
                asyncio.Protocol, "::1", port, local_addr=("::1", 0, 0, 0)
            )
            assert transport.get_extra_info("sockname")[0] == "::1"
            transport.close()

    run(loop_factory, main)


@contextlib.contextmanager
def datagram_waiting(payload: bytes) -> Iterator[socket.socket]:
    """A non-blocking UDP socket on loopback with `payload` already queued
    (loopback delivers a datagram before `sendto` returns)."""
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with receiver, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        receiver.setblocking(False)
        receiver.bind(("127.0.0.1", 0))
        sender.sendto(payload, receiver.getsockname())
        yield receiver


def test_zero_byte_receives_take_no_datagram(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with datagram_waiting(b"datagram") as receiver:
            assert await loop.sock_recv(receiver, 0) == b""
            assert await loop.sock_recv_into(receiver, bytearray()) == 0
            assert await asyncio.wait_for(loop.sock_recv(receiver, 100), 5) == b"datagram"

    run(loop_factory, main)


def test_zero_byte_receives_on_a_socket_not_connected(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setblocking(False)
        with sock:
            assert await loop.sock_recv(sock, 0) == b""
            assert await loop.sock_recv_into(sock, bytearray()) == 0

    run(loop_factory, main)


def test_removing_an_impossible_descriptor_is_false(loop: asyncio.AbstractEventLoop) -> None:
    assert loop.remove_reader(2**70) is False
    assert loop.remove_writer(2**70) is False
    with pytest.raises(OverflowError):
        loop.add_reader(2**70, print)


def test_negative_backlog_is_accepted(loop_factory: LoopFactory) -> None:
    """listen() takes any int (Python makes a negative one 0)."""

    async def main() -> bool:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, backlog=-1)
        try:
            return server.is_serving()
        finally:
            await close_server(server)

    assert run(loop_factory, main)


def test_negative_backlog_server_accepts(loop_factory: LoopFactory, loop_name: str) -> None:
    only_ferroloop(loop_name, "asyncio never accepts on a listener whose backlog is 0 or less")

    async def main() -> int:
        loop = asyncio.get_running_loop()
        made = asyncio.Event()

        class Made(asyncio.Protocol):
            def connection_made(self, transport: Any) -> None:
                made.set()

        for backlog in (0, -1):
            made.clear()
            server = await loop.create_server(Made, "127.0.0.1", 0, backlog=backlog)
            port = server.sockets[0].getsockname()[1]
            transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
            await asyncio.wait_for(made.wait(), 5)
            transport.close()
            await close_server(server)
        return 2

    assert run(loop_factory, main) == 2


def test_shutdown_default_executor_timeout_positionally(loop_factory: LoopFactory) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, len, "x")
        if sys.version_info < (3, 12):
            with pytest.raises(TypeError, match="positional"):
                await loop.shutdown_default_executor(5)  # type: ignore[call-arg]
        else:
            await loop.shutdown_default_executor(5)

    run(loop_factory, main)


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        ({"high": 1e6}, (250_000, 1_000_000)),
        ({"low": 1e3}, (1_000, 4_000)),
        ({"high": 8.0, "low": 2}, (2, 8)),
        ({"high": True}, (0, 1)),
        ({"high": float("nan")}, ValueError),
        ({"high": float("inf")}, ValueError),  # inf // 4 is nan
        ({"high": 1, "low": 2}, ValueError),
        ({"low": -1}, ValueError),
        ({"high": "x"}, TypeError),
    ],
    ids=repr,
)
def test_water_marks_are_any_number(
    loop_factory: LoopFactory, limits: dict[str, Any], expected: Any
) -> None:
    """asyncio checks the marks only by arithmetic and comparison."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        stream, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        datagram, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
        )
        try:
            for transport in (stream, datagram):
                if isinstance(expected, type):
                    with pytest.raises(expected):
                        transport.set_write_buffer_limits(**limits)
                else:
                    transport.set_write_buffer_limits(**limits)
                    assert transport.get_write_buffer_limits() == expected
        finally:
            stream.close()
            datagram.close()
            await close_server(server)

    run(loop_factory, main)


@pytest.mark.parametrize("nbytes", [None, 0, False], ids=repr)
def test_recvfrom_into_reads_any_false_nbytes_as_the_whole_buffer(
    loop_factory: LoopFactory, nbytes: Any
) -> None:
    async def main() -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        with datagram_waiting(b"datagram") as receiver:
            buf = bytearray(16)
            count, _ = await asyncio.wait_for(loop.sock_recvfrom_into(receiver, buf, nbytes), 5)
            return count, bytes(buf[:count])

    assert run(loop_factory, main) == (8, b"datagram")


def test_connecting_through_a_closed_loop_raises(loop_factory: LoopFactory) -> None:
    """asyncio fails when it registers the connecting socket; ours may not register."""

    async def main() -> None:
        closed = loop_factory()
        closed.close()
        with listening_socket() as listener:
            port = listener.getsockname()[1]
            with pytest.raises(RuntimeError, match="closed"):
                await closed.create_connection(asyncio.Protocol, "127.0.0.1", port)

    run(loop_factory, main)


@pytest.mark.skipif(not HAS_IPV6, reason="no IPv6 loopback")
def test_ipv6_flowinfo_goes_into_the_address_as_given(loop_factory: LoopFactory) -> None:
    """A float flowinfo is refused by connect(), even after the same address
    with an int flowinfo (equal as a key) was resolved."""

    async def main() -> str:
        loop = asyncio.get_running_loop()
        with listening_socket("::1", socket.AF_INET6) as listener:
            port = listener.getsockname()[1]
            for flowinfo in (0, 0.0):
                sock = socket.socket(socket.AF_INET6)
                sock.setblocking(False)
                with sock:
                    try:
                        await loop.sock_connect(sock, ("::1", port, flowinfo, 0))
                    except TypeError:
                        return f"TypeError for {flowinfo!r}"
        return "connected both times"

    assert run(loop_factory, main) == "TypeError for 0.0"
