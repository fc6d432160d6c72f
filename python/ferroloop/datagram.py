"""UDP (and Unix datagram) endpoints: `create_datagram_endpoint`.

The transport's I/O is native (`ferroloop._core.DatagramTransport`): receiving
a datagram, building its `bytes` and sender address, and sending (or queueing)
one happen in Rust. This module creates and configures the socket exactly as
asyncio's `create_datagram_endpoint` does and provides the
`asyncio.DatagramTransport` object protocols see, whose hot methods are the
native object's methods bound onto the instance.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import warnings
from asyncio import futures, selector_events, trsock
from asyncio.log import logger
from collections.abc import Callable
from typing import Any

from . import _core, dns
from .transports import describe_socket_transport, wait_opened
from .versions import PY313

ProtocolFactory = Callable[[], asyncio.BaseProtocol]

#: Native methods exposed on the wrapper instance without a Python frame.
_DIRECT_METHODS = (
    "sendto",
    "abort",
    "close",
    "is_closing",
    "is_reading",
    "pause_reading",
    "resume_reading",
    "get_write_buffer_size",
    "get_write_buffer_limits",
    "set_write_buffer_limits",
)

#: Bytes a queued datagram adds to the write buffer size beyond its payload
#: (asyncio >= 3.13 counts the UDP header; older versions count the payload only).
_HEADER_SIZE: int = getattr(selector_events._SelectorDatagramTransport, "_header_size", 0)

#: asyncio sends empty datagrams from 3.13 on; before, `sendto(b"")` does nothing.
_SEND_EMPTY = PY313


def _check_datagram_socket(sock: socket.socket) -> None:
    # 3.13 accepts any socket that is not a stream (raw, seqpacket) and words it anew.
    if PY313:
        if sock.type == socket.SOCK_STREAM:
            raise ValueError(f"A datagram socket was expected, got {sock!r}")
    elif sock.type != socket.SOCK_DGRAM:
        raise ValueError(f"A UDP Socket was expected, got {sock!r}")


class DatagramTransport(asyncio.Transport, asyncio.DatagramTransport):
    """A datagram transport over a UDP or Unix datagram socket."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol: asyncio.BaseProtocol,
        address: Any = None,
        waiter: asyncio.Future[Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(extra)
        self._extra["socket"] = trsock.TransportSocket(sock)
        try:
            self._extra["sockname"] = sock.getsockname()
        except OSError:
            self._extra["sockname"] = None
        if "peername" not in self._extra:
            try:
                self._extra["peername"] = sock.getpeername()
            except OSError:
                self._extra["peername"] = None
        self._loop = loop
        self._sock_object: socket.socket | None = sock
        self._address = address
        self._core = _core.DatagramTransport(
            loop,
            sock,
            sock.fileno(),
            sock.family,
            self,
            protocol,
            address,
            bool(self._extra["peername"]),
            _HEADER_SIZE,
            _SEND_EMPTY,
        )
        for name in _DIRECT_METHODS:
            setattr(self, name, getattr(self._core, name))
        self._core._attach()
        loop.call_soon(protocol.connection_made, self)
        # Reading starts only once connection_made() has run.
        loop.call_soon(self._core._start_reading)
        if waiter is not None:
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    @property
    def _sock(self) -> socket.socket | None:
        """The socket, until the transport has closed it (asyncio's attribute)."""
        core = getattr(self, "_core", None)
        if core is None or core._released:
            return None
        return self._sock_object

    def __repr__(self) -> str:
        return describe_socket_transport(self, self._core)

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        core = getattr(self, "_core", None)
        if core is not None and not core._released:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            core._release()

    # Overridden per instance by the native methods (see _DIRECT_METHODS); these
    # class-level definitions document them and serve type checkers.

    def sendto(self, data: Any, addr: Any = None) -> None:
        """Send `data` to `addr` (None: the connected peer), queueing it if the socket is full."""
        self._core.sendto(data, addr)

    def close(self) -> None:
        """Close after sending queued datagrams; the protocol's connection_lost(None) follows."""
        self._core.close()

    def abort(self) -> None:
        """Close at once, dropping queued datagrams."""
        self._core.abort()

    def is_closing(self) -> bool:
        return bool(self._core.is_closing())

    def get_write_buffer_size(self) -> int:
        return int(self._core.get_write_buffer_size())

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._core._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Switch the protocol that receives datagrams."""
        self._core._set_protocol(protocol)

    def _force_close(self, exc: BaseException | None) -> None:
        self._core._force_close(exc)


class DatagramMixin:
    """Methods of `ferroloop.EventLoop` implemented in this module."""

    def _make_datagram_transport(
        self: Any,
        sock: socket.socket,
        protocol: asyncio.BaseProtocol,
        address: Any = None,
        waiter: asyncio.Future[Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> DatagramTransport:
        """asyncio's hook for wrapping a datagram socket in a transport."""
        return DatagramTransport(self, sock, protocol, address, waiter, extra)

    async def create_datagram_endpoint(
        self: Any,
        protocol_factory: ProtocolFactory,
        local_addr: Any = None,
        remote_addr: Any = None,
        *,
        family: int = 0,
        proto: int = 0,
        flags: int = 0,
        reuse_port: bool | None = None,
        allow_broadcast: bool | None = None,
        sock: socket.socket | None = None,
    ) -> tuple[asyncio.DatagramTransport, asyncio.BaseProtocol]:
        """Create a datagram endpoint: a (transport, protocol) pair.

        Either `sock` (an existing datagram socket) or the socket's parameters:
        `local_addr` to bind to, `remote_addr` to connect to, `family`,
        `proto`, `flags` for name resolution, `reuse_port` and
        `allow_broadcast`. Host names are resolved with `self.getaddrinfo`.
        """
        remote_address: Any = None
        if sock is not None:
            _check_datagram_socket(sock)
            given = {
                "local_addr": local_addr,
                "remote_addr": remote_addr,
                "family": family,
                "proto": proto,
                "flags": flags,
                "reuse_port": reuse_port,
                "allow_broadcast": allow_broadcast,
            }
            if any(given.values()):
                problems = ", ".join(f"{key}={value}" for key, value in given.items() if value)
                raise ValueError(
                    "socket modifier keyword arguments can not be used "
                    f"when sock is specified. ({problems})"
                )
            sock.setblocking(False)
        else:
            candidates = await _endpoint_candidates(
                self, local_addr, remote_addr, family, proto, flags
            )
            sock, remote_address = await _open_endpoint_socket(
                self, candidates, local_addr, remote_addr, reuse_port, allow_broadcast
            )

        protocol = protocol_factory()
        waiter = self.create_future()
        transport = self._make_datagram_transport(sock, protocol, remote_address, waiter)
        if self.get_debug():
            if local_addr:
                logger.info(
                    "Datagram endpoint local_addr=%r remote_addr=%r created: (%r, %r)",
                    local_addr,
                    remote_addr,
                    transport,
                    protocol,
                )
            else:
                logger.debug(
                    "Datagram endpoint remote_addr=%r created: (%r, %r)",
                    remote_addr,
                    transport,
                    protocol,
                )
        await wait_opened(transport, waiter)
        return transport, protocol


#: ((family, proto), (local address, remote address)) pairs to try in order.
Candidates = list[tuple[tuple[int, int], tuple[Any, Any]]]


async def _endpoint_candidates(
    loop: Any, local_addr: Any, remote_addr: Any, family: int, proto: int, flags: int
) -> Candidates:
    """The socket families and addresses `create_datagram_endpoint` may use."""
    if not (local_addr or remote_addr):
        if family == 0:
            raise ValueError("unexpected address family")
        return [((family, proto), (None, None))]
    if family == socket.AF_UNIX:
        for addr in (local_addr, remote_addr):
            if addr is not None and not isinstance(addr, str):
                raise TypeError("string is expected")
        if local_addr and local_addr[0] not in (0, "\x00"):
            _remove_stale_unix_socket(local_addr)
        return [((family, proto), (local_addr, remote_addr))]

    # Group the resolved addresses by (family, proto), keeping first-seen order.
    by_key: dict[tuple[int, int], list[Any]] = {}
    for index, addr in ((0, local_addr), (1, remote_addr)):
        if addr is None:
            continue
        if not (isinstance(addr, tuple) and len(addr) == 2):
            raise TypeError("2-tuple is expected")
        infos = await dns.resolve_address(
            loop, addr, family=family, type=socket.SOCK_DGRAM, proto=proto, flags=flags
        )
        if not infos:
            raise OSError("getaddrinfo() returned empty list")
        for info_family, _type, info_proto, _name, address in infos:
            pair = by_key.setdefault((info_family, info_proto), [None, None])
            pair[index] = address
    # Keep only the keys for which every requested address resolved.
    candidates: Candidates = [
        (key, (pair[0], pair[1]))
        for key, pair in by_key.items()
        if not ((local_addr and pair[0] is None) or (remote_addr and pair[1] is None))
    ]
    if not candidates:
        raise ValueError("can not get address information")
    return candidates


async def _open_endpoint_socket(
    loop: Any,
    candidates: Candidates,
    local_addr: Any,
    remote_addr: Any,
    reuse_port: bool | None,
    allow_broadcast: bool | None,
) -> tuple[socket.socket, Any]:
    """Create, configure, bind and connect the first candidate that works.

    Raises the first candidate's OSError when none works.
    """
    errors: list[OSError] = []
    for (family, proto), (local_address, remote_address) in candidates:
        sock: socket.socket | None = None
        try:
            sock = socket.socket(family=family, type=socket.SOCK_DGRAM, proto=proto)
            if reuse_port:
                _set_reuse_port(sock)
            if allow_broadcast:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            sock.setblocking(False)
            if local_addr:
                sock.bind(local_address)
            if remote_addr:
                # With broadcast allowed the socket stays unconnected, so that
                # it can also send to other addresses; remote_addr becomes the
                # default destination.
                if not allow_broadcast:
                    await loop.sock_connect(sock, remote_address)
                return sock, remote_address
            return sock, None
        except OSError as exc:
            if sock is not None:
                sock.close()
            errors.append(exc)
        except BaseException:
            if sock is not None:
                sock.close()
            raise
    raise errors[0]


def _set_reuse_port(sock: socket.socket) -> None:
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError("reuse_port not supported by socket module")
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    except OSError:
        raise ValueError(
            "reuse_port not supported by socket module, SO_REUSEPORT defined but not implemented."
        ) from None


def _remove_stale_unix_socket(path: str) -> None:
    """Remove a leftover socket file at `path` so that bind() can succeed."""
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.remove(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        # The directory may only allow creating the socket.
        logger.error("Unable to check or remove stale UNIX socket %r: %r", path, err)
