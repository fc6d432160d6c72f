"""Pipe transports: `connect_read_pipe` and `connect_write_pipe`.

The I/O runs in the Rust core (`_core.PipeTransport`): reads, writes, write
buffering, flow control and the close/abort life cycle. The classes here are
the `asyncio.ReadTransport` / `asyncio.Transport` objects protocols see;
like the socket transports, their hot methods are the native object's methods
bound onto the instance. What runs once per pipe (validating the descriptor,
making it non-blocking, scheduling `connection_made`) is Python.
"""

from __future__ import annotations

import asyncio
import os
import stat
import warnings
from asyncio import futures
from asyncio.log import logger
from collections.abc import Callable
from typing import Any

from . import _core
from .transports import wait_opened

ProtocolFactory = Callable[[], asyncio.BaseProtocol]

#: Native methods exposed on a read pipe transport without a Python frame.
_READ_METHODS = ("is_closing", "is_reading", "pause_reading", "resume_reading")

#: Native methods exposed on a write pipe transport without a Python frame.
_WRITE_METHODS = (
    "write",
    "writelines",
    "write_eof",
    "can_write_eof",
    "abort",
    "is_closing",
    "get_write_buffer_size",
    "get_write_buffer_limits",
    "set_write_buffer_limits",
)


class _PipeTransportMixin:
    """What read and write pipe transports share: the native core, protocol
    access, repr, and the warning for a transport that was never closed."""

    _core: Any
    _direction: str

    def _setup(
        self,
        loop: Any,
        pipe: Any,
        protocol: asyncio.BaseProtocol,
        waiter: asyncio.Future[Any] | None,
        *,
        writable: bool,
        allowed: Callable[[int], bool],
        error: str,
        methods: tuple[str, ...],
    ) -> None:
        extra: dict[str, Any] = self._extra  # type: ignore[attr-defined]
        extra["pipe"] = pipe
        self._loop = loop
        fd = pipe.fileno()
        mode = os.fstat(fd).st_mode
        if not allowed(mode):
            raise ValueError(error)
        os.set_blocking(fd, False)
        # The reader trick (readable write end = reader gone) works for FIFOs
        # and sockets; character devices (ttys) do not report it.
        watch_peer = writable and (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode))
        core = _core.PipeTransport(loop, fd, pipe, self, protocol, writable, watch_peer)
        self._core = core
        for name in methods:
            setattr(self, name, getattr(core, name))
        core._attach()
        loop.call_soon(protocol.connection_made, self)
        # Only start reading (or watching the reader) once connection_made() ran.
        loop.call_soon(core._start)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    def __repr__(self) -> str:
        core = getattr(self, "_core", None)
        info = [self.__class__.__name__]
        if core is None or core._closed:
            info.append("closed")
        elif core.is_closing():
            info.append("closing")
        if core is not None:
            info.append(f"fd={core._fileno}")
            if not core._closed and self._loop.is_closed():
                # asyncio can no longer ask its selector and says "open".
                info.append("open")
            elif not core._closed:
                info.append("polling" if core._polling else "idle")
                if self._direction == "write":
                    info.append(f"bufsize={core.get_write_buffer_size()}")
            else:
                info.append("closed")  # asyncio's words, twice
        return "<{}>".format(" ".join(info))

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        core = getattr(self, "_core", None)
        if core is not None and not core._closed:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            core._release()

    def close(self) -> None:
        """Close the transport; the protocol's connection_lost(None) follows
        (for a write pipe, once buffered data is flushed)."""
        self._core.close()

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._core._protocol  # type: ignore[no-any-return]

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Switch the protocol that receives the transport's events."""
        self._core._set_protocol(protocol)

    def _force_close(self, exc: BaseException | None) -> None:
        self._core._force_close(exc)


class ReadPipeTransport(_PipeTransportMixin, asyncio.ReadTransport):
    """The read end of a pipe, a FIFO, a socket or a character device (pty)."""

    #: asyncio's read size per iteration (informational; the core uses it).
    max_size = 256 * 1024
    _direction = "read"

    def __init__(
        self,
        loop: Any,
        pipe: Any,
        protocol: asyncio.BaseProtocol,
        waiter: asyncio.Future[Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(extra)
        self._setup(
            loop,
            pipe,
            protocol,
            waiter,
            writable=False,
            allowed=_readable_kind,
            error="Pipe transport is for pipes/sockets only.",
            methods=_READ_METHODS,
        )


class WritePipeTransport(_PipeTransportMixin, asyncio.Transport):
    """The write end of a pipe, a FIFO, a socket or a character device (pty).

    An `asyncio.Transport`, not only a `WriteTransport`, as asyncio's is (its
    flow-control base class is a full transport): the reading methods exist
    and raise `NotImplementedError`."""

    _direction = "write"

    def __init__(
        self,
        loop: Any,
        pipe: Any,
        protocol: asyncio.BaseProtocol,
        waiter: asyncio.Future[Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(extra)
        self._setup(
            loop,
            pipe,
            protocol,
            waiter,
            writable=True,
            allowed=_writable_kind,
            error="Pipe transport is only for pipes, sockets and character devices",
            methods=_WRITE_METHODS,
        )


def _readable_kind(mode: int) -> bool:
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)


def _writable_kind(mode: int) -> bool:
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


class PipesMixin:
    """Methods of `ferroloop.EventLoop` implemented in this module."""

    async def connect_read_pipe(
        self, protocol_factory: ProtocolFactory, pipe: Any
    ) -> tuple[asyncio.ReadTransport, asyncio.BaseProtocol]:
        """Wrap the readable file-like object `pipe`; return (transport, protocol)."""
        protocol = protocol_factory()
        waiter = self.create_future()  # type: ignore[attr-defined]
        transport = self._make_read_pipe_transport(pipe, protocol, waiter)
        await wait_opened(transport, waiter)
        if self.get_debug():  # type: ignore[attr-defined]
            logger.debug("Read pipe %r connected: (%r, %r)", pipe.fileno(), transport, protocol)
        return transport, protocol

    async def connect_write_pipe(
        self, protocol_factory: ProtocolFactory, pipe: Any
    ) -> tuple[asyncio.WriteTransport, asyncio.BaseProtocol]:
        """Wrap the writable file-like object `pipe`; return (transport, protocol)."""
        protocol = protocol_factory()
        waiter = self.create_future()  # type: ignore[attr-defined]
        transport = self._make_write_pipe_transport(pipe, protocol, waiter)
        await wait_opened(transport, waiter)
        if self.get_debug():  # type: ignore[attr-defined]
            logger.debug("Write pipe %r connected: (%r, %r)", pipe.fileno(), transport, protocol)
        return transport, protocol

    def _make_read_pipe_transport(
        self,
        pipe: Any,
        protocol: asyncio.BaseProtocol,
        waiter: asyncio.Future[Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> ReadPipeTransport:
        return ReadPipeTransport(self, pipe, protocol, waiter, extra)

    def _make_write_pipe_transport(
        self,
        pipe: Any,
        protocol: asyncio.BaseProtocol,
        waiter: asyncio.Future[Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> WritePipeTransport:
        return WritePipeTransport(self, pipe, protocol, waiter, extra)
