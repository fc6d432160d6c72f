"""ferroloop: Python's asyncio event loop, rebuilt in Rust.

A drop-in replacement: change one line and asyncio programs run on it.

    import ferroloop
    ferroloop.run(main())

    with asyncio.Runner(loop_factory=ferroloop.new_event_loop) as runner:
        runner.run(main())
"""

from __future__ import annotations

from ._core import Handle, TimerHandle, __version__
from .event_loop import EventLoop, new_event_loop
from .policy import EventLoopPolicy, install
from .runner import run

Loop = EventLoop

__all__ = [
    "EventLoop",
    "EventLoopPolicy",
    "Handle",
    "Loop",
    "TimerHandle",
    "__version__",
    "install",
    "new_event_loop",
    "run",
]
