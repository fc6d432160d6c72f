"""`loop.sendfile(transport, file, ...)`: zero-copy for plain socket transports.

The native path empties the transport's write buffer, then moves the file
with `os.sendfile` straight from the page cache to the socket, waiting for
writability through the transport itself (its descriptor belongs to the
transport, so nothing else may watch it). Other transports (TLS, pipes) get
asyncio's read-and-write fallback, with the protocol swapped out so that flow
control still applies.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from asyncio import base_events, constants
from asyncio import exceptions as aio_exceptions
from typing import Any

from .sockets import check_sendfile_params

#: os.sendfile moves at most this much per call on Linux.
_MAX_SENDFILE_BLOCK = 0x7FFFF000
_FALLBACK_BLOCK = 16 * 1024


async def sendfile_over_transport(
    loop: Any,
    transport: Any,
    file: Any,
    offset: int,
    count: int | None,
    fallback: bool,
) -> int:
    """Implement `AbstractEventLoop.sendfile` with asyncio's rules and errors."""
    if transport.is_closing():
        raise RuntimeError("Transport is closing")
    mode = getattr(transport, "_sendfile_compatible", constants._SendfileMode.UNSUPPORTED)
    if mode is constants._SendfileMode.UNSUPPORTED:
        raise RuntimeError(f"sendfile is not supported for transport {transport!r}")
    if mode is constants._SendfileMode.TRY_NATIVE:
        try:
            return await _sendfile_native(loop, transport, file, offset, count)
        except aio_exceptions.SendfileNotAvailableError:
            if not fallback:
                raise
    if not fallback:
        raise RuntimeError(
            f"fallback is disabled and native sendfile is not supported for transport {transport!r}"
        )
    return await _sendfile_fallback(loop, transport, file, offset, count)


def _regular_file_size(file: Any) -> int:
    try:
        fileno = file.fileno()
    except (AttributeError, io.UnsupportedOperation) as err:
        raise aio_exceptions.SendfileNotAvailableError("not a regular file") from err
    try:
        info = os.fstat(fileno)
    except OSError as err:
        raise aio_exceptions.SendfileNotAvailableError("not a regular file") from err
    if not stat.S_ISREG(info.st_mode):
        raise aio_exceptions.SendfileNotAvailableError("not a regular file")
    return info.st_size


async def _drained(loop: Any, transport: Any) -> None:
    waiter = loop.create_future()
    transport._core._wait_drained(waiter)
    await waiter


async def _sendfile_native(
    loop: Any, transport: Any, file: Any, offset: int, count: int | None
) -> int:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        check_sendfile_params(sock, file, offset, count)
    size = _regular_file_size(file)
    if offset >= size:
        return 0
    end = size if count is None else min(size, offset + count)
    fileno = file.fileno()
    sock_fd = transport._core._fileno
    resume_reading = transport.is_reading()
    transport.pause_reading()
    transport._core._set_sendfile_active(True)
    sent_total = 0
    try:
        await _drained(loop, transport)
        while offset + sent_total < end:
            block = min(end - offset - sent_total, _MAX_SENDFILE_BLOCK)
            try:
                sent = os.sendfile(sock_fd, fileno, offset + sent_total, block)
            except (BlockingIOError, InterruptedError):
                await _drained(loop, transport)
                continue
            except OSError as exc:
                if sent_total == 0 and exc.errno in (errno.ENOTSOCK, errno.ENOTSUP, errno.EINVAL):
                    raise aio_exceptions.SendfileNotAvailableError(
                        "os.sendfile() is not available for this socket"
                    ) from exc
                raise
            if sent == 0:
                break
            sent_total += sent
        return sent_total
    finally:
        transport._core._set_sendfile_active(False)
        if sent_total > 0:
            file.seek(offset + sent_total)
        if resume_reading:
            transport.resume_reading()


async def _sendfile_fallback(
    loop: Any, transport: Any, file: Any, offset: int, count: int | None
) -> int:
    if offset:
        file.seek(offset)
    block = min(count, _FALLBACK_BLOCK) if count else _FALLBACK_BLOCK
    buffer = bytearray(block)
    sent_total = 0
    flow = base_events._SendfileFallbackProtocol(transport)
    try:
        while True:
            if count:
                block = min(count - sent_total, block)
                if block <= 0:
                    return sent_total
            view = memoryview(buffer)[:block]
            read = await loop.run_in_executor(None, file.readinto, view)
            if not read:
                return sent_total
            await flow.drain()
            transport.write(view[:read])
            sent_total += read
    finally:
        if sent_total > 0 and hasattr(file, "seek"):
            file.seek(offset + sent_total)
        await flow.restore()
