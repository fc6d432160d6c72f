"""TLS over asyncio's loop and ferroloop, with certificates generated at test time.

The certificates come from tls_certs (a private CA plus a server certificate for
localhost/127.0.0.1/::1, and an untrusted self-signed one). Where asyncio's exact
outcome matters (which exception a failure produces, the callback sequence), the
scenario runs on asyncio's loop first and the loop under test must match it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import tls_certs
from helpers_net import (
    EchoProtocol,
    RecordingProtocol,
    ServerSide,
    close_server,
    listening_socket,
    run_oracle,
    tls_pair,
)
from loop_helpers import run

pytestmark = pytest.mark.timeout(60)

MiB = 1024 * 1024


def server_ctx() -> ssl.SSLContext:
    return tls_certs.server_context()


def client_ctx() -> ssl.SSLContext:
    return tls_certs.client_context()


def test_tls_handshake_and_extra_info(loop_factory: Any) -> None:
    async def main() -> dict[str, Any]:
        server, side, tr, proto = await tls_pair()
        sproto = await side.first()
        await asyncio.wait_for(sproto.made, 10)
        assert isinstance(tr, asyncio.Transport)
        ssl_object = tr.get_extra_info("ssl_object")
        assert isinstance(ssl_object, ssl.SSLObject)
        assert ssl_object.server_hostname == "localhost"
        peercert = tr.get_extra_info("peercert")
        assert dict(x[0] for x in peercert["subject"])["commonName"] == "localhost"
        cipher = tr.get_extra_info("cipher")
        assert isinstance(cipher, tuple) and len(cipher) == 3
        assert isinstance(tr.get_extra_info("sslcontext"), ssl.SSLContext)
        sock = tr.get_extra_info("socket")
        assert sock.getpeername() == tr.get_extra_info("peername")
        info = {
            "client_compression": tr.get_extra_info("compression"),
            "server_peercert": sproto.transport.get_extra_info("peercert"),
            "server_has_ssl_object": sproto.transport.get_extra_info("ssl_object") is not None,
            "server_side": sproto.transport.get_extra_info("ssl_object").server_side,
            "version_tls": ssl_object.version().startswith("TLS"),
            "can_write_eof": tr.can_write_eof(),
        }
        tr.write(b"hello tls")
        assert await sproto.wait_for_bytes(9) == b"hello tls"
        sproto.transport.write(b"hi back")
        assert await proto.wait_for_bytes(7) == b"hi back"
        tr.close()
        await asyncio.wait_for(sproto.lost, 10)
        await asyncio.wait_for(proto.lost, 10)
        info["client_events"] = proto.events
        info["server_events"] = sproto.events
        info["lost_exc"] = (repr(proto.lost_exc), repr(sproto.lost_exc))
        await close_server(server)
        return info

    expected = run_oracle(main)
    assert run(loop_factory, main) == expected


@pytest.mark.parametrize("direction", ["client_to_server", "server_to_client", "echo"])
def test_tls_large_transfers(loop_factory: Any, direction: str) -> None:
    size = 20 * MiB

    async def main() -> None:
        server, side, tr, proto = await tls_pair(
            server_factory=EchoProtocol if direction == "echo" else RecordingProtocol
        )
        sproto = await side.first()
        payload = os.urandom(size)
        if direction == "server_to_client":
            await asyncio.wait_for(sproto.made, 10)
            sender, receiver = sproto.transport, proto
        else:
            sender, receiver = tr, (proto if direction == "echo" else sproto)
        view = memoryview(payload)
        for i in range(0, size, 1 * MiB):
            sender.write(view[i : i + 1 * MiB])
            await asyncio.sleep(0)
        got = await receiver.wait_for_bytes(size, timeout=40)
        assert len(got) == size
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        tr.close()
        await asyncio.wait_for(proto.lost, 10)
        await close_server(server)

    run(loop_factory, main)


def test_tls_flow_control_pause_writing(loop_factory: Any) -> None:
    async def main() -> None:
        server, side, tr, proto = await tls_pair()
        sproto = await side.first()
        await asyncio.wait_for(sproto.made, 10)
        sproto.transport.pause_reading()
        assert not sproto.transport.is_reading()
        chunk = b"t" * (256 * 1024)
        sent = 0
        while proto.pause_calls == 0 and sent < 512 * MiB:
            tr.write(chunk)
            sent += len(chunk)
            await asyncio.sleep(0)
        assert proto.pause_calls == 1
        await asyncio.sleep(0.1)
        assert len(sproto.data) <= sent
        received_while_paused = len(sproto.data)
        await asyncio.sleep(0.1)
        assert len(sproto.data) == received_while_paused
        sproto.transport.resume_reading()
        await sproto.wait_for_bytes(sent, timeout=40)
        assert len(sproto.data) == sent
        for _ in range(100):
            if proto.resume_calls:
                break
            await asyncio.sleep(0.01)
        assert proto.resume_calls == 1
        tr.close()
        await asyncio.wait_for(proto.lost, 10)
        await close_server(server)

    run(loop_factory, main)


@pytest.mark.parametrize(
    "case", ["untrusted_self_signed", "hostname_mismatch", "default_context_ssl_true"]
)
def test_tls_client_verification_failure(loop_factory: Any, case: str) -> None:
    async def main() -> tuple[str, str]:
        loop = asyncio.get_running_loop()
        ctx = (
            tls_certs.untrusted_server_context()
            if case == "untrusted_self_signed"
            else server_ctx()
        )
        loop.set_exception_handler(lambda lp, c: None)
        server = await loop.create_server(EchoProtocol, "127.0.0.1", 0, ssl=ctx)
        port = server.sockets[0].getsockname()[1]
        kwargs: dict[str, Any] = {"ssl": client_ctx(), "server_hostname": "localhost"}
        if case == "hostname_mismatch":
            kwargs["server_hostname"] = "not-this-host.example"
        elif case == "default_context_ssl_true":
            kwargs = {"ssl": True, "server_hostname": "localhost"}
        try:
            tr, _ = await asyncio.wait_for(
                loop.create_connection(asyncio.Protocol, "127.0.0.1", port, **kwargs), 10
            )
            tr.close()
            result = ("connected", "")
        except ssl.SSLCertVerificationError as exc:
            result = ("SSLCertVerificationError", exc.verify_message)
        except OSError as exc:
            result = (type(exc).__name__, "")
        # The server survives the failed handshake.
        tr, proto = await loop.create_connection(
            RecordingProtocol,
            "127.0.0.1",
            port,
            ssl=tls_certs.untrusted_server_context() and _trusting_context(ctx, case),
            server_hostname="localhost",
        )
        tr.write(b"ok?")
        assert await proto.wait_for_bytes(3) == b"ok?"
        tr.close()
        await asyncio.wait_for(proto.lost, 10)
        await close_server(server)
        loop.set_exception_handler(None)
        return result

    expected = run_oracle(main)
    assert expected[0] == "SSLCertVerificationError"
    assert run(loop_factory, main) == expected


def _trusting_context(server_context: ssl.SSLContext, case: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    pki = tls_certs.shared_pki()
    if case == "untrusted_self_signed":
        ctx.load_verify_locations(cafile=pki.self_signed_cert)
    else:
        ctx.load_verify_locations(cafile=pki.ca_cert)
    return ctx


def test_tls_client_handshake_timeout_against_silent_peer(loop_factory: Any) -> None:
    async def main() -> tuple[str, str]:
        loop = asyncio.get_running_loop()
        silent = listening_socket()  # accepts (in the kernel) and never answers
        try:
            start = time.monotonic()
            try:
                await asyncio.wait_for(
                    loop.create_connection(
                        asyncio.Protocol,
                        *silent.getsockname(),
                        ssl=client_ctx(),
                        server_hostname="localhost",
                        ssl_handshake_timeout=0.5,
                    ),
                    10,
                )
                outcome = "connected"
            except (TimeoutError, OSError) as exc:
                outcome = type(exc).__name__
            elapsed = time.monotonic() - start
        finally:
            silent.close()
        assert 0.4 <= elapsed < 5, elapsed
        return outcome, "timed out"

    expected = run_oracle(main)
    assert expected[0] in ("ConnectionAbortedError", "TimeoutError")
    assert run(loop_factory, main) == expected


def test_tls_server_handshake_timeout_drops_silent_client(loop_factory: Any) -> None:
    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda lp, c: None)
        side = ServerSide(RecordingProtocol)
        server = await loop.create_server(
            side, "127.0.0.1", 0, ssl=server_ctx(), ssl_handshake_timeout=0.5
        )
        raw = socket.socket()
        raw.setblocking(False)
        await loop.sock_connect(raw, server.sockets[0].getsockname())
        start = time.monotonic()
        try:
            data = await asyncio.wait_for(loop.sock_recv(raw, 100), 10)
        except ConnectionResetError:
            data = b"<reset>"
        elapsed = time.monotonic() - start
        raw.close()
        assert 0.4 <= elapsed < 5, elapsed
        assert side.protocols == [] or side.protocols[0].events == []
        await close_server(server)
        loop.set_exception_handler(None)
        return data

    expected = run_oracle(main)
    assert run(loop_factory, main) == expected


def test_tls_server_survives_garbage_client(loop_factory: Any) -> None:
    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda lp, c: None)
        server = await loop.create_server(EchoProtocol, "127.0.0.1", 0, ssl=server_ctx())
        addr = server.sockets[0].getsockname()
        reader, writer = await asyncio.open_connection(*addr)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            await asyncio.wait_for(reader.read(), 10)
        except ConnectionResetError:
            pass
        writer.close()
        r2, w2 = await asyncio.open_connection(*addr, ssl=client_ctx(), server_hostname="localhost")
        w2.write(b"after garbage")
        got = await asyncio.wait_for(r2.readexactly(13), 10)
        w2.close()
        await w2.wait_closed()
        await close_server(server)
        loop.set_exception_handler(None)
        return got

    assert run(loop_factory, main) == b"after garbage"


def _blocking_tls_client(port: int, send: bytes) -> tuple[bytes, str]:
    """A thread-side TLS client that notices a missing close_notify (ragged EOF)."""
    ctx = client_ctx()
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False) as tls,
    ):
        tls.sendall(send)
        got = b""
        try:
            while chunk := tls.recv(65536):
                got += chunk
            ending = "close_notify"
        except ssl.SSLEOFError:
            ending = "ragged EOF (no close_notify)"
        except OSError as exc:
            ending = type(exc).__name__
        return got, ending


def test_tls_server_close_sends_close_notify(loop_factory: Any) -> None:
    class ReplyAndClose(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(b"bye " + data)
            self.transport.close()

    async def main() -> tuple[bytes, str]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(ReplyAndClose, "127.0.0.1", 0, ssl=server_ctx())
        port = server.sockets[0].getsockname()[1]
        result = await asyncio.wait_for(
            loop.run_in_executor(None, _blocking_tls_client, port, b"client"), 20
        )
        await close_server(server)
        return result

    expected = run_oracle(main)
    assert expected == (b"bye client", "close_notify")
    assert run(loop_factory, main) == expected


def test_tls_client_close_reaches_server_as_eof(loop_factory: Any) -> None:
    async def main() -> tuple[list[str], list[str], str]:
        server, side, tr, proto = await tls_pair()
        sproto = await side.first()
        tr.write(b"last words")
        tr.close()
        await asyncio.wait_for(sproto.lost, 10)
        await asyncio.wait_for(proto.lost, 10)
        await close_server(server)
        return sproto.events, proto.events, bytes(sproto.data).decode()

    expected = run_oracle(main)
    assert expected[2] == "last words"
    assert run(loop_factory, main) == expected


def test_tls_write_eof_and_abort(loop_factory: Any) -> None:
    async def main() -> list[str]:
        server, side, tr, proto = await tls_pair()
        sproto = await side.first()
        await asyncio.wait_for(sproto.made, 10)
        out = [f"can_write_eof={tr.can_write_eof()}"]
        try:
            tr.write_eof()
            out.append("write_eof ok")
        except Exception as exc:
            out.append(type(exc).__name__)
        tr.abort()
        out.append(f"closing={tr.is_closing()}")
        await asyncio.wait_for(proto.lost, 10)
        await asyncio.wait_for(sproto.lost, 10)
        out.append(f"client lost {proto.lost_calls} {type(proto.lost_exc).__name__}")
        out.append(f"server lost {sproto.lost_calls}")
        await close_server(server)
        return out

    expected = run_oracle(main)
    assert run(loop_factory, main) == expected


def test_loop_start_tls_mid_conversation(loop_factory: Any) -> None:
    class Upgrading(asyncio.Protocol):
        """Plaintext until 'STARTTLS\\n', then TLS (server side)."""

        def __init__(self) -> None:
            self.loop = asyncio.get_running_loop()
            self.secure_data = bytearray()
            self.done = self.loop.create_future()

        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            if data == b"STARTTLS\n":
                self.transport.write(b"OK\n")
                self.task = self.loop.create_task(self.upgrade())
            else:
                self.secure_data += data
                if self.secure_data.endswith(b"END"):
                    self.tls_transport.write(b"got %d" % len(self.secure_data))

        async def upgrade(self) -> None:
            self.tls_transport = await self.loop.start_tls(
                self.transport, self, server_ctx(), server_side=True
            )

        def connection_lost(self, exc: BaseException | None) -> None:
            if not self.done.done():
                self.done.set_result(exc)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        side = ServerSide(Upgrading)
        server = await loop.create_server(side, "127.0.0.1", 0)
        tr, proto = await loop.create_connection(
            RecordingProtocol, *server.sockets[0].getsockname()
        )
        tr.write(b"STARTTLS\n")
        assert await proto.wait_for_bytes(3) == b"OK\n"
        tls_tr = await asyncio.wait_for(
            loop.start_tls(tr, proto, client_ctx(), server_hostname="localhost"), 10
        )
        assert tls_tr is not tr
        assert tls_tr.get_extra_info("ssl_object") is not None
        assert tls_tr.get_protocol() is proto
        body = os.urandom(2 * MiB) + b"END"
        tls_tr.write(body)
        expected_reply = b"OK\ngot %d" % len(body)
        assert await proto.wait_for_bytes(len(expected_reply)) == expected_reply
        upgraded = await side.first()
        assert bytes(upgraded.secure_data) == body
        tls_tr.close()
        await asyncio.wait_for(upgraded.done, 10)
        await asyncio.wait_for(proto.lost, 10)
        await close_server(server)

    run(loop_factory, main)


def test_start_tls_argument_errors(loop_factory: Any) -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(EchoProtocol, "127.0.0.1", 0)
        tr, proto = await loop.create_connection(
            RecordingProtocol, *server.sockets[0].getsockname()
        )
        out = []
        for ctx in (None, True, "ctx"):
            try:
                await loop.start_tls(tr, proto, ctx)  # type: ignore[arg-type]
                out.append("ok")
            except TypeError:
                out.append("TypeError")
        tr.close()
        await close_server(server)
        return out

    expected = run_oracle(main)
    assert expected == ["TypeError"] * 3
    assert run(loop_factory, main) == expected


@pytest.mark.parametrize(("offset", "count"), [(0, None), (777, 1 * MiB)])
def test_sendfile_over_tls_uses_fallback(
    loop_factory: Any, tmp_path: Path, offset: int, count: int | None
) -> None:
    content = os.urandom(2 * MiB + 5)
    blob = tmp_path / "blob"
    blob.write_bytes(content)

    async def main() -> tuple[int, int, bytes]:
        server, side, tr, proto = await tls_pair()
        sproto = await side.first()
        with open(blob, "rb") as f:
            sent = await asyncio.wait_for(
                asyncio.get_running_loop().sendfile(tr, f, offset, count), 30
            )
            pos = f.tell()
        tr.write(b"END")
        end = len(content) if count is None else offset + count
        await sproto.wait_for_bytes(end - offset + 3, timeout=30)
        tr.close()
        await asyncio.wait_for(proto.lost, 10)
        await close_server(server)
        return sent, pos, bytes(sproto.data)

    sent, pos, data = run(loop_factory, main)
    end = len(content) if count is None else offset + count
    assert sent == end - offset
    assert pos == end
    assert data == content[offset:end] + b"END"


def test_sendfile_over_tls_without_fallback_raises(loop_factory: Any, tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"x" * 100)

    async def main() -> str:
        server, _side, tr, _proto = await tls_pair()
        try:
            with open(blob, "rb") as f:
                await asyncio.get_running_loop().sendfile(tr, f, fallback=False)
            result = "sent"
        except RuntimeError:
            result = "RuntimeError"
        tr.close()
        await close_server(server)
        return result

    expected = run_oracle(main)
    assert run(loop_factory, main) == expected


def test_tls_over_unix_socket(loop_factory: Any) -> None:
    path = Path("/tmp") / f"fl-tls-{uuid.uuid4().hex[:10]}.sock"

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        server = await loop.create_unix_server(EchoProtocol, path, ssl=server_ctx())
        tr, proto = await loop.create_unix_connection(
            RecordingProtocol, path, ssl=client_ctx(), server_hostname="localhost"
        )
        assert tr.get_extra_info("ssl_object") is not None
        tr.write(b"tls over unix")
        got = await proto.wait_for_bytes(13)
        tr.close()
        await asyncio.wait_for(proto.lost, 10)
        await close_server(server)
        return got

    try:
        assert run(loop_factory, main) == b"tls over unix"
    finally:
        if path.exists():
            path.unlink()


def test_many_concurrent_tls_connections(loop_factory: Any) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.write(await r.readline())
            await w.drain()
            w.close()

        server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=server_ctx())
        addr = server.sockets[0].getsockname()
        cctx = client_ctx()

        async def client(i: int) -> bytes:
            r, w = await asyncio.open_connection(*addr, ssl=cctx, server_hostname="localhost")
            w.write(b"%d\n" % i)
            line = await r.readline()
            w.close()
            await w.wait_closed()
            return line

        got = await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(150))), 40)
        assert got == [b"%d\n" % i for i in range(150)]
        server.close()
        await server.wait_closed()
        assert loop.is_running()

    run(loop_factory, main)


def test_aiohttp_https_client_and_server(loop_factory: Any) -> None:
    aiohttp = pytest.importorskip("aiohttp")
    from aiohttp import web

    async def hello(request: Any) -> Any:
        body = await request.read()
        return web.json_response(
            {"scheme": request.scheme, "secure": request.secure, "len": len(body)}
        )

    async def main() -> None:
        app = web.Application(client_max_size=8 * MiB)
        app.router.add_route("*", "/", hello)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx())
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        try:
            connector = aiohttp.TCPConnector(ssl=client_ctx())
            async with aiohttp.ClientSession(connector=connector) as session:
                async with session.get(f"https://localhost:{port}/") as resp:
                    assert resp.status == 200
                    assert await resp.json() == {"scheme": "https", "secure": True, "len": 0}
                body = os.urandom(3 * MiB)
                async with session.post(f"https://localhost:{port}/", data=body) as resp:
                    assert (await resp.json())["len"] == len(body)
            # The default (system) trust store does not know our CA.
            async with aiohttp.ClientSession() as session:
                with pytest.raises(aiohttp.ClientConnectorCertificateError):
                    await session.get(f"https://localhost:{port}/")
        finally:
            await runner.cleanup()

    run(loop_factory, main)
