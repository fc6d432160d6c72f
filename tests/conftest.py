"""Shared fixtures: every behavioural test runs once per event-loop implementation.

The ``asyncio`` parameter is the oracle (the standard library's own loop); the
``ferroloop`` parameter is the loop under test. A test passes only if both loops
pass it. ``ferroloop`` is imported lazily inside the fixture so that collection
works even when the extension is broken; a broken import then *fails* every
ferroloop test instead of skipping it.

Fixtures and helpers:

- ``loop_name``: ``"asyncio"`` or ``"ferroloop"``.
- ``loop_factory``: a zero-argument callable returning a new, not running loop.
- ``loop``: a new loop, closed at teardown (asserting it could be closed cleanly).
- ``run(loop_factory, coro_fn, debug=None)``: run ``coro_fn()`` with
  ``asyncio.Runner(loop_factory=...)`` and return its result.
- ``only_ferroloop(loop_name, why)``: skip explicitly on the oracle for tests that
  are only meaningful for ferroloop.
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import warnings
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

_T = TypeVar("_T")

LOOP_NAMES = ("asyncio", "ferroloop")

REPO_ROOT = Path(__file__).resolve().parent.parent

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def _asyncio_loop() -> asyncio.AbstractEventLoop:
    """The standard library's default loop, independent of any installed policy.

    ``asyncio.new_event_loop()`` goes through the event-loop policy; a test that
    installs ferroloop's policy must not turn the oracle into ferroloop, so the
    class is instantiated directly.
    """
    cls = getattr(asyncio, "EventLoop", None) or asyncio.SelectorEventLoop
    return cls()


def make_loop_factory(name: str) -> LoopFactory:
    """Return the loop factory for ``name`` (imports ferroloop on demand)."""
    if name == "asyncio":
        return _asyncio_loop
    if name == "ferroloop":
        import ferroloop  # lazy on purpose, see the module docstring

        return ferroloop.new_event_loop
    raise ValueError(f"unknown loop {name!r}")


@pytest.fixture(params=LOOP_NAMES)
def loop_name(request: pytest.FixtureRequest) -> str:
    """The name of the loop implementation this test runs on."""
    return request.param


@pytest.fixture
def loop_factory(loop_name: str) -> LoopFactory:
    """A callable creating a new loop of the implementation under test."""
    return make_loop_factory(loop_name)


@pytest.fixture
def loop(loop_factory: LoopFactory) -> Iterator[asyncio.AbstractEventLoop]:
    """A fresh loop; at teardown it must not be running and must close cleanly.

    Async generators and the default executor are shut down first (as
    ``asyncio.Runner`` does) unless the test already closed the loop itself.
    """
    lp = loop_factory()
    try:
        yield lp
    finally:
        assert not lp.is_running(), "loop still running at teardown"
        if not lp.is_closed():
            try:
                lp.run_until_complete(lp.shutdown_asyncgens())
                lp.run_until_complete(lp.shutdown_default_executor())
            finally:
                lp.close()
        assert lp.is_closed()
        gc.collect()


def run(
    loop_factory: LoopFactory,
    coro_fn: Callable[[], Awaitable[_T]],
    *,
    debug: bool | None = None,
) -> _T:
    """Run ``coro_fn()`` to completion on a new loop from ``loop_factory``."""
    with asyncio.Runner(loop_factory=loop_factory, debug=debug) as runner:
        return runner.run(coro_fn())  # type: ignore[arg-type]


def only_ferroloop(loop_name: str, why: str) -> None:
    """Skip the oracle explicitly for a test that only makes sense for ferroloop."""
    if loop_name != "ferroloop":
        pytest.skip(f"only meaningful for ferroloop: {why}")


def xfail_on_ferroloop(request: pytest.FixtureRequest, loop_name: str, reason: str) -> None:
    """Mark the current test as a non-strict expected failure, for ferroloop only."""
    if loop_name == "ferroloop":
        request.applymarker(pytest.mark.xfail(strict=False, reason=reason))


def run_python(
    *args: str,
    cwd: str | os.PathLike[str] | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    **kwargs: Any,
) -> subprocess.CompletedProcess[str]:
    """Run ``sys.executable *args`` in a subprocess, capturing text output."""
    full_env = dict(os.environ)
    full_env.pop("PYTHONASYNCIODEBUG", None)
    if env:
        full_env.update(env)
    return subprocess.run(
        [sys.executable, *args],
        check=False,
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


@pytest.fixture(autouse=True)
def _no_leaked_running_loop() -> Iterator[None]:
    """Every test starts and ends with no running loop and asyncio's default policy."""
    policy = current_policy()
    yield
    assert asyncio._get_running_loop() is None, "a loop is still marked running"
    now = current_policy()
    if now is not policy:
        set_policy(None)
        pytest.fail(f"test leaked an event-loop policy: {now!r}")


def current_policy() -> Any:
    """``asyncio.get_event_loop_policy()`` without the 3.14 deprecation warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return asyncio.get_event_loop_policy()


def set_policy(policy: Any) -> None:
    """``asyncio.set_event_loop_policy()`` without the 3.14 deprecation warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        asyncio.set_event_loop_policy(policy)
