"""Random programs of callbacks, futures, tasks, socket transports, readers
and a server (scheduling_oracle.ScheduledProgram) leave the same trace on
asyncio's loop and on ferroloop.
"""

from __future__ import annotations

import pytest
from scheduling_oracle import ScheduledProgram, differing_seeds

SEEDS = range(400)


@pytest.mark.parametrize("first_seed", range(0, len(SEEDS), 100))
def test_random_programs_trace_as_on_asyncio(first_seed: int) -> None:
    seeds = SEEDS[first_seed : first_seed + 100]
    assert differing_seeds(ScheduledProgram, seeds) == {}
