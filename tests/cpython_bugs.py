"""asyncio bugs of particular CPython releases that our oracle tests run into.

Behavioural tests take asyncio's own loop as the oracle. Where the running
release has a known asyncio bug on a tested path, the test checks ferroloop
against the fixed behaviour and expects the run on asyncio's loop to fail.
The version ranges come from the CPython issues; an expected failure that
passes anyway is reported as XPASS, not as an error.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import pytest

_VERSION = sys.version_info[:3]


@dataclass(frozen=True)
class AsyncioBug:
    issue: str
    what: str
    affected: bool

    def xfail_on_asyncio(self, request: Any, loop_name: str) -> None:
        """Expect the asyncio parameter of the running test to fail on this release."""
        if self.affected and loop_name == "asyncio":
            request.applymarker(
                pytest.mark.xfail(reason=f"CPython {self.issue}: {self.what}", strict=False)
            )


WRITELINES_AFTER_CONNECTION_LOST = AsyncioBug(
    "gh-136234",
    "writelines() on a socket transport whose connection is lost raises",
    (3, 12, 0) <= _VERSION < (3, 13, 6),
)

DATAGRAM_HEADER_NEVER_DRAINS = AsyncioBug(
    "gh-135444",
    "queued datagrams' header bytes stay in the write buffer size, so writing never resumes",
    (3, 13, 0) <= _VERSION < (3, 13, 6),
)

TLS_BYTEARRAY_BUFFER_LOSES_DATA = AsyncioBug(
    "gh-156275",
    "over TLS, a BufferedProtocol whose get_buffer() returns a bytearray loses data",
    # Open in every release this project supports.
    True,
)

ABORT_AFTER_FLUSHING_CLOSE = AsyncioBug(
    "issue unfiled (agronholm/anyio#1250)",
    "abort() after a close() that had to flush buffered data raises AttributeError",
    # Every release this project supports (3.11.7, 3.12.1, 3.13.0 checked).
    True,
)
