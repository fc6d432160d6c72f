"""Low-level socket operations: the loop's `sock_*` methods."""

from __future__ import annotations

import asyncio
import socket
from typing import Any


class SocketOpsMixin:
    """Methods of `ferroloop.EventLoop` implemented in this module."""

    async def sock_connect(self: Any, sock: socket.socket, address: Any) -> None:
        """Connect the non-blocking `sock` to `address` without blocking the loop."""
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            infos = await self.getaddrinfo(
                *address[:2], family=sock.family, type=sock.type, proto=sock.proto
            )
            address = infos[0][4]
        try:
            sock.connect(address)
            return
        except (BlockingIOError, InterruptedError):
            pass
        fut: asyncio.Future[None] = self.create_future()
        fd = sock.fileno()

        def on_writable() -> None:
            if fut.done():
                return
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err != 0:
                fut.set_exception(OSError(err, f"Connect call failed {address}"))
            else:
                fut.set_result(None)

        self.add_writer(fd, on_writable)
        try:
            await fut
        finally:
            self.remove_writer(fd)
