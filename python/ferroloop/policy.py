"""The legacy, policy-based way to make asyncio use ferroloop.

Event-loop policies are deprecated from Python 3.14; prefer `ferroloop.run`,
`asyncio.Runner(loop_factory=ferroloop.new_event_loop)` or `python -m ferroloop`.
"""

from __future__ import annotations

import asyncio
import sys
import warnings
from asyncio import events
from typing import Any

from .event_loop import EventLoop

if sys.version_info >= (3, 14):
    _PolicyBase = events._BaseDefaultEventLoopPolicy  # type: ignore[attr-defined]
else:
    _PolicyBase = events.BaseDefaultEventLoopPolicy


class EventLoopPolicy(_PolicyBase):  # type: ignore[misc, valid-type]
    """An event-loop policy whose loops are ferroloop loops."""

    def __init__(self) -> None:
        super().__init__()
        self._child_watcher: Any = None

    def _loop_factory(self) -> EventLoop:  # type: ignore[override]
        return EventLoop()

    def new_event_loop(self) -> EventLoop:
        """Create a new ferroloop loop."""
        return EventLoop()

    if sys.version_info < (3, 14):
        # asyncio's Unix policy has these until 3.14 (deprecated from 3.12).
        # ferroloop's subprocesses watch their children themselves (pidfd),
        # so a watcher is only kept for programs that ask for one; the
        # default is asyncio's own pidfd watcher, which works on any loop.

        def get_child_watcher(self) -> Any:
            """Return the child watcher (asyncio's PidfdChildWatcher by default)."""
            if self._child_watcher is None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    self._child_watcher = asyncio.PidfdChildWatcher()
            _warn_watchers_deprecated("get_child_watcher")
            return self._child_watcher

        def set_child_watcher(self, watcher: Any) -> None:
            """Replace the child watcher (None: back to the default)."""
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                abstract = asyncio.AbstractChildWatcher
            if watcher is not None and not isinstance(watcher, abstract):
                raise TypeError(f"expected a child watcher or None, got {watcher!r}")
            if self._child_watcher is not None:
                self._child_watcher.close()
            self._child_watcher = watcher
            _warn_watchers_deprecated("set_child_watcher")


def _warn_watchers_deprecated(name: str) -> None:
    # As asyncio's own policy warns from 3.12 on.
    if sys.version_info >= (3, 12):
        warnings.warn(
            f"{name!r} is deprecated as of Python 3.12 and will be removed in Python 3.14.",
            DeprecationWarning,
            stacklevel=3,
        )


def install() -> None:
    """Make asyncio create ferroloop loops (sets the event-loop policy)."""
    if sys.version_info >= (3, 14):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_event_loop_policy(EventLoopPolicy())
    else:
        asyncio.set_event_loop_policy(EventLoopPolicy())
