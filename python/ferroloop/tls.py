"""TLS over ferroloop transports, through asyncio's own `sslproto`.

Users hand us `ssl.SSLContext` objects, so TLS runs in Python's `ssl` module
(MemoryBIO/SSLObject). asyncio's `SSLProtocol` (on 3.11-3.13 our subclass of
it with a shorter data path, `tls_protocol.LeanSSLProtocol`) pumps records
between the BIO and a transport; here that transport is our native socket
transport, so the socket I/O and buffering stay in Rust and only the TLS record
work (which is C code inside `ssl`) runs through Python.
"""

from __future__ import annotations

import asyncio
import socket
import ssl as ssl_module
from asyncio import sslproto
from typing import TYPE_CHECKING, Any

from .tls_protocol import LeanSSLProtocol, lean_path_available
from .transports import SocketTransport

if TYPE_CHECKING:
    from .server import Server


# asyncio's own class where the lean subclass was not checked against asyncio.
_TLS_PROTOCOL = LeanSSLProtocol if lean_path_available() else sslproto.SSLProtocol


def _context_or_default(ssl: Any) -> ssl_module.SSLContext | None:
    # ssl=True means "a default context", which SSLProtocol creates itself.
    return None if isinstance(ssl, bool) else ssl


def _new_tls_protocol(
    loop: Any,
    app_protocol: asyncio.BaseProtocol,
    ssl: Any,
    waiter: asyncio.Future[Any],
    *,
    server_side: bool,
    server_hostname: str | None,
    ssl_handshake_timeout: float | None,
    ssl_shutdown_timeout: float | None,
    call_connection_made: bool = True,
) -> sslproto.SSLProtocol:
    return _TLS_PROTOCOL(
        loop,
        app_protocol,
        _context_or_default(ssl),
        waiter,
        server_side,
        server_hostname,
        call_connection_made=call_connection_made,
        ssl_handshake_timeout=ssl_handshake_timeout,
        ssl_shutdown_timeout=ssl_shutdown_timeout,
    )


def wrap_tls(
    loop: Any,
    sock: socket.socket,
    app_protocol: asyncio.BaseProtocol,
    ssl: Any,
    waiter: asyncio.Future[Any],
    *,
    server_side: bool,
    server_hostname: str | None,
    ssl_handshake_timeout: float | None,
    ssl_shutdown_timeout: float | None,
) -> asyncio.Transport:
    """Start a TLS handshake on a connected socket; `waiter` completes after it."""
    tls_protocol = _new_tls_protocol(
        loop,
        app_protocol,
        ssl,
        waiter,
        server_side=server_side,
        server_hostname=server_hostname,
        ssl_handshake_timeout=ssl_handshake_timeout,
        ssl_shutdown_timeout=ssl_shutdown_timeout,
    )
    SocketTransport(loop, sock, sock.fileno(), tls_protocol)
    return tls_protocol._app_transport


def accept_tls_connection(
    server: Server,
    listening: socket.socket,
    fd: int,
    app_protocol: asyncio.BaseProtocol,
    extra: dict[str, Any],
) -> None:
    """Serve an accepted connection over TLS; handshake errors are logged in debug mode."""
    loop = server._loop
    waiter = loop.create_future()
    tls_protocol = _new_tls_protocol(
        loop,
        app_protocol,
        server._ssl_context,
        waiter,
        server_side=True,
        server_hostname=None,
        ssl_handshake_timeout=server._ssl_handshake_timeout,
        ssl_shutdown_timeout=server._ssl_shutdown_timeout,
    )
    transport = SocketTransport(
        loop, None, fd, tls_protocol, extra=extra, server=server, family=listening.family
    )
    waiter.add_done_callback(
        lambda done: _report_failed_handshake(loop, done, transport, app_protocol)
    )


def _report_failed_handshake(
    loop: Any, waiter: asyncio.Future[Any], transport: Any, protocol: Any
) -> None:
    if waiter.cancelled():
        transport.close()
        return
    exc = waiter.exception()
    if exc is None:
        return
    transport.close()
    if loop.get_debug():
        loop.call_exception_handler(
            {
                "message": "Error on transport creation for incoming connection",
                "exception": exc,
                "protocol": protocol,
                "transport": transport,
            }
        )


class TlsMixin:
    """Methods of `ferroloop.EventLoop` implemented in this module."""

    async def start_tls(
        self: Any,
        transport: asyncio.BaseTransport,
        protocol: asyncio.BaseProtocol,
        sslcontext: ssl_module.SSLContext,
        *,
        server_side: bool = False,
        server_hostname: str | None = None,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: float | None = None,
    ) -> asyncio.Transport:
        """Upgrade an open connection to TLS; return the new (TLS) transport."""
        if not isinstance(sslcontext, ssl_module.SSLContext):
            raise TypeError(
                f"sslcontext is expected to be an instance of ssl.SSLContext, got {sslcontext!r}"
            )
        if not getattr(transport, "_start_tls_compatible", False):
            raise TypeError(f"transport {transport!r} is not supported by start_tls()")
        waiter = self.create_future()
        tls_protocol = _new_tls_protocol(
            self,
            protocol,
            sslcontext,
            waiter,
            server_side=server_side,
            server_hostname=server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
            call_connection_made=False,
        )
        # Nothing may be read in plaintext between now and the handshake.
        transport.pause_reading()  # type: ignore[attr-defined]
        transport.set_protocol(tls_protocol)
        connection_made = self.call_soon(tls_protocol.connection_made, transport)
        resume = self.call_soon(transport.resume_reading)  # type: ignore[attr-defined]
        try:
            await waiter
        except BaseException:
            transport.close()
            connection_made.cancel()
            resume.cancel()
            raise
        return tls_protocol._app_transport
