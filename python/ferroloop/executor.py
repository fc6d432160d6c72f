"""`run_in_executor` on a thread pool without `concurrent.futures.Future`.

asyncio's `run_in_executor` submits to the executor, which makes a
`concurrent.futures.Future` (with its own `threading.Condition`), and then
chains that future to an asyncio future through two more callbacks. For a
plain `ThreadPoolExecutor` — asyncio's default executor is one — none of that
is needed: the pool's worker threads run any queued object with a `run()`
method. `submit_to_thread_pool` queues a small work item that runs the
function and hands the outcome straight to the loop with
`call_soon_threadsafe`. Everything the pool does itself stays as it is: its
threads (named ``asyncio_N`` for the default one), their start-up on demand,
`shutdown()`, `cancel_futures=True`, and the join at interpreter exit.

It relies on attributes private to `ThreadPoolExecutor` (`_work_queue`,
`_shutdown_lock`, `_adjust_thread_count`, `_broken`, `_shutdown`) and to its
module (`_global_shutdown_lock`, `_shutdown`), present from 3.9 through 3.14;
`can_submit_directly` checks for them, and any other executor (a subclass,
a process pool) goes through `submit()` as in asyncio.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import concurrent.futures.thread as _thread_pool
from collections.abc import Callable
from typing import Any

_PRIVATE_PARTS = ("_work_queue", "_shutdown_lock", "_adjust_thread_count", "_broken", "_shutdown")
_MODULE_PARTS = ("_global_shutdown_lock", "_shutdown", "BrokenThreadPool")
_MODULE_KNOWN = all(hasattr(_thread_pool, name) for name in _MODULE_PARTS)


def can_submit_directly(executor: object) -> bool:
    """True for a plain `ThreadPoolExecutor` whose internals we know."""
    return (
        _MODULE_KNOWN
        and type(executor) is concurrent.futures.ThreadPoolExecutor
        and all(hasattr(executor, name) for name in _PRIVATE_PARTS)
    )


def submit_to_thread_pool(
    loop: asyncio.AbstractEventLoop,
    executor: concurrent.futures.ThreadPoolExecutor,
    func: Callable[..., Any],
    args: tuple[Any, ...],
) -> asyncio.Future[Any]:
    """Queue `func(*args)` on `executor`; the returned future gets its outcome.

    Raises what `executor.submit` raises after a shutdown, so callers see
    asyncio's errors.
    """
    pool: Any = executor
    with pool._shutdown_lock, _thread_pool._global_shutdown_lock:
        if pool._broken:
            raise _thread_pool.BrokenThreadPool(pool._broken)
        if pool._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if _thread_pool._shutdown:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")
        waiter = loop.create_future()
        pool._work_queue.put(_LoopWorkItem(loop, waiter, func, args))
        pool._adjust_thread_count()
    return waiter


class _LoopWorkItem:
    """Runs in a pool thread; reports to the loop, never to a concurrent future."""

    __slots__ = ("args", "func", "loop", "waiter")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        waiter: asyncio.Future[Any],
        func: Callable[..., Any],
        args: tuple[Any, ...],
    ) -> None:
        self.loop = loop
        self.waiter = waiter
        self.func = func
        self.args = args

    def run(self, ctx: object = None) -> None:
        """Called by the pool's worker thread (3.14 passes a worker context)."""
        func, args = self.func, self.args
        self.func = self.args = None  # no cycle through a traceback
        # A job cancelled before it started does not run, as with asyncio,
        # which cancels the pending concurrent future. Reading the state from
        # this thread is safe under the GIL; a cancel racing with the start
        # is a cancel of a running job, whose outcome is then dropped.
        if self.waiter.cancelled():
            return
        try:
            result = func(*args)
        except BaseException as exc:  # the pool reports everything, so do we
            self._deliver(None, exc)
            del exc
        else:
            self._deliver(result, None)

    @property
    def future(self) -> _CancelOnLoop:
        """`shutdown(cancel_futures=True)` cancels queued items through this."""
        return _CancelOnLoop(self.loop, self.waiter)

    def _deliver(self, result: Any, exc: BaseException | None) -> None:
        try:
            self.loop.call_soon_threadsafe(_settle, self.waiter, result, exc)
        except RuntimeError:
            pass  # the loop was closed meanwhile: nobody is waiting any more


class _CancelOnLoop:
    """The part of a concurrent future's API the pool's shutdown uses."""

    __slots__ = ("loop", "waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[Any]) -> None:
        self.loop = loop
        self.waiter = waiter

    def cancel(self) -> bool:
        self._post(_cancel_unless_done, self.waiter)
        return True

    def set_exception(self, exc: BaseException) -> None:
        """A pool whose initializer failed fails its queued items so."""
        self._post(_settle, self.waiter, None, exc)

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            pass


#: asyncio's mapping of concurrent.futures' exception types to its own.
_convert_exception: Callable[[BaseException], BaseException] = getattr(
    asyncio.futures, "_convert_future_exc", lambda exc: exc
)


def _settle(waiter: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if waiter.done():
        return
    if exc is None:
        waiter.set_result(result)
    else:
        waiter.set_exception(_convert_exception(exc))


def _cancel_unless_done(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.cancel()
