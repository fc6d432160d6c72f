"""Unix domain stream sockets: create_unix_server/connection and the stream helpers."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from helpers_net import EchoProtocol, RecordingProtocol, ServerSide, close_server, run_oracle
from loop_helpers import run

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no Unix sockets"),
]

MiB = 1024 * 1024


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    # Keep it short: sun_path is limited to ~107 bytes.
    short = Path("/tmp") / f"fl-{uuid.uuid4().hex[:12]}.sock"
    yield short
    try:
        short.unlink()
    except FileNotFoundError:
        pass


def test_unix_server_and_connection(loop_factory: Any, sock_path: Path) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        side = ServerSide(RecordingProtocol)
        server = await loop.create_unix_server(side, sock_path)
        assert server.is_serving()
        assert server.sockets[0].family == socket.AF_UNIX
        assert server.sockets[0].getsockname() == str(sock_path)
        assert sock_path.exists()
        tr, proto = await loop.create_unix_connection(RecordingProtocol, str(sock_path))
        assert isinstance(tr, asyncio.Transport)
        assert tr.get_extra_info("peername") == str(sock_path)
        assert tr.get_extra_info("socket").family == socket.AF_UNIX
        assert tr.can_write_eof()
        sproto = await side.first()
        await sproto.made
        assert sproto.transport.get_extra_info("sockname") == str(sock_path)
        tr.write(b"over unix")
        assert await sproto.wait_for_bytes(9) == b"over unix"
        # Half close: the server can still answer after our EOF.
        sproto.eof_keeps_open = True
        tr.write_eof()
        await asyncio.wait_for(sproto.eof, 10)
        sproto.transport.write(b"answer")
        sproto.transport.close()
        await asyncio.wait_for(proto.lost, 10)
        assert bytes(proto.data) == b"answer"
        assert proto.events == ["made", "data", "eof", "lost"]
        assert sproto.events == ["made", "data", "eof", "lost"]
        await close_server(server)

    run(loop_factory, main)


def test_unix_server_replaces_stale_socket_file(loop_factory: Any, sock_path: Path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock_path))
    stale.close()  # the file stays behind, nobody listens
    assert sock_path.exists()

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        with pytest.raises(ConnectionRefusedError):
            await loop.create_unix_connection(asyncio.Protocol, sock_path)
        server = await loop.create_unix_server(EchoProtocol, sock_path)
        tr, proto = await loop.create_unix_connection(RecordingProtocol, sock_path)
        tr.write(b"fresh")
        got = await proto.wait_for_bytes(5)
        tr.close()
        await close_server(server)
        return got

    assert run(loop_factory, main) == b"fresh"


def test_unix_server_on_regular_file_or_live_socket(loop_factory: Any, sock_path: Path) -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        out = []
        if os.path.lexists(sock_path):
            sock_path.unlink()
        sock_path.write_text("not a socket")
        try:
            await loop.create_unix_server(EchoProtocol, sock_path)
            out.append("created")
        except OSError as exc:
            out.append(f"{type(exc).__name__} {exc.errno}")
        out.append("file kept" if sock_path.read_text() == "not a socket" else "file gone")
        sock_path.unlink()
        live = await loop.create_unix_server(EchoProtocol, sock_path)
        try:
            second = await loop.create_unix_server(EchoProtocol, sock_path)
            out.append("second server created")
            # asyncio unlinks the live server's socket file; the first server is orphaned.
            await close_server(second)
        except OSError as exc:
            out.append(f"{type(exc).__name__} {exc.errno}")
        await close_server(live)
        out.append("exists after close" if sock_path.exists() else "removed after close")
        return out

    expected = run_oracle(main)
    assert run(loop_factory, main) == expected


@pytest.mark.skipif(sys.version_info < (3, 13), reason="cleanup_socket is new in Python 3.13")
def test_unix_server_cleanup_socket(loop_factory: Any, sock_path: Path) -> None:
    """cleanup_socket=True (3.13's default) removes the socket file when the server
    closes, unless another file has taken its place; False leaves it."""

    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        out: list[Any] = []
        server = await loop.create_unix_server(EchoProtocol, sock_path, cleanup_socket=True)
        await close_server(server)
        out.append(os.path.lexists(sock_path))
        server = await loop.create_unix_server(EchoProtocol, sock_path, cleanup_socket=False)
        await close_server(server)
        out.append(os.path.lexists(sock_path))
        sock_path.unlink()
        server = await loop.create_unix_server(EchoProtocol, sock_path, cleanup_socket=True)
        sock_path.unlink()
        sock_path.write_text("someone else's")
        await close_server(server)
        out.append(sock_path.read_text())
        return out

    assert run(loop_factory, main) == [False, True, "someone else's"]


def test_unix_connection_errors(loop_factory: Any, sock_path: Path) -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        out = []
        tcp = socket.socket()
        calls = [
            lambda: loop.create_unix_connection(asyncio.Protocol, str(sock_path)),
            lambda: loop.create_unix_connection(asyncio.Protocol),
            lambda: loop.create_unix_connection(asyncio.Protocol, sock=tcp),
            lambda: loop.create_unix_connection(asyncio.Protocol, str(sock_path), sock=tcp),
            lambda: loop.create_unix_server(asyncio.Protocol),
            lambda: loop.create_unix_server(asyncio.Protocol, sock=tcp),
        ]
        try:
            for call in calls:
                try:
                    await call()
                    out.append("ok")
                except (OSError, ValueError, TypeError) as exc:
                    out.append(type(exc).__name__)
        finally:
            tcp.close()
        return out

    expected = run_oracle(main)
    assert expected[0] == "FileNotFoundError"
    assert run(loop_factory, main) == expected


def test_unix_with_sock_arguments(loop_factory: Any, sock_path: Path) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lsock.bind(str(sock_path))
        server = await loop.create_unix_server(EchoProtocol, sock=lsock)
        csock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        csock.setblocking(False)
        await loop.sock_connect(csock, str(sock_path))
        tr, proto = await loop.create_unix_connection(RecordingProtocol, sock=csock)
        tr.write(b"with sock")
        assert await proto.wait_for_bytes(9) == b"with sock"
        tr.close()
        await proto.lost
        await close_server(server)

    run(loop_factory, main)


def test_unix_abstract_namespace(loop_factory: Any) -> None:
    name = "\0ferroloop-test-" + uuid.uuid4().hex

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(EchoProtocol, name)
        tr, proto = await loop.create_unix_connection(RecordingProtocol, name)
        tr.write(b"abstract")
        got = await proto.wait_for_bytes(8)
        tr.close()
        await close_server(server)
        return got

    assert run(loop_factory, main) == b"abstract"


def test_unix_streams_large_transfer_and_server_side_half_close(
    loop_factory: Any, sock_path: Path
) -> None:
    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        digest = hashlib.sha256()
        size = 0
        while data := await r.read(1 * MiB):
            digest.update(data)
            size += len(data)
        w.write(b"%d %s\n" % (size, digest.hexdigest().encode()))
        await w.drain()
        w.close()
        await w.wait_closed()

    async def main() -> None:
        server = await asyncio.start_unix_server(handler, path=sock_path)
        reader, writer = await asyncio.open_unix_connection(path=sock_path)
        payload = os.urandom(20 * MiB)
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
        line = await asyncio.wait_for(reader.readline(), 30)
        assert line == b"%d %s\n" % (len(payload), hashlib.sha256(payload).hexdigest().encode())
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()

    run(loop_factory, main)


def test_unix_sendfile(loop_factory: Any, sock_path: Path, tmp_path: Path) -> None:
    content = os.urandom(MiB + 123)
    blob = tmp_path / "blob"
    blob.write_bytes(content)

    async def main() -> tuple[int, int, bytes]:
        loop = asyncio.get_running_loop()
        side = ServerSide(RecordingProtocol)
        server = await loop.create_unix_server(side, sock_path)
        tr, _proto = await loop.create_unix_connection(RecordingProtocol, sock_path)
        with open(blob, "rb") as f:
            sent = await loop.sendfile(tr, f, 100)
            pos = f.tell()
        tr.write_eof()
        sproto = await side.first()
        await asyncio.wait_for(sproto.eof, 20)
        tr.close()
        await close_server(server)
        return sent, pos, bytes(sproto.data)

    sent, pos, data = run(loop_factory, main)
    assert sent == len(content) - 100
    assert pos == len(content)
    assert data == content[100:]


def test_many_unix_connections(loop_factory: Any, sock_path: Path) -> None:
    async def main() -> None:
        server = await asyncio.start_unix_server(_echo_line, path=sock_path, backlog=1024)

        async def client(i: int) -> bytes:
            r, w = await asyncio.open_unix_connection(path=sock_path)
            w.write(b"%d\n" % i)
            line = await r.readline()
            w.close()
            await w.wait_closed()
            return line

        got = await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(500))), 30)
        assert got == [b"%d\n" % i for i in range(500)]
        server.close()
        await server.wait_closed()

    run(loop_factory, main)


async def _echo_line(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    w.write(await r.readline())
    await w.drain()
    w.close()
