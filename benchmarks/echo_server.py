"""Echo server in four styles, on asyncio's loop, uvloop or ferroloop.

    python -m benchmarks.echo_server --loop asyncio|uvloop|ferroloop \
        --style protocol|buffered|streams|sock --port N

Styles:
  protocol  asyncio.Protocol, data_received -> transport.write(data)
  buffered  asyncio.BufferedProtocol with one preallocated buffer per
            connection; buffer_updated -> transport.write(copy of the bytes)
  streams   asyncio.start_server, reader.read() -> writer.write(); drain()
  sock      low-level loop.sock_accept / sock_recv / sock_sendall

Port 0 picks a free port. Once listening it prints ``READY <port> <loop type>``
on stdout. It listens on loopback only and exits by itself after
--max-seconds.
"""

import argparse
import asyncio
import ipaddress
import socket
import sys

from .loops import KNOWN_LOOPS, loop_type_name, raise_nofile_limit, run

STYLES = ("protocol", "buffered", "streams", "sock")
READ_SIZE = 256 * 1024
BACKLOG = 4096


def set_nodelay(sock):
    # asyncio, uvloop and ferroloop all enable TCP_NODELAY on their TCP
    # transports; the sock style owns its sockets, so it sets it itself. The
    # transport styles deliberately do not call get_extra_info("socket"): a
    # loop may create that object lazily (ferroloop dup()s the descriptor),
    # which would be harness cost, not loop cost.
    try:
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass


class EchoProtocol(asyncio.Protocol):
    __slots__ = ("transport",)

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def connection_lost(self, exc):
        self.transport = None


class EchoBufferedProtocol(asyncio.BufferedProtocol):
    __slots__ = ("buf", "transport", "view")

    def connection_made(self, transport):
        self.transport = transport
        self.buf = bytearray(READ_SIZE)
        self.view = memoryview(self.buf)

    def get_buffer(self, sizehint):
        return self.view

    def buffer_updated(self, nbytes):
        # Slicing the bytearray copies: the buffer is reused by the next read,
        # and a transport may keep a reference to what it was given.
        self.transport.write(self.buf[:nbytes])

    def connection_lost(self, exc):
        self.transport = None
        self.view.release()


async def streams_handler(reader, writer):
    try:
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def sock_handler(loop, conn):
    try:
        while True:
            data = await loop.sock_recv(conn, READ_SIZE)
            if not data:
                break
            await loop.sock_sendall(conn, data)
    except (ConnectionError, OSError):
        pass
    finally:
        conn.close()


async def sock_server(loop, lsock, tasks):
    while True:
        conn, _ = await loop.sock_accept(lsock)
        conn.setblocking(False)
        set_nodelay(conn)
        t = loop.create_task(sock_handler(loop, conn))
        tasks.add(t)
        t.add_done_callback(tasks.discard)


async def serve(style, host, port, max_seconds):
    loop = asyncio.get_running_loop()
    keep = []  # keeps the sock tasks referenced
    if style == "protocol":
        server = await loop.create_server(EchoProtocol, host, port, backlog=BACKLOG)
        bound = server.sockets[0].getsockname()[1]
    elif style == "buffered":
        server = await loop.create_server(EchoBufferedProtocol, host, port, backlog=BACKLOG)
        bound = server.sockets[0].getsockname()[1]
    elif style == "streams":
        server = await asyncio.start_server(
            streams_handler, host, port, backlog=BACKLOG, limit=READ_SIZE
        )
        bound = server.sockets[0].getsockname()[1]
    elif style == "sock":
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        lsock = socket.socket(fam, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind((host, port))
        lsock.listen(BACKLOG)
        lsock.setblocking(False)
        bound = lsock.getsockname()[1]
        tasks = set()
        keep.append(tasks)
        accept_task = loop.create_task(sock_server(loop, lsock, tasks))
    else:
        raise ValueError(style)
    print(f"READY {bound} {loop_type_name(loop)}", flush=True)
    if style == "sock":
        # Await the accept loop itself so that an exception in it (say, an
        # unimplemented sock_accept) ends the process with a traceback.
        try:
            await asyncio.wait_for(accept_task, max_seconds)
        except TimeoutError:
            pass
    else:
        await asyncio.sleep(max_seconds)
    print("echo_server: --max-seconds reached, exiting", file=sys.stderr)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--loop", choices=KNOWN_LOOPS, required=True)
    p.add_argument("--style", choices=STYLES, required=True)
    p.add_argument("--port", type=int, default=25000)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--max-seconds", type=float, default=900.0)
    a = p.parse_args(argv)
    if not ipaddress.ip_address(a.host).is_loopback:
        p.error("only loopback addresses are allowed")
    raise_nofile_limit()
    run(a.loop, lambda: serve(a.style, a.host, a.port, a.max_seconds))


if __name__ == "__main__":
    main()
