"""Errors: exception handlers, BaseExceptions escaping, bad input, debug mode.

For bad input the rule is simple: ferroloop raises the same exception type as
asyncio. Where asyncio only validates in debug mode (callbacks passed to the
call_* methods and run_in_executor), the check is tested in debug mode on both
loops; in normal mode asyncio accepts the bad callback and reports the failure
to the exception handler when it is called, which is not pinned down here.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import inspect
import logging
import math
import os
import re
import socket
import sys
import tempfile
import threading
import time

import pytest
from loop_helpers import only_ferroloop, run, run_python


def _noop(*args):
    pass


async def _coro_fn():
    pass


def run_briefly(loop, duration: float = 0.01) -> None:
    loop.run_until_complete(asyncio.sleep(duration))


# -- exception handler ----------------------------------------------------------------


def test_exception_in_callback_goes_to_handler_and_loop_keeps_running(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append((lp, ctx)))
    out = []

    def bad():
        raise ZeroDivisionError("in callback")

    h = loop.call_soon(bad)
    loop.call_soon(out.append, "after-soon")
    loop.call_later(0.001, bad)
    loop.call_later(0.002, out.append, "after-timer")
    run_briefly(loop, 0.02)
    assert out == ["after-soon", "after-timer"]
    assert len(contexts) == 2
    lp, ctx = contexts[0]
    assert lp is loop
    assert isinstance(ctx["exception"], ZeroDivisionError)
    assert ctx["message"].startswith("Exception in callback")
    assert ctx["handle"] is h
    assert isinstance(contexts[1][1]["exception"], ZeroDivisionError)


def _fails_with(*args):
    raise ZeroDivisionError(args)


_LINE_FAILS = _fails_with.__code__.co_firstlineno


def _schedule_failing(loop):
    # One call site, so that debug-mode reprs name the same "created at" line.
    return loop.call_soon(_fails_with, "secret", 42)


@pytest.mark.parametrize("debug", [False, True])
def test_callback_error_message_and_handle_repr_read_as_asyncios(loop_factory, debug):
    # From 3.13 asyncio shows a callback's arguments only in debug mode (gh-112997).
    def scenario():
        loop = loop_factory()
        try:
            loop.set_debug(debug)
            messages, reported = [], []

            def handler(lp, ctx):
                messages.append(ctx["message"])
                reported.append(repr(ctx["handle"]))

            loop.set_exception_handler(handler)
            handle = _schedule_failing(loop)
            described = repr(handle)
            run_briefly(loop)
            # The handle in the report, and afterwards, still names its callback.
            return messages, described, reported, repr(handle)
        finally:
            loop.close()

    messages, described, reported, described_after = scenario()
    reference = asyncio.SelectorEventLoop()
    try:
        reference.set_debug(debug)
        expected_repr = repr(_schedule_failing(reference))
    finally:
        reference.close()
    shown = "('secret', 42)" if debug or sys.version_info < (3, 13) else "()"
    assert messages == [f"Exception in callback _fails_with{shown} at {__file__}:{_LINE_FAILS}"]
    assert described == expected_repr
    assert reported == [expected_repr]
    assert described_after == expected_repr


def test_a_failing_timer_in_the_report_names_its_callback(loop):
    reported = []
    loop.set_exception_handler(lambda lp, ctx: reported.append(repr(ctx["handle"])))
    loop.call_later(0.001, _fails_with, "secret")
    run_briefly(loop, 0.02)
    assert len(reported) == 1
    assert reported[0].startswith("<TimerHandle when=")
    assert "_fails_with(" in reported[0]


def test_default_handler_logs_callback_errors(loop, caplog):
    def bad():
        raise ZeroDivisionError("logged")

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_soon(bad)
        run_briefly(loop)
    records = [r for r in caplog.records if r.name == "asyncio"]
    assert len(records) == 1
    assert "Exception in callback" in records[0].getMessage()
    assert records[0].exc_info is not None
    assert records[0].exc_info[0] is ZeroDivisionError


def test_get_set_exception_handler(loop):
    assert loop.get_exception_handler() is None

    def handler(lp, ctx):
        pass

    loop.set_exception_handler(handler)
    assert loop.get_exception_handler() is handler
    loop.set_exception_handler(None)
    assert loop.get_exception_handler() is None
    with pytest.raises(TypeError):
        loop.set_exception_handler(1)
    assert loop.get_exception_handler() is None


def test_call_exception_handler_uses_custom_handler(loop):
    seen = []
    loop.set_exception_handler(lambda lp, ctx: seen.append(ctx))
    ctx = {"message": "custom", "exception": ValueError("x"), "extra": 1}
    loop.call_exception_handler(ctx)
    assert seen == [ctx]


def test_default_exception_handler_logs_message_and_extra_keys(loop, caplog):
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.default_exception_handler({"message": "something broke", "spam": "eggs"})
        loop.call_exception_handler({"message": "via call", "exception": KeyError("k")})
    messages = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert len(messages) == 2
    assert "something broke" in messages[0]
    assert "spam" in messages[0] and "eggs" in messages[0]
    assert "via call" in messages[1]


def test_default_handler_called_from_custom_handler(loop, caplog):
    def handler(lp, ctx):
        lp.default_exception_handler(ctx)

    loop.set_exception_handler(handler)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_exception_handler({"message": "delegated"})
    assert any("delegated" in r.getMessage() for r in caplog.records)


def test_failing_exception_handler_is_logged_not_raised(loop, caplog):
    def handler(lp, ctx):
        raise RuntimeError("handler is broken")

    loop.set_exception_handler(handler)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.call_soon(lambda: 1 / 0)
        run_briefly(loop)
    messages = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert any("Unhandled error in exception handler" in m for m in messages)


def test_task_exception_never_retrieved_reported(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))

    async def fail():
        raise LookupError("nobody awaited me")

    async def main():
        asyncio.ensure_future(fail())  # noqa: RUF006 - dropped on purpose: must be collected
        await asyncio.sleep(0.01)

    loop.run_until_complete(main())
    gc.collect()
    run_briefly(loop)
    assert any(isinstance(c.get("exception"), LookupError) for c in contexts)
    assert any("never retrieved" in c["message"] for c in contexts)


# -- BaseExceptions escaping run_forever -------------------------------------------------


def test_exception_handler_runs_in_the_failed_callbacks_context(loop):
    """From 3.12 a custom handler runs in the context of the callback or task
    that failed (gh-96704); before, in the loop's own context."""
    name: contextvars.ContextVar[str] = contextvars.ContextVar("name", default="loop")
    seen: list[tuple[str, str]] = []

    def handler(_loop: asyncio.AbstractEventLoop, context: dict) -> None:
        seen.append((context["message"].split()[0], name.get()))

    def callback() -> None:
        name.set("callback")
        raise ZeroDivisionError

    async def failing_task() -> None:
        name.set("task")
        raise ZeroDivisionError

    async def main() -> None:
        loop.call_soon(callback)
        loop.create_task(failing_task())  # dropped: "never retrieved" on collection
        for _ in range(3):
            await asyncio.sleep(0)
        gc.collect()

    loop.set_exception_handler(handler)
    loop.run_until_complete(main())
    if sys.version_info >= (3, 12):
        assert sorted(seen) == [("Exception", "callback"), ("Task", "task")]
    else:
        assert sorted(seen) == [("Exception", "loop"), ("Task", "loop")]


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_base_exception_in_callback_propagates(loop, exc_type):
    out = []

    def bad():
        raise exc_type()

    loop.call_soon(out.append, 1)
    loop.call_soon(bad)
    loop.call_soon(out.append, 2)
    with pytest.raises(exc_type):
        loop.run_forever()
    assert out == [1]
    assert not loop.is_running()
    assert asyncio._get_running_loop() is None
    # The loop is still usable, and the callback queued after the failing one runs.
    run_briefly(loop)
    assert out == [1, 2]


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_base_exception_in_timer_propagates(loop, exc_type):
    def bad():
        raise exc_type()

    loop.call_later(0.001, bad)
    with pytest.raises(exc_type):
        loop.run_until_complete(asyncio.sleep(1))
    assert not loop.is_running()


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_base_exception_in_task_propagates(loop, exc_type):
    async def main():
        await asyncio.sleep(0)
        raise exc_type()

    with pytest.raises(exc_type):
        loop.run_until_complete(main())
    assert not loop.is_running()


def test_exception_handler_raising_keyboard_interrupt_propagates(loop):
    def handler(lp, ctx):
        raise KeyboardInterrupt

    loop.set_exception_handler(handler)
    loop.call_soon(lambda: 1 / 0)
    with pytest.raises(KeyboardInterrupt):
        loop.run_forever()


@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")
def test_close_with_pending_callbacks_and_tasks(loop):
    out = []

    async def never():
        await asyncio.sleep(3600)

    loop.call_soon(out.append, "soon")
    loop.call_later(100, out.append, "later")
    task = loop.create_task(never())
    loop.close()
    assert loop.is_closed()
    assert out == []
    assert not task.done()
    del task
    gc.collect()


# -- bad input: scheduling -----------------------------------------------------------------


def test_none_delay_and_when_raise_type_error(loop):
    with pytest.raises(TypeError, match=r"^delay must not be None$"):
        loop.call_later(None, _noop)
    with pytest.raises(TypeError, match=r"^when cannot be None$"):
        loop.call_at(None, _noop)


def test_string_delay_raises_type_error(loop):
    with pytest.raises(TypeError):
        loop.call_later("1", _noop)


@pytest.mark.parametrize("debug", [False, True], ids=["normal", "debug"])
def test_infinite_delay_is_accepted_and_never_fires(loop, debug):
    loop.set_debug(debug)
    out = []
    h = loop.call_later(math.inf, out.append, "inf")
    h2 = loop.call_at(math.inf, out.append, "inf-at")
    h3 = loop.call_later(1e300, out.append, "huge")
    assert h.when() == math.inf
    start = time.perf_counter()
    run_briefly(loop, 0.05)  # the loop must still wake for the sleep's own timer
    assert time.perf_counter() - start < 2
    assert out == []
    for handle in (h, h2, h3):
        handle.cancel()


@pytest.mark.parametrize("debug", [False, True], ids=["normal", "debug"])
def test_minus_infinite_delay_fires_promptly(loop, debug):
    loop.set_debug(debug)
    out = []
    loop.call_later(-math.inf, out.append, "-inf")
    run_briefly(loop, 0.01)
    assert out == ["-inf"]


@pytest.mark.parametrize("debug", [False, True], ids=["normal", "debug"])
def test_nan_delay_is_accepted_and_loop_keeps_working(loop, debug):
    """asyncio accepts NaN (and happens to run such a timer at once); the
    loop must not raise, hang or crash. When it fires is not pinned down."""
    loop.set_debug(debug)
    out = []
    h = loop.call_later(math.nan, out.append, "nan")
    h2 = loop.call_at(math.nan, out.append, "nan-at")
    loop.call_later(0.01, out.append, "normal")
    start = time.perf_counter()
    run_briefly(loop, 0.03)
    assert time.perf_counter() - start < 2
    assert "normal" in out
    h.cancel()
    h2.cancel()


def test_only_infinite_timer_pending_then_woken_from_thread(loop):
    """With only an infinite timer, the loop blocks but wakes for other threads."""
    loop.call_later(math.inf, _noop)

    def poke():
        time.sleep(0.1)
        loop.call_soon_threadsafe(loop.stop)

    t = threading.Thread(target=poke)
    start = time.perf_counter()
    t.start()
    loop.run_forever()
    t.join()
    assert time.perf_counter() - start < 2


BAD_CALLBACKS = {
    "int": 1,
    "None": None,
    "coroutine-function": _coro_fn,
}


def _schedulers(loop):
    return {
        "call_soon": lambda cb: loop.call_soon(cb),
        "call_soon_threadsafe": lambda cb: loop.call_soon_threadsafe(cb),
        "call_later": lambda cb: loop.call_later(0.01, cb),
        "call_at": lambda cb: loop.call_at(loop.time() + 0.01, cb),
        "run_in_executor": lambda cb: loop.run_in_executor(None, cb),
    }


@pytest.mark.parametrize("method", list(_schedulers(None)))
@pytest.mark.parametrize("bad", list(BAD_CALLBACKS))
def test_bad_callback_raises_type_error_in_debug_mode(loop, method, bad):
    loop.set_debug(True)
    with pytest.raises(TypeError):
        _schedulers(loop)[method](BAD_CALLBACKS[bad])


@pytest.mark.parametrize("method", list(_schedulers(None)))
def test_coroutine_object_as_callback_raises_type_error_in_debug_mode(loop, method):
    loop.set_debug(True)
    coro = _coro_fn()
    try:
        with pytest.raises(TypeError):
            _schedulers(loop)[method](coro)
    finally:
        coro.close()


def test_create_task_and_run_until_complete_reject_non_coroutines(loop):
    with pytest.raises(TypeError):
        loop.create_task(1)
    with pytest.raises(TypeError):
        loop.create_task(_coro_fn)
    with pytest.raises(TypeError):
        loop.run_until_complete(1)
    with pytest.raises(TypeError):
        loop.run_until_complete(_coro_fn)


def test_setters_reject_bad_values(loop):
    with pytest.raises(TypeError):
        loop.set_task_factory(1)
    with pytest.raises(TypeError, match=r"^executor must be ThreadPoolExecutor instance$"):
        loop.set_default_executor(1)


def _parameters(function):
    return [
        (p.name, p.kind, repr(p.default)) for p in inspect.signature(function).parameters.values()
    ]


def test_loop_methods_have_asyncios_signatures(loop):
    reference = asyncio.SelectorEventLoop()
    try:
        for name in dir(asyncio.AbstractEventLoop):
            if name.startswith("_"):
                continue
            if name == "create_task" and sys.version_info >= (3, 13, 3):
                continue  # asyncio's takes **kwargs from here; ours is listed without them
            expected = _parameters(getattr(reference, name))
            assert _parameters(getattr(loop, name)) == expected, name
    finally:
        reference.close()


#: Keyword arguments asyncio's loop methods gained, and the version that added them.
NEWER_KEYWORDS = [
    ("create_connection", "all_errors", (3, 12)),
    ("create_server", "keep_alive", (3, 13)),
    ("create_unix_server", "cleanup_socket", (3, 13)),
    ("shutdown_default_executor", "timeout", (3, 12)),
]


@pytest.mark.parametrize(("method", "keyword", "since"), NEWER_KEYWORDS)
def test_keywords_of_newer_pythons_are_unknown_before_them(loop, method, keyword, since):
    bound = getattr(loop, method)
    assert asyncio.iscoroutinefunction(bound)
    if sys.version_info >= (3, 12):  # inspect.markcoroutinefunction exists from 3.12
        assert inspect.iscoroutinefunction(bound)
    listed = keyword in inspect.signature(bound).parameters
    if sys.version_info >= since:
        assert listed
        return
    assert not listed
    # Raised by the call itself, before a coroutine exists, as for any unknown keyword.
    with pytest.raises(TypeError, match=keyword):
        bound(**{keyword: True})


# -- bad input: file descriptors -----------------------------------------------------------


class NoFileno:
    pass


class StrFileno:
    def fileno(self):
        return "x"


class NegativeFileno:
    def fileno(self):
        return -1


BAD_FDS = {
    "-1": (-1, ValueError),
    "str": ("x", ValueError),
    "float": (1.5, ValueError),
    "None": (None, ValueError),
    "object-without-fileno": (NoFileno(), ValueError),
    "fileno-returns-str": (StrFileno(), ValueError),
    "fileno-returns-negative": (NegativeFileno(), ValueError),
    "not-open-99999": (99999, OSError),
    "too-big-2**40": (2**40, OverflowError),
}


@pytest.mark.parametrize("debug", [False, True], ids=["normal", "debug"])
@pytest.mark.parametrize("method", ["add_reader", "add_writer"])
@pytest.mark.parametrize("case", list(BAD_FDS))
def test_add_reader_writer_invalid_fd(loop, method, case, debug):
    loop.set_debug(debug)
    fd, exc_type = BAD_FDS[case]
    with pytest.raises(exc_type):
        getattr(loop, method)(fd, _noop)
    # A failed registration leaves nothing behind.
    run_briefly(loop, 0)


@pytest.mark.parametrize("method", ["remove_reader", "remove_writer"])
@pytest.mark.parametrize("case", ["-1", "str", "float", "None", "object-without-fileno"])
def test_remove_reader_writer_invalid_fd(loop, method, case):
    fd, exc_type = BAD_FDS[case]
    with pytest.raises(exc_type):
        getattr(loop, method)(fd)


@pytest.mark.parametrize("method", ["remove_reader", "remove_writer"])
def test_remove_unregistered_fd_returns_false(loop, method):
    assert getattr(loop, method)(99999) is False


@pytest.mark.parametrize("method", ["add_reader", "add_writer"])
def test_add_reader_on_regular_file_raises_permission_error(loop, method):
    with tempfile.TemporaryFile() as f, pytest.raises(PermissionError):
        getattr(loop, method)(f.fileno(), _noop)


@pytest.mark.parametrize("method", ["add_reader", "add_writer"])
def test_add_reader_after_close_raises_runtime_error(loop, method):
    a, b = socket.socketpair()
    try:
        loop.close()
        with pytest.raises(RuntimeError):
            getattr(loop, method)(a, _noop)
    finally:
        a.close()
        b.close()


# -- debug mode -------------------------------------------------------------------------------


def test_get_set_debug(loop):
    assert loop.get_debug() is False
    loop.set_debug(True)
    assert loop.get_debug() is True
    loop.set_debug(False)
    assert loop.get_debug() is False


def test_runner_debug_flag(loop_factory):
    async def main():
        return asyncio.get_running_loop().get_debug()

    assert run(loop_factory, main, debug=True) is True
    assert run(loop_factory, main, debug=False) is False


DEBUG_PROBE = """
import asyncio, sys
name = sys.argv[1]
if name == "ferroloop":
    import ferroloop
    loop = ferroloop.new_event_loop()
else:
    loop = asyncio.new_event_loop()
print(type(loop).__module__.split(".")[0], loop.get_debug())
loop.close()
"""


@pytest.mark.parametrize(
    "how",
    [("env", {"PYTHONASYNCIODEBUG": "1"}, []), ("dev-mode", {}, ["-X", "dev"])],
    ids=["PYTHONASYNCIODEBUG", "X-dev"],
)
def test_debug_enabled_by_environment(loop_name, how):
    _, env, flags = how
    proc = run_python(*flags, "-c", DEBUG_PROBE, loop_name, env=env)
    assert proc.returncode == 0, proc.stderr
    module, debug = proc.stdout.split()
    assert module == loop_name
    assert debug == "True"
    plain = run_python("-c", DEBUG_PROBE, loop_name)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.split()[1] == "False"


def test_slow_callback_warning_in_debug_mode(loop, caplog):
    loop.set_debug(True)
    loop.slow_callback_duration = 0.05

    def slow_callback():
        time.sleep(0.1)

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.call_soon(slow_callback)
        run_briefly(loop)
    messages = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    slow = [m for m in messages if "took" in m and "seconds" in m]
    assert slow, messages
    assert "slow_callback" in slow[0]
    assert f"created at {__file__}:" in slow[0]


class _SlowReader(asyncio.Protocol):
    """Takes its time over data, as a slow protocol callback would."""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        time.sleep(0.1)
        self.seen.set_result(None)

    def datagram_received(self, data, addr):
        self.data_received(data)


async def _slow_read_on(kind):
    """A transport of `kind` whose protocol is slow to take one message."""
    loop = asyncio.get_running_loop()
    protocol = _SlowReader()
    protocol.seen = loop.create_future()
    if kind == "socket":
        server = await loop.create_server(lambda: protocol, "127.0.0.1", 0)
        peer = socket.create_connection(server.sockets[0].getsockname())
        peer.sendall(b"x")
        await protocol.seen
        peer.close()
        server.close()
    elif kind == "pipe":
        rfd, wfd = os.pipe()
        await loop.connect_read_pipe(lambda: protocol, open(rfd, "rb", buffering=0))
        os.write(wfd, b"x")
        await protocol.seen
        os.close(wfd)
    else:
        await loop.create_datagram_endpoint(lambda: protocol, local_addr=("127.0.0.1", 0))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.sendto(b"x", protocol.transport.get_extra_info("sockname"))
            await protocol.seen
    protocol.transport.close()
    await asyncio.sleep(0)
    return type(protocol.transport).__name__


@pytest.mark.parametrize("kind", ["socket", "pipe", "datagram"])
def test_slow_protocol_callback_warning_names_the_transport(loop, caplog, kind):
    loop.set_debug(True)
    loop.slow_callback_duration = 0.05
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        transport_class = loop.run_until_complete(_slow_read_on(kind))
    slow = [r.getMessage() for r in caplog.records if "took" in r.getMessage()]
    assert any(transport_class in message for message in slow), slow


def test_slow_protocol_factory_warning_in_debug_mode(loop, caplog):
    """Both loops warn; what they name differs (asyncio: its accept task;
    ferroloop: the server's accepting socket), and ferroloop's is pinned here."""
    loop.set_debug(True)
    loop.slow_callback_duration = 0.05

    made = loop.create_future()

    def slow_factory():
        time.sleep(0.1)
        made.set_result(None)
        return asyncio.Protocol()

    async def accept_one():
        server = await loop.create_server(slow_factory, "127.0.0.1", 0)
        listening_fd = server.sockets[0].fileno()
        _, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        await asyncio.wait_for(made, 10)
        await asyncio.sleep(0)  # the accept's own step ends after the factory
        writer.close()
        server.close()
        await server.wait_closed()
        return listening_fd

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        listening_fd = loop.run_until_complete(accept_one())
    slow = [r.getMessage() for r in caplog.records if "took" in r.getMessage()]
    assert slow, caplog.records
    if type(loop).__module__.startswith("ferroloop"):
        assert any(f"<Server accepting on fd={listening_fd}>" in message for message in slow), slow


def test_handles_made_in_debug_mode_say_where(loop):
    loop.set_debug(True)
    soon_line = inspect.currentframe().f_lineno + 1
    soon = loop.call_soon(_noop)
    later = loop.call_later(10, _noop)
    later_line = soon_line + 1
    assert repr(soon).endswith(f"created at {__file__}:{soon_line}>")
    assert repr(later).endswith(f"created at {__file__}:{later_line}>")
    loop.set_debug(False)
    quiet = loop.call_soon(_noop)
    assert "created at" not in repr(quiet)
    for handle in (soon, later, quiet):
        handle.cancel()


def test_cancelled_handles_keep_their_description_in_debug_mode(loop):
    # asyncio keeps the repr of the moment of cancel() in debug mode, callback included.
    loop.set_debug(True)
    line = inspect.currentframe().f_lineno + 1
    soon = loop.call_soon(_noop, 1)
    later = loop.call_later(10, _noop, 2)
    soon.cancel()
    later.cancel()
    assert soon._callback is None and later._callback is None
    where = f"created at {__file__}"
    assert re.fullmatch(rf"<Handle cancelled _noop\(1\) at .+ {where}:{line}>", repr(soon))
    assert re.fullmatch(
        rf"<TimerHandle cancelled when=[0-9.]+ _noop\(2\) at .+ {where}:{line + 1}>", repr(later)
    )
    loop.set_debug(False)
    quiet = loop.call_soon(_noop, 3)
    quiet.cancel()
    assert repr(quiet) == "<Handle cancelled>"


def test_no_slow_callback_warning_without_debug(loop, caplog):
    loop.slow_callback_duration = 0.01

    with caplog.at_level(logging.WARNING, logger="asyncio"):
        loop.call_soon(time.sleep, 0.05)
        run_briefly(loop)
    assert not [r for r in caplog.records if "took" in r.getMessage()]


def test_debug_mode_rejects_call_soon_from_other_thread(loop):
    loop.set_debug(True)
    errors = []

    def other_thread():
        try:
            loop.call_soon(_noop)
        except RuntimeError as exc:
            errors.append(exc)
        loop.call_soon_threadsafe(loop.stop)

    loop.call_soon(lambda: threading.Thread(target=other_thread).start())
    guard = loop.call_later(10, loop.stop)
    loop.run_forever()
    guard.cancel()
    assert len(errors) == 1


def test_debug_mode_enables_coroutine_origin_tracking(loop):
    before = sys.get_coroutine_origin_tracking_depth()
    loop.set_debug(True)

    async def main():
        return sys.get_coroutine_origin_tracking_depth()

    inside = loop.run_until_complete(main())
    assert inside > 0
    assert sys.get_coroutine_origin_tracking_depth() == before


class CustomBaseException(BaseException):
    """A BaseException that is neither KeyboardInterrupt nor SystemExit."""


def test_other_base_exceptions_in_callbacks_go_to_handler(loop):
    contexts = []
    loop.set_exception_handler(lambda lp, ctx: contexts.append(ctx))
    out = []

    def bad():
        raise CustomBaseException("not KI/SystemExit")

    loop.call_soon(bad)
    loop.call_soon(out.append, "still running")
    run_briefly(loop)
    assert out == ["still running"]
    assert len(contexts) == 1
    assert isinstance(contexts[0]["exception"], CustomBaseException)


@pytest.mark.parametrize(
    "method", ["call_soon", "call_soon_threadsafe", "call_later", "call_at", "add_reader"]
)
@pytest.mark.parametrize("bad", ["int", "coroutine-object"])
def test_ferroloop_rejects_non_callables_even_without_debug(loop, loop_name, method, bad):
    """ferroloop's documented stricter check (docs/compatibility.md): a non-callable or
    a coroutine object is a TypeError at the call site, also in normal mode.

    Only meaningful for ferroloop: asyncio accepts these outside debug mode and
    reports the failure when the callback runs.
    """
    only_ferroloop(loop_name, "asyncio checks callbacks in debug mode only")
    a, b = socket.socketpair()
    coro = _coro_fn()
    callback = 1 if bad == "int" else coro
    calls = {
        "call_soon": lambda: loop.call_soon(callback),
        "call_soon_threadsafe": lambda: loop.call_soon_threadsafe(callback),
        "call_later": lambda: loop.call_later(0.01, callback),
        "call_at": lambda: loop.call_at(loop.time() + 0.01, callback),
        "add_reader": lambda: loop.add_reader(a, callback),
    }
    try:
        assert not loop.get_debug()
        with pytest.raises(TypeError):
            calls[method]()
    finally:
        coro.close()
        a.close()
        b.close()
