//! Native `sock_*` operations: `loop.sock_recv()`, `sock_sendall()` and
//! friends, with the system calls done here.
//!
//! Each call tries its system call at once. When it completes (the common
//! case for sends, and for receives when data is waiting) the caller gets a
//! future that is already done; nothing is registered with the poller. Only
//! on `EAGAIN` is the operation parked in the socket's [`SockWaiter`], a
//! native watcher that holds at most one pending read and one pending write
//! for its descriptor (so a `sock_recv` and a `sock_sendall` on the same
//! socket wait together, with combined interest). When epoll reports the
//! descriptor ready, the waiter retries the call in Rust and completes the
//! future. A socket that is read in turns stays registered (edge-triggered)
//! between its receives, so that the next one waits without a system call;
//! see [`SockWaiter`] for when it lets go. `add_reader()` and transports can
//! take the descriptor over at any time.
//!
//! Cancellation: the waiter is registered as a done-callback of each pending
//! future (and removed again before we complete the future ourselves), so a
//! cancelled call is dropped and the descriptor unwatched in the next
//! iteration; an operation whose future is already done is never retried,
//! so a cancelled `sock_recv` cannot swallow data.
//!
//! [`SockOps`] is the per-loop registry (descriptor -> waiter) and the entry
//! point the Python mixin (`ferroloop/sockets.py`) calls.

use rustc_hash::{FxHashMap, FxHashSet};
use std::cell::RefCell;
use std::os::fd::RawFd;

use nix::errno::Errno;
use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::{
    PyBlockingIOError, PyBufferError, PyConnectionError, PyInterruptedError, PyTypeError,
    PyValueError,
};
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyWeakrefReference};
use pyo3::{ffi, intern, PyTraverseError};
use socket2::SockAddr;

use crate::buffers::{self, with_bytes_mut};
use crate::errors::os_error;
use crate::event_loop::Loop;
use crate::gil_locked::GilLocked;
use crate::poller::{Interest, Readiness};
use crate::reads::{self, Framing, ReadCall, Received};
use crate::{python_api, sockaddr, sys_io};

thread_local! {
    /// Descriptors whose last `sock_recv` was large (see `recv_bytes`).
    static LARGE_RECVS: RefCell<FxHashSet<RawFd>> = RefCell::new(FxHashSet::default());
}

static SOCKET_TYPE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static SSL_SOCKET_TYPE: PyOnceLock<Option<Py<PyAny>>> = PyOnceLock::new();
static SOCKET_GETTIMEOUT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static SOCKET_FILENO: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static SENDFILE_NOT_AVAILABLE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

pub(crate) fn set_result(fut: &Bound<'_, PyAny>, value: Py<PyAny>) -> PyResult<()> {
    fut.call_method1(intern!(fut.py(), "set_result"), (value,))?;
    Ok(())
}

pub(crate) fn set_exception(fut: &Bound<'_, PyAny>, err: PyErr) -> PyResult<()> {
    let py = fut.py();
    fut.call_method1(intern!(py, "set_exception"), (err.into_value(py),))?;
    Ok(())
}

fn is_would_block(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PyBlockingIOError>(py) || err.is_instance_of::<PyInterruptedError>(py)
}

/// asyncio's checks on the socket argument: no SSL sockets, and, in debug
/// mode only, no blocking ones. Returns the descriptor.
///
/// A blocking socket works as on asyncio otherwise: receives and sends pass
/// `MSG_DONTWAIT`, so they wait in the loop rather than stall it (asyncio's
/// stall); `connect` and `accept` block as asyncio's do.
fn check_socket(sock: &Bound<'_, PyAny>, debug: bool) -> PyResult<RawFd> {
    let py = sock.py();
    let socket_type = SOCKET_TYPE.import(py, "socket", "socket")?;
    if sock.get_type().is(socket_type) {
        return check_plain_socket(sock, debug);
    }
    let ssl_socket = SSL_SOCKET_TYPE.get_or_init(py, || {
        py.import("ssl")
            .and_then(|m| m.getattr("SSLSocket"))
            .ok()
            .map(Bound::unbind)
    });
    if let Some(ssl_socket) = ssl_socket {
        if sock.is_instance(ssl_socket.bind(py))? {
            return Err(PyTypeError::new_err("Socket cannot be of type SSLSocket"));
        }
    }
    if debug {
        let timeout: Option<f64> = sock.call_method0(intern!(py, "gettimeout"))?.extract()?;
        if timeout != Some(0.0) {
            return Err(blocking_socket_error());
        }
    }
    sock.call_method0(intern!(py, "fileno"))?.extract()
}

fn blocking_socket_error() -> PyErr {
    PyValueError::new_err("the socket must be non-blocking")
}

/// `check_socket` for an exact `socket.socket`, whose `gettimeout` and
/// `fileno` are `_socket.socket`'s C methods: calling their descriptors
/// directly skips the method lookup and PyO3's conversions (two calls per
/// `sock_*` operation were ~1,400 instructions, 28% of a 1 KiB `sock_*`
/// echo request's user-space work).
fn check_plain_socket(sock: &Bound<'_, PyAny>, debug: bool) -> PyResult<RawFd> {
    let py = sock.py();
    if debug {
        let timeout = call_no_args(&socket_method(py, &SOCKET_GETTIMEOUT, "gettimeout")?, sock)?;
        // SAFETY: type checks and reads of a live object.
        let non_blocking = unsafe {
            ffi::PyFloat_CheckExact(timeout.as_ptr()) != 0
                && ffi::PyFloat_AS_DOUBLE(timeout.as_ptr()) == 0.0
        };
        if !non_blocking {
            return Err(blocking_socket_error());
        }
    }
    let fileno = call_no_args(&socket_method(py, &SOCKET_FILENO, "fileno")?, sock)?;
    fileno.extract()
}

/// `method(obj)` through the vectorcall protocol, without an argument tuple.
fn call_no_args<'py>(
    method: &Bound<'py, PyAny>,
    obj: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let args = [obj.as_ptr()];
    // SAFETY: `args` holds one live object for the call's duration; the
    // result is a new reference or NULL with an exception set.
    unsafe {
        let result =
            ffi::PyObject_Vectorcall(method.as_ptr(), args.as_ptr(), 1, std::ptr::null_mut());
        Bound::from_owned_ptr_or_err(obj.py(), result)
    }
}

/// The method descriptor `_socket.socket.<name>`, looked up once.
fn socket_method<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyAny>>,
    name: &str,
) -> PyResult<Bound<'py, PyAny>> {
    cell.get_or_try_init(py, || {
        Ok::<_, PyErr>(
            py.import("_socket")?
                .getattr("socket")?
                .getattr(name)?
                .unbind(),
        )
    })
    .map(|method| method.bind(py).clone())
}

// -- operations ---------------------------------------------------------

/// The bytes a send works from: a `bytes` object, or an exported buffer
/// (which, like asyncio's memoryview, keeps a bytearray from being resized).
enum Data {
    Bytes(Py<PyBytes>),
    Buffer(PyUntypedBuffer),
}

impl Data {
    fn new(data: &Bound<'_, PyAny>) -> PyResult<Self> {
        if let Ok(bytes) = data.cast::<PyBytes>() {
            return Ok(Data::Bytes(bytes.clone().unbind()));
        }
        let buffer = PyUntypedBuffer::get(data).map_err(|_| {
            PyTypeError::new_err(format!(
                "a bytes-like object is required, not '{}'",
                data.get_type()
                    .name()
                    .map(|n| n.to_string())
                    .unwrap_or_default()
            ))
        })?;
        if !buffer.is_c_contiguous() {
            return Err(PyBufferError::new_err("data must be a C-contiguous buffer"));
        }
        Ok(Data::Buffer(buffer))
    }

    fn with_slice<R>(&self, py: Python<'_>, f: impl FnOnce(&[u8]) -> R) -> R {
        match self {
            Data::Bytes(bytes) => f(bytes.bind(py).as_bytes()),
            Data::Buffer(buffer) => {
                // SAFETY: the buffer stays exported (valid, unmoved, not
                // resizable) while `self` holds it; `f` runs no Python code.
                f(unsafe { buffers::untyped_slice(buffer) })
            }
        }
    }
}

enum SendTarget {
    Native(SockAddr),
    /// Addresses the socket module must interpret (host names, other
    /// families): sent through `sock.sendto()`.
    Python {
        sock: Py<PyAny>,
        data: Py<PyAny>,
        address: Py<PyAny>,
    },
}

struct SendFile {
    in_fd: RawFd,
    offset: i64,
    /// 0: until end of file.
    count: u64,
    blocksize: u64,
    total_sent: u64,
    /// True once the operation had to wait (asyncio's "registered_fd").
    waited: bool,
}

impl SendFile {
    /// asyncio leaves the file position after what was sent.
    fn update_file_position(&self) {
        if self.total_sent > 0 {
            // SAFETY: a plain lseek; failure is ignored as there is nothing
            // better to report than the operation's own outcome.
            unsafe { libc::lseek(self.in_fd, self.offset as libc::off_t, libc::SEEK_SET) };
        }
    }
}

enum Kind {
    Recv { n: usize },
    RecvInto { buf: Py<PyAny> },
    RecvFrom { n: usize },
    RecvFromInto { buf: Py<PyAny>, nbytes: usize },
    Accept { sock: Py<PyAny> },
    SendAll { data: Data, offset: usize },
    SendTo { data: Data, target: SendTarget },
    Connect { address: Py<PyAny> },
    SendFile(SendFile),
}

impl Kind {
    fn is_write(&self) -> bool {
        matches!(
            self,
            Kind::SendAll { .. } | Kind::SendTo { .. } | Kind::Connect { .. } | Kind::SendFile(_)
        )
    }

    fn visit(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self {
            Kind::RecvInto { buf } | Kind::RecvFromInto { buf, .. } => visit.call(buf),
            Kind::Accept { sock } => visit.call(sock),
            Kind::Connect { address } => visit.call(address),
            Kind::SendTo {
                target:
                    SendTarget::Python {
                        sock,
                        data,
                        address,
                    },
                ..
            } => {
                visit.call(sock)?;
                visit.call(data)?;
                visit.call(address)
            }
            _ => Ok(()),
        }
    }

    /// Runs when a pending operation is abandoned (cancelled or replaced).
    fn abandon(&self) {
        if let Kind::SendFile(sendfile) = self {
            sendfile.update_file_position();
        }
    }
}

/// One attempt: `Ok(None)` means "would block, wait for readiness".
fn attempt(kind: &mut Kind, py: Python<'_>, fd: RawFd) -> PyResult<Option<Py<PyAny>>> {
    match kind {
        Kind::Recv { n } => recv_bytes(py, fd, *n),
        Kind::RecvInto { buf } => {
            let got = with_bytes_mut(buf.bind(py), "buffer", |slice| recv_unless_empty(fd, slice))?;
            match got.map_err(|errno| os_error(py, errno))? {
                Some(count) => Ok(Some(python_api::byte_count(py, count)?.unbind())),
                None => Ok(None),
            }
        }
        Kind::RecvFrom { n } => {
            let n = *n;
            let got = if n <= reads::READ_SIZE {
                reads::with_read_buffer(|scratch| {
                    sys_io::recvfrom(fd, &mut scratch[..n]).map(|got| {
                        got.map(|(count, addr)| (PyBytes::new(py, &scratch[..count]), addr))
                    })
                })
            } else {
                let mut buffer = vec![0u8; n];
                sys_io::recvfrom(fd, &mut buffer)
                    .map(|got| got.map(|(count, addr)| (PyBytes::new(py, &buffer[..count]), addr)))
            };
            match got.map_err(|errno| os_error(py, errno))? {
                Some((data, addr)) => {
                    let addr = sockaddr::to_python_zoned(py, &addr)?.unbind();
                    Ok(Some((data, addr).into_pyobject(py)?.into_any().unbind()))
                }
                None => Ok(None),
            }
        }
        Kind::RecvFromInto { buf, nbytes } => {
            let nbytes = *nbytes;
            let got = with_bytes_mut(buf.bind(py), "buffer", |slice| {
                let limit = if nbytes == 0 { slice.len() } else { nbytes };
                match slice.get_mut(..limit) {
                    Some(target) => Ok(reads::recvfrom_into(fd, target)),
                    None => Err(PyValueError::new_err(
                        "nbytes is greater than the length of the buffer",
                    )),
                }
            })??;
            match got.map_err(|errno| os_error(py, errno))? {
                Some((count, addr)) => {
                    let addr = sockaddr::to_python_zoned(py, &addr)?.unbind();
                    Ok(Some((count, addr).into_pyobject(py)?.into_any().unbind()))
                }
                None => Ok(None),
            }
        }
        Kind::Accept { sock } => accept(py, fd, sock.bind(py)),
        Kind::SendAll { data, offset } => {
            let sent = data.with_slice(py, |all| send_from(fd, all, offset));
            match sent.map_err(|errno| os_error(py, errno))? {
                true => Ok(Some(py.None())),
                false => Ok(None),
            }
        }
        Kind::SendTo { data, target } => match target {
            SendTarget::Native(addr) => {
                let sent = data.with_slice(py, |bytes| sys_io::send(fd, bytes, Some(addr)));
                match sent.map_err(|errno| os_error(py, errno))? {
                    Some(count) => Ok(Some(python_api::byte_count(py, count)?.unbind())),
                    None => Ok(None),
                }
            }
            SendTarget::Python {
                sock,
                data,
                address,
            } => match sock
                .bind(py)
                .call_method1(intern!(py, "sendto"), (data.bind(py), address.bind(py)))
            {
                Ok(count) => Ok(Some(count.unbind())),
                Err(err) if is_would_block(py, &err) => Ok(None),
                Err(err) => Err(err),
            },
        },
        Kind::Connect { address } => {
            match sys_io::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_ERROR)
                .map_err(|errno| os_error(py, errno))?
            {
                0 => Ok(Some(py.None())),
                err if [libc::EINPROGRESS, libc::EAGAIN, libc::EALREADY, libc::EINTR]
                    .contains(&err) =>
                {
                    Ok(None)
                }
                err => {
                    let message = format!("Connect call failed {}", address.bind(py).str()?);
                    Err(pyo3::exceptions::PyOSError::new_err((err, message)))
                }
            }
        }
        Kind::SendFile(sendfile) => sendfile_attempt(py, fd, sendfile),
    }
}

/// Sends `all` from `offset` on, advancing it; true once everything is out,
/// false when the socket is full. Empty data still makes one `send` call, as
/// asyncio's `sock.send(data)` does: it reports a socket that is not
/// connected (EPIPE) or has failed.
fn send_from(fd: RawFd, all: &[u8], offset: &mut usize) -> Result<bool, Errno> {
    loop {
        match sys_io::send(fd, &all[*offset..], None)? {
            // (A stream socket never takes 0 of a non-empty buffer; wait if one did.)
            Some(0) if *offset < all.len() => return Ok(false),
            Some(count) => *offset += count,
            None => return Ok(false),
        }
        if *offset == all.len() {
            return Ok(true);
        }
    }
}

/// `recv(2)`, but not for an empty buffer: `socket.recv_into` returns 0 for
/// one without the call, which would fail on a socket not connected and
/// discard a waiting datagram.
fn recv_unless_empty(fd: RawFd, buf: &mut [u8]) -> Result<Option<usize>, Errno> {
    if buf.is_empty() {
        return Ok(Some(0));
    }
    // Any socket type: a datagram must not be read shorter than `buf`.
    reads::recv_into(fd, buf, Framing::Unknown)
}

fn recv_bytes(py: Python<'_>, fd: RawFd, n: usize) -> PyResult<Option<Py<PyAny>>> {
    if n == 0 {
        // As `socket.recv(0)`: no system call (see recv_unless_empty).
        return Ok(Some(PyBytes::new(py, b"").into_any().unbind()));
    }
    if n > reads::READ_SIZE {
        let mut buffer = vec![0u8; n];
        let got = sys_io::recv(fd, &mut buffer)
            .map(|got| got.map(|count| PyBytes::new(py, &buffer[..count])));
        return Ok(got
            .map_err(|errno| os_error(py, errno))?
            .map(|bytes| bytes.into_any().unbind()));
    }
    // Large messages are received straight into their bytes object, as
    // stream transports do (reads.rs); which sockets carry them is
    // remembered per descriptor number, a hint that costs at worst one
    // `ioctl` if the number is reused.
    let large = LARGE_RECVS.with_borrow(|fds| fds.contains(&fd));
    let received = reads::read_adaptive(py, fd, ReadCall::Recv, n, Framing::Unknown, large)?;
    let data = match received {
        Received::WouldBlock => return Ok(None),
        Received::Eof => PyBytes::new(py, b""),
        Received::Data(data) => data,
    };
    let now_large = reads::is_large(&data);
    if now_large != large {
        LARGE_RECVS.with_borrow_mut(|fds| {
            if now_large {
                fds.insert(fd)
            } else {
                fds.remove(&fd)
            }
        });
    }
    Ok(Some(data.into_any().unbind()))
}

fn accept(py: Python<'_>, fd: RawFd, sock: &Bound<'_, PyAny>) -> PyResult<Option<Py<PyAny>>> {
    let accepted = sys_io::accept(fd, libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC);
    let Some((conn_fd, addr)) = accepted.map_err(|errno| os_error(py, errno))? else {
        return Ok(None);
    };
    // From here on the descriptor is closed on any failure until a socket
    // object owns it.
    let built = (|| -> PyResult<Py<PyAny>> {
        let family = sock.getattr(intern!(py, "family"))?;
        let kind = sock.getattr(intern!(py, "type"))?;
        let proto = sock.getattr(intern!(py, "proto"))?;
        let socket_type = SOCKET_TYPE.import(py, "socket", "socket")?;
        let conn = socket_type.call1((family, kind, proto, conn_fd))?;
        Ok(conn.unbind())
    })();
    let conn = match built {
        Ok(conn) => conn,
        Err(err) => {
            // SAFETY: we own `conn_fd` and nothing else refers to it.
            unsafe { libc::close(conn_fd) };
            return Err(err);
        }
    };
    // The socket object owns the descriptor now; it closes it if this fails.
    conn.bind(py)
        .call_method1(intern!(py, "setblocking"), (false,))?;
    let addr = sockaddr::to_python_zoned(py, &addr)?.unbind();
    Ok(Some((conn, addr).into_pyobject(py)?.into_any().unbind()))
}

fn sendfile_not_available(py: Python<'_>, message: &str) -> PyResult<PyErr> {
    let class =
        SENDFILE_NOT_AVAILABLE.import(py, "asyncio.exceptions", "SendfileNotAvailableError")?;
    Ok(PyErr::from_value(class.call1((message,))?))
}

fn sendfile_attempt(py: Python<'_>, fd: RawFd, op: &mut SendFile) -> PyResult<Option<Py<PyAny>>> {
    let outcome: PyResult<Option<u64>> = loop {
        let mut blocksize = op.blocksize;
        if op.count > 0 {
            if op.total_sent >= op.count {
                break Ok(Some(op.total_sent));
            }
            blocksize = op.count - op.total_sent;
        }
        let mut offset = op.offset as libc::off_t;
        // SAFETY: `offset` is a valid in/out pointer; the kernel validates the descriptors.
        let sent = unsafe { libc::sendfile(fd, op.in_fd, &mut offset, blocksize as usize) };
        if sent > 0 {
            op.offset += sent as i64;
            op.total_sent += sent as u64;
            continue;
        }
        if sent == 0 {
            break Ok(Some(op.total_sent));
        }
        match Errno::last() {
            Errno::EINTR => continue,
            Errno::EAGAIN => {
                op.waited = true;
                return Ok(None);
            }
            errno if op.total_sent == 0 => {
                let _ = errno;
                break Err(sendfile_not_available(py, "os.sendfile call failed")?);
            }
            Errno::ENOTCONN if op.waited => {
                let err = PyConnectionError::new_err(("socket is not connected", libc::ENOTCONN));
                err.set_cause(py, Some(os_error(py, Errno::ENOTCONN)));
                break Err(err);
            }
            errno => break Err(os_error(py, errno)),
        }
    };
    op.update_file_position();
    match outcome {
        Ok(Some(total)) => Ok(Some(total.into_pyobject(py)?.into_any().unbind())),
        Ok(None) => Ok(None),
        Err(err) => Err(err),
    }
}

struct Pending {
    fut: Py<PyAny>,
    kind: Kind,
}

#[derive(Default)]
struct Slots {
    reader: Option<Pending>,
    writer: Option<Pending>,
    /// Keep watching for reads while no read is pending (see `SockWaiter`).
    linger_read: bool,
}

impl Slots {
    fn interest(&self) -> Interest {
        Interest {
            read: self.reader.is_some() || self.linger_read,
            write: self.writer.is_some(),
            edge: true,
        }
    }

    fn is_idle(&self) -> bool {
        self.reader.is_none() && self.writer.is_none()
    }
}

/// The native watcher of one socket's descriptor for its pending `sock_*`
/// calls: at most one pending read and one pending write. Also the
/// done-callback of its pending futures, to notice cancellation.
///
/// Edge-triggered, and kept registered for reads between calls: a program
/// that alternates `sock_recv` and `sock_sendall` parks its next receive
/// while the last one's registration is still in place, so a request costs
/// no `epoll_ctl` (two before: one to watch, one to stop). This is safe
/// because every call tries its system call before it parks, and an edge is
/// reported for any data that arrives after that attempt. An idle waiter lets
/// go of the descriptor at the first read event nobody waits for (a program
/// not reading any more), when `add_reader()` takes the descriptor, or when
/// another socket object turns up with the same number (the first was closed;
/// its registration went with it). Edge-triggering also means that a
/// registration which outlives its socket (closed here, still open in a
/// forked child) reports each new arrival once instead of on every poll.
#[pyclass(frozen, module = "ferroloop._core")]
pub struct SockWaiter {
    fd: RawFd,
    ops: Py<SockOps>,
    /// The socket served, weakly: a closed and collected socket whose number
    /// was reused must not be taken for the new one.
    sock: Option<Py<PyWeakrefReference>>,
    slots: GilLocked<Slots>,
}

impl SockWaiter {
    /// True if this waiter was made for `sock` (the same object, alive).
    /// One that cannot tell never lingers, so only pending calls share it.
    fn serves(&self, sock: &Bound<'_, PyAny>) -> bool {
        match self.sock.as_ref() {
            Some(weak) => weak.bind(sock.py()).upgrade().is_some_and(|s| s.is(sock)),
            None => true,
        }
    }

    /// Re-arms or drops the watch after the slots changed. A waiter that was
    /// replaced in the registry (its descriptor reused) leaves the poller to
    /// the new one.
    fn sync(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        let py = slf.py();
        let interest = this.slots.lock(py).interest();
        let ops = this.ops.get();
        let event_loop = ops.loop_.get();
        if !interest.is_empty() {
            // An evicted waiter (see `waiter_for`) is no longer the owner.
            return event_loop.native_interest_if_owner(py, this.fd, slf.as_any(), interest);
        }
        let removed = {
            let mut waiters = ops.waiters.lock(py);
            match waiters.get(&this.fd) {
                Some(current) if current.is(slf) => waiters.remove(&this.fd),
                _ => None,
            }
        };
        if removed.is_some() {
            event_loop.native_unwatch_if_owner(py, this.fd, slf.as_any());
        }
        drop(removed);
        Ok(())
    }

    /// Stops lingering: the waiter goes once nothing is pending.
    fn release_if_idle(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        {
            let mut slots = slf.get().slots.lock(py);
            if !slots.is_idle() {
                return Ok(());
            }
            slots.linger_read = false;
        }
        Self::sync(slf)
    }

    fn run_slot(slf: &Bound<'_, Self>, write: bool) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let taken = {
            let mut slots = this.slots.lock(py);
            if write {
                slots.writer.take()
            } else {
                slots.reader.take()
            }
        };
        let Some(mut pending) = taken else {
            if !write {
                // Data arrived with nobody waiting for it: the program is not
                // (or no longer) reading in turns; stop lingering.
                this.slots.lock(py).linger_read = false;
            }
            return Ok(());
        };
        let fut = pending.fut.bind(py).clone();
        if future_done(&fut)? {
            // Cancelled: never retry (a cancelled recv must not eat data).
            pending.kind.abandon();
            return Ok(());
        }
        match attempt(&mut pending.kind, py, this.fd) {
            Ok(None) => {
                let mut slots = this.slots.lock(py);
                let slot = if write {
                    &mut slots.writer
                } else {
                    &mut slots.reader
                };
                if slot.is_none() {
                    *slot = Some(pending);
                    return Ok(());
                }
                // A newer call took the slot meanwhile: it wins, as with
                // asyncio's add_reader replacing a reader.
                drop(slots);
                pending.kind.abandon();
                Ok(())
            }
            Ok(Some(value)) => {
                fut.call_method1(intern!(py, "remove_done_callback"), (slf,))?;
                set_result(&fut, value)
            }
            Err(err) => {
                fut.call_method1(intern!(py, "remove_done_callback"), (slf,))?;
                set_exception(&fut, err)
            }
        }
    }
}

pub(crate) fn future_done(fut: &Bound<'_, PyAny>) -> PyResult<bool> {
    fut.call_method0(intern!(fut.py(), "done"))?.is_truthy()
}

fn dispatch(
    target: &Bound<'_, PyAny>,
    _loop: &Bound<'_, Loop>,
    readiness: Readiness,
) -> PyResult<()> {
    let waiter = target.cast::<SockWaiter>()?;
    let mut outcome = Ok(());
    if readiness.readable {
        outcome = SockWaiter::run_slot(waiter, false);
    }
    if readiness.writable {
        let written = SockWaiter::run_slot(waiter, true);
        outcome = outcome.and(written);
    }
    let synced = SockWaiter::sync(waiter);
    outcome.and(synced)
}

#[pymethods]
impl SockWaiter {
    /// Done-callback of the pending futures: a future that completes
    /// without us (it was cancelled) releases its slot.
    fn __call__(slf: &Bound<'_, Self>, fut: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let abandoned = {
            let mut slots = slf.get().slots.lock(py);
            let mut abandoned = Vec::new();
            if slots.reader.as_ref().is_some_and(|p| p.fut.is(fut)) {
                abandoned.extend(slots.reader.take());
            }
            if slots.writer.as_ref().is_some_and(|p| p.fut.is(fut)) {
                abandoned.extend(slots.writer.take());
            }
            abandoned
        };
        if abandoned.is_empty() {
            return Ok(());
        }
        for pending in &abandoned {
            pending.kind.abandon();
        }
        drop(abandoned);
        Self::sync(slf)
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let slots = self.slots.lock(py);
        format!(
            "<SockWaiter fd={} reading={} writing={}>",
            self.fd,
            slots.reader.is_some(),
            slots.writer.is_some()
        )
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.ops)?;
        visit.call(&self.sock)?;
        let Some(slots) = self.slots.lock_in_traverse(&visit) else {
            return Ok(());
        };
        for pending in slots.reader.iter().chain(slots.writer.iter()) {
            visit.call(&pending.fut)?;
            pending.kind.visit(&visit)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        self.slots.take_for_clear(std::mem::take);
    }
}

/// The `sock_*` machinery of one loop: the registry of descriptors with
/// pending calls, and the entry points of the Python mixin.
#[pyclass(frozen, module = "ferroloop._core")]
pub struct SockOps {
    loop_: Py<Loop>,
    waiters: GilLocked<FxHashMap<RawFd, Py<SockWaiter>>>,
}

/// An operation's result if it completed at once, else its pending future.
enum Eager<'py> {
    Done(Py<PyAny>),
    Waiting(Bound<'py, PyAny>),
}

impl<'py> IntoPyObject<'py> for Eager<'py> {
    type Target = PyAny;
    type Output = Bound<'py, PyAny>;
    type Error = std::convert::Infallible;

    fn into_pyobject(self, py: Python<'py>) -> Result<Self::Output, Self::Error> {
        Ok(match self {
            Eager::Done(value) => value.into_bound(py),
            Eager::Waiting(fut) => fut,
        })
    }
}

impl SockOps {
    /// asyncio refuses blocking sockets only in debug mode.
    fn is_debug(&self) -> bool {
        self.loop_.get().is_debug()
    }

    /// Tries `kind` once; returns a done future, or parks it and returns a
    /// pending one. Errors (including argument errors) go into the future,
    /// as they would surface from asyncio's coroutine when awaited.
    fn start<'py>(
        slf: &Bound<'py, Self>,
        sock: &Bound<'py, PyAny>,
        make: impl FnOnce(RawFd) -> PyResult<Kind>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let outcome = Self::start_eager(slf, sock, make);
        let fut = match outcome {
            Ok(Eager::Waiting(fut)) => return Ok(fut),
            Ok(Eager::Done(value)) => {
                let fut = python_api::new_future(py, slf.get().loop_.bind(py).as_any())?;
                set_result(&fut, value)?;
                fut
            }
            Err(err) => {
                let fut = python_api::new_future(py, slf.get().loop_.bind(py).as_any())?;
                set_exception(&fut, err)?;
                fut
            }
        };
        Ok(fut)
    }

    /// Like `start`, but an operation that completes at once gives its
    /// result (or raises) without a future: the coroutine methods that call
    /// this return it directly, sparing a future per call.
    fn start_eager<'py>(
        slf: &Bound<'py, Self>,
        sock: &Bound<'py, PyAny>,
        make: impl FnOnce(RawFd) -> PyResult<Kind>,
    ) -> PyResult<Eager<'py>> {
        let py = slf.py();
        let fd = check_socket(sock, slf.get().is_debug())?;
        let mut kind = make(fd)?;
        match attempt(&mut kind, py, fd)? {
            Some(value) => Ok(Eager::Done(value)),
            None => {
                let fut = python_api::new_future(py, slf.get().loop_.bind(py).as_any())?;
                Self::park(slf, sock, fd, &fut, kind)?;
                Ok(Eager::Waiting(fut))
            }
        }
    }

    /// The waiter of `sock`'s descriptor `fd`, made if needed. A waiter left
    /// by another socket with the same number (closed since) is dropped.
    fn waiter_for<'py>(
        slf: &Bound<'py, Self>,
        sock: &Bound<'py, PyAny>,
        fd: RawFd,
    ) -> PyResult<Bound<'py, SockWaiter>> {
        let py = slf.py();
        let this = slf.get();
        let existing = this.waiters.lock(py).get(&fd).map(|w| w.clone_ref(py));
        if let Some(waiter) = existing {
            let waiter = waiter.into_bound(py);
            if waiter.get().serves(sock) {
                return Ok(waiter);
            }
            let stale = this.waiters.lock(py).remove(&fd);
            this.loop_
                .get()
                .native_unwatch_if_owner(py, fd, waiter.as_any());
            drop(stale);
        }
        // Sockets that cannot be weakly referenced are served call by call.
        let weak = PyWeakrefReference::new(sock).ok().map(Bound::unbind);
        let waiter = Bound::new(
            py,
            SockWaiter {
                fd,
                ops: slf.clone().unbind(),
                sock: weak,
                slots: GilLocked::new(Slots::default()),
            },
        )?;
        this.waiters.lock(py).insert(fd, waiter.clone().unbind());
        Ok(waiter)
    }

    /// Registers a pending operation with the descriptor's waiter.
    fn park(
        slf: &Bound<'_, Self>,
        sock: &Bound<'_, PyAny>,
        fd: RawFd,
        fut: &Bound<'_, PyAny>,
        kind: Kind,
    ) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let waiter = Self::waiter_for(slf, sock, fd)?;
        let waiter = &waiter;
        let write = kind.is_write();
        let pending = Pending {
            fut: fut.clone().unbind(),
            kind,
        };
        let lingers = waiter.get().sock.is_some();
        let (replaced, interest) = {
            let mut slots = waiter.get().slots.lock(py);
            let slot = if write {
                &mut slots.writer
            } else {
                &mut slots.reader
            };
            let replaced = slot.replace(pending);
            if !write && lingers {
                slots.linger_read = true;
            }
            (replaced, slots.interest())
        };
        if let Some(old) = replaced.as_ref() {
            old.kind.abandon();
        }
        drop(replaced);
        let event_loop = this.loop_.get();
        // Still registered from the last call: at most a change of direction.
        // Otherwise (first call, or a transport or add_reader() had the
        // descriptor meanwhile) install the waiter.
        let watched = if event_loop.is_native_owner(py, fd, waiter.as_any()) {
            event_loop.native_interest(py, fd, interest)
        } else {
            event_loop.native_watch(
                py,
                fd,
                waiter.clone().into_any().unbind(),
                dispatch,
                interest,
            )
        };
        if let Err(err) = watched {
            let mut slots = waiter.get().slots.lock(py);
            let slot = if write {
                &mut slots.writer
            } else {
                &mut slots.reader
            };
            let ours = slot.take();
            slots.linger_read = false;
            drop(slots);
            drop(ours);
            SockWaiter::sync(waiter)?;
            return Err(err);
        }
        fut.call_method1(intern!(py, "add_done_callback"), (waiter,))?;
        Ok(())
    }
}

fn extract_size(value: &Bound<'_, PyAny>, what: &str) -> PyResult<usize> {
    let size: isize = value.extract()?;
    if size < 0 {
        return Err(PyValueError::new_err(format!(
            "negative buffersize in {what}"
        )));
    }
    Ok(size as usize)
}

#[pymethods]
impl SockOps {
    #[new]
    fn py_new(event_loop: Bound<'_, Loop>) -> Self {
        Self {
            loop_: event_loop.unbind(),
            waiters: GilLocked::new(FxHashMap::default()),
        }
    }

    /// The received bytes if some are waiting, else a future of them.
    fn recv<'py>(
        slf: &Bound<'py, Self>,
        sock: &Bound<'py, PyAny>,
        nbytes: &Bound<'py, PyAny>,
    ) -> PyResult<Eager<'py>> {
        Self::start_eager(slf, sock, |_| {
            Ok(Kind::Recv {
                n: extract_size(nbytes, "recv")?,
            })
        })
    }

    /// The byte count if some were waiting, else a future of it.
    fn recv_into<'py>(
        slf: &Bound<'py, Self>,
        sock: &Bound<'py, PyAny>,
        buf: &Bound<'py, PyAny>,
    ) -> PyResult<Eager<'py>> {
        Self::start_eager(slf, sock, |_| {
            Ok(Kind::RecvInto {
                buf: buf.clone().unbind(),
            })
        })
    }

    fn recvfrom<'py>(
        slf: &Bound<'py, Self>,
        sock: &Bound<'py, PyAny>,
        bufsize: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        Self::start(slf, sock, |_| {
            Ok(Kind::RecvFrom {
                n: extract_size(bufsize, "recvfrom")?,
            })
        })
    }

    fn recvfrom_into<'py>(
        slf: &Bound<'py, Self>,
        sock: &Bound<'py, PyAny>,
        buf: &Bound<'py, PyAny>,
        nbytes: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        Self::start(slf, sock, |_| {
            Ok(Kind::RecvFromInto {
                buf: buf.clone().unbind(),
                nbytes: extract_size(nbytes, "recvfrom_into")?,
            })
        })
    }

    /// None once everything went out, else a future completed when it has.
    fn sendall<'py>(
        slf: &Bound<'py, Self>,
        sock: &Bound<'py, PyAny>,
        data: &Bound<'py, PyAny>,
    ) -> PyResult<Eager<'py>> {
        let py = slf.py();
        // Fast path: a bytes object that goes out in full needs no Data.
        if let Ok(bytes) = data.cast::<PyBytes>() {
            if let Ok(fd) = check_socket(sock, slf.get().is_debug()) {
                let mut offset = 0;
                let sent = send_from(fd, bytes.as_bytes(), &mut offset);
                if sent.map_err(|errno| os_error(py, errno))? {
                    return Ok(Eager::Done(py.None()));
                }
                let fut = python_api::new_future(py, slf.get().loop_.bind(py).as_any())?;
                let kind = Kind::SendAll {
                    data: Data::Bytes(bytes.clone().unbind()),
                    offset,
                };
                Self::park(slf, sock, fd, &fut, kind)?;
                return Ok(Eager::Waiting(fut));
            }
        }
        Self::start_eager(slf, sock, |_| {
            Ok(Kind::SendAll {
                data: Data::new(data)?,
                offset: 0,
            })
        })
    }

    fn sendto<'py>(
        slf: &Bound<'py, Self>,
        sock: &Bound<'py, PyAny>,
        data: &Bound<'py, PyAny>,
        address: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        Self::start(slf, sock, |fd| {
            let domain = sys_io::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)
                .map_err(|errno| os_error(py, errno))?;
            // Unix addresses have always gone through the socket here.
            let native = match domain {
                libc::AF_INET | libc::AF_INET6 => sockaddr::from_python(address, domain),
                _ => None,
            };
            let target = match native {
                Some(addr) => SendTarget::Native(addr),
                None => SendTarget::Python {
                    sock: sock.clone().unbind(),
                    data: data.clone().unbind(),
                    address: address.clone().unbind(),
                },
            };
            Ok(Kind::SendTo {
                data: Data::new(data)?,
                target,
            })
        })
    }

    /// Connects to an already resolved `address`.
    fn connect<'py>(
        slf: &Bound<'py, Self>,
        sock: &Bound<'py, PyAny>,
        address: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let fut = python_api::new_future(py, slf.get().loop_.bind(py).as_any())?;
        let started = check_socket(sock, slf.get().is_debug()).and_then(|fd| {
            let err: i32 = sock
                .call_method1(intern!(py, "connect_ex"), (address,))?
                .extract()?;
            Ok((fd, err))
        });
        match started {
            Ok((_, 0)) => set_result(&fut, py.None())?,
            Ok((fd, err)) if [libc::EINPROGRESS, libc::EAGAIN, libc::EINTR].contains(&err) => {
                let kind = Kind::Connect {
                    address: address.clone().unbind(),
                };
                Self::park(slf, sock, fd, &fut, kind)?;
            }
            Ok((_, err)) => set_exception(&fut, os_error(py, Errno::from_raw(err)))?,
            Err(err) => set_exception(&fut, err)?,
        }
        Ok(fut)
    }

    fn accept<'py>(
        slf: &Bound<'py, Self>,
        sock: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        Self::start(slf, sock, |_| {
            Ok(Kind::Accept {
                sock: sock.clone().unbind(),
            })
        })
    }

    /// `os.sendfile` from `in_fd` (a regular file) starting at `offset`:
    /// `count` bytes, or until end of file when `count` is 0, in calls of at
    /// most `blocksize` bytes. Resolves to the number of bytes sent.
    fn sendfile<'py>(
        slf: &Bound<'py, Self>,
        sock: &Bound<'py, PyAny>,
        in_fd: RawFd,
        offset: i64,
        count: u64,
        blocksize: u64,
    ) -> PyResult<Bound<'py, PyAny>> {
        Self::start(slf, sock, |_| {
            Ok(Kind::SendFile(SendFile {
                in_fd,
                offset,
                count,
                blocksize,
                total_sent: 0,
                waited: false,
            }))
        })
    }

    /// Drops the pending calls of `fd` whose futures are already done (say,
    /// cancelled in this iteration, before their done-callback ran), and
    /// stops watching `fd` if nothing is left (lingering included). For
    /// `add_reader()`/`add_writer()`, which need the descriptor to themselves.
    fn _forget_done(slf: &Bound<'_, Self>, fd: RawFd) -> PyResult<()> {
        let py = slf.py();
        let waiter = slf.get().waiters.lock(py).get(&fd).map(|w| w.clone_ref(py));
        let Some(waiter) = waiter else {
            return Ok(());
        };
        let waiter = waiter.bind(py);
        let futures: Vec<Py<PyAny>> = {
            let slots = waiter.get().slots.lock(py);
            slots
                .reader
                .iter()
                .chain(slots.writer.iter())
                .map(|p| p.fut.clone_ref(py))
                .collect()
        };
        for fut in futures {
            let fut = fut.bind(py);
            if future_done(fut)? {
                SockWaiter::__call__(waiter, fut)?;
            }
        }
        // add_reader()'s callbacks need the descriptor level-triggered.
        SockWaiter::release_if_idle(waiter)
    }

    /// Descriptors with pending calls or a lingering registration
    /// (introspection, for tests).
    fn _pending_fds(&self, py: Python<'_>) -> Vec<RawFd> {
        let mut fds: Vec<RawFd> = self.waiters.lock(py).keys().copied().collect();
        fds.sort_unstable();
        fds
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.loop_)?;
        if let Some(waiters) = self.waiters.lock_in_traverse(&visit) {
            for waiter in waiters.values() {
                visit.call(waiter)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        self.waiters.take_for_clear(std::mem::take);
    }
}

/// Adds this module's classes to `ferroloop._core`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<SockOps>()?;
    m.add_class::<SockWaiter>()?;
    Ok(())
}
