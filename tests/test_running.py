"""Running, stopping and closing a loop: the lifecycle part of the loop API."""

from __future__ import annotations

import asyncio
import sys
import threading
import time

import pytest


async def answer(value: object = 42, delay: float = 0.0) -> object:
    await asyncio.sleep(delay)
    return value


# -- run_until_complete / run_forever / stop ----------------------------------


def test_run_until_complete_coroutine(loop):
    assert loop.run_until_complete(answer(42, 0.01)) == 42


def test_run_until_complete_future(loop):
    fut = loop.create_future()
    loop.call_later(0.01, fut.set_result, "done")
    assert loop.run_until_complete(fut) == "done"


def test_run_until_complete_task(loop):
    task = loop.create_task(answer("task"))
    assert loop.run_until_complete(task) == "task"


def test_run_until_complete_awaitable_object(loop):
    class Awaitable:
        def __await__(self):
            return answer("awaitable").__await__()

    assert loop.run_until_complete(Awaitable()) == "awaitable"


def test_run_until_complete_propagates_exception(loop):
    async def boom():
        await asyncio.sleep(0)
        raise ZeroDivisionError("boom")

    with pytest.raises(ZeroDivisionError, match="boom"):
        loop.run_until_complete(boom())
    # The loop is usable again afterwards.
    assert loop.run_until_complete(answer(1)) == 1


def test_run_until_complete_cancelled_future_raises_cancelled(loop):
    fut = loop.create_future()
    loop.call_soon(fut.cancel)
    with pytest.raises(asyncio.CancelledError):
        loop.run_until_complete(fut)


def test_run_until_complete_stopped_early_raises(loop):
    fut = loop.create_future()
    loop.call_soon(loop.stop)
    with pytest.raises(RuntimeError, match="Event loop stopped before Future completed"):
        loop.run_until_complete(fut)


def test_run_until_complete_future_of_other_loop_raises(loop, loop_factory):
    other = loop_factory()
    try:
        fut = other.create_future()
        with pytest.raises(ValueError):
            loop.run_until_complete(fut)
    finally:
        other.close()


def test_run_until_complete_bad_argument(loop):
    with pytest.raises(TypeError):
        loop.run_until_complete(1)


def test_run_forever_and_stop(loop):
    calls: list[str] = []
    loop.call_soon(calls.append, "a")
    loop.call_later(0.02, calls.append, "b")
    loop.call_later(0.03, loop.stop)
    loop.run_forever()
    assert calls == ["a", "b"]
    assert not loop.is_running()


def test_stop_before_run_forever_runs_one_iteration(loop):
    """stop() before run_forever(): run the callbacks already scheduled, then return."""
    calls: list[int] = []
    loop.call_soon(calls.append, 1)
    loop.stop()
    loop.call_soon(calls.append, 2)
    loop.run_forever()
    assert calls == [1, 2]
    # The stop request was consumed; the next run is a normal one.
    loop.call_soon(calls.append, 3)
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == [1, 2, 3]


def test_stop_inside_callback_finishes_current_iteration(loop):
    calls: list[str] = []

    def first():
        calls.append("first")
        loop.stop()
        loop.call_soon(calls.append, "scheduled-after-stop")

    loop.call_soon(first)
    loop.call_soon(calls.append, "second")
    loop.run_forever()
    # Callbacks already in the ready queue when the iteration started run;
    # those scheduled during it wait for the next run.
    assert calls == ["first", "second"]
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert calls == ["first", "second", "scheduled-after-stop"]


def test_run_forever_can_be_restarted_many_times(loop):
    count = 0

    def tick():
        nonlocal count
        count += 1
        loop.stop()

    for _ in range(100):
        loop.call_soon(tick)
        loop.run_forever()
    assert count == 100


def test_is_running_and_get_running_loop(loop):
    seen: dict[str, object] = {}

    async def main():
        seen["is_running"] = loop.is_running()
        seen["running_loop"] = asyncio.get_running_loop()
        seen["get_event_loop"] = asyncio.get_event_loop()
        seen["_get_running_loop"] = asyncio._get_running_loop()

    assert not loop.is_running()
    loop.run_until_complete(main())
    assert not loop.is_running()
    assert seen == {
        "is_running": True,
        "running_loop": loop,
        "get_event_loop": loop,
        "_get_running_loop": loop,
    }
    assert asyncio._get_running_loop() is None
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()


def test_get_running_loop_in_callback(loop):
    seen = []

    def cb():
        seen.append(asyncio.get_running_loop())
        loop.stop()

    loop.call_soon(cb)
    loop.run_forever()
    assert seen == [loop]


def test_run_until_complete_inside_running_loop_raises(loop):
    async def main():
        coro = answer()
        try:
            with pytest.raises(RuntimeError):
                loop.run_until_complete(coro)
        finally:
            coro.close()
        with pytest.raises(RuntimeError):
            loop.run_forever()
        return "ok"

    assert loop.run_until_complete(main()) == "ok"


def test_running_while_another_loop_runs_in_thread_raises(loop, loop_factory):
    other = loop_factory()

    async def main():
        coro = answer()
        try:
            with pytest.raises(RuntimeError):
                other.run_until_complete(coro)
        finally:
            coro.close()
        with pytest.raises(RuntimeError):
            other.run_forever()
        return "ok"

    try:
        assert loop.run_until_complete(main()) == "ok"
        assert not other.is_running()
        # Once the first loop is done, the other one runs fine.
        assert other.run_until_complete(answer("other")) == "other"
    finally:
        other.close()


def test_loops_in_two_threads_run_independently(loop_factory):
    results: dict[str, object] = {}

    def worker(name: str) -> None:
        lp = loop_factory()
        try:
            results[name] = lp.run_until_complete(answer(name, 0.05))
        finally:
            lp.close()

    threads = [threading.Thread(target=worker, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == {f"t{i}": f"t{i}" for i in range(4)}


# -- close --------------------------------------------------------------------


def test_is_closed_and_close_twice(loop):
    assert not loop.is_closed()
    loop.close()
    assert loop.is_closed()
    loop.close()  # idempotent
    assert loop.is_closed()


def test_private_closed_flag_follows_close(loop):
    # Not API, but read by code written against asyncio's (and uvloop's) loops.
    assert loop._closed is False
    loop.close()
    assert loop._closed is True


def test_close_while_running_raises(loop):
    async def main():
        with pytest.raises(RuntimeError):
            loop.close()
        return loop.is_closed()

    assert loop.run_until_complete(main()) is False
    assert not loop.is_closed()


def test_close_inside_callback_raises(loop):
    errors = []

    def cb():
        try:
            loop.close()
        except RuntimeError as exc:
            errors.append(exc)
        loop.stop()

    loop.call_soon(cb)
    loop.run_forever()
    assert len(errors) == 1
    assert not loop.is_closed()


def _noop(*args):
    pass


async def _coro():
    pass


@pytest.mark.parametrize(
    "operation",
    [
        "call_soon",
        "call_later",
        "call_at",
        "call_soon_threadsafe",
        "run_forever",
        "run_until_complete",
        "create_task",
        "run_in_executor",
    ],
)
def test_everything_after_close_raises_runtime_error(loop, operation):
    loop.close()
    actions = {
        "call_soon": lambda: loop.call_soon(_noop),
        "call_later": lambda: loop.call_later(0.1, _noop),
        "call_at": lambda: loop.call_at(loop.time() + 0.1, _noop),
        "call_soon_threadsafe": lambda: loop.call_soon_threadsafe(_noop),
        "run_forever": loop.run_forever,
        "run_until_complete": lambda: loop.run_until_complete(fut),
        "create_task": lambda: loop.create_task(coro),
        "run_in_executor": lambda: loop.run_in_executor(None, _noop),
    }
    fut = asyncio.Future(loop=loop) if operation == "run_until_complete" else None
    coro = _coro()
    try:
        with pytest.raises(RuntimeError, match="closed"):
            actions[operation]()
    finally:
        coro.close()


def test_time_works_after_close(loop):
    loop.close()
    assert isinstance(loop.time(), float)


def test_close_with_pending_callbacks_drops_them(loop):
    calls = []
    loop.call_soon(calls.append, 1)
    loop.call_later(0.01, calls.append, 2)
    loop.call_soon_threadsafe(calls.append, 3)
    loop.close()
    assert loop.is_closed()
    time.sleep(0.02)
    assert calls == []


def test_close_shuts_down_default_executor_without_waiting(loop):
    started = threading.Event()
    loop.run_until_complete(loop.run_in_executor(None, started.set))
    assert started.is_set()
    loop.close()
    with pytest.raises(RuntimeError):
        loop.run_in_executor(None, _noop)


# -- async generators ---------------------------------------------------------


def test_asyncgen_hooks_installed_while_running_and_restored(loop):
    def firstiter(agen):
        pass

    def finalizer(agen):
        pass

    old = sys.get_asyncgen_hooks()
    sys.set_asyncgen_hooks(firstiter=firstiter, finalizer=finalizer)
    try:
        inside = {}

        async def main():
            hooks = sys.get_asyncgen_hooks()
            inside["firstiter"] = hooks.firstiter
            inside["finalizer"] = hooks.finalizer

        loop.run_until_complete(main())
        assert inside["firstiter"] is not None and inside["finalizer"] is not None
        assert inside["firstiter"] is not firstiter
        assert inside["finalizer"] is not finalizer
        after = sys.get_asyncgen_hooks()
        assert after.firstiter is firstiter
        assert after.finalizer is finalizer
    finally:
        sys.set_asyncgen_hooks(*old)


def test_asyncgen_hooks_restored_after_exception(loop):
    before = sys.get_asyncgen_hooks()

    async def boom():
        raise LookupError

    with pytest.raises(LookupError):
        loop.run_until_complete(boom())
    assert sys.get_asyncgen_hooks() == before


def test_shutdown_asyncgens_closes_suspended_generators(loop):
    closed: list[str] = []

    async def agen(name: str):
        try:
            while True:
                yield name
                await asyncio.sleep(0)
        finally:
            closed.append(name)

    gens = [agen("a"), agen("b")]

    async def main():
        for g in gens:
            assert await g.__anext__() in ("a", "b")

    loop.run_until_complete(main())
    assert closed == []
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert sorted(closed) == ["a", "b"]


def test_shutdown_asyncgens_reports_errors_to_handler(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    async def agen():
        try:
            yield 1
        finally:
            raise ZeroDivisionError("in aclose")

    g = agen()

    async def main():
        await g.__anext__()

    loop.run_until_complete(main())
    loop.run_until_complete(loop.shutdown_asyncgens())
    assert len(contexts) == 1
    assert isinstance(contexts[0]["exception"], ZeroDivisionError)
    assert contexts[0]["asyncgen"] is g


def test_abandoned_asyncgen_is_finalized_by_loop(loop):
    closed = []

    async def agen():
        try:
            yield 1
            yield 2
        finally:
            closed.append(True)

    async def main():
        g = agen()
        await g.__anext__()
        del g  # finalizer hook schedules aclose() on the loop
        for _ in range(5):
            await asyncio.sleep(0)

    loop.run_until_complete(main())
    assert closed == [True]


def test_asyncgen_after_shutdown_warns(loop):
    loop.run_until_complete(loop.shutdown_asyncgens())

    async def agen():
        yield 1

    async def main():
        g = agen()
        with pytest.warns(ResourceWarning):
            await g.__anext__()
        await g.aclose()

    loop.run_until_complete(main())


# -- default executor shutdown -------------------------------------------------


def test_shutdown_default_executor_waits_for_jobs(loop):
    done = threading.Event()

    def job():
        time.sleep(0.1)
        done.set()

    async def main():
        lp = asyncio.get_running_loop()
        lp.run_in_executor(None, job)
        await lp.shutdown_default_executor()
        assert done.is_set()
        with pytest.raises(RuntimeError):
            lp.run_in_executor(None, job)

    loop.run_until_complete(main())


def test_shutdown_default_executor_without_executor_is_noop(loop):
    assert loop.run_until_complete(loop.shutdown_default_executor()) is None


def test_runner_closes_loop_and_cancels_leftover_tasks(loop_factory):
    leftover: list[asyncio.Task] = []
    cancelled = []

    async def sleeper():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def main():
        leftover.append(asyncio.create_task(sleeper()))
        await asyncio.sleep(0)
        return asyncio.get_running_loop()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        lp = runner.run(main())
        assert not lp.is_closed()
    assert lp.is_closed()
    assert cancelled == [True]
    assert leftover[0].cancelled()


# -- the loop object ---------------------------------------------------------------


def test_loop_accepts_attribute_assignment(loop):
    # Libraries and tests patch loops: own attributes, replaced methods, and
    # the state attributes asyncio's loops have.
    loop.custom = "value"
    calls = []
    loop.call_soon = lambda *args, **kwargs: calls.append(args)  # type: ignore[method-assign]
    loop.call_soon("x")
    loop.slow_callback_duration = 0.5
    assert loop.custom == "value"
    assert loop.__dict__["custom"] == "value"
    assert calls == [("x",)]
    assert loop.slow_callback_duration == 0.5
    del loop.call_soon
    assert loop.call_soon(lambda: None) is not None


def test_ferroloop_starts_without_instance_dict(loop, loop_name):
    # ferroloop only: its state lives in slots and the empty instance dict
    # CPython 3.11/3.12 make eagerly is freed, so that C code looking up loop
    # methods does not search it first (see Loop._release_empty_dict).
    if loop_name != "ferroloop":
        pytest.skip("only meaningful for ferroloop: instance layout")
    import ctypes

    slot = ctypes.c_void_p.from_address(id(loop) + type(loop).__dictoffset__)
    assert slot.value is None
    assert loop._instance_has("call_soon") is False
    loop.call_soon = print  # type: ignore[method-assign]
    assert slot.value is not None
    assert loop._instance_has("call_soon") is True
    del loop.call_soon
