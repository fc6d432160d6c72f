//! Listening sockets: accepting connections natively.
//!
//! A [`Listener`] watches a listening socket and, when it is readable,
//! accepts up to `backlog` connections (non-blocking, close-on-exec) in one
//! go. Each is opened in the next iteration, as asyncio's task for it would:
//! a plain server's natively (protocol and transport, see
//! [`crate::socket_transport`]); a TLS server gets the new descriptor and its
//! peer address in Python, which wraps it. Running out of descriptors
//! (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`) is reported to the server, which
//! pauses accepting for a moment as asyncio does; the server keeps serving.

use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use parking_lot::Mutex;
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use pyo3::PyTraverseError;

use socket2::SockAddr;

use crate::callback_context;
use crate::errors::os_error;
use crate::event_loop::Loop;
use crate::poller::{Interest, Readiness};
use crate::socket_transport::ConnectionMaker;
use crate::{sockaddr, sys_io};

#[pyclass(frozen, weakref, module = "ferroloop._core")]
pub struct Listener {
    fd: RawFd,
    loop_: Py<Loop>,
    on_accept: OnAccept,
    on_exhausted: Py<PyAny>,
    /// Connections accepted per readiness event: the `listen()` backlog, at
    /// least one. (asyncio accepts `backlog` of them, so none at all for a
    /// backlog of 0 or less, which `listen()` accepts.)
    accepts_per_event: usize,
    /// TCP listeners: disable Nagle on accepted sockets, as asyncio does.
    nodelay: bool,
    watching: AtomicBool,
    /// Where connections are accepted: a copy of the context `start` was
    /// called in (asyncio's reader handle for the listening socket).
    context: Mutex<Option<Py<PyAny>>>,
}

/// Who opens an accepted connection.
enum OnAccept {
    /// Python, called with `(fd, peer)`.
    Python(Py<PyAny>),
    Native(ConnectionMaker),
}

enum Accepted {
    Connection(RawFd, SockAddr),
    Exhausted(Errno),
    Nothing,
    Retry,
}

fn accept_one(fd: RawFd) -> Accepted {
    match sys_io::accept(fd, libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) {
        Ok(Some((accepted, peer))) => Accepted::Connection(accepted, peer),
        Ok(None) => Accepted::Nothing,
        Err(errno @ (Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM)) => {
            Accepted::Exhausted(errno)
        }
        // The peer gave up before we got to it (ECONNABORTED, EPROTO, ...):
        // nothing to report, try the next one.
        Err(_) => Accepted::Retry,
    }
}

pub(crate) fn set_nodelay(fd: RawFd) {
    let enable: libc::c_int = 1;
    // SAFETY: a plain setsockopt on a descriptor we just accepted. Failure
    // (not a TCP socket) is harmless and ignored, as asyncio ignores it.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&enable as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

fn dispatch(
    target: &Bound<'_, PyAny>,
    _loop: &Bound<'_, Loop>,
    _readiness: Readiness,
) -> PyResult<()> {
    let listener = target.cast::<Listener>()?;
    let py = target.py();
    let context = listener
        .get()
        .context
        .lock()
        .as_ref()
        .map(|c| c.bind(py).clone());
    callback_context::run_in(py, context.as_ref(), || accept_backlog(listener))
}

fn accept_backlog(slf: &Bound<'_, Listener>) -> PyResult<()> {
    let py = slf.py();
    let listener = slf.get();
    for _ in 0..listener.accepts_per_event {
        if !listener.watching.load(Ordering::Relaxed) {
            break;
        }
        match accept_one(listener.fd) {
            Accepted::Connection(fd, peer) => {
                if listener.nodelay {
                    set_nodelay(fd);
                }
                // SAFETY: `fd` was just accepted and was handed to no one.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                AcceptedConnection::schedule(slf, fd, peer)?;
            }
            Accepted::Exhausted(errno) => {
                let error = os_error(py, errno);
                listener.on_exhausted.bind(py).call1((error.value(py),))?;
                break;
            }
            Accepted::Nothing => break,
            Accepted::Retry => continue,
        }
    }
    Ok(())
}

/// An accepted connection waiting to be opened. asyncio opens each one in a
/// task of its own, whose first step (the protocol factory, the transport's
/// set-up) runs in the iteration after the accept, in a copy of the context
/// the server accepts in; this is that step, as a callback in that copy.
#[pyclass(frozen, module = "ferroloop._core")]
struct AcceptedConnection {
    listener: Py<Listener>,
    fd: Mutex<Option<OwnedFd>>,
    peer: SockAddr,
    context: Py<PyAny>,
}

impl AcceptedConnection {
    fn schedule(listener: &Bound<'_, Listener>, fd: OwnedFd, peer: SockAddr) -> PyResult<()> {
        let py = listener.py();
        let context = callback_context::copy_current(py)?;
        let pending = Self {
            listener: listener.clone().unbind(),
            fd: Mutex::new(Some(fd)),
            peer,
            context: context.clone_ref(py),
        };
        let pending = Bound::new(py, pending)?.into_any().unbind();
        let args = PyTuple::empty(py).unbind();
        listener
            .get()
            .loop_
            .get()
            .soon_in(py, pending, args, context)
    }
}

#[pymethods]
impl AcceptedConnection {
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        // Once only; a connection never opened is closed when this is freed.
        let Some(fd) = self.fd.lock().take() else {
            return Ok(());
        };
        let listener = self.listener.get();
        let peer = self.peer.clone();
        open_connection(listener, fd.into_raw_fd(), peer, self.context.bind(py))
    }

    /// The name the loop's slow-callback warning gives it.
    fn __repr__(&self) -> String {
        format!("<Server accepting on fd={}>", self.listener.get().fd)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.listener)?;
        visit.call(&self.context)
    }
}

/// Hands the accepted `fd` to whoever opens the server's connections. The
/// peer's address is as accept() saw it: it stays known even if the peer
/// resets before anyone asks (asyncio keeps it too).
fn open_connection(
    listener: &Listener,
    fd: RawFd,
    peer: SockAddr,
    context: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let py = context.py();
    match &listener.on_accept {
        OnAccept::Native(maker) => maker.open(listener.loop_.bind(py), fd, peer, context),
        OnAccept::Python(on_accept) => {
            let peer = sockaddr::to_python(py, &peer).unwrap_or_else(|_| py.None().into_bound(py));
            on_accept.bind(py).call1((fd, peer)).map(drop)
        }
    }
}

#[pymethods]
impl Listener {
    /// Accepts on `fd`. With `server` (a plain `Server`) connections are
    /// opened natively; otherwise `on_accept(fd, peer)` opens them.
    #[new]
    #[pyo3(signature = (event_loop, fd, on_accept, on_exhausted, backlog, nodelay, server=None, family=0))]
    #[allow(clippy::too_many_arguments)]
    fn py_new(
        event_loop: Bound<'_, Loop>,
        fd: RawFd,
        on_accept: Py<PyAny>,
        on_exhausted: Py<PyAny>,
        backlog: i32,
        nodelay: bool,
        server: Option<Bound<'_, PyAny>>,
        family: i32,
    ) -> PyResult<Self> {
        let on_accept = match server {
            Some(server) => OnAccept::Native(ConnectionMaker::new(&server, family)?),
            None => OnAccept::Python(on_accept),
        };
        Ok(Self {
            fd,
            loop_: event_loop.unbind(),
            on_accept,
            on_exhausted,
            accepts_per_event: usize::try_from(backlog).unwrap_or(0).max(1),
            nodelay,
            watching: AtomicBool::new(false),
            context: Mutex::new(None),
        })
    }

    /// Start accepting connections.
    fn start(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        let serving_context = callback_context::copy_current(slf.py())?;
        if this.watching.swap(true, Ordering::Relaxed) {
            return Ok(());
        }
        let previous = this.context.lock().replace(serving_context);
        drop(previous);
        let read = Interest::level(true, false);
        this.loop_.get().native_watch(
            slf.py(),
            this.fd,
            slf.clone().into_any().unbind(),
            dispatch,
            read,
        )
    }

    /// Stop accepting (the socket stays open).
    fn stop(&self) {
        if self.watching.swap(false, Ordering::Relaxed) {
            Python::attach(|py| self.loop_.get().native_unwatch(py, self.fd));
        }
    }

    fn is_accepting(&self) -> bool {
        self.watching.load(Ordering::Relaxed)
    }

    /// Where the loop reports on the accepts it ran (asyncio's accept task).
    fn __repr__(&self) -> String {
        format!("<Server accepting on fd={}>", self.fd)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.loop_)?;
        match &self.on_accept {
            OnAccept::Python(on_accept) => visit.call(on_accept)?,
            OnAccept::Native(maker) => maker.visit(&visit)?,
        }
        visit.call(&self.on_exhausted)?;
        if let Some(context) = self.context.try_lock() {
            visit.call(&*context)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        let context = self.context.lock().take();
        drop(context);
    }
}
