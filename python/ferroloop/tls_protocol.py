"""asyncio's `SSLProtocol` with a leaner path for application data.

asyncio's SSL protocol pumps TLS records between a transport and two
`ssl.MemoryBIO` objects. Its handshake, shutdown, flow control and error
handling are kept as they are; this subclass only shortens the per-record work
once the connection is established (state ``WRAPPED``):

- a read stops as soon as neither the incoming BIO nor the `SSLObject` holds
  anything more, instead of calling `SSLObject.read` once more to be told so by
  an `SSLWantReadError` (building and catching that exception costs about as
  much as decrypting a 1 KiB record);
- a read, and an application's `write()` of `bytes`, skip the calls that would
  find nothing to do (an empty outgoing BIO, flow-control checks that cannot
  change anything), and the written bytes go straight to the `SSLObject`
  instead of through the write backlog;
- a `bytearray` from the application's `get_buffer()` receives every record
  (asyncio reads all but the first into a copy: CPython gh-156275);
- records arrive through `data_received` (ferroloop's transports do not ask
  for a buffer first), and the C object inside `ssl.SSLObject` is called
  without its Python wrapper methods in between.

Whatever is unusual (another state, a backlog, paused reading, `writelines`)
goes to the base class, so behaviour stays asyncio's. The overrides read and write the base
class's private attributes, whose data path is the same in Pythons 3.11 to 3.13;
`ferroloop.tls` uses the subclass only there.
"""

from __future__ import annotations

import ssl
import sys
from asyncio import sslproto
from typing import Any

_DO_HANDSHAKE = sslproto.SSLProtocolState.DO_HANDSHAKE
_WRAPPED = sslproto.SSLProtocolState.WRAPPED
_FLUSHING = sslproto.SSLProtocolState.FLUSHING
_SHUTDOWN = sslproto.SSLProtocolState.SHUTDOWN
_AGAIN = sslproto.SSLAgainErrors

# The versions whose `asyncio.sslproto` data path the overrides were checked against.
LEAN_PATH_VERSIONS = ((3, 11), (3, 12), (3, 13))


class LeanSSLProtocol(sslproto.SSLProtocol):
    """`asyncio.sslproto.SSLProtocol` without per-record work that finds nothing to do."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        sslobj = self._sslobj
        # ssl.SSLObject's read(), write() and pending() only hand over to the C
        # object it wraps: call that directly, unless the context's
        # `sslobject_class` put other methods in their place.
        self._tls_engine = sslobj._sslobj if type(sslobj) is ssl.SSLObject else sslobj

    def data_received(self, data: bytes | memoryview) -> None:
        """Take records as `bytes`: ferroloop's transports call this, not get_buffer()."""
        self._incoming.write(data)
        if self._state is _WRAPPED:
            self._do_read()
        else:
            self._records_arrived()

    def buffer_updated(self, nbytes: int) -> None:
        # Other transports (a BufferedProtocol's path) read into our buffer.
        self.data_received(self._ssl_buffer_view[:nbytes])

    def _records_arrived(self) -> None:
        # The base class's buffer_updated() after its write to the BIO.
        state = self._state
        if state is _DO_HANDSHAKE:
            self._do_handshake()
        elif state is _FLUSHING:
            self._do_flush()
        elif state is _SHUTDOWN:
            self._do_shutdown()

    def _do_read(self) -> None:
        if self._state is not _WRAPPED or self._app_reading_paused:
            super()._do_read()
            return
        try:
            if self._app_protocol_is_buffer:
                self._do_read__buffered()
            else:
                self._do_read__copied()
            # Reading can produce records to send (TLS 1.3 key updates, tickets).
            if self._write_backlog:
                self._do_write()
            elif self._outgoing.pending:
                self._process_outgoing()
            elif self._app_writing_paused or self._outgoing_high_water <= 0:
                # Nothing is buffered, but the water marks can still call for
                # pause_writing()/resume_writing(), as in the base class.
                self._control_app_writing()
            if self._ssl_reading_paused or self._incoming.pending >= self._incoming_high_water:
                self._control_ssl_reading()
        except Exception as exc:
            self._fatal_error(exc, "Fatal error on SSL protocol")

    def _do_read__copied(self) -> None:
        engine = self._tls_engine
        incoming = self._incoming
        first = None
        chunks: list[bytes] | None = None
        chunk = b"."
        try:
            while True:
                chunk = engine.read(self.max_size)
                if not chunk:
                    break
                if first is None:
                    first = chunk
                elif chunks is None:
                    chunks = [first, chunk]
                else:
                    chunks.append(chunk)
                if not incoming.pending and not engine.pending():
                    break
        except _AGAIN:
            pass
        if chunks is not None:
            self._app_protocol.data_received(b"".join(chunks))
        elif first is not None:
            self._app_protocol.data_received(first)
        if not chunk:
            self._close_notify_received()

    def _do_read__buffered(self) -> None:
        engine = self._tls_engine
        incoming = self._incoming
        buf = self._app_protocol_get_buffer(incoming.pending)
        wants = len(buf)
        offset = 0
        count = 1
        try:
            count = engine.read(wants, buf)
            if count > 0:
                offset = count
                while offset < wants and (incoming.pending or engine.pending()):
                    # A view, not buf[offset:]: a bytearray's slice would be a
                    # copy, and the data read into it lost (CPython gh-156275).
                    count = engine.read(wants - offset, memoryview(buf)[offset:])
                    if count <= 0:
                        break
                    offset += count
                if offset == wants:
                    # The buffer is full: read the rest on the next iteration.
                    self._loop.call_soon(self._do_read)
        except _AGAIN:
            pass
        if offset > 0:
            self._app_protocol_buffer_updated(offset)
        if not count:
            self._close_notify_received()

    def _close_notify_received(self) -> None:
        self._call_eof_received()
        self._start_shutdown()

    def _get_app_transport(self) -> sslproto._SSLProtocolTransport:
        if self._app_transport is None and not self._app_transport_created:
            self._app_transport = LeanSSLTransport(self._loop, self)
            self._app_transport_created = True
        return super()._get_app_transport()

    def _write_one(self, data: bytes) -> None:
        """Encrypt and send one non-empty `bytes` from the application."""
        if self._state is not _WRAPPED or self._write_backlog:
            self._write_appdata((data,))
            return
        try:
            try:
                written = self._tls_engine.write(data)
            except _AGAIN:
                written = 0
            if written < len(data):
                self._queue(data[written:] if written else data)
            if not self._ssl_writing_paused:
                records = self._outgoing.read()
                if records:
                    self._transport.write(records)
            if (
                self._write_backlog
                or self._app_writing_paused
                or self._outgoing.pending >= self._outgoing_high_water
            ):
                self._control_app_writing()
        except Exception as exc:
            self._fatal_error(exc, "Fatal error on SSL protocol")

    def _queue(self, data: Any) -> None:
        self._write_backlog.append(data)
        self._write_buffer_size += len(data)


class LeanSSLTransport(sslproto._SSLProtocolTransport):
    """The application's side of a `LeanSSLProtocol`: `bytes` skip the backlog."""

    def write(self, data: Any) -> None:
        """Encrypt `data` and send it, or buffer it as asyncio does."""
        if type(data) is bytes and data:
            self._ssl_protocol._write_one(data)
        else:
            super().write(data)


def lean_path_available() -> bool:
    """Whether this Python's `asyncio.sslproto` is one the overrides match."""
    return sys.version_info[:2] in LEAN_PATH_VERSIONS
