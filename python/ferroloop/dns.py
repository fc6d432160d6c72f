"""Name resolution that never blocks the loop."""

from __future__ import annotations

import asyncio
import socket
from typing import Any


async def getaddrinfo(
    loop: asyncio.AbstractEventLoop,
    host: Any,
    port: Any,
    *,
    family: int = 0,
    type: int = 0,
    proto: int = 0,
    flags: int = 0,
) -> list[tuple[Any, ...]]:
    """`socket.getaddrinfo` run in the loop's default executor."""
    return await loop.run_in_executor(
        None, socket.getaddrinfo, host, port, family, type, proto, flags
    )


async def getnameinfo(
    loop: asyncio.AbstractEventLoop, sockaddr: tuple[Any, ...], flags: int = 0
) -> tuple[str, str]:
    """`socket.getnameinfo` run in the loop's default executor."""
    return await loop.run_in_executor(None, socket.getnameinfo, sockaddr, flags)
