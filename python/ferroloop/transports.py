"""The `asyncio.Transport` objects protocols see.

Each wraps a native `ferroloop._core.StreamTransport`, which does the actual
I/O. The hot methods (`write`, `writelines`, `is_closing`, ...) are the native
object's methods bound onto the wrapper instance, so calling them costs no
Python frame; the rest (extra info, protocol switching, repr) lives here and
runs rarely.
"""

from __future__ import annotations

import _socket
import asyncio
import socket
import warnings
from asyncio import constants, transports, trsock
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _core
from .tls_protocol import LeanSSLProtocol

if TYPE_CHECKING:
    from .server import Server

#: Native methods exposed on the wrapper instance without a Python frame.
_DIRECT_METHODS = (
    "write",
    "writelines",
    "write_eof",
    "can_write_eof",
    "abort",
    "is_closing",
    "is_reading",
    "pause_reading",
    "resume_reading",
    "get_write_buffer_size",
    "get_write_buffer_limits",
    "set_write_buffer_limits",
)

_INET_FAMILIES = (socket.AF_INET, socket.AF_INET6)
_ADDRESSES = frozenset({"sockname", "peername"})
_MADE_ON_USE = _ADDRESSES | {"socket"}
#: The C getter behind `socket.socket.family`: the plain int, without the
#: Python-level property's AddressFamily conversion.
_raw_family = _socket.socket.family.__get__


class _Direct:
    """A native method of the transport's core, bound onto the instance on first use.

    After the first access the bound native method is an instance attribute
    (this is a non-data descriptor), so later calls cost no Python frame;
    connections that never use a method never pay for binding it. It is set
    with setattr rather than through `__dict__`: touching `__dict__` would
    make CPython build a real dict for the instance's inline attributes.
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __get__(self, instance: Any, owner: Any = None) -> Any:
        if instance is None:
            return self
        method = getattr(instance._core, self.name)
        setattr(instance, self.name, method)
        return method


async def wait_opened(transport: asyncio.BaseTransport, waiter: asyncio.Future[Any]) -> None:
    """Wait for a new transport's waiter; close the transport if opening failed
    or the wait was cancelled, as asyncio's create_* methods do."""
    try:
        await waiter
    except BaseException:
        transport.close()
        raise


def _is_buffered(protocol: object) -> bool:
    # TLS records arrive as bytes: one call into Python per read instead of two.
    return isinstance(protocol, asyncio.BufferedProtocol) and not isinstance(
        protocol, LeanSSLProtocol
    )


class SocketExtra(dict[str, Any]):
    """A socket transport's `_extra`, which asyncio's `get_extra_info` reads.

    asyncio fills in 'socket', 'sockname' and 'peername' when it makes the
    transport. Here the native core records the addresses then, and they are
    converted into Python objects on first use, as is the 'socket' entry:
    most connections never ask. The transport keeps asyncio's own
    `get_extra_info` (code that patches it on asyncio's classes reaches ours).
    """

    __slots__ = ("_core", "_family")

    _core: Any
    _family: int | None

    def __missing__(self, name: str) -> Any:
        if name not in _MADE_ON_USE:
            raise KeyError(name)
        core = self._core
        if name in _ADDRESSES:
            value = core._address(name == "peername")
        else:
            sock = core._socket()
            value = self._closed_socket() if sock is None else trsock.TransportSocket(sock)
        self[name] = value
        return value

    def __contains__(self, name: object) -> bool:
        return dict.__contains__(self, name) or name in _MADE_ON_USE

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        try:
            return self[name]
        except KeyError:
            return default

    def _closed_socket(self) -> trsock.TransportSocket | None:
        """After close, asyncio still returns a TransportSocket (over a closed
        socket); give one of the right family."""
        if self._family is None:
            return None
        placeholder = socket.socket(self._family, socket.SOCK_STREAM)
        placeholder.close()
        return trsock.TransportSocket(placeholder)


def describe_socket_transport(transport: asyncio.BaseTransport, core: Any) -> str:
    """A socket transport's repr, in the words of asyncio's selector transports."""
    parts = [transport.__class__.__name__]
    if core._released:
        parts.append("closed")
    elif core.is_closing():
        parts.append("closing")
    parts.append(f"fd={core._fileno}")
    if not core._released and not transport._loop.is_closed():  # type: ignore[attr-defined]
        reading, writing = core._polling
        parts.append("read=polling" if reading else "read=idle")
        state = "polling" if writing else "idle"
        parts.append(f"write=<{state}, bufsize={core.get_write_buffer_size()}>")
    return f"<{' '.join(parts)}>"


def socket_extra(core: Any, family: int | None, given: dict[str, Any] | None) -> SocketExtra:
    """The `_extra` of a transport over `core`, with the entries `given` at creation."""
    extra = SocketExtra() if given is None else SocketExtra(given)
    extra._core = core
    extra._family = family
    return extra


class _ExtraOnFirstUse:
    """`SocketTransport._extra`, made when first read (a non-data descriptor:
    once made, the instance attribute shadows it). Most connections never ask."""

    def __get__(self, transport: SocketTransport | None, owner: type | None = None) -> Any:
        if transport is None:
            return self
        extra = socket_extra(transport._core, transport._family, None)
        transport.__dict__["_extra"] = extra
        return extra


class SocketTransport(transports._FlowControlMixin, asyncio.Transport):
    """A stream transport over a connected TCP or Unix socket.

    It is a `_FlowControlMixin`, like asyncio's socket transports, because
    asyncio's own helpers (the sendfile fallback) require one; the flow
    control itself is native.
    """

    #: The native core; None until __init__ (or the native constructor) sets it.
    #: A class default instead of getattr(self, "_core", None) in __del__: that
    #: builtin call cost ~350 instructions per transport in the connect storm.
    _core: Any = None
    _extra = _ExtraOnFirstUse()  # type: ignore[assignment]
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE
    _start_tls_compatible = True

    # asyncio's defaults; the native core owns the real limits (set_write_buffer_limits).
    _high_water = 64 * 1024
    _low_water = 16 * 1024

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket | None,
        fd: int,
        protocol: asyncio.BaseProtocol,
        *,
        extra: dict[str, Any] | None = None,
        server: Server | None = None,
        waiter: asyncio.Future[Any] | None = None,
        family: int | None = None,
    ) -> None:
        # What BaseTransport.__init__ and _FlowControlMixin.__init__ do, inline
        # (once per connection; the flow-control state itself is native).
        # src/socket_transport.rs sets the same attributes on transports it makes:
        # keep the two in step.
        self._loop = loop
        self._server = server
        if sock is not None:
            family = _raw_family(sock)
        self._family = family
        # The core records the socket's addresses now, as asyncio does (they
        # stay known after a reset); get_extra_info converts them when asked.
        core = self._core = _core.StreamTransport(
            loop, fd, sock, self, protocol, _is_buffered(protocol)
        )
        if extra is not None:
            self._extra = socket_extra(core, family, extra)
        if isinstance(sock, socket.socket) and family in _INET_FAMILIES:
            _set_nodelay(sock)
        core._attach(server)
        if server is not None:
            server._attach(self)
        # connection_made, then reading, then the waiter: one native callback.
        core._open(waiter)

    def __repr__(self) -> str:
        return describe_socket_transport(self, self._core)

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        # As asyncio's: a socket not yet closed (a close() still flushing too)
        # is closed here, without calling the protocol.
        core = self._core
        if core is not None and not core._released:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            core._release()

    @property  # type: ignore[override]
    def _protocol_paused(self) -> bool:
        core = self._core
        return bool(core is not None and core._protocol_paused)

    @_protocol_paused.setter
    def _protocol_paused(self, value: bool) -> None:
        # The native core owns this state; _FlowControlMixin.__init__ assigns it.
        pass

    def close(self) -> None:
        """Close after flushing buffered data; the protocol's connection_lost(None) follows."""
        self._core.close()

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._core._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Switch the protocol that receives data (StreamWriter.start_tls does this)."""
        self._core._set_protocol(protocol, _is_buffered(protocol))

    def _force_close(self, exc: BaseException | None) -> None:
        self._core._force_close(exc)


for _name in _DIRECT_METHODS:
    setattr(SocketTransport, _name, _Direct(_name))
del _name


def _set_nodelay(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass
