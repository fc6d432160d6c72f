"""Shared fixtures: every behavioural test runs once per event-loop implementation.

The ``asyncio`` parameter is the oracle (the standard library's own loop); the
``ferroloop`` parameter is the loop under test. A test passes only if both loops
pass it. ``ferroloop`` is imported lazily inside the fixture so that collection
works even when the extension is broken; a broken import then *fails* every
ferroloop test instead of skipping it.

Fixtures:

- ``loop_name``: ``"asyncio"`` or ``"ferroloop"``.
- ``loop_factory``: a zero-argument callable returning a new, not running loop.
- ``loop``: a new loop, closed at teardown (asserting it could be closed cleanly).

Helpers (import them from ``loop_helpers``, not from here):

- ``run(loop_factory, coro_fn, debug=None)``: run ``coro_fn()`` with
  ``asyncio.Runner(loop_factory=...)`` and return its result.
- ``only_ferroloop(loop_name, why)``: skip explicitly on the oracle for tests that
  are only meaningful for ferroloop.
- ``run_python(...)``: run the interpreter in a subprocess.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
from collections.abc import Iterator

import pytest
from loop_helpers import (  # noqa: F401 - re-exported for fixtures
    _T,
    LOOP_NAMES,
    REPO_ROOT,
    LoopFactory,
    _asyncio_loop,
    current_policy,
    make_loop_factory,
    only_ferroloop,
    run,
    run_python,
    set_policy,
)


def pytest_report_header() -> str:
    """Name the ferroloop under test: the dev build (PYTHONPATH=python) or an
    installed wheel, which may be older. Found without importing it."""
    spec = importlib.util.find_spec("ferroloop")
    return f"ferroloop under test: {spec.origin if spec else 'not importable'}"


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
