"""The tutorials' web-request scenarios, against a local aiohttp server.

A real aiohttp web server listens on 127.0.0.1 (ephemeral port) and an
aiohttp ClientSession talks to it, so nothing leaves the machine. Networking in
ferroloop lands in issue 3: on the ferroloop parameter these tests are
non-strict expected failures (they may already pass); asyncio must pass.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from loop_helpers import run

aiohttp = pytest.importorskip("aiohttp")
from aiohttp import web  # noqa: E402 - after the importorskip above

pytestmark = pytest.mark.timeout(60)


class Stats:
    """What the server saw: concurrent requests in flight and their peak."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.peak = 0
        self.served = 0


@asynccontextmanager
async def local_server(stats: Stats) -> AsyncIterator[str]:
    async def hello(request: web.Request) -> web.Response:
        stats.served += 1
        return web.Response(text="hello from aiohttp")

    async def item(request: web.Request) -> web.Response:
        stats.in_flight += 1
        stats.peak = max(stats.peak, stats.in_flight)
        try:
            await asyncio.sleep(0.001)
            stats.served += 1
            return web.json_response({"id": int(request.match_info["id"])})
        finally:
            stats.in_flight -= 1

    app = web.Application()
    app.router.add_get("/", hello)
    app.router.add_get("/items/{id}", item)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def test_client_session_get(loop_factory):
    async def get_website(url: str) -> tuple[int, str]:
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return response.status, await response.text()

    async def main():
        stats = Stats()
        async with local_server(stats) as base:
            results = await asyncio.wait_for(
                asyncio.gather(*(get_website(base + "/") for _ in range(3))), 20
            )
        return results, stats.served

    results, served = run(loop_factory, main)
    assert results == [(200, "hello from aiohttp")] * 3
    assert served == 3


def test_semaphore_bounded_500_requests(loop_factory):
    async def fetch_limited(sem, session, url):
        async with sem, session.get(url) as response:  # max 10 requests at the same time
            return await response.json()

    async def main():
        stats = Stats()
        async with local_server(stats) as base:
            sem = asyncio.Semaphore(10)
            async with aiohttp.ClientSession() as session:
                urls = [f"{base}/items/{i}" for i in range(500)]
                results = await asyncio.wait_for(
                    asyncio.gather(*(fetch_limited(sem, session, u) for u in urls)), 40
                )
        return results, stats

    results, stats = run(loop_factory, main)
    assert results == [{"id": i} for i in range(500)]
    assert stats.served == 500
    assert 1 <= stats.peak <= 10
