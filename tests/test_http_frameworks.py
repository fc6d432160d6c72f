"""Real HTTP frameworks on the loop under test: aiohttp, uvicorn(httptools)+httpx, anyio.

Servers and clients run in the same loop (the one the fixture creates), over
real loopback sockets.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from typing import Any

import pytest
from loop_helpers import run

aiohttp = pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402 - after the importorskip above

pytestmark = pytest.mark.timeout(60)

MiB = 1024 * 1024


def _aiohttp_app() -> web.Application:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"hello {request.query.get('name', 'world')}")

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "len": len(body),
                "sha256": hashlib.sha256(body).hexdigest(),
                "ctype": request.content_type,
            }
        )

    async def stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(int(request.query["n"])):
            await resp.write(b"chunk %05d\n" % i)
            if i % 50 == 0:
                await asyncio.sleep(0)
        await resp.write_eof()
        return resp

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.01)
        return web.Response(text=request.match_info["n"])

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await sock.send_str("echo:" + msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await sock.send_bytes(msg.data[::-1])
        return sock

    app = web.Application(client_max_size=64 * MiB)
    app.router.add_get("/", hello)
    app.router.add_post("/echo", echo)
    app.router.add_get("/stream", stream)
    app.router.add_get("/slow/{n}", slow)
    app.router.add_get("/ws", ws)
    return app


class _AiohttpServer:
    async def __aenter__(self) -> str:
        self.runner = web.AppRunner(_aiohttp_app())
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


def test_aiohttp_get_post_and_chunked_stream(loop_factory: Any) -> None:
    async def main() -> None:
        async with _AiohttpServer() as base, aiohttp.ClientSession() as session:
            async with session.get(base + "/", params={"name": "ferro"}) as resp:
                assert resp.status == 200
                assert await resp.text() == "hello ferro"
            body = os.urandom(5 * MiB)
            async with session.post(
                base + "/echo", data=body, headers={"Content-Type": "application/octet-stream"}
            ) as resp:
                info = await resp.json()
            assert info == {
                "len": len(body),
                "sha256": hashlib.sha256(body).hexdigest(),
                "ctype": "application/octet-stream",
            }

            async def gen() -> Any:
                for _i in range(100):
                    yield b"x" * 10000

            async with session.post(base + "/echo", data=gen()) as resp:
                assert (await resp.json())["len"] == 1_000_000
            async with session.get(base + "/stream", params={"n": "2000"}) as resp:
                assert resp.headers.get("Transfer-Encoding") == "chunked"
                lines = []
                async for line in resp.content:
                    lines.append(line)
            assert lines == [b"chunk %05d\n" % i for i in range(2000)]
            async with session.get(base + "/missing") as resp:
                assert resp.status == 404

    run(loop_factory, main)


def test_aiohttp_websocket_echo(loop_factory: Any) -> None:
    async def main() -> None:
        async with _AiohttpServer() as base, aiohttp.ClientSession() as session:
            async with session.ws_connect(base + "/ws") as ws:
                for i in range(100):
                    await ws.send_str(f"msg {i}")
                    assert await asyncio.wait_for(ws.receive_str(), 10) == f"echo:msg {i}"
                big = os.urandom(2 * MiB)
                await ws.send_bytes(big)
                assert await asyncio.wait_for(ws.receive_bytes(), 10) == big[::-1]
                await ws.close()
            assert ws.closed

    run(loop_factory, main)


def test_aiohttp_semaphore_bounded_500_concurrent_gets(loop_factory: Any) -> None:
    async def main() -> None:
        sem = asyncio.Semaphore(10)
        in_flight = 0
        peak = 0
        async with _AiohttpServer() as base, aiohttp.ClientSession() as session:

            async def fetch(i: int) -> str:
                nonlocal in_flight, peak
                async with sem:
                    in_flight += 1
                    peak = max(peak, in_flight)
                    try:
                        async with session.get(f"{base}/slow/{i}") as resp:
                            assert resp.status == 200
                            return await resp.text()
                    finally:
                        in_flight -= 1

            results = await asyncio.wait_for(asyncio.gather(*(fetch(i) for i in range(500))), 45)
        assert results == [str(i) for i in range(500)]
        assert peak <= 10

    run(loop_factory, main)


async def _asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    assert scope["type"] == "http"
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/stream":
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        for i in range(100):
            await send({"type": "http.response.body", "body": b"%d," % i, "more_body": True})
        await send({"type": "http.response.body", "body": b"end"})
        return
    payload = b"%s %s %d %s" % (
        scope["method"].encode(),
        scope["path"].encode(),
        len(body),
        hashlib.sha256(body).hexdigest().encode(),
    )
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def test_uvicorn_httptools_with_httpx(loop_factory: Any) -> None:
    uvicorn = pytest.importorskip("uvicorn")
    pytest.importorskip("httptools")
    httpx = pytest.importorskip("httpx")

    async def main() -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            _asgi_app,
            http="httptools",
            loop="none",
            lifespan="on",
            log_level="warning",
            ws="none",
        )
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            for _ in range(200):
                if server.started:
                    break
                await asyncio.sleep(0.02)
            assert server.started
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                resp = await client.get("/hello")
                assert resp.status_code == 200
                assert resp.text == "GET /hello 0 " + hashlib.sha256(b"").hexdigest()
                body = os.urandom(3 * MiB)
                resp = await client.post("/upload", content=body)
                assert resp.text == f"POST /upload {len(body)} {hashlib.sha256(body).hexdigest()}"
                resp = await client.get("/stream")
                assert resp.text == "".join(f"{i}," for i in range(100)) + "end"
                responses = await asyncio.gather(*(client.get(f"/p{i}") for i in range(100)))
                assert [r.text.split()[1] for r in responses] == [f"/p{i}" for i in range(100)]
        finally:
            server.should_exit = True
            await asyncio.wait_for(serving, 15)
            sock.close()

    run(loop_factory, main)


def test_anyio_tcp_listener_and_connect(loop_factory: Any) -> None:
    anyio = pytest.importorskip("anyio")

    async def main() -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        received: list[bytes] = []

        async def handle(stream: Any) -> None:
            async with stream:
                data = b""
                async for chunk in stream:
                    data += chunk
                received.append(data)
                await stream.send(b"ack %d" % len(data))

        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, handle)
            replies = []
            for i in range(5):
                async with await anyio.connect_tcp("127.0.0.1", port) as client:
                    await client.send(b"x" * (1000 * (i + 1)))
                    await client.send_eof()
                    reply = b""
                    async for chunk in client:
                        reply += chunk
                    replies.append(reply)
            assert replies == [b"ack %d" % (1000 * (i + 1)) for i in range(5)]
            payload = os.urandom(4 * MiB)
            async with await anyio.connect_tcp("127.0.0.1", port) as client:
                await client.send(payload)
                await client.send_eof()
                reply = b""
                async for chunk in client:
                    reply += chunk
            assert reply == b"ack %d" % len(payload)
            assert received[-1] == payload
            tg.cancel_scope.cancel()
        await listener.aclose()

    run(loop_factory, main)


def test_anyio_streams_tls(loop_factory: Any) -> None:
    anyio = pytest.importorskip("anyio")
    import tls_certs
    from anyio.streams.tls import TLSListener

    async def main() -> None:
        inner = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        port = inner.extra(anyio.abc.SocketAttribute.local_port)
        listener = TLSListener(inner, tls_certs.server_context(), standard_compatible=False)

        async def handle(stream: Any) -> None:
            async with stream:
                await stream.send(b"secure " + await stream.receive())

        async with anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, handle)
            async with await anyio.connect_tcp(
                "127.0.0.1",
                port,
                tls=True,
                ssl_context=tls_certs.client_context(),
                tls_hostname="localhost",
                tls_standard_compatible=False,
            ) as client:
                await client.send(b"hello")
                assert await client.receive() == b"secure hello"
            tg.cancel_scope.cancel()
        await listener.aclose()

    run(loop_factory, main)
