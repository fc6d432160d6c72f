"""How application data crosses a TLS connection, on asyncio's loop and ferroloop.

ferroloop runs TLS through a subclass of asyncio's `SSLProtocol` that shortens
the per-record work (ferroloop/tls_protocol.py). These scenarios exercise the
cases that subclass treats specially, and asyncio's loop is the oracle: several
records read at once, data and close_notify in one segment, a BufferedProtocol
application with a small buffer and paused reading, every kind of write, the
context's `sslobject_class`, and flow control with a high-water mark of zero.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import socket
import ssl
import weakref
from typing import Any

import pytest
import tls_certs
from cpython_bugs import TLS_BYTEARRAY_BUFFER_LOSES_DATA
from helpers_net import (
    EchoProtocol,
    RecordingProtocol,
    close_server,
    count_fds,
    run_oracle,
    tls_pair,
)
from loop_helpers import run

pytestmark = pytest.mark.timeout(60)


async def close_both(server: Any, tr: Any, proto: Any, sproto: Any) -> None:
    """Close the client and wait until both ends and the server are gone."""
    tr.close()
    await asyncio.wait_for(proto.lost, 10)
    await asyncio.wait_for(sproto.lost, 10)
    await close_server(server)


class ChunkRecorder(asyncio.Protocol):
    """Keeps every data_received() argument separately."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.arrived = asyncio.Event()
        self.lost = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.arrived.set()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.set_result(exc)


def test_records_read_together_reach_the_app_in_one_call(loop_factory: Any) -> None:
    async def main() -> list[bytes]:
        server, side, tr, proto = await tls_pair(ChunkRecorder)
        sproto = await side.first()
        # Three records, sent by one write to the socket.
        tr.writelines([b"one ", b"two ", b"three"])
        await asyncio.wait_for(sproto.arrived.wait(), 10)
        await close_both(server, tr, proto, sproto)
        return sproto.chunks

    expected = run_oracle(main)
    assert expected == [b"one two three"]
    assert run(loop_factory, main) == expected


class Greeter(RecordingProtocol):
    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        transport.write(b"hello")


def _client_sending_data_and_close_notify_together(port: int, payload: bytes) -> bytes:
    """A blocking TLS client whose last data record and close_notify share one send()."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = tls_certs.client_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    received = bytearray()

    def receive() -> bool:
        data = sock.recv(65536)
        incoming.write(data)
        return bool(data)

    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outgoing.read())
                if not receive():
                    raise ConnectionError("closed during the handshake") from None
        sock.sendall(outgoing.read())
        # Wait for the server's greeting: the server is past its handshake.
        while len(received) < len(b"hello"):
            try:
                received += tls.read(65536)
            except ssl.SSLWantReadError:
                if not receive():
                    break
        tls.write(payload)
        try:
            tls.unwrap()
        except ssl.SSLWantReadError:
            pass
        sock.sendall(outgoing.read())
        while receive():
            pass
    return bytes(received)


def test_data_and_close_notify_in_one_segment(loop_factory: Any) -> None:
    async def main() -> tuple[bytes, list[str], bytes]:
        loop = asyncio.get_running_loop()
        side_protocols: list[Greeter] = []

        def factory() -> Greeter:
            side_protocols.append(Greeter())
            return side_protocols[-1]

        server = await loop.create_server(factory, "127.0.0.1", 0, ssl=tls_certs.server_context())
        port = server.sockets[0].getsockname()[1]
        greeting = await loop.run_in_executor(
            None, _client_sending_data_and_close_notify_together, port, b"last words"
        )
        sproto = side_protocols[0]
        await asyncio.wait_for(sproto.lost, 10)
        await close_server(server)
        return greeting, sproto.events, bytes(sproto.data)

    expected = run_oracle(main)
    assert expected == (b"hello", ["made", "data", "eof", "lost"], b"last words")
    assert run(loop_factory, main) == expected


class SmallBufferProtocol(asyncio.BufferedProtocol):
    """A BufferedProtocol with a 1,000-byte buffer that pauses reading once."""

    as_view = True

    def __init__(self) -> None:
        self.storage = bytearray(1000)
        self.buffer: Any = memoryview(self.storage) if self.as_view else self.storage
        self.digest = hashlib.sha256()
        self.received = 0
        self.largest = 0
        self.paused_at: int | None = None
        self.transport: Any = None
        self.done = asyncio.get_running_loop().create_future()
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> Any:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.digest.update(self.storage[:nbytes])
        self.received += nbytes
        self.largest = max(self.largest, nbytes)
        if self.paused_at is None and self.received >= 100_000:
            self.paused_at = self.received
            self.transport.pause_reading()
            asyncio.get_running_loop().call_later(0.05, self.resume)

    def resume(self) -> None:
        # Nothing may have arrived while paused.
        assert self.received == self.paused_at
        self.transport.resume_reading()

    def eof_received(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.set_result(exc)


class SmallBytearrayProtocol(SmallBufferProtocol):
    as_view = False


@pytest.mark.parametrize("buffer_type", ["memoryview", "bytearray"])
def test_buffered_protocol_with_a_small_buffer_gets_every_byte(
    loop_factory: Any, loop_name: str, buffer_type: str, request: Any
) -> None:
    if buffer_type == "bytearray":
        TLS_BYTEARRAY_BUFFER_LOSES_DATA.xfail_on_asyncio(request, loop_name)
    payload = os.urandom(1024 * 1024 + 7)
    factory = SmallBufferProtocol if buffer_type == "memoryview" else SmallBytearrayProtocol

    async def main() -> tuple[int, bytes, int, int | None]:
        server, side, tr, proto = await tls_pair(factory, RecordingProtocol)
        sproto = await side.first()
        tr.write(payload)
        tr.close()
        await asyncio.wait_for(sproto.done, 20)
        await asyncio.wait_for(sproto.lost, 10)
        await asyncio.wait_for(proto.lost, 10)
        await close_server(server)
        return sproto.received, sproto.digest.digest(), sproto.largest, sproto.paused_at

    received, digest, largest, paused_at = run(loop_factory, main)
    assert received == len(payload)
    assert 0 < largest <= 1000
    assert paused_at is not None
    assert digest == hashlib.sha256(payload).digest()


def test_every_kind_of_write_arrives_in_order(loop_factory: Any) -> None:
    async def main() -> tuple[bytes, str]:
        server, side, tr, proto = await tls_pair()
        sproto = await side.first()
        tr.write(b"bytes;")
        tr.write(b"")
        tr.write(bytearray(b"bytearray;"))
        tr.write(memoryview(b"xmemoryview;")[1:])
        tr.writelines([b"lines", bytearray(b";"), memoryview(b"of;"), b"data;"])
        tr.writelines(iter([b"an ", b"iterator;"]))
        try:
            tr.write("text")
            refused = "accepted"
        except TypeError as exc:
            refused = str(exc)
        tr.write(b"end")
        data = await sproto.wait_for_bytes(55)
        await close_both(server, tr, proto, sproto)
        return data, refused

    expected = run_oracle(main)
    assert expected[0] == b"bytes;bytearray;memoryview;lines;of;data;an iterator;end"
    assert run(loop_factory, main) == expected


class CountingSSLObject(ssl.SSLObject):
    """An SSLObject whose data calls are counted (a context's `sslobject_class`)."""

    calls = 0

    def read(self, *args: Any, **kwargs: Any) -> Any:
        CountingSSLObject.calls += 1
        return super().read(*args, **kwargs)

    def write(self, data: Any) -> int:
        CountingSSLObject.calls += 1
        return super().write(data)


def test_the_contexts_sslobject_class_is_used(loop_factory: Any) -> None:
    async def main() -> bytes:
        context = tls_certs.server_context()
        context.sslobject_class = CountingSSLObject
        server, side, tr, proto = await tls_pair(server_context=context)
        sproto = await side.first()
        await asyncio.wait_for(sproto.made, 10)
        CountingSSLObject.calls = 0
        tr.write(b"ping")
        await sproto.wait_for_bytes(4)
        sproto.transport.write(b"pong")
        await close_both(server, tr, proto, sproto)
        # One read at least for "ping", one write for "pong".
        assert CountingSSLObject.calls >= 2
        return bytes(sproto.data)

    assert run(loop_factory, main) == b"ping"


def test_zero_high_water_mark_pauses_and_resumes_writing(loop_factory: Any) -> None:
    async def main() -> list[str]:
        server, side, tr, proto = await tls_pair(Greeter)
        sproto = await side.first()
        await proto.wait_for_bytes(len(b"hello"))
        tr.set_write_buffer_limits(high=0)
        tr.write(b"ping")
        await sproto.wait_for_bytes(4)
        sproto.transport.write(b"pong")
        await proto.wait_for_bytes(len(b"hellopong"))
        await close_both(server, tr, proto, sproto)
        return proto.events

    expected = run_oracle(main)
    assert expected[:4] == ["made", "data", "pause_writing", "resume_writing"]
    assert run(loop_factory, main) == expected


def test_closed_tls_connections_leave_no_descriptors_or_objects(loop_factory: Any) -> None:
    async def main() -> list[weakref.ref[Any]]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            EchoProtocol, "127.0.0.1", 0, ssl=tls_certs.server_context()
        )
        refs: list[weakref.ref[Any]] = []
        for _ in range(40):
            tr, proto = await loop.create_connection(
                RecordingProtocol,
                *server.sockets[0].getsockname()[:2],
                ssl=tls_certs.client_context(),
                server_hostname="localhost",
            )
            tr.write(b"echo me")
            await proto.wait_for_bytes(7)
            tr.close()
            await asyncio.wait_for(proto.lost, 10)
            refs += [weakref.ref(tr), weakref.ref(proto)]
        await close_server(server)
        return refs

    run(loop_factory, main)  # imports, certificates and the like, once
    gc.collect()
    before = count_fds()
    refs = run(loop_factory, main)
    gc.collect()
    assert count_fds() == before
    assert [ref for ref in refs if ref() is not None] == []
