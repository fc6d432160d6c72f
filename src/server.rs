//! Listening sockets: accepting connections natively.
//!
//! A [`Listener`] watches a listening socket and, when it is readable,
//! accepts up to `backlog` connections (non-blocking, close-on-exec) in one
//! go, handing each new descriptor to the Python `Server`, which builds the
//! protocol and transport (once per connection). Running out of descriptors
//! (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`) is reported to the server, which
//! pauses accepting for a moment as asyncio does; the server keeps serving.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::PyTraverseError;

use crate::errors::os_error;
use crate::event_loop::Loop;
use crate::poller::{Interest, Readiness};

#[pyclass(frozen, weakref, module = "ferroloop._core")]
pub struct Listener {
    fd: RawFd,
    loop_: Py<Loop>,
    on_accept: Py<PyAny>,
    on_exhausted: Py<PyAny>,
    backlog: usize,
    /// TCP listeners: disable Nagle on accepted sockets, as asyncio does.
    nodelay: bool,
    watching: AtomicBool,
}

enum Accepted {
    Connection(RawFd),
    Exhausted(Errno),
    Nothing,
    Retry,
}

fn accept_one(fd: RawFd) -> Accepted {
    // SAFETY: accept4 with null address pointers only returns a descriptor.
    let accepted = unsafe {
        libc::accept4(
            fd,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if accepted >= 0 {
        return Accepted::Connection(accepted);
    }
    match Errno::last() {
        Errno::EAGAIN => Accepted::Nothing,
        Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM => {
            Accepted::Exhausted(Errno::last())
        }
        // The peer gave up before we got to it (ECONNABORTED, EPROTO, ...):
        // nothing to report, try the next one.
        _ => Accepted::Retry,
    }
}

fn set_nodelay(fd: RawFd) {
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
    let listener = target.cast::<Listener>()?.get();
    let py = target.py();
    for _ in 0..listener.backlog.max(1) {
        if !listener.watching.load(Ordering::Relaxed) {
            break;
        }
        match accept_one(listener.fd) {
            Accepted::Connection(fd) => {
                if listener.nodelay {
                    set_nodelay(fd);
                }
                listener.on_accept.bind(py).call1((fd,))?;
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

#[pymethods]
impl Listener {
    #[new]
    fn py_new(
        event_loop: Bound<'_, Loop>,
        fd: RawFd,
        on_accept: Py<PyAny>,
        on_exhausted: Py<PyAny>,
        backlog: usize,
        nodelay: bool,
    ) -> Self {
        Self {
            fd,
            loop_: event_loop.unbind(),
            on_accept,
            on_exhausted,
            backlog,
            nodelay,
            watching: AtomicBool::new(false),
        }
    }

    /// Start accepting connections.
    fn start(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        if this.watching.swap(true, Ordering::Relaxed) {
            return Ok(());
        }
        let read = Interest {
            read: true,
            write: false,
        };
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
            self.loop_.get().native_unwatch(self.fd);
        }
    }

    fn is_accepting(&self) -> bool {
        self.watching.load(Ordering::Relaxed)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.loop_)?;
        visit.call(&self.on_accept)?;
        visit.call(&self.on_exhausted)
    }
}
