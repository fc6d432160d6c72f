"""Helpers shared by the test modules: loop factories, running a coroutine
on a given loop, subprocess runs, policy handling.

Kept out of conftest.py so that test modules can import them by a unique
module name (two conftest.py files in one run would shadow each other).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import warnings
from collections.abc import Awaitable, Callable
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
