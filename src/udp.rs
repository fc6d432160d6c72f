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

use std::cell::RefCell;
use std::collections::VecDeque;
use std::ffi::OsStr;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use parking_lot::Mutex;
use pyo3::exceptions::{
    PyBlockingIOError, PyInterruptedError, PyKeyboardInterrupt, PyOSError, PySystemExit,
    PyTypeError, PyValueError,
};
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyMemoryView, PyString, PyTuple};
use pyo3::PyTraverseError;

use crate::buffers::with_bytes;
use crate::errors::os_error;
use crate::event_loop::Loop;
use crate::poller::{Interest, Readiness};

/// asyncio receives at most this much per datagram (`max_size`).
const READ_SIZE: usize = 256 * 1024;
const DEFAULT_HIGH_WATER: usize = 64 * 1024;
/// asyncio's LOG_THRESHOLD_FOR_CONNLOST_WRITES.
const CONNLOST_WRITE_WARNING_THRESHOLD: u32 = 5;
const FATAL_READ: &str = "Fatal read error on datagram transport";
const FATAL_WRITE: &str = "Fatal write error on datagram transport";

thread_local! {
    static READ_BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_SIZE]);
}

/// A socket address in its kernel form.
#[derive(Clone, Copy)]
struct SockAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

impl SockAddr {
    fn zeroed() -> Self {
        // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid value.
        let storage = unsafe { std::mem::zeroed::<libc::sockaddr_storage>() };
        Self {
            storage,
            len: std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t,
        }
    }

    fn as_ptr(&self) -> *const libc::sockaddr {
        (&self.storage as *const libc::sockaddr_storage).cast()
    }

    fn bytes(&self) -> &[u8] {
        let len = (self.len as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
        // SAFETY: `storage` is plain old data of at least `len` bytes.
        unsafe { std::slice::from_raw_parts(self.as_ptr().cast::<u8>(), len) }
    }

    fn ipv4(ip: Ipv4Addr, port: u16) -> Self {
        let mut addr = Self::zeroed();
        // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in.
        let sin = unsafe { &mut *(&mut addr.storage as *mut _ as *mut libc::sockaddr_in) };
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_port = port.to_be();
        sin.sin_addr.s_addr = u32::from_ne_bytes(ip.octets());
        addr.len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        addr
    }

    fn ipv6(ip: Ipv6Addr, port: u16, flowinfo: u32, scope_id: u32) -> Self {
        let mut addr = Self::zeroed();
        // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_in6.
        let sin6 = unsafe { &mut *(&mut addr.storage as *mut _ as *mut libc::sockaddr_in6) };
        sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        sin6.sin6_port = port.to_be();
        sin6.sin6_flowinfo = flowinfo.to_be();
        sin6.sin6_addr.s6_addr = ip.octets();
        sin6.sin6_scope_id = scope_id;
        addr.len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        addr
    }

    /// A Unix address; `None` when the path does not fit (Python reports that).
    fn unix(path: &[u8]) -> Option<Self> {
        let mut addr = Self::zeroed();
        // SAFETY: sockaddr_storage is large enough and suitably aligned for sockaddr_un.
        let sun = unsafe { &mut *(&mut addr.storage as *mut _ as *mut libc::sockaddr_un) };
        let abstract_name = path.first() == Some(&0);
        let capacity = sun.sun_path.len();
        // A filesystem path needs room for its terminating NUL.
        if path.len() > capacity || (!abstract_name && path.len() == capacity) {
            return None;
        }
        sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (slot, byte) in sun.sun_path.iter_mut().zip(path) {
            *slot = *byte as libc::c_char;
        }
        let base = std::mem::offset_of!(libc::sockaddr_un, sun_path);
        let extra = usize::from(!abstract_name);
        addr.len = (base + path.len() + extra) as libc::socklen_t;
        Some(addr)
    }
}

/// Parses a destination natively; `None` means "let Python's socket do it"
/// (names to resolve, special hosts, or anything it would reject).
fn parse_destination(family: i32, addr: &Bound<'_, PyAny>) -> Option<SockAddr> {
    match family {
        libc::AF_INET => {
            let tuple = addr.cast::<PyTuple>().ok()?;
            if tuple.len() != 2 {
                return None;
            }
            let host = tuple.get_item(0).ok()?;
            let ip: Ipv4Addr = host.cast::<PyString>().ok()?.to_str().ok()?.parse().ok()?;
            let port = exact_int::<u16>(&tuple.get_item(1).ok()?)?;
            Some(SockAddr::ipv4(ip, port))
        }
        libc::AF_INET6 => {
            let tuple = addr.cast::<PyTuple>().ok()?;
            if !(2..=4).contains(&tuple.len()) {
                return None;
            }
            let host = tuple.get_item(0).ok()?;
            let host = host.cast::<PyString>().ok()?.to_str().ok()?;
            if host.contains('%') {
                return None;
            }
            let ip: Ipv6Addr = host.parse().ok()?;
            let port = exact_int::<u16>(&tuple.get_item(1).ok()?)?;
            let flowinfo = match tuple.get_item(2) {
                Ok(value) => exact_int::<u32>(&value).filter(|f| *f <= 0xF_FFFF)?,
                Err(_) => 0,
            };
            let scope_id = match tuple.get_item(3) {
                Ok(value) => exact_int::<u32>(&value)?,
                Err(_) => 0,
            };
            Some(SockAddr::ipv6(ip, port, flowinfo, scope_id))
        }
        libc::AF_UNIX => {
            if let Ok(path) = addr.cast::<PyBytes>() {
                SockAddr::unix(path.as_bytes())
            } else if addr.is_instance_of::<PyString>() {
                let path: std::ffi::OsString = addr.extract().ok()?;
                SockAddr::unix(path.as_bytes())
            } else {
                None
            }
        }
        _ => None,
    }
}

/// An `int` (not a float or a string) in the range of `T`.
fn exact_int<'py, T>(value: &Bound<'py, PyAny>) -> Option<T>
where
    T: for<'a> FromPyObject<'a, 'py>,
{
    if !value.is_instance_of::<pyo3::types::PyInt>() {
        return None;
    }
    value.extract::<T>().ok()
}

/// The Python value `socket.recvfrom` returns for `addr`.
fn source_to_python<'py>(py: Python<'py>, addr: &SockAddr) -> PyResult<Bound<'py, PyAny>> {
    let len = addr.len as usize;
    match i32::from(addr.storage.ss_family) {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the kernel filled in a sockaddr_in (family and length checked).
            let sin = unsafe { &*(addr.as_ptr() as *const libc::sockaddr_in) };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Ok((ip.to_string(), u16::from_be(sin.sin_port))
                .into_pyobject(py)?
                .into_any())
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the kernel filled in a sockaddr_in6 (family and length checked).
            let sin6 = unsafe { &*(addr.as_ptr() as *const libc::sockaddr_in6) };
            Ok((
                ipv6_text(&sin6.sin6_addr),
                u16::from_be(sin6.sin6_port),
                u32::from_be(sin6.sin6_flowinfo),
                sin6.sin6_scope_id,
            )
                .into_pyobject(py)?
                .into_any())
        }
        libc::AF_UNIX => {
            let base = std::mem::offset_of!(libc::sockaddr_un, sun_path);
            if len <= base {
                // An unbound sender has no name.
                return Ok(py.None().into_bound(py));
            }
            let path = &addr.bytes()[base..];
            if path[0] == 0 {
                // Linux's abstract namespace: the exact bytes, leading NUL included.
                return Ok(PyBytes::new(py, path).into_any());
            }
            let end = path.iter().position(|b| *b == 0).unwrap_or(path.len());
            Ok(OsStr::from_bytes(&path[..end])
                .into_pyobject(py)?
                .into_any())
        }
        _ => Ok(py.None().into_bound(py)),
    }
}

/// `INET6_ADDRSTRLEN` from <netinet/in.h>.
const INET6_ADDRSTRLEN: usize = 46;

extern "C" {
    // POSIX, in the C library (the `libc` crate does not declare it).
    fn inet_ntop(
        af: libc::c_int,
        src: *const libc::c_void,
        dst: *mut libc::c_char,
        size: libc::socklen_t,
    ) -> *const libc::c_char;
}

/// An IPv6 address as `inet_ntop` writes it (which is what Python shows).
fn ipv6_text(addr: &libc::in6_addr) -> String {
    let mut text = [0 as libc::c_char; INET6_ADDRSTRLEN];
    // SAFETY: `addr` is a valid in6_addr and `text` has INET6_ADDRSTRLEN bytes.
    let written = unsafe {
        inet_ntop(
            libc::AF_INET6,
            (addr as *const libc::in6_addr).cast(),
            text.as_mut_ptr(),
            text.len() as libc::socklen_t,
        )
    };
    if written.is_null() {
        return Ipv6Addr::from(addr.s6_addr).to_string();
    }
    // SAFETY: inet_ntop succeeded, so `text` holds a NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(text.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

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
}

impl DatagramState {
    fn interest(&self) -> Interest {
        let alive = self.conn_lost == 0 && self.sock.is_some();
        Interest {
            read: alive && self.reading_started && !self.reading_paused && !self.closing,
            write: alive && !self.buffer.is_empty(),
        }
    }

    /// Whether the protocol must be paused now (and marks it paused).
    fn should_pause(&mut self) -> bool {
        if !self.protocol_paused && self.buffer_size > self.high_water {
            self.protocol_paused = true;
            return true;
        }
        false
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
    state: Mutex<DatagramState>,
    /// The last sender and its Python address, reused while it does not change.
    last_source: Mutex<Option<(SockAddr, Py<PyAny>)>>,
}

fn is_fatal(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PySystemExit>(py) || err.is_instance_of::<PyKeyboardInterrupt>(py)
}

fn native_send(fd: RawFd, data: &[u8], dest: Option<&SockAddr>) -> Result<bool, Errno> {
    loop {
        let flags = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT;
        // SAFETY: `data` and `dest` are valid for the duration of the call.
        let sent = unsafe {
            match dest {
                Some(addr) => libc::sendto(
                    fd,
                    data.as_ptr().cast(),
                    data.len(),
                    flags,
                    addr.as_ptr(),
                    addr.len,
                ),
                None => libc::send(fd, data.as_ptr().cast(), data.len(), flags),
            }
        };
        if sent >= 0 {
            return Ok(true);
        }
        match Errno::last() {
            Errno::EINTR => continue,
            Errno::EAGAIN => return Ok(false),
            errno => return Err(errno),
        }
    }
}

/// One `recvfrom`; `Ok(None)` means "nothing to read right now".
fn native_recv(fd: RawFd, buffer: &mut [u8], from: &mut SockAddr) -> Result<Option<usize>, Errno> {
    loop {
        from.len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: `buffer` and `from` are valid, writable and correctly sized.
        let received = unsafe {
            libc::recvfrom(
                fd,
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                libc::MSG_DONTWAIT,
                (&mut from.storage as *mut libc::sockaddr_storage).cast(),
                &mut from.len,
            )
        };
        if received >= 0 {
            return Ok(Some(received as usize));
        }
        match Errno::last() {
            Errno::EINTR => continue,
            Errno::EAGAIN => return Ok(None),
            errno => return Err(errno),
        }
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
        let interest = self.state.lock().interest();
        if self.loop_.get().closed() {
            return Ok(());
        }
        self.loop_.get().native_interest(py, self.fd, interest)
    }

    fn protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state.lock().protocol.as_ref().map(|p| p.clone_ref(py))
    }

    fn sock(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.state.lock().sock.as_ref().map(|s| s.clone_ref(py))
    }

    fn wrapper(&self, py: Python<'_>) -> Py<PyAny> {
        match self.state.lock().wrapper.as_ref() {
            Some(wrapper) => wrapper.clone_ref(py),
            None => py.None(),
        }
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
        let result = with_bytes(data, "data", |bytes| native_send(self.fd, bytes, native))?;
        Ok(match result {
            Ok(true) => Sent::Done,
            Ok(false) => Sent::WouldBlock,
            Err(errno) => Sent::OsError(os_error(py, errno)),
        })
    }

    fn on_ready(slf: &Bound<'_, Self>, readiness: Readiness) -> PyResult<()> {
        if readiness.writable {
            Self::write_ready(slf)?;
        }
        if readiness.readable {
            Self::read_ready(slf)?;
        }
        Ok(())
    }

    /// Receives one datagram, as asyncio does per readiness notification.
    /// Exceptions raised by the protocol's callbacks propagate to the loop,
    /// which reports them through the exception handler.
    fn read_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (protocol, sock) = {
            let state = this.state.lock();
            if !state.interest().read {
                return Ok(());
            }
            let Some(protocol) = state.protocol.as_ref() else {
                return Ok(());
            };
            (
                protocol.clone_ref(py),
                state.sock.as_ref().map(|s| s.clone_ref(py)),
            )
        };
        let protocol = protocol.bind(py);
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
        let mut from = SockAddr::zeroed();
        let received = READ_BUFFER.with(|cell| {
            let mut buffer = cell.borrow_mut();
            native_recv(this.fd, &mut buffer, &mut from)
                .map(|count| count.map(|count| PyBytes::new(py, &buffer[..count])))
        });
        match received {
            Ok(None) => Ok(()),
            Ok(Some(data)) => {
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
            let cache = self.last_source.lock();
            if let Some((addr, value)) = cache.as_ref() {
                if addr.bytes() == from.bytes() {
                    return Ok(value.bind(py).clone());
                }
            }
        }
        let value = source_to_python(py, from)?;
        let previous = self
            .last_source
            .lock()
            .replace((*from, value.clone().unbind()));
        drop(previous);
        Ok(value)
    }

    /// Flushes the queue while the socket accepts datagrams.
    fn write_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        loop {
            let pending = {
                let mut state = this.state.lock();
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
                Dest::Connected => match native_send(this.fd, &pending.data, None) {
                    Ok(true) => Sent::Done,
                    Ok(false) => Sent::WouldBlock,
                    Err(errno) => Sent::OsError(os_error(py, errno)),
                },
                Dest::Native(addr) => match native_send(this.fd, &pending.data, Some(addr)) {
                    Ok(true) => Sent::Done,
                    Ok(false) => Sent::WouldBlock,
                    Err(errno) => Sent::OsError(os_error(py, errno)),
                },
            };
            match outcome {
                Sent::Done => drop(pending),
                Sent::WouldBlock => {
                    let mut state = this.state.lock();
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
            let mut state = this.state.lock();
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
            let mut state = this.state.lock();
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
        let Some(protocol) = this.protocol(py) else {
            return Ok(());
        };
        if let Err(err) = protocol.bind(py).call_method0(method) {
            if is_fatal(py, &err) {
                return Err(err);
            }
            let context = PyDict::new(py);
            context.set_item("message", format!("protocol.{method}() failed"))?;
            context.set_item("exception", err.value(py))?;
            context.set_item("transport", this.wrapper(py))?;
            context.set_item("protocol", protocol)?;
            this.loop_
                .bind(py)
                .call_method1("call_exception_handler", (context,))?;
        }
        Ok(())
    }

    /// asyncio's `_fatal_error`: report (OS errors only in debug mode), then
    /// force-close the transport.
    fn fatal_error(slf: &Bound<'_, Self>, err: PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if is_fatal(py, &err) {
            return Err(err);
        }
        let loop_ = this.loop_.bind(py);
        if err.is_instance_of::<PyOSError>(py) {
            if loop_.get().get_debug_flag() {
                let logger = py.import("asyncio.log")?.getattr("logger")?;
                let kwargs = PyDict::new(py);
                kwargs.set_item("exc_info", err.value(py))?;
                logger.call_method(
                    "debug",
                    ("%r: %s", this.wrapper(py), message),
                    Some(&kwargs),
                )?;
            }
        } else {
            let context = PyDict::new(py);
            context.set_item("message", message)?;
            context.set_item("exception", err.value(py))?;
            context.set_item("transport", this.wrapper(py))?;
            context.set_item("protocol", this.protocol(py))?;
            loop_.call_method1("call_exception_handler", (context,))?;
        }
        Self::force_close(slf, Some(err.value(py).clone().into_any().unbind()))
    }

    fn force_close(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let dropped = {
            let mut state = this.state.lock();
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
        let py = slf.py();
        let this = slf.get();
        if this.loop_.get().closed() {
            // Nothing will run scheduled callbacks any more: release the socket now.
            return Self::release_socket(slf);
        }
        let callback = slf.getattr(pyo3::intern!(py, "_call_connection_lost"))?;
        let args = PyTuple::new(py, [exc.unwrap_or_else(|| py.None())])?;
        this.loop_.get().soon(py, callback.unbind(), args.unbind())
    }

    /// Calls `connection_lost(exc)` once, then closes the socket and lets go of
    /// the protocol and the wrapper.
    fn connection_lost(slf: &Bound<'_, Self>, exc: Option<Py<PyAny>>) -> PyResult<()> {
        let py = slf.py();
        let protocol = slf.get().state.lock().protocol.take();
        let result = match protocol {
            Some(protocol) => protocol
                .bind(py)
                .call_method1(pyo3::intern!(py, "connection_lost"), (exc,))
                .map(|_| ()),
            None => Ok(()),
        };
        let released = Self::release_socket(slf);
        result.and(released)
    }

    fn release_socket(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let (sock, wrapper, buffer, source) = {
            let mut state = this.state.lock();
            let Some(sock) = state.sock.take() else {
                return Ok(());
            };
            state.buffer_size = 0;
            (
                sock,
                state.wrapper.take(),
                std::mem::take(&mut state.buffer),
                this.last_source.lock().take(),
            )
        };
        this.loop_.get().native_unwatch(this.fd);
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
        Ok(Self {
            fd,
            family,
            connected,
            address,
            header_size,
            send_empty,
            loop_: event_loop.unbind(),
            state: Mutex::new(DatagramState {
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
            }),
            last_source: Mutex::new(None),
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
            let mut state = self.state.lock();
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
            let mut state = this.state.lock();
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
            match parse_destination(this.family, &addr) {
                Some(native) => Dest::Native(native),
                None => Dest::Python(addr.unbind()),
            }
        } else {
            Dest::Python(addr.unbind())
        };
        if this.state.lock().buffer.is_empty() {
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
        let copy = with_bytes(data, "data", |bytes| bytes.to_vec())?;
        let pause = {
            let mut state = this.state.lock();
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
        let this = slf.get();
        let lose_now = {
            let mut state = this.state.lock();
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
        {
            let mut state = slf.get().state.lock();
            state.closing = true;
            state.conn_lost = state.conn_lost.max(1);
        }
        Self::release_socket(slf)
    }

    fn is_closing(&self) -> bool {
        self.state.lock().closing
    }

    fn is_reading(&self) -> bool {
        let state = self.state.lock();
        !state.reading_paused && !state.closing
    }

    fn pause_reading(&self, py: Python<'_>) -> PyResult<()> {
        {
            let mut state = self.state.lock();
            if state.reading_paused || state.closing {
                return Ok(());
            }
            state.reading_paused = true;
        }
        self.update_interest(py)
    }

    fn resume_reading(&self, py: Python<'_>) -> PyResult<()> {
        {
            let mut state = self.state.lock();
            if state.closing || !state.reading_paused {
                return Ok(());
            }
            state.reading_paused = false;
        }
        self.update_interest(py)
    }

    fn get_write_buffer_size(&self) -> usize {
        self.state.lock().buffer_size
    }

    fn get_write_buffer_limits(&self) -> (usize, usize) {
        let state = self.state.lock();
        (state.low_water, state.high_water)
    }

    #[pyo3(signature = (high=None, low=None))]
    fn set_write_buffer_limits(
        slf: &Bound<'_, Self>,
        high: Option<i64>,
        low: Option<i64>,
    ) -> PyResult<()> {
        let (high, low) = match (high, low) {
            (None, None) => (DEFAULT_HIGH_WATER as i64, DEFAULT_HIGH_WATER as i64 / 4),
            (None, Some(low)) => (4 * low, low),
            (Some(high), None) => (high, high / 4),
            (Some(high), Some(low)) => (high, low),
        };
        if !(high >= low && low >= 0) {
            return Err(PyValueError::new_err(format!(
                "high ({high}) must be >= low ({low}) must be >= 0"
            )));
        }
        let pause = {
            let mut state = slf.get().state.lock();
            state.high_water = high as usize;
            state.low_water = low as usize;
            state.should_pause()
        };
        if pause {
            Self::call_protocol_flow(slf, "pause_writing")?;
        }
        Ok(())
    }

    fn _set_protocol(&self, protocol: Py<PyAny>) {
        let old = self.state.lock().protocol.replace(protocol);
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
    fn _conn_lost(&self) -> u32 {
        self.state.lock().conn_lost
    }

    /// True once the socket was closed.
    #[getter]
    fn _released(&self) -> bool {
        self.state.lock().sock.is_none()
    }

    /// (reading, writing): what the loop currently waits for.
    #[getter]
    fn _polling(&self) -> (bool, bool) {
        let interest = self.state.lock().interest();
        (interest.read, interest.write)
    }

    /// The loop reports exceptions escaping `datagram_received` as it does
    /// for a handle; a native readiness callback has no creation traceback.
    #[getter]
    fn _source_traceback(&self, py: Python<'_>) -> Py<PyAny> {
        py.None()
    }

    fn __repr__(&self) -> String {
        format!("<DatagramTransport._read_ready() fd={}>", self.fd)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.loop_)?;
        visit.call(&self.address)?;
        if let Some(state) = self.state.try_lock() {
            visit.call(&state.wrapper)?;
            visit.call(&state.protocol)?;
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
        if let Some(cache) = self.last_source.try_lock() {
            if let Some((_, value)) = cache.as_ref() {
                visit.call(value)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        let taken = {
            let Some(mut state) = self.state.try_lock() else {
                return;
            };
            (state.wrapper.take(), state.protocol.take())
        };
        drop(taken);
    }
}

/// Adds this module's classes to `ferroloop._core`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<DatagramTransport>()
}
