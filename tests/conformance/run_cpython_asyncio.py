#!/usr/bin/env python3
"""Run CPython's own ``test.test_asyncio`` modules against ferroloop.

Every selected module runs in its own subprocess with the event-loop policy
replaced by a *counting* wrapper around either ferroloop's policy
(``--loop ferroloop``) or asyncio's default policy (``--loop asyncio``, the
baseline).  The wrapper counts the loops each test creates, so the summary
tells how many tests really ran on the loop under test: many test_asyncio
classes build ``TestLoop`` / ``BaseEventLoop`` / ``SelectorEventLoop``
objects directly or mock the loop's internals, and those never touch
ferroloop no matter which policy is installed.

Classes that are parametrised over a loop factory (``create_event_loop`` /
``new_loop``, one subclass per selector) are rewritten into one class whose
factory is ``asyncio.new_event_loop()`` -- i.e. the installed policy -- see
``ADAPTERS`` below.  The same rewriting is applied in both modes, so the
baseline runs the identical test set.

The child writes one JSON line per test start and result; the parent watches
that file, kills a child whose current test exceeds ``--test-timeout`` (or
that crashes, e.g. a segfault in native code), records that test as
``timeout``/``crash`` and restarts the module after it.  So one hang costs one
test, not the module.

Usage::

    PYTHONPATH=python python3 tests/conformance/run_cpython_asyncio.py \\
        --modules test_locks,test_queues --loop both --json out.json

Tests listed in ``excluded.txt`` (tests of CPython's private implementation)
are not run; they are reported as ``excluded``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
EXCLUDED_FILE = os.path.join(HERE, "excluded.txt")

DEFAULT_MODULES = [
    "test_futures",
    "test_futures2",
    "test_tasks",
    "test_locks",
    "test_queues",
    "test_pep492",
    "test_context",
    "test_runners",
    "test_taskgroups",
    "test_timeouts",
    "test_waitfor",
    "test_threads",
    "test_events",
    "test_base_events",
    "test_streams",
    "test_server",
    "test_sock_lowlevel",
    "test_subprocess",
    "test_sslproto",
    "test_ssl",
    "test_buffered_proto",
    "test_sendfile",
    "test_unix_events",
]

# Modules with loop-parametrised classes.  "drop": the per-selector variants of
# CPython (all of them build SelectorEventLoop(<selector>) explicitly).
# "add": (new class name, [bases from the module], factory method name or
# "setUp:loop", TestCase base the original concrete classes use).  The added class gets the factory
# ``asyncio.new_event_loop()``, which goes through the installed policy.
ADAPTERS: dict[str, dict[str, Any]] = {
    "test_events": {
        # UnixEventLoopTestsMixin also installs a SafeChildWatcher through
        # policy.set_child_watcher(); that is asyncio's own child-watcher
        # machinery, so the policy loop runs the mixins without it.
        "drop": [
            "SelectEventLoopTests",
            "PollEventLoopTests",
            "EPollEventLoopTests",
            "KqueueEventLoopTests",
            "ProactorEventLoopTests",
        ],
        "add": [
            (
                "PolicyEventLoopTests",
                ["EventLoopTestsMixin", "SubprocessTestsMixin"],
                "create_event_loop",
                "test_utils",
            )
        ],
    },
    "test_sendfile": {
        "drop": [
            "SelectEventLoopTests",
            "PollEventLoopTests",
            "EPollEventLoopTests",
            "KqueueEventLoopTests",
            "ProactorEventLoopTests",
        ],
        "add": [("PolicySendfileTests", ["SendfileTestsBase"], "create_event_loop", "test_utils")],
    },
    "test_sock_lowlevel": {
        "drop": [
            "SelectEventLoopTests",
            "PollEventLoopTests",
            "EPollEventLoopTests",
            "KqueueEventLoopTests",
            "ProactorEventLoopTests",
        ],
        "add": [("PolicySockTests", ["BaseSockTestsMixin"], "create_event_loop", "test_utils")],
    },
    "test_server": {
        "drop": ["SelectorStartServerTests", "ProactorStartServerTests"],
        "add": [("PolicyStartServerTests", ["BaseStartServer"], "new_loop", "unittest")],
    },
    "test_buffered_proto": {
        "drop": ["BufferedProtocolSelectorTests", "BufferedProtocolProactorTests"],
        "add": [
            ("PolicyBufferedProtocolTests", ["BaseTestBufferedProtocol"], "new_loop", "unittest")
        ],
    },
    "test_sslproto": {
        "drop": ["SelectorStartTLSTests", "ProactorStartTLSTests"],
        "add": [("PolicyStartTLSTests", ["BaseStartTLS"], "new_loop", "unittest")],
    },
    "test_runners": {
        # BaseTest.new_loop builds asyncio.BaseEventLoop() with a mocked
        # _selector/_process_events just to get *some* runnable loop for
        # asyncio.run()/Runner; use the policy's loop instead.
        "patch": [("BaseTest", "new_loop", "runner_loop")],
    },
    "test_pep492": {
        # BaseTest.setUp builds asyncio.BaseEventLoop() with a mocked _selector
        # just to get a runnable loop; use the policy's loop instead.
        "patch": [("BaseTest", "setUp", "policy_loop_setup")],
    },
    "test_futures": {
        # self.new_test_loop() without a time generator is just "a loop"; run
        # those on the policy's loop.  TestLoop stays where its virtual clock
        # or its own internals are part of the test (see _keeps_test_loop).
        "real_loop_for_test_loop": {
            # check_future_exception_never_retrieved patches
            # asyncio.base_events.logger (BaseEventLoop's logging)
            "keep_for_tests": [
                "test_future_exception_never_retrieved",
                "test_future_exception_never_retrieved_debug",
            ]
        },
    },
    "test_tasks": {
        "real_loop_for_test_loop": {
            # GatherTestsBase drives its loops with `while loop._ready:`.
            "keep_for_bases": ["GatherTestsBase"],
            # asserts on len(loop._ready) of the TestLoop
            "keep_for_tests": ["test_log_destroyed_pending_task"],
        }
    },
    "test_subprocess": {
        # The watcher variants each install one of asyncio's child watchers
        # (asyncio's unix_events machinery).  The policy loop runs the shared
        # SubprocessMixin with whatever the policy provides.
        "drop": [
            "SubprocessThreadedWatcherTests",
            "SubprocessMultiLoopWatcherTests",
            "SubprocessSafeWatcherTests",
            "SubprocessFastWatcherTests",
            "SubprocessPidfdWatcherTests",
            "SubprocessProactorTests",
        ],
        "add": [("PolicySubprocessTests", ["SubprocessMixin"], "setUp:loop", "test_utils")],
    },
}

OUTCOME_RANK = {
    "passed": 0,
    "skipped": 1,
    "expected_failure": 2,
    "unexpected_success": 3,
    "failed": 4,
    "error": 5,
}


# --------------------------------------------------------------------------
# child side: runs one module in-process and streams JSON lines
# --------------------------------------------------------------------------


def _child(args: argparse.Namespace) -> int:
    import asyncio
    import signal
    import unittest
    from asyncio import events

    # A shell starts background jobs with SIGINT ignored, and Python then
    # installs no KeyboardInterrupt handler: the tests that interrupt
    # themselves (test_runners) would wait forever. Run them as a foreground
    # interpreter would.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    # One stream for the child's whole life; os._exit() at the end skips teardown.
    out = open(args.events, "a", buffering=1)

    def emit(**rec: Any) -> None:
        out.write(json.dumps(rec) + "\n")
        out.flush()

    counters = {"policy": 0, "target": 0, "other": 0}

    if args.loop == "ferroloop":
        import ferroloop
        from ferroloop import event_loop as fl_event_loop

        expected = os.environ.get("CONFORMANCE_FERROLOOP_DIR")
        got = os.path.dirname(os.path.abspath(ferroloop.__file__))
        if expected and os.path.realpath(got) != os.path.realpath(expected):
            sys.exit(f"conformance child imported ferroloop from {got}, expected {expected}")

        base_policy = ferroloop.EventLoopPolicy
        target_cls: type = fl_event_loop.EventLoop
    else:
        base_policy = asyncio.DefaultEventLoopPolicy
        target_cls = asyncio.SelectorEventLoop

    class CountingPolicy(base_policy):  # type: ignore[misc, valid-type]
        """The loop under test's policy, counting the loops it creates."""

        def new_event_loop(self):  # type: ignore[no-untyped-def]
            loop = super().new_event_loop()
            counters["policy"] += 1
            if args.loop == "ferroloop" and not isinstance(loop, target_cls):
                raise AssertionError(f"policy created a non-ferroloop loop: {loop!r}")
            return loop

    CountingPolicy.__name__ = CountingPolicy.__qualname__ = f"Counting{base_policy.__name__}"

    # Count every loop object by kind, however it was built.
    orig_target_init = target_cls.__init__

    def counted_target_init(self, *a, **kw):  # type: ignore[no-untyped-def]
        if type(self) is target_cls or args.loop == "ferroloop":
            counters["target"] += 1
        return orig_target_init(self, *a, **kw)

    target_cls.__init__ = counted_target_init  # type: ignore[method-assign]
    orig_base_init = asyncio.BaseEventLoop.__init__

    def counted_base_init(self, *a, **kw):  # type: ignore[no-untyped-def]
        if type(self) is not target_cls:
            counters["other"] += 1
        return orig_base_init(self, *a, **kw)

    asyncio.BaseEventLoop.__init__ = counted_base_init  # type: ignore[method-assign]

    state: dict[str, Any] = {"policy": None, "cls": None}

    def ensure_policy(test_cls: type | None = None) -> None:
        # A fresh policy for every test class (as if each ran alone), and
        # re-installed whenever a test or tearDownModule reset it.
        if test_cls is not state["cls"] or not isinstance(
            events._event_loop_policy, CountingPolicy
        ):
            state["cls"] = test_cls
            state["policy"] = CountingPolicy()
            asyncio.set_event_loop_policy(state["policy"])

    ensure_policy()

    if args.preload:
        # Investigation aid only (e.g. to work around one known bug and see
        # what fails behind it); never used for recorded numbers.
        import runpy

        runpy.run_path(args.preload, run_name="__preload__")

    import importlib

    modname = f"test.test_asyncio.{args.module}"
    mod = importlib.import_module(modname)
    adapter = ADAPTERS.get(args.module, {})
    dropped = set(adapter.get("drop", []))
    for name, base_names, factory, testcase in adapter.get("add", []):
        bases = tuple(getattr(mod, b) for b in base_names)
        if not any(issubclass(b, unittest.TestCase) for b in bases):
            # the TestCase base the module's own concrete classes use
            if testcase == "unittest":
                bases += (unittest.TestCase,)
            else:
                from test.test_asyncio import utils as test_utils

                bases += (test_utils.TestCase,)
        ns: dict[str, Any] = {"__module__": modname, "__qualname__": name}
        if factory == "setUp:loop":

            def setUp(self, _name=name):  # type: ignore[no-untyped-def]
                super(getattr(mod, _name), self).setUp()
                self.loop = asyncio.new_event_loop()
                self.set_event_loop(self.loop)

            ns["setUp"] = setUp
        else:
            ns[factory] = lambda self: asyncio.new_event_loop()
        setattr(mod, name, type(name, bases, ns))

    for cls_name, meth, kind in adapter.get("patch", []):
        _patch_class(getattr(mod, cls_name), meth, kind, state)
    if "real_loop_for_test_loop" in adapter:
        from test.test_asyncio import utils as test_utils

        orig_new_test_loop = test_utils.TestCase.new_test_loop
        keep = adapter["real_loop_for_test_loop"]

        def new_test_loop(self, gen=None):  # type: ignore[no-untyped-def]
            if gen is not None or _keeps_test_loop(self, keep, mod):
                return orig_new_test_loop(self, gen)
            loop = state["policy"].new_event_loop()
            self.set_event_loop(loop)
            return loop

        test_utils.TestCase.new_test_loop = new_test_loop

    loader = unittest.TestLoader()
    suite = loader.loadTestsFromModule(mod)

    def flatten(s: Any) -> list[Any]:
        found = []
        for t in s:
            if isinstance(t, unittest.TestSuite):
                found.extend(flatten(t))
            else:
                found.append(t)
        return found

    tests = [t for t in flatten(suite) if type(t).__name__ not in dropped]
    excluded = set(_load_excluded())
    tests_ids = [t.id() for t in tests]
    if args.skip_through < 0:
        emit(event="plan", tests=tests_ids)

    class Result(unittest.TestResult):
        def __init__(self) -> None:
            super().__init__()
            self.cur: dict[str, Any] | None = None

        def startTest(self, test: Any) -> None:
            super().startTest(test)
            ensure_policy(type(test))
            for k in counters:
                counters[k] = 0
            self.cur = {"id": test.id(), "outcome": "passed", "detail": "", "t0": time.monotonic()}
            emit(event="start", id=test.id())

        def _set(self, outcome: str, detail: str = "") -> None:
            if self.cur is None:
                return
            new, old = OUTCOME_RANK[outcome], OUTCOME_RANK[self.cur["outcome"]]
            # keep the worst outcome; an equal one may bring the first detail
            if new > old or (new == old and detail and not self.cur["detail"]):
                self.cur["outcome"] = outcome
                if detail:
                    self.cur["detail"] = detail

        def _fmt(self, err: Any) -> str:
            return "".join(traceback.format_exception(*err))[-6000:]

        def addError(self, test: Any, err: Any) -> None:
            super().addError(test, err)
            if self.cur is None or test.id() != self.cur["id"]:
                # setUpClass / tearDownModule errors (an _ErrorHolder)
                emit(event="fixture_error", id=str(test), detail=self._fmt(err))
                return
            self._set("error", self._fmt(err))

        def addFailure(self, test: Any, err: Any) -> None:
            super().addFailure(test, err)
            self._set("failed", self._fmt(err))

        def addSubTest(self, test: Any, subtest: Any, err: Any) -> None:
            super().addSubTest(test, subtest, err)
            if err is not None:
                kind = "failed" if issubclass(err[0], test.failureException) else "error"
                self._set(kind, f"[subtest {subtest._subDescription()}]\n" + self._fmt(err))

        def addSkip(self, test: Any, reason: str) -> None:
            super().addSkip(test, reason)
            if self.cur is None or test.id() != self.cur["id"]:
                # a skipped class (setUpClass raising SkipTest)
                emit(event="class_skip", id=str(test), detail=reason)
                return
            self._set("skipped", reason)

        def addExpectedFailure(self, test: Any, err: Any) -> None:
            super().addExpectedFailure(test, err)
            self._set("expected_failure")

        def addUnexpectedSuccess(self, test: Any) -> None:
            super().addUnexpectedSuccess(test)
            self._set("unexpected_success")

        def stopTest(self, test: Any) -> None:
            super().stopTest(test)
            cur = self.cur
            if cur is None:
                return
            emit(
                event="result",
                id=cur["id"],
                outcome=cur["outcome"],
                detail=cur["detail"],
                policy_loops=counters["policy"],
                target_loops=counters["target"],
                other_loops=counters["other"],
                duration=round(time.monotonic() - cur["t0"], 3),
            )
            self.cur = None

    todo = unittest.TestSuite()
    for i, t in enumerate(tests):
        if i <= args.skip_through:
            continue
        if t.id() in excluded:
            continue
        if args.k and not any(k in t.id() for k in args.k):
            continue
        todo.addTest(t)
    result = Result()
    # Silence the module's own chatter on stdout; stderr goes to the log file.
    todo.run(result)
    emit(event="done")
    out.close()
    # Skip interpreter teardown: leftover threads or loops must not hang us.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _keeps_test_loop(test: Any, keep: dict[str, list[str]], mod: Any) -> bool:
    """Whether `test` must keep CPython's TestLoop rather than the policy's loop.

    Besides the configured classes/tests, any test that mock.patches something
    in asyncio.base_events (typically its module-level `logger`) observes
    BaseEventLoop's own code and keeps the TestLoop it was written for.
    """
    if test._testMethodName in keep.get("keep_for_tests", []):
        return True
    for base in keep.get("keep_for_bases", []):
        if isinstance(test, getattr(mod, base)):
            return True
    method = getattr(type(test), test._testMethodName, None)
    for patching in getattr(method, "patchings", []) or []:
        try:
            target = patching.getter()
        except (ImportError, AttributeError):  # a broken target fails the test itself
            target = None
        if getattr(target, "__name__", "") == "asyncio.base_events":
            return True
    return False


def _patch_class(cls: type, meth: str, kind: str, state: dict[str, Any]) -> None:
    import asyncio

    if kind == "runner_loop":

        def new_loop(self):  # type: ignore[no-untyped-def]
            loop = state["policy"].new_event_loop()
            loop.shutdown_ag_run = False
            orig = loop.shutdown_asyncgens

            async def shutdown_asyncgens():  # type: ignore[no-untyped-def]
                loop.shutdown_ag_run = True
                await orig()

            loop.shutdown_asyncgens = shutdown_asyncgens
            return loop

        setattr(cls, meth, new_loop)
    elif kind == "policy_loop_setup":
        base = cls.__mro__[1]

        def setUp(self):  # type: ignore[no-untyped-def]
            base.setUp(self)
            self.loop = asyncio.new_event_loop()
            self.set_event_loop(self.loop)

        setattr(cls, meth, setUp)
    else:
        raise ValueError(kind)


def _load_excluded() -> list[str]:
    ids = []
    if os.path.exists(EXCLUDED_FILE):
        with open(EXCLUDED_FILE) as f:
            for line in f:
                line = line.split("#", 1)[0].strip()
                if line:
                    ids.append(line)
    return ids


# --------------------------------------------------------------------------
# parent side: supervises one child per module, restarts after hangs/crashes
# --------------------------------------------------------------------------


def _read_events(path: str, pos: int) -> tuple[list[dict[str, Any]], int]:
    recs = []
    with open(path) as f:
        f.seek(pos)
        while True:
            line = f.readline()
            if not line or not line.endswith("\n"):
                break
            pos = f.tell()
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return recs, pos


def run_module(
    module: str,
    loop: str,
    *,
    test_timeout: float = 60.0,
    module_timeout: float = 1200.0,
    log_dir: str | None = None,
    python: str = sys.executable,
    preload: str | None = None,
    package_root: str | None = None,
    only: list[str] | None = None,
) -> dict[str, Any]:
    """Run one test_asyncio module on `loop`; return its per-test records and counts."""
    tmp = tempfile.mkdtemp(prefix=f"conf-{loop}-{module}-")
    events_path = os.path.join(tmp, "events.jsonl")
    open(events_path, "w").close()
    log_path = os.path.join(log_dir or tmp, f"{loop}-{module}.log")
    env = dict(os.environ)
    pyroot = package_root or os.path.join(REPO, "python")
    env["PYTHONPATH"] = pyroot + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONFAULTHANDLER", "1")
    env["PYTHONUNBUFFERED"] = "1"
    # the child checks that it imports this copy, not another one on sys.path
    env["CONFORMANCE_FERROLOOP_DIR"] = os.path.join(pyroot, "ferroloop")

    plan: list[str] = []
    results: dict[str, dict[str, Any]] = {}
    fixture_errors: list[dict[str, str]] = []
    class_skips: list[dict[str, str]] = []
    skip_through = -1
    t_start = time.monotonic()
    restarts = 0
    aborted = ""
    with open(log_path, "ab") as log:
        while True:
            cmd = [
                python,
                os.path.abspath(__file__),
                "--child",
                "--module",
                module,
                "--loop",
                loop,
                "--events",
                events_path,
                "--skip-through",
                str(skip_through),
            ]
            if preload:
                cmd += ["--preload", os.path.abspath(preload)]
            for k in only or []:
                cmd += ["-k", k]
            proc = subprocess.Popen(
                cmd,
                cwd=tmp,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
            pos = 0 if skip_through < 0 else os.path.getsize(events_path)
            current: str | None = None
            current_t0 = time.monotonic()
            done = False
            killed_reason = ""
            while True:
                recs, pos = _read_events(events_path, pos)
                for r in recs:
                    ev = r["event"]
                    if ev == "plan":
                        plan = r["tests"]
                    elif ev == "start":
                        current, current_t0 = r["id"], time.monotonic()
                    elif ev == "result":
                        results[r["id"]] = r
                        current = None
                    elif ev == "fixture_error":
                        fixture_errors.append({"id": r["id"], "detail": r["detail"]})
                    elif ev == "class_skip":
                        class_skips.append({"id": r["id"], "detail": r["detail"]})
                    elif ev == "done":
                        done = True
                rc = proc.poll()
                if done or rc is not None:
                    if rc is None:
                        try:
                            proc.wait(timeout=10)
                        except subprocess.TimeoutExpired:
                            _kill(proc)
                    # drain what was written just before exit
                    recs, pos = _read_events(events_path, pos)
                    for r in recs:
                        if r["event"] == "result":
                            results[r["id"]] = r
                            current = None
                        elif r["event"] == "done":
                            done = True
                        elif r["event"] == "plan":
                            plan = r["tests"]
                    if not done:
                        killed_reason = f"crash (exit code {proc.returncode})"
                    break
                now = time.monotonic()
                if current is not None and now - current_t0 > test_timeout:
                    killed_reason = "timeout"
                    _kill(proc)
                    break
                if now - t_start > module_timeout:
                    aborted = f"module timeout after {module_timeout:.0f}s"
                    _kill(proc)
                    break
                time.sleep(0.2)
            if done or aborted:
                if aborted and current is not None:
                    results[current] = {
                        "id": current,
                        "outcome": "timeout",
                        "detail": aborted,
                        "policy_loops": 0,
                        "target_loops": 0,
                        "other_loops": 0,
                    }
                break
            if not plan:
                aborted = f"child failed before listing tests: {killed_reason} (see {log_path})"
                break
            # A test hung or crashed the process: record it and resume after it.
            if current is None:
                # crashed between tests (e.g. in a class fixture): resume after last result
                done_ids = [i for i, tid in enumerate(plan) if tid in results]
                last = max(done_ids) if done_ids else skip_through
                if last == skip_through:
                    aborted = f"{killed_reason} outside any test (see {log_path})"
                    break
                skip_through = last
            else:
                results[current] = {
                    "id": current,
                    "outcome": "timeout" if killed_reason == "timeout" else "crash",
                    "detail": killed_reason
                    + (f" after {test_timeout:.0f}s" if killed_reason == "timeout" else ""),
                    "policy_loops": 0,
                    "target_loops": 0,
                    "other_loops": 0,
                }
                skip_through = plan.index(current)
            restarts += 1
    return _summarise(
        module,
        loop,
        plan,
        results,
        fixture_errors,
        class_skips,
        restarts,
        aborted,
        time.monotonic() - t_start,
        log_path,
    )


def _kill(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _summarise(
    module: str,
    loop: str,
    plan: list[str],
    results: dict[str, dict[str, Any]],
    fixture_errors: list[dict[str, str]],
    class_skips: list[dict[str, str]],
    restarts: int,
    aborted: str,
    duration: float,
    log_path: str,
) -> dict[str, Any]:
    excluded = set(_load_excluded())
    counts = {
        "ran": 0,
        "passed": 0,
        "failed": 0,
        "errors": 0,
        "skipped": 0,
        "expected_failures": 0,
        "unexpected_successes": 0,
        "timeouts": 0,
        "crashes": 0,
        "excluded": 0,
        "not_run": 0,
        # tests during which the policy created >= 1 loop: ran on the loop under test
        "on_loop": 0,
        "passed_on_loop": 0,
    }
    problems = []
    tests = {}
    for tid in plan:
        if tid in excluded:
            counts["excluded"] += 1
            continue
        r = results.get(tid)
        if r is None:
            counts["not_run"] += 1
            continue
        counts["ran"] += 1
        o = r["outcome"]
        key = {
            "passed": "passed",
            "failed": "failed",
            "error": "errors",
            "skipped": "skipped",
            "expected_failure": "expected_failures",
            "unexpected_success": "unexpected_successes",
            "timeout": "timeouts",
            "crash": "crashes",
        }[o]
        counts[key] += 1
        on_loop = r.get("policy_loops", 0) > 0
        if on_loop:
            counts["on_loop"] += 1
            if o == "passed":
                counts["passed_on_loop"] += 1
        tests[tid] = {"outcome": o, "on_loop": on_loop}
        if o in ("failed", "error", "timeout", "crash", "unexpected_success"):
            problems.append(
                {"id": tid, "outcome": o, "on_loop": on_loop, "detail": r.get("detail", "")}
            )
    prefix = f"test.test_asyncio.{module}."
    unknown = sorted(e for e in excluded if e.startswith(prefix) and e not in plan)
    return {
        "module": module,
        "loop": loop,
        **counts,
        "unknown_exclusions": unknown if plan else [],
        "fixture_errors": fixture_errors,
        "class_skips": class_skips,
        "restarts": restarts,
        "aborted": aborted,
        "duration": round(duration, 1),
        "log": log_path,
        "problems": problems,
        "tests": tests,
    }


def run_modules(
    modules: list[str],
    loops: list[str],
    *,
    jobs: int = 1,
    test_timeout: float = 60.0,
    module_timeout: float = 1200.0,
    log_dir: str | None = None,
    progress: bool = True,
    preload: str | None = None,
    snapshot: bool = True,
    only: list[str] | None = None,
) -> dict[str, Any]:
    """Run `modules` on each loop in `loops`; return the full JSON-able report.

    With `snapshot` (the default) the chosen ferroloop package is copied to a temporary
    directory first and every child imports that copy: other people rebuild
    the extension in place (make dev) while we run, and a shared object
    overwritten under a running process crashes it.
    """
    from concurrent.futures import ThreadPoolExecutor

    work = [(loop, m) for loop in loops for m in modules]
    report: dict[str, Any] = {"meta": _meta(loops), "results": {loop: {} for loop in loops}}
    package_root = None
    if "ferroloop" in loops:
        source = _ferroloop_package_dir()
        report["meta"]["ferroloop_source"] = source
        package_root = os.path.dirname(source)
        if snapshot:
            package_root = tempfile.mkdtemp(prefix="ferroloop-snapshot-")
            shutil.copytree(
                source,
                os.path.join(package_root, "ferroloop"),
                ignore=shutil.ignore_patterns("__pycache__"),
            )
            report["meta"]["ferroloop_snapshot"] = package_root
        report["meta"]["ferroloop_build"] = _build_id(package_root)
        warning = _stale_build_warning(source)
        if warning:
            report["meta"]["ferroloop_warning"] = warning
        if progress:
            print(f"ferroloop from {source}", file=sys.stderr, flush=True)
            if warning:
                print(warning, file=sys.stderr, flush=True)

    def one(item: tuple[str, str]) -> tuple[str, str, dict[str, Any]]:
        loop, m = item
        res = run_module(
            m,
            loop,
            test_timeout=test_timeout,
            module_timeout=module_timeout,
            log_dir=log_dir,
            preload=preload,
            package_root=package_root,
            only=only,
        )
        if progress:
            print(
                f"[{loop:9}] {m:20} ran={res['ran']:4} passed={res['passed']:4} "
                f"failed={res['failed']:3} errors={res['errors']:3} skipped={res['skipped']:3} "
                f"timeouts={res['timeouts']} crashes={res['crashes']} "
                f"on_loop={res['on_loop']:4} ({res['duration']}s)"
                + (f" ABORTED: {res['aborted']}" if res["aborted"] else ""),
                file=sys.stderr,
                flush=True,
            )
        return loop, m, res

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for loop, m, res in pool.map(one, work):
            report["results"][loop][m] = res
    return report


def _ferroloop_package_dir() -> str:
    """The ferroloop package to test.

    $FERROLOOP_PACKAGE_DIR if set; else the copy this interpreter imports, i.e.
    the same one the rest of the test suite (tests/conftest.py) tests: the
    pip-installed package in CI (`pip install '.[test]'`, no PYTHONPATH), the
    repository's python/ferroloop with PYTHONPATH=python after `make dev`.
    Only when ferroloop is not importable at all: python/ferroloop.
    """
    import importlib.util

    if os.environ.get("FERROLOOP_PACKAGE_DIR"):
        return os.path.abspath(os.environ["FERROLOOP_PACKAGE_DIR"])
    spec = importlib.util.find_spec("ferroloop")
    if spec is not None and spec.origin:
        return os.path.dirname(os.path.abspath(spec.origin))
    return os.path.join(REPO, "python", "ferroloop")


def _stale_build_warning(source: str) -> str:
    """A warning when a `make dev` build in python/ferroloop is not what runs."""
    import glob

    in_repo = os.path.join(REPO, "python", "ferroloop")
    if os.path.realpath(source) == os.path.realpath(in_repo):
        return ""
    if not glob.glob(os.path.join(in_repo, "_core*.so")):
        return ""
    return (
        f"note: testing {source}, not the build in {in_repo}; "
        "run with PYTHONPATH=python (or FERROLOOP_PACKAGE_DIR) to test that one"
    )


def _build_id(root: str) -> dict[str, Any]:
    """Identify the ferroloop code a run used: .so hash and mtime, Python sources hash."""
    import glob
    import hashlib

    info: dict[str, Any] = {}
    so = glob.glob(os.path.join(root, "ferroloop", "_core*.so"))
    if so:
        with open(so[0], "rb") as f:
            info["core_sha256"] = hashlib.sha256(f.read()).hexdigest()[:16]
        info["core_mtime"] = datetime.datetime.fromtimestamp(
            os.path.getmtime(so[0]), datetime.UTC
        ).isoformat(timespec="seconds")
    h = hashlib.sha256()
    for py in sorted(glob.glob(os.path.join(root, "ferroloop", "*.py"))):
        with open(py, "rb") as f:
            h.update(f.read())
    info["python_sha256"] = h.hexdigest()[:16]
    return info


def _meta(loops: list[str]) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loops": loops,
    }
    try:
        meta["git_rev"] = subprocess.run(
            ["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", REPO, "status", "--porcelain", "--", "python", "src"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split("\n")
        meta["uncommitted_core_files"] = len([d for d in dirty if d.strip()])
    except OSError:
        pass
    return meta


def format_table(report: dict[str, Any]) -> str:
    loops = list(report["results"])
    modules: list[str] = []
    for loop in loops:
        for m in report["results"][loop]:
            if m not in modules:
                modules.append(m)
    cols = [
        "ran",
        "passed",
        "failed",
        "errors",
        "skipped",
        "timeouts",
        "crashes",
        "on_loop",
        "passed_on_loop",
    ]
    lines = []
    head = f"| module | loop | {' | '.join(cols)} |"
    lines.append(head)
    lines.append("|" + "---|" * (len(cols) + 2))
    for m in modules:
        for loop in loops:
            r = report["results"][loop].get(m)
            if r is None:
                continue
            lines.append(f"| {m} | {loop} | " + " | ".join(str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def failure_categories(
    report: dict[str, Any], loop: str = "ferroloop"
) -> list[tuple[str, list[str]]]:
    """Group the failing tests of `loop` by the last line of their traceback."""
    import re

    cats: dict[str, list[str]] = {}
    for res in report["results"].get(loop, {}).values():
        for p in res["problems"]:
            lines = p["detail"].strip().splitlines()
            last = lines[-1] if lines else p["outcome"]
            last = re.sub(r"0x[0-9a-f]+", "0x..", last)
            last = re.sub(r"fd=\d+", "fd=N", last)[:150]
            cats.setdefault(last, []).append(p["id"].replace("test.test_asyncio.", ""))
    return sorted(cats.items(), key=lambda kv: -len(kv[1]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--modules",
        default=",".join(DEFAULT_MODULES),
        help="comma/space separated test_asyncio module names",
    )
    p.add_argument(
        "--loop",
        choices=["ferroloop", "asyncio", "both"],
        default="both",
        help="loop to test; 'both' also runs asyncio's default loop as the baseline",
    )
    p.add_argument("--json", help="write the JSON report here")
    p.add_argument(
        "--jobs", type=int, default=min(2, os.cpu_count() or 1), help="modules run in parallel"
    )
    p.add_argument(
        "--test-timeout",
        type=float,
        default=60.0,
        help="seconds one test may take before its process is killed",
    )
    p.add_argument("--module-timeout", type=float, default=1200.0)
    p.add_argument("--log-dir", help="keep each child's stdout/stderr here")
    p.add_argument(
        "-k",
        action="append",
        default=[],
        help="only run tests whose id contains this substring (repeatable; "
        "investigation aid, the others count as not_run)",
    )
    p.add_argument(
        "--preload",
        help="python file the child executes before importing tests "
        "(investigation aid, e.g. a temporary monkeypatch; not for recorded numbers)",
    )
    p.add_argument(
        "--no-snapshot",
        action="store_true",
        help="import the chosen ferroloop package in place instead of a private copy",
    )
    p.add_argument("--brief", action="store_true", help="omit per-test records from the JSON")
    # child mode (internal)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--module", help=argparse.SUPPRESS)
    p.add_argument("--events", help=argparse.SUPPRESS)
    p.add_argument("--skip-through", type=int, default=-1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        if args.loop == "both":
            p.error("--child needs one loop")
        return _child(args)
    modules = [m for m in args.modules.replace(",", " ").split() if m]
    modules = [m if m.startswith("test_") else f"test_{m}" for m in modules]
    loops = ["asyncio", "ferroloop"] if args.loop == "both" else [args.loop]
    if args.log_dir:
        os.makedirs(args.log_dir, exist_ok=True)
    report = run_modules(
        modules,
        loops,
        jobs=args.jobs,
        test_timeout=args.test_timeout,
        module_timeout=args.module_timeout,
        log_dir=args.log_dir,
        preload=args.preload,
        snapshot=not args.no_snapshot,
        only=args.k,
    )
    if args.preload:
        report["meta"]["preload"] = os.path.abspath(args.preload)
    if args.brief:
        for loop in report["results"].values():
            for r in loop.values():
                r.pop("tests", None)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    print(format_table(report))
    if "ferroloop" in report["results"]:
        print("\nferroloop failure categories (count, last traceback line, examples):")
        for last, ids in failure_categories(report):
            print(f"{len(ids):5}  {last}\n         e.g. {', '.join(ids[:3])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
