"""The legacy, policy-based way to make asyncio use ferroloop.

Event-loop policies are deprecated from Python 3.14; prefer `ferroloop.run`,
`asyncio.Runner(loop_factory=ferroloop.new_event_loop)` or `python -m ferroloop`.
"""

from __future__ import annotations

import asyncio
import sys
from asyncio import events

from .event_loop import EventLoop

if sys.version_info >= (3, 14):
    _PolicyBase = events._BaseDefaultEventLoopPolicy  # type: ignore[attr-defined]
else:
    _PolicyBase = events.BaseDefaultEventLoopPolicy


class EventLoopPolicy(_PolicyBase):  # type: ignore[misc, valid-type]
    """An event-loop policy whose loops are ferroloop loops."""

    def _loop_factory(self) -> EventLoop:  # type: ignore[override]
        return EventLoop()

    def new_event_loop(self) -> EventLoop:
        """Create a new ferroloop loop."""
        return EventLoop()


def install() -> None:
    """Make asyncio create ferroloop loops (sets the event-loop policy)."""
    if sys.version_info >= (3, 14):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            asyncio.set_event_loop_policy(EventLoopPolicy())
    else:
        asyncio.set_event_loop_policy(EventLoopPolicy())
