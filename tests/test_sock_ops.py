"""The loop's low-level socket API (`sock_recv`, `sock_sendall`, ...).

Every test runs on asyncio's own loop (the oracle) and on ferroloop, through
the ``loop_factory`` fixture of conftest.py, with real sockets on 127.0.0.1
and socket pairs.
"""

from __future__ import annotations

import array
import asyncio
import errno
import gc
import io
import os
import random
import socket
import tempfile
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
from helpers_net import buffer_at_page_offset, queue_datagrams
from loop_helpers import only_ferroloop

_T = TypeVar("_T")

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def run(loop_factory: LoopFactory, coro_fn: Callable[[], Awaitable[_T]], debug: bool = False) -> _T:
    with asyncio.Runner(loop_factory=loop_factory, debug=debug) as runner:
        return runner.run(coro_fn())  # type: ignore[arg-type]


def nonblocking(*socks: socket.socket) -> None:
    for sock in socks:
        sock.setblocking(False)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    nonblocking(a, b)
    with a, b:
        yield a, b


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    with sock:
        yield sock


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# -- stream happy paths ------------------------------------------------------


def test_recv_and_sendall_socketpair(loop_factory: LoopFactory, pair: Any) -> None:
    a, b = pair

    async def main() -> tuple[bytes, bytes]:
        loop = asyncio.get_running_loop()
        pending = asyncio.ensure_future(loop.sock_recv(a, 100))
        await asyncio.sleep(0)
        assert not pending.done()
        await loop.sock_sendall(b, b"hello")
        first = await pending
        await loop.sock_sendall(b, bytearray(b"world"))
        await asyncio.sleep(0.01)
        second = await loop.sock_recv(a, 3)
        return first, second

    assert run(loop_factory, main) == (b"hello", b"wor")


def test_recv_into_and_memoryview_send(loop_factory: LoopFactory, pair: Any) -> None:
    a, b = pair

    async def main() -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        buf = bytearray(10)
        pending = asyncio.ensure_future(loop.sock_recv_into(a, buf))
        await asyncio.sleep(0)
        await loop.sock_sendall(b, memoryview(b"abcdefgh")[2:6])
        count = await pending
        return count, bytes(buf[:count])

    assert run(loop_factory, main) == (4, b"cdef")


@pytest.mark.parametrize("page_offset", [0, 16, 31, 32])
def test_recv_into_a_buffer_at_any_page_offset(
    loop_factory: LoopFactory, pair: Any, page_offset: int
) -> None:
    """Whatever page offset the buffer starts at (for some, ferroloop
    receives into its own buffer first and copies), the data arrives whole
    and in order, in reads no larger than the buffer."""
    a, b = pair
    data = os.urandom(3 << 20)

    async def main() -> tuple[bytes, int]:
        loop = asyncio.get_running_loop()
        # Within ferroloop's staging area: larger buffers are read into
        # directly, since the socket might carry datagrams.
        buf = buffer_at_page_offset(128 * 1024, page_offset)
        sender = asyncio.create_task(loop.sock_sendall(b, data))
        received = bytearray()
        largest = 0
        while len(received) < len(data):
            count = await loop.sock_recv_into(a, buf)
            assert count > 0
            largest = max(largest, count)
            received += buf[:count]
        await sender
        return bytes(received), largest

    received, largest = run(loop_factory, main)
    assert received == data
    assert largest <= 128 * 1024


def test_empty_buffer_objects(loop_factory: LoopFactory, pair: Any) -> None:
    """Empty buffers of other exporters (array, memoryview) send nothing and
    do not disturb the data that follows."""
    a, b = pair

    async def main() -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(b, array.array("b"))
        await loop.sock_sendall(b, memoryview(b""))
        await loop.sock_sendall(b, array.array("b", b"xyz"))
        buf = array.array("b", bytes(8))
        count = await loop.sock_recv_into(a, buf)
        return count, buf.tobytes()[:count]

    assert run(loop_factory, main) == (3, b"xyz")


def test_eof_returns_empty_bytes(loop_factory: LoopFactory, pair: Any) -> None:
    a, b = pair

    async def main() -> list[bytes]:
        loop = asyncio.get_running_loop()
        pending = asyncio.ensure_future(loop.sock_recv(a, 10))
        await asyncio.sleep(0)
        await loop.sock_sendall(b, b"last")
        b.shutdown(socket.SHUT_WR)
        return [await pending, await loop.sock_recv(a, 10)]

    assert run(loop_factory, main) == [b"last", b""]


def test_large_sendall_to_slow_reader(loop_factory: LoopFactory, pair: Any) -> None:
    a, b = pair
    data = os.urandom(1 << 20) * 20  # 20 MiB: many partial sends

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        chunks: list[bytes] = []

        async def slow_reader() -> None:
            received = 0
            while received < len(data):
                chunk = await loop.sock_recv(a, 1 << 20)
                assert chunk
                chunks.append(chunk)
                received += len(chunk)
                if len(chunks) % 16 == 0:
                    await asyncio.sleep(0.001)

        reader = asyncio.create_task(slow_reader())
        await loop.sock_sendall(b, data)
        await reader
        return b"".join(chunks)

    assert run(loop_factory, main) == data


def test_recv_alternating_large_and_small_messages(loop_factory: LoopFactory, pair: Any) -> None:
    """Large messages, then small ones, then a small nbytes after large reads,
    then end of stream: every byte arrives once, in order, within nbytes."""
    a, b = pair
    messages = [os.urandom(100 * 1024), b"s" * 10, os.urandom(64 * 1024), b"tiny"]

    async def main() -> tuple[bool, list[int]]:
        loop = asyncio.get_running_loop()
        received = bytearray()
        for message in messages:
            await loop.sock_sendall(b, message)
            while len(received) < sum(map(len, messages[: messages.index(message) + 1])):
                received += await loop.sock_recv(a, 256 * 1024)
        await loop.sock_sendall(b, os.urandom(200 * 1024))
        await asyncio.sleep(0.01)
        small_reads = []
        for _ in range(3):
            small_reads.append(len(await loop.sock_recv(a, 1000)))
        b.shutdown(socket.SHUT_WR)
        rest = 0
        while chunk := await loop.sock_recv(a, 256 * 1024):
            rest += len(chunk)
        small_reads.append(rest)
        return bytes(received) == b"".join(messages), small_reads

    assert run(loop_factory, main) == (True, [1000, 1000, 1000, 200 * 1024 - 3000])


def test_concurrent_recv_and_sendall_same_socket(loop_factory: LoopFactory, pair: Any) -> None:
    a, b = pair
    data = b"x" * (8 << 20)

    async def main() -> tuple[int, bytes]:
        loop = asyncio.get_running_loop()
        # a waits for data *and* for buffer space at the same time.
        incoming = asyncio.ensure_future(loop.sock_recv(a, 100))
        outgoing = asyncio.ensure_future(loop.sock_sendall(a, data))
        await asyncio.sleep(0.01)
        assert not incoming.done() and not outgoing.done()
        await loop.sock_sendall(b, b"ping")
        got = await incoming
        received = 0
        while received < len(data):
            received += len(await loop.sock_recv(b, 1 << 20))
        await outgoing
        return received, got

    assert run(loop_factory, main) == (len(data), b"ping")


def test_accept_connect_tcp(loop_factory: LoopFactory, listener: socket.socket) -> None:
    port = listener.getsockname()[1]

    async def main() -> tuple[Any, Any, bytes]:
        loop = asyncio.get_running_loop()
        accepting = asyncio.ensure_future(loop.sock_accept(listener))
        client = socket.socket()
        client.setblocking(False)
        with client:
            await loop.sock_connect(client, ("127.0.0.1", port))
            conn, address = await accepting
            with conn:
                assert address == client.getsockname()
                await loop.sock_sendall(client, b"over tcp")
                return conn.gettimeout(), conn.family, await loop.sock_recv(conn, 100)

    timeout, family, data = run(loop_factory, main)
    assert (timeout, family, data) == (0.0, socket.AF_INET, b"over tcp")


def test_connect_resolves_localhost(loop_factory: LoopFactory, listener: socket.socket) -> None:
    port = listener.getsockname()[1]

    async def main() -> str:
        loop = asyncio.get_running_loop()
        client = socket.socket()
        client.setblocking(False)
        with client:
            await loop.sock_connect(client, ("localhost", port))
            conn, _ = await loop.sock_accept(listener)
            conn.close()
            return client.getpeername()[0]

    assert run(loop_factory, main) == "127.0.0.1"


def test_connect_refused(loop_factory: LoopFactory) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now

    async def main() -> None:
        loop = asyncio.get_running_loop()
        client = socket.socket()
        client.setblocking(False)
        with client:
            await loop.sock_connect(client, ("127.0.0.1", port))

    with pytest.raises(ConnectionRefusedError):
        run(loop_factory, main)


def test_accept_unix(loop_factory: LoopFactory, tmp_path: Any) -> None:
    path = str(tmp_path / "sock")

    async def main() -> tuple[Any, bytes]:
        loop = asyncio.get_running_loop()
        server = socket.socket(socket.AF_UNIX)
        server.bind(path)
        server.listen()
        client = socket.socket(socket.AF_UNIX)
        nonblocking(server, client)
        with server, client:
            accepting = asyncio.ensure_future(loop.sock_accept(server))
            await loop.sock_connect(client, path)
            conn, address = await accepting
            with conn:
                await loop.sock_sendall(conn, b"unix")
                return address, await loop.sock_recv(client, 10)

    assert run(loop_factory, main) == ("", b"unix")


# -- datagrams -------------------------------------------------------------


def test_udp_sendto_recvfrom(loop_factory: LoopFactory) -> None:
    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        nonblocking(rx, tx)
        with rx, tx:
            rx.bind(("127.0.0.1", 0))
            tx.bind(("127.0.0.1", 0))
            target = rx.getsockname()
            waiting = asyncio.ensure_future(loop.sock_recvfrom(rx, 100))
            await asyncio.sleep(0)
            sent = await loop.sock_sendto(tx, b"one", target)
            data, source = await waiting
            await loop.sock_sendto(tx, b"two!", ("localhost", target[1]))
            buf = bytearray(10)
            count, source2 = await loop.sock_recvfrom_into(rx, buf)
            await loop.sock_sendto(tx, b"three", target)
            small = bytearray(10)
            count3, _ = await loop.sock_recvfrom_into(rx, small, 2)
            return [
                sent,
                data,
                source == tx.getsockname(),
                count,
                bytes(buf[:count]),
                source2 == tx.getsockname(),
                count3,
                bytes(small[:2]),
            ]

    assert run(loop_factory, main) == [3, b"one", True, 4, b"two!", True, 2, b"th"]


@pytest.mark.parametrize("page_offset", [0, 16, 31, 32])
def test_recvfrom_into_a_buffer_at_any_page_offset(
    loop_factory: LoopFactory, page_offset: int
) -> None:
    """Datagrams of any size arrive whole, with their sender, in a buffer
    starting at any page offset (ferroloop receives some of them into its
    own buffer first); one longer than nbytes is cut to nbytes."""
    sizes = [1, 1_500, 9_000, 65_000]

    async def main() -> list[tuple[int, bool, bool]]:
        loop = asyncio.get_running_loop()
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        nonblocking(rx, tx)
        with rx, tx:
            rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            rx.bind(("127.0.0.1", 0))
            tx.bind(("127.0.0.1", 0))
            buf = buffer_at_page_offset(128 * 1024, page_offset)
            results = []
            for size in [*sizes, 65_000]:
                datagram = os.urandom(size)
                await loop.sock_sendto(tx, datagram, rx.getsockname())
                limit = 4_000 if len(results) == len(sizes) else 0
                count, source = await loop.sock_recvfrom_into(rx, buf, limit)
                expected = datagram[:limit] if limit else datagram
                results.append((count, bytes(buf[:count]) == expected, source == tx.getsockname()))
            return results

    assert run(loop_factory, main) == [(size, True, True) for size in [*sizes, 4_000]]


def test_recvfrom_into_a_datagram_longer_than_a_read_buffer(
    loop_factory: LoopFactory,
) -> None:
    """A datagram larger than ferroloop's own read buffer, received into a
    buffer on a page offset it would stage, still arrives whole."""
    size = 300 * 1024

    async def main() -> int:
        loop = asyncio.get_running_loop()
        rx, tx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        nonblocking(rx, tx)
        with rx, tx:
            (datagram,) = queue_datagrams(tx, [size])
            buf = buffer_at_page_offset(400 * 1024, 16)
            count, _ = await loop.sock_recvfrom_into(rx, buf)
            assert bytes(buf[:count]) == datagram
            return count

    assert run(loop_factory, main) == size


def test_recv_of_large_datagrams_returns_each_whole(loop_factory: LoopFactory) -> None:
    """sock_recv on a datagram socket returns whole datagrams up to n, also
    after earlier large ones (ferroloop reads large messages straight into
    their bytes object, sized by what the kernel says is queued)."""
    sizes = [40_000, 200_000, 200_000, 50_000, 150_000, 1]

    async def main() -> list[bool]:
        loop = asyncio.get_running_loop()
        rx, tx = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        nonblocking(rx, tx)
        with rx, tx:
            datagrams = queue_datagrams(tx, sizes)
            return [await loop.sock_recv(rx, 256 * 1024) == d for d in datagrams]

    assert run(loop_factory, main) == [True] * len(sizes)


def test_udp_ipv6(loop_factory: LoopFactory) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")

    async def main() -> tuple[bytes, Any]:
        loop = asyncio.get_running_loop()
        rx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        tx = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        nonblocking(rx, tx)
        with rx, tx:
            try:
                rx.bind(("::1", 0))
            except OSError:
                pytest.skip("no IPv6 loopback")
            await loop.sock_sendto(tx, b"six", rx.getsockname()[:2])
            data, source = await loop.sock_recvfrom(rx, 100)
            return data, source == ("::1", tx.getsockname()[1], 0, 0)

    assert run(loop_factory, main) == (b"six", True)


# -- cancellation ----------------------------------------------------------


def test_cancelled_recv_leaves_socket_usable(loop_factory: LoopFactory, pair: Any) -> None:
    a, b = pair

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(_recv(loop, a))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await loop.sock_sendall(b, b"after cancel")
        await asyncio.sleep(0.01)  # a cancelled recv must not have eaten the data
        return await loop.sock_recv(a, 100)

    assert run(loop_factory, main) == b"after cancel"


def test_add_reader_after_cancelled_recv(loop_factory: LoopFactory, pair: Any) -> None:
    a, b = pair

    async def wrapped(loop: asyncio.AbstractEventLoop) -> bytes:
        return await loop.sock_recv(a, 100)

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        task = asyncio.create_task(wrapped(loop))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        readable = loop.create_future()
        loop.add_reader(a, lambda: readable.done() or readable.set_result(a.recv(100)))
        try:
            b.send(b"to the reader")
            return await asyncio.wait_for(readable, 5)
        finally:
            loop.remove_reader(a)

    assert run(loop_factory, main) == b"to the reader"


def test_wait_for_timeout_then_recv(loop_factory: LoopFactory, pair: Any) -> None:
    a, b = pair

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(loop.sock_recv(a, 10), 0.01)
        b.send(b"late")
        return await asyncio.wait_for(loop.sock_recv(a, 10), 5)

    assert run(loop_factory, main) == b"late"


def test_cancelled_accept_then_accept(loop_factory: LoopFactory, listener: socket.socket) -> None:
    async def main() -> bool:
        loop = asyncio.get_running_loop()
        task = asyncio.ensure_future(loop.sock_accept(listener))
        await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.sleep(0)
        client = socket.socket()
        client.setblocking(False)
        with client:
            connecting = asyncio.ensure_future(loop.sock_connect(client, listener.getsockname()))
            conn, _ = await asyncio.wait_for(loop.sock_accept(listener), 5)
            conn.close()
            await connecting
        return True

    assert run(loop_factory, main)


# -- sendfile --------------------------------------------------------------


async def _drain(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    chunks = []
    while True:
        chunk = await loop.sock_recv(sock, 1 << 16)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _tcp_pair_run(
    loop_factory: LoopFactory, body: Callable[..., Awaitable[_T]]
) -> tuple[_T, bytes]:
    async def main() -> tuple[_T, bytes]:
        loop = asyncio.get_running_loop()
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        client = socket.socket()
        client.setblocking(False)
        with server, client:
            accepting = asyncio.ensure_future(loop.sock_accept(server))
            await loop.sock_connect(client, server.getsockname())
            conn, _ = await accepting
            with conn:
                draining = asyncio.create_task(_drain(loop, client))
                result = await body(loop, conn)
                conn.shutdown(socket.SHUT_WR)
                return result, await draining

    return run(loop_factory, main)


def test_sendfile_regular_file(loop_factory: LoopFactory) -> None:
    content = os.urandom(3 << 20) + b"tail"
    with tempfile.TemporaryFile() as file:
        file.write(content)
        file.seek(0)

        async def body(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> tuple[int, int]:
            sent = await loop.sock_sendfile(conn, file, 100, 2 << 20)
            return sent, file.tell()

        (sent, position), received = _tcp_pair_run(loop_factory, body)
        assert sent == 2 << 20
        assert position == 100 + (2 << 20)
        assert received == content[100 : 100 + (2 << 20)]

        file.seek(0)

        async def whole(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> tuple[int, int]:
            sent = await loop.sock_sendfile(conn, file)
            return sent, file.tell()

        (sent, position), received = _tcp_pair_run(loop_factory, whole)
        assert (sent, position, received) == (len(content), len(content), content)


def test_sendfile_fallback_non_regular(loop_factory: LoopFactory) -> None:
    data = b"in memory " * 1000

    async def body(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> tuple[int, int]:
        stream = io.BytesIO(data)
        sent = await loop.sock_sendfile(conn, stream, 10, 5000)
        return sent, stream.tell()

    (sent, position), received = _tcp_pair_run(loop_factory, body)
    assert (sent, position, received) == (5000, 5010, data[10:5010])


def test_sendfile_pipe_with_count_falls_back(loop_factory: LoopFactory) -> None:
    # os.sendfile refuses a pipe, so the data goes through read + send; then
    # asyncio's final file.seek() fails on the pipe (ESPIPE) and that error
    # reaches the caller. ferroloop matches it.
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"through a pipe")
    os.close(write_fd)

    pipe = open(read_fd, "rb", buffering=0)

    async def body(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> int | None:
        try:
            await loop.sock_sendfile(conn, pipe, 0, 7)
        except OSError as exc:
            return exc.errno
        return None

    with pipe:
        error, received = _tcp_pair_run(loop_factory, body)
    assert (error, received) == (errno.ESPIPE, b"through")


def test_sendfile_empty_pipe_without_count(loop_factory: LoopFactory) -> None:
    # asyncio takes a pipe's st_size (0) as "empty file" and sends nothing.
    read_fd, write_fd = os.pipe()
    os.write(write_fd, b"never sent")
    os.close(write_fd)

    pipe = open(read_fd, "rb", buffering=0)

    async def body(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> int:
        return await loop.sock_sendfile(conn, pipe)

    with pipe:
        assert _tcp_pair_run(loop_factory, body) == (0, b"")


def test_sendfile_no_fallback_raises(loop_factory: LoopFactory) -> None:
    async def body(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> str:
        with pytest.raises(asyncio.SendfileNotAvailableError):
            await loop.sock_sendfile(conn, io.BytesIO(b"x"), fallback=False)
        return "raised"

    assert _tcp_pair_run(loop_factory, body) == ("raised", b"")


@pytest.mark.parametrize(
    ("offset", "count", "error"),
    [(-1, None, ValueError), ("0", None, TypeError), (0, 0, ValueError), (0, 1.5, TypeError)],
)
def test_sendfile_bad_offsets(
    loop_factory: LoopFactory, pair: Any, offset: Any, count: Any, error: type[Exception]
) -> None:
    a, _ = pair

    async def main() -> None:
        loop = asyncio.get_running_loop()
        with tempfile.TemporaryFile() as file:
            await loop.sock_sendfile(a, file, offset, count)

    with pytest.raises(error):
        run(loop_factory, main)


def test_sendfile_wrong_socket_type_and_text_mode(loop_factory: LoopFactory) -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        messages = []
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.setblocking(False)
        with udp, tempfile.TemporaryFile() as file:
            with pytest.raises(ValueError) as info:
                await loop.sock_sendfile(udp, file)
            messages.append(str(info.value))
        stream = socket.socket()
        stream.setblocking(False)
        with stream, tempfile.TemporaryFile("w+") as text:
            with pytest.raises(ValueError) as info:
                await loop.sock_sendfile(stream, text)
            messages.append(str(info.value))
        return messages

    assert run(loop_factory, main) == [
        "only SOCK_STREAM type sockets are supported",
        "file should be opened in binary mode",
    ]


# -- bad arguments ---------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda loop, s: loop.sock_recv(s, 1),
        lambda loop, s: loop.sock_recv_into(s, bytearray(1)),
        lambda loop, s: loop.sock_sendall(s, b"x"),
        lambda loop, s: loop.sock_accept(s),
        lambda loop, s: loop.sock_connect(s, ("127.0.0.1", 1)),
        lambda loop, s: loop.sock_recvfrom(s, 1),
        lambda loop, s: loop.sock_sendto(s, b"x", ("127.0.0.1", 1)),
    ],
)
def test_blocking_socket_refused_in_debug_mode(loop_factory: LoopFactory, call: Any) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        with sock:  # blocking
            await call(loop, sock)

    with pytest.raises(ValueError, match="the socket must be non-blocking"):
        run(loop_factory, main, debug=True)


def test_blocking_sockets_work_outside_debug_mode(loop_factory: LoopFactory) -> None:
    # asyncio refuses them only in debug mode, and libraries rely on it
    # (asyncssh's tests connect a fresh, blocking socket.socket()). Every call
    # here can complete at once, so asyncio's loop, which makes the blocking
    # system call, does not stall.
    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        with socket.socket() as server, socket.socket() as client:  # all blocking
            server.bind(("127.0.0.1", 0))
            server.listen()
            await loop.sock_connect(client, server.getsockname())
            conn, _ = await loop.sock_accept(server)
            with conn:
                await loop.sock_sendall(client, b"ping")
                got = [await loop.sock_recv(conn, 4), conn.gettimeout()]
                await loop.sock_sendall(conn, b"pong")
                buf = bytearray(4)
                got += [await loop.sock_recv_into(client, buf), bytes(buf)]
        udp = socket.SOCK_DGRAM
        with socket.socket(type=udp) as rx, socket.socket(type=udp) as tx:
            rx.bind(("127.0.0.1", 0))
            got.append(await loop.sock_sendto(tx, b"datagram", rx.getsockname()))
            data, source = await loop.sock_recvfrom(rx, 64)
            got += [data, source[1] == tx.getsockname()[1]]
        return got

    assert run(loop_factory, main) == [b"ping", 0.0, 4, b"pong", 8, b"datagram", True]


def test_receive_on_blocking_socket_waits_in_the_loop(
    loop_factory: LoopFactory, loop_name: str
) -> None:
    only_ferroloop(loop_name, "asyncio's loop would block in recv() with nothing queued, forever")

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()  # both blocking
        with a, b:
            loop.call_later(0.01, b.send, b"later")
            return await asyncio.wait_for(loop.sock_recv(a, 16), 5)

    assert run(loop_factory, main) == b"later"


def test_recv_into_readonly_buffer(loop_factory: LoopFactory, pair: Any) -> None:
    a, b = pair
    b.send(b"data")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        await loop.sock_recv_into(a, b"read only")

    with pytest.raises(TypeError):
        run(loop_factory, main)


def test_sendall_str_is_type_error(loop_factory: LoopFactory, pair: Any) -> None:
    a, _ = pair

    async def main() -> None:
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(a, "text")  # type: ignore[arg-type]

    with pytest.raises(TypeError):
        run(loop_factory, main)


def test_recv_on_reset_connection(loop_factory: LoopFactory, listener: socket.socket) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        client = socket.socket()
        client.setblocking(False)
        with client:
            accepting = asyncio.ensure_future(loop.sock_accept(listener))
            await loop.sock_connect(client, listener.getsockname())
            conn, _ = await accepting
            # RST on close: linger on with a zero timeout.
            conn.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            conn.close()
            await asyncio.sleep(0.01)
            await loop.sock_recv(client, 10)

    with pytest.raises(ConnectionResetError):
        run(loop_factory, main)


# -- resources ---------------------------------------------------------------


def test_no_fd_leak_after_many_ops(loop_factory: LoopFactory, listener: socket.socket) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        for _ in range(100):
            client = socket.socket()
            client.setblocking(False)
            with client:
                accepting = asyncio.ensure_future(loop.sock_accept(listener))
                await loop.sock_connect(client, listener.getsockname())
                conn, _ = await accepting
                with conn:
                    pending = asyncio.ensure_future(loop.sock_recv(conn, 100))
                    await asyncio.sleep(0)
                    await loop.sock_sendall(client, b"x" * 100)
                    assert await pending == b"x" * 100
                    waiting = asyncio.create_task(_recv(loop, client))
                    await asyncio.sleep(0)
                    waiting.cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await waiting

    run(loop_factory, main)  # warm up (executor threads, lazy imports)
    before = open_fds()
    run(loop_factory, main)
    assert open_fds() == before


async def _recv(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    return await loop.sock_recv(sock, 10)


async def recv_after_waiting(
    loop: asyncio.AbstractEventLoop, a: socket.socket, b: socket.socket, data: bytes
) -> bytes:
    """A sock_recv on `a` that has to wait: `b` sends `data` only once it is pending."""
    pending = asyncio.ensure_future(loop.sock_recv(a, 100))
    await asyncio.sleep(0)
    b.send(data)
    return await asyncio.wait_for(pending, 5)


def test_ferroloop_waiter_lingers_until_nobody_reads(
    loop_factory: LoopFactory, loop_name: str, pair: Any
) -> None:
    # ferroloop only (its native bookkeeping): after a receive completes, the
    # socket stays registered for the next one, and lets go at the first read
    # event nobody waits for.
    a, b = pair

    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        ops = loop._sock_ops()  # type: ignore[attr-defined]
        task = asyncio.create_task(_recv(loop, a))
        await asyncio.sleep(0)
        seen = [ops._pending_fds()]
        b.send(b"x")
        await task
        seen.append(ops._pending_fds())
        b.send(b"unread")
        for _ in range(5):
            await asyncio.sleep(0)
        seen.append(ops._pending_fds())
        assert await loop.sock_recv(a, 10) == b"unread"
        return seen

    if loop_name != "ferroloop":
        pytest.skip("only meaningful for ferroloop: native watcher bookkeeping")
    fd = pair[0].fileno()
    assert run(loop_factory, main) == [[fd], [fd], []]


def test_recv_on_reused_descriptor_number(loop_factory: LoopFactory) -> None:
    # A socket is closed after sock_recv; the next socket gets the same
    # number and must be watched afresh (its first recv has to wait).
    async def main() -> list[bytes]:
        loop = asyncio.get_running_loop()
        got = []
        numbers = set()
        for i in range(3):
            a, b = socket.socketpair()
            nonblocking(a, b)
            with a, b:
                numbers.add(a.fileno())
                got.append(await recv_after_waiting(loop, a, b, b"msg%d" % i))
        assert len(numbers) == 1, numbers
        return got

    assert run(loop_factory, main) == [b"msg0", b"msg1", b"msg2"]


def test_add_reader_after_recv_is_level_triggered(loop_factory: LoopFactory, pair: Any) -> None:
    # Once sock_recv is done with a socket, add_reader() gets asyncio's
    # level-triggered calls: again and again while the data stays unread.
    a, b = pair

    async def main() -> int:
        loop = asyncio.get_running_loop()
        assert await recv_after_waiting(loop, a, b, b"first") == b"first"
        calls = 0
        enough = loop.create_future()

        def on_readable() -> None:
            nonlocal calls
            calls += 1
            if calls == 3:
                enough.set_result(None)  # (it may be called once more meanwhile)

        loop.add_reader(a, on_readable)
        b.send(b"left unread")
        try:
            await asyncio.wait_for(enough, 5)
        finally:
            loop.remove_reader(a)
        return calls

    assert run(loop_factory, main) >= 3


def test_transport_on_socket_after_sock_ops(
    loop_factory: LoopFactory, listener: socket.socket
) -> None:
    # sock_connect/sock_recv first, then a transport over the same socket.
    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client.setblocking(False)
        await loop.sock_connect(client, listener.getsockname())
        server, _ = await loop.sock_accept(listener)
        with server:
            server.setblocking(False)
            await loop.sock_sendall(server, b"hello")
            assert await loop.sock_recv(client, 5) == b"hello"
            received = loop.create_future()

            class Collect(asyncio.Protocol):
                def data_received(self, data: bytes) -> None:
                    received.set_result(data)

            transport, _ = await loop.create_connection(Collect, sock=client)
            try:
                await loop.sock_sendall(server, b"via transport")
                return await asyncio.wait_for(received, 5)
            finally:
                transport.close()
                await asyncio.sleep(0)

    assert run(loop_factory, main) == b"via transport"


def test_socket_released_after_recv(loop_factory: LoopFactory) -> None:
    # The loop keeps no strong reference to a socket once its calls are over.

    async def main() -> bool:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        nonblocking(a, b)
        assert await recv_after_waiting(loop, a, b, b"x") == b"x"
        ref = weakref.ref(a)
        a.close()
        b.close()
        del a
        gc.collect()
        await asyncio.sleep(0)
        return ref() is None

    assert run(loop_factory, main)


def test_no_busy_loop_when_duplicate_outlives_socket(loop_factory: LoopFactory) -> None:
    # The socket is closed while a duplicate of its descriptor (a forked
    # child's, say) keeps the connection open, and the peer keeps sending.
    # The loop must keep sleeping, not spin on a registration it can no
    # longer remove. Generous bound: a spinning loop burns the whole 0.5 s.

    async def main() -> float:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        nonblocking(a, b)
        assert await recv_after_waiting(loop, a, b, b"x") == b"x"
        duplicate = os.dup(a.fileno())
        try:
            a.close()
            b.send(b"unread data")
            started = time.process_time()
            for _ in range(5):
                await asyncio.sleep(0.1)
                b.send(b"more")
            return time.process_time() - started
        finally:
            os.close(duplicate)
            b.close()

    assert run(loop_factory, main) < 0.25


def test_descriptor_reuse_churn(loop_factory: LoopFactory) -> None:
    # Sockets come and go with the same few descriptor numbers, passing
    # between sock_recv, add_reader and transports, with data arriving before
    # or after each call. Every byte must arrive, and nothing may hang.

    rng = random.Random(5)

    class Collect(asyncio.Protocol):
        def __init__(self, done: asyncio.Future[bytes]) -> None:
            self.done = done

        def data_received(self, data: bytes) -> None:
            if not self.done.done():
                self.done.set_result(data)

    async def by_sock_recv(
        loop: asyncio.AbstractEventLoop, a: socket.socket, b: socket.socket
    ) -> bytes:
        if rng.random() < 0.5:
            b.send(b"early")
            return await loop.sock_recv(a, 100)
        return await recv_after_waiting(loop, a, b, b"late")

    async def by_reader(
        loop: asyncio.AbstractEventLoop, a: socket.socket, b: socket.socket
    ) -> bytes:
        got: asyncio.Future[bytes] = loop.create_future()

        def on_readable() -> None:
            if not got.done():
                got.set_result(a.recv(100))

        loop.add_reader(a, on_readable)
        try:
            b.send(b"reader")
            return await got
        finally:
            loop.remove_reader(a)

    async def by_transport(
        loop: asyncio.AbstractEventLoop, a: socket.socket, b: socket.socket
    ) -> bytes:
        got: asyncio.Future[bytes] = loop.create_future()
        # The transport takes `a` itself (same descriptor) and closes it.
        transport, _ = await loop.connect_accepted_socket(lambda: Collect(got), a)
        try:
            b.send(b"transport")
            return await got
        finally:
            transport.close()
            await asyncio.sleep(0)

    async def main() -> int:
        loop = asyncio.get_running_loop()
        ways = [by_sock_recv, by_reader, by_transport]
        rounds = 0
        for _ in range(150):
            a, b = socket.socketpair()
            nonblocking(a, b)
            with a, b:
                for _ in range(rng.randint(1, 3)):
                    way = rng.choice(ways)
                    data = await asyncio.wait_for(way(loop, a, b), 5)
                    assert data in (b"early", b"late", b"reader", b"transport"), data
                    rounds += 1
                    if way is by_transport:
                        break
                if a.fileno() != -1 and rng.random() < 0.5:
                    b.send(b"left unread")  # an idle registration sees an event
                    await asyncio.sleep(0)
        return rounds

    assert run(loop_factory, main) > 150
