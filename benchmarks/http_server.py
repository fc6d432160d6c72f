"""Minimal HTTP/1.1 servers for the HTTP benchmark.

    python -m benchmarks.http_server --loop asyncio|uvloop|ferroloop \
        --kind httptools|aiohttp --port N

  httptools  asyncio.Protocol + httptools.HttpRequestParser, keep-alive,
             fixed 13-byte "Hello, World!" body
  aiohttp    aiohttp.web with one GET / handler returning the same body

Prints ``READY <port> <loop type>`` once listening; loopback only; exits by
itself after --max-seconds.
"""

import argparse
import asyncio
import ipaddress
import sys

from .loops import KNOWN_LOOPS, loop_type_name, raise_nofile_limit, run

KINDS = ("httptools", "aiohttp")
BODY = b"Hello, World!"
RESPONSE_KEEPALIVE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: " + str(len(BODY)).encode() + b"\r\n"
    b"\r\n" + BODY
)
RESPONSE_CLOSE = RESPONSE_KEEPALIVE.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)


class HttpProtocol(asyncio.Protocol):
    def __init__(self):
        import httptools

        self._httptools = httptools
        self.transport = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = None

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        self.transport = None

    def data_received(self, data):
        try:
            self.parser.feed_data(data)
        except self._httptools.HttpParserUpgrade:
            self._error(b"400 Bad Request")
        except self._httptools.HttpParserError:
            self._error(b"400 Bad Request")

    def _error(self, status):
        if self.transport is not None:
            self.transport.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            self.transport.close()

    # httptools callbacks
    def on_url(self, url):
        self.url = url

    def on_message_complete(self):
        if self.transport is None:
            return
        if self.parser.should_keep_alive():
            self.transport.write(RESPONSE_KEEPALIVE)
        else:
            self.transport.write(RESPONSE_CLOSE)
            self.transport.close()


async def serve_httptools(host, port):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(HttpProtocol, host, port, backlog=4096)
    return server.sockets[0].getsockname()[1], server


async def serve_aiohttp(host, port):
    from aiohttp import web

    async def hello(request):
        return web.Response(body=BODY, content_type="text/plain", charset="utf-8")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096)
    await site.start()
    bound = runner.addresses[0][1]
    return bound, runner


async def serve(kind, host, port, max_seconds):
    loop = asyncio.get_running_loop()
    if kind == "httptools":
        bound, keep = await serve_httptools(host, port)
    else:
        bound, keep = await serve_aiohttp(host, port)
    print(f"READY {bound} {loop_type_name(loop)}", flush=True)
    await asyncio.sleep(max_seconds)
    print("http_server: --max-seconds reached, exiting", file=sys.stderr)
    del keep


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--loop", choices=KNOWN_LOOPS, required=True)
    p.add_argument("--kind", choices=KINDS, required=True)
    p.add_argument("--port", type=int, default=25080)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--max-seconds", type=float, default=900.0)
    a = p.parse_args(argv)
    if not ipaddress.ip_address(a.host).is_loopback:
        p.error("only loopback addresses are allowed")
    raise_nofile_limit()
    run(a.loop, lambda: serve(a.kind, a.host, a.port, a.max_seconds))


if __name__ == "__main__":
    main()
