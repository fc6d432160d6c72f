"""run_in_executor and the default executor; Unix signal handlers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from loop_helpers import run

# -- executor -------------------------------------------------------------------------


def test_run_in_executor_result_and_exception(loop_factory):
    def boom():
        raise KeyError("in thread")

    async def main():
        lp = asyncio.get_running_loop()
        fut = lp.run_in_executor(None, pow, 2, 10)
        assert isinstance(fut, asyncio.Future)
        result = await fut
        with pytest.raises(KeyError):
            await lp.run_in_executor(None, boom)
        return result

    assert run(loop_factory, main) == 1024


def test_run_in_executor_runs_in_another_thread(loop_factory):
    async def main():
        return await asyncio.get_running_loop().run_in_executor(None, threading.get_ident)

    assert run(loop_factory, main) != threading.get_ident()


def test_run_in_explicit_executor(loop_factory):
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="explicit") as pool:

        async def main():
            lp = asyncio.get_running_loop()
            return await lp.run_in_executor(pool, lambda: threading.current_thread().name)

        assert run(loop_factory, main).startswith("explicit")


def test_set_default_executor(loop):
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="custom-default")
    loop.set_default_executor(pool)

    async def main():
        lp = asyncio.get_running_loop()
        names = await asyncio.gather(
            *(lp.run_in_executor(None, lambda: threading.current_thread().name) for _ in range(5))
        )
        await lp.shutdown_default_executor()
        return names

    names = loop.run_until_complete(main())
    assert all(n.startswith("custom-default") for n in names)
    # shutdown_default_executor() shut our pool down.
    with pytest.raises(RuntimeError):
        pool.submit(print)


def test_set_default_executor_rejects_non_thread_pool(loop):
    with pytest.raises(TypeError):
        loop.set_default_executor(object())


def test_many_executor_jobs_concurrently(loop_factory):
    async def main():
        lp = asyncio.get_running_loop()
        start = time.perf_counter()
        results = await asyncio.gather(
            *(lp.run_in_executor(None, lambda i=i: (time.sleep(0.05), i)[1]) for i in range(50))
        )
        return results, time.perf_counter() - start

    results, elapsed = run(loop_factory, main)
    assert results == list(range(50))
    assert elapsed < 2.5  # 50 x 50 ms sequentially would be 2.5 s


def test_cancelling_executor_future_is_harmless(loop_factory, caplog):
    release = threading.Event()

    async def main():
        lp = asyncio.get_running_loop()
        fut = lp.run_in_executor(None, release.wait, 5)
        await asyncio.sleep(0.01)
        fut.cancel()
        with pytest.raises(asyncio.CancelledError):
            await fut
        release.set()
        await asyncio.sleep(0.05)  # let the thread finish and report back

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        run(loop_factory, main)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_shutdown_default_executor_waits_then_refuses_new_jobs(loop_factory):
    finished = []

    async def main():
        lp = asyncio.get_running_loop()
        lp.run_in_executor(None, lambda: (time.sleep(0.1), finished.append(1)))
        await lp.shutdown_default_executor()
        assert finished == [1]
        with pytest.raises(RuntimeError):
            lp.run_in_executor(None, print)

    run(loop_factory, main)


def test_job_cancelled_before_it_starts_never_runs(loop_factory):
    ran = []
    gate = threading.Event()

    async def main():
        lp = asyncio.get_running_loop()
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            blocker = lp.run_in_executor(pool, gate.wait, 5)
            queued = lp.run_in_executor(pool, ran.append, "queued")
            queued.cancel()
            await asyncio.sleep(0)  # asyncio passes the cancel on in a callback
            gate.set()
            await blocker
            await asyncio.sleep(0.05)
        assert queued.cancelled()

    run(loop_factory, main)
    assert ran == []


def test_default_executor_threads_are_named_like_asyncios(loop_factory):
    async def main():
        lp = asyncio.get_running_loop()
        return await lp.run_in_executor(None, lambda: threading.current_thread().name)

    assert run(loop_factory, main).startswith("asyncio_")


def test_executor_exception_types_are_asyncios(loop_factory):
    def raise_concurrent_cancel():
        raise concurrent.futures.CancelledError("from the job")

    def raise_system_exit():
        raise SystemExit(3)

    async def main():
        lp = asyncio.get_running_loop()
        with pytest.raises(asyncio.CancelledError):
            await lp.run_in_executor(None, raise_concurrent_cancel)
        with pytest.raises(SystemExit):
            await lp.run_in_executor(None, raise_system_exit)

    run(loop_factory, main)


def test_pool_shutdown_with_cancel_futures_cancels_queued_jobs(loop_factory):
    gate = threading.Event()

    async def main():
        lp = asyncio.get_running_loop()
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        blocker = lp.run_in_executor(pool, gate.wait, 5)
        queued = [lp.run_in_executor(pool, time.sleep, 0) for _ in range(3)]
        await asyncio.sleep(0.02)
        pool.shutdown(wait=False, cancel_futures=True)
        gate.set()
        await blocker
        results = await asyncio.gather(*queued, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results), results
        with pytest.raises(RuntimeError, match="after shutdown"):
            lp.run_in_executor(pool, print)

    run(loop_factory, main)


def test_pool_with_failing_initializer_reports_broken_pool(loop_factory):
    def bad_initializer():
        raise ValueError("no")

    async def main():
        lp = asyncio.get_running_loop()
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, initializer=bad_initializer)
        try:
            with pytest.raises(concurrent.futures.thread.BrokenThreadPool):
                await asyncio.wait_for(lp.run_in_executor(pool, print), 5)
        finally:
            pool.shutdown(wait=True)

    logging.getLogger("concurrent.futures").disabled = True
    try:
        run(loop_factory, main)
    finally:
        logging.getLogger("concurrent.futures").disabled = False


def test_thread_pool_subclass_submit_is_honoured(loop_factory):
    class CountingPool(concurrent.futures.ThreadPoolExecutor):
        submitted = 0

        def submit(self, fn, /, *args, **kwargs):
            CountingPool.submitted += 1
            return super().submit(fn, *args, **kwargs)

    async def main():
        lp = asyncio.get_running_loop()
        with CountingPool(max_workers=2) as pool:
            assert await lp.run_in_executor(pool, pow, 2, 5) == 32

    run(loop_factory, main)
    assert CountingPool.submitted == 1


def test_loop_closed_while_job_runs_is_harmless(loop_factory):
    gate = threading.Event()
    finished = threading.Event()
    lp = loop_factory()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)

    def job():
        gate.wait(5)
        finished.set()
        return 1

    async def start():
        return lp.run_in_executor(pool, job)

    lp.run_until_complete(start())
    lp.close()
    gate.set()
    assert finished.wait(5)
    pool.shutdown(wait=True)


# -- signals ---------------------------------------------------------------------------


def wait_for_flag(loop, predicate, timeout: float = 5.0) -> None:
    async def waiter():
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, "timed out"
            await asyncio.sleep(0.005)

    loop.run_until_complete(waiter())


def test_add_signal_handler_sigusr1(loop):
    got = []

    def handler(*args):
        got.append((args, asyncio.get_running_loop() is loop))

    loop.add_signal_handler(signal.SIGUSR1, handler, "arg1", 2)
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        wait_for_flag(loop, lambda: got)
        assert got == [(("arg1", 2), True)]
    finally:
        assert loop.remove_signal_handler(signal.SIGUSR1) is True
    assert loop.remove_signal_handler(signal.SIGUSR1) is False
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_signal_handler_replaced(loop):
    got = []
    loop.add_signal_handler(signal.SIGUSR2, got.append, "old")
    loop.add_signal_handler(signal.SIGUSR2, got.append, "new")
    try:
        os.kill(os.getpid(), signal.SIGUSR2)
        wait_for_flag(loop, lambda: got)
        assert got == ["new"]
    finally:
        loop.remove_signal_handler(signal.SIGUSR2)


def test_signal_wakes_sleeping_loop_promptly(loop):
    got = []
    loop.add_signal_handler(signal.SIGUSR1, lambda: (got.append(1), loop.stop()))

    def send():
        time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGUSR1)

    t = threading.Thread(target=send)
    guard = loop.call_later(30, loop.stop)
    start = time.perf_counter()
    t.start()
    try:
        loop.run_forever()
    finally:
        t.join()
        guard.cancel()
        loop.remove_signal_handler(signal.SIGUSR1)
    assert got == [1]
    assert time.perf_counter() - start < 2


def test_repeated_signals_all_handled(loop):
    got = []
    loop.add_signal_handler(signal.SIGUSR1, got.append, 1)
    try:
        for i in range(5):
            os.kill(os.getpid(), signal.SIGUSR1)
            wait_for_flag(loop, lambda i=i: len(got) == i + 1)
        assert got == [1] * 5
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)


def test_remove_sigint_handler_restores_default_int_handler(loop):
    loop.add_signal_handler(signal.SIGINT, lambda: None)
    try:
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    finally:
        assert loop.remove_signal_handler(signal.SIGINT) is True
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_close_removes_signal_handlers(loop):
    loop.add_signal_handler(signal.SIGUSR1, lambda: None)
    loop.close()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


@pytest.mark.parametrize(
    ("sig", "exc_type"),
    [
        (0, ValueError),
        (-1, ValueError),
        (9999, ValueError),
        ("SIGUSR1", TypeError),
        (1.5, TypeError),
        (signal.SIGKILL, RuntimeError),
        (signal.SIGSTOP, RuntimeError),
    ],
    ids=["zero", "negative", "too-big", "str", "float", "SIGKILL", "SIGSTOP"],
)
def test_add_signal_handler_invalid_signal(loop, sig, exc_type):
    with pytest.raises(exc_type):
        loop.add_signal_handler(sig, lambda: None)


@pytest.mark.parametrize(
    ("sig", "exc_type"),
    [(0, ValueError), (9999, ValueError), ("SIGUSR1", TypeError)],
    ids=["zero", "too-big", "str"],
)
def test_remove_signal_handler_invalid_signal(loop, sig, exc_type):
    with pytest.raises(exc_type):
        loop.remove_signal_handler(sig)


def test_add_signal_handler_rejects_coroutines(loop):
    async def coro_fn():
        pass

    with pytest.raises(TypeError):
        loop.add_signal_handler(signal.SIGUSR1, coro_fn)
    coro = coro_fn()
    try:
        with pytest.raises(TypeError):
            loop.add_signal_handler(signal.SIGUSR1, coro)
    finally:
        coro.close()
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


def test_add_signal_handler_after_close_raises(loop):
    loop.close()
    with pytest.raises(RuntimeError):
        loop.add_signal_handler(signal.SIGUSR1, lambda: None)


def test_add_signal_handler_outside_main_thread_raises(loop_factory):
    errors = []

    def worker():
        lp = loop_factory()
        try:
            lp.add_signal_handler(signal.SIGUSR1, lambda: None)
        except Exception as exc:
            errors.append(exc)
        finally:
            lp.close()

    t = threading.Thread(target=worker)
    t.start()
    t.join(10)
    assert len(errors) == 1
    assert isinstance(errors[0], RuntimeError)
    assert signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL


SIGINT_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys

    async def main():
        print("ready", flush=True)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            print("main cancelled", flush=True)
            raise

    if sys.argv[1] == "ferroloop":
        import ferroloop
        ferroloop.run(main())
    else:
        asyncio.run(main())
    print("not reached", flush=True)
    """
)


def test_sigint_cancels_main_task_and_raises_keyboard_interrupt(loop_name):
    proc = subprocess.Popen(
        [sys.executable, "-c", SIGINT_SCRIPT, loop_name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "main cancelled" in out
    assert "not reached" not in out
    assert "KeyboardInterrupt" in err
    # Python dies "by SIGINT" after an uncaught KeyboardInterrupt.
    assert proc.returncode == -signal.SIGINT, (proc.returncode, err)


def test_second_sigint_while_cancelling_still_exits(loop_name):
    script = SIGINT_SCRIPT.replace(
        'print("main cancelled", flush=True)',
        'print("main cancelled", flush=True)\n        await asyncio.sleep(30)',
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, loop_name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        assert proc.stdout.readline().strip() == "main cancelled"
        # Let the cancelled task reach its second sleep: a signal landing
        # while the first interrupt is still being handled was once lost on
        # asyncio's own loop (the test timed out there).
        time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "KeyboardInterrupt" in err
    assert proc.returncode != 0


def test_signal_received_while_loop_not_running_is_handled_on_next_run(loop):
    got = []
    loop.add_signal_handler(signal.SIGUSR1, got.append, "late")
    try:
        os.kill(os.getpid(), signal.SIGUSR1)  # the loop is not running now
        assert got == []
        wait_for_flag(loop, lambda: got)
        assert got == ["late"]
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)


def test_signal_handler_exception_goes_to_handler(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    def bad():
        raise ValueError("in signal handler")

    loop.add_signal_handler(signal.SIGUSR1, bad)
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        wait_for_flag(loop, lambda: contexts)
        assert isinstance(contexts[0]["exception"], ValueError)
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)


def test_signal_handler_runs_while_only_native_callbacks_keep_the_loop_busy(loop):
    # A callback that reschedules itself without running any Python bytecode:
    # the handler cannot ride on the interpreter's own between-bytecodes check,
    # the loop must run it. The kernel sends the signal (a CPU-time timer):
    # no other Python thread can run while such a loop holds the GIL.
    import faulthandler
    import functools

    spin = functools.partial(loop.call_soon)
    spin.__setstate__((loop.call_soon, (spin,), {}, None))

    handled = []

    def on_signal(signum, frame):
        handled.append(signum)
        loop.stop()

    previous = signal.signal(signal.SIGVTALRM, on_signal)
    # pytest-timeout's handler could not run either: end the process instead.
    faulthandler.dump_traceback_later(30, exit=True)
    try:
        loop.call_soon(spin)
        signal.setitimer(signal.ITIMER_VIRTUAL, 0.05)
        loop.run_forever()
        assert handled == [signal.SIGVTALRM]
    finally:
        faulthandler.cancel_dump_traceback_later()
        signal.setitimer(signal.ITIMER_VIRTUAL, 0)
        signal.signal(signal.SIGVTALRM, previous)
        spin.__setstate__((print, (), {}, None))  # break the self-reference


@pytest.mark.parametrize("switch_interval", [None, 0.02])
def test_other_threads_run_while_only_native_callbacks_keep_the_loop_busy(loop, switch_interval):
    # The same kind of busy loop: a thread must still get the GIL to stop it,
    # whatever the interpreter's switch interval (ferroloop reads it per run).
    import faulthandler
    import functools

    default_interval = sys.getswitchinterval()

    spin = functools.partial(loop.call_soon)
    spin.__setstate__((loop.call_soon, (spin,), {}, None))
    stopper = threading.Timer(0.05, loop.call_soon_threadsafe, (loop.stop,))
    # If the thread never ran, nothing would stop the loop, nor could
    # pytest-timeout (its handler needs bytecode too): end the process instead.
    faulthandler.dump_traceback_later(30, exit=True)
    try:
        if switch_interval is not None:
            sys.setswitchinterval(switch_interval)
        loop.call_soon(spin)
        started = time.monotonic()
        stopper.start()
        loop.run_forever()
        took = time.monotonic() - started
    finally:
        sys.setswitchinterval(default_interval)
        faulthandler.cancel_dump_traceback_later()
        stopper.cancel()
        spin.__setstate__((print, (), {}, None))  # break the self-reference
    stopper.join()
    # A timer of 0.05 s, and a switch interval or two to get the GIL; not the
    # seconds a thread waits when its requests for the GIL are never seen.
    assert took < 5
