"""Random scheduling programs, run on asyncio's loop and on ferroloop, must
leave the same trace (the oracle of test_scheduling_oracle*.py).

Each seed makes a program of callbacks (`call_soon`, `call_soon_threadsafe`,
`call_later(0)`, some with a copied context, some raising), handle, future and
task cancellations, futures resolved from callbacks, tasks that await futures
(plain or shielded), earlier tasks, `asyncio.wait`, an `Event` under
`wait_for(..., 0)` and `asyncio.timeout(0)`, a `Queue`, and socket pairs:
bytes sent to transports that are paused and resumed now and then, written
between two transports, ends written and transports closed or aborted, a
plain socket watched with `add_reader` and `remove_reader`, one read by a
task with `sock_recv` (echoing some with `sock_sendall`), and a server whose
clients connect, send and shut down their sending side. Some steps stop the
loop (at once or from a callback); the program's runner runs it again, now
and then after one more `stop()` (see `run_through_stops`). Everything it does
and everything the loop's exception handler receives is written to a trace;
asyncio's trace is the expected one. Nothing here depends on the clock: every
timer is due at once, every timeout is zero, and bytes sent into a socket pair
are readable at the next poll, so the order is the loops' scheduling alone
(FIFO callbacks, I/O and timers after the callbacks already queued, task
wake-ups one iteration after the event that wakes them).
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import random
import socket
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar

from loop_helpers import make_loop_factory

#: Program steps per seed; nested callbacks and tasks spend the same budget.
BUDGET = 80

current_tag: contextvars.ContextVar[str] = contextvars.ContextVar("current_tag", default="-")


class ScheduledProgram:
    """One seed's program; `main()` is the coroutine the loop runs."""

    def __init__(self, seed: int, trace: list[str]) -> None:
        self.rng = random.Random(seed)
        self.trace = trace
        self.budget = BUDGET
        self.handles: list[asyncio.Handle] = []
        self.futures: list[asyncio.Future[Any]] = []
        self.tasks: list[asyncio.Task[Any]] = []
        self.event = asyncio.Event()
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        # Socket pairs: the program writes into `peers`; the loop reads the
        # other ends through transports whose protocols log what arrives.
        self.peers: list[socket.socket] = []
        self.transports: list[asyncio.Transport] = []
        self.raw_socket: socket.socket
        self.raw_peer: socket.socket
        self.raw_watched = False
        self.sock_socket: socket.socket
        self.sock_peer: socket.socket
        self.sock_recv_task: asyncio.Task[None]
        self.server: asyncio.Server
        self.server_address: tuple[str, int]
        self.clients: list[socket.socket] = []
        self.accepted = 0

    def log(self, *parts: object) -> None:
        self.trace.append(" ".join(map(str, parts)))

    # -- one step, from a callback, a task or main ----------------------------

    def step(self, tag: str) -> None:
        if self.budget <= 0:
            return
        self.budget -= 1
        loop = asyncio.get_running_loop()
        action = self.rng.choice(self.ACTIONS)
        action(self, loop, tag)

    def _call_soon(self, loop: asyncio.AbstractEventLoop, tag: str) -> None:
        name = f"{tag}.s{len(self.handles)}"
        self.handles.append(loop.call_soon(self.callback, name))

    def _call_soon_threadsafe(self, loop: asyncio.AbstractEventLoop, tag: str) -> None:
        name = f"{tag}.ts{len(self.handles)}"
        self.handles.append(loop.call_soon_threadsafe(self.callback, name))

    def _call_later_now(self, loop: asyncio.AbstractEventLoop, tag: str) -> None:
        name = f"{tag}.l{len(self.handles)}"
        self.handles.append(loop.call_later(0, self.callback, name))

    def _call_in_copied_context(self, loop: asyncio.AbstractEventLoop, tag: str) -> None:
        context = contextvars.copy_context()
        context.run(current_tag.set, f"ctx-of-{tag}")
        name = f"{tag}.c{len(self.handles)}"
        self.handles.append(loop.call_soon(self.callback, name, context=context))

    def _call_failing(self, loop: asyncio.AbstractEventLoop, tag: str) -> None:
        self.handles.append(loop.call_soon(self.failing_callback, f"{tag}.f"))

    def _cancel_handle(self, loop: asyncio.AbstractEventLoop, tag: str) -> None:
        if self.handles:
            index = self.rng.randrange(len(self.handles))
            self.handles[index].cancel()
            self.log(tag, "cancels handle", index)

    def _new_future(self, loop: asyncio.AbstractEventLoop, tag: str) -> None:
        index = len(self.futures)
        future = loop.create_future()
        future.add_done_callback(
            lambda f: self.log("future", index, "done, cancelled:", f.cancelled())
        )
        self.futures.append(future)

    def _resolve_future(self, loop: asyncio.AbstractEventLoop, tag: str) -> None:
        if self.futures:
            index = self.rng.randrange(len(self.futures))
            if not self.futures[index].done():
                self.futures[index].set_result(tag)
                self.log(tag, "resolves future", index)

    def _cancel_future(self, loop: asyncio.AbstractEventLoop, tag: str) -> None:
        if self.futures:
            index = self.rng.randrange(len(self.futures))
            self.log(tag, "cancels future", index, self.futures[index].cancel())

    def _new_task(self, loop: asyncio.AbstractEventLoop, tag: str) -> None:
        index = len(self.tasks)
        self.tasks.append(loop.create_task(self.task_body(index)))

    def _new_failing_task(self, loop: asyncio.AbstractEventLoop, tag: str) -> None:
        index = len(self.tasks)
        self.tasks.append(loop.create_task(self.failing_task(index)))

    def _cancel_task(self, loop: asyncio.AbstractEventLoop, tag: str) -> None:
        if self.tasks:
            index = self.rng.randrange(len(self.tasks))
            self.log(tag, "cancels task", index, self.tasks[index].cancel())

    def _watch_task(self, loop: asyncio.AbstractEventLoop, tag: str) -> None:
        if self.tasks:
            index = self.rng.randrange(len(self.tasks))
            self.tasks[index].add_done_callback(
                lambda t: self.log("task", index, "done, cancelled:", t.cancelled())
            )

    def _toggle_event(self, loop: asyncio.AbstractEventLoop, tag: str) -> None:
        if self.rng.random() < 0.5:
            self.event.set()
        else:
            self.event.clear()
        self.log(tag, "event set:", self.event.is_set())

    def _put(self, loop: asyncio.AbstractEventLoop, tag: str) -> None:
        self.queue.put_nowait(tag)
        self.log(tag, "puts, queue size", self.queue.qsize())

    def _send_to_a_transport(self, loop: asyncio.AbstractEventLoop, tag: str) -> None:
        index = self.rng.randrange(len(self.peers))
        try:
            self.peers[index].send(f"{tag};".encode())
            self.log(tag, "sends to transport", index)
        except OSError as exc:  # the transport closed its end
            self.log(tag, "cannot send to transport", index, type(exc).__name__)

    def _write_on_a_transport(self, loop: asyncio.AbstractEventLoop, tag: str) -> None:
        index = self.rng.randrange(len(self.transports))
        transport = self.transports[index]
        if not transport.is_closing():
            try:
                transport.write(f"{tag};".encode())
                self.log(tag, "writes on transport", index)
            except RuntimeError as exc:  # after write_eof()
                self.log(tag, "cannot write on transport", index, exc)

    def _end_a_transport(self, loop: asyncio.AbstractEventLoop, tag: str) -> None:
        index = self.rng.randrange(len(self.transports))
        transport = self.transports[index]
        how = self.rng.choice(["write_eof", "close", "abort"])
        if transport.is_closing():
            return
        if how == "write_eof":
            if not transport.can_write_eof():
                return
            transport.write_eof()
        elif how == "close":
            transport.close()
        else:
            transport.abort()
        self.log(tag, how, "on transport", index)

    def _watch_or_unwatch_the_raw_socket(self, loop: asyncio.AbstractEventLoop, tag: str) -> None:
        fd = self.raw_socket.fileno()
        if self.raw_watched:
            self.log(tag, "removes reader:", loop.remove_reader(fd))
        else:
            loop.add_reader(fd, self.raw_readable, tag)
            self.log(tag, "adds reader")
        self.raw_watched = not self.raw_watched

    def _send_to_the_raw_socket(self, loop: asyncio.AbstractEventLoop, tag: str) -> None:
        self.raw_peer.send(f"{tag};".encode())
        self.log(tag, "sends to the raw socket")

    def _connect_a_client(self, loop: asyncio.AbstractEventLoop, tag: str) -> None:
        # A loopback connection is in the server's accept queue when connect()
        # returns: the server accepts it at its next poll.
        client = socket.create_connection(self.server_address)
        client.setblocking(False)
        self.clients.append(client)
        self.log(tag, "connects client", len(self.clients) - 1)

    def _send_from_a_client(self, loop: asyncio.AbstractEventLoop, tag: str) -> None:
        if self.clients:
            index = self.rng.randrange(len(self.clients))
            try:
                self.clients[index].send(f"{tag};".encode())
                self.log(tag, "sends from client", index)
            except OSError as exc:
                self.log(tag, "cannot send from client", index, type(exc).__name__)

    def _shut_a_client(self, loop: asyncio.AbstractEventLoop, tag: str) -> None:
        if self.clients:
            index = self.rng.randrange(len(self.clients))
            try:
                self.clients[index].shutdown(socket.SHUT_WR)
                self.log(tag, "shuts client", index)
            except OSError as exc:
                self.log(tag, "cannot shut client", index, type(exc).__name__)

    def _send_to_the_sock_recv_task(self, loop: asyncio.AbstractEventLoop, tag: str) -> None:
        self.sock_peer.send(f"{tag};".encode())
        self.log(tag, "sends to the sock_recv task")

    def _stop_the_loop(self, loop: asyncio.AbstractEventLoop, tag: str) -> None:
        if self.rng.random() < 0.5:
            loop.stop()
            self.log(tag, "stops the loop")
        else:
            self.handles.append(loop.call_soon(loop.stop))
            self.log(tag, "schedules a stop")

    def _pause_or_resume_reading(self, loop: asyncio.AbstractEventLoop, tag: str) -> None:
        index = self.rng.randrange(len(self.transports))
        transport = self.transports[index]
        if transport.is_reading():
            transport.pause_reading()
        else:
            transport.resume_reading()
        self.log(tag, "transport", index, "reading:", transport.is_reading())

    ACTIONS: ClassVar[list[Callable[[ScheduledProgram, asyncio.AbstractEventLoop, str], None]]] = [
        _call_soon,
        _call_soon,
        _call_soon_threadsafe,
        _call_later_now,
        _call_in_copied_context,
        _call_failing,
        _cancel_handle,
        _new_future,
        _resolve_future,
        _cancel_future,
        _new_task,
        _new_task,
        _new_failing_task,
        _cancel_task,
        _watch_task,
        _toggle_event,
        _put,
        _send_to_a_transport,
        _send_to_a_transport,
        _pause_or_resume_reading,
        _write_on_a_transport,
        _write_on_a_transport,
        _end_a_transport,
        _watch_or_unwatch_the_raw_socket,
        _send_to_the_raw_socket,
        _send_to_the_sock_recv_task,
        _connect_a_client,
        _send_from_a_client,
        _send_from_a_client,
        _shut_a_client,
        _stop_the_loop,
    ]

    # -- what runs on the loop ------------------------------------------------

    def callback(self, name: str) -> None:
        self.log("callback", name, "in context", current_tag.get())
        for _ in range(self.rng.randrange(1, 4)):
            self.step(name)

    def raw_readable(self, tag: str) -> None:
        try:
            data = self.raw_socket.recv(4096)
        except BlockingIOError:
            data = b"(nothing)"
        self.log("reader added by", tag, "reads", data.decode())

    def failing_callback(self, name: str) -> None:
        self.log("failing callback", name)
        raise ValueError(name)

    async def failing_task(self, index: int) -> None:
        self.log("task", index, "starts, will fail")
        await asyncio.sleep(0)
        raise KeyError(index)

    async def task_body(self, index: int) -> None:
        tag = f"t{index}"
        current_tag.set(tag)
        self.log("task", index, "starts")
        try:
            for _ in range(self.rng.randrange(4)):
                await self.task_step(index, tag)
            self.log("task", index, "ends")
        except asyncio.CancelledError:
            self.log("task", index, "cancelled")
            raise

    async def task_step(self, index: int, tag: str) -> None:
        kind = self.rng.randrange(8)
        if kind == 0:
            await asyncio.sleep(0)
        elif kind == 1 and self.futures:
            await self.await_future(tag)
        elif kind == 2 and index > 0:
            await self.await_earlier_task(index, tag)
        elif kind == 3:
            try:
                await asyncio.wait_for(self.event.wait(), 0)
                self.log(tag, "saw the event (wait_for)")
            except TimeoutError:
                self.log(tag, "timed out on the event (wait_for)")
        elif kind == 4:
            try:
                async with asyncio.timeout(0):
                    await self.event.wait()
                self.log(tag, "saw the event (timeout)")
            except TimeoutError:
                self.log(tag, "timed out on the event (timeout)")
        elif kind == 5:
            try:
                self.log(tag, "got", self.queue.get_nowait())
            except asyncio.QueueEmpty:
                self.log(tag, "found the queue empty")
        elif kind == 6:
            await asyncio.sleep(0)
            self.step(tag)
        else:
            self.step(tag)

    async def await_future(self, tag: str) -> None:
        index = self.rng.randrange(len(self.futures))
        future = self.futures[index]
        try:
            if self.rng.random() < 0.3:
                result = await asyncio.shield(future)
            else:
                result = await future
            self.log(tag, "awaited future", index, "->", result)
        except asyncio.CancelledError:
            self.log(tag, "saw future", index, "cancelled")
            if self.rng.random() < 0.5:
                raise

    async def await_earlier_task(self, index: int, tag: str) -> None:
        # Only earlier tasks: no task waits for itself or for a cycle.
        other = self.rng.randrange(index)
        try:
            if self.rng.random() < 0.5:
                await asyncio.wait([self.tasks[other]])
            else:
                await self.tasks[other]
            self.log(tag, "awaited task", other)
        except asyncio.CancelledError:
            self.log(tag, "cancelled awaiting task", other)
            raise
        except Exception as exc:
            self.log(tag, "task", other, "failed with", type(exc).__name__)

    async def open_transports(self) -> None:
        # Transports 0 and 1 have plain sockets as peers, 2 and 3 are each
        # other's peer; the raw socket is watched with add_reader.
        loop = asyncio.get_running_loop()
        for index in range(2):
            ours, peer = socket.socketpair()
            peer.setblocking(False)
            self.peers.append(peer)
            await self.open_transport(loop, ours, index)
        left, right = socket.socketpair()
        await self.open_transport(loop, left, 2)
        await self.open_transport(loop, right, 3)
        self.raw_socket, self.raw_peer = socket.socketpair()
        self.raw_socket.setblocking(False)
        self.sock_socket, self.sock_peer = socket.socketpair()
        self.sock_socket.setblocking(False)
        self.sock_recv_task = loop.create_task(self.read_with_sock_recv())
        self.server = await loop.create_server(self.accepted_protocol, "127.0.0.1", 0)
        self.server_address = self.server.sockets[0].getsockname()

    def accepted_protocol(self) -> LoggingProtocol:
        self.accepted += 1
        return LoggingProtocol(self, f"accepted {self.accepted - 1}")

    async def read_with_sock_recv(self) -> None:
        loop = asyncio.get_running_loop()
        while data := await loop.sock_recv(self.sock_socket, 4096):
            self.log("sock_recv got", data.decode())
            if self.rng.random() < 0.3:
                await loop.sock_sendall(self.sock_socket, data)
                self.log("sock_sendall sent", data.decode())

    async def open_transport(
        self, loop: asyncio.AbstractEventLoop, sock: socket.socket, index: int
    ) -> None:
        transport, _ = await loop.create_connection(lambda: LoggingProtocol(self, index), sock=sock)
        self.transports.append(transport)  # type: ignore[arg-type]

    async def close_transports(self) -> None:
        for transport in self.transports:
            transport.close()
        for peer in self.peers:
            peer.close()
        if self.raw_watched:
            asyncio.get_running_loop().remove_reader(self.raw_socket.fileno())
        self.raw_socket.close()
        self.raw_peer.close()
        self.sock_recv_task.cancel()
        try:
            await self.sock_recv_task
        except asyncio.CancelledError:
            self.log("sock_recv task cancelled")
        self.sock_socket.close()
        self.sock_peer.close()
        for client in self.clients:
            client.close()
        self.server.close()
        await self.server.wait_closed()
        self.log("server closed")
        for _ in range(3):
            await asyncio.sleep(0)

    async def main(self) -> None:
        await self.open_transports()
        for index in range(8):
            self.step(f"m{index}")
        for _ in range(40):
            await asyncio.sleep(0)
        for future in self.futures:
            future.cancel()
        for _ in range(10):
            await asyncio.sleep(0)
        pending = [task for task in self.tasks if not task.done()]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self.log("outcomes", ["cancelled" if t.cancelled() else "done" for t in self.tasks])
        await self.close_transports()


class LoggingProtocol(asyncio.Protocol):
    """Logs a transport's events into its program's trace."""

    def __init__(self, program: ScheduledProgram, index: int | str) -> None:
        self.program = program
        self.index = index

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.program.log("transport", self.index, "made")

    def data_received(self, data: bytes) -> None:
        self.program.log("transport", self.index, "received", data.decode())

    def eof_received(self) -> None:
        self.program.log("transport", self.index, "eof")

    def connection_lost(self, exc: Exception | None) -> None:
        self.program.log("transport", self.index, "lost", repr(exc))


def run_through_stops(
    loop: asyncio.AbstractEventLoop, main: Coroutine[Any, Any, None], trace: list[str]
) -> None:
    """Run `main` to its end, running the loop again each time a step stops it.

    Every third time, the loop is stopped once more before it runs again:
    asyncio then runs one iteration and returns.
    """
    task = loop.create_task(main)
    task.add_done_callback(lambda _: loop.stop())
    runs = 0
    while not task.done():
        loop.run_forever()
        runs += 1
        trace.append("loop stopped")
        if not task.done() and runs % 3 == 0:
            loop.stop()
            trace.append("loop stopped before it runs again")
    task.result()


def trace_of(
    seed: int,
    factory: Callable[[], asyncio.AbstractEventLoop],
    program_class: type[ScheduledProgram] = ScheduledProgram,
) -> list[str]:
    """Run one seed's program on a new loop from `factory`; return its trace."""
    trace: list[str] = []
    loop = factory()
    loop.set_exception_handler(
        lambda _loop, context: trace.append(
            f"handler: {context['message']} {context.get('exception')!r}"
        )
    )
    try:
        main: Coroutine[Any, Any, None] = program_class(seed, trace).main()
        run_through_stops(loop, main, trace)
        loop.run_until_complete(loop.shutdown_asyncgens())
    finally:
        loop.close()
        # Failed tasks left in reference cycles report when collected: here,
        # not whenever the collector next runs.
        gc.collect()
    return trace


def first_difference(expected: list[str], got: list[str]) -> str:
    for index, (want, have) in enumerate(zip(expected, got, strict=False)):
        if want != have:
            return f"line {index}: asyncio {want!r}, ferroloop {have!r}"
    return f"asyncio's trace has {len(expected)} lines, ferroloop's {len(got)}"


def differing_seeds(program_class: type[ScheduledProgram], seeds: range) -> dict[int, str]:
    """The seeds whose traces differ between the loops, with the first difference."""
    asyncio_factory = make_loop_factory("asyncio")
    ferroloop_factory = make_loop_factory("ferroloop")
    differences = {}
    for seed in seeds:
        expected = trace_of(seed, asyncio_factory, program_class)
        got = trace_of(seed, ferroloop_factory, program_class)
        if got != expected:
            differences[seed] = first_difference(expected, got)
    return differences
