//! Pipe transports: what `connect_read_pipe` and `connect_write_pipe` return.
//!
//! One native class serves both directions. A read pipe is watched for
//! readability; the loop calls [`dispatch`], which `read`s into a reusable
//! per-thread buffer and hands one `bytes` object to `data_received`. A write
//! pipe writes at once and buffers only what the kernel refused, flushing it
//! when epoll reports the descriptor writable and pausing/resuming the
//! protocol at the water marks. A write pipe to a FIFO or a socket is also
//! watched for readability, which for the write end means "the reader went
//! away" (EPOLLERR/EPOLLHUP, or data on a socket): asyncio closes the
//! transport then, with `BrokenPipeError` if data was still buffered.
//!
//! The semantics are asyncio's Unix pipe transports: EOF on a read pipe calls
//! `eof_received()` then `connection_lost(None)` (the return value of
//! `eof_received` does not matter: a pipe cannot be half-closed); `close()` on
//! a write pipe is `write_eof()`, which flushes and then loses the connection;
//! `abort()` drops the buffer; errors call `connection_lost(exc)`. Whatever
//! happens, `connection_lost` is called exactly once and the pipe object the
//! user gave us is closed right after it.
//!
//! The descriptor belongs to that Python pipe object (a file object, a
//! socket, ...): we only borrow its number, stop watching it before closing
//! the object, and never watch it again after that, since the number may be
//! reused at once.

use std::os::fd::RawFd;

use nix::errno::Errno;
use pyo3::exceptions::{PyBrokenPipeError, PyOSError, PyTypeError, PyValueError};
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};
use pyo3::PyTraverseError;

use crate::buffers::{contiguous_copy, is_non_contiguous, with_bytes};
use crate::callback_context::{self, TransportContexts};
use crate::errors::{is_fatal, os_error};
use crate::event_loop::Loop;
use crate::flow_control::{self, DEFAULT_HIGH_WATER};
use crate::gil_locked::GilLocked;
use crate::pipe_capacity::PipeGrowth;
use crate::poller::{Interest, Readiness};
use crate::reads::{self, Framing, ReadCall, ReadSizeHint, Received};
use crate::transport_common;
use crate::{recycled_bytes, sys_io};

/// asyncio reads at most this much per iteration (`max_size`).
const READ_SIZE: usize = reads::READ_SIZE;
/// asyncio's LOG_THRESHOLD_FOR_CONNLOST_WRITES.
const CONNLOST_WRITE_WARNING_THRESHOLD: u32 = 5;
/// A drained write buffer larger than this gives its memory back.
const KEEP_WRITE_CAPACITY: usize = 1024 * 1024;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
}

struct PipeState {
    wrapper: Option<Py<PyAny>>,
    protocol: Option<Py<PyAny>>,
    /// The user's pipe object; `None` once it has been closed ("released").
    pipe: Option<Py<PyAny>>,
    /// Registered with the loop. Descriptors epoll refuses (EPERM: files
    /// that are always ready, like /dev/null) work unregistered as long as
    /// nothing has to be waited for, as with asyncio's selector.
    attached: bool,
    /// Reading (or, for a write pipe, watching the peer) may begin: set right
    /// after `connection_made` has run.
    started: bool,
    reading_paused: bool,
    /// `close()`, `write_eof()`, `abort()`, EOF or an error happened.
    closing: bool,
    /// `connection_lost` has been scheduled or called: nothing is watched any more.
    lost: bool,
    write_buffer: Vec<u8>,
    write_offset: usize,
    high_water: usize,
    low_water: usize,
    protocol_paused: bool,
    /// Writes refused after the connection was lost (asyncio's `_conn_lost`).
    conn_lost: u32,
    /// The contexts reads and flushes run in (callback_context.rs).
    contexts: TransportContexts,
}

transport_common::reading_switch_on_fields!(PipeState);

impl PipeState {
    fn buffered_len(&self) -> usize {
        self.write_buffer.len() - self.write_offset
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

    fn clear_buffer(&mut self) {
        self.write_buffer.clear();
        self.write_offset = 0;
        if self.write_buffer.capacity() > KEEP_WRITE_CAPACITY {
            self.write_buffer = Vec::new();
        }
    }

    /// Pauses the protocol if the buffer went over the high-water mark;
    /// true if `pause_writing()` must be called.
    fn should_pause(&mut self) -> bool {
        let buffered = self.buffered_len();
        flow_control::crossed_high_water(&mut self.protocol_paused, buffered, self.high_water)
    }
}

/// A read or write pipe transport. Python sees it through
/// `ferroloop.pipes.ReadPipeTransport` / `WritePipeTransport`.
#[pyclass(frozen, weakref, module = "ferroloop._core")]
pub struct PipeTransport {
    fd: RawFd,
    kind: Kind,
    /// Write pipes to FIFOs and sockets watch for readability to learn that
    /// the reader went away (asyncio does the same).
    watch_peer: bool,
    loop_: Py<Loop>,
    state: GilLocked<PipeState>,
    /// How to read next (large messages go straight into their `bytes`).
    read_size: ReadSizeHint,
    /// Whether the pipe grows once it fills (a child's pipes only).
    growth: PipeGrowth,
}

/// What a write decided under the lock, acted on after releasing it.
enum WriteOutcome {
    Done,
    Buffered { start_writer: bool, pause: bool },
    Failed(Errno),
    WarnConnLost,
}

/// `write`; 0 when the pipe is full.
fn write_some(fd: RawFd, data: &[u8]) -> Result<usize, Errno> {
    sys_io::write(fd, data).map(Option::unwrap_or_default)
}

fn errno_of(py: Python<'_>, err: &PyErr) -> Option<i32> {
    if !err.is_instance_of::<PyOSError>(py) {
        return None;
    }
    err.value(py).getattr("errno").ok()?.extract().ok()
}

impl PipeTransport {
    fn interest(&self, state: &PipeState) -> Interest {
        if state.lost || !state.started {
            return Interest::default();
        }
        match self.kind {
            Kind::Read => Interest::level(!state.reading_paused && !state.closing, false),
            Kind::Write => Interest::level(self.watch_peer, state.buffered_len() > 0),
        }
    }

    /// Tells the poller what we now wait for.
    fn update_interest(&self, py: Python<'_>) -> PyResult<()> {
        let interest = {
            let state = self.state.lock(py);
            if state.pipe.is_none() {
                // Released: the descriptor number may already belong to someone else.
                return Ok(());
            }
            let interest = self.interest(&state);
            if !state.attached {
                // What asyncio's add_reader/add_writer would raise for it.
                if interest.is_empty() {
                    return Ok(());
                }
                return Err(os_error(py, Errno::EPERM));
            }
            interest
        };
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

    fn on_ready(slf: &Bound<'_, Self>, readiness: Readiness) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        match this.kind {
            Kind::Read => {
                if readiness.readable {
                    Self::read_ready(slf)?;
                }
            }
            Kind::Write => {
                // asyncio runs the reader callback before the writer one.
                if readiness.readable {
                    let reading = {
                        let state = this.state.lock(py);
                        this.interest(&state)
                            .read
                            .then(|| state.contexts.reading(py))
                    };
                    if let Some(context) = reading {
                        callback_context::run_in(py, context.as_ref(), || Self::peer_closed(slf))?;
                    }
                }
                if readiness.writable {
                    let writing = this.state.lock(py).contexts.writing(py);
                    callback_context::run_in(py, writing.as_ref(), || Self::write_ready(slf))?;
                }
            }
        }
        Ok(())
    }

    fn read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (protocol, context) = {
            let state = this.state.lock(py);
            if !this.interest(&state).read {
                return Ok(());
            }
            let Some(protocol) = state.protocol.as_ref() else {
                return Ok(());
            };
            (protocol.bind(py).clone(), state.contexts.reading(py))
        };
        callback_context::run_in(py, context.as_ref(), || {
            Self::read_into_protocol(slf, &protocol)
        })
    }

    /// Reads once for `protocol`'s `data_received` (or its end of file).
    fn read_into_protocol(slf: &Bound<'_, Self>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        // A "pipe" may be any descriptor, a datagram socket among them.
        let received =
            this.read_size
                .read(py, this.fd, ReadCall::Read, READ_SIZE, Framing::Unknown);
        match received {
            Ok(Received::WouldBlock) => Ok(()),
            Ok(Received::Eof) => Self::eof(slf, protocol),
            Ok(Received::Data(data)) => {
                this.growth.after_read(this.fd, data.as_bytes().len());
                // Looked up on every call, as asyncio does.
                let result = protocol.call_method1(pyo3::intern!(py, "data_received"), (&data,));
                recycled_bytes::recycle(data);
                match result {
                    Ok(_) => Ok(()),
                    // asyncio lets the error escape the reader callback: it is
                    // reported and the transport keeps reading.
                    Err(err) => Self::report_callback_error(slf, err, "_read_ready"),
                }
            }
            Err(err) => Self::fatal_error(slf, err, "Fatal read error on pipe transport"),
        }
    }

    /// The writer closed its end: `eof_received()`, then `connection_lost(None)`,
    /// each in its own callback, as asyncio schedules them.
    fn eof(slf: &Bound<'_, Self>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        // Described as it was when the peer closed, as asyncio logs it.
        this.log_if_debug(py, "info", "%r was closed by peer")?;
        {
            let mut state = this.state.lock(py);
            state.closing = true;
            state.lost = true;
        }
        this.update_interest(py)?;
        if !this.loop_.get().closed() {
            let eof_received = protocol.getattr(pyo3::intern!(py, "eof_received"))?;
            this.loop_
                .get()
                .soon(py, eof_received.unbind(), PyTuple::empty(py).unbind())?;
        }
        Self::schedule_connection_lost(slf, None)
    }

    /// Readability of a write pipe: the reader went away.
    fn peer_closed(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        this.log_if_debug(py, "info", "%r was closed by peer")?;
        let buffered = this.state.lock(py).buffered_len() > 0;
        let exc = if buffered {
            Some(
                PyBrokenPipeError::new_err(())
                    .value(py)
                    .clone()
                    .into_any()
                    .unbind(),
            )
        } else {
            None
        };
        Self::close_with(slf, exc)
    }

    fn write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        enum After {
            Nothing,
            Drained { resume: bool },
            Failed(Errno),
        }
        let after = {
            let mut state = this.state.lock(py);
            if state.lost || state.buffered_len() == 0 {
                After::Nothing
            } else {
                let pending = &state.write_buffer[state.write_offset..];
                match write_some(this.fd, pending) {
                    Ok(written) => {
                        state.consume(written);
                        if state.buffered_len() == 0 {
                            // Like asyncio, resume only once the buffer is empty.
                            let resume = state.protocol_paused;
                            state.protocol_paused = false;
                            After::Drained { resume }
                        } else {
                            this.growth.after_short_write(this.fd);
                            After::Nothing
                        }
                    }
                    Err(errno) => {
                        state.clear_buffer();
                        state.conn_lost += 1;
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
                    "Fatal write error on pipe transport",
                )
            }
            After::Drained { resume } => {
                this.update_interest(py)?;
                if resume {
                    Self::call_protocol_flow(slf, "resume_writing")?;
                }
                // A write_eof()/close() was waiting for the flush.
                let lose = {
                    let mut state = this.state.lock(py);
                    let lose = state.closing && !state.lost && state.buffered_len() == 0;
                    if lose {
                        state.lost = true;
                    }
                    lose
                };
                if lose {
                    this.update_interest(py)?;
                    Self::connection_lost(slf, None)?;
                }
                Ok(())
            }
        }
    }

    /// Buffers (or writes) `data`; the caller acts on the outcome with no lock held.
    fn write_bytes(&self, py: Python<'_>, data: &[u8]) -> WriteOutcome {
        if data.is_empty() {
            return WriteOutcome::Done;
        }
        let mut state = self.state.lock(py);
        if state.conn_lost > 0 || state.closing {
            let warn = state.conn_lost >= CONNLOST_WRITE_WARNING_THRESHOLD;
            state.conn_lost += 1;
            return if warn {
                WriteOutcome::WarnConnLost
            } else {
                WriteOutcome::Done
            };
        }
        let mut rest = data;
        let was_empty = state.buffered_len() == 0;
        if was_empty {
            match write_some(self.fd, data) {
                Ok(written) if written == data.len() => return WriteOutcome::Done,
                Ok(written) => {
                    self.growth.after_short_write(self.fd);
                    rest = &data[written..];
                }
                Err(errno) => {
                    state.conn_lost += 1;
                    return WriteOutcome::Failed(errno);
                }
            }
        }
        state.append(rest);
        WriteOutcome::Buffered {
            start_writer: was_empty,
            pause: state.should_pause(),
        }
    }

    fn finish_write(slf: &Bound<'_, Self>, outcome: WriteOutcome) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        match outcome {
            WriteOutcome::Done => Ok(()),
            WriteOutcome::Buffered {
                start_writer,
                pause,
            } => {
                if start_writer {
                    // Flushes run in a copy of this writer's context, as
                    // asyncio's writer handle, made now, would.
                    let writer = callback_context::copy_current(py)?;
                    let previous = this.state.lock(py).contexts.set_writing(writer);
                    drop(previous);
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
                "Fatal write error on pipe transport",
            ),
            WriteOutcome::WarnConnLost => {
                let logger = py.import("asyncio.log")?.getattr("logger")?;
                logger.call_method1(
                    "warning",
                    ("pipe closed by peer or os.write(pipe, data) raised exception.",),
                )?;
                Ok(())
            }
        }
    }

    /// `pause_writing`/`resume_writing`; a failure is reported, not raised.
    fn call_protocol_flow(slf: &Bound<'_, Self>, method: &str) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (transport, protocol) = (this.wrapper(py), this.protocol(py));
        transport_common::call_flow_method(this.loop_.bind(py), transport, protocol, method)
    }

    /// An exception escaped a protocol callback run from the I/O handler:
    /// reported through the loop's exception handler, as a failing callback is.
    fn report_callback_error(slf: &Bound<'_, Self>, err: PyErr, handler: &str) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if is_fatal(py, &err) {
            return Err(err);
        }
        let wrapper = this.wrapper(py);
        let name = transport_common::wrapper_class_name(py, &wrapper, "PipeTransport");
        let context = PyDict::new(py);
        context.set_item(
            "message",
            format!("Exception in callback {name}.{handler}()"),
        )?;
        context.set_item("exception", err.value(py))?;
        context.set_item("transport", wrapper)?;
        context.set_item("protocol", this.protocol(py))?;
        this.loop_
            .bind(py)
            .call_method1("call_exception_handler", (context,))?;
        Ok(())
    }

    fn log_if_debug(&self, py: Python<'_>, level: &str, message: &str) -> PyResult<()> {
        transport_common::log_if_debug(py, self.loop_.get(), level, message, || self.wrapper(py))
    }

    /// A strided memoryview, as asyncio treats it (see `is_non_contiguous`):
    /// written at once, `os.write` refuses it and the transport fails;
    /// behind queued data, adding it to asyncio's bytearray buffer raises.
    fn write_non_contiguous(
        slf: &Bound<'_, Self>,
        data: &Bound<'_, PyAny>,
        err: PyErr,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (queued, lost) = {
            let state = this.state.lock(py);
            (
                state.buffered_len() > 0,
                state.conn_lost > 0 || state.closing,
            )
        };
        if data.len()? == 0 || lost {
            return Self::write(slf, contiguous_copy(data)?.as_any());
        }
        if queued {
            return Err(PyTypeError::new_err("can't concat memoryview to bytearray"));
        }
        this.state.lock(py).conn_lost += 1;
        Self::fatal_error(slf, err, "Fatal write error on pipe transport")
    }

    /// asyncio's `_fatal_error`: report the error (some OS errors only in
    /// debug mode), then close the transport with it.
    fn fatal_error(slf: &Bound<'_, Self>, err: PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let quiet = match this.kind {
            // A pty whose other side closed reports EIO: an ordinary end.
            Kind::Read => errno_of(py, &err) == Some(libc::EIO),
            Kind::Write => err.is_instance_of::<PyOSError>(py),
        };
        let exc = transport_common::report_fatal_error(
            this.loop_.bind(py),
            this.wrapper(py),
            this.protocol(py),
            err,
            message,
            quiet,
        )?;
        Self::close_with(slf, Some(exc))
    }

    /// asyncio's `_close`: stop everything, drop the buffer, and schedule
    /// `connection_lost(exc)` (once, whatever asks for it later).
    fn close_with(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        {
            let mut state = this.state.lock(py);
            state.closing = true;
            state.clear_buffer();
            if state.lost {
                return Ok(());
            }
            state.lost = true;
        }
        this.update_interest(py)?;
        Self::schedule_connection_lost(slf, exc)
    }

    fn schedule_connection_lost(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        let this = slf.get();
        if this.loop_.get().closed() {
            // Nothing will run scheduled callbacks any more: close the pipe now.
            return Self::release(slf);
        }
        transport_common::schedule_connection_lost(this.loop_.get(), slf.as_any(), exc)
    }

    /// Calls `connection_lost(exc)` once, then closes the pipe whatever it did.
    fn connection_lost(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let protocol = slf.get().state.lock(py).protocol.take();
        let result = transport_common::notify_connection_lost(py, protocol, exc);
        let released = Self::release(slf);
        result.and(released)
    }

    /// Stops watching the descriptor, then closes the pipe object and lets go
    /// of the wrapper. Idempotent.
    fn release(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (pipe, wrapper, attached) = {
            let mut state = this.state.lock(py);
            let Some(pipe) = state.pipe.take() else {
                return Ok(());
            };
            state.closing = true;
            state.lost = true;
            state.clear_buffer();
            let attached = std::mem::replace(&mut state.attached, false);
            (pipe, state.wrapper.take(), attached)
        };
        if attached {
            this.loop_.get().native_unwatch(py, this.fd);
        }
        drop(wrapper);
        pipe.bind(py).call_method0("close").map(|_| ())
    }
}

/// The loop's entry point for readiness of a pipe transport's descriptor.
pub fn dispatch(
    target: &Bound<'_, PyAny>,
    _loop: &Bound<'_, Loop>,
    readiness: Readiness,
) -> PyResult<()> {
    let transport = target.cast::<PipeTransport>()?;
    PipeTransport::on_ready(transport, readiness)
}

#[pymethods]
impl PipeTransport {
    /// Wraps the non-blocking descriptor `fd` of the Python object `pipe`
    /// (which keeps owning it and is closed after `connection_lost`).
    #[new]
    #[pyo3(signature = (event_loop, fd, pipe, wrapper, protocol, writable, watch_peer))]
    #[allow(clippy::too_many_arguments)]
    fn py_new(
        event_loop: Bound<'_, Loop>,
        fd: RawFd,
        pipe: Py<PyAny>,
        wrapper: Py<PyAny>,
        protocol: Py<PyAny>,
        writable: bool,
        watch_peer: bool,
    ) -> PyResult<Self> {
        if fd < 0 {
            return Err(PyValueError::new_err(format!(
                "Invalid file descriptor: {fd}"
            )));
        }
        let kind = if writable { Kind::Write } else { Kind::Read };
        let context = callback_context::copy_current(event_loop.py())?;
        Ok(Self {
            read_size: ReadSizeHint::default(),
            growth: PipeGrowth::default(),
            fd,
            kind,
            watch_peer: writable && watch_peer,
            loop_: event_loop.unbind(),
            state: GilLocked::new(PipeState {
                wrapper: Some(wrapper),
                protocol: Some(protocol),
                pipe: Some(pipe),
                attached: false,
                started: false,
                reading_paused: false,
                closing: false,
                lost: false,
                write_buffer: Vec::new(),
                write_offset: 0,
                high_water: DEFAULT_HIGH_WATER,
                low_water: DEFAULT_HIGH_WATER / 4,
                protocol_paused: false,
                conn_lost: 0,
                contexts: TransportContexts::new(context),
            }),
        })
    }

    /// Registers the descriptor with the loop (nothing is waited for yet).
    fn _attach(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let registered = this.loop_.get().native_watch(
            py,
            this.fd,
            slf.clone().into_any().unbind(),
            dispatch,
            Interest::default(),
        );
        match registered {
            Ok(()) => {
                this.state.lock(py).attached = true;
                Ok(())
            }
            Err(err) if errno_of(py, &err) == Some(libc::EPERM) => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// Starts reading (or watching the reader of a write pipe); scheduled
    /// right after `connection_made`.
    fn _start(&self, py: Python<'_>) -> PyResult<()> {
        {
            let mut state = self.state.lock(py);
            if state.lost {
                return Ok(());
            }
            state.started = true;
        }
        self.update_interest(py)
    }

    fn write(slf: &Bound<'_, Self>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let this = slf.get();
        let outcome = match with_bytes(data, "data", |bytes| this.write_bytes(slf.py(), bytes)) {
            Ok(outcome) => outcome,
            Err(err) if is_non_contiguous(slf.py(), &err) => {
                return Self::write_non_contiguous(slf, data, err)
            }
            Err(err) => return Err(err),
        };
        Self::finish_write(slf, outcome)
    }

    /// Writes the concatenation of an iterable of bytes-like objects.
    fn writelines(slf: &Bound<'_, Self>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let items: Vec<Bound<'_, PyAny>> = match list_of_data.cast::<PyList>() {
            Ok(list) => list.iter().collect(),
            Err(_) => list_of_data.try_iter()?.collect::<PyResult<_>>()?,
        };
        let mut joined = Vec::new();
        for item in &items {
            with_bytes(item, "data", |bytes| joined.extend_from_slice(bytes))?;
        }
        let data = PyBytes::new(py, &joined);
        Self::write(slf, data.as_any())
    }

    /// Closes the pipe once the buffer is flushed (a pipe has no half-close).
    fn write_eof(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let lose_now = {
            let mut state = this.state.lock(py);
            if state.closing {
                return Ok(());
            }
            state.closing = true;
            if state.buffered_len() == 0 && !state.lost {
                state.lost = true;
                true
            } else {
                false
            }
        };
        if lose_now {
            this.update_interest(slf.py())?;
            Self::schedule_connection_lost(slf, None)?;
        }
        Ok(())
    }

    fn can_write_eof(&self) -> bool {
        true
    }

    /// Read pipe: stop reading and lose the connection. Write pipe: `write_eof()`.
    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        match this.kind {
            Kind::Write => Self::write_eof(slf),
            Kind::Read => {
                if this.state.lock(py).closing {
                    return Ok(());
                }
                Self::close_with(slf, None)
            }
        }
    }

    /// Close at once, discarding buffered data.
    fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::close_with(slf, None)
    }

    fn _force_close(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        Self::close_with(slf, exc.filter(|e| !e.is_none(slf.py())))
    }

    fn _call_connection_lost(slf: &Bound<'_, Self>, exc: Py<PyAny>) -> PyResult<()> {
        let exc = if exc.is_none(slf.py()) {
            None
        } else {
            Some(exc)
        };
        Self::connection_lost(slf, exc)
    }

    /// Closes the pipe without calling the protocol (a transport never closed
    /// and being collected).
    fn _release(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::release(slf)
    }

    /// Grows the pipe (see `pipe_capacity`) the first time it is found
    /// full: for the pipes of a child the loop started.
    fn _grow_when_full(&self) {
        self.growth.arm();
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
        let pause = {
            let mut state = slf.get().state.lock(py);
            state.high_water = high;
            state.low_water = low;
            state.should_pause()
        };
        if pause {
            Self::call_protocol_flow(slf, "pause_writing")?;
        }
        Ok(())
    }

    fn _set_protocol(&self, py: Python<'_>, protocol: Py<PyAny>) {
        let old = self.state.lock(py).protocol.replace(protocol);
        drop(old);
    }

    #[getter]
    fn _protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.protocol(py)
    }

    #[getter]
    fn _fileno(&self) -> RawFd {
        self.fd
    }

    /// True once the pipe object has been closed.
    #[getter]
    fn _closed(&self, py: Python<'_>) -> bool {
        self.state.lock(py).pipe.is_none()
    }

    /// True while the poller waits on the descriptor for our main direction.
    #[getter]
    fn _polling(&self, py: Python<'_>) -> bool {
        let state = self.state.lock(py);
        let interest = self.interest(&state);
        match self.kind {
            Kind::Read => interest.read,
            Kind::Write => interest.write,
        }
    }

    #[getter]
    fn _conn_lost(&self, py: Python<'_>) -> u32 {
        self.state.lock(py).conn_lost
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        transport_common::describe_native(py, &self.wrapper(py), "PipeTransport", self.fd)
    }

    /// Native I/O handlers have no creation traceback.
    #[getter]
    fn _source_traceback(&self, py: Python<'_>) -> Py<PyAny> {
        py.None()
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        let Some(state) = self.state.lock_in_traverse(&visit) else {
            return Ok(());
        };
        visit.call(&self.loop_)?;
        visit.call(&state.wrapper)?;
        visit.call(&state.protocol)?;
        visit.call(&state.pipe)?;
        state.contexts.visit(&visit)
    }

    fn __clear__(&self) {
        self.state.take_for_clear(|state| {
            (
                state.wrapper.take(),
                state.protocol.take(),
                state.contexts.take(),
            )
        });
    }
}

/// Adds this module's classes to `ferroloop._core`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PipeTransport>()?;
    Ok(())
}
