"""Which contextvars context a protocol's callbacks run in.

asyncio runs a transport's protocol callbacks from handles, and a handle runs
in a copy of the context current when it was made:
* `connection_made` in a copy of the context the transport was made in;
* `data_received`, `eof_received` and the other reading callbacks in another
  copy of it (the reader handle's), the same one for every read, until
  `resume_reading` makes a new reader handle in the caller's context;
* a server's `protocol_factory` and its connection's callbacks in a copy, per
  connection, of the context the server started serving in;
* `resume_writing` in a copy of the context of the `write` that had to buffer.

Every test runs on asyncio's loop (the specification) and on ferroloop.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import socket
import sys
import threading

import pytest
import tls_certs

pytestmark = pytest.mark.timeout(60)

var = contextvars.ContextVar("var", default="unset")


class Recording(asyncio.Protocol):
    """Records `var` as each callback sees it; sets it to show what leaks."""

    def __init__(self, seen: list[tuple[str, str]], done: asyncio.Future[None]) -> None:
        self.seen = seen
        self.done = done

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.seen.append(("connection_made", var.get()))
        var.set("set in connection_made")

    def data_received(self, data: bytes) -> None:
        self.seen.append(("data_received", var.get()))
        var.set("set in data_received")

    def eof_received(self) -> None:
        self.seen.append(("eof_received", var.get()))

    def connection_lost(self, exc: Exception | None) -> None:
        self.seen.append(("connection_lost", var.get()))
        if not self.done.done():
            self.done.set_result(None)


async def recorded_pair(loop):
    """A `Recording` transport over one end of a socket pair, made with `var`
    at "creator"; the other end; what the protocol saw; its end."""
    seen: list[tuple[str, str]] = []
    done = loop.create_future()
    ours, theirs = socket.socketpair()
    var.set("creator")
    transport, _ = await loop.connect_accepted_socket(lambda: Recording(seen, done), ours)
    return transport, theirs, seen, done


async def read_by(seen: list[tuple[str, str]], count: int) -> None:
    """Waits until the protocol has recorded `count` data_received calls."""
    while sum(name == "data_received" for name, _ in seen) < count:
        await asyncio.sleep(0.005)


async def send_then_close(peer, transport, seen, done) -> None:
    """Sends from `peer`, then closes `transport` from here once it was read."""
    peer.sendall(b"data")
    await asyncio.wait_for(read_by(seen, 1), 10)
    transport.close()
    await asyncio.wait_for(done, 10)


def test_client_callbacks_run_in_copies_of_the_creating_context(loop):
    async def main():
        _, theirs, seen, done = await recorded_pair(loop)
        with theirs:
            var.set("changed after creation")
            theirs.sendall(b"one")
            await asyncio.wait_for(read_by(seen, 1), 10)
            theirs.sendall(b"two")
            await asyncio.wait_for(read_by(seen, 2), 10)
            theirs.shutdown(socket.SHUT_WR)
            await asyncio.wait_for(done, 10)
        return seen, var.get()

    seen, after = loop.run_until_complete(main())
    assert seen == [
        ("connection_made", "creator"),
        ("data_received", "creator"),
        ("data_received", "set in data_received"),
        ("eof_received", "set in data_received"),
        ("connection_lost", "set in data_received"),
    ]
    assert after == "changed after creation"


def test_create_connection_callbacks_see_the_callers_context(loop):
    async def main():
        seen: list[tuple[str, str]] = []
        done = loop.create_future()
        with socket.create_server(("127.0.0.1", 0)) as listener:
            var.set("caller")
            connecting = loop.create_connection(
                lambda: Recording(seen, done), *listener.getsockname()[:2]
            )
            transport, _ = await connecting
            var.set("changed")
            peer, _ = await loop.run_in_executor(None, listener.accept)
            with peer:
                await send_then_close(peer, transport, seen, done)
        return seen

    seen = loop.run_until_complete(main())
    assert seen[:2] == [("connection_made", "caller"), ("data_received", "caller")]
    # close() was called from the task: connection_lost runs in a copy of its context.
    assert seen[2] == ("connection_lost", "changed")


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_server_connections_run_in_copies_of_the_serving_context(loop, tls):
    factory_saw: list[str] = []
    server_ssl = tls_certs.server_context() if tls else None
    client_ssl = tls_certs.client_context() if tls else None

    class Server(Recording):
        def __init__(self, seen, done):
            super().__init__(seen, done)
            factory_saw.append(var.get())
            var.set("set in protocol_factory")

    async def main():
        seen: list[tuple[str, str]] = []
        done = loop.create_future()
        var.set("server creator")
        server = await loop.create_server(
            lambda: Server(seen, done), "127.0.0.1", 0, ssl=server_ssl
        )
        var.set("changed after create_server")
        port = server.sockets[0].getsockname()[1]
        for connections in (1, 2):
            _, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_ssl, server_hostname="localhost" if tls else None
            )
            writer.write(b"ping")
            await writer.drain()
            await asyncio.wait_for(read_by(seen, connections), 10)
            writer.close()
            await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return seen

    seen = loop.run_until_complete(main())
    assert factory_saw == ["server creator", "server creator"]
    # Over TLS, asyncio's SSLProtocol calls connection_made when the handshake
    # ends, from the reads, in the context data_received then runs in too.
    read_sees = "set in connection_made" if tls else "set in protocol_factory"
    per_connection = [
        ("connection_made", "set in protocol_factory"),
        ("data_received", read_sees),
    ]
    made_and_read = [entry for entry in seen if entry[0] in ("connection_made", "data_received")]
    assert made_and_read == per_connection * 2


def test_stream_handlers_see_the_server_creators_context(loop):
    async def main():
        got = loop.create_future()

        async def handler(reader, writer):
            got.set_result(var.get())
            writer.close()

        var.set("start_server caller")
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        var.set("changed")
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        seen = await asyncio.wait_for(got, 10)
        writer.close()
        server.close()
        await server.wait_closed()
        return seen

    assert loop.run_until_complete(main()) == "start_server caller"


def test_resume_reading_reads_in_the_resumers_context(loop):
    async def main():
        transport, theirs, seen, done = await recorded_pair(loop)
        with theirs:
            transport.pause_reading()

            async def resumer():
                var.set("resumer")
                transport.resume_reading()

            await loop.create_task(resumer())
            await send_then_close(theirs, transport, seen, done)
        return seen

    seen = loop.run_until_complete(main())
    assert seen[1] == ("data_received", "resumer")


def test_resume_writing_runs_in_the_buffering_writers_context(loop):
    class Flow(asyncio.Protocol):
        def __init__(self, seen):
            self.seen = seen

        def pause_writing(self):
            self.seen.append(("pause_writing", var.get()))

        def resume_writing(self):
            self.seen.append(("resume_writing", var.get()))

    async def main():
        seen: list[tuple[str, str]] = []
        ours, theirs = socket.socketpair()
        with theirs:
            var.set("creator")
            transport, _ = await loop.connect_accepted_socket(lambda: Flow(seen), ours)

            async def writer():
                var.set("writer")
                transport.write(b"x" * (8 * 1024 * 1024))

            await loop.create_task(writer())
            var.set("changed")
            draining = threading.Thread(target=drain, args=(theirs, 8 * 1024 * 1024))
            draining.start()
            while transport.get_write_buffer_size():
                await asyncio.sleep(0.01)
            await loop.run_in_executor(None, draining.join)
            transport.close()
            await asyncio.sleep(0)
        return seen

    def drain(sock: socket.socket, total: int) -> None:
        while total > 0:
            total -= len(sock.recv(1024 * 1024))

    seen = loop.run_until_complete(main())
    assert seen == [("pause_writing", "writer"), ("resume_writing", "writer")]


class RecordsOnce:
    """Resolves `got` with `var` as the first call of `record` sees it."""

    def __init__(self, got: asyncio.Future[str]) -> None:
        self.got = got

    def record(self) -> None:
        if not self.got.done():
            self.got.set_result(var.get())


async def first_value_seen(loop, make_transport, trigger=lambda transport: None) -> str:
    """`var` as a protocol's first `record` sees it; "creator" while
    `make_transport(got)` runs, "changed" from right after."""
    got = loop.create_future()
    var.set("creator")
    transport, _ = await make_transport(got)
    var.set("changed")
    trigger(transport)
    seen = await asyncio.wait_for(got, 10)
    transport.close()
    return seen


def test_datagram_callbacks_see_the_creating_context(loop):
    class Datagrams(RecordsOnce, asyncio.DatagramProtocol):
        def datagram_received(self, data, addr):
            self.record()

    def make(got):
        return loop.create_datagram_endpoint(lambda: Datagrams(got), local_addr=("127.0.0.1", 0))

    def send(transport):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"hi", transport.get_extra_info("sockname"))

    assert loop.run_until_complete(first_value_seen(loop, make, send)) == "creator"


def test_read_pipe_callbacks_see_the_creating_context(loop):
    async def main():
        seen: list[tuple[str, str]] = []
        done = loop.create_future()
        read_end, write_end = os.pipe()
        var.set("pipe creator")
        with open(read_end, "rb", buffering=0) as pipe:
            await loop.connect_read_pipe(lambda: Recording(seen, done), pipe)
            var.set("changed")
            os.write(write_end, b"data")
            os.close(write_end)
            await asyncio.wait_for(done, 10)
        return seen

    seen = loop.run_until_complete(main())
    assert seen == [
        ("connection_made", "pipe creator"),
        ("data_received", "pipe creator"),
        ("eof_received", "set in data_received"),
        ("connection_lost", "set in data_received"),
    ]


def test_subprocess_pipe_data_sees_the_callers_context(loop):
    class Child(RecordsOnce, asyncio.SubprocessProtocol):
        def pipe_data_received(self, fd, data):
            self.record()

    def make(got):
        return loop.subprocess_exec(lambda: Child(got), "echo", "hi", stdin=None, stderr=None)

    assert loop.run_until_complete(first_value_seen(loop, make)) == "creator"


def test_process_exited_runs_where_asyncios_child_watcher_reports(loop):
    """From 3.12 asyncio watches children through a pidfd reader handle made
    when the process starts (the spawner's context); 3.11's threaded watcher
    reports from its thread, in a new, empty context."""

    class Child(RecordsOnce, asyncio.SubprocessProtocol):
        def process_exited(self):
            self.record()

    def make(got):
        return loop.subprocess_exec(
            lambda: Child(got), "true", stdin=None, stdout=None, stderr=None
        )

    expected = "creator" if sys.version_info >= (3, 12) else "unset"
    assert loop.run_until_complete(first_value_seen(loop, make)) == expected
