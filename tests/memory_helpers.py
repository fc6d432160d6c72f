"""Measuring the Python memory an action leaves behind, without being fooled by
CPython's own process-wide tables.

A leak leaves something behind each time: many blocks allocated at the same
line. `tracemalloc`'s running total cannot tell that from a table that existed
before tracing started and was resized while it ran: the new table is traced in
full, the old one was never counted. CPython's interned-string dict is such a
table; it is resized now and then as mortal interned strings come and go
(`time.get_clock_info()`, which asyncio's loop calls once per loop, creates and
drops a few). With enough modules imported it is ~1.9 MB, so whether a test saw
it resized depended on which tests had run before.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable


def memory_left_behind(action: Callable[[], object], *, min_blocks: int) -> int:
    """Run `action` under tracemalloc; return the bytes still allocated after it,
    counting only lines that left at least `min_blocks` blocks alive."""
    gc.collect()
    tracemalloc.start()
    try:
        action()
        gc.collect()
        snapshot = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    return sum(stat.size for stat in snapshot.statistics("lineno") if stat.count >= min_blocks)
