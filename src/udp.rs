//! Datagram transports (UDP over IPv4/IPv6 and Unix datagram sockets).
//!
//! The per-datagram work is here: when the poller reports the socket
//! readable, the loop calls [`dispatch`], which `recvfrom`s one datagram into
//! a reusable per-thread buffer, turns the sender's `sockaddr` into the same
//! Python value `socket.recvfrom` would return (reusing the previous tuple
//! when the sender did not change) and calls the protocol's
//! `datagram_received(data, addr)`. `sendto` parses the destination natively
//! and sends at once; only on `EAGAIN` is the datagram copied into a queue,
//! which is flushed when epoll reports the socket writable, with the
//! protocol paused and resumed at the water marks.
//!
//! asyncio's semantics are kept exactly: one datagram per readiness
//! notification (so callback ordering matches), OS errors on send or receive
//! (e.g. `ConnectionRefusedError` from an ICMP port unreachable on a
//! connected socket) go to `error_received` and leave the transport open,
//! exceptions raised by the protocol's callbacks are reported by the loop's
//! exception handler, other failures close the transport with
//! `connection_lost(exc)`, and `close()` flushes the queue before
//! `connection_lost(None)`.
//!
//! Destinations that are not a plain numeric address of the socket's family
//! (host names, `''`, `'<broadcast>'`, malformed values) and sockets of other
//! families are handed to the Python socket's own `sendto`/`recvfrom`, so
//! they behave (and fail) exactly as asyncio's do.
//!
//! The Python socket object always stays the owner of the descriptor: the
//! transport closes it through Python once `connection_lost` has run.

use std::collections::VecDeque;
use std::os::fd::RawFd;

use nix::errno::Errno;
use pyo3::exceptions::{
    PyBlockingIOError, PyInterruptedError, PyOSError, PyTypeError, PyValueError,
};
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyMemoryView};
use pyo3::PyTraverseError;
use socket2::SockAddr;

use crate::buffers::{contiguous_copy, is_non_contiguous, with_bytes};
use crate::callback_context::{self, TransportContexts};
use crate::errors::{is_fatal, os_error};
use crate::event_loop::Loop;
use crate::flow_control::{self, DEFAULT_HIGH_WATER};
use crate::gil_locked::GilLocked;
use crate::poller::{Interest, Readiness};
use crate::transport_common;
use crate::{reads, sockaddr, sys_io};

/// asyncio receives at most this much per datagram (`max_size`); the
/// shared read buffer is as large.
const READ_SIZE: usize = 256 * 1024;
const _: () = assert!(READ_SIZE <= reads::READ_SIZE);
/// asyncio's LOG_THRESHOLD_FOR_CONNLOST_WRITES.
const CONNLOST_WRITE_WARNING_THRESHOLD: u32 = 5;
const FATAL_READ: &str = "Fatal read error on datagram transport";
const FATAL_WRITE: &str = "Fatal write error on datagram transport";

/// Where a datagram goes.
enum Dest {
    /// The socket is connected: `send`.
    Connected,
    /// A parsed address: `sendto`.
    Native(SockAddr),
    /// Anything else: the Python socket's `sendto(data, addr)`.
    Python(Py<PyAny>),
}

struct Pending {
    data: Vec<u8>,
    dest: Dest,
}

/// How one send attempt ended.
enum Sent {
    Done,
    WouldBlock,
    /// An `OSError`: for `error_received`.
    OsError(PyErr),
    /// Anything else: a fatal error.
    Fatal(PyErr),
}

struct DatagramState {
    wrapper: Option<Py<PyAny>>,
    protocol: Option<Py<PyAny>>,
    /// The Python socket owning the descriptor; `None` once released.
    sock: Option<Py<PyAny>>,
    buffer: VecDeque<Pending>,
    buffer_size: usize,
    high_water: usize,
    low_water: usize,
    protocol_paused: bool,
    reading_started: bool,
    reading_paused: bool,
    closing: bool,
    conn_lost: u32,
    /// The contexts reads and flushes run in (callback_context.rs).
    contexts: TransportContexts,
}

transport_common::reading_switch_on_fields!(DatagramState);

impl DatagramState {
    fn interest(&self) -> Interest {
        let alive = self.conn_lost == 0 && self.sock.is_some();
        Interest::level(
            alive && self.reading_started && !self.reading_paused && !self.closing,
            alive && !self.buffer.is_empty(),
        )
    }

    /// Whether the protocol must be paused now (and marks it paused).
    fn should_pause(&mut self) -> bool {
        flow_control::crossed_high_water(
            &mut self.protocol_paused,
            self.buffer_size,
            self.high_water,
        )
    }
}

/// The native half of a datagram transport (the protocol sees the Python
/// wrapper in `ferroloop/datagram.py`).
#[pyclass(frozen, weakref, module = "ferroloop._core")]
pub struct DatagramTransport {
    fd: RawFd,
    family: i32,
    /// The socket has a peer: datagrams go out with `send`.
    connected: bool,
    /// `remote_addr` as resolved by `create_datagram_endpoint`.
    address: Option<Py<PyAny>>,
    /// Bytes each queued datagram adds to the buffer size (asyncio >= 3.13: 8).
    header_size: usize,
    /// Whether empty datagrams are sent (asyncio >= 3.13) or ignored.
    send_empty: bool,
    loop_: Py<Loop>,
    state: GilLocked<DatagramState>,
    /// The last sender and its Python address, reused while it does not change.
    last_source: GilLocked<Option<(SockAddr, Py<PyAny>)>>,
}

/// How a native send ended.
fn sent(py: Python<'_>, result: Result<Option<usize>, Errno>) -> Sent {
    match result {
        Ok(Some(_)) => Sent::Done,
        Ok(None) => Sent::WouldBlock,
        Err(errno) => Sent::OsError(os_error(py, errno)),
    }
}

/// Sorts an exception from the Python socket the way asyncio's handlers do.
fn classify(py: Python<'_>, err: PyErr) -> PyResult<Sent> {
    if err.is_instance_of::<PyBlockingIOError>(py) || err.is_instance_of::<PyInterruptedError>(py) {
        Ok(Sent::WouldBlock)
    } else if err.is_instance_of::<PyOSError>(py) {
        Ok(Sent::OsError(err))
    } else if is_fatal(py, &err) {
        Err(err)
    } else {
        Ok(Sent::Fatal(err))
    }
}

impl DatagramTransport {
    fn is_native_family(&self) -> bool {
        matches!(self.family, libc::AF_INET | libc::AF_INET6 | libc::AF_UNIX)
    }

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

    fn sock(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state.lock(py).sock.as_ref().map(|s| s.clone_ref(py))
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

    /// Sends one datagram now, natively or through the Python socket.
    fn send_now(&self, py: Python<'_>, dest: &Dest, data: &Bound<'_, PyAny>) -> PyResult<Sent> {
        let native = match dest {
            Dest::Connected => None,
            Dest::Native(addr) => Some(addr),
            Dest::Python(addr) => {
                let Some(sock) = self.sock(py) else {
                    return Ok(Sent::Done);
                };
                return match sock.bind(py).call_method1("sendto", (data, addr.bind(py))) {
                    Ok(_) => Ok(Sent::Done),
                    Err(err) => classify(py, err),
                };
            }
        };
        let result = with_bytes(data, "data", |bytes| sys_io::send(self.fd, bytes, native));
        match result {
            Ok(result) => Ok(sent(py, result)),
            // What `socket.sendto` raises for it in asyncio's transport.
            Err(err) if is_non_contiguous(py, &err) => Ok(Sent::Fatal(err)),
            Err(err) => Err(err),
        }
    }

    fn on_ready(slf: &Bound<'_, Self>, readiness: Readiness) -> PyResult<()> {
        let py = slf.py();
        // asyncio queues a descriptor's reader handle before its writer handle.
        if readiness.readable {
            Self::read_ready(slf)?;
        }
        if readiness.writable {
            let context = slf.get().state.lock(py).contexts.writing(py);
            callback_context::run_in(py, context.as_ref(), || Self::write_ready(slf))?;
        }
        Ok(())
    }

    /// Receives one datagram, as asyncio does per readiness notification.
    /// Exceptions raised by the protocol's callbacks propagate to the loop,
    /// which reports them through the exception handler.
    fn read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (protocol, sock, context) = {
            let state = this.state.lock(py);
            if !state.interest().read {
                return Ok(());
            }
            let Some(protocol) = state.protocol.as_ref() else {
                return Ok(());
            };
            (
                protocol.bind(py).clone(),
                state.sock.as_ref().map(|s| s.clone_ref(py)),
                state.contexts.reading(py),
            )
        };
        callback_context::run_in(py, context.as_ref(), || {
            Self::receive_one(slf, &protocol, sock)
        })
    }

    /// Receives one datagram for `protocol`.
    fn receive_one(
        slf: &Bound<'_, Self>,
        protocol: &Bound<'_, PyAny>,
        sock: Option<Py<PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if !this.is_native_family() {
            let Some(sock) = sock else { return Ok(()) };
            return match sock.bind(py).call_method1("recvfrom", (READ_SIZE,)) {
                Ok(pair) => {
                    let (data, addr): (Bound<'_, PyAny>, Bound<'_, PyAny>) = pair.extract()?;
                    protocol.call_method1(pyo3::intern!(py, "datagram_received"), (data, addr))?;
                    Ok(())
                }
                Err(err) => match classify(py, err)? {
                    Sent::Done | Sent::WouldBlock => Ok(()),
                    Sent::OsError(err) => {
                        protocol.call_method1(pyo3::intern!(py, "error_received"), (err,))?;
                        Ok(())
                    }
                    Sent::Fatal(err) => Self::fatal_error(slf, err, FATAL_READ),
                },
            };
        }
        let received = reads::with_read_buffer(|buffer| {
            let buffer = &mut buffer[..READ_SIZE];
            sys_io::recvfrom(this.fd, buffer)
                .map(|got| got.map(|(count, from)| (PyBytes::new(py, &buffer[..count]), from)))
        });
        match received {
            Ok(None) => Ok(()),
            Ok(Some((data, from))) => {
                let addr = this.source_address(py, &from)?;
                protocol.call_method1(pyo3::intern!(py, "datagram_received"), (data, addr))?;
                Ok(())
            }
            Err(errno) => {
                protocol
                    .call_method1(pyo3::intern!(py, "error_received"), (os_error(py, errno),))?;
                Ok(())
            }
        }
    }

    /// The sender as a Python value, reusing the last one when unchanged.
    fn source_address<'py>(&self, py: Python<'py>, from: &SockAddr) -> PyResult<Bound<'py, PyAny>> {
        {
            let cache = self.last_source.lock(py);
            if let Some((addr, value)) = cache.as_ref() {
                if addr == from {
                    return Ok(value.bind(py).clone());
                }
            }
        }
        let value = sockaddr::to_python(py, from)?;
        let previous = self
            .last_source
            .lock(py)
            .replace((from.clone(), value.clone().unbind()));
        drop(previous);
        Ok(value)
    }

    /// Flushes the queue while the socket accepts datagrams.
    fn write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        loop {
            let pending = {
                let mut state = this.state.lock(py);
                if state.conn_lost > 0 || state.sock.is_none() {
                    return Ok(());
                }
                match state.buffer.pop_front() {
                    Some(pending) => {
                        state.buffer_size -= pending.data.len() + this.header_size;
                        pending
                    }
                    None => break,
                }
            };
            let outcome = match &pending.dest {
                Dest::Python(_) => {
                    let data = PyBytes::new(py, &pending.data);
                    this.send_now(py, &pending.dest, data.as_any())?
                }
                Dest::Connected => sent(py, sys_io::send(this.fd, &pending.data, None)),
                Dest::Native(addr) => sent(py, sys_io::send(this.fd, &pending.data, Some(addr))),
            };
            match outcome {
                Sent::Done => drop(pending),
                Sent::WouldBlock => {
                    let mut state = this.state.lock(py);
                    state.buffer_size += pending.data.len() + this.header_size;
                    state.buffer.push_front(pending);
                    break;
                }
                Sent::OsError(err) => {
                    drop(pending);
                    // As asyncio: report and stop; the rest is sent on the next wake-up.
                    if let Some(protocol) = this.protocol(py) {
                        protocol
                            .bind(py)
                            .call_method1(pyo3::intern!(py, "error_received"), (err,))?;
                    }
                    return Ok(());
                }
                Sent::Fatal(err) => {
                    drop(pending);
                    return Self::fatal_error(slf, err, FATAL_WRITE);
                }
            }
        }
        let resume = {
            let mut state = this.state.lock(py);
            let resume = state.protocol_paused && state.buffer_size <= state.low_water;
            if resume {
                state.protocol_paused = false;
            }
            resume
        };
        if resume {
            Self::call_protocol_flow(slf, "resume_writing")?;
        }
        // resume_writing() may have queued more.
        let lose = {
            let mut state = this.state.lock(py);
            if state.buffer.is_empty() && state.closing && state.conn_lost == 0 {
                state.conn_lost += 1;
                true
            } else {
                false
            }
        };
        this.update_interest(py)?;
        if lose {
            Self::connection_lost(slf, None)?;
        }
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
        let quiet = err.is_instance_of::<PyOSError>(py);
        let exc = transport_common::report_fatal_error(
            this.loop_.bind(py),
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
        let dropped = {
            let mut state = this.state.lock(py);
            if state.conn_lost > 0 {
                return Ok(());
            }
            state.buffer_size = 0;
            state.closing = true;
            state.conn_lost += 1;
            std::mem::take(&mut state.buffer)
        };
        drop(dropped);
        this.update_interest(py)?;
        Self::schedule_connection_lost(slf, exc)
    }

    fn schedule_connection_lost(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        let this = slf.get();
        if this.loop_.get().closed() {
            // Nothing will run scheduled callbacks any more: release the socket now.
            return Self::release_socket(slf);
        }
        transport_common::schedule_connection_lost(this.loop_.get(), slf.as_any(), exc)
    }

    /// Calls `connection_lost(exc)` once, then closes the socket and lets go of
    /// the protocol and the wrapper.
    fn connection_lost(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let protocol = slf.get().state.lock(py).protocol.take();
        let result = transport_common::notify_connection_lost(py, protocol, exc);
        let released = Self::release_socket(slf);
        result.and(released)
    }

    fn release_socket(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (sock, wrapper, buffer, source) = {
            let mut state = this.state.lock(py);
            let Some(sock) = state.sock.take() else {
                return Ok(());
            };
            state.buffer_size = 0;
            (
                sock,
                state.wrapper.take(),
                std::mem::take(&mut state.buffer),
                this.last_source.lock(py).take(),
            )
        };
        this.loop_.get().native_unwatch(py, this.fd);
        drop((wrapper, buffer, source));
        sock.bind(py).call_method0("close").map(|_| ())
    }
}

/// The loop's entry point for readiness of a datagram transport's socket.
pub fn dispatch(
    target: &Bound<'_, PyAny>,
    _loop: &Bound<'_, Loop>,
    readiness: Readiness,
) -> PyResult<()> {
    let transport = target.cast::<DatagramTransport>()?;
    DatagramTransport::on_ready(transport, readiness)
}

#[pymethods]
impl DatagramTransport {
    /// Wraps the non-blocking datagram socket `sock` (descriptor `fd`, family
    /// `family`). `address` is the resolved `remote_addr` (or None),
    /// `connected` whether the socket has a peer. The transport closes `sock`
    /// after `connection_lost`.
    #[new]
    #[pyo3(signature = (event_loop, sock, fd, family, wrapper, protocol, address, connected, header_size, send_empty))]
    #[allow(clippy::too_many_arguments)]
    fn py_new(
        event_loop: Bound<'_, Loop>,
        sock: Py<PyAny>,
        fd: RawFd,
        family: i32,
        wrapper: Py<PyAny>,
        protocol: Py<PyAny>,
        address: Option<Py<PyAny>>,
        connected: bool,
        header_size: usize,
        send_empty: bool,
    ) -> PyResult<Self> {
        if fd < 0 {
            return Err(PyValueError::new_err(format!(
                "Invalid file descriptor: {fd}"
            )));
        }
        let context = callback_context::copy_current(event_loop.py())?;
        Ok(Self {
            fd,
            family,
            connected,
            address,
            header_size,
            send_empty,
            loop_: event_loop.unbind(),
            state: GilLocked::new(DatagramState {
                wrapper: Some(wrapper),
                protocol: Some(protocol),
                sock: Some(sock),
                buffer: VecDeque::new(),
                buffer_size: 0,
                high_water: DEFAULT_HIGH_WATER,
                low_water: DEFAULT_HIGH_WATER / 4,
                protocol_paused: false,
                reading_started: false,
                reading_paused: false,
                closing: false,
                conn_lost: 0,
                contexts: TransportContexts::new(context),
            }),
            last_source: GilLocked::new(None),
        })
    }

    /// Registers the socket with the loop (so `add_reader` on it is refused).
    fn _attach(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        this.loop_.get().native_watch(
            slf.py(),
            this.fd,
            slf.clone().into_any().unbind(),
            dispatch,
            Interest::default(),
        )
    }

    /// Starts reading; scheduled right after `connection_made`.
    fn _start_reading(&self, py: Python<'_>) -> PyResult<()> {
        {
            let mut state = self.state.lock(py);
            if state.conn_lost > 0 {
                return Ok(());
            }
            state.reading_started = true;
        }
        self.update_interest(py)
    }

    /// Send `data` to `addr` (or to the connected peer), queueing it when
    /// the socket would block.
    #[pyo3(signature = (data, addr=None))]
    fn sendto(
        slf: &Bound<'_, Self>,
        data: &Bound<'_, PyAny>,
        addr: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let length = if let Ok(bytes) = data.cast::<PyBytes>() {
            bytes.as_bytes().len()
        } else if let Ok(array) = data.cast::<PyByteArray>() {
            array.len()
        } else if data.is_instance_of::<PyMemoryView>() {
            data.len()?
        } else {
            return Err(PyTypeError::new_err(format!(
                "data argument must be a bytes-like object, not {}",
                data.get_type().name()?.repr()?
            )));
        };
        if length == 0 && !this.send_empty {
            return Ok(());
        }
        let addr = match (&this.address, addr) {
            (Some(address), None) => address.bind(py).clone(),
            (Some(address), Some(addr)) => {
                let address = address.bind(py);
                if !addr.is(address) && !addr.eq(address)? {
                    return Err(PyValueError::new_err(format!(
                        "Invalid address: must be None or {}",
                        address.str()?
                    )));
                }
                address.clone()
            }
            (None, addr) => addr.unwrap_or_else(|| py.None().into_bound(py)),
        };
        let warn = {
            let mut state = this.state.lock(py);
            if state.conn_lost > 0 && (this.address.is_some() || state.sock.is_none()) {
                let warn = state.conn_lost >= CONNLOST_WRITE_WARNING_THRESHOLD;
                state.conn_lost += 1;
                Some(warn)
            } else {
                None
            }
        };
        if let Some(warn) = warn {
            if warn {
                let logger = py.import("asyncio.log")?.getattr("logger")?;
                logger.call_method1("warning", ("socket.send() raised exception.",))?;
            }
            return Ok(());
        }
        let dest = if this.connected {
            Dest::Connected
        } else if this.is_native_family() {
            match sockaddr::from_python(&addr, this.family) {
                Some(native) => Dest::Native(native),
                None => Dest::Python(addr.unbind()),
            }
        } else {
            Dest::Python(addr.unbind())
        };
        let was_empty = this.state.lock(py).buffer.is_empty();
        if was_empty {
            match this.send_now(py, &dest, data)? {
                Sent::Done => return Ok(()),
                Sent::WouldBlock => {}
                Sent::OsError(err) => {
                    if let Some(protocol) = this.protocol(py) {
                        protocol
                            .bind(py)
                            .call_method1(pyo3::intern!(py, "error_received"), (err,))?;
                    }
                    return Ok(());
                }
                Sent::Fatal(err) => return DatagramTransport::fatal_error(slf, err, FATAL_WRITE),
            }
        }
        let copy = match with_bytes(data, "data", |bytes| bytes.to_vec()) {
            Err(err) if is_non_contiguous(py, &err) => contiguous_copy(data)?.as_bytes().to_vec(),
            copy => copy?,
        };
        if was_empty {
            // Flushes run in a copy of this sender's context, as asyncio's
            // writer handle, made now, would.
            let sender = callback_context::copy_current(py)?;
            let previous = this.state.lock(py).contexts.set_writing(sender);
            drop(previous);
        }
        let pause = {
            let mut state = this.state.lock(py);
            state.buffer_size += copy.len() + this.header_size;
            state.buffer.push_back(Pending { data: copy, dest });
            state.should_pause()
        };
        this.update_interest(py)?;
        if pause {
            Self::call_protocol_flow(slf, "pause_writing")?;
        }
        Ok(())
    }

    /// Close after flushing queued datagrams; `connection_lost(None)` follows.
    fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let lose_now = {
            let mut state = this.state.lock(py);
            if state.closing {
                return Ok(());
            }
            state.closing = true;
            if state.buffer.is_empty() {
                state.conn_lost += 1;
                true
            } else {
                false
            }
        };
        this.update_interest(slf.py())?;
        if lose_now {
            Self::schedule_connection_lost(slf, None)?;
        }
        Ok(())
    }

    /// Close at once, discarding queued datagrams.
    fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::force_close(slf, None)
    }

    fn _force_close(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        Self::force_close(slf, exc.filter(|e| !e.is_none(slf.py())))
    }

    fn _call_connection_lost(slf: &Bound<'_, Self>, exc: Py<PyAny>) -> PyResult<()> {
        let exc = if exc.is_none(slf.py()) {
            None
        } else {
            Some(exc)
        };
        Self::connection_lost(slf, exc)
    }

    /// Closes the socket without calling the protocol (used by `__del__`).
    fn _release(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        {
            let mut state = slf.get().state.lock(py);
            state.closing = true;
            state.conn_lost = state.conn_lost.max(1);
        }
        Self::release_socket(slf)
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
        self.state.lock(py).buffer_size
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

    #[getter]
    fn _conn_lost(&self, py: Python<'_>) -> u32 {
        self.state.lock(py).conn_lost
    }

    /// True once the socket was closed.
    #[getter]
    fn _released(&self, py: Python<'_>) -> bool {
        self.state.lock(py).sock.is_none()
    }

    /// (reading, writing): what the loop currently waits for.
    #[getter]
    fn _polling(&self, py: Python<'_>) -> (bool, bool) {
        let interest = self.state.lock(py).interest();
        (interest.read, interest.write)
    }

    /// The loop reports exceptions escaping `datagram_received` as it does
    /// for a handle; a native readiness callback has no creation traceback.
    #[getter]
    fn _source_traceback(&self, py: Python<'_>) -> Py<PyAny> {
        py.None()
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        transport_common::describe_native(py, &self.wrapper(py), "DatagramTransport", self.fd)
    }

    /// How an exception escaping `datagram_received` is reported: asyncio's
    /// words for its transport's reader callback.
    #[getter]
    fn _reported_as(&self, py: Python<'_>) -> String {
        let class =
            transport_common::wrapper_class_name(py, &self.wrapper(py), "DatagramTransport");
        format!("{class}._read_ready()")
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.loop_)?;
        visit.call(&self.address)?;
        if let Some(state) = self.state.lock_in_traverse(&visit) {
            visit.call(&state.wrapper)?;
            visit.call(&state.protocol)?;
            state.contexts.visit(&visit)?;
            // `sock` is deliberately not visited: to the collector the socket
            // then stays reachable while an unclosed transport is collected,
            // so the wrapper's finalizer closes it (warning about the
            // transport, as asyncio does) before the socket's own finalizer
            // could warn about an unclosed socket.
            for pending in &state.buffer {
                if let Dest::Python(addr) = &pending.dest {
                    visit.call(addr)?;
                }
            }
        }
        if let Some(cache) = self.last_source.lock_in_traverse(&visit) {
            if let Some((_, value)) = cache.as_ref() {
                visit.call(value)?;
            }
        }
        Ok(())
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
    m.add_class::<DatagramTransport>()
}
