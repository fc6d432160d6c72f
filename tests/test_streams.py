"""asyncio streams (open_connection/start_server) over asyncio's loop and ferroloop.

The streams layer is asyncio's own Python code; what is under test is the
transport underneath: data integrity, EOF, flow control reaching drain(), errors
surfacing as the same exceptions, and StreamWriter.start_tls (3.11+).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import sys
from typing import Any

import pytest
import tls_certs
from helpers_net import HAS_IPV6, count_fds, run_oracle
from loop_helpers import run

pytestmark = pytest.mark.timeout(60)

MiB = 1024 * 1024


async def _line_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while line := await reader.readline():
            writer.write(line)
            await writer.drain()
    finally:
        writer.close()


def test_open_connection_echo_and_read_apis(loop_factory: Any) -> None:
    async def main() -> None:
        server = await asyncio.start_server(_line_echo, "127.0.0.1", 0)
        host, port = server.sockets[0].getsockname()
        reader, writer = await asyncio.open_connection(host, port)
        assert isinstance(writer.transport, asyncio.Transport)
        assert writer.get_extra_info("peername") == (host, port)
        writer.write(b"hello\n")
        writer.writelines([b"multi ", b"part\n"])
        writer.write(b"abc--def--\n")
        writer.write(b"0123456789\n")
        await writer.drain()
        assert await reader.readline() == b"hello\n"
        assert await reader.readuntil(b"\n") == b"multi part\n"
        assert await reader.readuntil(b"--") == b"abc--"
        assert await reader.readexactly(5) == b"def--"
        assert await reader.readexactly(1) == b"\n"
        assert await reader.read(4) == b"0123"
        assert await reader.readline() == b"456789\n"
        writer.write(b"no newline at end")
        assert writer.can_write_eof()
        writer.write_eof()
        with pytest.raises(asyncio.IncompleteReadError) as info:
            await reader.readexactly(100)
        assert info.value.partial == b"no newline at end"
        assert reader.at_eof()
        assert await reader.read() == b""
        writer.close()
        assert writer.is_closing()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop_factory, main)


def test_readuntil_limit_overrun(loop_factory: Any) -> None:
    async def main() -> tuple[str, int, bytes]:
        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.write(b"x" * 300 + b"\n" + b"after\n")
            await w.drain()
            w.close()

        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname(), limit=100)
        try:
            await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as exc:
            kind, consumed = type(exc).__name__, exc.consumed
        else:
            kind, consumed = "none", -1
        with pytest.raises(ValueError):
            await reader.readline()  # the line is longer than the limit: it is dropped
        rest = await reader.read()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return kind, consumed, rest

    expected = run_oracle(main)
    assert expected[0] == "LimitOverrunError"
    assert run(loop_factory, main) == expected


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_large_echo_through_streams(loop_factory: Any, host: str) -> None:
    if host == "::1" and not HAS_IPV6:
        pytest.skip("no IPv6 loopback")

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(256 * 1024):
            w.write(data)
            await w.drain()
        w.close()

    async def main() -> None:
        server = await asyncio.start_server(handler, host, 0)
        reader, writer = await asyncio.open_connection(host, server.sockets[0].getsockname()[1])
        payload = os.urandom(16 * MiB)

        async def send() -> None:
            view = memoryview(payload)
            for i in range(0, len(payload), 1 * MiB):
                writer.write(view[i : i + 1 * MiB])
                await writer.drain()
            writer.write_eof()

        sender = asyncio.create_task(send())
        got = hashlib.sha256()
        total = 0
        while data := await reader.read(1 * MiB):
            got.update(data)
            total += len(data)
        await sender
        assert total == len(payload)
        assert got.digest() == hashlib.sha256(payload).digest()
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop_factory, main)


def test_drain_applies_flow_control(loop_factory: Any) -> None:
    async def main() -> None:
        release = asyncio.Event()
        received = bytearray()
        done = asyncio.Event()

        async def slow_handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await release.wait()
            while data := await r.read(1 * MiB):
                received.extend(data)
            w.close()
            done.set()

        server = await asyncio.start_server(slow_handler, "127.0.0.1", 0)
        _reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        writer.transport.set_write_buffer_limits(high=128 * 1024)
        chunk = b"d" * (64 * 1024)
        sent = 0
        blocked = False
        for _ in range(4096):  # up to 256 MiB, stops as soon as drain blocks
            writer.write(chunk)
            sent += len(chunk)
            drain = asyncio.ensure_future(writer.drain())
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            if not drain.done():
                blocked = True
                break
            await drain
        assert blocked, "drain() never blocked although the peer does not read"
        assert writer.transport.get_write_buffer_size() > 128 * 1024
        await asyncio.sleep(0.1)
        assert not drain.done()
        release.set()
        await asyncio.wait_for(drain, 20)
        assert writer.transport.get_write_buffer_size() <= 128 * 1024
        writer.write_eof()
        await asyncio.wait_for(done.wait(), 20)
        assert len(received) == sent
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop_factory, main)


def test_drain_after_peer_reset_raises(loop_factory: Any) -> None:
    async def main() -> list[str]:
        accepted: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            accepted.set_result(w)

        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        peer = await asyncio.wait_for(accepted, 10)
        sock = peer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        peer.transport.abort()
        out = []
        try:
            await asyncio.wait_for(reader.read(100), 10)
            out.append("read returned")
        except OSError as exc:
            out.append(type(exc).__name__)
        for _ in range(3):
            writer.write(b"after reset")
            try:
                await writer.drain()
                out.append("drained")
            except OSError as exc:
                out.append(type(exc).__name__)
        writer.close()
        try:
            await writer.wait_closed()
            out.append("closed")
        except OSError as exc:
            out.append("wait_closed:" + type(exc).__name__)
        server.close()
        await server.wait_closed()
        return out

    expected = run_oracle(main)
    assert expected[0] == "ConnectionResetError"
    assert run(loop_factory, main) == expected


def test_start_server_handler_exception_does_not_kill_server(loop_factory: Any) -> None:
    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda lp, ctx: None)
        count = 0

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            nonlocal count
            count += 1
            if count == 1:
                w.close()
                raise RuntimeError("handler failed")
            w.write(await r.readline())
            await w.drain()
            w.close()

        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        addr = server.sockets[0].getsockname()
        r1, w1 = await asyncio.open_connection(*addr)
        assert await asyncio.wait_for(r1.read(), 10) == b""
        w1.close()
        r2, w2 = await asyncio.open_connection(*addr)
        w2.write(b"second\n")
        got = await asyncio.wait_for(r2.readline(), 10)
        w2.close()
        await w2.wait_closed()
        server.close()
        await server.wait_closed()
        loop.set_exception_handler(None)
        return got

    assert run(loop_factory, main) == b"second\n"


def test_start_server_serve_forever_and_many_clients(loop_factory: Any) -> None:
    async def main() -> None:
        before = count_fds()
        server = await asyncio.start_server(_line_echo, "127.0.0.1", 0, start_serving=False)
        serving = asyncio.create_task(server.serve_forever())
        addr = server.sockets[0].getsockname()

        async def client(i: int) -> bytes:
            r, w = await asyncio.open_connection(*addr)
            w.write(b"client %d\n" % i)
            line = await r.readline()
            w.close()
            await w.wait_closed()
            return line

        lines = await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(300))), 30)
        assert lines == [b"client %d\n" % i for i in range(300)]
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving
        assert not server.is_serving()
        await asyncio.sleep(0.05)
        assert count_fds() <= before + 1

    run(loop_factory, main)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="StreamWriter.start_tls is new in 3.11")
def test_streamwriter_start_tls_upgrade(loop_factory: Any) -> None:
    server_ctx = tls_certs.server_context()
    client_ctx = tls_certs.client_context()

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        assert await r.readline() == b"STARTTLS\n"
        w.write(b"GO AHEAD\n")
        await w.drain()
        await w.start_tls(server_ctx)
        assert w.get_extra_info("ssl_object") is not None
        while line := await r.readline():
            w.write(b"secure:" + line)
            await w.drain()
        w.close()

    async def main() -> None:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        assert writer.get_extra_info("ssl_object") is None
        writer.write(b"STARTTLS\n")
        assert await reader.readline() == b"GO AHEAD\n"
        await asyncio.wait_for(writer.start_tls(client_ctx, server_hostname="localhost"), 10)
        ssl_object = writer.get_extra_info("ssl_object")
        assert ssl_object is not None and ssl_object.version() is not None
        assert writer.get_extra_info("peercert")["subject"]
        lines = [os.urandom(16 * 1024).hex().encode() + b"\n" for _ in range(200)]  # 6.4 MB
        writer.write(b"hello\n")
        writer.writelines(lines)
        await writer.drain()
        assert await reader.readline() == b"secure:hello\n"
        for line in lines:
            assert await asyncio.wait_for(reader.readline(), 10) == b"secure:" + line
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop_factory, main)


def test_streams_over_tls_directly(loop_factory: Any) -> None:
    async def main() -> None:
        server = await asyncio.start_server(
            _line_echo, "127.0.0.1", 0, ssl=tls_certs.server_context()
        )
        reader, writer = await asyncio.open_connection(
            *server.sockets[0].getsockname(),
            ssl=tls_certs.client_context(),
            server_hostname="localhost",
        )
        for i in range(50):
            writer.write(b"line %d\n" % i)
        await writer.drain()
        for i in range(50):
            assert await reader.readline() == b"line %d\n" % i
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop_factory, main)
