"""Resource leaks: file descriptors, threads, references held by the loop."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import os
import socket
import threading
import time
import warnings
import weakref

import pytest
from loop_helpers import run
from memory_helpers import memory_left_behind


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Payload:
    """Something we can hold a weak reference to."""


def test_create_and_close_1000_loops_leaks_no_fds(loop_factory):
    loop_factory().close()  # warm up lazy imports / one-time fds
    before = open_fds()
    for _ in range(1000):
        loop_factory().close()
    assert open_fds() == before


def test_loops_with_pending_work_closed_leak_no_fds(loop_factory):
    loop_factory().close()
    before = open_fds()
    for _ in range(200):
        lp = loop_factory()
        lp.call_soon(print, "never")
        lp.call_later(10, print, "never")
        lp.call_soon_threadsafe(print, "never")
        lp.close()
    assert open_fds() == before


def test_loops_with_registered_readers_closed_leak_no_fds(loop_factory):
    a, b = socket.socketpair()
    try:
        loop_factory().close()
        before = open_fds()
        for _ in range(200):
            lp = loop_factory()
            lp.add_reader(a, lambda: None)
            lp.add_writer(b, lambda: None)
            lp.close()
        assert open_fds() == before
        # The watched sockets themselves were not closed by the loop.
        a.send(b"x")
        assert b.recv(1) == b"x"
    finally:
        a.close()
        b.close()


def test_loops_that_ran_leak_no_fds_or_threads(loop_factory):
    async def main():
        lp = asyncio.get_running_loop()
        await lp.run_in_executor(None, time.sleep, 0)
        await asyncio.sleep(0)

    run(loop_factory, main)
    gc.collect()
    fds_before = open_fds()
    threads_before = threading.active_count()
    for _ in range(100):
        run(loop_factory, main)
    gc.collect()
    assert open_fds() == fds_before
    assert threading.active_count() <= threads_before


def test_unclosed_loop_warns_and_releases_fds_when_collected(loop_factory):
    loop_factory().close()
    before = open_fds()
    lp = loop_factory()
    assert open_fds() >= before
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del lp
        gc.collect()
    assert any(issubclass(w.category, ResourceWarning) for w in caught)
    assert open_fds() == before


def test_callback_args_released_after_run(loop):
    payload = Payload()
    ref = weakref.ref(payload)
    loop.call_soon(lambda p: None, payload)
    del payload
    loop.run_until_complete(asyncio.sleep(0))
    gc.collect()
    assert ref() is None


def test_timer_args_released_after_run(loop):
    payload = Payload()
    ref = weakref.ref(payload)
    loop.call_later(0.001, lambda p: None, payload)
    del payload
    loop.run_until_complete(asyncio.sleep(0.01))
    gc.collect()
    assert ref() is None


def test_cancelled_timer_args_released(loop):
    payload = Payload()
    ref = weakref.ref(payload)
    h = loop.call_later(3600, lambda p: None, payload)
    del payload
    h.cancel()
    del h
    loop.run_until_complete(asyncio.sleep(0))
    gc.collect()
    assert ref() is None


def test_pending_callback_args_released_on_close(loop):
    payloads = [Payload() for _ in range(3)]
    refs = [weakref.ref(p) for p in payloads]
    loop.call_soon(lambda p: None, payloads[0])
    loop.call_later(3600, lambda p: None, payloads[1])
    loop.call_soon_threadsafe(lambda p: None, payloads[2])
    del payloads
    loop.close()
    gc.collect()
    assert [r() for r in refs] == [None, None, None]


def test_reader_args_released_after_remove(loop):
    a, b = socket.socketpair()
    try:
        payload = Payload()
        ref = weakref.ref(payload)
        loop.add_reader(a, lambda p: None, payload)
        del payload
        assert loop.remove_reader(a) is True
        gc.collect()
        assert ref() is None
    finally:
        a.close()
        b.close()


HELD = contextvars.ContextVar("held")


@pytest.mark.parametrize(
    "schedule",
    [
        pytest.param(lambda lp, cb, arg: lp.call_soon(cb, arg), id="call_soon"),
        pytest.param(lambda lp, cb, arg: lp.call_later(0.001, cb, arg), id="call_later"),
    ],
)
def test_cycle_through_a_handles_own_context_is_collected(loop, schedule):
    # The callback stores its own handle in the context copy it runs in:
    # handle -> context -> handle, plus a payload we can watch.
    box = {}

    def remember_myself(payload):
        HELD.set((box["handle"], payload))

    payload = Payload()
    ref = weakref.ref(payload)
    box["handle"] = schedule(loop, remember_myself, payload)
    handle_ref = weakref.ref(box["handle"])
    del payload
    loop.run_until_complete(asyncio.sleep(0.01))
    del box["handle"]
    gc.collect()
    assert handle_ref() is None
    assert ref() is None


@pytest.mark.parametrize("nargs", [1, 2], ids=["one_argument", "two_arguments"])
def test_cycle_through_a_spent_handles_arguments_is_collected(loop, nargs):
    # A spent handle keeps its callback and arguments (asyncio's does too):
    # payload -> handle -> arguments -> payload must still be collectable,
    # however the arguments are stored.
    payload = Payload()
    ref = weakref.ref(payload)
    payload.handle = loop.call_soon(lambda *args: None, *[payload] * nargs)
    loop.run_until_complete(asyncio.sleep(0))
    assert payload.handle._args == (payload,) * nargs
    del payload
    gc.collect()
    assert ref() is None


def test_many_pending_callbacks_keep_their_context_values(loop):
    # Pending handles' contexts are left out of the collector while queued:
    # a full collection in the middle must not disturb them.
    seen = []
    for i in range(2000):
        HELD.set(i)
        loop.call_soon(lambda i=i: seen.append(HELD.get() == i))
    gc.collect()
    loop.run_until_complete(asyncio.sleep(0))
    assert len(seen) == 2000 and all(seen)


def test_loop_itself_is_collectable_after_close(loop_factory):
    lp = loop_factory()
    lp.run_until_complete(asyncio.sleep(0))
    lp.call_soon(lambda: None)
    lp.close()
    ref = weakref.ref(lp)
    del lp
    gc.collect()
    assert ref() is None


def test_loop_that_ran_is_freed_without_the_collector(loop_factory):
    """A loop keeps no reference cycle through itself after it stops: once
    closed and dropped, it goes at once, with the cyclic collector off."""

    async def main():
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        loop.call_soon(fut.set_result, None)
        await fut
        await loop.create_task(asyncio.sleep(0))

    gc.collect()
    gc.disable()
    try:
        lp = loop_factory()
        lp.run_until_complete(main())
        lp.close()
        ref = weakref.ref(lp)
        del lp
        assert ref() is None
    finally:
        gc.enable()


def test_many_loops_do_not_grow_python_memory(loop_factory):
    def cycle():
        lp = loop_factory()
        lp.run_until_complete(asyncio.sleep(0))
        lp.close()

    def cycles() -> None:
        for _ in range(500):
            cycle()

    for _ in range(50):
        cycle()
    # A leak would leave blocks behind on most of the 500 cycles; a tenth is enough.
    left = memory_left_behind(cycles, min_blocks=50)
    assert left < 500_000, f"grew by {left} bytes over 500 loops"


def test_finished_tasks_do_not_accumulate(loop):
    async def short():
        return Payload()

    async def main():
        for _ in range(1000):
            await asyncio.create_task(short())

    loop.run_until_complete(main())
    gc.collect()
    assert len(asyncio.all_tasks(loop)) == 0
    assert not any(isinstance(o, Payload) for o in gc.get_objects())
