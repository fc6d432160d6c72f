//! The event loop core: the ready queue, the timer heap, the poller and the
//! iteration that ties them together (`run_once`).
//!
//! One iteration, in asyncio's order:
//! 1. drop cancelled timers from the heap (compacting it when they dominate);
//! 2. decide how long to sleep: not at all if callbacks are ready or a stop
//!    was requested, else until the earliest timer, else until woken;
//! 3. wait in epoll with the GIL released, then queue the callbacks of the
//!    descriptors (and signals) that became ready;
//! 4. queue the timers that are due (never before their deadline);
//! 5. run exactly the callbacks queued so far, in FIFO order; callbacks they
//!    schedule run in the next iteration.
//!
//! All mutable state sits behind one mutex that is never held while Python
//! code runs (including object destructors): a callback may re-enter the loop
//! freely, and `call_soon_threadsafe` from another thread only needs the lock
//! for a push.

use std::collections::VecDeque;
use std::mem::ManuallyDrop;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyFloat, PyTuple, PyType};
use pyo3::{ffi, PyTraverseError};

use crate::call_soon_descriptor;
use crate::errors::os_error;
use crate::fd_watchers::{Direction, Dispatch, FdWatchers, NativeWatch};
use crate::gil_locked::GilLocked;
use crate::handles::{
    context_or_copy, report_callback_error, Args, Callback, Handle, HandlePool, TimerHandle,
    TimerStats,
};
use crate::poller::{Interest, Poller, Readiness};
use crate::python_api;
use crate::signals::SignalChannel;
use crate::stream::StreamTransport;
use crate::timers::TimerHeap;

/// asyncio never sleeps longer than a day in one wait, so a clock jump or an
/// absurd timer cannot park the loop forever.
const MAXIMUM_SLEEP_MS: f64 = 24.0 * 3600.0 * 1000.0;

/// Something the loop will run in the current or next iteration.
pub enum Job {
    Call(Py<Handle>),
    Timer(Py<TimerHandle>),
    /// Readiness for a native watcher, dispatched without a Python call.
    Native {
        target: Py<PyAny>,
        dispatch: Dispatch,
        readiness: Readiness,
    },
}

impl Job {
    /// Drops the job's reference with the GIL known to be held: dropping a
    /// `Py` directly first asks a thread-local whether it is.
    fn release(self, py: Python<'_>) {
        match self {
            Job::Call(handle) => drop(handle.into_bound(py)),
            Job::Timer(timer) => drop(timer.into_bound(py)),
            Job::Native { target, .. } => drop(target.into_bound(py)),
        }
    }

    /// One-shot handles are not tracked by the collector: the loop reports
    /// their contents on their behalf (each sits in exactly one queue).
    fn visit(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self {
            Job::Call(handle) if handle.get().slot.is_one_shot() => handle.get().slot.visit(visit),
            Job::Call(handle) => visit.call(handle),
            Job::Timer(timer) => timer.get().slot.visit(visit),
            Job::Native { target, .. } => visit.call(target),
        }
    }
}

struct LoopState {
    ready: VecDeque<Job>,
    /// Callbacks that join `ready` after the next poll's I/O callbacks, where
    /// the callback of an event that poll reports would be: for outcomes the
    /// loop learned without polling (a connection complete as it started)
    /// that asyncio learns from its next poll.
    after_next_poll: Vec<Job>,
    timers: TimerHeap,
    watchers: FdWatchers,
    signal_handlers: std::collections::HashMap<i32, Py<Handle>>,
    signal_channel: Option<SignalChannel>,
}

/// Objects taken out of the state under the lock, dropped after it is released.
#[derive(Default)]
struct Garbage {
    parts: ManuallyDrop<GarbageParts>,
}

#[derive(Default)]
struct GarbageParts {
    handles: Vec<Py<Handle>>,
    timers: Vec<Py<TimerHandle>>,
    jobs: Vec<Job>,
    natives: Vec<Py<PyAny>>,
}

impl GarbageParts {
    /// True while no vector has allocated: there is nothing to drop.
    fn owns_nothing(&self) -> bool {
        self.handles.capacity() == 0
            && self.timers.capacity() == 0
            && self.jobs.capacity() == 0
            && self.natives.capacity() == 0
    }
}

impl Drop for Garbage {
    fn drop(&mut self) {
        // Two of these are made every iteration, nearly always empty; the
        // drop glue of four empty vectors of Python references still costs
        // ~100 instructions (it is not elided), about 5% of a call_soon
        // round trip. An unallocated vector owns nothing, so skipping it
        // leaks nothing.
        if !self.parts.owns_nothing() {
            // SAFETY: `parts` is dropped exactly once, here, and never used after.
            unsafe { ManuallyDrop::drop(&mut self.parts) }
        }
    }
}

impl std::ops::Deref for Garbage {
    type Target = GarbageParts;

    fn deref(&self) -> &GarbageParts {
        &self.parts
    }
}

impl std::ops::DerefMut for Garbage {
    fn deref_mut(&mut self) -> &mut GarbageParts {
        &mut self.parts
    }
}

/// The native half of `ferroloop.EventLoop`. The Python subclass adds the
/// once-per-loop and once-per-connection API on top of it.
#[pyclass(
    frozen,
    subclass,
    dict,
    weakref,
    module = "ferroloop._core",
    name = "Loop"
)]
pub struct Loop {
    state: GilLocked<LoopState>,
    /// The batch being run by the current iteration; its buffer is reused.
    batch: GilLocked<VecDeque<Job>>,
    /// The readiness a poll reported, emptied after queueing; its buffer is
    /// reused so that busy iterations allocate nothing.
    readiness: GilLocked<Vec<Readiness>>,
    poller: Mutex<Option<Arc<Poller>>>,
    timer_stats: Arc<TimerStats>,
    closed: AtomicBool,
    stopping: AtomicBool,
    debug: AtomicBool,
    /// The running thread's id, or 0 when the loop is not running.
    thread_id: AtomicU64,
    task_factory: GilLocked<Option<Py<PyAny>>>,
    handle_pool: HandlePool,
    /// `{"loop": self}` while the loop runs: the keyword arguments of every
    /// Future and Task it creates. Neither C type takes vectorcall, so a call
    /// with keyword names would build this dict afresh each time. It exists
    /// only while running so that it never keeps a stopped loop alive.
    own_kwargs: GilLocked<Option<Py<PyDict>>>,
    /// `self.call_soon` bound once while the loop runs, for CPython 3.11's C
    /// Future and Task (call_soon_descriptor.rs); None otherwise, and on later
    /// Pythons. Only while running, for the same reason as `own_kwargs`.
    call_soon_of_run: GilLocked<Option<Py<PyAny>>>,
    /// The loop's class defines its own `time` (checked when a run starts).
    class_time: AtomicBool,
    /// Native interest was withdrawn since the last poll (`FdWatchers`'s
    /// list is not empty): the queued readiness must be checked against it.
    withdrawals: AtomicBool,
    /// Iterations run, counting for the busy loop's checks (signals, GIL).
    busy_iterations: AtomicU32,
}

/// A busy loop (one that does not sleep) runs pending Python signal handlers,
/// and lets threads that asked for the GIL take it, this often, in iterations.
const BUSY_CHECK_INTERVAL: u32 = 16;

/// A Python function that does nothing (see `let_waiting_threads_in`).
static GIL_CHECKPOINT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Lets a thread that asked for the GIL take it. The interpreter hands the
/// GIL over at a bytecode boundary once another thread has waited a switch
/// interval and asked for it, which any Python callback reaches; a loop kept
/// busy by callbacks that are all native code reaches none, and would keep
/// every other thread (executor workers, `call_soon_threadsafe` callers)
/// waiting until it sleeps. Calling a Python function runs one such boundary
/// (its `RESUME`), where CPython hands the GIL over if, and only if, it was
/// asked for. Releasing and retaking the GIL instead is no substitute: the
/// release wakes the waiting thread before its switch interval is up, so it
/// never asks, and the retake wins the race for the GIL.
fn let_waiting_threads_in(py: Python<'_>) -> PyResult<()> {
    let checkpoint = GIL_CHECKPOINT.get_or_try_init(py, || {
        py.eval(c"lambda: None", None, None).map(Bound::unbind)
    })?;
    checkpoint.call0(py)?;
    Ok(())
}

fn current_thread_id() -> u64 {
    // SAFETY: pthread_self has no preconditions. It is also what
    // threading.get_ident() returns on Linux.
    unsafe { libc::pthread_self() as u64 }
}

/// asyncio's error for using a closed loop.
fn closed_error() -> PyErr {
    PyRuntimeError::new_err("Event loop is closed")
}

/// `time.monotonic()`'s clock, at full resolution.
pub fn monotonic() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

impl Loop {
    /// `{"loop": self}` if the loop is running (see the field).
    pub fn own_kwargs<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyDict>> {
        self.own_kwargs
            .lock(py)
            .as_ref()
            .map(|kwargs| kwargs.bind(py).clone())
    }

    /// The bound `call_soon` held for this run (see the field).
    pub fn call_soon_of_run(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.call_soon_of_run
            .lock(py)
            .as_ref()
            .map(|bound| bound.clone_ref(py))
    }

    pub(crate) fn check_closed(&self) -> PyResult<()> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(closed_error());
        }
        Ok(())
    }

    pub(crate) fn is_debug(&self) -> bool {
        self.debug.load(Ordering::Relaxed)
    }

    /// In debug mode, asyncio refuses thread-unsafe calls from other threads.
    fn check_thread(&self) -> PyResult<()> {
        if !self.is_debug() {
            return Ok(());
        }
        let owner = self.thread_id.load(Ordering::Relaxed);
        if owner != 0 && owner != current_thread_id() {
            return Err(PyRuntimeError::new_err(
                "Non-thread-safe operation invoked on an event loop other than the current one",
            ));
        }
        Ok(())
    }

    fn poller(&self) -> PyResult<Arc<Poller>> {
        self.poller.lock().clone().ok_or_else(closed_error)
    }

    fn source_traceback(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        if self.is_debug() {
            python_api::extract_stack(py).map(Some)
        } else {
            Ok(None)
        }
    }

    fn new_callback(
        &self,
        py: Python<'_>,
        method: &str,
        callback: &Bound<'_, PyAny>,
        args: Args,
        context: Option<Py<PyAny>>,
    ) -> PyResult<(Callback, Py<PyAny>)> {
        check_callback(py, method, callback, self.is_debug())?;
        let callback = Callback {
            func: callback.clone().unbind(),
            args,
        };
        Ok((callback, context_or_copy(py, context)?))
    }

    fn schedule(&self, py: Python<'_>, job: Job) {
        self.state.lock(py).ready.push_back(job);
    }

    /// `create_task(coro, *, name=None, context=None, **kwargs)`: schedule
    /// `coro` as an `asyncio.Task` (or through the task factory); the method
    /// itself is a raw fast call (see `fast_calls`).
    pub fn create_task<'py>(
        slf: &Bound<'py, Self>,
        coro: &Bound<'py, PyAny>,
        name: Option<&Bound<'py, PyAny>>,
        context: Option<&Bound<'py, PyAny>>,
        kwargs: Option<Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let this = slf.get();
        this.check_closed()?;
        let none = py.None().into_bound(py);
        let name = name.unwrap_or(&none);
        let context = context.unwrap_or(&none);
        // The guard ends with this statement: the slow path runs Python.
        let has_factory = this.task_factory.lock(py).is_some();
        if has_factory || kwargs.is_some() {
            let kwargs = kwargs.unwrap_or_else(|| PyDict::new(py));
            return slf.call_method1(
                pyo3::intern!(py, "_create_task_slow"),
                (coro, name, context, kwargs),
            );
        }
        python_api::new_task(py, coro, slf.as_any(), name, context)
    }

    /// `call_soon(callback, *args, context=context)`; the method itself is a
    /// raw fast call (see `fast_calls`).
    pub fn call_soon(
        &self,
        py: Python<'_>,
        callback: &Bound<'_, PyAny>,
        args: Args,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<Handle>> {
        self.check_closed()?;
        self.check_thread()?;
        let callback = self.new_callback(py, "call_soon", callback, args, context)?;
        self.schedule_one_shot(py, callback, self.source_traceback(py)?)
    }

    /// Queues a one-shot handle (a reused one when possible) for the next
    /// iteration and returns it.
    fn schedule_one_shot(
        &self,
        py: Python<'_>,
        (callback, context): (Callback, Py<PyAny>),
        source_traceback: Option<Py<PyAny>>,
    ) -> PyResult<Py<Handle>> {
        let handle = self
            .handle_pool
            .one_shot(py, callback, context, source_traceback)?;
        self.schedule(py, Job::Call(handle.clone_ref(py)));
        Ok(handle)
    }

    fn schedule_timer(
        &self,
        py: Python<'_>,
        (when, when_given): (f64, Option<Py<PyAny>>),
        (callback, context): (Callback, Py<PyAny>),
    ) -> PyResult<Py<TimerHandle>> {
        let source = self.source_traceback(py)?;
        let stats = self.timer_stats.clone();
        let timer =
            TimerHandle::schedule(py, callback, context, (when, when_given), stats, source)?;
        self.state.lock(py).timers.push(when, timer.clone_ref(py));
        Ok(timer)
    }

    fn set_watch(
        &self,
        py: Python<'_>,
        fd: RawFd,
        direction: Direction,
        handle: Option<Py<Handle>>,
    ) -> PyResult<bool> {
        let poller = self.poller()?;
        let (change, result) = {
            let mut state = self.state.lock(py);
            let change = state.watchers.set(fd, direction, handle);
            let result = poller.set_interest(fd, change.before, change.after);
            if result.is_err() {
                // Put back what was there, so a failed add leaves no trace.
                let restored = state.watchers.set(fd, direction, change.replaced);
                (restored, result)
            } else {
                (change, result)
            }
        };
        result.map_err(|errno| os_error(py, errno))?;
        match change.replaced {
            Some(old) => {
                old.get().cancel_now(py);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// How long the next wait may sleep: 0 if anything is ready or a stop
    /// is pending, until the earliest timer otherwise, or forever (-1); and
    /// whether any descriptor (or the signal channel) is watched at all.
    fn sleep_budget_ms(
        &self,
        py: Python<'_>,
        garbage: &mut Garbage,
        now: Option<f64>,
    ) -> (i32, bool) {
        let mut state = self.state.lock(py);
        state.timers.discard_cancelled(&mut garbage.timers);
        let watching = !state.watchers.is_empty() || state.signal_channel.is_some();
        if !state.ready.is_empty()
            || !state.after_next_poll.is_empty()
            || self.stopping.load(Ordering::Relaxed)
        {
            return (0, watching);
        }
        let timeout = match state.timers.next_deadline() {
            Some(deadline) => sleep_ms_until(deadline, now.unwrap_or_else(monotonic)),
            None => -1,
        };
        (timeout, watching)
    }

    /// Steps 1-4 of an iteration: sleep as long as allowed, then queue
    /// everything that became ready.
    fn collect_ready(&self, py: Python<'_>, poller: &Poller, clock: &Clock<'_>) -> PyResult<()> {
        let mut garbage = Garbage::default();
        let now = clock.patched_now()?;
        let (mut timeout_ms, mut watching) = self.sleep_budget_ms(py, &mut garbage, now);
        if timeout_ms != 0 {
            // Announce the sleep, then look again: a call_soon_threadsafe that
            // slipped in between either is seen now or writes the eventfd.
            poller.prepare_to_sleep();
            (timeout_ms, watching) = self.sleep_budget_ms(py, &mut garbage, now);
        }
        drop(garbage);

        // Poll every iteration, as asyncio does: code written against asyncio
        // (CPython's own tests among it) expects I/O to be noticed by the
        // next iteration even while callbacks keep the loop busy.
        // A non-blocking poll with nothing but the waker registered can only
        // report wake-ups, and those matter only to a sleeping loop (what
        // they announce is already in the ready queue): skip the system call.
        let mut events = Vec::new();
        let waited = if timeout_ms == 0 && !watching {
            Ok(())
        } else {
            events = std::mem::take(&mut *self.readiness.lock(py));
            if timeout_ms == 0 {
                poller.wait(0, &mut events)
            } else {
                py.detach(|| poller.wait(timeout_ms, &mut events))
            }
        };
        poller.done_sleeping();
        waited.map_err(|errno| os_error(py, errno))?;
        // Run Python-level signal handlers (Ctrl-C raises KeyboardInterrupt
        // here) after every sleep, which a signal cuts short. A busy loop
        // runs them at its next Python bytecode, as inside asyncio's own loop,
        // and here at least every BUSY_CHECK_INTERVAL iterations, so that
        // callbacks that are all native code cannot keep Ctrl-C out, nor
        // other threads (see `let_waiting_threads_in`).
        if timeout_ms != 0 {
            py.check_signals()?;
        } else if self
            .count_busy_iteration()
            .is_multiple_of(BUSY_CHECK_INTERVAL)
        {
            py.check_signals()?;
            let_waiting_threads_in(py)?;
        }
        // Read before taking the state lock: a patched clock is Python code.
        let now = clock.patched_now()?;

        let mut garbage = Garbage::default();
        {
            let mut state = self.state.lock(py);
            // A new poll reports only what is wanted now.
            self.withdrawals.store(false, Ordering::Relaxed);
            state.watchers.clear_withdrawals();
            if !events.is_empty() {
                queue_io(py, &mut state, poller, &events, &mut garbage);
            }
            if !state.after_next_poll.is_empty() {
                let LoopState {
                    ready,
                    after_next_poll,
                    ..
                } = &mut *state;
                ready.extend(after_next_poll.drain(..));
            }
            // No clock read in iterations without timers.
            if !state.timers.is_empty() {
                let LoopState { timers, ready, .. } = &mut *state;
                timers.pop_due(now.unwrap_or_else(monotonic), |timer| {
                    if timer.get().is_cancelled() {
                        garbage.timers.push(timer);
                    } else {
                        ready.push_back(Job::Timer(timer));
                    }
                });
            }
        }
        drop(garbage);
        // An early return above only costs the next poll a new buffer.
        if events.capacity() > 0 {
            events.clear();
            *self.readiness.lock(py) = events;
        }
        Ok(())
    }

    /// Counts a busy iteration; returns the count before it. Only the
    /// running loop's thread counts, so a plain load and store (no locked
    /// read-modify-write) is exact.
    fn count_busy_iteration(&self) -> u32 {
        let count = self.busy_iterations.load(Ordering::Relaxed);
        self.busy_iterations
            .store(count.wrapping_add(1), Ordering::Relaxed);
        count
    }

    /// Step 5: run the callbacks queued before this point.
    fn run_ready(&self, slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let mut batch = std::mem::take(&mut *self.batch.lock(py));
        std::mem::swap(&mut batch, &mut self.state.lock(py).ready);
        let debug = self.is_debug();
        let mut outcome = Ok(());
        while let Some(mut job) = batch.pop_front() {
            if self.withdrawals.load(Ordering::Relaxed) && !self.still_wanted(py, &mut job) {
                job.release(slf.py());
                continue;
            }
            let result = if debug {
                run_job_timed(slf, &job)
            } else {
                run_job(slf, &job)
            };
            match job {
                Job::Call(handle) => self.handle_pool.recycle(slf.py(), handle),
                other => other.release(slf.py()),
            }
            if let Err(err) = result {
                // Whatever did not run yet stays queued, ahead of newer callbacks.
                let mut state = self.state.lock(py);
                while let Some(job) = batch.pop_back() {
                    state.ready.push_front(job);
                }
                outcome = Err(err);
                break;
            }
        }
        // Give the emptied buffer back. What it replaces is normally the
        // empty, unallocated queue `take` left, whose drop glue is not worth
        // a call; forgetting that one leaks nothing.
        let placeholder = std::mem::replace(&mut *self.batch.lock(py), batch);
        if placeholder.capacity() == 0 {
            std::mem::forget(placeholder);
        }
        outcome
    }

    /// False for a native job whose every ready direction was withdrawn
    /// since the poll; otherwise true, with the withdrawn directions removed.
    fn still_wanted(&self, py: Python<'_>, job: &mut Job) -> bool {
        let Job::Native { readiness, .. } = job else {
            return true;
        };
        *readiness = self.state.lock(py).watchers.still_wanted(*readiness);
        readiness.readable || readiness.writable
    }

    /// One iteration. `poller` is the loop's own, which the caller holds
    /// (a running loop cannot be closed, so `run_forever` fetches it once).
    fn run_once(&self, slf: &Bound<'_, Self>, poller: &Poller) -> PyResult<()> {
        self.collect_ready(slf.py(), poller, &Clock::of(slf)?)?;
        self.run_ready(slf)
    }

    fn clear_all(&self, py: Python<'_>) -> Garbage {
        let mut garbage = Garbage::default();
        let mut state = self.state.lock(py);
        garbage.jobs.extend(state.ready.drain(..));
        garbage.jobs.append(&mut state.after_next_poll);
        state.timers.drain(&mut garbage.timers);
        let parts: &mut GarbageParts = &mut garbage;
        state.watchers.drain(&mut parts.handles, &mut parts.natives);
        garbage
            .handles
            .extend(state.signal_handlers.drain().map(|(_, handle)| handle));
        state.signal_channel = None;
        drop(state);
        garbage.handles.extend(self.handle_pool.clear(py));
        garbage
    }
}

/// The instance dict slot of a loop object: PyO3's `dict` option reserves it
/// and sets `tp_dictoffset`, which Python subclasses inherit.
fn instance_dict_slot(obj: &Bound<'_, PyAny>) -> Option<*mut *mut ffi::PyObject> {
    let obj = obj.as_ptr();
    // SAFETY: `obj` is a live object; its type's `tp_dictoffset`, when
    // positive, is the offset of a `PyObject *` slot inside it.
    unsafe {
        let offset = (*ffi::Py_TYPE(obj)).tp_dictoffset;
        (offset > 0).then(|| obj.cast::<u8>().offset(offset).cast::<*mut ffi::PyObject>())
    }
}

/// Where the loop reads the time. asyncio reads `self.time()` for its timers,
/// so a `time` that a subclass defines, or that a test patches onto the loop,
/// moves them; otherwise the monotonic clock is read directly.
enum Clock<'py> {
    Monotonic,
    Patched(Bound<'py, PyAny>),
}

impl<'py> Clock<'py> {
    #[inline]
    fn of(slf: &Bound<'py, Loop>) -> PyResult<Self> {
        let time = pyo3::intern!(slf.py(), "time");
        if slf.get().class_time.load(Ordering::Relaxed) || Loop::_instance_has(slf, time)? {
            return Ok(Self::Patched(slf.getattr(time)?));
        }
        Ok(Self::Monotonic)
    }

    /// The patched clock's time now; None for the monotonic clock, which
    /// callers read themselves only when they need it.
    #[inline]
    fn patched_now(&self) -> PyResult<Option<f64>> {
        match self {
            Self::Monotonic => Ok(None),
            Self::Patched(time) => {
                extract_time(&time.call0()?, "time() must not be None").map(Some)
            }
        }
    }

    fn now(&self) -> PyResult<f64> {
        Ok(self.patched_now()?.unwrap_or_else(monotonic))
    }
}

/// Whether `cls` (a loop class) replaces the loop's own `time`.
fn defines_own_time(cls: &Bound<'_, PyType>) -> PyResult<bool> {
    let py = cls.py();
    let time = pyo3::intern!(py, "time");
    Ok(!cls.getattr(time)?.is(&py.get_type::<Loop>().getattr(time)?))
}

/// Milliseconds to sleep so that we wake at or after `deadline`, never before.
fn sleep_ms_until(deadline: f64, now: f64) -> i32 {
    let remaining_ms = (deadline - now) * 1000.0;
    if remaining_ms <= 0.0 {
        0
    } else {
        remaining_ms.min(MAXIMUM_SLEEP_MS).ceil() as i32
    }
}

fn queue_io(
    py: Python<'_>,
    state: &mut LoopState,
    poller: &Poller,
    events: &[Readiness],
    garbage: &mut Garbage,
) {
    let signal_fd = state.signal_channel.as_ref().map(SignalChannel::read_fd);
    for event in events {
        if Some(event.fd) == signal_fd {
            queue_signal_handlers(py, state);
            continue;
        }
        let Some(watch) = state.watchers.get(event.fd) else {
            continue;
        };
        if let Some(native) = watch.native.as_ref() {
            let readiness = Readiness {
                fd: event.fd,
                readable: event.readable && native.interest.read,
                writable: event.writable && native.interest.write,
            };
            if readiness.readable || readiness.writable {
                state.ready.push_back(Job::Native {
                    target: native.target.clone_ref(py),
                    dispatch: native.dispatch,
                    readiness,
                });
            }
        }
        if watch.reader.is_none() && watch.writer.is_none() {
            continue;
        }
        let mut stale = Vec::new();
        for (direction, slot, ready) in [
            (Direction::Read, &watch.reader, event.readable),
            (Direction::Write, &watch.writer, event.writable),
        ] {
            let Some(handle) = slot.as_ref().filter(|_| ready) else {
                continue;
            };
            if handle.get().is_cancelled() {
                stale.push(direction);
            } else {
                state.ready.push_back(Job::Call(handle.clone_ref(py)));
            }
        }
        // A cancelled watcher is removed, as asyncio's _process_events does.
        for direction in stale {
            let change = state.watchers.set(event.fd, direction, None);
            garbage.handles.extend(change.replaced);
            // Failing to update epoll here only costs a spurious wake-up.
            let _ = poller.set_interest(event.fd, change.before, change.after);
        }
    }
}

fn queue_signal_handlers(py: Python<'_>, state: &mut LoopState) {
    let mut signals = Vec::new();
    if let Some(channel) = state.signal_channel.as_ref() {
        channel.drain(&mut signals);
    }
    for signal in signals {
        if let Some(handle) = state.signal_handlers.get(&signal) {
            if !handle.get().is_cancelled() {
                state.ready.push_back(Job::Call(handle.clone_ref(py)));
            }
        }
    }
}

fn run_job(slf: &Bound<'_, Loop>, job: &Job) -> PyResult<()> {
    let py = slf.py();
    match job {
        Job::Call(handle) => handle
            .get()
            .slot
            .run(py, slf.as_any(), handle.bind(py).as_any()),
        Job::Timer(timer) => timer
            .get()
            .slot
            .run(py, slf.as_any(), timer.bind(py).as_any()),
        Job::Native {
            target,
            dispatch,
            readiness,
        } => match dispatch(target.bind(py), slf, *readiness) {
            Ok(()) => Ok(()),
            // Native objects report their own errors; anything escaping them
            // is a bug worth logging, never a reason to stop the loop.
            Err(err) => report_callback_error(slf.as_any(), target.bind(py), None, err),
        },
    }
}

/// Debug mode: run the job and warn when it took longer than
/// `loop.slow_callback_duration`, as asyncio does.
fn run_job_timed(slf: &Bound<'_, Loop>, job: &Job) -> PyResult<()> {
    let py = slf.py();
    // The callback may cancel its own handle (which drops the callback):
    // keep a reference to name it in the warning.
    let callback = match job {
        Job::Call(handle) => handle.get().slot.copy(py),
        Job::Timer(timer) => timer.get().slot.copy(py),
        Job::Native { .. } => None,
    };
    let started = monotonic();
    let result = run_job(slf, job);
    let elapsed = monotonic() - started;
    let threshold: f64 = slf
        .getattr(pyo3::intern!(py, "slow_callback_duration"))
        .and_then(|value| value.extract())
        .unwrap_or(0.1);
    if elapsed >= threshold {
        let described = describe_slow(py, job, callback.as_ref())?;
        let logger = py.import("asyncio.log")?.getattr("logger")?;
        logger.call_method1(
            "warning",
            ("Executing %s took %.3f seconds", described, elapsed),
        )?;
    }
    result
}

/// How asyncio names a slow callback: the task it steps, if its callback is
/// a task's method, else the handle.
fn describe_slow(py: Python<'_>, job: &Job, callback: Option<&Callback>) -> PyResult<String> {
    if let Some(task) = callback.and_then(|cb| python_api::owning_task(py, cb.func.bind(py))) {
        return Ok(task.repr()?.to_string());
    }
    match (job, callback) {
        (Job::Call(handle), Some(callback)) => handle.get().describe_with(py, callback),
        (Job::Timer(timer), Some(callback)) => timer.get().describe_with(py, callback),
        (Job::Call(handle), None) => Ok(handle.bind(py).repr()?.to_string()),
        (Job::Timer(timer), None) => Ok(timer.bind(py).repr()?.to_string()),
        (Job::Native { target, .. }, _) => Ok(target.bind(py).repr()?.to_string()),
    }
}

/// asyncio's argument checks for scheduling calls. Non-callables are refused
/// always (asyncio does so only in debug mode and otherwise fails later, inside
/// the loop); coroutine functions are detected in debug mode, as asyncio does.
fn check_callback(
    py: Python<'_>,
    method: &str,
    callback: &Bound<'_, PyAny>,
    debug: bool,
) -> PyResult<()> {
    // Coroutine objects are not callable: the common case costs one slot test.
    let callable = callback.is_callable();
    let is_coroutine = if callable {
        debug && python_api::is_coroutine_function(py, callback)?
    } else {
        python_api::is_coroutine(py, callback)?
    };
    if is_coroutine {
        return Err(PyTypeError::new_err(format!(
            "coroutines cannot be used with {method}()"
        )));
    }
    if !callable {
        return Err(PyTypeError::new_err(format!(
            "a callable object was expected by {method}(), got {}",
            callback.repr()?
        )));
    }
    Ok(())
}

/// A delay or deadline as a float; `none_message` is asyncio's words for None.
fn extract_time(value: &Bound<'_, PyAny>, none_message: &'static str) -> PyResult<f64> {
    if value.is_none() {
        return Err(PyTypeError::new_err(none_message));
    }
    value.extract()
}

#[pymethods]
impl Loop {
    #[new]
    #[classmethod]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn py_new(
        cls: &Bound<'_, PyType>,
        _args: &Bound<'_, PyTuple>,
        _kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let poller = Poller::new().map_err(|errno| Python::attach(|py| os_error(py, errno)))?;
        let timer_stats = Arc::new(TimerStats::default());
        Ok(Self {
            state: GilLocked::new(LoopState {
                ready: VecDeque::new(),
                after_next_poll: Vec::new(),
                timers: TimerHeap::new(timer_stats.clone()),
                watchers: FdWatchers::default(),
                signal_handlers: Default::default(),
                signal_channel: None,
            }),
            batch: GilLocked::new(VecDeque::new()),
            readiness: GilLocked::new(Vec::new()),
            poller: Mutex::new(Some(Arc::new(poller))),
            timer_stats,
            closed: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            debug: AtomicBool::new(false),
            thread_id: AtomicU64::new(0),
            task_factory: GilLocked::new(None),
            handle_pool: HandlePool::default(),
            own_kwargs: GilLocked::new(None),
            call_soon_of_run: GilLocked::new(None),
            class_time: AtomicBool::new(defines_own_time(cls)?),
            withdrawals: AtomicBool::new(false),
            busy_iterations: AtomicU32::new(0),
        })
    }

    /// The loop's clock: `time.monotonic()`.
    fn time(&self) -> f64 {
        monotonic()
    }

    /// Like `call_soon`, from any thread; wakes the loop if it sleeps.
    #[pyo3(signature = (callback, *args, context=None))]
    fn call_soon_threadsafe(
        &self,
        py: Python<'_>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<Handle>> {
        self.check_closed()?;
        let callback =
            self.new_callback(py, "call_soon_threadsafe", callback, args.into(), context)?;
        let handle = self.schedule_one_shot(py, callback, self.source_traceback(py)?)?;
        if let Some(poller) = self.poller.lock().as_ref() {
            poller.wake();
        }
        Ok(handle)
    }

    #[pyo3(signature = (delay, callback, *args, context=None))]
    fn call_later(
        slf: &Bound<'_, Self>,
        delay: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        let py = slf.py();
        let this = slf.get();
        let delay = extract_time(delay, "delay must not be None")?;
        this.check_closed()?;
        this.check_thread()?;
        let callback = this.new_callback(py, "call_later", callback, args.into(), context)?;
        let now = Clock::of(slf)?.now()?;
        this.schedule_timer(py, (now + delay, None), callback)
    }

    #[pyo3(signature = (when, callback, *args, context=None))]
    fn call_at(
        &self,
        py: Python<'_>,
        when: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        let when_given = (!when.is_exact_instance_of::<PyFloat>()).then(|| when.clone().unbind());
        let when = extract_time(when, "when cannot be None")?;
        self.check_closed()?;
        self.check_thread()?;
        let callback = self.new_callback(py, "call_at", callback, args.into(), context)?;
        self.schedule_timer(py, (when, when_given), callback)
    }

    /// A new `asyncio.Future` bound to this loop.
    fn create_future<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyAny>> {
        python_api::new_future(slf.py(), slf.as_any())
    }

    /// Set the factory `create_task` uses; None restores the default.
    fn set_task_factory(&self, py: Python<'_>, factory: Py<PyAny>) -> PyResult<()> {
        let factory = if factory.is_none(py) {
            None
        } else if factory.bind(py).is_callable() {
            Some(factory)
        } else {
            return Err(PyTypeError::new_err(
                "task factory must be a callable or None",
            ));
        };
        let previous = std::mem::replace(&mut *self.task_factory.lock(py), factory);
        drop(previous);
        Ok(())
    }

    fn get_task_factory(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.task_factory.lock(py).as_ref().map(|f| f.clone_ref(py))
    }

    /// Run until `stop()` is called.
    fn run_forever(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let this = slf.get();
        this.check_closed()?;
        if this.thread_id.load(Ordering::Relaxed) != 0 {
            return Err(PyRuntimeError::new_err(
                "This event loop is already running",
            ));
        }
        if !python_api::running_loop(py)?.is_none() {
            return Err(PyRuntimeError::new_err(
                "Cannot run the event loop while another loop is running",
            ));
        }
        let poller = this.poller()?;
        if !poller.owned_by_this_process() {
            return Err(PyRuntimeError::new_err(
                "this event loop was created before fork(); \
                 create a new event loop in the child process",
            ));
        }
        slf.call_method1("_set_coroutine_origin_tracking", (this.is_debug(),))?;
        let sys = python_api::sys(py)?;
        let old_hooks = sys.call_method0("get_asyncgen_hooks")?;
        this.thread_id.store(current_thread_id(), Ordering::Relaxed);
        // Again: the class may have been patched since the loop was made.
        this.class_time
            .store(defines_own_time(&slf.get_type())?, Ordering::Relaxed);
        let outcome = (|| {
            let own_kwargs = PyDict::new(py);
            own_kwargs.set_item(pyo3::intern!(py, "loop"), slf)?;
            *this.own_kwargs.lock(py) = Some(own_kwargs.unbind());
            *this.call_soon_of_run.lock(py) = call_soon_descriptor::bind_for_run(slf)?;
            let hooks = PyDict::new(py);
            hooks.set_item("firstiter", slf.getattr("_asyncgen_firstiter_hook")?)?;
            hooks.set_item("finalizer", slf.getattr("_asyncgen_finalizer_hook")?)?;
            sys.call_method("set_asyncgen_hooks", (), Some(&hooks))?;
            python_api::set_running_loop(py, slf.as_any())?;
            loop {
                this.run_once(slf, &poller)?;
                if this.stopping.load(Ordering::Relaxed) {
                    return Ok(());
                }
            }
        })();
        this.stopping.store(false, Ordering::Relaxed);
        this.thread_id.store(0, Ordering::Relaxed);
        let own_kwargs = this.own_kwargs.lock(py).take();
        drop(own_kwargs);
        let call_soon = this.call_soon_of_run.lock(py).take();
        drop(call_soon);
        let restored = python_api::set_running_loop(py, &py.None().into_bound(py))
            .and_then(|_| slf.call_method1("_set_coroutine_origin_tracking", (false,)))
            .and_then(|_| sys.call_method1("set_asyncgen_hooks", old_hooks.cast::<PyTuple>()?));
        outcome.and(restored.map(|_| ()))
    }

    /// One iteration of the loop (asyncio's `_run_once`).
    fn _run_once(slf: &Bound<'_, Self>) -> PyResult<()> {
        let this = slf.get();
        let poller = this.poller()?;
        this.run_once(slf, &poller)
    }

    /// Stop after the callbacks of the current iteration have run.
    fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        // A stop() from another thread must not wait for the next event.
        if let Some(poller) = self.poller.lock().as_ref() {
            poller.wake();
        }
    }

    fn is_running(&self) -> bool {
        self.thread_id.load(Ordering::Relaxed) != 0
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    #[getter]
    fn _stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    #[getter]
    fn _thread_id(&self) -> Option<u64> {
        match self.thread_id.load(Ordering::Relaxed) {
            0 => None,
            id => Some(id),
        }
    }

    fn get_debug(&self) -> bool {
        self.is_debug()
    }

    /// True if `name` is set on this instance (say, a test patched a
    /// method), without making the instance dict as `self.__dict__` would.
    fn _instance_has(slf: &Bound<'_, Self>, name: &Bound<'_, PyAny>) -> PyResult<bool> {
        let dict = instance_dict_slot(slf.as_any());
        // SAFETY: a non-null slot holds a live dict owned by the object,
        // which `slf` keeps alive for the duration of this borrow.
        match dict {
            Some(slot) if !unsafe { *slot }.is_null() => {
                let dict = unsafe { Bound::from_borrowed_ptr(slf.py(), *slot) };
                let dict = dict.cast::<PyDict>()?;
                // Checked every iteration (`Clock::of`); most loops' dicts are empty.
                Ok(!dict.is_empty() && dict.contains(name)?)
            }
            _ => Ok(false),
        }
    }

    /// Frees the instance `__dict__` if it is empty; Python makes a new one
    /// when an attribute is next stored in it.
    ///
    /// CPython 3.11 and 3.12 create the dict of every instance eagerly, and
    /// `_PyObject_GetMethod`, which asyncio's C `Future` and `Task` use for
    /// each `loop.get_debug()` and `loop.call_soon()`, searches an existing
    /// instance dict before it takes the class's method: ~135 instructions a
    /// call. `EventLoop` keeps its state in slots, so its dict is empty
    /// after `__init__` and can go.
    fn _release_empty_dict(slf: &Bound<'_, Self>) {
        let Some(slot) = instance_dict_slot(slf.as_any()) else {
            return;
        };
        // SAFETY: a null slot is valid (Python makes the dict on demand), and
        // we drop the one reference the slot held.
        unsafe {
            let dict = *slot;
            if !dict.is_null() && ffi::PyDict_Size(dict) == 0 {
                *slot = std::ptr::null_mut();
                ffi::Py_DECREF(dict);
            }
        }
    }

    fn _set_debug_flag(&self, enabled: bool) {
        self.debug.store(enabled, Ordering::Relaxed);
    }

    /// Close the loop: pending callbacks and timers are dropped, watchers
    /// removed, and the poller's descriptors closed.
    fn _close_core(&self, py: Python<'_>) -> PyResult<bool> {
        if self.is_running() {
            return Err(PyRuntimeError::new_err("Cannot close a running event loop"));
        }
        if self.closed.swap(true, Ordering::Relaxed) {
            return Ok(false);
        }
        let garbage = self.clear_all(py);
        let poller = self.poller.lock().take();
        drop(poller);
        drop(garbage);
        crate::recycled_bytes::release(py);
        Ok(true)
    }

    #[pyo3(signature = (fd, callback, *args))]
    fn _add_reader(
        &self,
        py: Python<'_>,
        fd: RawFd,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
        self.add_watch(py, fd, Direction::Read, "add_reader", callback, args)
    }

    #[pyo3(signature = (fd, callback, *args))]
    fn _add_writer(
        &self,
        py: Python<'_>,
        fd: RawFd,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
        self.add_watch(py, fd, Direction::Write, "add_writer", callback, args)
    }

    fn _remove_reader(&self, py: Python<'_>, fd: RawFd) -> PyResult<bool> {
        if self.is_closed() {
            return Ok(false);
        }
        self.ensure_no_native_owner(py, fd)?;
        self.set_watch(py, fd, Direction::Read, None)
    }

    fn _remove_writer(&self, py: Python<'_>, fd: RawFd) -> PyResult<bool> {
        if self.is_closed() {
            return Ok(false);
        }
        self.ensure_no_native_owner(py, fd)?;
        self.set_watch(py, fd, Direction::Write, None)
    }

    /// The transports `server` accepted and still counts (what asyncio's
    /// `Server._clients` holds from 3.13 on, for `close_clients()`). Found
    /// among the watched descriptors rather than kept in a set per server:
    /// at 10,000 idle connections such a set is half a megabyte.
    fn _server_clients(&self, py: Python<'_>, server: &Bound<'_, PyAny>) -> Vec<Py<PyAny>> {
        // Copied out first: a transport's own lock is not taken under the loop's.
        let targets: Vec<Py<PyAny>> = {
            let state = self.state.lock(py);
            state
                .watchers
                .native_targets()
                .map(|t| t.clone_ref(py))
                .collect()
        };
        targets
            .iter()
            .filter_map(|target| target.bind(py).cast::<StreamTransport>().ok())
            .filter_map(|transport| transport.get().wrapper_if_served_by(py, server))
            .collect()
    }

    fn _is_reading(&self, py: Python<'_>, fd: RawFd) -> bool {
        self.state.lock(py).watchers.is_watched(fd, Direction::Read)
    }

    fn _is_writing(&self, py: Python<'_>, fd: RawFd) -> bool {
        self.state
            .lock(py)
            .watchers
            .is_watched(fd, Direction::Write)
    }

    /// The descriptor Python's signal machinery should write signal numbers to.
    fn _signal_wakeup_fd(&self, py: Python<'_>) -> PyResult<RawFd> {
        self.check_closed()?;
        let poller = self.poller()?;
        let mut state = self.state.lock(py);
        if let Some(channel) = state.signal_channel.as_ref() {
            return Ok(channel.write_fd());
        }
        let channel = SignalChannel::new().map_err(|errno| os_error(py, errno))?;
        poller
            .set_interest(
                channel.read_fd(),
                Default::default(),
                crate::poller::Interest::level(true, false),
            )
            .map_err(|errno| os_error(py, errno))?;
        let fd = channel.write_fd();
        state.signal_channel = Some(channel);
        Ok(fd)
    }

    /// Installs (or, with `None`, removes) the callback run when `signal` arrives.
    #[pyo3(signature = (signal, callback, args))]
    fn _set_signal_handler(
        &self,
        py: Python<'_>,
        signal: i32,
        callback: Option<&Bound<'_, PyAny>>,
        args: Option<&Bound<'_, PyTuple>>,
    ) -> PyResult<bool> {
        let handle = match (callback, args) {
            (Some(callback), Some(args)) => {
                let (callback, context) =
                    self.new_callback(py, "add_signal_handler", callback, args.into(), None)?;
                Some(Handle::repeating(py, callback, context, None)?)
            }
            _ => None,
        };
        let previous = {
            let mut state = self.state.lock(py);
            match handle {
                Some(handle) => state.signal_handlers.insert(signal, handle),
                None => state.signal_handlers.remove(&signal),
            }
        };
        match previous {
            Some(old) => {
                old.get().cancel_now(py);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn _has_signal_handlers(&self, py: Python<'_>) -> bool {
        !self.state.lock(py).signal_handlers.is_empty()
    }

    /// Number of callbacks ready to run and of timers in the heap (introspection).
    fn _queue_sizes(&self, py: Python<'_>) -> (usize, usize) {
        let state = self.state.lock(py);
        (state.ready.len(), state.timers.len())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // Never block in the collector: if the state is busy, report nothing.
        let Some(state) = self.state.lock_in_traverse(&visit) else {
            return Ok(());
        };
        for job in state.ready.iter().chain(&state.after_next_poll) {
            job.visit(&visit)?;
        }
        let mut result = Ok(());
        state.timers.visit(|timer| {
            if result.is_ok() {
                result = timer.get().slot.visit(&visit);
            }
        });
        result?;
        let mut result = Ok(());
        let mut native_result = Ok(());
        state.watchers.visit(
            |handle| {
                if result.is_ok() {
                    result = visit.call(handle);
                }
            },
            |target| {
                if native_result.is_ok() {
                    native_result = visit.call(target);
                }
            },
        );
        result?;
        native_result?;
        for handle in state.signal_handlers.values() {
            visit.call(handle)?;
        }
        if let Some(factory) = self.task_factory.lock_in_traverse(&visit) {
            visit.call(&*factory)?;
        }
        if let Some(own_kwargs) = self.own_kwargs.lock_in_traverse(&visit) {
            visit.call(&*own_kwargs)?;
        }
        if let Some(call_soon) = self.call_soon_of_run.lock_in_traverse(&visit) {
            visit.call(&*call_soon)?;
        }
        if let Some(batch) = self.batch.lock_in_traverse(&visit) {
            for job in batch.iter() {
                job.visit(&visit)?;
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        // The collector holds the GIL; attaching only proves it.
        Python::attach(|py| {
            let garbage = self.clear_all(py);
            drop(garbage);
            let factory = self.task_factory.lock(py).take();
            drop(factory);
            let own_kwargs = self.own_kwargs.lock(py).take();
            drop(own_kwargs);
            let call_soon = self.call_soon_of_run.lock(py).take();
            drop(call_soon);
        });
    }
}

impl Loop {
    fn add_watch(
        &self,
        py: Python<'_>,
        fd: RawFd,
        direction: Direction,
        method: &str,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
        self.check_closed()?;
        self.ensure_no_native_owner(py, fd)?;
        let (callback, context) = self.new_callback(py, method, callback, args.into(), None)?;
        let handle = Handle::repeating(py, callback, context, self.source_traceback(py)?)?;
        self.set_watch(py, fd, direction, Some(handle.clone_ref(py)))?;
        Ok(handle)
    }

    /// asyncio refuses add_/remove_reader and add_/remove_writer on a
    /// descriptor a transport owns. (Listeners and pending sock_* calls are
    /// native watchers too, but asyncio lets those be replaced.)
    fn ensure_no_native_owner(&self, py: Python<'_>, fd: RawFd) -> PyResult<()> {
        let Some(owner) = self.native_owner(py, fd) else {
            return Ok(());
        };
        let owner = owner.bind(py);
        let kind = owner.get_type().name()?.to_string();
        if !kind.ends_with("Transport") {
            return Ok(());
        }
        // Name the transport the protocol sees, when the native one knows it.
        let shown = match owner.getattr("_wrapper") {
            Ok(wrapper) if !wrapper.is_none() => wrapper,
            _ => owner.clone(),
        };
        Err(PyRuntimeError::new_err(format!(
            "File descriptor {fd} is used by transport {}",
            shown.repr()?
        )))
    }

    // -- the API native objects (transports, servers, sock_* calls) use ------

    /// The native watcher of `fd`, if any (a `sock_*` call must not take over
    /// a transport's descriptor).
    pub fn native_owner(&self, py: Python<'_>, fd: RawFd) -> Option<Py<PyAny>> {
        self.state
            .lock(py)
            .watchers
            .native_owner(fd)
            .map(|target| target.clone_ref(py))
    }

    /// Watches `fd` for `interest`, calling `dispatch(target, loop, readiness)`.
    /// Replaces any native watcher `fd` had.
    pub fn native_watch(
        &self,
        py: Python<'_>,
        fd: RawFd,
        target: Py<PyAny>,
        dispatch: Dispatch,
        interest: Interest,
    ) -> PyResult<()> {
        let poller = self.poller()?;
        let (result, previous) = {
            let mut state = self.state.lock(py);
            let native = NativeWatch {
                target,
                dispatch,
                interest,
            };
            let (before, after, previous) = state.watchers.set_native(fd, Some(native));
            self.note_withdrawals(&state);
            let result = poller.set_interest(fd, before, after);
            if result.is_err() {
                let (_, _, ours) = state.watchers.set_native(fd, None);
                drop(state);
                drop(ours);
            }
            (result, previous)
        };
        drop(previous);
        result.map_err(|errno| os_error(py, errno))
    }

    /// Changes what a native watcher of `fd` waits for (cheap when unchanged).
    pub fn native_interest(&self, py: Python<'_>, fd: RawFd, interest: Interest) -> PyResult<()> {
        self.change_native_interest(py, fd, None, interest)
    }

    /// True if `target` is the native watcher of `fd`.
    pub fn is_native_owner(&self, py: Python<'_>, fd: RawFd, target: &Bound<'_, PyAny>) -> bool {
        self.state.lock(py).watchers.is_native_owner(fd, target)
    }

    /// `native_interest` for a watcher that may have been replaced meanwhile
    /// (a long-lived `sock_*` waiter): only the owner's interest changes.
    pub fn native_interest_if_owner(
        &self,
        py: Python<'_>,
        fd: RawFd,
        target: &Bound<'_, PyAny>,
        interest: Interest,
    ) -> PyResult<()> {
        self.change_native_interest(py, fd, Some(target), interest)
    }

    /// Sets the native watcher's interest in `fd`, if `owner` (when given)
    /// is that watcher, under one acquisition of the state lock.
    fn change_native_interest(
        &self,
        py: Python<'_>,
        fd: RawFd,
        owner: Option<&Bound<'_, PyAny>>,
        interest: Interest,
    ) -> PyResult<()> {
        let poller = self.poller.lock().clone();
        let mut state = self.state.lock(py);
        if owner.is_some_and(|target| !state.watchers.is_native_owner(fd, target)) {
            return Ok(());
        }
        let poller = poller.ok_or_else(closed_error)?;
        if let Some((before, after)) = state.watchers.set_native_interest(fd, interest) {
            self.note_withdrawals(&state);
            if before != after {
                poller
                    .set_interest(fd, before, after)
                    .map_err(|errno| os_error(py, errno))?;
            }
        }
        Ok(())
    }

    fn note_withdrawals(&self, state: &LoopState) {
        if state.watchers.has_withdrawals() {
            self.withdrawals.store(true, Ordering::Relaxed);
        }
    }

    /// `native_unwatch` for a watcher that may have been replaced meanwhile.
    pub fn native_unwatch_if_owner(&self, py: Python<'_>, fd: RawFd, target: &Bound<'_, PyAny>) {
        if self.is_native_owner(py, fd, target) {
            self.native_unwatch(py, fd);
        }
    }

    /// Stops watching `fd` natively (the descriptor may already be closed).
    pub fn native_unwatch(&self, py: Python<'_>, fd: RawFd) {
        let previous = {
            let mut state = self.state.lock(py);
            let (before, after, previous) = state.watchers.set_native(fd, None);
            self.note_withdrawals(&state);
            if let Some(poller) = self.poller.lock().as_ref() {
                let _ = poller.set_interest(fd, before, after);
            }
            previous
        };
        drop(previous);
    }

    /// Schedules `func(*args)` like `call_soon`, from Rust.
    pub fn soon(&self, py: Python<'_>, func: Py<PyAny>, args: Py<PyTuple>) -> PyResult<()> {
        let context = context_or_copy(py, None)?;
        self.soon_in(py, func, args, context)
    }

    /// `soon`, in `context`.
    pub fn soon_in(
        &self,
        py: Python<'_>,
        func: Py<PyAny>,
        args: Py<PyTuple>,
        context: Py<PyAny>,
    ) -> PyResult<()> {
        self.check_closed()?;
        self.schedule_one_shot(
            py,
            (
                Callback {
                    func,
                    args: Args::from(args.bind(py)),
                },
                context,
            ),
            None,
        )?;
        Ok(())
    }

    /// `soon`, but run after the next poll's I/O callbacks (see
    /// `LoopState::after_next_poll`).
    pub fn after_next_poll(
        &self,
        py: Python<'_>,
        func: Py<PyAny>,
        args: Py<PyTuple>,
    ) -> PyResult<()> {
        self.check_closed()?;
        let callback = Callback {
            func,
            args: Args::from(args.bind(py)),
        };
        let context = context_or_copy(py, None)?;
        let handle = self.handle_pool.one_shot(py, callback, context, None)?;
        self.state.lock(py).after_next_poll.push(Job::Call(handle));
        Ok(())
    }

    pub fn get_debug_flag(&self) -> bool {
        self.is_debug()
    }

    pub fn closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }
}
