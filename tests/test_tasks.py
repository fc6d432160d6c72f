"""Futures and tasks created by the loop: real asyncio objects, factories, names, contexts."""

from __future__ import annotations

import asyncio
import contextvars
import sys

import pytest
from loop_helpers import run

var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="default")


async def value(v: object = None) -> object:
    await asyncio.sleep(0)
    return v


def test_create_future_returns_asyncio_future(loop):
    fut = loop.create_future()
    assert isinstance(fut, asyncio.Future)
    assert asyncio.isfuture(fut)
    assert fut.get_loop() is loop
    assert not fut.done()
    fut.cancel()


def test_create_task_returns_real_asyncio_task(loop):
    task = loop.create_task(value(1))
    assert isinstance(task, asyncio.Task)
    assert task.get_loop() is loop
    assert loop.run_until_complete(task) == 1


def test_tasks_inside_loop_are_asyncio_tasks(loop_factory):
    async def main():
        current = asyncio.current_task()
        t = asyncio.create_task(value(2))
        e = asyncio.ensure_future(value(3))
        all_tasks = asyncio.all_tasks()
        return current, t, e, all_tasks, await t, await e

    current, t, e, all_tasks, r1, r2 = run(loop_factory, main)
    assert isinstance(current, asyncio.Task)
    assert isinstance(t, asyncio.Task) and isinstance(e, asyncio.Task)
    assert {current, t, e} <= all_tasks
    assert (r1, r2) == (2, 3)


def test_create_task_name(loop):
    named = loop.create_task(value(), name="worker-1")
    unnamed = loop.create_task(value())
    assert named.get_name() == "worker-1"
    assert unnamed.get_name().startswith("Task-")
    loop.run_until_complete(asyncio.gather(named, unnamed))


def test_create_task_context(loop):
    ctx = contextvars.copy_context()
    ctx.run(var.set, "in-ctx")

    async def read_and_write():
        seen = var.get()
        var.set("written-by-task")
        return seen

    task = loop.create_task(read_and_write(), context=ctx)
    assert loop.run_until_complete(task) == "in-ctx"
    assert ctx[var] == "written-by-task"
    assert var.get() == "default"


def test_task_factory_get_set(loop):
    assert loop.get_task_factory() is None
    calls = []

    def factory(lp, coro, **kwargs):
        calls.append((lp, kwargs))
        return asyncio.Task(coro, loop=lp, **kwargs)

    loop.set_task_factory(factory)
    assert loop.get_task_factory() is factory
    task = loop.create_task(value("via-factory"))
    assert loop.run_until_complete(task) == "via-factory"
    assert calls[0][0] is loop
    loop.set_task_factory(None)
    assert loop.get_task_factory() is None
    loop.run_until_complete(loop.create_task(value()))
    assert len(calls) == 1


def test_task_factory_used_by_asyncio_create_task_and_gets_name_and_context(loop):
    seen_kwargs = []

    def factory(lp, coro, **kwargs):
        seen_kwargs.append(dict(kwargs))
        return asyncio.Task(coro, loop=lp, **kwargs)

    loop.set_task_factory(factory)
    ctx = contextvars.copy_context()

    async def main():
        t1 = asyncio.create_task(value(1), name="named")
        t2 = asyncio.get_running_loop().create_task(value(2), context=ctx)
        return await t1, await t2, t1.get_name()

    r1, r2, name = loop.run_until_complete(main())
    assert (r1, r2) == (1, 2)
    assert name == "named"
    # main() itself + t1 + t2
    assert len(seen_kwargs) == 3
    # Whether `name` reaches the factory as a keyword depends on the Python
    # version (3.13+ passes it; earlier versions call task.set_name()); the
    # resulting name is checked above. `context` is passed as a keyword.
    assert seen_kwargs[2].get("context") is ctx


def test_task_factory_returning_custom_task_subclass(loop):
    class MyTask(asyncio.Task):
        pass

    loop.set_task_factory(lambda lp, coro, **kw: MyTask(coro, loop=lp, **kw))

    async def main():
        return type(asyncio.current_task())

    assert loop.run_until_complete(main()) is MyTask


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager_task_factory is new in 3.12")
def test_eager_task_factory(loop):
    loop.set_task_factory(asyncio.eager_task_factory)
    order = []

    async def child():
        order.append("child-start")
        await asyncio.sleep(0)
        order.append("child-end")
        return "eager"

    async def main():
        t = asyncio.create_task(child())
        order.append("after-create")
        return await t

    assert loop.run_until_complete(main()) == "eager"
    assert order == ["child-start", "after-create", "child-end"]


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager_task_factory is new in 3.12")
def test_eager_task_completing_synchronously(loop):
    loop.set_task_factory(asyncio.eager_task_factory)

    async def sync_result():
        return 5

    async def main():
        t = asyncio.create_task(sync_result())
        return t.done(), await t

    assert loop.run_until_complete(main()) == (True, 5)


def test_current_task_and_all_tasks_from_callbacks(loop):
    seen = {}

    def cb():
        seen["current"] = asyncio.current_task(loop)
        loop.stop()

    loop.call_soon(cb)
    loop.run_forever()
    assert seen["current"] is None


def test_task_cancel_with_message(loop_factory):
    async def main():
        t = asyncio.create_task(asyncio.sleep(10))
        await asyncio.sleep(0)
        t.cancel("stop now")
        try:
            await t
        except asyncio.CancelledError as exc:
            return exc.args

    assert run(loop_factory, main) == ("stop now",)


def test_shield_and_timeout_context_manager(loop_factory):
    async def main():
        inner = asyncio.ensure_future(value("shielded"))
        outer = asyncio.shield(inner)
        outer.cancel()
        result = await inner
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await asyncio.sleep(5)
        return result, outer.cancelled()

    assert run(loop_factory, main) == ("shielded", True)


def test_wait_first_completed(loop_factory):
    async def main():
        fast = asyncio.create_task(value("fast"))
        slow = asyncio.create_task(asyncio.sleep(5))
        done, pending = await asyncio.wait({fast, slow}, return_when=asyncio.FIRST_COMPLETED)
        slow.cancel()
        return done == {fast}, pending == {slow}

    assert run(loop_factory, main) == (True, True)


def test_as_completed_order(loop_factory):
    async def delayed(v, d):
        await asyncio.sleep(d)
        return v

    async def main():
        coros = [delayed("c", 0.06), delayed("a", 0.02), delayed("b", 0.04)]
        return [await f for f in asyncio.as_completed(coros)]

    assert run(loop_factory, main) == ["a", "b", "c"]


def test_to_thread(loop_factory):
    import threading

    async def main():
        main_thread = threading.get_ident()
        other = await asyncio.to_thread(threading.get_ident)
        return main_thread != other

    assert run(loop_factory, main) is True


@pytest.mark.skipif(
    sys.version_info >= (3, 14) or sys.version_info[:3] == (3, 13, 3),
    reason="this Python passes name= on to the task factory",
)
def test_two_argument_task_factory_gets_the_name_afterwards(loop):
    """The task factory signature asyncio documents, `(loop, coro)`, still works
    with a name: create_task names the task the factory returned."""
    loop.set_task_factory(lambda lp, coro: asyncio.Task(coro, loop=lp))
    task = loop.create_task(value("named"), name="worker")
    assert task.get_name() == "worker"
    assert loop.run_until_complete(task) == "named"


@pytest.mark.skipif(sys.version_info >= (3, 13, 3), reason="3.13.3 added **kwargs to create_task")
def test_create_task_rejects_unknown_keywords(loop):
    coro = value()
    with pytest.raises(TypeError, match="unexpected keyword argument 'eager_start'"):
        loop.create_task(coro, eager_start=True)
    coro.close()


def test_create_task_takes_its_arguments_as_a_python_def_would(loop):
    """`coro` by position or by name, `name` and `context` by name only; the
    wrong shapes raise TypeError before anything is scheduled."""
    ctx = contextvars.copy_context()
    ctx.run(var.set, "in ctx")

    async def read() -> str:
        return var.get()

    by_name = loop.create_task(coro=read(), name="kw", context=ctx)
    assert by_name.get_name() == "kw"
    assert loop.run_until_complete(by_name) == "in ctx"
    assert loop.run_until_complete(loop.create_task(read(), context=None)) == "default"

    def rejected(call) -> None:
        coro = value()
        with pytest.raises(TypeError):
            call(coro)
        coro.close()

    rejected(lambda coro: loop.create_task())
    rejected(lambda coro: loop.create_task(coro, "name"))
    rejected(lambda coro: loop.create_task(coro, coro=coro))
    rejected(lambda coro: loop.create_task(coro, **{"name": "x", "unknown": 1}))
    assert not asyncio.all_tasks(loop)
