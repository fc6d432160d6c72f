"""Subprocesses: `subprocess_exec`/`subprocess_shell` and `asyncio.create_subprocess_*`.

Every test runs on asyncio's own loop (the oracle) and on ferroloop; both must
pass. Tests only meaningful for ferroloop's internals (pidfd watching, the
thread fallback) say so explicitly.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers_net import asyncio_log
from loop_helpers import only_ferroloop, run

PIPE = asyncio.subprocess.PIPE
DEVNULL = asyncio.subprocess.DEVNULL
STDOUT = asyncio.subprocess.STDOUT

PY = sys.executable
FIFTY_MIB = 50 * 1024 * 1024


def open_fds() -> set[int]:
    """The descriptors this process has open right now."""
    return {int(name) for name in os.listdir("/proc/self/fd")}


def stable_open_fds() -> set[int]:
    """`open_fds()` minus the descriptor listdir itself used."""
    first = open_fds()
    second = open_fds()
    return first & second


def is_our_zombie(pid: int) -> bool:
    """True if `pid` is an unreaped child of this process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state, ppid = fields[0], int(fields[1])
    return ppid == os.getpid() and state == "Z"


def assert_reaped(pid: int) -> None:
    """The child `pid` is gone: not waitable and not a zombie of ours."""
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    assert not is_our_zombie(pid)


class RecordingProtocol(asyncio.SubprocessProtocol):
    """Records every callback, in order, with its arguments."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.data: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}
        self.transport: asyncio.SubprocessTransport | None = None
        self.done = loop.create_future()
        self.exited = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.SubprocessTransport)
        self.transport = transport
        self.events.append(("connection_made",))

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        assert isinstance(data, bytes)
        self.data[fd] += data
        if not self.events or self.events[-1] != ("data", fd):
            self.events.append(("data", fd))

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self.events.append(("pipe_connection_lost", fd, exc))

    def process_exited(self) -> None:
        assert self.transport is not None
        self.events.append(("process_exited", self.transport.get_returncode()))
        self.exited.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append(("connection_lost", exc))
        self.done.set_result(None)


# -- streams API: create_subprocess_exec/shell, Process ---------------------------


def test_echo_through_stdin_and_stdout(loop_factory: Callable[[], Any]) -> None:
    async def main() -> tuple[list[bytes], int]:
        proc = await asyncio.create_subprocess_exec("cat", stdin=PIPE, stdout=PIPE)
        assert proc.stdin is not None and proc.stdout is not None
        lines = []
        for word in (b"alpha", b"beta", b"gamma"):
            proc.stdin.write(word + b"\n")
            await proc.stdin.drain()
            lines.append(await proc.stdout.readline())
        proc.stdin.close()
        assert await proc.stdout.read() == b""
        return lines, await proc.wait()

    lines, code = run(loop_factory, main)
    assert lines == [b"alpha\n", b"beta\n", b"gamma\n"]
    assert code == 0


def test_communicate_with_input(loop_factory: Callable[[], Any]) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB: more than a pipe holds

    async def main() -> tuple[bytes, bytes, int]:
        proc = await asyncio.create_subprocess_exec(
            PY,
            "-c",
            "import sys; d = sys.stdin.buffer.read(); "
            "sys.stdout.buffer.write(d[::-1]); sys.stderr.write(str(len(d)))",
            stdin=PIPE,
            stdout=PIPE,
            stderr=PIPE,
        )
        out, err = await proc.communicate(payload)
        return out, err, proc.returncode

    out, err, code = run(loop_factory, main)
    assert out == payload[::-1]
    assert err == str(len(payload)).encode()
    assert code == 0


def test_shell_exit_status_and_both_streams(loop_factory: Callable[[], Any]) -> None:
    async def main() -> tuple[bytes, bytes, int | None]:
        proc = await asyncio.create_subprocess_shell(
            "echo out; echo err >&2; exit 7", stdout=PIPE, stderr=PIPE
        )
        out, err = await proc.communicate()
        return out, err, proc.returncode

    assert run(loop_factory, main) == (b"out\n", b"err\n", 7)


def test_stderr_to_stdout(loop_factory: Callable[[], Any]) -> None:
    async def main() -> tuple[bytes, Any, int | None]:
        proc = await asyncio.create_subprocess_shell(
            "echo one; echo two >&2; echo three", stdout=PIPE, stderr=STDOUT
        )
        out, _ = await proc.communicate()
        return out, proc.stderr, proc.returncode

    out, stderr, code = run(loop_factory, main)
    assert out == b"one\ntwo\nthree\n"
    assert stderr is None
    assert code == 0


def test_devnull(loop_factory: Callable[[], Any]) -> None:
    async def main() -> tuple[Any, Any, bytes, int]:
        # cat reads an empty stdin and exits; its output is discarded.
        proc = await asyncio.create_subprocess_exec(
            "cat", stdin=DEVNULL, stdout=DEVNULL, stderr=DEVNULL
        )
        code = await proc.wait()
        probe = await asyncio.create_subprocess_exec(
            PY, "-c", "import sys; print(repr(sys.stdin.read()))", stdin=DEVNULL, stdout=PIPE
        )
        out, _ = await probe.communicate()
        return proc.stdin, proc.stdout, out, code

    stdin, stdout, out, code = run(loop_factory, main)
    assert stdin is None and stdout is None
    assert out == b"''\n"
    assert code == 0


def test_inherited_stdio_fds(loop_factory: Callable[[], Any], tmp_path: Path) -> None:
    target = tmp_path / "out.txt"

    with open(target, "wb") as f:

        async def main() -> int:
            proc = await asyncio.create_subprocess_exec(
                "sh", "-c", "echo to-file; echo err-to-file >&2", stdout=f, stderr=f.fileno()
            )
            return await proc.wait()

        assert run(loop_factory, main) == 0
    assert target.read_bytes() == b"to-file\nerr-to-file\n"


def test_cwd_and_env(loop_factory: Callable[[], Any], tmp_path: Path) -> None:
    async def main() -> bytes:
        proc = await asyncio.create_subprocess_exec(
            "sh",
            "-c",
            'pwd; echo "$FERRO_VAR"; echo "${HOME-unset}"',
            stdout=PIPE,
            cwd=tmp_path,
            env={"FERRO_VAR": "from-env", "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )
        out, _ = await proc.communicate()
        return out

    out = run(loop_factory, main)
    assert out.decode().splitlines() == [str(tmp_path.resolve()), "from-env", "unset"]


def test_start_new_session(loop_factory: Callable[[], Any]) -> None:
    script = "import os; print(os.getsid(0), os.getpgid(0), os.getpid())"

    async def main() -> tuple[bytes, bytes]:
        same = await asyncio.create_subprocess_exec(PY, "-c", script, stdout=PIPE)
        new = await asyncio.create_subprocess_exec(
            PY, "-c", script, stdout=PIPE, start_new_session=True
        )
        return (await same.communicate())[0], (await new.communicate())[0]

    same, new = run(loop_factory, main)
    sid, _, _ = map(int, same.split())
    assert sid == os.getsid(0)
    new_sid, new_pgid, new_pid = map(int, new.split())
    assert new_sid == new_pgid == new_pid != os.getsid(0)


def test_pass_fds(loop_factory: Callable[[], Any]) -> None:
    async def main() -> tuple[bytes, bytes, int]:
        r, w = os.pipe()
        try:
            script = "import os, sys; os.write(int(sys.argv[1]), b'via-passed-fd')"
            proc = await asyncio.create_subprocess_exec(PY, "-c", script, str(w), pass_fds=(w,))
            code = await proc.wait()
            os.close(w)
            w = -1
            passed = os.read(r, 100)
            # Without pass_fds the descriptor is closed in the child.
            proc = await asyncio.create_subprocess_exec(PY, "-c", script, str(r), stderr=PIPE)
            _, err = await proc.communicate()
            return passed, err, code
        finally:
            os.close(r)
            if w >= 0:
                os.close(w)

    passed, err, code = run(loop_factory, main)
    assert passed == b"via-passed-fd"
    assert code == 0
    assert b"Bad file descriptor" in err


def test_fifty_mib_of_stdout(loop_factory: Callable[[], Any]) -> None:
    async def main() -> tuple[int, int]:
        proc = await asyncio.create_subprocess_exec(
            "head", "-c", str(FIFTY_MIB), "/dev/zero", stdout=PIPE
        )
        assert proc.stdout is not None
        total = 0
        while chunk := await proc.stdout.read(1 << 20):
            total += len(chunk)
        return total, await proc.wait()

    assert run(loop_factory, main) == (FIFTY_MIB, 0)


def test_fifty_mib_through_protocol(loop_factory: Callable[[], Any]) -> None:
    class Counter(asyncio.SubprocessProtocol):
        def __init__(self, done: asyncio.Future[None]) -> None:
            self.count = 0
            self.done = done

        def pipe_data_received(self, fd: int, data: bytes | str) -> None:
            self.count += len(data)

        def connection_lost(self, exc: Exception | None) -> None:
            self.done.set_result(None)

    async def main() -> tuple[int, int | None]:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        transport, protocol = await loop.subprocess_exec(
            lambda: Counter(done),
            "head",
            "-c",
            str(FIFTY_MIB),
            "/dev/zero",
            stdin=DEVNULL,
            stderr=DEVNULL,
        )
        await done
        transport.close()
        return protocol.count, transport.get_returncode()

    assert run(loop_factory, main) == (FIFTY_MIB, 0)


def patterned(size: int) -> bytes:
    """`size` bytes that no shifted or reordered copy of themselves matches."""
    block = bytes(range(251)) * 4099
    return (block * (size // len(block) + 1))[:size]


#: A `cat` that moves data in 1 MiB pieces, as bulk tools (dd, tar) do.
BULK_CAT = (
    "import sys\n"
    "while chunk := sys.stdin.buffer.read1(1 << 20):\n"
    "    sys.stdout.buffer.write(chunk)\n"
)


def test_bulk_data_both_ways_through_a_child(loop_factory: Callable[[], Any]) -> None:
    """16 MiB through a child writing and reading 1 MiB at a time: whole and in order."""
    data = patterned(16 << 20)

    async def main() -> tuple[bytes, int]:
        proc = await asyncio.create_subprocess_exec(PY, "-c", BULK_CAT, stdin=PIPE, stdout=PIPE)
        assert proc.stdin is not None and proc.stdout is not None

        async def feed() -> None:
            assert proc.stdin is not None
            for start in range(0, len(data), 3 << 20):
                proc.stdin.write(data[start : start + (3 << 20)])
                await proc.stdin.drain()
            proc.stdin.close()

        feeding = asyncio.ensure_future(feed())
        received = bytearray()
        while chunk := await proc.stdout.read(1 << 20):
            received += chunk
        await feeding
        return bytes(received), await proc.wait()

    received, code = run(loop_factory, main)
    assert code == 0
    assert len(received) == len(data)
    assert received == data


def pipe_capacity(fd: int) -> int:
    return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)


def default_pipe_capacity() -> int:
    read_end, write_end = os.pipe()
    try:
        return pipe_capacity(read_end)
    finally:
        os.close(read_end)
        os.close(write_end)


def pipe_max_size() -> int:
    with open("/proc/sys/fs/pipe-max-size") as limit:
        return int(limit.read())


def stdio_pipe_capacities(proc: asyncio.subprocess.Process) -> list[int]:
    """The capacities of a child's stdin and stdout pipes, as the parent sees them."""
    transport = proc._transport  # type: ignore[attr-defined]
    pipes = [transport.get_pipe_transport(fd).get_extra_info("pipe") for fd in (0, 1)]
    return [pipe_capacity(pipe.fileno()) for pipe in pipes]


def test_a_quiet_child_s_pipes_keep_the_default_size(loop_factory: Callable[[], Any]) -> None:
    async def main() -> list[int]:
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", "import sys; sys.stdout.write(sys.stdin.read())", stdin=PIPE, stdout=PIPE
        )
        assert proc.stdin is not None
        proc.stdin.write(b"a few bytes")
        await proc.stdin.drain()
        sizes = stdio_pipe_capacities(proc)
        proc.stdin.close()
        assert (await proc.communicate())[0] == b"a few bytes"
        return sizes

    default = default_pipe_capacity()
    assert run(loop_factory, main) == [default, default]


def test_pipes_the_caller_passes_in_keep_their_size(loop_factory: Callable[[], Any]) -> None:
    data = patterned(4 << 20)

    async def main() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        read_end, write_end = os.pipe()
        # A child writing into the caller's own pipe, which the caller then
        # connects itself: not the loop's to resize.
        proc = await asyncio.create_subprocess_exec(
            PY, "-c", BULK_CAT, stdin=PIPE, stdout=write_end
        )
        os.close(write_end)
        reader = asyncio.StreamReader()
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_end, "rb")
        )
        assert proc.stdin is not None
        echoed = asyncio.ensure_future(reader.readexactly(len(data)))
        proc.stdin.write(data)
        await proc.stdin.drain()
        assert await echoed == data
        size = pipe_capacity(read_end)
        proc.stdin.close()
        assert await reader.read() == b""
        transport.close()
        return size, await proc.wait()

    assert run(loop_factory, main) == (default_pipe_capacity(), 0)


def test_kill_mid_communicate(loop_factory: Callable[[], Any]) -> None:
    async def main() -> tuple[int | None, bytes]:
        # The child never reads stdin: communicate() blocks writing 8 MiB.
        proc = await asyncio.create_subprocess_exec(
            PY,
            "-c",
            "import sys, time; print('ready', flush=True); time.sleep(60)",
            stdin=PIPE,
            stdout=PIPE,
        )
        assert proc.stdout is not None
        ready = await proc.stdout.readline()
        task = asyncio.ensure_future(proc.communicate(b"x" * (8 << 20)))
        await asyncio.sleep(0.1)
        assert not task.done()
        proc.kill()
        out, _ = await asyncio.wait_for(task, 10)
        return proc.returncode, ready + out

    code, out = run(loop_factory, main)
    assert code == -signal.SIGKILL
    assert out == b"ready\n"


def test_wait_on_an_already_exited_child(loop_factory: Callable[[], Any]) -> None:
    async def main() -> tuple[int, int, int, int | None]:
        proc = await asyncio.create_subprocess_exec("sh", "-c", "exit 3")
        # Let it exit, be reaped and reported long before anyone waits.
        await asyncio.sleep(0.5)
        first = await proc.wait()
        second = await proc.wait()
        proc2 = await asyncio.create_subprocess_exec("true")
        await asyncio.sleep(0.3)
        third = await proc2.wait()
        assert_reaped(proc.pid)
        assert_reaped(proc2.pid)
        return first, second, third, proc.returncode

    assert run(loop_factory, main) == (3, 3, 0, 3)


def test_a_thousand_short_lived_children(loop_factory: Callable[[], Any]) -> None:
    pids: list[int] = []

    async def one(stdio: int) -> int:
        proc = await asyncio.create_subprocess_exec("true", stdin=stdio, stdout=stdio, stderr=stdio)
        pids.append(proc.pid)
        await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode

    async def main() -> list[int]:
        codes: list[int] = []
        for batch in range(20):
            stdio = PIPE if batch % 2 == 0 else DEVNULL
            codes += await asyncio.gather(*(one(stdio) for _ in range(50)))
        return codes

    before = stable_open_fds()
    codes = run(loop_factory, main)
    after = stable_open_fds()
    assert codes == [0] * 1000
    assert len(set(pids)) == 1000
    for pid in pids:
        assert_reaped(pid)
    assert after - before == set()


def test_send_signal_and_terminate(loop_factory: Callable[[], Any]) -> None:
    script = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGUSR1, lambda *a: (print('usr1', flush=True)))\n"
        "print('ready', flush=True)\n"
        "while True: time.sleep(0.05)\n"
    )

    async def main() -> tuple[bytes, bytes, int, int]:
        proc = await asyncio.create_subprocess_exec(PY, "-c", script, stdout=PIPE)
        assert proc.stdout is not None
        ready = await proc.stdout.readline()
        proc.send_signal(signal.SIGUSR1)
        usr1 = await proc.stdout.readline()
        proc.terminate()
        terminated = await proc.wait()
        sleeper = await asyncio.create_subprocess_exec("sleep", "60")
        sleeper.send_signal(signal.SIGINT)
        interrupted = await sleeper.wait()
        # The process is gone: signalling it again is refused, as asyncio does.
        with pytest.raises(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with pytest.raises(ProcessLookupError):
            sleeper.kill()
        return ready + usr1, b"", terminated, interrupted

    out, _, terminated, interrupted = run(loop_factory, main)
    assert out == b"ready\nusr1\n"
    assert terminated == -signal.SIGTERM
    assert interrupted == -signal.SIGINT


# -- the protocol/transport API ------------------------------------------------


def test_protocol_callbacks_and_transport_api(loop_factory: Callable[[], Any]) -> None:
    async def main() -> tuple[RecordingProtocol, dict[str, Any]]:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.subprocess_exec(
            lambda: RecordingProtocol(loop),
            "sh",
            "-c",
            'read line; echo "got $line"; echo oops >&2; exit 5',
        )
        seen: dict[str, Any] = {
            "pid_matches": transport.get_pid() == transport.get_extra_info("subprocess").pid,
            "returncode_before": transport.get_returncode(),
            "stdin": transport.get_pipe_transport(0),
            "stdout": transport.get_pipe_transport(1),
            "stderr": transport.get_pipe_transport(2),
            "other": transport.get_pipe_transport(3),
            "closing_before": transport.is_closing(),
        }
        stdin = transport.get_pipe_transport(0)
        stdin.write(b"hello\n")
        await protocol.exited
        await protocol.done
        seen["returncode_after"] = transport.get_returncode()
        transport.close()
        seen["closing_after"] = transport.is_closing()
        return protocol, seen

    protocol, seen = run(loop_factory, main)
    assert seen["pid_matches"]
    assert seen["returncode_before"] is None
    assert isinstance(seen["stdin"], asyncio.WriteTransport)
    assert isinstance(seen["stdout"], asyncio.ReadTransport)
    assert isinstance(seen["stderr"], asyncio.ReadTransport)
    assert seen["other"] is None
    assert seen["closing_before"] is False
    assert seen["returncode_after"] == 5
    assert seen["closing_after"] is True
    assert bytes(protocol.data[1]) == b"got hello\n"
    assert bytes(protocol.data[2]) == b"oops\n"

    events = protocol.events
    assert events[0] == ("connection_made",)
    assert events[-1] == ("connection_lost", None)
    names = [event[0] for event in events]
    assert names.count("process_exited") == 1
    assert ("process_exited", 5) in events
    # stdin's loss is noticed when the child's end closes (the reader trick).
    lost = [event[1] for event in events if event[0] == "pipe_connection_lost"]
    assert sorted(lost) == [0, 1, 2]
    for fd in (1, 2):
        # All of a pipe's data arrives before its pipe_connection_lost.
        assert events.index(("pipe_connection_lost", fd, None)) > events.index(("data", fd))
    # connection_lost comes only after the exit and every pipe's loss.
    assert names.count("connection_lost") == 1


def test_close_kills_a_running_child(loop_factory: Callable[[], Any]) -> None:
    async def main() -> tuple[int | None, list[tuple[Any, ...]], int]:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.subprocess_exec(
            lambda: RecordingProtocol(loop), "sleep", "60"
        )
        pid = transport.get_pid()
        transport.close()
        assert transport.is_closing()
        await asyncio.wait_for(protocol.done, 10)
        return transport.get_returncode(), protocol.events, pid

    code, events, pid = run(loop_factory, main)
    assert code == -signal.SIGKILL
    assert ("process_exited", -signal.SIGKILL) in events
    assert events[-1] == ("connection_lost", None)
    assert_reaped(pid)


def test_exit_reported_after_buffered_output(loop_factory: Callable[[], Any]) -> None:
    """Output written just before exiting reaches the protocol before connection_lost."""

    async def main() -> RecordingProtocol:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.subprocess_exec(
            lambda: RecordingProtocol(loop),
            "sh",
            "-c",
            "head -c 300000 /dev/zero; exit 0",
            stdin=DEVNULL,
            stderr=DEVNULL,
        )
        await protocol.done
        return protocol

    protocol = run(loop_factory, main)
    assert len(protocol.data[1]) == 300000
    names = [event[0] for event in protocol.events]
    assert names[-1] == "connection_lost"
    assert names.index("pipe_connection_lost") < names.index("connection_lost")
    assert names.index("process_exited") < names.index("connection_lost")


def test_stdin_pipe_flow_control(loop_factory: Callable[[], Any]) -> None:
    """Writing more than the high-water mark to a slow child pauses the protocol."""

    async def main() -> tuple[bool, int, bytes]:
        proc = await asyncio.create_subprocess_exec(
            PY,
            "-c",
            "import sys, time; time.sleep(0.3); print(len(sys.stdin.buffer.read()))",
            stdin=PIPE,
            stdout=PIPE,
        )
        assert proc.stdin is not None
        proc.stdin.write(b"y" * (4 << 20))
        stdin_transport = proc.stdin.transport
        buffered = stdin_transport.get_write_buffer_size()
        drain = asyncio.ensure_future(proc.stdin.drain())
        await asyncio.sleep(0.05)
        blocked = not drain.done()
        await drain
        proc.stdin.close()
        out, _ = await proc.communicate()
        return blocked, buffered, out

    blocked, buffered, out = run(loop_factory, main)
    assert blocked
    assert buffered > 0
    assert out == str(4 << 20).encode() + b"\n"


def test_missing_program_and_bad_cwd(loop_factory: Callable[[], Any], tmp_path: Path) -> None:
    async def main() -> list[type[BaseException]]:
        errors: list[type[BaseException]] = []
        for kwargs in (
            {"program": "/nonexistent/ferroloop-test-program"},
            {"program": "true", "cwd": tmp_path / "missing"},
            {"program": str(tmp_path)},
        ):
            program = kwargs.pop("program")
            try:
                await asyncio.create_subprocess_exec(program, **kwargs)
            except BaseException as exc:
                errors.append(type(exc))
        return errors

    before = stable_open_fds()
    errors = run(loop_factory, main)
    assert errors == [FileNotFoundError, FileNotFoundError, PermissionError]
    assert stable_open_fds() - before == set()


BAD_EXEC_ARGUMENTS: list[tuple[tuple[Any, ...], dict[str, Any], type[BaseException], str]] = [
    (("true",), {"universal_newlines": True}, ValueError, "universal_newlines must be False"),
    (("true",), {"shell": True}, ValueError, "shell must be False"),
    (("true",), {"bufsize": 1}, ValueError, "bufsize must be 0"),
    (("true",), {"text": True}, ValueError, "text must be False"),
    (("true",), {"encoding": "utf-8"}, ValueError, "encoding must be None"),
    (("true",), {"errors": "strict"}, ValueError, "errors must be None"),
    ((42,), {}, TypeError, ""),
    (("echo", 42), {}, TypeError, ""),
    (("echo", None), {}, TypeError, ""),
    (("true",), {"no_such_popen_argument": 1}, TypeError, "no_such_popen_argument"),
]


@pytest.mark.parametrize(("args", "kwargs", "error", "message"), BAD_EXEC_ARGUMENTS)
def test_subprocess_exec_bad_arguments(
    loop_factory: Callable[[], Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    error: type[BaseException],
    message: str,
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with pytest.raises(error, match=message or None):
            await loop.subprocess_exec(asyncio.SubprocessProtocol, *args, **kwargs)

    run(loop_factory, main)


BAD_SHELL_ARGUMENTS: list[tuple[Any, dict[str, Any], type[BaseException], str]] = [
    (["echo", "hi"], {}, ValueError, "cmd must be a string"),
    (42, {}, ValueError, "cmd must be a string"),
    ("true", {"universal_newlines": True}, ValueError, "universal_newlines must be False"),
    ("true", {"shell": False}, ValueError, "shell must be True"),
    ("true", {"bufsize": 4096}, ValueError, "bufsize must be 0"),
    ("true", {"text": True}, ValueError, "text must be False"),
    ("true", {"encoding": "utf-8"}, ValueError, "encoding must be None"),
    ("true", {"errors": "replace"}, ValueError, "errors must be None"),
]


@pytest.mark.parametrize(("cmd", "kwargs", "error", "message"), BAD_SHELL_ARGUMENTS)
def test_subprocess_shell_bad_arguments(
    loop_factory: Callable[[], Any],
    cmd: Any,
    kwargs: dict[str, Any],
    error: type[BaseException],
    message: str,
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with pytest.raises(error, match=message or None):
            await loop.subprocess_shell(asyncio.SubprocessProtocol, cmd, **kwargs)

    run(loop_factory, main)


def test_pipes_are_the_loops_own_transports(
    loop_factory: Callable[[], Any], loop_name: str
) -> None:
    async def main() -> list[str]:
        proc = await asyncio.create_subprocess_exec("cat", stdin=PIPE, stdout=PIPE, stderr=PIPE)
        transport = proc._transport  # type: ignore[attr-defined]
        names = [type(transport.get_pipe_transport(fd)).__module__ for fd in (0, 1, 2)]
        await proc.communicate(b"")
        return names

    modules = run(loop_factory, main)
    expected = "ferroloop.pipes" if loop_name == "ferroloop" else "asyncio.unix_events"
    assert modules == [expected] * 3


# -- ferroloop internals ---------------------------------------------------------


def test_exit_watching_uses_no_thread(loop_factory: Callable[[], Any], loop_name: str) -> None:
    only_ferroloop(loop_name, "asyncio 3.11 watches children with a thread each")
    from ferroloop import _core

    async def main() -> tuple[int, int, int, Any]:
        before = threading.active_count()
        procs = [await asyncio.create_subprocess_exec("sleep", "0.3") for _ in range(10)]
        during = threading.active_count()
        watcher = procs[0]._transport._watcher  # type: ignore[attr-defined]
        codes = await asyncio.gather(*(proc.wait() for proc in procs))
        assert codes == [0] * 10
        return before, during, threading.active_count(), watcher

    before, during, after, watcher = run(loop_factory, main)
    assert before == during == after
    assert isinstance(watcher, _core.ChildWatcher)


def test_a_bulky_child_s_pipes_grow_once_they_fill(
    loop_factory: Callable[[], Any], loop_name: str
) -> None:
    only_ferroloop(loop_name, "growing a child's pipes is ferroloop's (asyncio keeps the default)")
    if os.geteuid() != 0 and pipe_max_size() < 512 * 1024:
        pytest.skip("this system caps unprivileged pipes below 512 KiB")
    data = patterned(4 << 20)

    async def main() -> list[int]:
        proc = await asyncio.create_subprocess_exec(PY, "-c", BULK_CAT, stdin=PIPE, stdout=PIPE)
        assert proc.stdin is not None and proc.stdout is not None
        echoed = asyncio.ensure_future(proc.stdout.readexactly(len(data)))
        proc.stdin.write(data)
        await proc.stdin.drain()
        assert await echoed == data
        # Both pipes are still open: the child waits for more input.
        sizes = stdio_pipe_capacities(proc)
        proc.stdin.close()
        assert await proc.wait() == 0
        return sizes

    assert run(loop_factory, main) == [512 * 1024, 512 * 1024]


def test_thread_fallback_without_pidfd(
    loop_factory: Callable[[], Any], loop_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    only_ferroloop(loop_name, "exercises ferroloop's fallback child watcher")
    from ferroloop import process

    monkeypatch.setattr(process, "_pidfd_available", False)

    async def main() -> tuple[bytes, int | None, int, type]:
        proc = await asyncio.create_subprocess_exec(
            "sh", "-c", "echo fallback; exit 4", stdout=PIPE
        )
        out, _ = await proc.communicate()
        killed = await asyncio.create_subprocess_exec("sleep", "60")
        watcher_type = type(killed._transport._watcher)  # type: ignore[attr-defined]
        killed.kill()
        return out, proc.returncode, await killed.wait(), watcher_type

    out, code, killed, watcher_type = run(loop_factory, main)
    assert (out, code, killed) == (b"fallback\n", 4, -signal.SIGKILL)
    assert watcher_type is process._ThreadWatcher


def test_child_reaped_by_popen_poll_reports_its_status(
    loop_factory: Callable[[], Any], loop_name: str
) -> None:
    only_ferroloop(loop_name, "asyncio's threaded watcher would race with poll()")

    async def main() -> int | None:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.subprocess_exec(
            lambda: RecordingProtocol(loop),
            "sh",
            "-c",
            "exit 9",
            stdin=DEVNULL,
            stdout=DEVNULL,
            stderr=DEVNULL,
        )
        popen = transport.get_extra_info("subprocess")
        # Reap it behind the watcher's back, before the loop sees the pidfd.
        for _ in range(2000):
            if popen.poll() is not None:
                break
            time.sleep(0.005)
        await asyncio.wait_for(protocol.done, 10)
        return transport.get_returncode()

    assert run(loop_factory, main) == 9


def test_subprocess_pipe_objects_are_closed(loop_factory: Callable[[], Any]) -> None:
    async def main() -> list[bool]:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.subprocess_exec(lambda: RecordingProtocol(loop), "cat")
        popen = transport.get_extra_info("subprocess")
        transport.get_pipe_transport(0).close()
        await protocol.done
        transport.close()
        await asyncio.sleep(0)
        return [pipe.closed for pipe in (popen.stdin, popen.stdout, popen.stderr)]

    assert run(loop_factory, main) == [True, True, True]


@pytest.mark.parametrize("stdio", [subprocess.PIPE, subprocess.DEVNULL])
def test_no_fd_left_after_transport_close(loop_factory: Callable[[], Any], stdio: int) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        for _ in range(20):
            transport, protocol = await loop.subprocess_exec(
                lambda: RecordingProtocol(loop),
                "sleep",
                "60",
                stdin=stdio,
                stdout=stdio,
                stderr=stdio,
            )
            transport.close()
            await protocol.done

    before = stable_open_fds()
    run(loop_factory, main)
    assert stable_open_fds() - before == set()


@pytest.mark.skipif(sys.version_info >= (3, 14), reason="child watchers are gone in 3.14")
def test_policy_child_watcher_get_set(loop_name: str) -> None:
    """The legacy policy's child-watcher accessors behave like asyncio's: a watcher
    by default, replaceable (the old one is closed), deprecated from 3.12."""
    import warnings

    import ferroloop

    policy_type = ferroloop.EventLoopPolicy if loop_name == "ferroloop" else None
    policy = policy_type() if policy_type else asyncio.DefaultEventLoopPolicy()
    expected_warning = DeprecationWarning if sys.version_info >= (3, 12) else None

    def call(method: Callable[..., Any], *args: Any) -> Any:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = method(*args)
        kinds = {w.category for w in caught}
        assert kinds == ({expected_warning} if expected_warning else set()), caught
        return result

    assert isinstance(call(policy.get_child_watcher), asyncio.AbstractChildWatcher)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        mine = asyncio.PidfdChildWatcher()
    call(policy.set_child_watcher, mine)
    assert call(policy.get_child_watcher) is mine
    call(policy.set_child_watcher, None)


def test_debug_mode_logs_a_child_s_exit(loop_factory: Any) -> None:
    async def main() -> list[int]:
        pids = []
        for command in ("exit 0", "exit 3"):
            proc = await asyncio.create_subprocess_shell(command)
            await proc.wait()
            pids.append(proc.pid)
        return pids

    with asyncio_log() as records:
        pids = run(loop_factory, main, debug=True)
    exits = [message for _, message in records if "exited with returncode" in message]
    # asyncio's default child watcher logs it up to 3.11 (from 3.12 a pidfd
    # watcher, which does not).
    assert exits == (
        [
            f"process {pids[0]} exited with returncode 0",
            f"process {pids[1]} exited with returncode 3",
        ]
        if sys.version_info < (3, 12)
        else []
    )
