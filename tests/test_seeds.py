"""The scenarios from the asyncio tutorials our users learn from (shared/seeds).

Each test is a small, faithful rendition of a tutorial snippet, with assertions
on what the tutorial promises (results, ordering, rough timing). Timing bounds
are deliberately generous: they separate "concurrent" from "sequential", not
fast from slow.
"""

from __future__ import annotations

import asyncio
import contextvars
import time

import pytest
from loop_helpers import run


async def fetch_data(name: str, delay: float = 1.0) -> str:
    await asyncio.sleep(delay)
    return f"Data for {name}"


def test_gather_three_one_second_sleeps_takes_about_one_second(loop_factory):
    async def main():
        start = time.perf_counter()
        results = await asyncio.gather(
            fetch_data("user"), fetch_data("posts"), fetch_data("comments")
        )
        return results, time.perf_counter() - start

    results, elapsed = run(loop_factory, main)
    assert results == ["Data for user", "Data for posts", "Data for comments"]
    assert 0.99 <= elapsed < 1.5


def test_gather_return_exceptions_keeps_exceptions_in_place(loop_factory):
    async def risky(n: int) -> int:
        if n == 0:
            raise ValueError("Can't process zero")
        await asyncio.sleep(0.1)
        return n * 10

    async def main():
        try:
            await risky(0)
        except ValueError as exc:
            caught = str(exc)
        results = await asyncio.gather(risky(1), risky(0), risky(3), return_exceptions=True)
        task = asyncio.create_task(risky(5))
        return caught, results, await task

    caught, results, fire_and_forget = run(loop_factory, main)
    assert caught == "Can't process zero"
    assert results[0] == 10
    assert isinstance(results[1], ValueError) and str(results[1]) == "Can't process zero"
    assert results[2] == 30
    assert fire_and_forget == 50


def test_gather_without_return_exceptions_propagates_first_error(loop_factory):
    async def boom():
        await asyncio.sleep(0.01)
        raise KeyError("boom")

    async def main():
        slow = asyncio.ensure_future(asyncio.sleep(0.2, result="slow"))
        with pytest.raises(KeyError):
            await asyncio.gather(boom(), slow)
        # gather does not cancel the others: the slow one keeps running.
        assert not slow.cancelled()
        return await slow

    assert run(loop_factory, main) == "slow"


def test_error_handling_seed_safe_call(loop_factory):
    async def might_fail():
        await asyncio.sleep(0.05)
        raise ValueError("Oops!")

    async def safe_call():
        try:
            return await might_fail()
        except ValueError:
            return "Failed, but handled"

    async def main():
        tasks = [
            asyncio.create_task(safe_call()),
            asyncio.create_task(fetch_data("test", 0.05)),
        ]
        return await asyncio.gather(*tasks, return_exceptions=True)

    assert run(loop_factory, main) == ["Failed, but handled", "Data for test"]


def test_background_worker_create_task_then_cancel(loop_factory):
    ticks: list[float] = []
    finalised: list[bool] = []

    async def background_worker():
        try:
            while True:
                ticks.append(time.perf_counter())
                await asyncio.sleep(0.05)
        finally:
            finalised.append(True)

    async def main():
        task = asyncio.create_task(background_worker())
        await asyncio.sleep(0.3)
        assert not task.done()
        assert task.cancel() is True
        with pytest.raises(asyncio.CancelledError):
            await task
        return task

    task = run(loop_factory, main)
    assert task.cancelled()
    assert finalised == [True]
    assert 3 <= len(ticks) <= 8


def test_wait_for_timeout_raises_and_cancels_inner_task(loop_factory):
    state: dict[str, object] = {}

    async def slow_task():
        try:
            await asyncio.sleep(5)
            return "Done"
        except asyncio.CancelledError:
            state["inner_cancelled"] = True
            raise

    async def main():
        start = time.perf_counter()
        with pytest.raises(asyncio.TimeoutError) as info:
            await asyncio.wait_for(slow_task(), timeout=0.2)
        state["elapsed"] = time.perf_counter() - start
        # The inner coroutine has been cancelled (and finished) by the time
        # wait_for raises.
        state["inner_cancelled_before_raise"] = state.get("inner_cancelled", False)
        return info.value

    exc = run(loop_factory, main)
    assert isinstance(exc, TimeoutError)
    assert state["inner_cancelled"] is True
    assert state["inner_cancelled_before_raise"] is True
    assert 0.19 <= state["elapsed"] < 1.5


def test_wait_for_returns_result_when_in_time(loop_factory):
    async def main():
        return await asyncio.wait_for(fetch_data("quick", 0.01), timeout=2)

    assert run(loop_factory, main) == "Data for quick"


def test_taskgroup_success_results(loop_factory):
    async def fetch_user(i: int) -> dict[str, int]:
        await asyncio.sleep(0.01 * i)
        return {"id": i}

    async def main():
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(fetch_user(i)) for i in (1, 2, 3)]
        return [t.result() for t in tasks]

    assert run(loop_factory, main) == [{"id": 1}, {"id": 2}, {"id": 3}]


def test_taskgroup_cancels_siblings_and_raises_exception_group(loop_factory):
    cancelled: list[str] = []

    async def sibling(name: str):
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(name)
            raise

    async def failing():
        await asyncio.sleep(0.05)
        raise ValueError("fetch failed")

    async def main():
        tasks = []
        start = time.perf_counter()
        with pytest.raises(ExceptionGroup) as info:
            async with asyncio.TaskGroup() as tg:
                tasks.append(tg.create_task(sibling("a")))
                tasks.append(tg.create_task(failing()))
                tasks.append(tg.create_task(sibling("b")))
        return info.value, tasks, time.perf_counter() - start

    group, tasks, elapsed = run(loop_factory, main)
    assert len(group.exceptions) == 1
    assert isinstance(group.exceptions[0], ValueError)
    assert sorted(cancelled) == ["a", "b"]
    assert tasks[0].cancelled() and tasks[2].cancelled()
    assert isinstance(tasks[1].exception(), ValueError)
    assert elapsed < 2


def test_semaphore_bounds_500_tasks_to_10(loop_factory):
    inside = 0
    peak = 0
    done = 0

    async def fetch_limited(sem: asyncio.Semaphore, i: int) -> int:
        nonlocal inside, peak, done
        async with sem:
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.001)
            inside -= 1
            done += 1
            return i

    async def main():
        sem = asyncio.Semaphore(10)
        return await asyncio.gather(*(fetch_limited(sem, i) for i in range(500)))

    results = run(loop_factory, main)
    assert results == list(range(500))
    assert done == 500
    assert peak == 10
    assert inside == 0


def test_run_in_executor_does_not_block_other_tasks(loop_factory):
    async def main():
        loop = asyncio.get_running_loop()
        ticks = 0
        stop = False

        async def ticker():
            nonlocal ticks
            while not stop:
                ticks += 1
                await asyncio.sleep(0.05)

        ticker_task = asyncio.create_task(ticker())
        start = time.perf_counter()
        result = await asyncio.gather(
            loop.run_in_executor(None, time.sleep, 1),
            asyncio.sleep(1, result="slept"),
        )
        elapsed = time.perf_counter() - start
        stop = True
        await ticker_task
        return result, ticks, elapsed

    result, ticks, elapsed = run(loop_factory, main)
    assert result == [None, "slept"]
    assert ticks >= 8  # ~20 expected; a blocked loop would give 1 or 2
    assert 0.99 <= elapsed < 1.8


def test_blocking_call_in_coroutine_blocks_the_loop(loop_factory):
    """The tutorials' warning: time.sleep() inside a coroutine stalls everything."""

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        t = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        before = ticks
        time.sleep(0.2)
        during = ticks - before
        t.cancel()
        return during

    assert run(loop_factory, main) == 0


def test_queue_producer_consumer(loop_factory):
    async def main():
        queue: asyncio.Queue[int] = asyncio.Queue(maxsize=5)
        consumed: list[tuple[str, int]] = []
        max_size_seen = 0

        async def producer(n: int):
            nonlocal max_size_seen
            for i in range(n):
                await queue.put(i)
                max_size_seen = max(max_size_seen, queue.qsize())

        async def consumer(name: str):
            while True:
                item = await queue.get()
                await asyncio.sleep(0.001)
                consumed.append((name, item))
                queue.task_done()

        consumers = [asyncio.create_task(consumer(f"c{i}")) for i in range(3)]
        await producer(100)
        await asyncio.wait_for(queue.join(), timeout=10)
        for c in consumers:
            c.cancel()
        results = await asyncio.gather(*consumers, return_exceptions=True)
        return consumed, max_size_seen, results

    consumed, max_size_seen, results = run(loop_factory, main)
    assert sorted(item for _, item in consumed) == list(range(100))
    assert {name for name, _ in consumed} == {"c0", "c1", "c2"}
    assert max_size_seen <= 5
    assert all(isinstance(r, asyncio.CancelledError) for r in results)


request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def test_contextvars_propagate_into_tasks(loop_factory):
    async def handler(expected: str) -> tuple[str, str]:
        seen = request_id.get()
        await asyncio.sleep(0.01)
        request_id.set("changed-in-task")
        return expected, seen

    async def main():
        out = []
        for rid in ("r1", "r2", "r3"):
            request_id.set(rid)
            out.append(asyncio.create_task(handler(rid)))
        results = await asyncio.gather(*out)
        # The tasks' own set() calls did not leak back into main's context.
        return results, request_id.get()

    results, after = run(loop_factory, main)
    assert results == [("r1", "r1"), ("r2", "r2"), ("r3", "r3")]
    assert after == "r3"


def test_contextvars_in_call_soon_and_call_later_callbacks(loop_factory):
    async def main():
        loop = asyncio.get_running_loop()
        seen: dict[str, str] = {}
        done = loop.create_future()

        def record(key: str) -> None:
            seen[key] = request_id.get()
            request_id.set("mutated-by-callback")
            if len(seen) == 4 and not done.done():
                done.set_result(None)

        request_id.set("soon")
        loop.call_soon(record, "call_soon")
        request_id.set("later")
        loop.call_later(0.01, record, "call_later")
        request_id.set("threadsafe")
        loop.call_soon_threadsafe(record, "call_soon_threadsafe")

        explicit = contextvars.copy_context()
        explicit.run(request_id.set, "explicit")
        request_id.set("main")
        loop.call_later(0.02, record, "context=", context=explicit)

        await asyncio.wait_for(done, 5)
        return seen, request_id.get(), explicit[request_id]

    seen, main_value, explicit_value = run(loop_factory, main)
    assert seen == {
        "call_soon": "soon",
        "call_later": "later",
        "call_soon_threadsafe": "threadsafe",
        "context=": "explicit",
    }
    # Callbacks ran in copies of the context, except the explicit one, which
    # ran in (and therefore mutated) the context object it was given.
    assert main_value == "main"
    assert explicit_value == "mutated-by-callback"


def test_create_task_with_explicit_context(loop_factory):
    async def read() -> str:
        return request_id.get()

    async def main():
        ctx = contextvars.copy_context()
        ctx.run(request_id.set, "from-ctx")
        request_id.set("from-main")
        return await asyncio.get_running_loop().create_task(read(), context=ctx)

    assert run(loop_factory, main) == "from-ctx"


def test_sequential_vs_concurrent_fetch(loop_factory):
    async def fetch(url: str, delay: float) -> dict[str, str]:
        await asyncio.sleep(delay)
        return {"url": url, "data": f"response from {url}"}

    async def main():
        start = time.perf_counter()
        r1 = await fetch("api/users", 0.5)
        r2 = await fetch("api/posts", 0.5)
        sequential = time.perf_counter() - start

        start = time.perf_counter()
        rs = await asyncio.gather(
            fetch("api/users", 0.5), fetch("api/posts", 0.3), fetch("api/comments", 0.4)
        )
        concurrent = time.perf_counter() - start
        return [r1["url"], r2["url"]], [r["url"] for r in rs], sequential, concurrent

    seq_urls, conc_urls, sequential, concurrent = run(loop_factory, main)
    assert seq_urls == ["api/users", "api/posts"]
    assert conc_urls == ["api/users", "api/posts", "api/comments"]
    assert 0.99 <= sequential < 1.8
    assert 0.49 <= concurrent < 0.9


def test_basic_hello_world(loop_factory, capsys):
    async def say_hello():
        print("Hello")
        await asyncio.sleep(0.01)
        print("World")

    assert run(loop_factory, say_hello) is None
    assert capsys.readouterr().out == "Hello\nWorld\n"
