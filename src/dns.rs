//! `getaddrinfo` for host names, on native threads that never touch Python.
//!
//! A name may need the name service switch (/etc/hosts, DNS, nscd, ...), so
//! the lookup must not run on the loop's thread. asyncio runs
//! `socket.getaddrinfo` in the default executor: a Python worker takes the GIL
//! to start, again after the C call to build the result, and hands it back
//! with `call_soon_threadsafe`; every one of those steps is a hand-off of the
//! GIL between two threads. Here the C call runs on a thread of a small
//! process-wide pool, which queues the raw answer for the loop and writes an
//! eventfd the loop watches. The loop's thread then builds exactly the Python
//! objects `socket.getaddrinfo` builds (the same `AddressFamily`/`SocketKind`
//! members, address tuples and exceptions) and completes the waiting future.
//!
//! The pool threads only call libc: a lookup still running at interpreter exit
//! cannot touch a finalising interpreter. They end with the last loop using
//! them (see `Pool`). After `fork()` the child starts a pool of its own and
//! never touches the parent's (whose lock a parent thread may have held at the
//! fork).

use std::collections::VecDeque;
use std::ffi::{CStr, CString};
use std::os::fd::AsRawFd;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{JoinHandle, ThreadId};

use nix::sys::eventfd::{EfdFlags, EventFd};
use parking_lot::{Condvar, Mutex, MutexGuard};
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyUnicodeDecodeError};
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use pyo3::PyTraverseError;
use rustc_hash::FxHashMap;
use socket2::SockAddr;

use crate::errors::os_error;
use crate::event_loop::Loop;
use crate::fork;
use crate::poller::{Interest, Readiness};
use crate::sockaddr;

/// At most this many lookups run at once in a process; more wait in line
/// (lookups of loops closed meanwhile are dropped from the line). asyncio's
/// default executor has up to 32 threads per loop (min(32, CPUs + 4)),
/// shared with everything else it runs; libuv's pool, uvloop's, has 4 per
/// process.
const MAX_THREADS: usize = 32;

/// getaddrinfo's arguments in C form.
struct Query {
    host: Option<CString>,
    port: Option<CString>,
    family: libc::c_int,
    socktype: libc::c_int,
    protocol: libc::c_int,
    flags: libc::c_int,
}

/// One `addrinfo` of an answer, copied out of libc's list.
struct Entry {
    family: libc::c_int,
    socktype: libc::c_int,
    protocol: libc::c_int,
    canonname: Option<Vec<u8>>,
    addr: SockAddr,
}

enum Answer {
    Found(Vec<Entry>),
    /// getaddrinfo's error code, and errno for `EAI_SYSTEM`.
    Failed {
        code: libc::c_int,
        errno: i32,
    },
}

/// Where a loop's answers wait for the loop's thread.
struct Inbox {
    state: Mutex<InboxState>,
}

struct InboxState {
    answers: Vec<(u64, Answer)>,
    /// The eventfd the loop watches; `None` once the resolver is closed, so
    /// that closing releases the descriptor at once, not when the last
    /// lookup still running lets go of the inbox.
    doorbell: Option<EventFd>,
}

impl Inbox {
    fn deliver(&self, id: u64, answer: Answer) {
        let mut state = self.state.lock();
        let Some(doorbell) = &state.doorbell else {
            return;
        };
        // A full counter (2^64 - 2 unread rings) cannot happen: the loop reads
        // it whenever it is readable.
        let _ = doorbell.write(1);
        state.answers.push((id, answer));
    }

    /// The answers that arrived, with the doorbell quietened.
    fn collect(&self) -> Vec<(u64, Answer)> {
        let mut state = self.state.lock();
        if let Some(doorbell) = &state.doorbell {
            let _ = doorbell.read();
        }
        std::mem::take(&mut state.answers)
    }

    fn is_closed(&self) -> bool {
        self.state.lock().doorbell.is_none()
    }

    /// Closes the doorbell and drops answers not collected.
    fn close(&self) -> Vec<(u64, Answer)> {
        let mut state = self.state.lock();
        state.doorbell = None;
        std::mem::take(&mut state.answers)
    }
}

struct Lookup {
    id: u64,
    query: Query,
    inbox: Arc<Inbox>,
}

/// The process-wide pool of lookup threads.
///
/// Threads start on demand and, like asyncio's executor threads after
/// `shutdown_default_executor`, are gone once no loop uses the pool: when the
/// last open resolver closes, the idle threads leave and are joined (a busy
/// one leaves after its lookup). A process that forks after its loops have
/// closed is then single-threaded again, as Python 3.12+ checks.
struct Pool {
    generation: u64,
    state: Mutex<PoolState>,
    /// Signalled when work arrives or the pool retires.
    work: Condvar,
    /// Signalled when a thread leaves.
    left: Condvar,
}

#[derive(Default)]
struct PoolState {
    waiting: VecDeque<Lookup>,
    idle: usize,
    /// Threads running `serve`.
    threads: usize,
    /// Threads running a lookup.
    busy: usize,
    open_resolvers: usize,
    /// Set when the last resolver closed; threads leave once out of work.
    retiring: bool,
    /// Every thread started and not joined yet.
    handles: Vec<JoinHandle<()>>,
    /// Threads that have left `serve` and only need joining.
    leaving: Vec<ThreadId>,
}

/// The current pool (leaked: it lives as long as the process, and a forked
/// child replaces it without touching it).
static POOL: AtomicPtr<Pool> = AtomicPtr::new(ptr::null_mut());

fn pool() -> &'static Pool {
    let generation = fork::generation();
    let current = POOL.load(Ordering::Acquire);
    // SAFETY: a non-null POOL points to a leaked, never freed Pool.
    if let Some(pool) = unsafe { current.as_ref() } {
        if pool.generation == generation {
            return pool;
        }
    }
    let fresh = Box::into_raw(Box::new(Pool {
        generation,
        state: Mutex::new(PoolState::default()),
        work: Condvar::new(),
        left: Condvar::new(),
    }));
    match POOL.compare_exchange(current, fresh, Ordering::AcqRel, Ordering::Acquire) {
        // SAFETY: just leaked above.
        Ok(_) => unsafe { &*fresh },
        Err(winner) => {
            // Another thread installed one first: use it, free ours.
            // SAFETY: `fresh` was never shared; `winner` is leaked like all pools.
            unsafe {
                drop(Box::from_raw(fresh));
                &*winner
            }
        }
    }
}

impl Pool {
    /// Queues `lookup`, starting a thread if none is free (up to the limit).
    fn submit(&'static self, lookup: Lookup) -> std::io::Result<()> {
        let mut state = self.state.lock();
        state.retiring = false;
        state.waiting.push_back(lookup);
        if state.idle >= state.waiting.len() || state.threads >= MAX_THREADS {
            self.work.notify_one();
            return Ok(());
        }
        let spawned = std::thread::Builder::new()
            .name("ferroloop-dns".to_owned())
            .spawn(move || self.serve());
        match spawned {
            Ok(handle) => {
                state.threads += 1;
                state.handles.push(handle);
                Ok(())
            }
            Err(err) if state.threads > 0 => {
                // The running threads will get to it.
                drop(err);
                self.work.notify_one();
                Ok(())
            }
            Err(err) => {
                state.waiting.pop_back();
                Err(err)
            }
        }
    }

    /// A pool thread's life: run lookups as they come, until the pool retires.
    fn serve(&self) {
        let mut state = self.state.lock();
        while let Some(lookup) = self.next_lookup(&mut state) {
            let answer = MutexGuard::unlocked(&mut state, || resolve(&lookup.query));
            // Delivered under the pool's lock: by the time the loop sees the
            // answer, this thread is no longer busy, so a retirement that
            // follows waits for it to leave.
            lookup.inbox.deliver(lookup.id, answer);
            state.busy -= 1;
        }
    }

    /// The next lookup to run, waiting for one; None when the thread should leave.
    fn next_lookup(&self, state: &mut MutexGuard<'_, PoolState>) -> Option<Lookup> {
        loop {
            if let Some(lookup) = state.waiting.pop_front() {
                if lookup.inbox.is_closed() {
                    // Its loop is closed: nobody waits for the answer.
                    continue;
                }
                state.busy += 1;
                return Some(lookup);
            }
            if state.retiring {
                state.threads -= 1;
                state.leaving.push(std::thread::current().id());
                self.left.notify_all();
                return None;
            }
            state.idle += 1;
            self.work.wait(state);
            state.idle -= 1;
        }
    }

    fn resolver_opened(&self) {
        self.state.lock().open_resolvers += 1;
    }

    /// When the last resolver closes, sends the threads that are not running a
    /// lookup away and joins them (they leave at once); busy ones leave after
    /// their lookup and are joined by a later retirement.
    fn resolver_closed(&self) {
        let leavers = {
            let mut state = self.state.lock();
            state.open_resolvers = state.open_resolvers.saturating_sub(1);
            if state.open_resolvers > 0 || state.threads == 0 && state.handles.is_empty() {
                return;
            }
            state.retiring = true;
            self.work.notify_all();
            while state.threads > state.busy {
                self.left.wait(&mut state);
            }
            let leaving = std::mem::take(&mut state.leaving);
            let (gone, staying) = std::mem::take(&mut state.handles)
                .into_iter()
                .partition(|handle| leaving.contains(&handle.thread().id()));
            state.handles = staying;
            gone
        };
        for handle in leavers {
            let _ = handle.join();
        }
    }
}

/// The blocking `getaddrinfo(3)` call, with its list copied into Rust values.
fn resolve(query: &Query) -> Answer {
    // SAFETY: an all-zero addrinfo is the documented "no hints" value.
    let mut hints: libc::addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_family = query.family;
    hints.ai_socktype = query.socktype;
    hints.ai_protocol = query.protocol;
    hints.ai_flags = query.flags;
    let mut list: *mut libc::addrinfo = ptr::null_mut();
    let host = query
        .host
        .as_ref()
        .map_or(ptr::null(), |host| host.as_ptr());
    let port = query
        .port
        .as_ref()
        .map_or(ptr::null(), |port| port.as_ptr());
    // SAFETY: NUL-terminated strings or NULL, valid hints, a valid out-pointer.
    let code = unsafe { libc::getaddrinfo(host, port, &hints, &mut list) };
    if code != 0 {
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        return Answer::Failed { code, errno };
    }
    let mut entries = Vec::new();
    let mut next = list;
    // SAFETY: getaddrinfo returned a valid list, freed only after the walk.
    while let Some(info) = unsafe { next.as_ref() } {
        entries.push(entry(info));
        next = info.ai_next;
    }
    // SAFETY: the list getaddrinfo returned, freed once.
    unsafe { libc::freeaddrinfo(list) };
    Answer::Found(entries)
}

fn entry(info: &libc::addrinfo) -> Entry {
    let ((), addr) = sockaddr::filled_by(|storage, len| {
        // SAFETY: `len` is filled_by's in/out length; `ai_addr` points to
        // `ai_addrlen` bytes, `storage` to `*len`: the smaller count is copied.
        unsafe {
            let count = info.ai_addrlen.min(*len);
            if !info.ai_addr.is_null() {
                ptr::copy_nonoverlapping(
                    info.ai_addr.cast::<u8>(),
                    storage.cast::<u8>(),
                    count as usize,
                );
            }
            *len = count;
        }
    });
    let canonname = (!info.ai_canonname.is_null())
        // SAFETY: a NUL-terminated string owned by the list.
        .then(|| {
            unsafe { CStr::from_ptr(info.ai_canonname) }
                .to_bytes()
                .to_vec()
        });
    Entry {
        family: info.ai_family,
        socktype: info.ai_socktype,
        protocol: info.ai_protocol,
        canonname,
        addr,
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A loop's side of the resolver: its doorbell (watched by the loop) and the
/// futures waiting for answers.
#[pyclass(frozen, module = "ferroloop._core")]
pub struct Resolver {
    loop_: Py<Loop>,
    /// The pool this resolver counts as a user of (the pool of the process
    /// it was made in).
    pool: &'static Pool,
    closed: AtomicBool,
    /// The doorbell's number, for unwatching (the inbox owns the descriptor).
    doorbell_fd: std::os::fd::RawFd,
    inbox: Arc<Inbox>,
    waiting: Mutex<FxHashMap<u64, Py<PyAny>>>,
}

#[pymethods]
impl Resolver {
    /// A resolver for `event_loop`, watching its doorbell there.
    #[new]
    fn new(py: Python<'_>, event_loop: Bound<'_, Loop>) -> PyResult<Py<Self>> {
        let doorbell = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(|errno| os_error(py, errno))?;
        let fd = doorbell.as_raw_fd();
        let resolver = Py::new(
            py,
            Resolver {
                loop_: event_loop.clone().unbind(),
                pool: pool(),
                // Open once the loop watches its doorbell (below).
                closed: AtomicBool::new(true),
                doorbell_fd: fd,
                inbox: Arc::new(Inbox {
                    state: Mutex::new(InboxState {
                        answers: Vec::new(),
                        doorbell: Some(doorbell),
                    }),
                }),
                waiting: Mutex::new(FxHashMap::default()),
            },
        )?;
        event_loop.get().native_watch(
            py,
            fd,
            resolver.clone_ref(py).into_any(),
            dispatch,
            Interest::level(true, false),
        )?;
        resolver.get().pool.resolver_opened();
        resolver.get().closed.store(false, Ordering::Release);
        Ok(resolver)
    }

    /// Starts `getaddrinfo(host, port, family, type, proto, flags)`; `future`
    /// gets the list `socket.getaddrinfo` would return, or its exception.
    /// `host` and `port` are bytes (or None) as the `socket` module passes
    /// them to C.
    #[allow(clippy::too_many_arguments)]
    fn resolve(
        &self,
        host: Option<&Bound<'_, PyBytes>>,
        port: Option<&Bound<'_, PyBytes>>,
        family: libc::c_int,
        socktype: libc::c_int,
        protocol: libc::c_int,
        flags: libc::c_int,
        future: Py<PyAny>,
    ) -> PyResult<()> {
        if self.loop_.get().closed() || self.closed.load(Ordering::Acquire) {
            return Err(PyRuntimeError::new_err("Event loop is closed"));
        }
        if self.pool.generation != fork::generation() {
            return Err(PyRuntimeError::new_err(
                "this resolver was made before fork(); use a new event loop in the child",
            ));
        }
        let query = Query {
            host: host.map(c_string).transpose()?,
            port: port.map(c_string).transpose()?,
            family,
            socktype,
            protocol,
            flags,
        };
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        self.waiting.lock().insert(id, future);
        let lookup = Lookup {
            id,
            query,
            inbox: self.inbox.clone(),
        };
        if let Err(err) = self.pool.submit(lookup) {
            let future = self.waiting.lock().remove(&id);
            drop(future);
            return Err(PyOSError::new_err(err.to_string()));
        }
        Ok(())
    }

    /// Stops watching the doorbell; answers still to come are dropped.
    fn close(&self) {
        // Unwatch before closing: the number may be reused at once.
        Python::attach(|py| self.loop_.get().native_unwatch(py, self.doorbell_fd));
        let answers = self.inbox.close();
        let waiting = std::mem::take(&mut *self.waiting.lock());
        drop((answers, waiting));
        self.leave_pool();
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.loop_)?;
        if let Some(waiting) = self.waiting.try_lock() {
            for future in waiting.values() {
                visit.call(future)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        let waiting = self.waiting.try_lock().map(|mut w| std::mem::take(&mut *w));
        drop(waiting);
    }
}

impl Resolver {
    /// Stops counting as a user of the pool (once; not in a forked child,
    /// whose pool is another).
    fn leave_pool(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) && self.pool.generation == fork::generation() {
            self.pool.resolver_closed();
        }
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.leave_pool();
    }
}

fn c_string(bytes: &Bound<'_, PyBytes>) -> PyResult<CString> {
    CString::new(bytes.as_bytes())
        .map_err(|_| pyo3::exceptions::PyValueError::new_err("embedded null byte"))
}

/// The loop's entry point when the doorbell rings: completes the futures of
/// every answer that arrived.
fn dispatch(target: &Bound<'_, PyAny>, _loop: &Bound<'_, Loop>, _: Readiness) -> PyResult<()> {
    let py = target.py();
    let resolver = target.cast::<Resolver>()?.get();
    let answers = resolver.inbox.collect();
    let mut first_error = None;
    for (id, answer) in answers {
        let Some(future) = resolver.waiting.lock().remove(&id) else {
            continue;
        };
        if let Err(err) = complete(py, future.bind(py), answer) {
            first_error.get_or_insert(err);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Sets `future`'s outcome unless it is already done (cancelled by its waiter).
fn complete(py: Python<'_>, future: &Bound<'_, PyAny>, answer: Answer) -> PyResult<()> {
    if future
        .call_method0(pyo3::intern!(py, "done"))?
        .is_truthy()?
    {
        return Ok(());
    }
    match to_python(py, answer) {
        Ok(list) => future.call_method1(pyo3::intern!(py, "set_result"), (list,))?,
        Err(err) => future.call_method1(pyo3::intern!(py, "set_exception"), (err.value(py),))?,
    };
    Ok(())
}

static GAIERROR: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static FAMILIES: EnumMembers = EnumMembers::new("AddressFamily");
static KINDS: EnumMembers = EnumMembers::new("SocketKind");

/// What `socket.getaddrinfo` returns for `answer`, or the exception it raises.
fn to_python(py: Python<'_>, answer: Answer) -> PyResult<Bound<'_, PyList>> {
    let entries = match answer {
        Answer::Found(entries) => entries,
        Answer::Failed { code, errno } => return Err(lookup_error(py, code, errno)),
    };
    let list = PyList::empty(py);
    for entry in entries {
        let canonname = match entry.canonname {
            None => PyString::new(py, ""),
            Some(bytes) => match std::str::from_utf8(&bytes) {
                Ok(text) => PyString::new(py, text),
                Err(err) => {
                    let error = PyUnicodeDecodeError::new_utf8(py, &bytes, err)?;
                    return Err(PyErr::from_value(error.into_any()));
                }
            },
        };
        let item = PyTuple::new(
            py,
            [
                FAMILIES.member_or_int(py, entry.family)?,
                KINDS.member_or_int(py, entry.socktype)?,
                entry.protocol.into_pyobject(py)?.into_any(),
                canonname.into_any(),
                sockaddr::to_python(py, &entry.addr)?,
            ],
        )?;
        list.append(item)?;
    }
    Ok(list)
}

/// One of `socket`'s int enums, with its members by value as they are met
/// (an enum's members never change; calling the enum costs ~1 µs).
struct EnumMembers {
    name: &'static str,
    enum_type: PyOnceLock<Py<PyAny>>,
    by_value: PyOnceLock<Py<PyDict>>,
}

impl EnumMembers {
    const fn new(name: &'static str) -> Self {
        Self {
            name,
            enum_type: PyOnceLock::new(),
            by_value: PyOnceLock::new(),
        }
    }

    /// `socket`'s `_intenum_converter`: the member for `value`, else the int.
    fn member_or_int<'py>(
        &self,
        py: Python<'py>,
        value: libc::c_int,
    ) -> PyResult<Bound<'py, PyAny>> {
        let by_value = self
            .by_value
            .get_or_init(py, || PyDict::new(py).unbind())
            .bind(py);
        if let Some(member) = by_value.get_item(value)? {
            return Ok(member);
        }
        let enum_type = self.enum_type.import(py, "socket", self.name)?;
        match enum_type.call1((value,)) {
            Ok(member) => {
                by_value.set_item(value, &member)?;
                Ok(member)
            }
            Err(err) if err.is_instance_of::<pyo3::exceptions::PyValueError>(py) => {
                Ok(value.into_pyobject(py)?.into_any())
            }
            Err(err) => Err(err),
        }
    }
}

/// The exception `socket.getaddrinfo` raises for error `code`.
fn lookup_error(py: Python<'_>, code: libc::c_int, errno: i32) -> PyErr {
    if code == libc::EAI_SYSTEM {
        return os_error(py, nix::errno::Errno::from_raw(errno));
    }
    // SAFETY: gai_strerror returns a static NUL-terminated string.
    let message = unsafe { CStr::from_ptr(libc::gai_strerror(code)) }
        .to_string_lossy()
        .into_owned();
    match GAIERROR.import(py, "socket", "gaierror") {
        Ok(gaierror) => match gaierror.call1((code, message)) {
            Ok(exception) => PyErr::from_value(exception),
            Err(err) => err,
        },
        Err(err) => err,
    }
}

/// Adds this module's classes to `ferroloop._core`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Resolver>()?;
    Ok(())
}
