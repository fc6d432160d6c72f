"""Shared helpers for the networking tests: recording protocols, echo servers, fd counting.

Everything here uses only the public asyncio API of whatever loop is running,
so the same helper serves both the asyncio oracle and ferroloop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import mmap
import os
import re
import resource
import socket
import ssl
import warnings
from collections.abc import Awaitable, Callable, Iterator
from typing import Any


def _probe_ipv6() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


HAS_IPV6 = _probe_ipv6()


def queue_datagrams(sender: socket.socket, sizes: list[int]) -> list[bytes]:
    """Sends datagrams of `sizes` random bytes on `sender` (its peer queues
    them all) and returns them; skips the test where the host caps socket
    buffers below what they need."""
    import pytest

    sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    datagrams = [os.urandom(size) for size in sizes]
    try:
        for datagram in datagrams:
            sender.send(datagram)
    except OSError as exc:
        pytest.skip(f"cannot queue these datagrams here: {exc}")
    return datagrams


def buffer_at_page_offset(size: int, offset: int) -> memoryview:
    """A writable buffer of `size` bytes starting `offset` bytes past a page
    boundary (a kernel copy of received data to some offsets is slow, and a
    loop may then receive such data another way)."""
    backing = bytearray(size + 2 * mmap.PAGESIZE)
    address = ctypes.addressof(ctypes.c_char.from_buffer(backing))
    skip = (offset - address) % mmap.PAGESIZE
    return memoryview(backing)[skip : skip + size]


def count_fds() -> int:
    """Number of open descriptors of this process."""
    return len(os.listdir("/proc/self/fd"))


def as_any_class(text: str) -> str:
    """A transport's repr, or a log line that starts with one, with its class
    name (the loops spell theirs apart) as T, descriptor numbers as F and
    non-zero buffer sizes as N."""
    text = re.sub(r"^<\w+ ", "<T ", text)
    text = re.sub(r"fd=\d+", "fd=F", text)
    return re.sub(r"bufsize=[1-9]\d*", "bufsize=N", text)


def run_and_drop_loop(
    loop_factory: Callable[[], asyncio.AbstractEventLoop], coro_fn: Callable[[], Awaitable[Any]]
) -> tuple[Any, list[str]]:
    """Runs `coro_fn()` on a new loop, then closes and drops the loop with
    whatever it left open; returns the result and the messages of the
    ResourceWarnings raised meanwhile (unclosed transports, say)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loop = loop_factory()
        result = loop.run_until_complete(coro_fn())
        loop.close()
        del loop
        gc.collect()
    return result, [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]


class _Recording(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.levelname, record.getMessage()))


@contextlib.contextmanager
def asyncio_log() -> Iterator[list[tuple[str, str]]]:
    """(level, message) of each record asyncio's logger emits meanwhile, from
    DEBUG up, formatted when logged: its arguments (transports, sockets) may
    change or close afterwards."""
    logger = logging.getLogger("asyncio")
    handler, level = _Recording(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@contextlib.contextmanager
def raised_nofile(wanted: int) -> Iterator[int]:
    """Raise RLIMIT_NOFILE's soft limit towards `wanted` (within the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = soft
    if soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    try:
        yield target
    finally:
        if target != soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class RecordingProtocol(asyncio.Protocol):
    """Records every callback in order; futures signal the interesting moments."""

    def __init__(self, *, eof_keeps_open: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self.events: list[str] = []
        self.data = bytearray()
        self.transport: Any = None
        self.made = loop.create_future()
        self.eof = loop.create_future()
        self.lost = loop.create_future()
        self.lost_calls = 0
        self.lost_exc: BaseException | None = None
        self.pause_calls = 0
        self.resume_calls = 0
        self.eof_keeps_open = eof_keeps_open
        self._data_waiters: list[tuple[int, asyncio.Future[None]]] = []

    def connection_made(self, transport: Any) -> None:
        self.events.append("made")
        self.transport = transport
        self.made.set_result(None)

    def data_received(self, data: bytes) -> None:
        if not self.events or self.events[-1] != "data":
            self.events.append("data")
        self.data += data
        self._wake()

    def eof_received(self) -> bool | None:
        self.events.append("eof")
        if not self.eof.done():
            self.eof.set_result(None)
        self._wake()
        return True if self.eof_keeps_open else None

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append("lost")
        self.lost_calls += 1
        self.lost_exc = exc
        if not self.lost.done():
            self.lost.set_result(exc)
        self._wake()

    def pause_writing(self) -> None:
        self.pause_calls += 1
        self.events.append("pause_writing")

    def resume_writing(self) -> None:
        self.resume_calls += 1
        self.events.append("resume_writing")

    def _wake(self) -> None:
        still = []
        for size, fut in self._data_waiters:
            if fut.done():
                continue
            if len(self.data) >= size or self.lost.done() or self.eof.done():
                fut.set_result(None)
            else:
                still.append((size, fut))
        self._data_waiters = still

    async def wait_for_bytes(self, size: int, timeout: float = 10) -> bytes:
        """Wait until at least `size` bytes arrived (or EOF/loss); return all data so far."""
        if len(self.data) < size and not self.lost.done() and not self.eof.done():
            fut = asyncio.get_running_loop().create_future()
            self._data_waiters.append((size, fut))
            await asyncio.wait_for(fut, timeout)
        return bytes(self.data)


class EchoProtocol(asyncio.Protocol):
    """Server side: echoes everything; closes (after flushing) on the peer's EOF."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> None:
        return None  # the transport closes itself once the echo is flushed


class KeepingProtocol(asyncio.Protocol):
    """Keeps some of the `bytes` objects it is given and drops the others.

    A loop may refill a `bytes` object nobody kept for a later read; this
    protocol checks that objects it kept never change and that every object,
    kept or not, hashes like a new one. `kept` holds (stream offset, object,
    its hash at arrival); `errors` whatever did not hold.
    """

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.transport: Any = None
        self.offset = 0
        self.reads = 0
        self.kept: list[tuple[int, Any, int]] = []
        self.views: list[tuple[int, memoryview]] = []
        self.errors: list[str] = []
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if type(data) is not bytes or hash(data) != hash(bytes(bytearray(data))):
            self.errors.append(f"read {self.reads}: a stale or odd object")
        if self.reads % 3 == 0:
            self.kept.append((self.offset, data, hash(data)))
        elif self.reads % 3 == 1 and self.reads % 2 == 0:
            self.views.append((self.offset, memoryview(data)))
        self.reads += 1
        self.offset += len(data)
        if self.echo:
            self.transport.write(data)

    def eof_received(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def check_against(self, stream: bytes) -> list[str]:
        """What the kept objects got wrong, compared with the bytes sent."""
        errors = list(self.errors)
        if self.offset != len(stream):
            errors.append(f"received {self.offset} bytes of {len(stream)}")
        for offset, data, digest in self.kept:
            if data != stream[offset : offset + len(data)] or hash(data) != digest:
                errors.append(f"the object kept at offset {offset} changed")
        for offset, view in self.views:
            if view.tobytes() != stream[offset : offset + len(view)]:
                errors.append(f"the view kept at offset {offset} changed")
        return errors


class ServerSide:
    """Collects the protocols a server created, to reach the server side of a connection."""

    def __init__(self, factory: Any = RecordingProtocol) -> None:
        self.factory = factory
        self.protocols: list[Any] = []
        self._next: asyncio.Future[Any] | None = None

    def __call__(self) -> Any:
        proto = self.factory()
        self.protocols.append(proto)
        if self._next is not None and not self._next.done():
            self._next.set_result(proto)
        return proto

    async def first(self, timeout: float = 10) -> Any:
        if self.protocols:
            return self.protocols[0]
        self._next = asyncio.get_running_loop().create_future()
        return await asyncio.wait_for(self._next, timeout)


async def tcp_pair(
    server_factory: Any = None, client_factory: Any = None, host: str = "127.0.0.1"
) -> tuple[asyncio.AbstractServer, ServerSide, Any, Any]:
    """A listening server on `host` and one connection to it.

    Returns (server, server_side, client_transport, client_protocol); the
    server-side protocol is ``await server_side.first()`` (connection_made done).
    """
    loop = asyncio.get_running_loop()
    side = ServerSide(server_factory or RecordingProtocol)
    server = await loop.create_server(side, host, 0)
    port = server.sockets[0].getsockname()[1]
    transport, protocol = await loop.create_connection(
        client_factory or RecordingProtocol, host, port
    )
    proto = await side.first()
    if isinstance(proto, RecordingProtocol):
        await asyncio.wait_for(proto.made, 10)
    return server, side, transport, protocol


class DataEvents(asyncio.Protocol):
    """Appends "data" to its `events` for every read."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def data_received(self, data: bytes) -> None:
        self.events.append("data")


class DatagramEvents(asyncio.DatagramProtocol):
    """Appends "data" to its `events` for every datagram."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.events.append("data")


async def order_after_pause_and_resume(
    transport: Any, send: Callable[[], object], events: list[str]
) -> list[str]:
    """What comes first after a read is queued and the transport is then
    paused and resumed in one callback that also queues another callback.

    `send()` makes the transport's descriptor readable; the transport's
    protocol (a `DataEvents` or `DatagramEvents`) appends "data" to `events`.
    asyncio's pause cancels the read the poll had queued, so the data comes at
    the next poll, after the callback queued meanwhile. Returns `events` once
    the data arrived, and closes the transport.
    """
    loop = asyncio.get_running_loop()

    def pause_and_resume() -> None:
        transport.pause_reading()
        transport.resume_reading()
        loop.call_soon(events.append, "queued after resume")

    send()
    loop.call_soon(pause_and_resume)
    for _ in range(100):
        if "data" in events:
            break
        await asyncio.sleep(0.001)
    transport.close()
    await asyncio.sleep(0)
    return events


def listening_socket(host: str = "127.0.0.1", family: int = socket.AF_INET) -> socket.socket:
    """A plain listening socket (blocking) on an ephemeral port."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(100)
    return sock


def closed_port(host: str = "127.0.0.1", family: int = socket.AF_INET) -> int:
    """A port on which (almost certainly) nothing listens: bound, never listening."""
    # Keep nothing bound: take an ephemeral port and release it right away.
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


async def close_server(server: asyncio.AbstractServer) -> None:
    server.close()
    await asyncio.wait_for(server.wait_closed(), 10)


def run_oracle(coro_fn: Any, *, debug: bool | None = None) -> Any:
    """Run `coro_fn()` on asyncio's own loop: the expected behaviour."""
    from loop_helpers import make_loop_factory, run

    return run(make_loop_factory("asyncio"), coro_fn, debug=debug)


async def tls_pair(
    server_factory: Any = RecordingProtocol,
    client_factory: Any = RecordingProtocol,
    *,
    server_context: ssl.SSLContext | None = None,
) -> tuple[Any, ServerSide, Any, Any]:
    """A TLS server on 127.0.0.1 and one client connected to it (test certificates)."""
    import tls_certs

    loop = asyncio.get_running_loop()
    side = ServerSide(server_factory)
    server = await loop.create_server(
        side, "127.0.0.1", 0, ssl=server_context or tls_certs.server_context()
    )
    port = server.sockets[0].getsockname()[1]
    tr, proto = await asyncio.wait_for(
        loop.create_connection(
            client_factory,
            "127.0.0.1",
            port,
            ssl=tls_certs.client_context(),
            server_hostname="localhost",
        ),
        10,
    )
    return server, side, tr, proto
