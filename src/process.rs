//! Child process watching with pidfds.
//!
//! A [`ChildWatcher`] opens a pidfd for one child (`pidfd_open(2)`, Linux
//! 5.3+) and registers it with the loop's poller as a native watcher: no
//! thread, no SIGCHLD handler, no polling. The pidfd becomes readable once the
//! child has terminated; the watcher then stops watching, closes the pidfd,
//! reaps the child with `waitpid(pid, WNOHANG)` and schedules
//! `callback(pid, returncode)`. The return code follows asyncio: the exit
//! status, or the negated signal number for a child killed by a signal;
//! `None` when the child was already reaped by someone else (for example
//! `Popen.poll()`), in which case the caller knows the status better.
//!
//! Like asyncio's child watchers, the callback goes through one extra
//! `call_soon` hop, so that pipe data read in the iteration that saw the exit
//! reaches the protocol before `process_exited()`.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use parking_lot::Mutex;
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::PyTraverseError;

use crate::callback_context;
use crate::errors::os_error;
use crate::event_loop::Loop;
use crate::poller::{Interest, Readiness};

struct WatcherState {
    /// The open pidfd while the child is watched.
    pidfd: Option<OwnedFd>,
    callback: Option<Py<PyAny>>,
    /// The context the callback is scheduled in (see `exit_context`).
    context: Option<Py<PyAny>>,
}

/// Watches one child process for termination through its pidfd.
#[pyclass(frozen, module = "ferroloop._core")]
pub struct ChildWatcher {
    pid: libc::pid_t,
    loop_: Py<Loop>,
    state: Mutex<WatcherState>,
}

/// `pidfd_open(pid, 0)`: a close-on-exec descriptor referring to the process.
fn pidfd_open(pid: libc::pid_t) -> Result<OwnedFd, Errno> {
    // SAFETY: the system call takes two integers and returns a new descriptor
    // (or -1); it touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: the kernel just gave us this descriptor; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The outcome of one non-blocking reap attempt.
enum Reaped {
    /// Terminated, with asyncio's return code.
    Exited(i32),
    /// Still running (a spurious wake-up).
    Running,
    /// Not our child any more: someone else reaped it.
    Unknown,
}

fn reap(pid: libc::pid_t) -> Reaped {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer for the duration of the call.
        let result = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if result == 0 {
            return Reaped::Running;
        }
        if result == pid {
            return Reaped::Exited(returncode(status));
        }
        match Errno::last() {
            Errno::EINTR => continue,
            _ => return Reaped::Unknown,
        }
    }
}

/// asyncio's return code for a wait status: the exit code, or `-signal`.
fn returncode(status: libc::c_int) -> i32 {
    if libc::WIFSIGNALED(status) {
        -libc::WTERMSIG(status)
    } else if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        // Stopped or continued children are not reported without WUNTRACED.
        status
    }
}

impl ChildWatcher {
    fn on_ready(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        if this.state.lock().pidfd.is_none() {
            return Ok(());
        }
        let returncode = match reap(this.pid) {
            Reaped::Running => return Ok(()),
            Reaped::Exited(code) => Some(code),
            Reaped::Unknown => None,
        };
        let context = this.state.lock().context.take();
        let Some(callback) = this.stop() else {
            return Ok(());
        };
        // Both go together; only the collector clears one (and then both).
        let Some(context) = context else {
            return Ok(());
        };
        let loop_ = this.loop_.bind(py);
        if loop_.get().closed() {
            drop(callback);
            return Ok(());
        }
        let call_soon = loop_.getattr(pyo3::intern!(py, "call_soon"))?;
        let args = (callback, this.pid, returncode).into_pyobject(py)?;
        loop_
            .get()
            .soon_in(py, call_soon.unbind(), args.unbind(), context)
    }

    /// Stops watching and closes the pidfd; returns the callback (to be
    /// called or dropped by the caller, outside the lock).
    fn stop(&self) -> Option<Py<PyAny>> {
        let (pidfd, callback) = {
            let mut state = self.state.lock();
            (state.pidfd.take(), state.callback.take())
        };
        if let Some(pidfd) = pidfd {
            // Unwatch before closing: the number may be reused at once.
            Python::attach(|py| self.loop_.get().native_unwatch(py, pidfd.as_raw_fd()));
            drop(pidfd);
        }
        callback
    }
}

/// The context a child's exit is reported in, as asyncio's default child
/// watcher reports it: from 3.12 a pidfd reader handle made when the watch
/// starts (a copy of the caller's context); on 3.11 `call_soon_threadsafe`
/// from the waiting thread, whose context is a new, empty one.
fn exit_context(py: Python<'_>) -> PyResult<Py<PyAny>> {
    if py.version_info() >= (3, 12) {
        return callback_context::copy_current(py);
    }
    // SAFETY: PyContext_New returns a new reference or NULL with an error set.
    unsafe { Bound::from_owned_ptr_or_err(py, pyo3::ffi::PyContext_New()).map(Bound::unbind) }
}

/// The loop's entry point for readiness of a pidfd.
pub fn dispatch(
    target: &Bound<'_, PyAny>,
    _loop: &Bound<'_, Loop>,
    _readiness: Readiness,
) -> PyResult<()> {
    let watcher = target.cast::<ChildWatcher>()?;
    ChildWatcher::on_ready(watcher)
}

#[pymethods]
impl ChildWatcher {
    /// Starts watching child `pid` on `event_loop`; `callback(pid, returncode)`
    /// is scheduled when it terminates. Raises `OSError` if no pidfd can be
    /// opened (ENOSYS before Linux 5.3, EPERM under some sandboxes, ESRCH if
    /// the process is already gone).
    #[staticmethod]
    fn watch(
        py: Python<'_>,
        event_loop: Bound<'_, Loop>,
        pid: libc::pid_t,
        callback: Py<PyAny>,
    ) -> PyResult<Py<ChildWatcher>> {
        if pid <= 0 {
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "invalid pid: {pid}"
            )));
        }
        let context = exit_context(py)?;
        let pidfd = pidfd_open(pid).map_err(|errno| os_error(py, errno))?;
        let raw = pidfd.as_raw_fd();
        let watcher = Py::new(
            py,
            ChildWatcher {
                pid,
                loop_: event_loop.clone().unbind(),
                state: Mutex::new(WatcherState {
                    pidfd: Some(pidfd),
                    callback: Some(callback),
                    context: Some(context),
                }),
            },
        )?;
        let registered = event_loop.get().native_watch(
            py,
            raw,
            watcher.clone_ref(py).into_any(),
            dispatch,
            Interest::level(true, false),
        );
        if let Err(err) = registered {
            let callback = watcher.get().stop();
            drop(callback);
            return Err(err);
        }
        Ok(watcher)
    }

    /// Stops watching without calling the callback. Idempotent.
    fn cancel(&self) {
        let callback = self.stop();
        drop(callback);
    }

    /// True while the child is watched.
    fn is_active(&self) -> bool {
        self.state.lock().pidfd.is_some()
    }

    #[getter]
    fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// Native I/O handlers have no creation traceback.
    #[getter]
    fn _source_traceback(&self, py: Python<'_>) -> Py<PyAny> {
        py.None()
    }

    fn __repr__(&self) -> String {
        let state = if self.is_active() { "watching" } else { "done" };
        format!("<ChildWatcher pid={} {state}>", self.pid)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.loop_)?;
        if let Some(state) = self.state.try_lock() {
            visit.call(&state.callback)?;
            visit.call(&state.context)?;
        }
        Ok(())
    }

    fn __clear__(&self) {
        let taken = self
            .state
            .try_lock()
            .map(|mut state| (state.callback.take(), state.context.take()));
        drop(taken);
    }
}

/// Adds this module's classes to `ferroloop._core`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ChildWatcher>()?;
    Ok(())
}
