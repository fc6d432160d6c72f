"""`asyncio.Server` for ferroloop: listening sockets accepted natively.

Accepting runs in the Rust core (`_core.Listener`), which also opens a plain
server's connections (protocol factory, transport); this module opens TLS
connections and implements the `Server` object's life cycle exactly as
asyncio documents it.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import sys
from asyncio import trsock
from asyncio.log import logger
from collections.abc import Callable, Iterable
from typing import Any

from . import _core
from .transports import SocketTransport

#: asyncio waits this long before accepting again after running out of descriptors.
ACCEPT_RETRY_DELAY = 1.0

ProtocolFactory = Callable[[], asyncio.BaseProtocol]


class Server(asyncio.AbstractServer):
    """A running server: its listening sockets and the connections they accepted."""

    def __init__(
        self,
        loop: Any,
        sockets: list[socket.socket],
        protocol_factory: ProtocolFactory,
        ssl_context: Any,
        backlog: int,
        ssl_handshake_timeout: float | None,
        ssl_shutdown_timeout: float | None = None,
    ) -> None:
        self._loop = loop
        self._sockets: list[socket.socket] | None = sockets
        self._listeners: list[Any] = []
        self._active_count = 0
        self._waiters: list[asyncio.Future[None]] | None = []
        self._protocol_factory = protocol_factory
        self._backlog = backlog
        self._ssl_context = ssl_context
        self._ssl_handshake_timeout = ssl_handshake_timeout
        self._ssl_shutdown_timeout = ssl_shutdown_timeout
        self._serving = False
        self._serving_forever_fut: asyncio.Future[None] | None = None
        self._socket_files: list[tuple[Any, int]] = []

    def __repr__(self) -> str:
        return f"<{self.__class__.__name__} sockets={self.sockets!r}>"

    # -- connection accounting ------------------------------------------------

    # asyncio 3.13 also keeps the transports in a set, for close_clients();
    # here the loop finds them among its watched sockets (`_server_clients`).

    def _attach(self, transport: Any = None) -> None:
        assert self._sockets is not None
        self._active_count += 1

    def _detach(self, transport: Any = None) -> None:
        self._active_count -= 1
        if self._active_count == 0 and self._sockets is None:
            self._wakeup()

    def _wakeup(self) -> None:
        waiters = self._waiters
        self._waiters = None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    # -- Unix socket files -----------------------------------------------------

    def _remove_on_close(self, path: Any, inode: int) -> None:
        """Remove the socket file at `path` when the server closes (3.13's `cleanup_socket`)."""
        self._socket_files.append((path, inode))

    def _remove_socket_files(self) -> None:
        files, self._socket_files = self._socket_files, []
        for path, inode in files:
            try:
                # Another server may have replaced the file since: leave that one.
                if os.stat(path).st_ino == inode:
                    os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as err:
                logger.error("Unable to clean up listening UNIX socket %r: %r", path, err)

    # -- accepting ------------------------------------------------------------

    def _start_serving(self) -> None:
        if self._serving:
            return
        self._serving = True
        if self._sockets is None:
            # Closed. asyncio fails here, iterating its sockets (None by now),
            # after marking itself serving: the same error, the same state.
            raise TypeError("'NoneType' object is not iterable")
        # A plain server's connections are opened natively (src/socket_transport.rs,
        # which makes the transports as SocketTransport.__init__ would); TLS
        # ones come to _accept_connection.
        native = self._ssl_context is None
        for sock in self._sockets or ():
            sock.listen(self._backlog)
            listener = _core.Listener(
                self._loop,
                sock.fileno(),
                self._on_accept_for(sock),
                self._on_exhausted_for(sock),
                self._backlog,
                sock.family in (socket.AF_INET, socket.AF_INET6),
                self if native else None,
                sock.family,
            )
            listener.start()
            self._listeners.append(listener)

    def _on_accept_for(self, sock: socket.socket) -> Callable[[int, Any], None]:
        # A partial, not a closure: the native listener calls straight into
        # _accept_connection (one Python frame per connection, not two).
        return functools.partial(self._accept_connection, sock, sock.family)

    def _on_exhausted_for(self, sock: socket.socket) -> Callable[[OSError], None]:
        def on_exhausted(exc: OSError) -> None:
            self._loop.call_exception_handler(
                {
                    "message": "socket.accept() out of system resource",
                    "exception": exc,
                    "socket": trsock.TransportSocket(sock),
                }
            )
            for listener in self._listeners:
                listener.stop()
            self._loop.call_later(ACCEPT_RETRY_DELAY, self._resume_accepting)

        return on_exhausted

    def _resume_accepting(self) -> None:
        if self._serving and self._sockets is not None:
            for listener in self._listeners:
                listener.start()

    def _log_new_connection(self, fd: int, peer: Any) -> None:
        """asyncio's debug-mode line for an accepted connection; its socket is
        shown through a temporary socket object over the descriptor."""
        conn = socket.socket(fileno=fd)
        try:
            logger.debug("%r got a new connection from %r: %s", self, peer, repr(conn))
        finally:
            conn.detach()

    def _accept_connection(self, listening: socket.socket, family: int, fd: int, peer: Any) -> None:
        transport_made = False
        extra = {"peername": peer}
        try:
            if self._loop.get_debug():
                self._log_new_connection(fd, peer)
            protocol = self._protocol_factory()
            if self._ssl_context is not None:
                from .tls import accept_tls_connection

                accept_tls_connection(self, listening, fd, protocol, extra)
            else:
                SocketTransport(
                    self._loop, None, fd, protocol, extra=extra, server=self, family=family
                )
            transport_made = True
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            # asyncio reports this only in debug mode; the connection is dropped.
            if self._loop.get_debug():
                self._loop.call_exception_handler(
                    {
                        "message": "Error on transport creation for incoming connection",
                        "exception": exc,
                    }
                )
        finally:
            if not transport_made:
                try:
                    os.close(fd)
                except OSError:
                    pass

    # -- the public API ---------------------------------------------------------

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    @property
    def sockets(self) -> tuple[trsock.TransportSocket, ...]:
        if self._sockets is None:
            return ()
        return tuple(trsock.TransportSocket(s) for s in self._sockets)

    def close(self) -> None:
        """Stop listening and close the listening sockets; connections stay open."""
        sockets = self._sockets
        if sockets is None:
            return
        self._sockets = None
        for listener in self._listeners:
            listener.stop()
        self._listeners.clear()
        for sock in sockets:
            sock.close()
        self._remove_socket_files()
        self._serving = False
        if self._serving_forever_fut is not None and not self._serving_forever_fut.done():
            self._serving_forever_fut.cancel()
            self._serving_forever_fut = None
        if self._active_count == 0:
            self._wakeup()

    def close_clients(self) -> None:
        """Close every connection this server accepted (Python 3.13 API)."""
        for transport in self._loop._server_clients(self):
            transport.close()

    def abort_clients(self) -> None:
        """Abort every connection this server accepted (Python 3.13 API)."""
        for transport in self._loop._server_clients(self):
            transport.abort()

    async def start_serving(self) -> None:
        """Start accepting connections (if `start_serving=False` was given)."""
        self._start_serving()
        await asyncio.sleep(0)

    async def serve_forever(self) -> None:
        """Accept connections until cancelled; then close the server."""
        if self._serving_forever_fut is not None:
            raise RuntimeError(f"server {self!r} is already being awaited on serve_forever()")
        if self._sockets is None:
            raise RuntimeError(f"server {self!r} is closed")
        self._start_serving()
        self._serving_forever_fut = self._loop.create_future()
        try:
            await self._serving_forever_fut
        except asyncio.CancelledError:
            try:
                self.close()
                await self.wait_closed()
            finally:
                raise
        finally:
            self._serving_forever_fut = None

    async def wait_closed(self) -> None:
        """Wait until the server is closed (and, on 3.12+, its connections are gone)."""
        if self._waiters is None:
            return
        if sys.version_info < (3, 12, 1) and self._sockets is None:
            return
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        await waiter


def resolve_hosts(host: Any) -> list[Any]:
    """`create_server`'s host argument as a list of hosts ('' and None mean all interfaces)."""
    if host == "":
        return [None]
    if isinstance(host, str) or not isinstance(host, Iterable):
        return [host]
    return list(host)
