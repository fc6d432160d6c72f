"""Pipe transports: `connect_read_pipe` and `connect_write_pipe`.

Every test runs on asyncio's own loop (the oracle) and on ferroloop; both must
pass, so the assertions are asyncio's documented (and observed) behaviour.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers_net import (
    DataEvents,
    KeepingProtocol,
    as_any_class,
    asyncio_log,
    order_after_pause_and_resume,
    queue_datagrams,
)
from loop_helpers import run

MIB = 1024 * 1024


class ReadRecorder(asyncio.Protocol):
    """Records a read pipe's callbacks."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.events: list[str] = []
        self.data = bytearray()
        self.transport: Any = None
        self.exc: BaseException | None = None
        self.done: asyncio.Future[None] = loop.create_future()
        self.got_data: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.events.append("connection_made")

    def data_received(self, data: bytes) -> None:
        assert type(data) is bytes
        self.data += data
        if not self.events or self.events[-1] != "data":
            self.events.append("data")
        if not self.got_data.done():
            self.got_data.set_result(None)

    def eof_received(self) -> bool | None:
        self.events.append("eof_received")
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append("connection_lost")
        self.exc = exc
        self.done.set_result(None)


class WriteRecorder(asyncio.BaseProtocol):
    """Records a write pipe's callbacks, including flow control."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.events: list[str] = []
        self.transport: Any = None
        self.exc: BaseException | None = None
        self.done: asyncio.Future[None] = loop.create_future()
        self.resumed: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.events.append("connection_made")

    def pause_writing(self) -> None:
        self.events.append("pause_writing")

    def resume_writing(self) -> None:
        self.events.append("resume_writing")
        if not self.resumed.done():
            self.resumed.set_result(None)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.events.append("connection_lost")
        self.exc = exc
        self.done.set_result(None)


@pytest.fixture
def fds_unchanged() -> Iterator[None]:
    """The test leaves no descriptor behind."""
    before = set(os.listdir("/proc/self/fd"))
    yield
    after = set(os.listdir("/proc/self/fd"))
    # listdir's own descriptor may differ between the two calls.
    leaked = {fd for fd in after - before if os.path.exists(f"/proc/self/fd/{fd}")}
    leaked = {fd for fd in leaked if fd in set(os.listdir("/proc/self/fd"))}
    assert not leaked, f"leaked descriptors: {leaked}"


def unbuffered(file: int | str | Path, mode: str) -> Any:
    """An unbuffered binary file object over a descriptor or a path."""
    return open(file, mode, buffering=0)


def pipe_files() -> tuple[Any, Any]:
    """Both ends of a new pipe as unbuffered file objects."""
    r, w = os.pipe()
    return open(r, "rb", buffering=0), open(w, "wb", buffering=0)


async def drain_fd(fd: int, until: int, *, chunk: int = 65536, delay: float = 0.0) -> bytes:
    """Read `until` bytes from the non-blocking `fd`, pausing `delay` between reads."""
    out = bytearray()
    os.set_blocking(fd, False)
    while len(out) < until:
        try:
            data = os.read(fd, chunk)
        except BlockingIOError:
            await asyncio.sleep(0.001)
            continue
        if not data:
            break
        out += data
        await asyncio.sleep(delay)
    return bytes(out)


# -- read pipes ----------------------------------------------------------------


def test_read_pipe_data_eof_and_close(loop_factory: Callable[[], Any], fds_unchanged: None) -> None:
    async def main() -> tuple[ReadRecorder, dict[str, Any]]:
        loop = asyncio.get_running_loop()
        rfile, wfile = pipe_files()
        transport, protocol = await loop.connect_read_pipe(ReadRecorder, rfile)
        seen = {
            "pipe": transport.get_extra_info("pipe") is rfile,
            "is_reading": transport.is_reading(),
            "is_closing": transport.is_closing(),
            "protocol": transport.get_protocol() is protocol,
            "read_transport": isinstance(transport, asyncio.ReadTransport),
        }
        wfile.write(b"hello ")
        await protocol.got_data
        wfile.write(b"world")
        wfile.close()
        await protocol.done
        seen["rfile_closed"] = rfile.closed
        seen["is_closing_after"] = transport.is_closing()
        return protocol, seen

    protocol, seen = run(loop_factory, main)
    assert seen == {
        "pipe": True,
        "is_reading": True,
        "is_closing": False,
        "protocol": True,
        "read_transport": True,
        "rfile_closed": True,
        "is_closing_after": True,
    }
    assert bytes(protocol.data) == b"hello world"
    assert protocol.events == ["connection_made", "data", "eof_received", "connection_lost"]
    assert protocol.exc is None


def test_pipe_transports_repr_reads_as_asyncio_s(
    loop_factory: Callable[[], Any], fds_unchanged: None
) -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        rfile, wfile = pipe_files()
        reader, read_protocol = await loop.connect_read_pipe(ReadRecorder, rfile)
        writer, write_protocol = await loop.connect_write_pipe(WriteRecorder, wfile)
        shown = [as_any_class(repr(reader)), as_any_class(repr(writer))]
        reader.pause_reading()
        shown.append(as_any_class(repr(reader)))
        reader.close()
        writer.close()
        await read_protocol.done
        await write_protocol.done
        shown += [as_any_class(repr(reader)), as_any_class(repr(writer))]
        return shown

    assert run(loop_factory, main) == [
        "<T fd=F polling>",
        "<T fd=F idle bufsize=0>",
        "<T fd=F idle>",
        "<T closed fd=F closed>",
        "<T closed fd=F closed>",
    ]


def test_debug_mode_logs_a_read_pipe_s_switches_and_its_peer_closing(
    loop_factory: Callable[[], Any], fds_unchanged: None
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        rfile, wfile = pipe_files()
        transport, protocol = await loop.connect_read_pipe(ReadRecorder, rfile)
        transport.pause_reading()
        transport.resume_reading()
        wfile.close()
        await protocol.done

    with asyncio_log() as records:
        run(loop_factory, main, debug=True)
    about_the_pipe = [
        (level, as_any_class(message))
        for level, message in records
        if message.endswith(("reading", "closed by peer"))
    ]
    assert about_the_pipe == [
        ("DEBUG", "<T fd=F idle> pauses reading"),
        ("DEBUG", "<T fd=F polling> resumes reading"),
        ("INFO", "<T fd=F polling> was closed by peer"),
    ]


def test_read_pipe_close_and_close_again(
    loop_factory: Callable[[], Any], fds_unchanged: None
) -> None:
    async def main() -> tuple[ReadRecorder, bool, bool]:
        loop = asyncio.get_running_loop()
        rfile, wfile = pipe_files()
        transport, protocol = await loop.connect_read_pipe(ReadRecorder, rfile)
        transport.close()
        closing = transport.is_closing()
        transport.close()
        reading = transport.is_reading()
        await protocol.done
        await asyncio.sleep(0.01)
        wfile.close()
        return protocol, closing, reading

    protocol, closing, reading = run(loop_factory, main)
    assert closing is True and reading is False
    assert protocol.events == ["connection_made", "connection_lost"]
    assert protocol.exc is None


def test_read_pipe_pause_and_resume(loop_factory: Callable[[], Any], fds_unchanged: None) -> None:
    async def main() -> tuple[bytes, bytes, list[bool]]:
        loop = asyncio.get_running_loop()
        rfile, wfile = pipe_files()
        transport, protocol = await loop.connect_read_pipe(ReadRecorder, rfile)
        states = [transport.is_reading()]
        transport.pause_reading()
        transport.pause_reading()  # idempotent
        states.append(transport.is_reading())
        wfile.write(b"while paused")
        await asyncio.sleep(0.05)
        during_pause = bytes(protocol.data)
        transport.resume_reading()
        transport.resume_reading()
        states.append(transport.is_reading())
        await protocol.got_data
        wfile.close()
        await protocol.done
        return during_pause, bytes(protocol.data), states

    during_pause, data, states = run(loop_factory, main)
    assert during_pause == b""
    assert data == b"while paused"
    assert states == [True, False, True]


def test_read_pipe_pause_and_resume_in_one_iteration_drops_the_queued_read(
    loop_factory: Callable[[], Any], fds_unchanged: None
) -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        rfile, wfile = pipe_files()
        with wfile:
            transport, protocol = await loop.connect_read_pipe(DataEvents, rfile)
            send = lambda: wfile.write(b"x")  # noqa: E731
            return await order_after_pause_and_resume(transport, send, protocol.events)

    assert run(loop_factory, main) == ["queued after resume", "data"]


def test_read_pipe_large_transfer(loop_factory: Callable[[], Any], fds_unchanged: None) -> None:
    payload = os.urandom(MIB) * 8

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        rfile, wfile = pipe_files()
        _, protocol = await loop.connect_read_pipe(ReadRecorder, rfile)

        def feed() -> None:
            with wfile:
                wfile.write(payload)

        await asyncio.gather(loop.run_in_executor(None, feed), protocol.done)
        return bytes(protocol.data)

    assert run(loop_factory, main) == payload


def test_read_pipe_objects_kept_by_the_protocol_stay_intact(
    loop_factory: Callable[[], Any], fds_unchanged: None
) -> None:
    """Chunks of one size, written one at a time: a loop that reuses the
    `bytes` objects nobody kept must leave the kept ones alone."""
    chunks = [os.urandom(size) for size in [900, 900, 800, 900, 20_000, 15_000, 3] * 10]

    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        rfile, wfile = pipe_files()
        _, protocol = await loop.connect_read_pipe(KeepingProtocol, rfile)
        writer, _ = await loop.connect_write_pipe(asyncio.Protocol, wfile)
        for chunk in chunks:
            before = protocol.offset
            writer.write(chunk)
            while protocol.offset < before + len(chunk):
                await asyncio.sleep(0.001)
        writer.close()
        await asyncio.wait_for(protocol.done, 10)
        return protocol.check_against(b"".join(chunks))

    assert run(loop_factory, main) == []


def test_read_pipe_protocol_error_is_reported_and_reading_goes_on(
    loop_factory: Callable[[], Any], fds_unchanged: None
) -> None:
    class Failing(ReadRecorder):
        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if data.startswith(b"boom"):
                raise ZeroDivisionError("protocol bug")

    async def main() -> tuple[list[dict[str, Any]], bytes, list[str]]:
        loop = asyncio.get_running_loop()
        contexts: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: contexts.append(context))
        rfile, wfile = pipe_files()
        _, protocol = await loop.connect_read_pipe(Failing, rfile)
        wfile.write(b"boom")
        await protocol.got_data
        await asyncio.sleep(0.02)
        wfile.write(b" and more")
        wfile.close()
        await protocol.done
        return contexts, bytes(protocol.data), protocol.events

    contexts, data, events = run(loop_factory, main)
    assert len(contexts) == 1
    assert isinstance(contexts[0]["exception"], ZeroDivisionError)
    assert contexts[0]["message"].startswith("Exception in callback")
    assert data == b"boom and more"
    assert events[-1] == "connection_lost"


def test_read_from_a_pty(loop_factory: Callable[[], Any], fds_unchanged: None) -> None:
    async def main() -> tuple[bytes, list[str], BaseException | None]:
        loop = asyncio.get_running_loop()
        master, slave = os.openpty()
        mfile = unbuffered(master, "rb")
        _, protocol = await loop.connect_read_pipe(ReadRecorder, mfile)
        os.write(slave, b"typed on the terminal\n")
        while b"\n" not in protocol.data:
            await asyncio.sleep(0.005)
        os.close(slave)
        await asyncio.wait_for(protocol.done, 5)
        return bytes(protocol.data), protocol.events, protocol.exc

    data, events, exc = run(loop_factory, main)
    # The line discipline turns "\n" into "\r\n" on output.
    assert data == b"typed on the terminal\r\n"
    assert events == ["connection_made", "data", "connection_lost"]
    # The master reports EIO once the slave side is closed.
    assert isinstance(exc, OSError) and exc.errno == errno.EIO


def test_read_from_a_socket(loop_factory: Callable[[], Any], fds_unchanged: None) -> None:
    async def main() -> tuple[bytes, list[str]]:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        _, protocol = await loop.connect_read_pipe(ReadRecorder, a)
        b.sendall(b"over a socket")
        b.close()
        await protocol.done
        assert a.fileno() == -1  # closed by the transport
        return bytes(protocol.data), protocol.events

    data, events = run(loop_factory, main)
    assert data == b"over a socket"
    assert events == ["connection_made", "data", "eof_received", "connection_lost"]


def test_read_from_a_datagram_socket_gives_whole_datagrams(
    loop_factory: Callable[[], Any], fds_unchanged: None
) -> None:
    """asyncio reads a pipe transport's descriptor 256 KiB at a time, so a
    datagram socket's datagrams up to that size arrive one per call, whole."""
    sizes = [40_000, 200_000, 200_000, 150_000, 1]

    class Chunks(ReadRecorder):
        def __init__(self) -> None:
            super().__init__()
            self.sizes: list[int] = []

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self.sizes.append(len(data))
            if len(self.data) == sum(sizes):
                self.transport.close()

    async def main() -> tuple[list[int], bool]:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        with b:
            try:
                datagrams = queue_datagrams(b, sizes)
            except BaseException:
                a.close()
                raise
            _, protocol = await loop.connect_read_pipe(Chunks, a)
            await asyncio.wait_for(protocol.done, 10)
        return protocol.sizes, bytes(protocol.data) == b"".join(datagrams)

    assert run(loop_factory, main) == (sizes, True)


# -- write pipes ---------------------------------------------------------------


def test_write_pipe_write_writelines_and_close(
    loop_factory: Callable[[], Any], fds_unchanged: None
) -> None:
    async def main() -> tuple[bytes, WriteRecorder, dict[str, Any]]:
        loop = asyncio.get_running_loop()
        rfile, wfile = pipe_files()
        transport, protocol = await loop.connect_write_pipe(WriteRecorder, wfile)
        transport.write(b"abc")
        transport.write(bytearray(b"def"))
        transport.write(memoryview(b"ghi"))
        transport.write(b"")
        transport.writelines([b"j", bytearray(b"k"), memoryview(b"l")])
        seen = {
            "pipe": transport.get_extra_info("pipe") is wfile,
            "write_transport": isinstance(transport, asyncio.WriteTransport),
            "can_write_eof": transport.can_write_eof(),
            "buffer": transport.get_write_buffer_size(),
            "limits": transport.get_write_buffer_limits(),
        }
        transport.close()
        seen["closing"] = transport.is_closing()
        await protocol.done
        seen["wfile_closed"] = wfile.closed
        with rfile:
            data = rfile.read()
        return data, protocol, seen

    data, protocol, seen = run(loop_factory, main)
    assert data == b"abcdefghijkl"
    assert seen == {
        "pipe": True,
        "write_transport": True,
        "can_write_eof": True,
        "buffer": 0,
        "limits": (16384, 65536),
        "closing": True,
        "wfile_closed": True,
    }
    assert protocol.events == ["connection_made", "connection_lost"]
    assert protocol.exc is None


def test_write_pipe_is_a_full_transport_whose_read_side_is_not_implemented(
    loop_factory: Callable[[], Any], fds_unchanged: None
) -> None:
    # asyncio's write pipe transport is an asyncio.Transport (its flow-control
    # base is one), so the reading methods exist and raise NotImplementedError;
    # a read pipe transport is only a ReadTransport and has no write().
    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        rfile, wfile = pipe_files()
        writer, _ = await loop.connect_write_pipe(WriteRecorder, wfile)
        reader, _ = await loop.connect_read_pipe(ReadRecorder, rfile)
        seen: dict[str, Any] = {
            "writer is a Transport": isinstance(writer, asyncio.Transport),
            "reader is a WriteTransport": isinstance(reader, asyncio.WriteTransport),
            "reader has write": hasattr(reader, "write"),
        }
        for name in ("pause_reading", "resume_reading", "is_reading"):
            try:
                getattr(writer, name)()
            except Exception as exc:  # the type is what is compared
                seen[name] = type(exc).__name__
        writer.close()
        reader.close()
        await asyncio.sleep(0.01)
        return seen

    assert run(loop_factory, main) == {
        "writer is a Transport": True,
        "reader is a WriteTransport": False,
        "reader has write": False,
        "pause_reading": "NotImplementedError",
        "resume_reading": "NotImplementedError",
        "is_reading": "NotImplementedError",
    }


def test_flow_control_with_a_slow_reader(
    loop_factory: Callable[[], Any], fds_unchanged: None
) -> None:
    payload = os.urandom(MIB)

    async def main() -> tuple[bytes, WriteRecorder, int, int]:
        loop = asyncio.get_running_loop()
        rfile, wfile = pipe_files()
        transport, protocol = await loop.connect_write_pipe(WriteRecorder, wfile)
        transport.set_write_buffer_limits(high=32768, low=8192)
        for start in range(0, len(payload), 4096):
            transport.write(payload[start : start + 4096])
        buffered = transport.get_write_buffer_size()
        reader = asyncio.ensure_future(drain_fd(rfile.fileno(), len(payload), delay=0.001))
        await protocol.resumed
        after_resume = transport.get_write_buffer_size()
        transport.close()
        await protocol.done
        data = await reader
        rfile.close()
        return data, protocol, buffered, after_resume

    data, protocol, buffered, after_resume = run(loop_factory, main)
    assert data == payload
    assert buffered > 32768
    assert after_resume == 0  # asyncio resumes once the buffer is empty
    assert protocol.events == [
        "connection_made",
        "pause_writing",
        "resume_writing",
        "connection_lost",
    ]
    assert protocol.exc is None


def test_strided_memoryview_written_at_once_fails_the_pipe(
    loop_factory: Callable[[], Any], fds_unchanged: None
) -> None:
    """asyncio hands a non-contiguous memoryview to os.write(), which refuses
    it: write() returns, the exception handler hears of it and the transport
    closes with the BufferError."""

    async def main() -> tuple[list[str], str, list[str]]:
        loop = asyncio.get_running_loop()
        reports: list[str] = []
        loop.set_exception_handler(lambda _loop, context: reports.append(context["message"]))
        rfile, wfile = pipe_files()
        transport, protocol = await loop.connect_write_pipe(WriteRecorder, wfile)
        transport.write(memoryview(b"a-b-c-")[::2])
        await asyncio.wait_for(protocol.done, 5)
        rfile.close()
        return reports, type(protocol.exc).__name__, protocol.events

    assert run(loop_factory, main) == (
        ["Fatal write error on pipe transport"],
        "BufferError",
        ["connection_made", "connection_lost"],
    )


def test_strided_memoryview_behind_queued_data_is_refused(
    loop_factory: Callable[[], Any], fds_unchanged: None
) -> None:
    """Behind queued data, asyncio's bytearray buffer refuses a
    non-contiguous memoryview with TypeError; the pipe goes on."""

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        rfile, wfile = pipe_files()
        transport, protocol = await loop.connect_write_pipe(WriteRecorder, wfile)
        payload = b"p" * (4 * MIB)
        transport.write(payload)
        assert transport.get_write_buffer_size() > 0
        with pytest.raises(TypeError):
            transport.write(memoryview(b"a-b-c-")[::2])
        transport.write(b"!")
        reader = asyncio.ensure_future(drain_fd(rfile.fileno(), len(payload) + 1))
        transport.close()
        await protocol.done
        data = await reader
        rfile.close()
        assert protocol.exc is None
        return data[len(payload) :]

    assert run(loop_factory, main) == b"!"


def test_set_write_buffer_limits(loop_factory: Callable[[], Any], fds_unchanged: None) -> None:
    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        rfile, wfile = pipe_files()
        transport, protocol = await loop.connect_write_pipe(WriteRecorder, wfile)
        results: list[Any] = []
        for kwargs in ({"high": 100}, {"low": 100}, {"high": 10, "low": 10}, {}):
            transport.set_write_buffer_limits(**kwargs)
            results.append(transport.get_write_buffer_limits())
        for kwargs in ({"high": 1, "low": 2}, {"high": -1}, {"low": -4}):
            with pytest.raises(ValueError, match="must be >="):
                transport.set_write_buffer_limits(**kwargs)
        # Lowering the high-water mark below the buffered size pauses at once.
        os.set_blocking(rfile.fileno(), False)
        transport.write(b"x" * (256 * 1024))
        results.append(protocol.events[-1])
        transport.abort()
        await protocol.done
        rfile.close()
        return results

    assert run(loop_factory, main) == [
        (25, 100),
        (100, 400),
        (10, 10),
        (16384, 65536),
        "pause_writing",
    ]


def test_close_flushes_buffered_data_first(
    loop_factory: Callable[[], Any], fds_unchanged: None
) -> None:
    payload = os.urandom(2 * MIB)

    async def main() -> tuple[bytes, list[str], bool]:
        loop = asyncio.get_running_loop()
        rfile, wfile = pipe_files()
        transport, protocol = await loop.connect_write_pipe(WriteRecorder, wfile)
        transport.write(payload)
        transport.close()
        transport.close()
        await asyncio.sleep(0.02)
        lost_before_reading = protocol.done.done()
        data = await drain_fd(rfile.fileno(), len(payload) + 1)
        await protocol.done
        rfile.close()
        return data, protocol.events, lost_before_reading

    data, events, lost_early = run(loop_factory, main)
    assert data == payload
    assert lost_early is False
    assert events == ["connection_made", "pause_writing", "resume_writing", "connection_lost"]


def test_write_eof_is_close_for_a_pipe(
    loop_factory: Callable[[], Any], fds_unchanged: None
) -> None:
    async def main() -> tuple[bytes, list[str], BaseException | None]:
        loop = asyncio.get_running_loop()
        rfile, wfile = pipe_files()
        transport, protocol = await loop.connect_write_pipe(WriteRecorder, wfile)
        transport.write(b"last words")
        transport.write_eof()
        assert transport.is_closing()
        await protocol.done
        with rfile:
            return rfile.read(), protocol.events, protocol.exc

    assert run(loop_factory, main) == (b"last words", ["connection_made", "connection_lost"], None)


def test_abort_drops_buffered_data(loop_factory: Callable[[], Any], fds_unchanged: None) -> None:
    async def main() -> tuple[int, int, list[str], BaseException | None, bool]:
        loop = asyncio.get_running_loop()
        rfile, wfile = pipe_files()
        transport, protocol = await loop.connect_write_pipe(WriteRecorder, wfile)
        transport.write(b"z" * (4 * MIB))
        transport.abort()
        size = transport.get_write_buffer_size()
        transport.abort()  # connection_lost still comes once
        await protocol.done
        await asyncio.sleep(0.01)
        data = await drain_fd(rfile.fileno(), 4 * MIB + 1)
        rfile.close()
        return size, len(data), protocol.events, protocol.exc, transport.is_closing()

    size, received, events, exc, closing = run(loop_factory, main)
    assert size == 0
    assert received < 4 * MIB
    assert events == ["connection_made", "pause_writing", "connection_lost"]
    assert exc is None
    assert closing is True


def test_writes_after_close_are_dropped_with_a_warning(
    loop_factory: Callable[[], Any], fds_unchanged: None, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        rfile, wfile = pipe_files()
        transport, protocol = await loop.connect_write_pipe(WriteRecorder, wfile)
        transport.write(b"kept")
        transport.close()
        for _ in range(7):
            transport.write(b"dropped")
        await protocol.done
        with rfile:
            return rfile.read()

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        assert run(loop_factory, main) == b"kept"
    warnings = [r for r in caplog.records if "pipe closed by peer" in r.getMessage()]
    assert len(warnings) == 2  # the sixth and seventh refused writes


def test_reader_going_away_with_empty_buffer(
    loop_factory: Callable[[], Any], fds_unchanged: None
) -> None:
    async def main() -> tuple[list[str], BaseException | None, bool]:
        loop = asyncio.get_running_loop()
        rfile, wfile = pipe_files()
        _, protocol = await loop.connect_write_pipe(WriteRecorder, wfile)
        rfile.close()
        await asyncio.wait_for(protocol.done, 5)
        return protocol.events, protocol.exc, wfile.closed

    assert run(loop_factory, main) == (["connection_made", "connection_lost"], None, True)


def test_reader_going_away_with_buffered_data(
    loop_factory: Callable[[], Any], fds_unchanged: None
) -> None:
    async def main() -> tuple[list[str], BaseException | None]:
        loop = asyncio.get_running_loop()
        rfile, wfile = pipe_files()
        transport, protocol = await loop.connect_write_pipe(WriteRecorder, wfile)
        transport.write(b"q" * MIB)
        assert transport.get_write_buffer_size() > 0
        rfile.close()
        await asyncio.wait_for(protocol.done, 5)
        return protocol.events, protocol.exc

    events, exc = run(loop_factory, main)
    assert events == ["connection_made", "pause_writing", "connection_lost"]
    assert isinstance(exc, BrokenPipeError)


def test_write_pipe_on_a_socket(loop_factory: Callable[[], Any], fds_unchanged: None) -> None:
    async def main() -> tuple[bytes, list[str], BaseException | None]:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        transport, protocol = await loop.connect_write_pipe(WriteRecorder, a)
        transport.write(b"to the socket")
        await asyncio.sleep(0.01)
        received = b.recv(100)
        b.close()  # the peer going away closes the write pipe
        await asyncio.wait_for(protocol.done, 5)
        return received, protocol.events, protocol.exc

    assert run(loop_factory, main) == (
        b"to the socket",
        ["connection_made", "connection_lost"],
        None,
    )


def test_write_to_a_character_device(loop_factory: Callable[[], Any], fds_unchanged: None) -> None:
    async def main() -> tuple[list[str], int]:
        loop = asyncio.get_running_loop()
        devnull = unbuffered(os.devnull, "wb")
        transport, protocol = await loop.connect_write_pipe(WriteRecorder, devnull)
        transport.write(b"x" * MIB)
        size = transport.get_write_buffer_size()
        transport.close()
        await protocol.done
        return protocol.events, size

    assert run(loop_factory, main) == (["connection_made", "connection_lost"], 0)


# -- FIFOs -----------------------------------------------------------------------


def test_fifo_both_directions(
    loop_factory: Callable[[], Any], tmp_path: Path, fds_unchanged: None
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    async def main() -> tuple[bytes, list[str], list[str]]:
        loop = asyncio.get_running_loop()
        # Opening the read end non-blocking first lets the write end open at once.
        rfile = unbuffered(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK), "rb")
        wfile = unbuffered(fifo, "wb")
        _, reader = await loop.connect_read_pipe(ReadRecorder, rfile)
        writer_transport, writer = await loop.connect_write_pipe(WriteRecorder, wfile)
        writer_transport.write(b"through the fifo")
        await reader.got_data
        writer_transport.close()
        await asyncio.gather(reader.done, writer.done)
        return bytes(reader.data), reader.events, writer.events

    data, reader_events, writer_events = run(loop_factory, main)
    assert data == b"through the fifo"
    assert reader_events == ["connection_made", "data", "eof_received", "connection_lost"]
    assert writer_events == ["connection_made", "connection_lost"]


def test_fifo_reader_closing_ends_the_write_pipe(
    loop_factory: Callable[[], Any], tmp_path: Path, fds_unchanged: None
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    async def main() -> tuple[list[str], BaseException | None]:
        loop = asyncio.get_running_loop()
        rfd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        wfile = unbuffered(fifo, "wb")
        _, writer = await loop.connect_write_pipe(WriteRecorder, wfile)
        os.close(rfd)
        await asyncio.wait_for(writer.done, 5)
        return writer.events, writer.exc

    assert run(loop_factory, main) == (["connection_made", "connection_lost"], None)


# -- validation ------------------------------------------------------------------


def test_regular_files_are_rejected(
    loop_factory: Callable[[], Any], tmp_path: Path, fds_unchanged: None
) -> None:
    path = tmp_path / "regular"
    path.write_bytes(b"not a pipe")

    with open(path, "rb") as rf, open(path, "ab") as wf:

        async def main() -> list[tuple[type[BaseException], str]]:
            loop = asyncio.get_running_loop()
            errors = []
            for connect, pipe in ((loop.connect_read_pipe, rf), (loop.connect_write_pipe, wf)):
                try:
                    await connect(asyncio.Protocol, pipe)
                except Exception as exc:
                    errors.append((type(exc), str(exc)))
            return errors

        errors = run(loop_factory, main)
        # The file is untouched: still blocking, still open.
        assert os.get_blocking(rf.fileno()) and not rf.closed
    assert errors == [
        (ValueError, "Pipe transport is for pipes/sockets only."),
        (ValueError, "Pipe transport is only for pipes, sockets and character devices"),
    ]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_closed_and_invalid_pipe_objects(loop_factory: Callable[[], Any]) -> None:
    async def main() -> list[type[BaseException]]:
        loop = asyncio.get_running_loop()
        rfile, wfile = pipe_files()
        rfile.close()
        wfile.close()
        errors: list[type[BaseException]] = []
        for connect, pipe in (
            (loop.connect_read_pipe, rfile),
            (loop.connect_write_pipe, wfile),
            (loop.connect_read_pipe, object()),
        ):
            try:
                await connect(asyncio.Protocol, pipe)
            except Exception as exc:
                errors.append(type(exc))
        return errors

    assert run(loop_factory, main) == [ValueError, ValueError, AttributeError]


def test_many_pipes_leave_no_descriptor_behind(
    loop_factory: Callable[[], Any], fds_unchanged: None
) -> None:
    async def main() -> int:
        loop = asyncio.get_running_loop()
        total = 0
        for _ in range(100):
            rfile, wfile = pipe_files()
            _, reader = await loop.connect_read_pipe(ReadRecorder, rfile)
            wtransport, writer = await loop.connect_write_pipe(WriteRecorder, wfile)
            wtransport.write(b"ping")
            wtransport.close()
            await asyncio.gather(reader.done, writer.done)
            total += len(reader.data)
        return total

    assert run(loop_factory, main) == 400
