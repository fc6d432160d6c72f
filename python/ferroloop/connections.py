"""Stream connections and servers: `create_connection`, `create_server`,
`create_unix_connection`, `create_unix_server`, `connect_accepted_socket`,
`sendfile`.

Everything here runs once per connection or per server: argument checks,
name resolution, happy eyeballs, socket options. The connected socket is then
handed to the native stream transport (see `transports.py`).
"""

from __future__ import annotations

import asyncio
import collections
import errno
import itertools
import os
import socket
import stat
import sys
from asyncio import staggered
from asyncio.log import logger
from collections.abc import Callable
from typing import Any

from . import _core, dns
from .server import Server, resolve_hosts
from .sockets import SocketOpsMixin
from .transports import SocketTransport, wait_opened
from .versions import PY313, keywords_since

ProtocolFactory = Callable[[], asyncio.BaseProtocol]
AddrInfo = tuple[Any, ...]

#: asyncio's default timeouts for TLS, used when the caller gives none.
SSL_HANDSHAKE_TIMEOUT = 60.0
SSL_SHUTDOWN_TIMEOUT = 30.0

_HAS_IPV6 = hasattr(socket, "AF_INET6")
_SOCK_CONNECT = SocketOpsMixin.sock_connect
_SOCK_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)

# From 3.13 (PY313) asyncio words bind errors with the whole `str(exc)`, skips
# a listening address whose family the host has not enabled (EADDRNOTAVAIL)
# and removes a Unix server's socket file when the server closes.


def _bind_error(exc: OSError, address: Any) -> OSError:
    """The OSError asyncio raises when binding to `address` failed with `exc`."""
    if PY313:
        reason = str(exc).lower()
    else:
        reason = exc.strerror.lower() if exc.strerror else str(exc)
    return OSError(exc.errno, f"error while attempting to bind on address {address!r}: {reason}")


def _check_tls_arguments(
    ssl: Any,
    server_hostname: str | None,
    ssl_handshake_timeout: float | None,
    ssl_shutdown_timeout: float | None,
    *,
    client: bool,
    host: Any = None,
) -> str | None:
    """Validate the TLS keyword arguments as asyncio does; return the server name."""
    if client:
        if server_hostname is not None and not ssl:
            raise ValueError("server_hostname is only meaningful with ssl")
        if server_hostname is None and ssl:
            if not host:
                raise ValueError("You must set server_hostname when using ssl without a host")
            server_hostname = host
    elif isinstance(ssl, bool):
        raise TypeError("ssl argument must be an SSLContext or None")
    if ssl_handshake_timeout is not None and not ssl:
        raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
    if ssl_shutdown_timeout is not None and not ssl:
        raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")
    return server_hostname


def _check_not_ssl_socket(sock: socket.socket | None) -> None:
    import ssl as ssl_module

    if sock is not None and isinstance(sock, ssl_module.SSLSocket):
        raise TypeError("Socket cannot be of type SSLSocket")


def _check_stream_socket(sock: socket.socket) -> None:
    if sock.type != socket.SOCK_STREAM:
        raise ValueError(f"A Stream Socket was expected, got {sock!r}")


def _interleave_by_family(infos: list[AddrInfo], first_family_count: int) -> list[AddrInfo]:
    """Order addresses for happy eyeballs: `first_family_count` of the first
    family, then alternate between families (RFC 8305)."""
    by_family: dict[int, collections.deque[AddrInfo]] = collections.OrderedDict()
    for info in infos:
        by_family.setdefault(info[0], collections.deque()).append(info)
    queues = list(by_family.values())
    ordered: list[AddrInfo] = []
    if first_family_count > 1 and queues:
        first = queues[0]
        for _ in range(min(first_family_count - 1, len(first))):
            ordered.append(first.popleft())
    for batch in itertools.zip_longest(*queues):
        ordered.extend(info for info in batch if info is not None)
    return ordered


def _raise_connect_errors(exceptions: list[OSError], all_errors: bool) -> None:
    try:
        if all_errors:
            raise ExceptionGroup("create_connection failed", exceptions)
        if len(exceptions) == 1:
            raise exceptions[0]
        model = str(exceptions[0])
        if all(str(exc) == model for exc in exceptions):
            raise exceptions[0]
        raise OSError("Multiple exceptions: {}".format(", ".join(str(exc) for exc in exceptions)))
    finally:
        # The raised exception's traceback keeps this frame alive: without
        # this its list would too, and the exception would be in a cycle.
        exceptions = None  # type: ignore[assignment]


class ConnectionsMixin:
    """Methods of `ferroloop.EventLoop` implemented in this module."""

    # -- resolution helpers ----------------------------------------------------

    async def _resolve_stream(
        self: Any, address: Any, *, family: int = 0, proto: int = 0, flags: int = 0
    ) -> list[AddrInfo]:
        """`address` for a stream socket: IP literals as they are, names through getaddrinfo."""
        infos = await dns.resolve_address(
            self, address, family=family, type=socket.SOCK_STREAM, proto=proto, flags=flags
        )
        if not infos:
            raise OSError("getaddrinfo() returned empty list")
        return infos

    async def _connect_one(
        self: Any,
        errors: list[list[OSError]],
        info: AddrInfo,
        local_infos: list[AddrInfo] | None,
    ) -> socket.socket | _core.ConnectedSocket:
        """Open a socket for `info`, bind it if asked, and connect it.

        Without a local address to bind, and unless `sock_connect` was
        overridden, the socket is made and connected natively and comes back
        as a `ConnectedSocket` (no Python socket object per connection).
        """
        mine: list[OSError] = []
        errors.append(mine)
        connecting = None
        try:
            family, type_, proto, _, address = info
            own_connect = self._uses_own("sock_connect", _SOCK_CONNECT)
            if local_infos is None and own_connect:
                connecting = _core.connect_stream(self, family, type_, proto, address)
                if connecting is not None:
                    try:
                        return await connecting
                    except OSError as exc:
                        mine.append(exc)
                        raise
            sock = None
            try:
                # Non-blocking from the start (CPython then sets the timeout to 0,
                # as setblocking(False) would): one system call instead of two.
                sock = socket.socket(family=family, type=type_ | _SOCK_NONBLOCK, proto=proto)
                if local_infos is not None:
                    self._bind_local(sock, family, local_infos, mine)
                if own_connect:
                    # Our own sock_connect, minus its checks: the socket is ours,
                    # non-blocking, and getaddrinfo's address is numeric.
                    await self._sock_ops().connect(sock, address)
                else:  # overridden (a subclass or a test's mock): honour it
                    await self.sock_connect(sock, address)
                return sock
            except OSError as exc:
                mine.append(exc)
                if sock is not None:
                    sock.close()
                raise
            except BaseException:
                if sock is not None:
                    sock.close()
                raise
        finally:
            # Tracebacks keep this frame alive: it must not keep the errors (a cycle).
            errors = mine = connecting = None  # type: ignore[assignment]

    @staticmethod
    def _bind_local(
        sock: socket.socket, family: int, local_infos: list[AddrInfo], errors: list[OSError]
    ) -> None:
        try:
            for local_family, _, _, _, local_address in local_infos:
                if local_family != family:
                    continue
                try:
                    sock.bind(local_address)
                    return
                except OSError as exc:
                    errors.append(_bind_error(exc, local_address))
            if errors:
                raise errors.pop()
            raise OSError(f"no matching local address with family={family} found")
        finally:
            errors = None  # type: ignore[assignment]  # (see _connect_one)

    # -- create_connection -------------------------------------------------------

    @keywords_since((3, 12), "all_errors")
    async def create_connection(
        self: Any,
        protocol_factory: ProtocolFactory,
        host: Any = None,
        port: Any = None,
        *,
        ssl: Any = None,
        family: int = 0,
        proto: int = 0,
        flags: int = 0,
        sock: socket.socket | None = None,
        local_addr: Any = None,
        server_hostname: str | None = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
        happy_eyeballs_delay: float | None = None,
        interleave: int | None = None,
        all_errors: bool = False,
    ) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
        """Open a TCP connection (or wrap `sock`) and return (transport, protocol)."""
        if not (
            ssl is None
            and server_hostname is None
            and ssl_handshake_timeout is None
            and ssl_shutdown_timeout is None
        ):
            server_hostname = _check_tls_arguments(
                ssl,
                server_hostname,
                ssl_handshake_timeout,
                ssl_shutdown_timeout,
                client=True,
                host=host,
            )
        elif (
            sock is None
            and local_addr is None
            and happy_eyeballs_delay is None
            and interleave is None
            and not all_errors
        ):
            connecting = self._connect_plain(host, port, family, proto)
            if connecting is not None:
                # Inline rather than a helper coroutine (or wait_opened): one
                # coroutine object less per connection on the hot path.
                if type(connecting) is not _core.ConnectedSocket:
                    try:
                        connecting = await connecting
                    except BaseException:
                        # The failed future holds the error: not from this
                        # frame, which the error's traceback keeps (a cycle).
                        connecting = None
                        raise
                protocol = protocol_factory()
                waiter = self.create_future()
                transport = _core.connected_transport(self, connecting, protocol, waiter)
                try:
                    await waiter
                except BaseException:
                    transport.close()
                    raise
                return transport, protocol
        _check_not_ssl_socket(sock)
        if happy_eyeballs_delay is not None and interleave is None:
            interleave = 1
        connected_here = False
        if host is not None or port is not None:
            if sock is not None:
                raise ValueError("host/port and sock can not be specified at the same time")
            connected_here = _SOCK_NONBLOCK != 0
            sock = await self._connect_to_host(
                host,
                port,
                family=family,
                proto=proto,
                flags=flags,
                local_addr=local_addr,
                happy_eyeballs_delay=happy_eyeballs_delay,
                interleave=interleave,
                all_errors=all_errors,
            )
        else:
            if sock is None:
                raise ValueError("host and port was not specified and no sock specified")
            _check_stream_socket(sock)
        transport, protocol = await self._make_stream_transport(
            sock,
            protocol_factory,
            ssl,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
            nonblocking=connected_here,
        )
        if self.get_debug():
            logger.debug(
                "%r connected to %s:%r: (%r, %r)",
                transport.get_extra_info("socket"),
                host,
                port,
                transport,
                protocol,
            )
        return transport, protocol

    def _uses_own(self: Any, name: str, own: Any) -> bool:
        """False if method `name` is not `own`: overridden by a subclass or
        set on the instance (a test's mock). Checked without `self.__dict__`,
        which would make the instance dict the loop frees (see
        `Loop._release_empty_dict`)."""
        return getattr(type(self), name) is own and not self._instance_has(name)

    def _connect_plain(
        self: Any, host: Any, port: Any, family: int, proto: int
    ) -> _core.ConnectedSocket | asyncio.Future[_core.ConnectedSocket] | None:
        """The common case in one step: an IP address literal (which never
        reaches getaddrinfo), our own sock_connect, no debug mode. Returns the
        connected socket (connected at once, as loopback ones are), a future
        of it, or None for the general path."""
        # What _uses_own checks, without its frame: this runs per connection.
        if (
            type(self).sock_connect is not _SOCK_CONNECT
            or self._instance_has("sock_connect")
            or self.get_debug()
        ):
            return None
        info = dns.numeric_addrinfo(host, port, family, socket.SOCK_STREAM, proto)
        if info is None:
            return None
        family, type_, proto, _, address = info
        return _core.connect_stream(self, family, type_, proto, address, True)

    async def _connect_to_host(
        self: Any,
        host: Any,
        port: Any,
        *,
        family: int,
        proto: int,
        flags: int,
        local_addr: Any,
        happy_eyeballs_delay: float | None,
        interleave: int | None,
        all_errors: bool,
    ) -> socket.socket | _core.ConnectedSocket:
        infos = await self._resolve_stream((host, port), family=family, proto=proto, flags=flags)
        local_infos = None
        if local_addr is not None:
            local_infos = await self._resolve_stream(
                local_addr, family=family, proto=proto, flags=flags
            )
        if interleave:
            infos = _interleave_by_family(infos, interleave)
        errors: list[list[OSError]] = []
        sock = None
        try:
            if happy_eyeballs_delay is None:
                for info in infos:
                    try:
                        sock = await self._connect_one(errors, info, local_infos)
                        break
                    except OSError:
                        continue
            else:
                attempts = [
                    (lambda info=info: self._connect_one(errors, info, local_infos))
                    for info in infos
                ]
                race = await staggered.staggered_race(attempts, happy_eyeballs_delay, loop=self)
                sock = race[0]
            if sock is None:
                _raise_connect_errors([exc for group in errors for exc in group], all_errors)
        finally:
            errors = attempts = race = None  # type: ignore[assignment]  # (see _connect_one)
        assert sock is not None
        return sock

    async def _make_stream_transport(
        self: Any,
        sock: socket.socket | _core.ConnectedSocket,
        protocol_factory: ProtocolFactory,
        ssl: Any,
        server_hostname: str | None,
        *,
        server_side: bool = False,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
        nonblocking: bool = False,
    ) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
        if isinstance(sock, _core.ConnectedSocket):
            if ssl:
                sock = _python_socket(sock)
        elif not nonblocking:  # true: the socket was created non-blocking here
            sock.setblocking(False)
        protocol = protocol_factory()
        waiter = self.create_future()
        if isinstance(sock, _core.ConnectedSocket):
            transport: Any = _core.connected_transport(self, sock, protocol, waiter)
        elif ssl:
            from .tls import wrap_tls

            transport = wrap_tls(
                self,
                sock,
                protocol,
                ssl,
                waiter,
                server_side=server_side,
                server_hostname=server_hostname,
                ssl_handshake_timeout=ssl_handshake_timeout,
                ssl_shutdown_timeout=ssl_shutdown_timeout,
            )
        else:
            transport = SocketTransport(self, sock, sock.fileno(), protocol, waiter=waiter)
        await wait_opened(transport, waiter)
        return transport, protocol

    # -- servers -------------------------------------------------------------------

    @keywords_since((3, 13), "keep_alive")
    async def create_server(
        self: Any,
        protocol_factory: ProtocolFactory,
        host: Any = None,
        port: Any = None,
        *,
        family: int = socket.AF_UNSPEC,
        flags: int = socket.AI_PASSIVE,
        sock: socket.socket | None = None,
        backlog: int = 100,
        ssl: Any = None,
        reuse_address: bool | None = None,
        reuse_port: bool | None = None,
        keep_alive: bool | None = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
        start_serving: bool = True,
    ) -> Server:
        """Listen on `host`/`port` (or `sock`) and serve `protocol_factory` connections."""
        _check_tls_arguments(ssl, None, ssl_handshake_timeout, ssl_shutdown_timeout, client=False)
        _check_not_ssl_socket(sock)
        if host is not None or port is not None:
            if sock is not None:
                raise ValueError("host/port and sock can not be specified at the same time")
            sockets = await self._open_listening_sockets(
                host, port, family, flags, reuse_address, reuse_port, keep_alive
            )
        else:
            if sock is None:
                raise ValueError("Neither host/port nor sock were specified")
            _check_stream_socket(sock)
            sockets = [sock]
        for listening in sockets:
            listening.setblocking(False)
        server = Server(
            self,
            sockets,
            protocol_factory,
            ssl,
            backlog,
            ssl_handshake_timeout,
            ssl_shutdown_timeout,
        )
        if start_serving:
            server._start_serving()
            await asyncio.sleep(0)
        if self.get_debug():
            logger.info("%r is serving", server)
        return server

    async def _open_listening_sockets(
        self: Any,
        host: Any,
        port: Any,
        family: int,
        flags: int,
        reuse_address: bool | None,
        reuse_port: bool | None,
        keep_alive: bool | None,
    ) -> list[socket.socket]:
        if reuse_address is None:
            reuse_address = os.name == "posix" and sys.platform != "cygwin"
        resolved = await asyncio.gather(
            *[
                self._resolve_listening(one_host, port, family, flags)
                for one_host in resolve_hosts(host)
            ]
        )
        infos = set(itertools.chain.from_iterable(resolved))
        sockets: list[socket.socket] = []
        completed = False
        try:
            for af, socktype, proto, _, address in infos:
                try:
                    sock = socket.socket(af, socktype, proto)
                except OSError:
                    if self.get_debug():
                        logger.warning(
                            "create_server() failed to create socket.socket(%r, %r, %r)",
                            af,
                            socktype,
                            proto,
                            exc_info=True,
                        )
                    continue
                sockets.append(sock)
                _configure_listening(sock, af, reuse_address, reuse_port, keep_alive)
                try:
                    sock.bind(address)
                except OSError as err:
                    error = _bind_error(err, address)
                    if PY313 and err.errno == errno.EADDRNOTAVAIL:
                        # The host has this family disabled (bpo-30945): skip it.
                        sockets.pop()
                        sock.close()
                        if self.get_debug():
                            logger.warning("%s", error.strerror)
                        continue
                    raise error from None
            if PY313 and not sockets:
                addresses = [info[4] for info in infos]
                raise OSError(f"could not bind on any address out of {addresses!r}")
            completed = True
        finally:
            if not completed:
                for sock in sockets:
                    sock.close()
        return sockets

    async def _resolve_listening(
        self: Any, host: Any, port: Any, family: int, flags: int
    ) -> list[AddrInfo]:
        infos = await dns.resolve_address(
            self, (host, port), family=family, type=socket.SOCK_STREAM, flags=flags
        )
        if not infos:
            raise OSError(f"getaddrinfo({host!r}) returned empty list")
        return infos

    # -- Unix sockets ----------------------------------------------------------------

    async def create_unix_connection(
        self: Any,
        protocol_factory: ProtocolFactory,
        path: Any = None,
        *,
        ssl: Any = None,
        sock: socket.socket | None = None,
        server_hostname: str | None = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
    ) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
        """Connect to the Unix socket at `path` (or wrap `sock`)."""
        if ssl:
            if server_hostname is None:
                raise ValueError("you have to pass server_hostname when using ssl")
        else:
            if server_hostname is not None:
                raise ValueError("server_hostname is only meaningful with ssl")
            _check_tls_arguments(
                ssl, None, ssl_handshake_timeout, ssl_shutdown_timeout, client=False
            )
        if path is not None:
            if sock is not None:
                raise ValueError("path and sock can not be specified at the same time")
            path = os.fspath(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0)
            try:
                sock.setblocking(False)
                await self.sock_connect(sock, path)
            except BaseException:
                sock.close()
                raise
        else:
            if sock is None:
                raise ValueError("no path and sock were specified")
            if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
                raise ValueError(f"A UNIX Domain Stream Socket was expected, got {sock!r}")
            sock.setblocking(False)
        return await self._make_stream_transport(
            sock,
            protocol_factory,
            ssl,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )

    @keywords_since((3, 13), "cleanup_socket")
    async def create_unix_server(
        self: Any,
        protocol_factory: ProtocolFactory,
        path: Any = None,
        *,
        sock: socket.socket | None = None,
        backlog: int = 100,
        ssl: Any = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
        start_serving: bool = True,
        cleanup_socket: bool = PY313,
    ) -> Server:
        """Listen on the Unix socket `path` (a stale socket file there is replaced).

        With `cleanup_socket` (3.13's default) closing the server removes the
        socket file, unless another socket has taken its place meanwhile.
        """
        _check_tls_arguments(ssl, None, ssl_handshake_timeout, ssl_shutdown_timeout, client=False)
        if path is not None:
            if sock is not None:
                raise ValueError("path and sock can not be specified at the same time")
            path = os.fspath(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            _remove_stale_unix_socket(path)
            try:
                sock.bind(path)
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE:
                    raise OSError(errno.EADDRINUSE, f"Address {path!r} is already in use") from None
                raise
            except BaseException:
                sock.close()
                raise
        else:
            if sock is None:
                raise ValueError("path was not specified, and no sock specified")
            if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
                raise ValueError(f"A UNIX Domain Stream Socket was expected, got {sock!r}")
        socket_file = _socket_file_identity(sock) if cleanup_socket else None
        sock.setblocking(False)
        server = Server(
            self,
            [sock],
            protocol_factory,
            ssl,
            backlog,
            ssl_handshake_timeout,
            ssl_shutdown_timeout,
        )
        if socket_file is not None:
            server._remove_on_close(*socket_file)
        if start_serving:
            server._start_serving()
            await asyncio.sleep(0)
        return server

    # -- existing sockets ---------------------------------------------------------------

    async def connect_accepted_socket(
        self: Any,
        protocol_factory: ProtocolFactory,
        sock: socket.socket,
        *,
        ssl: Any = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
    ) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
        """Wrap a socket accepted outside the loop in a transport."""
        _check_stream_socket(sock)
        _check_tls_arguments(ssl, None, ssl_handshake_timeout, ssl_shutdown_timeout, client=False)
        _check_not_ssl_socket(sock)
        transport, protocol = await self._make_stream_transport(
            sock,
            protocol_factory,
            ssl,
            None,
            server_side=True,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        if self.get_debug():
            # asyncio names the transport's socket (a TransportSocket).
            shown = transport.get_extra_info("socket")
            logger.debug("%r handled: (%r, %r)", shown, transport, protocol)
        return transport, protocol

    # -- sendfile over a transport -------------------------------------------------------

    async def sendfile(
        self: Any,
        transport: asyncio.WriteTransport,
        file: Any,
        offset: int = 0,
        count: int | None = None,
        *,
        fallback: bool = True,
    ) -> int:
        """Send `file` over `transport`, zero-copy when the transport is a plain socket."""
        from .sendfile import sendfile_over_transport

        return await sendfile_over_transport(self, transport, file, offset, count, fallback)


def _python_socket(connected: _core.ConnectedSocket) -> socket.socket:
    """The natively connected socket as a Python socket (TLS wraps one)."""
    sock = socket.socket(connected.family, socket.SOCK_STREAM, 0, fileno=connected.detach())
    sock.setblocking(False)
    return sock


def _configure_listening(
    sock: socket.socket,
    family: int,
    reuse_address: bool | None,
    reuse_port: bool | None,
    keep_alive: bool | None,
) -> None:
    if reuse_address:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, True)
    if reuse_port:
        if not hasattr(socket, "SO_REUSEPORT"):
            raise ValueError("reuse_port not supported by socket module")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if keep_alive:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, True)
    if _HAS_IPV6 and family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, True)


def _socket_file_identity(sock: socket.socket) -> tuple[Any, int] | None:
    """The path a Unix socket is bound to and the inode of its file, if it has one."""
    path = sock.getsockname()
    if not path or path[0] in (0, "\x00"):  # unbound, or in the abstract namespace
        return None
    try:
        return path, os.stat(path).st_ino
    except FileNotFoundError:
        return None


def _remove_stale_unix_socket(path: str) -> None:
    if path[0] in (0, "\x00"):
        return
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.remove(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        logger.error("Unable to check or remove stale UNIX socket %r: %r", path, err)
