//! Stream transports over connected sockets (TCP and Unix).
//!
//! The whole path of a received byte is here: the poller reports the socket
//! readable, the loop calls [`dispatch`], which `recv`s into a reusable
//! per-thread buffer and hands one `bytes` object to the protocol's
//! `data_received` (after a large read, it `recv`s straight into that
//! object instead), or fills the protocol's own buffer for a
//! `BufferedProtocol`. Writes are attempted at once and buffered only on
//! `EAGAIN`; the buffer is flushed when epoll reports the socket writable, and
//! the protocol is paused and resumed at the high and low water marks.
//!
//! The protocol sees a thin Python `asyncio.Transport` subclass (the
//! "wrapper", see `ferroloop/transports.py`) whose hot methods are this
//! object's methods bound directly, so a `transport.write()` from Python goes
//! straight here.
//!
//! Closing follows asyncio: `close()` stops reading, flushes what was
//! written, then calls `connection_lost(None)` exactly once; `abort()` drops
//! the buffer; errors call `connection_lost(exc)`.

use std::collections::VecDeque;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::gc::PyVisit;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};
use pyo3::PyTraverseError;
use socket2::SockAddr;

use crate::buffers::{
    check_write_type, contiguous_copy, is_non_contiguous, with_bytes, with_bytes_mut, BytesView,
};
use crate::callback_context::{self, TransportContexts};
use crate::errors::os_error;
use crate::event_loop::Loop;
use crate::flow_control::{self, DEFAULT_HIGH_WATER};
use crate::gil_locked::GilLocked;
use crate::handles::report_as_handle_error;
use crate::poller::{Interest, Readiness};
use crate::reads::{self, Framing, ReadCall, ReadSizeHint, Received, READ_SIZE};
use crate::sockaddr::{self, KeptAddr};
use crate::transport_common;
use crate::{python_api, recycled_bytes, sys_io};

/// asyncio reads at most this much per `recv`.
/// asyncio's LOG_THRESHOLD_FOR_CONNLOST_WRITES.
const CONNLOST_WRITE_WARNING_THRESHOLD: u32 = 5;
/// A drained write buffer larger than this gives its memory back.
const KEEP_WRITE_CAPACITY: usize = 1024 * 1024;

/// Who closes the socket when the transport is done with it.
pub enum SocketOwner {
    /// A Python socket object the user handed us (`sock=`): closed through Python.
    Python(Py<PyAny>),
    /// A descriptor we accepted or created: closed by dropping it.
    Native(OwnedFd),
    Closed,
}

struct StreamState {
    wrapper: Option<Py<PyAny>>,
    protocol: Option<Py<PyAny>>,
    buffered: bool,
    owner: SocketOwner,
    write_buffer: Vec<u8>,
    write_offset: usize,
    high_water: usize,
    low_water: usize,
    protocol_paused: bool,
    reading_started: bool,
    reading_paused: bool,
    eof_received: bool,
    closing: bool,
    eof_requested: bool,
    conn_lost: u32,
    /// A future resolved once the write buffer is empty and the socket
    /// writable (`sendfile` waits on it before writing around the buffer).
    drain_waiter: Option<Py<PyAny>>,
    sendfile_active: bool,
    /// The addresses as they were when the transport was made (asyncio
    /// records them then: still known after a reset), converted on demand.
    sockname: Option<KeptAddr>,
    peername: Option<KeptAddr>,
    /// The server counting this connection: told when the connection is gone.
    server: Option<Py<PyAny>>,
    /// Resolved once `connection_made` ran (`create_connection` waits on it).
    open_waiter: Option<Py<PyAny>>,
    /// What the callbacks this transport scheduled for itself are for, in
    /// order (the loop calls the transport object: no bound method and no
    /// argument tuple to allocate per callback).
    scheduled: VecDeque<Scheduled>,
    /// The contexts reads and flushes run in (callback_context.rs).
    contexts: TransportContexts,
}

transport_common::reading_switch_on_fields!(StreamState);

enum Scheduled {
    /// `connection_made`, start reading, resolve `open_waiter`.
    Open,
    ConnectionLost(Option<Py<PyAny>>),
}

impl StreamState {
    fn buffered_len(&self) -> usize {
        self.write_buffer.len() - self.write_offset
    }

    fn interest(&self) -> Interest {
        Interest::level(
            self.reading_started
                && !self.reading_paused
                && !self.closing
                && !self.eof_received
                && self.conn_lost == 0,
            (self.buffered_len() > 0 || self.drain_waiter.is_some()) && self.conn_lost == 0,
        )
    }

    fn append(&mut self, data: &[u8]) {
        if self.buffered_len() == 0 {
            self.write_buffer.clear();
            self.write_offset = 0;
        }
        self.write_buffer.extend_from_slice(data);
    }

    fn consume(&mut self, count: usize) {
        self.write_offset += count;
        if self.write_offset == self.write_buffer.len() {
            self.clear_buffer();
        } else if self.write_offset > self.write_buffer.len() / 2 {
            self.write_buffer.drain(..self.write_offset);
            self.write_offset = 0;
        }
    }

    /// Pauses the protocol if the buffer went over the high-water mark;
    /// true if `pause_writing()` must be called.
    fn should_pause(&mut self) -> bool {
        let buffered = self.buffered_len();
        flow_control::crossed_high_water(&mut self.protocol_paused, buffered, self.high_water)
    }

    fn clear_buffer(&mut self) {
        self.write_buffer.clear();
        self.write_offset = 0;
        if self.write_buffer.capacity() > KEEP_WRITE_CAPACITY {
            self.write_buffer = Vec::new();
        }
    }
}

#[pyclass(frozen, weakref, module = "ferroloop._core")]
pub struct StreamTransport {
    fd: RawFd,
    loop_: Py<Loop>,
    state: GilLocked<StreamState>,
    /// How to read next (large messages go straight into their `bytes`).
    read_size: ReadSizeHint,
}

/// What a write decided under the lock, to be acted on after releasing it.
enum WriteOutcome {
    /// Sent in full, or nothing to do.
    Done,
    /// Some of it waits in the buffer. `started`: the buffer was empty, so
    /// the flushes need a context and the poller a write interest;
    /// `pause`: the buffer just went over the high-water mark.
    Buffered {
        started: bool,
        pause: bool,
    },
    Failed(Errno),
    WarnConnLost,
}

/// Sends what the kernel takes now; 0 when the socket is full.
fn send_some(fd: RawFd, data: &[u8]) -> Result<usize, Errno> {
    sys_io::send(fd, data, None).map(|sent| sent.unwrap_or(0))
}

/// Sends several buffers with one `sendmsg` (at most IOV_MAX of them; the
/// rest is left for the caller to buffer); 0 when the socket is full.
fn send_parts(fd: RawFd, parts: &[&[u8]]) -> Result<usize, Errno> {
    const IOV_MAX: usize = 1024;
    let iov: Vec<libc::iovec> = parts
        .iter()
        .take(IOV_MAX)
        .map(|part| libc::iovec {
            iov_base: part.as_ptr() as *mut libc::c_void,
            iov_len: part.len(),
        })
        .collect();
    // SAFETY: a zeroed msghdr is valid; we fill in the iovec array, which
    // points at slices that outlive the call and are only read.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = iov.as_ptr() as *mut libc::iovec;
    message.msg_iovlen = iov.len() as _;
    let flags = sys_io::SEND_FLAGS;
    loop {
        // SAFETY: `message` describes valid memory for the duration of the call.
        let sent = unsafe { libc::sendmsg(fd, &message, flags) };
        if sent >= 0 {
            return Ok(sent as usize);
        }
        match Errno::last() {
            Errno::EINTR => continue,
            Errno::EAGAIN => return Ok(0),
            errno => return Err(errno),
        }
    }
}

impl StreamTransport {
    fn loop_ref<'py>(&self, py: Python<'py>) -> &Bound<'py, Loop> {
        self.loop_.bind(py)
    }

    /// Tells the poller what we now wait for.
    fn update_interest(&self, py: Python<'_>) -> PyResult<()> {
        let interest = self.state.lock(py).interest();
        if self.loop_.get().closed() {
            return Ok(());
        }
        self.loop_.get().native_interest(py, self.fd, interest)
    }

    fn protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state
            .lock(py)
            .protocol
            .as_ref()
            .map(|p| p.clone_ref(py))
    }

    fn wrapper(&self, py: Python<'_>) -> Py<PyAny> {
        match self.state.lock(py).wrapper.as_ref() {
            Some(wrapper) => wrapper.clone_ref(py),
            None => py.None(),
        }
    }

    fn log_if_debug(&self, py: Python<'_>, level: &str, message: &str) -> PyResult<()> {
        transport_common::log_if_debug(py, self.loop_.get(), level, message, || self.wrapper(py))
    }

    fn on_ready(slf: &Bound<'_, Self>, readiness: Readiness) -> PyResult<()> {
        // asyncio queues a descriptor's reader handle before its writer handle.
        if readiness.readable {
            Self::read_ready(slf)?;
        }
        if readiness.writable {
            Self::write_ready(slf)?;
        }
        Ok(())
    }

    fn read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (protocol, buffered, context) = {
            let state = this.state.lock(py);
            if !state.interest().read {
                return Ok(());
            }
            let Some(protocol) = state.protocol.as_ref() else {
                return Ok(());
            };
            // Bound, not Py: dropping a Py asks a thread-local about the GIL.
            (
                protocol.bind(py).clone(),
                state.buffered,
                state.contexts.reading(py),
            )
        };
        callback_context::run_in(py, context.as_ref(), || {
            if buffered {
                Self::read_into_protocol_buffer(slf, &protocol)
            } else {
                Self::read_into_bytes(slf, &protocol)
            }
        })
    }

    /// Reads into a new `bytes` for `data_received`.
    fn read_into_bytes(slf: &Bound<'_, Self>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let received = this
            .read_size
            .read(py, this.fd, ReadCall::Recv, READ_SIZE, Framing::Stream);
        match received {
            Ok(Received::WouldBlock) => Ok(()),
            Ok(Received::Eof) => Self::eof(slf, protocol),
            Ok(Received::Data(data)) => {
                // Looked up on every call, as asyncio does (a protocol may
                // rebind it); the method call allocates no bound method.
                let result = protocol.call_method1(intern!(py, "data_received"), (&data,));
                recycled_bytes::recycle(data);
                match result {
                    Ok(_) => Ok(()),
                    Err(err) => Self::fatal_error(
                        slf,
                        err,
                        "Fatal error: protocol.data_received() call failed.",
                    ),
                }
            }
            Err(err) => Self::fatal_error(slf, err, "Fatal read error on socket transport"),
        }
    }

    fn read_into_protocol_buffer(
        slf: &Bound<'_, Self>,
        protocol: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let buffer = match protocol.call_method1(pyo3::intern!(py, "get_buffer"), (-1,)) {
            Ok(buffer) => buffer,
            Err(err) => {
                return Self::fatal_error(
                    slf,
                    err,
                    "Fatal error: protocol.get_buffer() call failed.",
                )
            }
        };
        let received = with_bytes_mut(&buffer, "get_buffer() result", |slice| {
            if slice.is_empty() {
                return Err(None);
            }
            // Stream transports carry only stream sockets.
            reads::recv_into(this.fd, slice, Framing::Stream).map_err(Some)
        });
        let received = match received {
            Ok(result) => result,
            Err(err) => {
                return Self::fatal_error(
                    slf,
                    err,
                    "Fatal error: protocol.get_buffer() call failed.",
                )
            }
        };
        match received {
            Ok(None) => Ok(()),
            Ok(Some(0)) => Self::eof(slf, protocol),
            Ok(Some(count)) => {
                match python_api::byte_count(py, count).and_then(|count| {
                    protocol.call_method1(pyo3::intern!(py, "buffer_updated"), (count,))
                }) {
                    Ok(_) => Ok(()),
                    Err(err) => Self::fatal_error(
                        slf,
                        err,
                        "Fatal error: protocol.buffer_updated() call failed.",
                    ),
                }
            }
            Err(None) => Self::fatal_error(
                slf,
                PyRuntimeError::new_err("get_buffer() returned an empty buffer"),
                "Fatal error: protocol.get_buffer() call failed.",
            ),
            Err(Some(errno)) => Self::fatal_error(
                slf,
                os_error(py, errno),
                "Fatal read error on socket transport",
            ),
        }
    }

    fn schedule_self(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let no_args = PyTuple::empty(py).unbind();
        slf.get()
            .loop_
            .get()
            .soon(py, slf.clone().into_any().unbind(), no_args)
    }

    fn open(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let made = Self::call_connection_made(slf);
        Self::_start_reading(slf)?;
        let waiter = slf.get().state.lock(py).open_waiter.take();
        if let Some(waiter) = waiter.as_ref().map(|w| w.bind(py)) {
            if !waiter.call_method0(intern!(py, "cancelled"))?.is_truthy()? {
                waiter.call_method1(intern!(py, "set_result"), (py.None(),))?;
            }
        }
        made
    }

    /// `connection_lost`, scheduled: an exception is reported as a callback
    /// `_call_connection_lost(exc)` of this transport's would be.
    fn run_connection_lost(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let exc_value = exc.as_ref().map(|e| e.clone_ref(py));
        let Err(err) = Self::connection_lost(slf, exc) else {
            return Ok(());
        };
        report_as_handle_error(
            slf.get().loop_ref(py).as_any(),
            slf.getattr(intern!(py, "_call_connection_lost"))?,
            PyTuple::new(py, [exc_value.unwrap_or_else(|| py.None())])?,
            err,
        )
    }

    /// `protocol.connection_made(transport)`; an exception goes to the loop's
    /// handler exactly as if the call had been a handle of its own (same
    /// message and context keys as asyncio), except `SystemExit` and
    /// `KeyboardInterrupt`, which are returned.
    fn call_connection_made(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (Some(protocol), wrapper) = (this.protocol(py), this.wrapper(py)) else {
            return Ok(());
        };
        let protocol = protocol.bind(py);
        let Err(err) = protocol.call_method1(intern!(py, "connection_made"), (&wrapper,)) else {
            return Ok(());
        };
        report_as_handle_error(
            this.loop_ref(py).as_any(),
            protocol.getattr(intern!(py, "connection_made"))?,
            PyTuple::new(py, [&wrapper])?,
            err,
        )
    }

    /// The peer closed its side: ask the protocol whether to keep the
    /// transport open for writing (half-close), else close it.
    fn eof(slf: &Bound<'_, Self>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        this.log_if_debug(py, "debug", "%r received EOF")?;
        this.state.lock(py).eof_received = true;
        this.update_interest(py)?;
        let keep_open = match protocol.call_method0(pyo3::intern!(py, "eof_received")) {
            Ok(result) => result.is_truthy()?,
            Err(err) => {
                return Self::fatal_error(
                    slf,
                    err,
                    "Fatal error: protocol.eof_received() call failed.",
                )
            }
        };
        if !keep_open {
            Self::close(slf)?;
        }
        Ok(())
    }

    fn write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let (waiter, context) = {
            let mut state = slf.get().state.lock(py);
            let waiter = if state.conn_lost == 0 && state.buffered_len() == 0 {
                state.drain_waiter.take()
            } else {
                None
            };
            (waiter, state.contexts.writing(py))
        };
        callback_context::run_in(py, context.as_ref(), || Self::flush(slf, waiter))
    }

    /// Sends what the buffer holds, or resolves the drain `waiter` of an
    /// empty buffer.
    fn flush(slf: &Bound<'_, Self>, waiter: Option<Py<PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        enum After {
            Nothing,
            Drained {
                resume: bool,
                lose: bool,
                shutdown: bool,
            },
            Failed(Errno),
        }
        if let Some(waiter) = waiter {
            this.update_interest(py)?;
            return resolve_waiter(waiter.bind(py), None);
        }
        let after = {
            let mut state = this.state.lock(py);
            if state.conn_lost > 0 || state.buffered_len() == 0 {
                After::Nothing
            } else {
                let pending = &state.write_buffer[state.write_offset..];
                match send_some(this.fd, pending) {
                    Ok(sent) => {
                        state.consume(sent);
                        let resume =
                            state.protocol_paused && state.buffered_len() <= state.low_water;
                        if resume {
                            state.protocol_paused = false;
                        }
                        if state.buffered_len() == 0 {
                            After::Drained {
                                resume,
                                lose: state.closing,
                                shutdown: !state.closing && state.eof_requested,
                            }
                        } else if resume {
                            After::Drained {
                                resume,
                                lose: false,
                                shutdown: false,
                            }
                        } else {
                            After::Nothing
                        }
                    }
                    Err(errno) => {
                        state.clear_buffer();
                        After::Failed(errno)
                    }
                }
            }
        };
        match after {
            After::Nothing => Ok(()),
            After::Failed(errno) => {
                this.update_interest(py)?;
                Self::fatal_error(
                    slf,
                    os_error(py, errno),
                    "Fatal write error on socket transport",
                )
            }
            After::Drained {
                resume,
                lose,
                shutdown,
            } => {
                this.update_interest(py)?;
                if resume {
                    Self::call_protocol_flow(slf, "resume_writing")?;
                }
                if lose {
                    Self::connection_lost(slf, None)?;
                } else if shutdown {
                    // SAFETY: shutting down our own descriptor.
                    unsafe { libc::shutdown(this.fd, libc::SHUT_WR) };
                }
                Ok(())
            }
        }
    }

    /// Buffers (or sends) `parts`, in order; the caller acts on the outcome
    /// with no lock held. Several parts go out in one `sendmsg`, with no copy.
    fn write_parts(&self, py: Python<'_>, parts: &[&[u8]]) -> PyResult<WriteOutcome> {
        let mut state = self.state.lock(py);
        if state.eof_requested {
            return Err(PyRuntimeError::new_err(
                "Cannot call write() after write_eof()",
            ));
        }
        if state.sendfile_active {
            // asyncio refuses: the bytes would interleave with the file's.
            return Err(PyRuntimeError::new_err(
                "unable to write; sendfile is in progress",
            ));
        }
        let total: usize = parts.iter().map(|part| part.len()).sum();
        if total == 0 {
            return Ok(WriteOutcome::Done);
        }
        if state.conn_lost > 0 {
            state.conn_lost += 1;
            return Ok(if state.conn_lost > CONNLOST_WRITE_WARNING_THRESHOLD {
                WriteOutcome::WarnConnLost
            } else {
                WriteOutcome::Done
            });
        }
        let mut already_sent = 0;
        let was_empty = state.buffered_len() == 0;
        if was_empty {
            let sent = match parts {
                [single] => send_some(self.fd, single),
                _ => send_parts(self.fd, parts),
            };
            match sent {
                Ok(sent) if sent == total => return Ok(WriteOutcome::Done),
                Ok(sent) => already_sent = sent,
                Err(errno) => return Ok(WriteOutcome::Failed(errno)),
            }
        }
        for part in parts {
            if already_sent >= part.len() {
                already_sent -= part.len();
                continue;
            }
            state.append(&part[already_sent..]);
            already_sent = 0;
        }
        Ok(WriteOutcome::Buffered {
            started: was_empty,
            pause: state.should_pause(),
        })
    }

    fn finish_write(slf: &Bound<'_, Self>, outcome: WriteOutcome) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        match outcome {
            WriteOutcome::Done => Ok(()),
            WriteOutcome::Buffered { started, pause } => {
                if started {
                    this.adopt_writing_context(py)?;
                    this.update_interest(py)?;
                }
                if pause {
                    Self::call_protocol_flow(slf, "pause_writing")?;
                }
                Ok(())
            }
            WriteOutcome::Failed(errno) => Self::fatal_error(
                slf,
                os_error(py, errno),
                "Fatal write error on socket transport",
            ),
            WriteOutcome::WarnConnLost => {
                let logger = py.import("asyncio.log")?.getattr("logger")?;
                logger.call_method1("warning", ("socket.send() raised exception.",))?;
                Ok(())
            }
        }
    }

    /// The write buffer started filling: it is flushed in a copy of the
    /// writer's context (asyncio's writer handle is made then).
    fn adopt_writing_context(&self, py: Python<'_>) -> PyResult<()> {
        let writer = callback_context::copy_current(py)?;
        let previous = self.state.lock(py).contexts.set_writing(writer);
        drop(previous);
        Ok(())
    }

    /// `pause_writing`/`resume_writing`; a failure is reported, not raised.
    fn call_protocol_flow(slf: &Bound<'_, Self>, method: &str) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (transport, protocol) = (this.wrapper(py), this.protocol(py));
        transport_common::call_flow_method(this.loop_.bind(py), transport, protocol, method)
    }

    /// asyncio's `_fatal_error`: report (OS errors only in debug mode), then
    /// force-close the transport.
    fn fatal_error(slf: &Bound<'_, Self>, err: PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let quiet = err.is_instance_of::<pyo3::exceptions::PyOSError>(py);
        let exc = transport_common::report_fatal_error(
            this.loop_ref(py),
            this.wrapper(py),
            this.protocol(py),
            err,
            message,
            quiet,
        )?;
        Self::force_close(slf, Some(exc))
    }

    fn force_close(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        {
            let mut state = this.state.lock(py);
            if state.conn_lost > 0 {
                return Ok(());
            }
            state.clear_buffer();
            state.closing = true;
            state.conn_lost += 1;
        }
        this.update_interest(py)?;
        this.schedule_connection_lost(slf, exc)
    }

    fn fail_drain_waiter(&self, py: Python<'_>) -> PyResult<()> {
        let waiter = self.state.lock(py).drain_waiter.take();
        match waiter {
            Some(waiter) => {
                let error =
                    pyo3::exceptions::PyConnectionError::new_err("Connection is closed by peer");
                resolve_waiter(waiter.bind(py), Some(error))
            }
            None => Ok(()),
        }
    }

    fn schedule_connection_lost(
        &self,
        slf: &Bound<'_, Self>,
        exc: Option<Py<PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        if self.loop_.get().closed() {
            // Nothing will run scheduled callbacks any more: release the socket now.
            return Self::release_socket(slf);
        }
        self.state
            .lock(py)
            .scheduled
            .push_back(Scheduled::ConnectionLost(exc));
        Self::schedule_self(slf)
    }

    /// Calls `connection_lost(exc)` once, then closes the socket and lets go of
    /// the protocol, the wrapper and the server.
    fn connection_lost(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        this.fail_drain_waiter(py)?;
        let protocol = this.state.lock(py).protocol.take();
        let result = transport_common::notify_connection_lost(py, protocol, exc);
        let released = Self::release_socket(slf);
        result.and(released)
    }

    fn release_socket(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        this.loop_.get().native_unwatch(py, this.fd);
        let (owner, wrapper, server) = {
            let mut state = this.state.lock(py);
            state.clear_buffer();
            (
                std::mem::replace(&mut state.owner, SocketOwner::Closed),
                state.wrapper.take(),
                state.server.take(),
            )
        };
        let mut result = Ok(());
        match owner {
            SocketOwner::Python(sock) => {
                let closed = sock.bind(py).call_method0("close").map(|_| ());
                result = result.and(closed);
            }
            SocketOwner::Native(fd) => drop(fd),
            SocketOwner::Closed => {}
        }
        if let (Some(wrapper), Some(server)) = (wrapper, server) {
            // asyncio's _call_connection_lost: the server forgets the
            // transport, which forgets the server.
            let detached = server
                .bind(py)
                .call_method1(intern!(py, "_detach"), (&wrapper,))
                .and_then(|_| wrapper.bind(py).setattr(intern!(py, "_server"), py.None()));
            result = result.and(detached);
        }
        result
    }
}

/// Completes a future unless it is already done (e.g. cancelled).
fn resolve_waiter(waiter: &Bound<'_, PyAny>, error: Option<PyErr>) -> PyResult<()> {
    let py = waiter.py();
    if waiter
        .call_method0(pyo3::intern!(py, "done"))?
        .is_truthy()?
    {
        return Ok(());
    }
    match error {
        Some(error) => waiter.call_method1("set_exception", (error.value(py),))?,
        None => waiter.call_method1("set_result", (py.None(),))?,
    };
    Ok(())
}

/// The loop's entry point for readiness of a stream transport's socket.
pub fn dispatch(
    target: &Bound<'_, PyAny>,
    _loop: &Bound<'_, Loop>,
    readiness: Readiness,
) -> PyResult<()> {
    let transport = target.cast::<StreamTransport>()?;
    StreamTransport::on_ready(transport, readiness)
}

impl StreamTransport {
    /// A transport over `fd`, owned as `owner` says; not yet watched.
    /// Its protocol's reads run in `context` (a copy of the context it is
    /// made in).
    pub fn create(
        event_loop: Bound<'_, Loop>,
        fd: RawFd,
        owner: SocketOwner,
        wrapper: Py<PyAny>,
        protocol: Py<PyAny>,
        buffered: bool,
        context: Py<PyAny>,
    ) -> Self {
        Self {
            read_size: ReadSizeHint::default(),
            fd,
            loop_: event_loop.unbind(),
            state: GilLocked::new(StreamState {
                wrapper: Some(wrapper),
                protocol: Some(protocol),
                buffered,
                owner,
                write_buffer: Vec::new(),
                write_offset: 0,
                high_water: DEFAULT_HIGH_WATER,
                low_water: DEFAULT_HIGH_WATER / 4,
                protocol_paused: false,
                reading_started: false,
                reading_paused: false,
                eof_received: false,
                closing: false,
                eof_requested: false,
                conn_lost: 0,
                drain_waiter: None,
                sendfile_active: false,
                sockname: None,
                peername: None,
                server: None,
                open_waiter: None,
                scheduled: VecDeque::new(),
                contexts: TransportContexts::new(context),
            }),
        }
    }

    /// Gives up a transport that never started (its creation failed half
    /// way): no protocol callback, the socket unwatched and closed now.
    pub fn discard(&self, py: Python<'_>) {
        let (owner, wrapper, protocol) = {
            let mut state = self.state.lock(py);
            state.closing = true;
            state.conn_lost += 1;
            (
                std::mem::replace(&mut state.owner, SocketOwner::Closed),
                state.wrapper.take(),
                state.protocol.take(),
            )
        };
        self.loop_.get().native_unwatch(py, self.fd);
        drop((owner, wrapper, protocol));
    }

    /// The wrapper, if `server` accepted this transport and has not yet
    /// been told that the connection is gone.
    pub fn wrapper_if_served_by(
        &self,
        py: Python<'_>,
        server: &Bound<'_, PyAny>,
    ) -> Option<Py<PyAny>> {
        let state = self.state.lock(py);
        if !state.server.as_ref()?.bind(py).is(server) {
            return None;
        }
        state.wrapper.as_ref().map(|w| w.clone_ref(py))
    }

    /// Records the addresses asyncio keeps in the transport's extra info.
    pub fn set_addresses(
        &self,
        py: Python<'_>,
        sockname: Option<SockAddr>,
        peername: Option<SockAddr>,
    ) {
        let mut state = self.state.lock(py);
        state.sockname = sockname.map(KeptAddr::from);
        state.peername = peername.map(KeptAddr::from);
    }
}

impl StreamTransport {
    /// `write(data)`: installed as a raw fast call (see `fast_calls`), as
    /// `writelines`: every echo and every HTTP response makes one of them.
    pub fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        check_write_type(data)?;
        let this = slf.get();
        let outcome = match with_bytes(data, "data", |bytes| this.write_parts(slf.py(), &[bytes])) {
            Ok(outcome) => outcome?,
            Err(err) if is_non_contiguous(slf.py(), &err) => {
                return Self::write_non_contiguous(slf, data, err)
            }
            Err(err) => return Err(err),
        };
        Self::finish_write(slf, outcome)
    }

    /// A strided memoryview, as asyncio treats it (see `is_non_contiguous`).
    /// Sent at once, the socket refuses it and the transport fails. Behind
    /// queued data, Python 3.11 raises from extending its bytearray buffer
    /// with it; later versions queue the view itself, and their next
    /// `sendmsg` fails the transport, which is what happens here at once.
    fn write_non_contiguous(
        slf: &Bound<'_, Self>,
        data: &Bound<'_, PyAny>,
        err: PyErr,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        // The checks every write makes first (after write_eof, during sendfile).
        this.write_parts(py, &[])?;
        if data.len()? == 0 || this.state.lock(py).conn_lost > 0 {
            return Self::write(slf, contiguous_copy(data)?.as_any());
        }
        let queued = this.state.lock(py).buffered_len() > 0;
        if queued && py.version_info() < (3, 12) {
            return Err(PyTypeError::new_err(
                "can't set bytearray slice from memoryview",
            ));
        }
        Self::fatal_error(slf, err, "Fatal write error on socket transport")
    }

    /// Writes a sequence of buffers with one `writev` where possible.
    pub fn writelines(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        let items: Vec<Bound<'_, PyAny>> = match list_of_data.cast::<PyList>() {
            Ok(list) => list.iter().collect(),
            Err(_) => list_of_data.try_iter()?.collect::<PyResult<_>>()?,
        };
        let views = items
            .iter()
            .map(|item| BytesView::new(item, "data"))
            .collect::<PyResult<Vec<_>>>()?;
        let parts: Vec<&[u8]> = views.iter().map(BytesView::as_slice).collect();
        let outcome = slf.get().write_parts(slf.py(), &parts)?;
        drop(parts);
        drop(views);
        Self::finish_write(slf, outcome)
    }
}

#[pymethods]
impl StreamTransport {
    /// Wraps the connected, non-blocking socket `fd`. With `sock` (a Python
    /// socket object) the transport closes `sock` at the end; without, it
    /// owns `fd` itself. (Natively connected sockets get their transport
    /// from `socket_transport.rs`.)
    #[new]
    #[pyo3(signature = (event_loop, fd, sock, wrapper, protocol, buffered))]
    fn py_new(
        event_loop: Bound<'_, Loop>,
        fd: RawFd,
        sock: Option<Py<PyAny>>,
        wrapper: Py<PyAny>,
        protocol: Py<PyAny>,
        buffered: bool,
    ) -> PyResult<Self> {
        if fd < 0 {
            return Err(PyValueError::new_err(format!(
                "Invalid file descriptor: {fd}"
            )));
        }
        // Before taking `fd` over: nothing may fail once this owns it.
        let py = event_loop.py();
        let context = callback_context::copy_current(py)?;
        let owner = match sock {
            Some(sock) => SocketOwner::Python(sock),
            // SAFETY: the caller transfers ownership of `fd` to us.
            None => SocketOwner::Native(unsafe { OwnedFd::from_raw_fd(fd) }),
        };
        let transport = Self::create(event_loop, fd, owner, wrapper, protocol, buffered, context);
        transport.set_addresses(
            py,
            sockaddr::getsockname(fd).ok(),
            sockaddr::getpeername(fd).ok(),
        );
        Ok(transport)
    }

    /// Registers the socket with the loop (before `connection_made`), so that
    /// `add_reader` on it is refused as asyncio does.
    #[pyo3(signature = (server=None))]
    pub fn _attach(slf: &Bound<'_, Self>, server: Option<Py<PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        this.state.lock(py).server = server;
        this.loop_.get().native_watch(
            py,
            this.fd,
            slf.clone().into_any().unbind(),
            dispatch,
            Interest::default(),
        )
    }

    /// Schedules the start of the connection for the next iteration: one
    /// callback (this object, called) doing what asyncio's transports do
    /// with three in a row: `connection_made`, start reading, resolve
    /// `waiter`. Callbacks that `connection_made` schedules still run after
    /// the waiter's task wakes, as they would in asyncio.
    #[pyo3(signature = (waiter=None))]
    pub fn _open(slf: &Bound<'_, Self>, waiter: Option<Py<PyAny>>) -> PyResult<()> {
        let py = slf.py();
        {
            let mut state = slf.get().state.lock(py);
            state.open_waiter = waiter;
            state.scheduled.push_back(Scheduled::Open);
        }
        Self::schedule_self(slf)
    }

    /// Runs the next callback this transport scheduled for itself.
    fn __call__(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let next = {
            let mut state = slf.get().state.lock(py);
            let next = state.scheduled.pop_front();
            if state.scheduled.is_empty() {
                // A transport schedules itself twice in its life (open,
                // connection lost): an idle connection keeps no buffer.
                state.scheduled = VecDeque::new();
            }
            next
        };
        match next {
            Some(Scheduled::Open) => Self::open(slf),
            Some(Scheduled::ConnectionLost(exc)) => Self::run_connection_lost(slf, exc),
            None => Ok(()),
        }
    }

    /// Starts reading; scheduled right after `connection_made`.
    fn _start_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        {
            let mut state = this.state.lock(py);
            if state.conn_lost > 0 {
                return Ok(());
            }
            state.reading_started = true;
        }
        this.update_interest(slf.py())
    }

    fn write_eof(&self, py: Python<'_>) -> PyResult<()> {
        let mut state = self.state.lock(py);
        if state.closing || state.eof_requested {
            return Ok(());
        }
        state.eof_requested = true;
        if state.buffered_len() == 0 {
            // SAFETY: shutting down our own descriptor.
            unsafe { libc::shutdown(self.fd, libc::SHUT_WR) };
        }
        Ok(())
    }

    /// Resolves `waiter` once everything written so far has been sent and the
    /// socket is writable (`sendfile` then writes around the buffer).
    fn _wait_drained(&self, py: Python<'_>, waiter: Py<PyAny>) -> PyResult<()> {
        let previous = {
            let mut state = self.state.lock(py);
            if state.conn_lost > 0 {
                drop(state);
                let error =
                    pyo3::exceptions::PyConnectionError::new_err("Connection is closed by peer");
                return resolve_waiter(waiter.bind(py), Some(error));
            }
            state.drain_waiter.replace(waiter)
        };
        drop(previous);
        self.update_interest(py)
    }

    fn can_write_eof(&self) -> bool {
        true
    }

    /// Close after flushing buffered data; `connection_lost(None)` follows.
    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let lose_now = {
            let mut state = this.state.lock(py);
            if state.closing {
                return Ok(());
            }
            state.closing = true;
            if state.buffered_len() == 0 {
                state.conn_lost += 1;
                true
            } else {
                false
            }
        };
        this.update_interest(py)?;
        if lose_now {
            this.schedule_connection_lost(slf, None)?;
        }
        Ok(())
    }

    /// Close at once, discarding buffered data.
    fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::force_close(slf, None)
    }

    fn _force_close(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        Self::force_close(slf, exc.filter(|e| !e.is_none(slf.py())))
    }

    /// Closes the socket without calling the protocol: what asyncio's socket
    /// transports do when collected unclosed (used by `__del__`).
    fn _release(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        {
            let mut state = slf.get().state.lock(py);
            state.closing = true;
            state.conn_lost = state.conn_lost.max(1);
        }
        Self::release_socket(slf)
    }

    fn _call_connection_lost(slf: &Bound<'_, Self>, exc: Py<PyAny>) -> PyResult<()> {
        let py = slf.py();
        let exc = if exc.is_none(py) { None } else { Some(exc) };
        Self::connection_lost(slf, exc)
    }

    fn is_closing(&self, py: Python<'_>) -> bool {
        self.state.lock(py).closing
    }

    fn is_reading(&self, py: Python<'_>) -> bool {
        transport_common::is_reading(py, &self.state)
    }

    fn pause_reading(&self, py: Python<'_>) -> PyResult<()> {
        if transport_common::pause_reading(py, &self.state) {
            self.update_interest(py)?;
            self.log_if_debug(py, "debug", "%r pauses reading")?;
        }
        Ok(())
    }

    fn resume_reading(&self, py: Python<'_>) -> PyResult<()> {
        if transport_common::resume_reading(py, &self.state)? {
            self.update_interest(py)?;
            self.log_if_debug(py, "debug", "%r resumes reading")?;
        }
        Ok(())
    }

    fn get_write_buffer_size(&self, py: Python<'_>) -> usize {
        self.state.lock(py).buffered_len()
    }

    fn get_write_buffer_limits(&self, py: Python<'_>) -> (usize, usize) {
        let state = self.state.lock(py);
        (state.low_water, state.high_water)
    }

    #[pyo3(signature = (high=None, low=None))]
    fn set_write_buffer_limits(
        slf: &Bound<'_, Self>,
        high: Option<flow_control::WaterMark>,
        low: Option<flow_control::WaterMark>,
    ) -> PyResult<()> {
        let py = slf.py();
        let (high, low) = flow_control::water_marks(high, low)?;
        let this = slf.get();
        let pause = {
            let mut state = this.state.lock(py);
            state.high_water = high;
            state.low_water = low;
            state.should_pause()
        };
        if pause {
            Self::call_protocol_flow(slf, "pause_writing")?;
        }
        Ok(())
    }

    #[pyo3(signature = (protocol, buffered))]
    fn _set_protocol(&self, py: Python<'_>, protocol: Py<PyAny>, buffered: bool) {
        let old_protocol = {
            let mut state = self.state.lock(py);
            state.buffered = buffered;
            state.protocol.replace(protocol)
        };
        drop(old_protocol);
    }

    #[getter]
    fn _protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.protocol(py)
    }

    /// The `asyncio.Transport` the protocol sees.
    #[getter]
    fn _wrapper(&self, py: Python<'_>) -> Py<PyAny> {
        self.wrapper(py)
    }

    /// While `loop.sendfile()` owns the socket, `write()` is refused (asyncio).
    fn _set_sendfile_active(&self, py: Python<'_>, active: bool) {
        self.state.lock(py).sendfile_active = active;
    }

    #[getter]
    fn _protocol_paused(&self, py: Python<'_>) -> bool {
        self.state.lock(py).protocol_paused
    }

    #[getter]
    fn _fileno(&self) -> RawFd {
        self.fd
    }

    #[getter]
    fn _conn_lost(&self, py: Python<'_>) -> u32 {
        self.state.lock(py).conn_lost
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        transport_common::describe_native(py, &self.wrapper(py), "SocketTransport", self.fd)
    }

    /// True once the socket was closed.
    #[getter]
    fn _released(&self, py: Python<'_>) -> bool {
        matches!(self.state.lock(py).owner, SocketOwner::Closed)
    }

    /// (reading, writing): what the loop currently waits for.
    #[getter]
    fn _polling(&self, py: Python<'_>) -> (bool, bool) {
        let interest = self.state.lock(py).interest();
        (interest.read, interest.write)
    }

    /// The local (or, with `peer`, the remote) address the transport had
    /// when it was made, as the `socket` module shows it; None if unknown.
    fn _address<'py>(&self, py: Python<'py>, peer: bool) -> PyResult<Option<Bound<'py, PyAny>>> {
        let state = self.state.lock(py);
        let address = if peer {
            &state.peername
        } else {
            &state.sockname
        };
        address.as_ref().map(|addr| addr.to_python(py)).transpose()
    }

    /// The Python socket object behind the transport. For a connection we
    /// accepted natively it is made on first use, over the same descriptor
    /// (which it then owns: one descriptor per connection, as in asyncio).
    fn _socket(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        match &self.state.lock(py).owner {
            SocketOwner::Python(sock) => return Ok(Some(sock.clone_ref(py))),
            SocketOwner::Closed => return Ok(None),
            SocketOwner::Native(_) => {}
        }
        let kwargs = pyo3::types::PyDict::new(py);
        kwargs.set_item("fileno", self.fd)?;
        let sock = py
            .import("socket")?
            .getattr("socket")?
            .call((), Some(&kwargs))?;
        sock.call_method1("setblocking", (false,))?;
        let mut state = self.state.lock(py);
        match std::mem::replace(&mut state.owner, SocketOwner::Python(sock.clone().unbind())) {
            SocketOwner::Native(fd) => {
                // The Python socket closes it from now on.
                let _ = fd.into_raw_fd();
                Ok(Some(sock.unbind()))
            }
            previous => {
                // Closed or claimed meanwhile: undo, and let go of the number.
                state.owner = previous;
                drop(state);
                sock.call_method0("detach")?;
                Ok(None)
            }
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        let Some(state) = self.state.lock_in_traverse(&visit) else {
            return Ok(());
        };
        visit.call(&self.loop_)?;
        visit.call(&state.wrapper)?;
        visit.call(&state.protocol)?;
        visit.call(&state.drain_waiter)?;
        visit.call(&state.open_waiter)?;
        visit.call(&state.server)?;
        state.contexts.visit(&visit)?;
        for scheduled in &state.scheduled {
            if let Scheduled::ConnectionLost(exc) = scheduled {
                visit.call(exc)?;
            }
        }
        if let SocketOwner::Python(sock) = &state.owner {
            visit.call(sock)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        self.state.take_for_clear(|state| {
            (
                state.wrapper.take(),
                state.protocol.take(),
                state.open_waiter.take(),
                state.server.take(),
                std::mem::take(&mut state.scheduled),
                state.contexts.take(),
            )
        });
    }
}
