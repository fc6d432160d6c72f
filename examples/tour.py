"""A guided tour of everyday asyncio, running on ferroloop.

Each stop is one of the patterns from the popular asyncio tutorials: running
coroutines concurrently, handling their errors, background tasks, timeouts,
task groups, bounded fan-out, blocking code in threads, queues and context
variables, and a small HTTP server and its clients on 127.0.0.1 (the
tutorials' aiohttp fan-out, with the standard library's streams so that the
tour needs nothing but ferroloop). Nothing here is ferroloop-specific except the last line: the same
code runs on the standard loop with ``asyncio.run(main())``.

    python examples/tour.py
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import time
from collections.abc import Awaitable, Callable

import ferroloop

WIDTH = 72


def banner(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, WIDTH - len(title) - 4))


def say(message: str) -> None:
    print(f"   {message}")


async def stop(title: str, body: Callable[[], Awaitable[str]]) -> float:
    """Run one stop of the tour and report how long it took."""
    banner(title)
    start = time.perf_counter()
    summary = await body()
    elapsed = time.perf_counter() - start
    print(f"   -> {summary}  [{elapsed:.2f}s]")
    return elapsed


# -- 1. gather: three one-second waits take one second --------------------------------


async def fetch_data(name: str, delay: float = 1.0) -> str:
    await asyncio.sleep(delay)  # stands in for a network call
    return f"data for {name}"


async def gather_stop() -> str:
    results = await asyncio.gather(fetch_data("user"), fetch_data("posts"), fetch_data("comments"))
    for r in results:
        say(r)
    return "3 x 1 s of waiting, done concurrently"


# -- 2. return_exceptions: keep going when one fails ----------------------------------------


async def risky(n: int) -> int:
    if n == 0:
        raise ValueError("can't process zero")
    await asyncio.sleep(0.1)
    return n * 10


async def return_exceptions_stop() -> str:
    results = await asyncio.gather(risky(1), risky(0), risky(3), return_exceptions=True)
    for r in results:
        say(f"error: {r}" if isinstance(r, Exception) else f"result: {r}")
    failures = sum(isinstance(r, Exception) for r in results)
    return f"{len(results) - failures} results, {failures} error kept in place"


# -- 3. a background task, cancelled when no longer needed ----------------------------------


async def background_stop() -> str:
    beats = 0

    async def heartbeat() -> None:
        nonlocal beats
        while True:
            beats += 1
            await asyncio.sleep(0.1)

    task = asyncio.create_task(heartbeat())
    say("doing the main work while a heartbeat runs in the background...")
    await asyncio.sleep(0.5)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        say(f"heartbeat cancelled after {beats} beats")
    return f"task.cancelled() = {task.cancelled()}"


# -- 4. wait_for: give up on slow work ----------------------------------------------------


async def timeout_stop() -> str:
    async def slow_task() -> str:
        await asyncio.sleep(5)
        return "done"

    try:
        await asyncio.wait_for(slow_task(), timeout=0.3)
    except TimeoutError:
        say("too slow! (the 5 s task was cancelled after 0.3 s)")
    return "TimeoutError raised, inner task cancelled"


# -- 5. TaskGroup: one failure cancels the siblings ------------------------------------------


async def taskgroup_stop() -> str:
    cancelled: list[str] = []

    async def fetch_user(user_id: int) -> str:
        try:
            await asyncio.sleep(0.05 * user_id)
            if user_id == 2:
                raise ConnectionError(f"user {user_id}: connection reset")
            await asyncio.sleep(1)
            return f"user {user_id}"
        except asyncio.CancelledError:
            cancelled.append(f"user {user_id}")
            raise

    try:
        async with asyncio.TaskGroup() as tg:
            for user_id in (1, 2, 3):
                tg.create_task(fetch_user(user_id))
    except* ConnectionError as group:
        for exc in group.exceptions:
            say(f"failed: {exc}")
    say(f"cancelled siblings: {', '.join(sorted(cancelled))}")
    return "ExceptionGroup raised, siblings cancelled"


# -- 6. Semaphore: 500 requests, at most 10 at a time ----------------------------------------


async def semaphore_stop() -> str:
    sem = asyncio.Semaphore(10)
    in_flight = peak = 0

    async def fetch_limited(i: int) -> dict[str, int]:
        nonlocal in_flight, peak
        async with sem:
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(random.uniform(0.005, 0.015))  # simulated request
            in_flight -= 1
            return {"id": i}

    results = await asyncio.gather(*(fetch_limited(i) for i in range(500)))
    say(f"{len(results)} responses, never more than {peak} in flight")
    return "bounded fan-out"


# -- 7. run_in_executor: blocking code without blocking the loop -----------------------------


async def executor_stop() -> str:
    loop = asyncio.get_running_loop()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.05)

    t = asyncio.create_task(ticker())
    await loop.run_in_executor(None, time.sleep, 1)  # a blocking call, in a thread
    t.cancel()
    say(f"the loop ticked {ticks} times while time.sleep(1) ran in a thread")
    return "loop stayed responsive"


# -- 8. Queue: producer and consumers ---------------------------------------------------------


async def queue_stop() -> str:
    queue: asyncio.Queue[int] = asyncio.Queue(maxsize=10)
    handled: dict[str, int] = {}

    async def consumer(name: str) -> None:
        while True:
            await queue.get()
            await asyncio.sleep(0.005)
            handled[name] = handled.get(name, 0) + 1
            queue.task_done()

    workers = [asyncio.create_task(consumer(f"worker-{i}")) for i in range(3)]
    for job in range(60):
        await queue.put(job)
    await queue.join()
    for w in workers:
        w.cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    for name, count in sorted(handled.items()):
        say(f"{name} handled {count} jobs")
    return f"{sum(handled.values())} jobs through a queue of 10"


# -- 9. contextvars follow tasks and callbacks ----------------------------------------------


request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


async def contextvars_stop() -> str:
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    async def handle(rid: str) -> str:
        request_id.set(rid)
        await asyncio.sleep(0.01)
        loop.call_soon(lambda: say(f"callback scheduled by {rid} sees {request_id.get()}"))
        child = asyncio.create_task(log_from_child())
        return await child

    async def log_from_child() -> str:
        return request_id.get()

    seen = await asyncio.gather(*(handle(f"req-{i}") for i in range(3)))
    loop.call_later(0.01, done.set_result, None)
    await done
    say(f"child tasks saw: {', '.join(seen)}")
    return f"main still sees request_id={request_id.get()!r}"


# -- 10. sequential vs concurrent --------------------------------------------------------------


async def sequential_vs_concurrent_stop() -> str:
    start = time.perf_counter()
    await fetch_data("api/users", 0.3)
    await fetch_data("api/posts", 0.3)
    sequential = time.perf_counter() - start
    start = time.perf_counter()
    await asyncio.gather(fetch_data("api/users", 0.3), fetch_data("api/posts", 0.3))
    concurrent = time.perf_counter() - start
    say(f"one after the other: {sequential:.2f}s")
    say(f"concurrently:        {concurrent:.2f}s")
    return f"{sequential / concurrent:.1f}x faster together"


async def serve_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A tiny HTTP/1.1 server: answers every request with the requested path."""
    while request_line := await reader.readline():
        while (await reader.readline()) not in (b"\r\n", b""):
            pass  # skip the headers
        body = request_line.split()[1]
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
    writer.close()


async def http_get(host: str, port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    length = 0
    while (line := await reader.readline()) != b"\r\n":
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    body = await reader.readexactly(length)
    writer.close()
    await writer.wait_closed()
    return body


async def http_stop() -> str:
    server = await asyncio.start_server(serve_http, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    semaphore = asyncio.Semaphore(10)

    async def fetch(i: int) -> bytes:
        async with semaphore:
            return await http_get(host, port, f"/items/{i}")

    async with server:
        bodies = await asyncio.gather(*(fetch(i) for i in range(200)))
    assert bodies == [f"/items/{i}".encode() for i in range(200)]
    say(f"a server on {host}:{port}, 200 GETs, at most 10 connections at a time")
    return "all 200 answered, in order"


async def main() -> None:
    loop = asyncio.get_running_loop()
    cls = type(loop)
    print(f"ferroloop {ferroloop.__version__}, event loop: {cls.__module__}.{cls.__qualname__}")
    stops: list[tuple[str, Callable[[], Awaitable[str]]]] = [
        ("gather: three 1 s downloads", gather_stop),
        ("gather(return_exceptions=True)", return_exceptions_stop),
        ("create_task + cancel: a background worker", background_stop),
        ("wait_for: a timeout", timeout_stop),
        ("TaskGroup: fail fast", taskgroup_stop),
        ("Semaphore(10): 500 simulated requests", semaphore_stop),
        ("run_in_executor: blocking code in a thread", executor_stop),
        ("Queue: one producer, three consumers", queue_stop),
        ("contextvars: per-request state", contextvars_stop),
        ("sequential vs concurrent", sequential_vs_concurrent_stop),
        ("real sockets: HTTP over 127.0.0.1", http_stop),
    ]
    total = 0.0
    for title, body in stops:
        total += await stop(title, body)
    banner("done")
    print(f"   {len(stops)} stops in {total:.2f}s")


if __name__ == "__main__":
    ferroloop.run(main())
