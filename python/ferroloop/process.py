"""Child processes: `subprocess_exec` and `subprocess_shell`.

The subprocess transport is asyncio's own `BaseSubprocessTransport` (the
protocol glue: `connection_made`, `pipe_data_received`,
`pipe_connection_lost`, `process_exited`, `connection_lost` and `_wait()`,
with asyncio's exact ordering), with two parts supplied by ferroloop:

* the child's stdin/stdout/stderr are ferroloop's native pipe transports
  (`connect_read_pipe` / `connect_write_pipe`);
* the child's exit is detected natively: `_core.ChildWatcher` registers a
  pidfd (Linux 5.3+) with the loop's poller, reaps the child with
  `waitpid(WNOHANG)` when it becomes readable, and reports the return code.
  No thread, no SIGCHLD handler. Where pidfds are unavailable (older
  kernels, seccomp sandboxes), a daemon thread blocked in `waitpid(pid, 0)`
  per child reports back with `call_soon_threadsafe`, as asyncio's
  `ThreadedChildWatcher` does.

The child itself is spawned with `subprocess.Popen`, once per process.
"""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import threading
from asyncio import base_subprocess
from asyncio.log import logger
from collections.abc import Callable
from typing import Any

from . import _core
from .versions import PY312

ProtocolFactory = Callable[[], asyncio.SubprocessProtocol]
ExitCallback = Callable[[int, "int | None"], object]

#: asyncio reports this return code for a child it could not reap itself.
UNKNOWN_RETURNCODE = 255

#: Whether pidfd_open(2) works here; decided by the first child and cached.
_pidfd_available: bool | None = None


def watch_child(loop: Any, pid: int, callback: ExitCallback) -> object:
    """Call `callback(pid, returncode)` on `loop` once child `pid` terminates.

    `returncode` is the exit status, `-signal` for a child killed by a signal,
    or None when the child was reaped by someone else. Returns the watcher.
    """
    global _pidfd_available
    if _pidfd_available is not False:
        try:
            watcher = _core.ChildWatcher.watch(loop, pid, callback)
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                # Already reaped behind our back: report it as unknown.
                loop.call_soon(loop.call_soon, callback, pid, None)
                return None
            if exc.errno in (errno.ENOSYS, errno.EPERM, errno.EACCES):
                _pidfd_available = False
                logger.debug("pidfd_open() unavailable (%s): watching children with threads", exc)
            # Otherwise (e.g. EMFILE) fall back for this child only.
        else:
            _pidfd_available = True
            return watcher
    return _ThreadWatcher(loop, pid, callback)


class _ThreadWatcher:
    """Fallback child watcher: one daemon thread blocked in waitpid()."""

    def __init__(self, loop: Any, pid: int, callback: ExitCallback) -> None:
        self._loop = loop
        self.pid = pid
        self._callback = callback
        self._thread = threading.Thread(
            target=self._run, name=f"ferroloop-waitpid-{pid}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        returncode: int | None
        try:
            _, status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            returncode = None
        else:
            returncode = os.waitstatus_to_exitcode(status)
        try:
            # The extra hop lets pipe data of the same iteration arrive first.
            self._loop.call_soon_threadsafe(
                self._loop.call_soon, self._callback, self.pid, returncode
            )
        except RuntimeError:
            # The loop was closed meanwhile: nobody is waiting any more.
            pass

    def cancel(self) -> None:
        """Threads cannot be cancelled; the result is simply dropped if the loop is gone."""


class SubprocessTransport(base_subprocess.BaseSubprocessTransport):
    """asyncio's subprocess transport over ferroloop pipes and child watching."""

    _watcher: object = None

    def _start(
        self,
        args: Any,
        shell: bool,
        stdin: Any,
        stdout: Any,
        stderr: Any,
        bufsize: int,
        **kwargs: Any,
    ) -> None:
        self._proc = subprocess.Popen(
            args,
            shell=shell,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            universal_newlines=False,
            bufsize=bufsize,
            **kwargs,
        )
        self._watcher = watch_child(self._loop, self._proc.pid, self._child_exited)

    async def _connect_pipes(self, waiter: Any) -> None:
        await super()._connect_pipes(waiter)
        # The pipes Popen made for PIPE are ours: let them grow once they fill
        # (pipe_capacity.rs). Descriptors the caller passed in are left alone.
        for pipe_protocol in self._pipes.values():
            transport = getattr(pipe_protocol, "pipe", None)
            core = getattr(transport, "_core", None)
            if core is not None:
                core._grow_when_full()

    def _child_exited(self, pid: int, returncode: int | None) -> None:
        if self._returncode is not None:
            return
        if returncode is None:
            proc = self._proc
            if proc is not None and proc.returncode is not None:
                # Popen.poll() (e.g. from close()) reaped it and knows the status.
                returncode = proc.returncode
            else:
                logger.warning(
                    "Unknown child process pid %d, will report returncode %d",
                    pid,
                    UNKNOWN_RETURNCODE,
                )
                returncode = UNKNOWN_RETURNCODE
        elif self._loop.get_debug() and not PY312:
            # asyncio 3.11's default child watcher (a thread per child) logs
            # this; from 3.12 its default is a pidfd watcher, which does not.
            logger.debug("process %s exited with returncode %s", pid, returncode)
        self._watcher = None
        self._process_exited(returncode)


class SubprocessMixin:
    """Methods of `ferroloop.EventLoop` implemented in this module."""

    async def subprocess_shell(
        self,
        protocol_factory: ProtocolFactory,
        cmd: str | bytes,
        *,
        stdin: Any = subprocess.PIPE,
        stdout: Any = subprocess.PIPE,
        stderr: Any = subprocess.PIPE,
        universal_newlines: bool = False,
        shell: bool = True,
        bufsize: int = 0,
        encoding: str | None = None,
        errors: str | None = None,
        text: bool | None = None,
        **kwargs: Any,
    ) -> tuple[asyncio.SubprocessTransport, asyncio.SubprocessProtocol]:
        """Run `cmd` through the shell; return (transport, protocol)."""
        if not isinstance(cmd, (bytes, str)):
            raise ValueError("cmd must be a string")
        if universal_newlines:
            raise ValueError("universal_newlines must be False")
        if not shell:
            raise ValueError("shell must be True")
        _check_binary_mode(bufsize, text, encoding, errors)
        protocol = protocol_factory()
        description = None
        if self.get_debug():  # type: ignore[attr-defined]
            description = f"run shell command {cmd!r}"
            _log_subprocess(description, stdin, stdout, stderr)
        transport = await self._make_subprocess_transport(
            protocol, cmd, True, stdin, stdout, stderr, bufsize, **kwargs
        )
        if description is not None:
            logger.info("%s: %r", description, transport)
        return transport, protocol

    async def subprocess_exec(
        self,
        protocol_factory: ProtocolFactory,
        program: Any,
        *args: Any,
        stdin: Any = subprocess.PIPE,
        stdout: Any = subprocess.PIPE,
        stderr: Any = subprocess.PIPE,
        universal_newlines: bool = False,
        shell: bool = False,
        bufsize: int = 0,
        encoding: str | None = None,
        errors: str | None = None,
        text: bool | None = None,
        **kwargs: Any,
    ) -> tuple[asyncio.SubprocessTransport, asyncio.SubprocessProtocol]:
        """Run `program` with `args`; return (transport, protocol)."""
        if universal_newlines:
            raise ValueError("universal_newlines must be False")
        if shell:
            raise ValueError("shell must be False")
        _check_binary_mode(bufsize, text, encoding, errors)
        popen_args = (program, *args)
        protocol = protocol_factory()
        description = None
        if self.get_debug():  # type: ignore[attr-defined]
            # Arguments are not logged: they may be long or hold secrets.
            description = f"execute program {program!r}"
            _log_subprocess(description, stdin, stdout, stderr)
        transport = await self._make_subprocess_transport(
            protocol, popen_args, False, stdin, stdout, stderr, bufsize, **kwargs
        )
        if description is not None:
            logger.info("%s: %r", description, transport)
        return transport, protocol

    async def _make_subprocess_transport(
        self,
        protocol: asyncio.SubprocessProtocol,
        args: Any,
        shell: bool,
        stdin: Any,
        stdout: Any,
        stderr: Any,
        bufsize: int,
        extra: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> SubprocessTransport:
        waiter = self.create_future()  # type: ignore[attr-defined]
        transport = SubprocessTransport(
            self,
            protocol,
            args,
            shell,
            stdin,
            stdout,
            stderr,
            bufsize,
            waiter=waiter,
            extra=extra,
            **kwargs,
        )
        try:
            await waiter
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            transport.close()
            await transport._wait()
            raise
        return transport


def _check_binary_mode(
    bufsize: int, text: bool | None, encoding: str | None, errors: str | None
) -> None:
    if bufsize != 0:
        raise ValueError("bufsize must be 0")
    if text:
        raise ValueError("text must be False")
    if encoding is not None:
        raise ValueError("encoding must be None")
    if errors is not None:
        raise ValueError("errors must be None")


def _describe_stdio(value: Any) -> str:
    if value == subprocess.PIPE:
        return "<pipe>"
    if value == subprocess.STDOUT:
        return "<stdout>"
    return repr(value)


def _log_subprocess(message: str, stdin: Any, stdout: Any, stderr: Any) -> None:
    info = [message]
    if stdin is not None:
        info.append(f"stdin={_describe_stdio(stdin)}")
    if stdout is not None and stderr == subprocess.STDOUT:
        info.append(f"stdout=stderr={_describe_stdio(stdout)}")
    else:
        if stdout is not None:
            info.append(f"stdout={_describe_stdio(stdout)}")
        if stderr is not None:
            info.append(f"stderr={_describe_stdio(stderr)}")
    logger.debug(" ".join(info))
