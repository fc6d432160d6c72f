"""Low-level socket operations: the loop's `sock_*` methods.

The system calls run in Rust (`ferroloop._core.SockOps`): each call is tried
at once and returns a future that is already done when it succeeded, or that
completes when the socket becomes ready. The methods are coroutines, as
asyncio's are, so `asyncio.create_task(loop.sock_recv(...))` works. This
module adds what asyncio does once per call in Python: host-name resolution
for `sock_connect` and the argument checks and read-and-send fallback of
`sock_sendfile`.

Unlike asyncio (which checks only in debug mode), every method refuses a
blocking socket with ``ValueError("the socket must be non-blocking")``: a
system call on a blocking socket would stall the whole loop.
"""

from __future__ import annotations

import asyncio
import io
import os
import socket
from typing import Any

from . import _core, dns

#: The type of the futures the native operations return when they must wait.
_FUTURE = asyncio.Future

# asyncio.constants.SENDFILE_FALLBACK_READBUFFER_SIZE
_FALLBACK_BLOCK = 256 * 1024


class SocketOpsMixin:
    """Methods of `ferroloop.EventLoop` implemented in this module."""

    _sock_ops_core: _core.SockOps | None = None

    def _sock_ops(self) -> _core.SockOps:
        ops = self._sock_ops_core
        if ops is None:
            ops = self._sock_ops_core = _core.SockOps(self)
        return ops

    # recv, recv_into and sendall answer at once when the system call did not
    # have to wait (no future made); otherwise they return a future.

    async def sock_recv(self, sock: socket.socket, n: int) -> bytes:
        """Receive up to `n` bytes from `sock` (b'' at end of stream)."""
        ops = self._sock_ops_core
        if ops is None:
            ops = self._sock_ops()
        data = ops.recv(sock, n)
        if type(data) is _FUTURE:
            return await data
        return data

    async def sock_recv_into(self, sock: socket.socket, buf: Any) -> int:
        """Receive into the writable buffer `buf`; the result is the byte count."""
        ops = self._sock_ops_core
        if ops is None:
            ops = self._sock_ops()
        count = ops.recv_into(sock, buf)
        if type(count) is _FUTURE:
            return await count
        return count

    async def sock_recvfrom(self, sock: socket.socket, bufsize: int) -> tuple[bytes, Any]:
        """Receive a datagram of up to `bufsize` bytes: `(data, address)`."""
        return await self._sock_ops().recvfrom(sock, bufsize)

    async def sock_recvfrom_into(
        self, sock: socket.socket, buf: Any, nbytes: int = 0
    ) -> tuple[int, Any]:
        """Receive a datagram into `buf` (at most `nbytes`, 0: all of it): `(count, address)`."""
        # asyncio reads any false nbytes (None too) as "all of buf".
        return await self._sock_ops().recvfrom_into(sock, buf, nbytes or 0)

    async def sock_sendall(self, sock: socket.socket, data: Any) -> None:
        """Send all of `data`, waiting for the socket as often as needed."""
        ops = self._sock_ops_core
        if ops is None:
            ops = self._sock_ops()
        sending = ops.sendall(sock, data)
        if sending is not None:
            await sending

    async def sock_sendto(self, sock: socket.socket, data: Any, address: Any) -> int:
        """Send a datagram to `address`; the result is the byte count."""
        return await self._sock_ops().sendto(sock, data, address)

    async def sock_accept(self, sock: socket.socket) -> tuple[socket.socket, Any]:
        """Accept a connection: `(conn, address)`, with `conn` non-blocking."""
        return await self._sock_ops().accept(sock)

    async def sock_connect(self, sock: socket.socket, address: Any) -> None:
        """Connect `sock` to `address`, resolving host names without blocking the loop."""
        _check_socket(sock, self.get_debug())
        family = sock.family
        if family in (socket.AF_INET, socket.AF_INET6):
            infos = await dns.resolve_address(
                self, address, family=family, type=sock.type, proto=sock.proto
            )
            if not infos:
                raise OSError(f"getaddrinfo({address[0]!r}) returned empty list")
            address = infos[0][4]
        await self._sock_ops().connect(sock, address)

    async def sock_sendfile(
        self,
        sock: socket.socket,
        file: Any,
        offset: int = 0,
        count: int | None = None,
        *,
        fallback: bool | None = True,
    ) -> int:
        """Send `file` (from `offset`, `count` bytes or to its end) over `sock`.

        Uses `os.sendfile` for regular files; otherwise reads and sends when
        `fallback` is true and raises `asyncio.SendfileNotAvailableError`
        when it is not. The file position ends after the last byte sent.
        """
        _check_socket(sock, self.get_debug())
        check_sendfile_params(sock, file, offset, count)
        try:
            return await self._sock_sendfile_native(sock, file, offset, count)
        except asyncio.SendfileNotAvailableError:
            if not fallback:
                raise
        return await self._sock_sendfile_fallback(sock, file, offset, count)

    async def _sock_sendfile_native(
        self, sock: socket.socket, file: Any, offset: int, count: int | None
    ) -> int:
        try:
            fileno = file.fileno()
        except (AttributeError, io.UnsupportedOperation):
            raise asyncio.SendfileNotAvailableError("not a regular file") from None
        try:
            size = os.fstat(fileno).st_size
        except OSError:
            raise asyncio.SendfileNotAvailableError("not a regular file") from None
        blocksize = count if count else size
        if not blocksize:
            return 0  # an empty file, as asyncio reports it
        return await self._sock_ops().sendfile(sock, fileno, offset, count or 0, blocksize)

    async def _sock_sendfile_fallback(
        self, sock: socket.socket, file: Any, offset: int, count: int | None
    ) -> int:
        if offset:
            file.seek(offset)
        blocksize = min(count, _FALLBACK_BLOCK) if count else _FALLBACK_BLOCK
        buffer = bytearray(blocksize)
        total_sent = 0
        try:
            while True:
                if count:
                    blocksize = min(count - total_sent, blocksize)
                    if blocksize <= 0:
                        return total_sent
                view = memoryview(buffer)[:blocksize]
                read = await self.run_in_executor(  # type: ignore[attr-defined]
                    None, file.readinto, view
                )
                if not read:
                    return total_sent
                await self.sock_sendall(sock, view[:read])
                total_sent += read
        finally:
            if total_sent > 0 and hasattr(file, "seek"):
                file.seek(offset + total_sent)


def _check_socket(sock: socket.socket, debug: bool) -> None:
    """The checks every `sock_*` method makes (the native ones make them in Rust).

    As asyncio, a blocking socket is refused only in debug mode.
    """
    try:
        import ssl
    except ImportError:  # pragma: no cover - Python built without ssl
        pass
    else:
        if isinstance(sock, ssl.SSLSocket):
            raise TypeError("Socket cannot be of type SSLSocket")
    if debug and sock.gettimeout() != 0:
        raise ValueError("the socket must be non-blocking")


def check_sendfile_params(sock: socket.socket, file: Any, offset: Any, count: Any) -> None:
    if "b" not in getattr(file, "mode", "b"):
        raise ValueError("file should be opened in binary mode")
    if sock.type != socket.SOCK_STREAM:
        raise ValueError("only SOCK_STREAM type sockets are supported")
    if count is not None:
        if not isinstance(count, int):
            raise TypeError(f"count must be a positive integer (got {count!r})")
        if count <= 0:
            raise ValueError(f"count must be a positive integer (got {count!r})")
    if not isinstance(offset, int):
        raise TypeError(f"offset must be a non-negative integer (got {offset!r})")
    if offset < 0:
        raise ValueError(f"offset must be a non-negative integer (got {offset!r})")
