//! Outgoing stream connections opened natively for `create_connection`.
//!
//! [`connect_stream`] creates a non-blocking socket, connects it and returns
//! a future that resolves to a [`ConnectedSocket`]: the descriptor, owned
//! until a transport takes it, and the two addresses asyncio records in the
//! transport's extra info. No Python socket object is made (the transport
//! creates one lazily if `get_extra_info("socket")` is asked for).
//!
//! A loopback handshake is over by the time `connect()` returns (the kernel
//! processes the SYN-ACK when the call releases the socket), so one
//! zero-timeout `poll` usually tells the outcome at once: no epoll
//! registration. The future is still completed where asyncio would learn the
//! outcome, after the loop's next poll (see [`SettleAfterPoll`]), so that the
//! connection takes as many iterations as on asyncio. Otherwise a
//! [`PendingConnect`] watches the descriptor for writability, as asyncio's
//! `sock_connect` does.
//!
//! Cancellation: the pending connection is a done-callback of its future; a
//! future completed by anyone else (cancelled) unwatches and closes the
//! socket at once. A `ConnectedSocket` nobody detaches closes on drop.

use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use parking_lot::Mutex;
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use pyo3::{intern, PyTraverseError};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::errors::os_error;
use crate::event_loop::Loop;
use crate::poller::{Interest, Readiness};
use crate::python_api::new_future;
use crate::server::set_nodelay;
use crate::sock_ops::{future_done, set_exception, set_result};
use crate::{sockaddr, sys_io};

/// A connected socket waiting for its transport.
#[pyclass(frozen, module = "ferroloop._core")]
pub struct ConnectedSocket {
    fd: Mutex<Option<OwnedFd>>,
    family: i32,
    sockname: Option<SockAddr>,
    peername: Option<SockAddr>,
}

#[pymethods]
impl ConnectedSocket {
    #[getter]
    pub fn family(&self) -> i32 {
        self.family
    }

    /// Hands the descriptor over to the caller, who must close it.
    fn detach(&self) -> PyResult<RawFd> {
        self.take_fd().map(IntoRawFd::into_raw_fd)
    }

    fn __repr__(&self) -> String {
        match self.fd.lock().as_ref() {
            Some(fd) => format!("<ConnectedSocket fd={}>", fd.as_raw_fd()),
            None => "<ConnectedSocket detached>".to_owned(),
        }
    }
}

impl ConnectedSocket {
    /// The local and the peer's address, as they were once connected.
    pub fn addresses(&self) -> (Option<SockAddr>, Option<SockAddr>) {
        (self.sockname.clone(), self.peername.clone())
    }

    /// Gives the descriptor to a transport, which closes it from now on.
    pub fn take_fd(&self) -> PyResult<OwnedFd> {
        self.fd
            .lock()
            .take()
            .ok_or_else(|| PyValueError::new_err("the socket was already detached"))
    }
}

/// Kept as the kernel gives them: converted to Python values only if asked
/// for (most connections never are), which spares two tuples per connection.
fn connected(py: Python<'_>, fd: OwnedFd, family: i32) -> PyResult<Py<PyAny>> {
    let raw = fd.as_raw_fd();
    if family == libc::AF_INET || family == libc::AF_INET6 {
        set_nodelay(raw);
    }
    let socket = ConnectedSocket {
        sockname: sockaddr::getsockname(raw).ok(),
        peername: sockaddr::getpeername(raw).ok(),
        fd: Mutex::new(Some(fd)),
        family,
    };
    Ok(Py::new(py, socket)?.into_any())
}

/// Where `connect()` left the socket.
enum Started {
    Connected(OwnedFd),
    InProgress(OwnedFd),
}

fn open_and_connect(
    family: i32,
    type_: i32,
    proto: i32,
    addr: &SockAddr,
) -> Result<Started, Errno> {
    let protocol = (proto != 0).then(|| Protocol::from(proto));
    let socket = Socket::new(
        Domain::from(family),
        Type::from(type_).nonblocking(),
        protocol,
    )
    .map_err(io_errno)?;
    let fd = OwnedFd::from(socket);
    // SAFETY: `addr` is a valid socket address of `addr.len()` bytes.
    let rc = unsafe { libc::connect(fd.as_raw_fd(), addr.as_ptr().cast(), addr.len()) };
    if rc == 0 {
        return Ok(Started::Connected(fd));
    }
    match Errno::last() {
        Errno::EINPROGRESS | Errno::EAGAIN | Errno::EINTR => Ok(Started::InProgress(fd)),
        errno => Err(errno),
    }
}

fn io_errno(err: std::io::Error) -> Errno {
    Errno::from_raw(err.raw_os_error().unwrap_or(libc::EIO))
}

/// True when the socket is writable (or failed) right now.
fn writable_now(fd: RawFd) -> bool {
    let mut poll_fd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let rc = unsafe { libc::poll(&mut poll_fd, 1, 0) };
    rc > 0 && poll_fd.revents != 0
}

/// The handshake's outcome once the socket reported writable.
enum Outcome {
    Connected,
    Waiting,
    Failed(i32),
}

fn handshake_outcome(fd: RawFd) -> Outcome {
    match sys_io::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_ERROR) {
        Ok(0) => Outcome::Connected,
        Ok(err)
            if [libc::EINPROGRESS, libc::EAGAIN, libc::EALREADY, libc::EINTR].contains(&err) =>
        {
            Outcome::Waiting
        }
        Ok(err) => Outcome::Failed(err),
        Err(errno) => Outcome::Failed(errno as i32),
    }
}

/// asyncio's message for a connection that failed after `EINPROGRESS`.
fn connect_failed(address: &Bound<'_, PyAny>, err: i32) -> PyResult<PyErr> {
    let message = format!("Connect call failed {}", address.str()?);
    Ok(PyOSError::new_err((err, message)))
}

/// Opens a stream socket of `family`/`type_`/`proto` connected to `address`
/// (a numeric address, as `getaddrinfo` returns). Returns a future resolving
/// to a [`ConnectedSocket`], or None when the address is not one this
/// module parses (the caller then connects through Python's socket). With
/// `eager`, a connection made at once is returned as is, without a future.
#[pyfunction]
#[pyo3(signature = (event_loop, family, type_, proto, address, eager=false))]
pub fn connect_stream<'py>(
    event_loop: &Bound<'py, Loop>,
    family: i32,
    type_: i32,
    proto: i32,
    address: &Bound<'py, PyAny>,
    eager: bool,
) -> PyResult<Option<Bound<'py, PyAny>>> {
    let py = event_loop.py();
    // asyncio's connect fails when it registers for writability; ours may
    // need no registration, so it asks first.
    event_loop.get().check_closed()?;
    let Some(addr) = sockaddr::from_python(address, family) else {
        return Ok(None);
    };
    let ready = match open_and_connect(family, type_, proto, &addr) {
        Ok(Started::Connected(fd)) => Ok(fd),
        Ok(Started::InProgress(fd)) => {
            let raw = fd.as_raw_fd();
            match writable_now(raw).then(|| handshake_outcome(raw)) {
                Some(Outcome::Connected) => {
                    let socket = connected(py, fd, family)?;
                    return SettleAfterPoll::schedule(event_loop, Ok(socket)).map(Some);
                }
                Some(Outcome::Failed(err)) => {
                    let err = connect_failed(address, err)?;
                    return SettleAfterPoll::schedule(event_loop, Err(err)).map(Some);
                }
                Some(Outcome::Waiting) | None => {
                    let fut = new_future(py, event_loop.as_any())?;
                    PendingConnect::park(event_loop, &fut, fd, family, address)?;
                    return Ok(Some(fut));
                }
            }
        }
        Err(errno) => Err(os_error(py, errno)),
    };
    let connected = match ready {
        Ok(fd) if eager => return Ok(Some(connected(py, fd, family)?.into_bound(py))),
        Ok(fd) => Ok(connected(py, fd, family)?),
        Err(err) => Err(err),
    };
    let fut = new_future(py, event_loop.as_any())?;
    match connected {
        Ok(socket) => set_result(&fut, socket)?,
        Err(err) => set_exception(&fut, err)?,
    }
    Ok(Some(fut))
}

/// A connection's outcome, known before asyncio would know it: completes the
/// future after the loop's next poll, where asyncio's writability callback
/// would run. A future cancelled meanwhile stays as it is (the socket closes
/// when this is freed).
#[pyclass(frozen, module = "ferroloop._core")]
struct SettleAfterPoll {
    /// The future and its outcome, both let go of once settled: a failed
    /// connection's error must not outlive the caller's handling of it.
    pending: Mutex<Option<FutureAndOutcome>>,
}

/// A connection's future, and the socket or error it is to be completed with.
type FutureAndOutcome = (Py<PyAny>, PyResult<Py<PyAny>>);

impl SettleAfterPoll {
    fn schedule<'py>(
        event_loop: &Bound<'py, Loop>,
        outcome: PyResult<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = event_loop.py();
        let fut = new_future(py, event_loop.as_any())?;
        let settle = Self {
            pending: Mutex::new(Some((fut.clone().unbind(), outcome))),
        };
        let settle = Bound::new(py, settle)?.into_any().unbind();
        let args = PyTuple::empty(py).unbind();
        event_loop.get().after_next_poll(py, settle, args)?;
        Ok(fut)
    }
}

#[pymethods]
impl SettleAfterPoll {
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        let Some((fut, outcome)) = self.pending.lock().take() else {
            return Ok(());
        };
        let fut = fut.bind(py);
        if future_done(fut)? {
            return Ok(());
        }
        match outcome {
            Ok(socket) => set_result(fut, socket),
            Err(err) => set_exception(fut, err),
        }
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        if let Some(pending) = self.pending.try_lock() {
            if let Some((fut, _)) = pending.as_ref() {
                visit.call(fut)?;
            }
        }
        Ok(())
    }
}

/// A connection whose handshake is still going on.
#[pyclass(frozen, module = "ferroloop._core")]
pub struct PendingConnect {
    loop_: Py<Loop>,
    fut: Py<PyAny>,
    address: Py<PyAny>,
    family: i32,
    raw_fd: RawFd,
    /// Taken when the future is completed, by us or by a cancellation.
    fd: Mutex<Option<OwnedFd>>,
}

impl PendingConnect {
    fn park(
        event_loop: &Bound<'_, Loop>,
        fut: &Bound<'_, PyAny>,
        fd: OwnedFd,
        family: i32,
        address: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let py = event_loop.py();
        let raw_fd = fd.as_raw_fd();
        let pending = Bound::new(
            py,
            PendingConnect {
                loop_: event_loop.clone().unbind(),
                fut: fut.clone().unbind(),
                address: address.clone().unbind(),
                family,
                raw_fd,
                fd: Mutex::new(Some(fd)),
            },
        )?;
        let writable = Interest::level(false, true);
        event_loop.get().native_watch(
            py,
            raw_fd,
            pending.clone().into_any().unbind(),
            dispatch,
            writable,
        )?;
        fut.call_method1(intern!(py, "add_done_callback"), (pending,))?;
        Ok(())
    }

    /// Stops watching and takes the socket (None if already taken).
    fn release(&self) -> Option<OwnedFd> {
        let fd = self.fd.lock().take()?;
        Python::attach(|py| self.loop_.get().native_unwatch(py, self.raw_fd));
        Some(fd)
    }

    fn on_writable(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        let fut = this.fut.bind(py);
        if future_done(fut)? {
            drop(this.release());
            return Ok(());
        }
        let outcome = handshake_outcome(this.raw_fd);
        if matches!(outcome, Outcome::Waiting) {
            return Ok(());
        }
        let Some(fd) = this.release() else {
            return Ok(());
        };
        fut.call_method1(intern!(py, "remove_done_callback"), (slf,))?;
        match outcome {
            Outcome::Connected => set_result(fut, connected(py, fd, this.family)?),
            Outcome::Failed(err) => {
                drop(fd);
                set_exception(fut, connect_failed(this.address.bind(py), err)?)
            }
            Outcome::Waiting => Ok(()),
        }
    }
}

fn dispatch(target: &Bound<'_, PyAny>, _loop: &Bound<'_, Loop>, _ready: Readiness) -> PyResult<()> {
    PendingConnect::on_writable(target.cast::<PendingConnect>()?)
}

#[pymethods]
impl PendingConnect {
    /// Done-callback: the future completed without us (it was cancelled),
    /// so the half-open socket goes now, as asyncio closes it.
    fn __call__(&self, _fut: &Bound<'_, PyAny>) {
        drop(self.release());
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.fut)?;
        visit.call(&self.address)
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ConnectedSocket>()?;
    m.add_class::<PendingConnect>()?;
    m.add_function(wrap_pyfunction!(connect_stream, m)?)?;
    m.add_function(wrap_pyfunction!(
        crate::socket_transport::connected_transport,
        m
    )?)?;
    Ok(())
}
