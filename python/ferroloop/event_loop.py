"""The ferroloop event loop: the Rust core plus asyncio's once-per-loop API.

The native base class (`ferroloop._core.Loop`) owns everything that runs per
callback: the ready queue, timers, the epoll poller, handles and the iteration
itself. This module adds what runs once per loop or per call site: futures and
tasks, the executor, async-generator bookkeeping, exception handling, signal
handler registration and argument normalisation.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import errno
import signal
import sys
import threading
import traceback
import warnings
import weakref
from asyncio import constants, coroutines, events, futures, tasks
from asyncio.log import logger
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from . import _core, dns
from .connections import ConnectionsMixin
from .datagram import DatagramMixin
from .executor import can_submit_directly, submit_to_thread_pool
from .fileobj import fileobj_to_fd
from .pipes import PipesMixin
from .process import SubprocessMixin
from .sockets import SocketOpsMixin
from .tls import TlsMixin
from .versions import keywords_since

_T = TypeVar("_T")

#: From 3.12 a custom exception handler runs in the context of the task or
#: callback that failed.
_HANDLER_IN_ITS_CONTEXT = sys.version_info >= (3, 12)

# How create_task talks to a task factory changed within 3.13 (gh-128307,
# gh-133745): up to 3.13.2 it takes no extra keyword arguments, calls the
# factory with `context` only and names the task afterwards; 3.13.3 passed
# everything on, 3.13.4 went back to naming afterwards while passing other
# keyword arguments; 3.14 passes everything on.
_CREATE_TASK_TAKES_KWARGS = sys.version_info >= (3, 13, 3)
_TASK_FACTORY_TAKES_NAME = sys.version_info >= (3, 14) or sys.version_info[:3] == (3, 13, 3)

ExceptionHandler = Callable[[asyncio.AbstractEventLoop, dict[str, Any]], object]


def _signal_noop(signum: int, frame: object) -> None:
    """Python-level handler for signals the loop dispatches itself."""


class EventLoop(  # type: ignore[misc]
    _core.Loop,
    SocketOpsMixin,
    ConnectionsMixin,
    TlsMixin,
    DatagramMixin,
    PipesMixin,
    SubprocessMixin,
    asyncio.AbstractEventLoop,
):
    """An asyncio event loop whose core runs in Rust.

    Use it like any asyncio loop: `asyncio.Runner(loop_factory=ferroloop.new_event_loop)`,
    `ferroloop.run(main())`, or `ferroloop.install()` for the policy-based API.
    """

    # The loop's own state lives in slots, so that its instance __dict__ is
    # empty after __init__ and can be freed (see Loop._release_empty_dict):
    # C code (asyncio's Future and Task) looks every loop method up with
    # _PyObject_GetMethod, which searches an existing instance dict first.
    # Other attributes (a test patching a method, say) still go to a
    # __dict__, made again on first use.
    __slots__ = (
        "_asyncgens",
        "_asyncgens_shutdown_called",
        "_coroutine_origin_tracking_enabled",
        "_coroutine_origin_tracking_saved_depth",
        "_default_executor",
        "_dns_resolver",
        "_exception_handler",
        "_executor_shutdown_called",
        "_reader_files",
        "_signal_handlers",
        "_sock_ops_core",
        "_writer_files",
        "slow_callback_duration",
    )

    def __init__(self) -> None:
        self._sock_ops_core = None
        self._default_executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._executor_shutdown_called = False
        self._dns_resolver: _core.Resolver | None = None
        self._exception_handler: ExceptionHandler | None = None
        self._asyncgens: weakref.WeakSet[Any] = weakref.WeakSet()
        self._asyncgens_shutdown_called = False
        self._coroutine_origin_tracking_enabled = False
        self._coroutine_origin_tracking_saved_depth: int | None = None
        self._signal_handlers: dict[int, tuple[Callable[..., object], tuple[Any, ...]]] = {}
        # The file objects (not plain descriptors) given to add_reader/add_writer,
        # by descriptor: removing one still works after the object was closed.
        self._reader_files: dict[int, Any] = {}
        self._writer_files: dict[int, Any] = {}
        self.slow_callback_duration = 0.1
        self.set_debug(coroutines._is_debug_mode())
        self._release_empty_dict()

    def __repr__(self) -> str:
        return (
            f"<{self.__class__.__name__} running={self.is_running()} "
            f"closed={self.is_closed()} debug={self.get_debug()}>"
        )

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        if not self.is_closed():
            _warn(f"unclosed event loop {self!r}", ResourceWarning, source=self)
            if not self.is_running():
                self.close()

    @property
    def _closed(self) -> bool:
        """asyncio's private closed flag: code written against its loops (and
        uvloop's, which has it too) reads it instead of `is_closed()`."""
        return self.is_closed()

    # -- running and stopping ------------------------------------------------

    def run_until_complete(self, future: Any) -> Any:
        """Run until `future` (a future, task or coroutine) is done; return its result."""
        self._check_closed()
        if self.is_running():
            raise RuntimeError("This event loop is already running")
        if events._get_running_loop() is not None:
            raise RuntimeError("Cannot run the event loop while another loop is running")
        new_task = not futures.isfuture(future)
        future = tasks.ensure_future(future, loop=self)
        if new_task:
            # An exception raised by a task we created is reported to the caller;
            # do not also log "exception was never retrieved".
            future._log_destroy_pending = False
        future.add_done_callback(_stop_loop_when_done)
        try:
            self.run_forever()
        except BaseException:
            if new_task and future.done() and not future.cancelled():
                future.exception()
            raise
        finally:
            future.remove_done_callback(_stop_loop_when_done)
        if not future.done():
            raise RuntimeError("Event loop stopped before Future completed.")
        return future.result()

    def close(self) -> None:
        """Close the loop: drop pending callbacks, shut the default executor down."""
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self.is_closed():
            return
        if self.get_debug():
            logger.debug("Close %r", self)
        if sys.is_finalizing():
            if self._signal_handlers:
                warnings.warn(
                    f"Closing the loop {self!r} on interpreter shutdown "
                    f"stage, skipping signal handlers removal",
                    ResourceWarning,
                    source=self,
                    stacklevel=2,
                )
                self._signal_handlers.clear()
        else:
            for sig in list(self._signal_handlers):
                self.remove_signal_handler(sig)
        resolver, self._dns_resolver = self._dns_resolver, None
        if resolver is not None:
            resolver.close()
        self._close_core()
        self._reader_files.clear()
        self._writer_files.clear()
        self._executor_shutdown_called = True
        executor = self._default_executor
        if executor is not None:
            self._default_executor = None
            executor.shutdown(wait=False)

    def _check_closed(self) -> None:
        if self.is_closed():
            raise RuntimeError("Event loop is closed")

    def set_debug(self, enabled: bool) -> None:
        """Enable or disable debug mode (slow-callback warnings, origin tracking)."""
        self._set_debug_flag(bool(enabled))
        if self.is_running():
            self.call_soon_threadsafe(self._set_coroutine_origin_tracking, bool(enabled))

    def _set_coroutine_origin_tracking(self, enabled: bool) -> None:
        if bool(enabled) == bool(self._coroutine_origin_tracking_enabled):
            return
        if enabled:
            self._coroutine_origin_tracking_saved_depth = sys.get_coroutine_origin_tracking_depth()
            sys.set_coroutine_origin_tracking_depth(constants.DEBUG_STACK_DEPTH)
        else:
            saved_depth = self._coroutine_origin_tracking_saved_depth or 0
            sys.set_coroutine_origin_tracking_depth(saved_depth)
        self._coroutine_origin_tracking_enabled = enabled

    # -- futures and tasks ---------------------------------------------------

    def _create_task_slow(
        self,
        coro: Coroutine[Any, Any, Any],
        name: str | None,
        context: contextvars.Context | None,
        kwargs: dict[str, Any],
    ) -> asyncio.Task[Any]:
        """`create_task` with a task factory or extra keyword arguments."""
        if kwargs and not _CREATE_TASK_TAKES_KWARGS:
            raise TypeError(
                f"create_task() got an unexpected keyword argument {next(iter(kwargs))!r}"
            )
        factory = self.get_task_factory()
        if factory is None:
            return tasks.Task(coro, loop=self, name=name, context=context, **kwargs)
        if context is not None:
            kwargs["context"] = context
        if _TASK_FACTORY_TAKES_NAME:
            if name is not None:
                kwargs["name"] = name
            return factory(self, coro, **kwargs)
        task = factory(self, coro, **kwargs)
        if name is not None:
            try:
                task.set_name(name)
            except AttributeError:
                pass
        return task

    # -- async generators ----------------------------------------------------

    def _asyncgen_finalizer_hook(self, agen: Any) -> None:
        self._asyncgens.discard(agen)
        if not self.is_closed():
            self.call_soon_threadsafe(self.create_task, agen.aclose())

    def _asyncgen_firstiter_hook(self, agen: Any) -> None:
        if self._asyncgens_shutdown_called:
            warnings.warn(
                f"asynchronous generator {agen!r} was scheduled after "
                f"loop.shutdown_asyncgens() call",
                ResourceWarning,
                source=self,
                stacklevel=2,
            )
        self._asyncgens.add(agen)

    async def shutdown_asyncgens(self) -> None:
        """Close every async generator still open on this loop."""
        self._asyncgens_shutdown_called = True
        if not self._asyncgens:
            return
        closing = list(self._asyncgens)
        self._asyncgens.clear()
        results = await tasks.gather(*[agen.aclose() for agen in closing], return_exceptions=True)
        for result, agen in zip(results, closing, strict=True):
            if isinstance(result, Exception):
                self.call_exception_handler(
                    {
                        "message": f"an error occurred during closing of "
                        f"asynchronous generator {agen!r}",
                        "exception": result,
                        "asyncgen": agen,
                    }
                )

    # -- executor ------------------------------------------------------------

    def run_in_executor(
        self, executor: concurrent.futures.Executor | None, func: Callable[..., _T], *args: Any
    ) -> asyncio.Future[_T]:
        """Run `func(*args)` in `executor` (default: a thread pool) and await its result."""
        self._check_closed()
        if self.get_debug():
            _check_callback(func, "run_in_executor")
        if executor is None:
            executor = self._default_executor
            if self._executor_shutdown_called:
                raise RuntimeError("Executor shutdown has been called")
            if executor is None:
                executor = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="asyncio")
                self._default_executor = executor
        if can_submit_directly(executor):
            return submit_to_thread_pool(self, executor, func, args)
        return futures.wrap_future(executor.submit(func, *args), loop=self)

    def set_default_executor(self, executor: concurrent.futures.ThreadPoolExecutor) -> None:
        """Use `executor` for `run_in_executor(None, ...)`."""
        if not isinstance(executor, concurrent.futures.ThreadPoolExecutor):
            raise TypeError("executor must be ThreadPoolExecutor instance")
        self._default_executor = executor

    @keywords_since((3, 12), "timeout")
    async def shutdown_default_executor(self, timeout: float | None = None) -> None:
        """Wait for the default executor's threads to finish, then shut it down."""
        self._executor_shutdown_called = True
        if self._default_executor is None:
            return
        done = self.create_future()
        thread = threading.Thread(target=self._join_default_executor, args=(done,))
        thread.start()
        try:
            if timeout is None:
                await done
            else:
                await tasks.wait_for(asyncio.shield(done), timeout)
        except TimeoutError:
            warnings.warn(
                f"The executor did not finishing joining its threads within {timeout} seconds.",
                RuntimeWarning,
                stacklevel=2,
            )
            self._default_executor.shutdown(wait=False)
        else:
            thread.join()

    def _join_default_executor(self, done: asyncio.Future[None]) -> None:
        try:
            executor = self._default_executor
            if executor is not None:
                executor.shutdown(wait=True)
            if not self.is_closed():
                self.call_soon_threadsafe(_set_result_unless_done, done, None)
        except Exception as exc:
            if not self.is_closed() and not done.cancelled():
                self.call_soon_threadsafe(done.set_exception, exc)

    # -- name resolution -----------------------------------------------------

    async def getaddrinfo(
        self,
        host: Any,
        port: Any,
        *,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[tuple[Any, ...]]:
        """Resolve like `socket.getaddrinfo`, without blocking the loop."""
        self._check_closed()  # asyncio's executor hop checks; ours may not hop
        if not self.get_debug():
            hit = dns.cached(host, port, family, type, proto, flags)
            if hit is not None:
                return hit
        return await dns.getaddrinfo(
            self, host, port, family=family, type=type, proto=proto, flags=flags
        )

    def _resolver(self) -> _core.Resolver:
        """The native resolver `dns.getaddrinfo` hands host names to (made on first use)."""
        resolver = self._dns_resolver
        if resolver is None:
            resolver = self._dns_resolver = _core.Resolver(self)
        return resolver

    async def getnameinfo(self, sockaddr: tuple[Any, ...], flags: int = 0) -> tuple[str, str]:
        """Resolve like `socket.getnameinfo`, without blocking the loop."""
        return await dns.getnameinfo(self, sockaddr, flags)

    # -- file descriptors ----------------------------------------------------

    def add_reader(self, fd: Any, callback: Callable[..., object], *args: Any) -> None:
        """Call `callback(*args)` whenever `fd` is readable (level-triggered)."""
        self._watch(self._add_reader, self._reader_files, fd, callback, args)

    def remove_reader(self, fd: Any) -> bool:
        """Stop watching `fd` for reading; True if it was watched."""
        return _unwatch(self._remove_reader, self._reader_files, fd)

    def add_writer(self, fd: Any, callback: Callable[..., object], *args: Any) -> None:
        """Call `callback(*args)` whenever `fd` is writable (level-triggered)."""
        self._watch(self._add_writer, self._writer_files, fd, callback, args)

    def remove_writer(self, fd: Any) -> bool:
        """Stop watching `fd` for writing; True if it was watched."""
        return _unwatch(self._remove_writer, self._writer_files, fd)

    def _watch(
        self,
        add: Callable[..., None],
        files: dict[int, Any],
        fileobj: Any,
        callback: Callable[..., object],
        args: tuple[Any, ...],
    ) -> None:
        fd = self._release_finished_sock_ops(fileobj_to_fd(fileobj))
        add(fd, callback, *args)
        # Remember a file object (not a plain descriptor): removing it must
        # still work after it was closed (see _registered_fd). Watching the
        # descriptor again by number keeps it, as asyncio's selector keeps
        # the registration's original key.
        if not isinstance(fileobj, int):
            files[fd] = fileobj

    def _release_finished_sock_ops(self, fd: int) -> int:
        # A sock_* call cancelled in this iteration still watches `fd` until
        # its done-callback runs; let go of it now so the fd can be reused.
        ops = self._sock_ops_core
        if ops is not None:
            ops._forget_done(fd)
        return fd

    # -- signals -------------------------------------------------------------

    def add_signal_handler(self, sig: int, callback: Callable[..., object], *args: Any) -> None:
        """Run `callback(*args)` in the loop whenever signal `sig` arrives (main thread only)."""
        if coroutines.iscoroutine(callback) or coroutines.iscoroutinefunction(callback):
            raise TypeError("coroutines cannot be used with add_signal_handler()")
        _check_signal(sig)
        self._check_closed()
        try:
            signal.set_wakeup_fd(self._signal_wakeup_fd())
        except (ValueError, OSError) as exc:
            raise RuntimeError(str(exc)) from None
        self._set_signal_handler(sig, callback, args)
        self._signal_handlers[sig] = (callback, args)
        try:
            signal.signal(sig, _signal_noop)
            signal.siginterrupt(sig, False)
        except OSError as exc:
            del self._signal_handlers[sig]
            self._set_signal_handler(sig, None, None)
            if not self._signal_handlers:
                _clear_wakeup_fd()
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig} cannot be caught") from None
            raise

    def remove_signal_handler(self, sig: int) -> bool:
        """Restore the default handling of `sig`; True if a handler was removed."""
        _check_signal(sig)
        if self._signal_handlers.pop(sig, None) is None:
            return False
        self._set_signal_handler(sig, None, None)
        default = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
        try:
            signal.signal(sig, default)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise RuntimeError(f"sig {sig} cannot be caught") from None
            raise
        if not self._signal_handlers:
            _clear_wakeup_fd()
        return True

    # -- errors --------------------------------------------------------------

    def get_exception_handler(self) -> ExceptionHandler | None:
        return self._exception_handler

    def set_exception_handler(self, handler: ExceptionHandler | None) -> None:
        """Route errors the loop cannot raise to `handler(loop, context)`."""
        if handler is not None and not callable(handler):
            raise TypeError(f"A callable object or None is expected, got {handler!r}")
        self._exception_handler = handler

    def default_exception_handler(self, context: dict[str, Any]) -> None:
        """Log `context` (message, exception and the objects involved) at ERROR level."""
        message = context.get("message") or "Unhandled exception in event loop"
        exception = context.get("exception")
        exc_info: Any = (
            (type(exception), exception, exception.__traceback__)
            if exception is not None
            else False
        )
        lines = [message]
        for key in sorted(context):
            if key in ("message", "exception"):
                continue
            lines.append(f"{key}: {_describe_context_value(key, context[key])}")
        logger.error("\n".join(lines), exc_info=exc_info)

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        """Hand `context` to the installed exception handler, or log it."""
        if self._exception_handler is None:
            try:
                self.default_exception_handler(context)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                logger.error("Exception in default exception handler", exc_info=True)
            return
        try:
            handler_context = _context_of_failure(context) if _HANDLER_IN_ITS_CONTEXT else None
            if handler_context is None:
                self._exception_handler(self, context)
            else:
                handler_context.run(self._exception_handler, self, context)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            try:
                self.default_exception_handler(
                    {
                        "message": "Unhandled error in exception handler",
                        "exception": exc,
                        "context": context,
                    }
                )
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException:
                logger.error(
                    "Exception in default exception handler while handling an "
                    "unexpected error in custom exception handler",
                    exc_info=True,
                )


def _context_of_failure(context: dict[str, Any]) -> Any:
    """The contextvars context of what failed: the task, future or handle (gh-96704)."""
    failed = context.get("task")
    if failed is None:
        # A task may come as "future" (a Task is a Future).
        failed = context.get("future")
    if failed is None:
        failed = context.get("handle")
    get_context = getattr(failed, "get_context", None)
    found = get_context() if get_context is not None else None
    return found if hasattr(found, "run") else None


#: Descriptors are C ints: a larger number was never watched.
_MAX_FD = 2**31 - 1


def _unwatch(remove: Callable[[int], bool], files: dict[int, Any], fileobj: Any) -> bool:
    fd = _registered_fd(fileobj, files)
    files.pop(fd, None)
    return fd <= _MAX_FD and remove(fd)


def _registered_fd(fileobj: Any, files: dict[int, Any]) -> int:
    """The descriptor of `fileobj`; for a file object closed since it was
    registered (fileno() is -1 now), the descriptor it was registered with,
    as asyncio's selector finds the registration by the object itself."""
    try:
        return fileobj_to_fd(fileobj)
    except ValueError:
        for fd, registered in files.items():
            if registered is fileobj:
                return fd
        raise


def _describe_context_value(key: str, value: Any) -> str:
    if key == "source_traceback":
        frames = "".join(traceback.format_list(value))
        return "Object created at (most recent call last):\n" + frames.rstrip()
    if key == "handle_traceback":
        frames = "".join(traceback.format_list(value))
        return "Handle created at (most recent call last):\n" + frames.rstrip()
    return repr(value)


def _stop_loop_when_done(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        exc = future.exception()
        if isinstance(exc, (SystemExit, KeyboardInterrupt)):
            # The exception already ended run_forever(); stopping now would
            # make the next run return at once.
            return
    future.get_loop().stop()


def _set_result_unless_done(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _check_callback(callback: object, method: str) -> None:
    if coroutines.iscoroutine(callback) or coroutines.iscoroutinefunction(callback):
        raise TypeError(f"coroutines cannot be used with {method}()")
    if not callable(callback):
        raise TypeError(f"a callable object was expected by {method}(), got {callback!r}")


def _check_signal(sig: object) -> None:
    if not isinstance(sig, int):
        raise TypeError(f"sig must be an int, not {sig!r}")
    if sig not in signal.valid_signals():
        raise ValueError(f"invalid signal number {sig}")


def _clear_wakeup_fd() -> None:
    try:
        signal.set_wakeup_fd(-1)
    except (ValueError, OSError) as exc:
        logger.info("set_wakeup_fd(-1) failed: %s", exc)


def new_event_loop() -> EventLoop:
    """Create a new ferroloop event loop."""
    return EventLoop()
