"""Entry points that run a coroutine on a fresh ferroloop loop."""

from __future__ import annotations

import asyncio
from asyncio import events
from collections.abc import Coroutine
from typing import Any, TypeVar

from .event_loop import new_event_loop

_T = TypeVar("_T")


def run(main: Coroutine[Any, Any, _T], *, debug: bool | None = None) -> _T:
    """Run `main` on a new ferroloop loop and return its result, like `asyncio.run`.

    Remaining tasks are cancelled, async generators and the default executor
    are shut down, and the loop is closed before returning. Ctrl-C cancels
    `main` and raises KeyboardInterrupt, as with `asyncio.run`.
    """
    if events._get_running_loop() is not None:
        raise RuntimeError("asyncio.run() cannot be called from a running event loop")
    with asyncio.Runner(debug=debug, loop_factory=new_event_loop) as runner:
        return runner.run(main)
