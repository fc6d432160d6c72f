"""The scheduling oracle's random programs with more kinds of event: timers
already due, datagram endpoints, pipes, a writer callback, abandoned async
generators, a TLS connection and asyncio streams; traces must equal asyncio's.

On top of scheduling_oracle.ScheduledProgram's steps, a program here
schedules timers in the past with `call_at` and with a negative `call_later`
(distinct deadlines: asyncio leaves the order of equal ones undefined), sends
datagrams to an endpoint and from it, sends to a closed port through a
connected endpoint (whose error comes back at the next poll), writes into a
read pipe, pauses and resumes it and closes its writer, writes on a write
pipe and ends it (close, abort, `write_eof`, or its reader closed), watches a
socket with `add_writer`, leaves async generators unfinished for the loop's
finaliser hook, writes on, pauses and closes both ends of a TLS connection
over a socket pair, and writes on, drains, ends and closes both ends of a
stream connection (`asyncio.open_connection`, one reader with a small
limit) whose readers read lines, chunks and exact sizes. As in the base
program, nothing depends on the clock: every timer is already due, and every
byte sent is readable (and every datagram error known) at the next poll.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import cache
from typing import Any, ClassVar

import pytest
import tls_certs
from scheduling_oracle import ScheduledProgram, differing_seeds

SEEDS = range(300)


@cache
def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """Client and server contexts, made once per process (loading keys is slow)."""
    return tls_certs.client_context(), tls_certs.server_context()


class NamedLoggingProtocol(asyncio.Protocol, asyncio.DatagramProtocol):
    """Logs a stream's or an endpoint's events into its program's trace."""

    def __init__(self, program: ScheduledProgram, name: str) -> None:
        self.program = program
        self.name = name

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.program.log(self.name, "made")

    def data_received(self, data: bytes) -> None:
        self.program.log(self.name, "received", data.decode())

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.program.log(self.name, "received datagram", data.decode())

    def error_received(self, exc: Exception) -> None:
        self.program.log(self.name, "error", type(exc).__name__)

    def eof_received(self) -> None:
        self.program.log(self.name, "eof")

    def connection_lost(self, exc: Exception | None) -> None:
        self.program.log(self.name, "lost", repr(exc))


def pause_or_resume(transport: Any) -> bool | None:
    """Flip a reading transport's state; None if it is closing."""
    if transport.is_closing():
        return None
    if transport.is_reading():
        transport.pause_reading()
    else:
        transport.resume_reading()
    return bool(transport.is_reading())


class ScheduledProgramWithMoreIo(ScheduledProgram):
    """A `ScheduledProgram` whose steps also drive timers, pipes, UDP and TLS."""

    def __init__(self, seed: int, trace: list[str]) -> None:
        super().__init__(seed, trace)
        self.start_time = 0.0
        self.writer_watched = False
        self.generators = 0
        self.endpoint: asyncio.DatagramTransport
        self.endpoint_peer: socket.socket
        self.refused_endpoint: asyncio.DatagramTransport
        self.read_pipe: asyncio.ReadTransport
        self.read_pipe_writer: int | None = None
        self.write_pipe: asyncio.WriteTransport
        self.write_pipe_reader: int | None = None
        self.tls: list[asyncio.Transport] = []
        self.stream_writers: list[asyncio.StreamWriter] = []
        self.stream_readers: list[asyncio.Task[None]] = []

    # -- timers already due ---------------------------------------------------

    def _call_at_in_the_past(self, loop: asyncio.AbstractEventLoop, tag: str) -> None:
        name = f"{tag}.at{len(self.handles)}"
        when = self.start_time - self.rng.random()
        self.handles.append(loop.call_at(when, self.callback, name))

    def _call_later_negative(self, loop: asyncio.AbstractEventLoop, tag: str) -> None:
        name = f"{tag}.neg{len(self.handles)}"
        self.handles.append(loop.call_later(-self.rng.random(), self.callback, name))

    # -- datagrams ------------------------------------------------------------

    def _send_a_datagram(self, loop: asyncio.AbstractEventLoop, tag: str) -> None:
        address = self.endpoint.get_extra_info("sockname")
        self.endpoint_peer.sendto(f"{tag};".encode(), address)
        self.log(tag, "sends a datagram")

    def _send_from_the_endpoint(self, loop: asyncio.AbstractEventLoop, tag: str) -> None:
        if self.endpoint.is_closing():
            return
        self.endpoint.sendto(f"{tag};".encode(), self.endpoint_peer.getsockname())
        try:
            self.log(tag, "endpoint sent, peer got", self.endpoint_peer.recv(100).decode())
        except BlockingIOError:
            self.log(tag, "endpoint sent, peer got nothing yet")

    def _send_to_a_closed_port(self, loop: asyncio.AbstractEventLoop, tag: str) -> None:
        if not self.refused_endpoint.is_closing():
            self.refused_endpoint.sendto(f"{tag};".encode())
            self.log(tag, "sends to a closed port")

    def _close_the_endpoint(self, loop: asyncio.AbstractEventLoop, tag: str) -> None:
        if self.rng.random() < 0.2 and not self.endpoint.is_closing():
            self.endpoint.close()
            self.log(tag, "closes the endpoint")

    # -- pipes ----------------------------------------------------------------

    def _write_into_the_read_pipe(self, loop: asyncio.AbstractEventLoop, tag: str) -> None:
        if self.read_pipe_writer is not None:
            os.write(self.read_pipe_writer, f"{tag};".encode())
            self.log(tag, "writes into the read pipe")

    def _close_the_read_pipes_writer(self, loop: asyncio.AbstractEventLoop, tag: str) -> None:
        if self.read_pipe_writer is not None and self.rng.random() < 0.2:
            os.close(self.read_pipe_writer)
            self.read_pipe_writer = None
            self.log(tag, "closes the read pipe's writer")

    def _pause_or_resume_the_read_pipe(self, loop: asyncio.AbstractEventLoop, tag: str) -> None:
        reading = pause_or_resume(self.read_pipe)
        if reading is not None:
            self.log(tag, "read pipe reading:", reading)

    def _write_on_the_write_pipe(self, loop: asyncio.AbstractEventLoop, tag: str) -> None:
        if self.write_pipe.is_closing():
            return
        self.write_pipe.write(f"{tag};".encode())
        self.log(tag, "writes on the write pipe, buffered", self.write_pipe.get_write_buffer_size())
        if self.write_pipe_reader is not None:
            try:
                self.log(tag, "its reader got", os.read(self.write_pipe_reader, 100).decode())
            except BlockingIOError:
                self.log(tag, "its reader got nothing yet")

    def _end_the_write_pipe(self, loop: asyncio.AbstractEventLoop, tag: str) -> None:
        if self.write_pipe.is_closing() or self.rng.random() < 0.6:
            return
        how = self.rng.choice(["close", "abort", "write_eof", "close its reader"])
        if how == "close":
            self.write_pipe.close()
        elif how == "abort":
            self.write_pipe.abort()
        elif how == "write_eof":
            self.write_pipe.write_eof()
        elif self.write_pipe_reader is not None:
            os.close(self.write_pipe_reader)
            self.write_pipe_reader = None
        self.log(tag, how, "on the write pipe")

    # -- a writer callback and async generators -------------------------------

    def _add_a_writer(self, loop: asyncio.AbstractEventLoop, tag: str) -> None:
        loop.add_writer(self.raw_peer.fileno(), self.writable, tag)
        self.writer_watched = True
        self.log(tag, "adds a writer")

    def writable(self, tag: str) -> None:
        self.log("writer added by", tag, "runs")
        if self.rng.random() < 0.6:
            removed = asyncio.get_running_loop().remove_writer(self.raw_peer.fileno())
            self.writer_watched = False
            self.log("writer removed:", removed)

    def _abandon_an_async_generator(self, loop: asyncio.AbstractEventLoop, tag: str) -> None:
        index = self.generators
        self.generators += 1
        self.tasks.append(loop.create_task(self.take_one_item(index)))

    async def counting(self, index: int) -> AsyncIterator[int]:
        try:
            for item in range(3):
                yield item
                await asyncio.sleep(0)
        finally:
            self.log("generator", index, "finalised")

    async def take_one_item(self, index: int) -> None:
        generator = self.counting(index)
        self.log("generator", index, "yields", await anext(generator))
        # Dropped unfinished: the loop's finaliser hook schedules its aclose().
        del generator
        self.log("generator", index, "dropped")

    # -- TLS ------------------------------------------------------------------

    def _write_on_tls(self, loop: asyncio.AbstractEventLoop, tag: str) -> None:
        index = self.rng.randrange(2)
        if not self.tls[index].is_closing():
            self.tls[index].write(f"{tag};".encode())
            self.log(tag, "writes on tls", index)

    def _pause_or_resume_tls(self, loop: asyncio.AbstractEventLoop, tag: str) -> None:
        index = self.rng.randrange(2)
        reading = pause_or_resume(self.tls[index])
        if reading is not None:
            self.log(tag, "tls", index, "reading:", reading)

    def _end_tls(self, loop: asyncio.AbstractEventLoop, tag: str) -> None:
        index = self.rng.randrange(2)
        if self.tls[index].is_closing() or self.rng.random() < 0.7:
            return
        how = self.rng.choice(["close", "abort"])
        getattr(self.tls[index], how)()
        self.log(tag, how, "on tls", index)

    # -- streams --------------------------------------------------------------

    def _write_on_a_stream(self, loop: asyncio.AbstractEventLoop, tag: str) -> None:
        index = self.rng.randrange(2)
        writer = self.stream_writers[index]
        if writer.is_closing():
            return
        try:
            writer.write(f"{tag};\n".encode())
        except RuntimeError as exc:  # after write_eof()
            self.log(tag, "cannot write on stream", index, exc)
            return
        self.log(tag, "writes on stream", index)
        if self.rng.random() < 0.5:
            self.tasks.append(loop.create_task(self.log_outcome(writer.drain, tag, "drain")))

    def _end_a_stream(self, loop: asyncio.AbstractEventLoop, tag: str) -> None:
        index = self.rng.randrange(2)
        writer = self.stream_writers[index]
        if writer.is_closing() or self.rng.random() < 0.7:
            return
        if self.rng.random() < 0.5:
            writer.close()
            waiting = self.log_outcome(writer.wait_closed, tag, "wait_closed")
            self.tasks.append(loop.create_task(waiting))
            self.log(tag, "closes stream", index)
        elif writer.can_write_eof():
            writer.write_eof()
            self.log(tag, "ends stream", index)

    async def log_outcome(self, wait: Callable[[], Awaitable[None]], tag: str, what: str) -> None:
        """Await a stream writer's `drain()` or `wait_closed()` and log how it ended."""
        try:
            await wait()
            self.log(tag, what, "done")
        except Exception as exc:
            self.log(tag, what, "failed", type(exc).__name__)

    async def read_stream(self, index: int, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                how = self.rng.randrange(3)
                if how == 0:
                    data = await reader.readline()
                elif how == 1:
                    data = await reader.read(self.rng.choice([3, 100]))
                else:
                    data = await reader.readexactly(4)
                self.log("stream", index, "read", data)
                if not data:
                    return
        except asyncio.IncompleteReadError as exc:
            self.log("stream", index, "ended within an exact read", exc.partial)
        except Exception as exc:
            self.log("stream", index, "failed", type(exc).__name__)

    ACTIONS: ClassVar[list[Callable[[ScheduledProgram, asyncio.AbstractEventLoop, str], None]]] = [
        *ScheduledProgram.ACTIONS,
        _call_at_in_the_past,
        _call_at_in_the_past,
        _call_later_negative,
        _send_a_datagram,
        _send_from_the_endpoint,
        _send_to_a_closed_port,
        _close_the_endpoint,
        _write_into_the_read_pipe,
        _write_into_the_read_pipe,
        _close_the_read_pipes_writer,
        _pause_or_resume_the_read_pipe,
        _write_on_the_write_pipe,
        _end_the_write_pipe,
        _add_a_writer,
        _abandon_an_async_generator,
        _write_on_tls,
        _write_on_tls,
        _pause_or_resume_tls,
        _end_tls,
        _write_on_a_stream,
        _write_on_a_stream,
        _end_a_stream,
    ]  # type: ignore[assignment]

    # -- opening and closing --------------------------------------------------

    async def open_transports(self) -> None:
        await super().open_transports()
        loop = asyncio.get_running_loop()
        self.start_time = loop.time()
        await self.open_endpoints(loop)
        await self.open_pipes(loop)
        await self.open_tls(loop)
        await self.open_streams(loop)

    async def open_endpoints(self, loop: asyncio.AbstractEventLoop) -> None:
        self.endpoint, _ = await loop.create_datagram_endpoint(
            lambda: NamedLoggingProtocol(self, "endpoint"), local_addr=("127.0.0.1", 0)
        )
        self.endpoint_peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.endpoint_peer.bind(("127.0.0.1", 0))
        self.endpoint_peer.setblocking(False)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as gone:
            gone.bind(("127.0.0.1", 0))
            closed_port = gone.getsockname()
        self.refused_endpoint, _ = await loop.create_datagram_endpoint(
            lambda: NamedLoggingProtocol(self, "refused endpoint"), remote_addr=closed_port
        )

    async def open_pipes(self, loop: asyncio.AbstractEventLoop) -> None:
        reader, self.read_pipe_writer = os.pipe()
        self.read_pipe, _ = await loop.connect_read_pipe(
            lambda: NamedLoggingProtocol(self, "read pipe"), os.fdopen(reader, "rb", 0)
        )
        self.write_pipe_reader, writer = os.pipe()
        os.set_blocking(self.write_pipe_reader, False)
        self.write_pipe, _ = await loop.connect_write_pipe(
            lambda: NamedLoggingProtocol(self, "write pipe"), os.fdopen(writer, "wb", 0)
        )

    async def open_tls(self, loop: asyncio.AbstractEventLoop) -> None:
        client_context, server_context = tls_contexts()
        left, right = socket.socketpair()
        client = loop.create_connection(
            lambda: NamedLoggingProtocol(self, "tls 0"),
            sock=left,
            ssl=client_context,
            server_hostname="localhost",
        )
        server = loop.connect_accepted_socket(
            lambda: NamedLoggingProtocol(self, "tls 1"), sock=right, ssl=server_context
        )
        (client_transport, _), (server_transport, _) = await asyncio.gather(client, server)
        self.tls = [client_transport, server_transport]

    async def open_streams(self, loop: asyncio.AbstractEventLoop) -> None:
        left, right = socket.socketpair()
        # The small limit makes the first reader pause its transport.
        first_reader, first_writer = await asyncio.open_connection(sock=left, limit=8)
        second_reader, second_writer = await asyncio.open_connection(sock=right)
        self.stream_writers = [first_writer, second_writer]
        self.stream_readers = [
            loop.create_task(self.read_stream(index, reader))
            for index, reader in enumerate([first_reader, second_reader])
        ]

    async def close_transports(self) -> None:
        for writer in self.stream_writers:
            writer.close()
        for reading in self.stream_readers:
            reading.cancel()
        await asyncio.gather(*self.stream_readers, return_exceptions=True)
        loop = asyncio.get_running_loop()
        if self.writer_watched:
            loop.remove_writer(self.raw_peer.fileno())
        for transport in self.tls:
            # A paused end would never read its peer's close_notify, and
            # the underlying connection would stay open until the shutdown
            # timeout, long after the program.
            if not transport.is_closing() and not transport.is_reading():
                transport.resume_reading()
        for transport in [*self.tls, self.endpoint, self.refused_endpoint]:
            transport.close()
        self.read_pipe.close()
        self.write_pipe.close()
        if self.read_pipe_writer is not None:
            os.close(self.read_pipe_writer)
        for _ in range(2):
            await asyncio.sleep(0)
        if self.write_pipe_reader is not None:
            os.close(self.write_pipe_reader)
        self.endpoint_peer.close()
        await super().close_transports()


@pytest.mark.parametrize("first_seed", range(0, len(SEEDS), 100))
def test_random_programs_with_more_io_trace_as_on_asyncio(first_seed: int) -> None:
    seeds = SEEDS[first_seed : first_seed + 100]
    assert differing_seeds(ScheduledProgramWithMoreIo, seeds) == {}
