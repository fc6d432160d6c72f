//! Handles: what `call_soon`, `call_later` and `add_reader` return.
//!
//! A handle owns its callback, the callback's arguments and the `contextvars`
//! context it runs in. Running one enters the context through the C API
//! (no `Context.run` bound-method call), calls the callback with its argument
//! tuple and leaves the context again.
//!
//! Both classes are `frozen`: the loop reads them without taking a borrow, and
//! cancellation is a single atomic store, so a callback may cancel its own
//! handle while it runs.
//!
//! One-shot handles (`call_soon`, `call_later`, ...) are not tracked by the
//! cyclic garbage collector while they are pending, and give up their
//! callback and arguments when cancelled (as asyncio does). Tracking them
//! made every collection walk every pending callback: untracking them made
//! `call_soon` a third faster (docs/performance.md). A reference cycle through
//! a pending handle is reported by the loop's own traversal, which visits the
//! handle's contents in its place, so an abandoned loop is still collected.
//! The context copy a handle makes for itself is untracked likewise while
//! the handle is pending. Once a one-shot callback has run, the handle and
//! its copy go back to the collector if anything else still references them,
//! since the callback may have stored the handle in that very context.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use pyo3::ffi;
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::pyclass::CompareOp;
use pyo3::types::{PyBool, PyDict, PyFloat, PyTuple};
use pyo3::PyTraverseError;

use crate::gil_locked::GilLocked;
use crate::python_api::format_callback_source;

/// A callback's positional arguments. None (a task's next step) and a
/// single argument (a future's done-callbacks, `call_soon(fut.set_result,
/// value)`), the common cases, need no tuple; one argument is passed by
/// vectorcall.
pub enum Args {
    None,
    One(Py<PyAny>),
    Tuple(Py<PyTuple>),
}

impl Args {
    pub fn clone_ref(&self, py: Python<'_>) -> Self {
        match self {
            Self::None => Self::None,
            Self::One(arg) => Self::One(arg.clone_ref(py)),
            Self::Tuple(args) => Self::Tuple(args.clone_ref(py)),
        }
    }

    /// The arguments as asyncio's `Handle._args` holds them.
    pub fn to_tuple(&self, py: Python<'_>) -> PyResult<Py<PyTuple>> {
        match self {
            Self::None => Ok(PyTuple::empty(py).unbind()),
            Self::One(arg) => Ok(PyTuple::new(py, [arg])?.unbind()),
            Self::Tuple(args) => Ok(args.clone_ref(py)),
        }
    }

    fn visit(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self {
            Self::None => Ok(()),
            Self::One(arg) => visit.call(arg),
            Self::Tuple(args) => visit.call(args),
        }
    }
}

impl From<&Bound<'_, PyTuple>> for Args {
    fn from(args: &Bound<'_, PyTuple>) -> Self {
        if args.is_empty() {
            Self::None
        } else {
            Self::Tuple(args.clone().unbind())
        }
    }
}

/// A callback and its arguments.
pub struct Callback {
    pub func: Py<PyAny>,
    pub args: Args,
}

impl Callback {
    /// Drops the callback's references with the GIL known to be held (a
    /// `Py`'s own drop first asks a thread-local whether it is).
    pub fn release(self, py: Python<'_>) {
        drop(self.func.into_bound(py));
        match self.args {
            Args::None => {}
            Args::One(arg) => drop(arg.into_bound(py)),
            Args::Tuple(args) => drop(args.into_bound(py)),
        }
    }

    pub fn clone_ref(&self, py: Python<'_>) -> Self {
        Self {
            func: self.func.clone_ref(py),
            args: self.args.clone_ref(py),
        }
    }

    /// Runs the callback inside `context`; an exception is returned, not raised.
    pub fn invoke(&self, py: Python<'_>, context: &Py<PyAny>) -> PyResult<()> {
        // SAFETY: all pointers are owned by `self`/`context` and alive for the
        // call; the GIL is held (we have `py`).
        unsafe {
            if ffi::PyContext_Enter(context.as_ptr()) < 0 {
                return Err(PyErr::fetch(py));
            }
            let result = self.call(py);
            if result.is_null() {
                let err = PyErr::fetch(py);
                ffi::PyContext_Exit(context.as_ptr());
                return Err(err);
            }
            ffi::Py_DECREF(result);
            if ffi::PyContext_Exit(context.as_ptr()) < 0 {
                return Err(PyErr::fetch(py));
            }
        }
        Ok(())
    }

    /// `func(*args)`: a new reference, or NULL with an exception set.
    fn call(&self, _py: Python<'_>) -> *mut ffi::PyObject {
        let func = self.func.as_ptr();
        match &self.args {
            // SAFETY: `func` is live; the GIL is held.
            Args::None => unsafe { ffi::PyObject_CallNoArgs(func) },
            Args::One(arg) => {
                // A free slot in front of the argument lets a bound method
                // put `self` there instead of copying the arguments.
                let mut slots = [std::ptr::null_mut(), arg.as_ptr()];
                // SAFETY: `slots[1..]` holds one live argument and `slots[0]`
                // may be overwritten during the call, as the flag allows.
                unsafe {
                    ffi::PyObject_Vectorcall(
                        func,
                        slots.as_mut_ptr().add(1),
                        1 | ffi::PY_VECTORCALL_ARGUMENTS_OFFSET,
                        std::ptr::null_mut(),
                    )
                }
            }
            // SAFETY: `func` and `args` are live; the GIL is held.
            Args::Tuple(args) => unsafe {
                if ffi::PyTuple_GET_SIZE(args.as_ptr()) == 0 {
                    ffi::PyObject_CallNoArgs(func)
                } else {
                    ffi::PyObject_Call(func, args.as_ptr(), std::ptr::null_mut())
                }
            },
        }
    }

    /// asyncio's description; `debug` shows the arguments from 3.13 on.
    pub fn describe(&self, py: Python<'_>, debug: bool) -> PyResult<String> {
        let args = self.args.to_tuple(py)?;
        format_callback_source(py, self.func.bind(py), args.bind(py), debug)
    }
}

/// `context=None` means "a copy of the caller's current context", as asyncio does.
pub fn context_or_copy(py: Python<'_>, context: Option<Py<PyAny>>) -> PyResult<Py<PyAny>> {
    match context {
        Some(context) if !context.is_none(py) => Ok(context),
        // SAFETY: PyContext_CopyCurrent returns a new reference or NULL with an error set.
        _ => unsafe {
            Bound::from_owned_ptr_or_err(py, ffi::PyContext_CopyCurrent()).map(Bound::unbind)
        },
    }
}

/// What the loop runs: the callback (until it is spent), the context, and
/// whether the handle was cancelled.
pub struct Slot {
    /// Only touched with the GIL held, never across a call into Python.
    callback: UnsafeCell<Option<Callback>>,
    /// Like `callback`; empty only while a spent handle waits in the loop's
    /// pool for reuse.
    context: UnsafeCell<Option<Py<PyAny>>>,
    cancelled: AtomicBool,
    one_shot: bool,
    /// The context is this handle's own copy, untracked while it is pending.
    private_context: AtomicBool,
}

// SAFETY: `callback` is only read or written by threads holding the GIL, and
// never while Python code can run (see `Slot::take`/`Slot::copy`), so no two
// accesses overlap; the other fields are immutable or atomic.
unsafe impl Sync for Slot {}

impl Slot {
    fn new(callback: Callback, context: Py<PyAny>, one_shot: bool) -> Self {
        // A context nobody else references (the copy `call_soon` makes for
        // `context=None`) is left out of the collector while the handle is
        // pending, like the handle itself: tracked, thousands of pending
        // copies made every collection walk them all. Until the callback runs
        // in it, a fresh copy holds only the caller's values, which cannot
        // reach this handle, so no cycle can pass through it.
        let private_context = one_shot && claim_private_context(&context);
        Self {
            callback: UnsafeCell::new(Some(callback)),
            context: UnsafeCell::new(Some(context)),
            cancelled: AtomicBool::new(false),
            one_shot,
            private_context: AtomicBool::new(private_context),
        }
    }

    fn context(&self) -> Option<&Py<PyAny>> {
        // SAFETY: GIL held; the context is only replaced by `refill`/`empty`,
        // whose callers hold the only reference to the handle.
        unsafe { (*self.context.get()).as_ref() }
    }

    fn has_private_context(&self) -> bool {
        self.private_context.load(Ordering::Relaxed)
    }

    /// Gives a spent one-shot slot a new callback (the handle is reused).
    ///
    /// # Safety
    /// The caller holds the GIL and the only reference to the handle.
    unsafe fn refill(&self, callback: Callback, context: Py<PyAny>) {
        let private_context = claim_private_context(&context);
        unsafe {
            *self.callback.get() = Some(callback);
            *self.context.get() = Some(context);
        }
        self.private_context
            .store(private_context, Ordering::Relaxed);
        self.cancelled.store(false, Ordering::Relaxed);
    }

    /// Takes everything out of a spent slot, to be dropped by the caller.
    ///
    /// # Safety
    /// The caller holds the GIL and the only reference to the handle.
    unsafe fn empty(&self) -> (Option<Callback>, Option<Py<PyAny>>) {
        let (callback, context) =
            unsafe { ((*self.callback.get()).take(), (*self.context.get()).take()) };
        if let Some(context) = context.as_ref().filter(|_| self.has_private_context()) {
            track_object(context.as_ptr());
        }
        self.private_context.store(false, Ordering::Relaxed);
        (callback, context)
    }

    /// After a one-shot callback ran: whatever still references the handle
    /// or its context beyond the loop may now form a cycle with them (the
    /// callback may have stored anything in the context), so both go back to
    /// the collector. The common case, the loop's reference being the only
    /// one, costs two reads.
    fn return_to_collector(&self, handle: &Bound<'_, PyAny>) {
        let private = self.context().filter(|_| self.has_private_context());
        let context_shared = private.is_some_and(|context| refcount(context.as_ptr()) > 1);
        if refcount(handle.as_ptr()) > 1 || context_shared {
            track_object(handle.as_ptr());
            if let Some(context) = private {
                track_object(context.as_ptr());
            }
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    pub fn is_one_shot(&self) -> bool {
        self.one_shot
    }

    fn take(&self, _py: Python<'_>) -> Option<Callback> {
        // SAFETY: GIL held, no outstanding reference into the cell (see impl Sync).
        unsafe { (*self.callback.get()).take() }
    }

    /// A second reference to the callback (for debug-mode reporting).
    pub fn copy(&self, py: Python<'_>) -> Option<Callback> {
        // SAFETY: as in `take`; the reference does not outlive this statement.
        unsafe { (*self.callback.get()).as_ref().map(|cb| cb.clone_ref(py)) }
    }

    /// Marks the slot cancelled and lets go of the callback (returned, to be
    /// dropped by the caller when no lock is held).
    pub fn cancel(&self, py: Python<'_>) -> Option<Callback> {
        self.cancelled.store(true, Ordering::Relaxed);
        self.take(py)
    }

    /// Runs the callback unless cancelled. A one-shot slot holds no callback
    /// while it runs, so that a cancel from inside the callback releases it.
    pub fn run(
        &self,
        py: Python<'_>,
        loop_: &Bound<'_, PyAny>,
        handle: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        if self.is_cancelled() {
            return Ok(());
        }
        let callback = if self.one_shot {
            self.take(py)
        } else {
            self.copy(py)
        };
        let Some(callback) = callback else {
            return Ok(());
        };
        // Borrowed across the call: a slot is only refilled or emptied by the
        // loop after its job ran, never while it runs.
        let Some(context) = self.context() else {
            return Ok(());
        };
        let result = callback.invoke(py, context);
        // Like asyncio, a run handle keeps its callback (until cancelled); it
        // goes with the handle, or when the loop reuses the handle. Put back
        // before any report, so that the handle in it still names its callback.
        let callback = if self.one_shot && !self.is_cancelled() {
            self.put_back(py, callback);
            None
        } else {
            Some(callback)
        };
        let outcome = match result {
            Ok(()) => Ok(()),
            Err(err) => {
                let callback = callback.or_else(|| self.copy(py));
                report_callback_error(loop_, handle, callback.as_ref(), err)
            }
        };
        if self.one_shot {
            self.return_to_collector(handle);
        }
        outcome
    }

    fn put_back(&self, _py: Python<'_>, callback: Callback) {
        // SAFETY: GIL held, no outstanding reference into the cell (see impl Sync).
        unsafe { *self.callback.get() = Some(callback) };
    }

    fn func(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.copy(py).map(|cb| cb.func)
    }

    fn args(&self, py: Python<'_>) -> PyResult<Option<Py<PyTuple>>> {
        self.copy(py).map(|cb| cb.args.to_tuple(py)).transpose()
    }

    fn describe(&self, py: Python<'_>, debug: bool) -> PyResult<Option<String>> {
        self.copy(py).map(|cb| cb.describe(py, debug)).transpose()
    }

    /// Reports what the slot references to the garbage collector.
    pub fn visit(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        // SAFETY: the collector runs with the GIL held and no Rust code of ours
        // is between a `take`/`copy` and its end (they do not call Python).
        if let Some(callback) = unsafe { &*self.callback.get() } {
            visit.call(&callback.func)?;
            callback.args.visit(visit)?;
        }
        visit.call(self.context())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // A context must be tracked when it is deallocated (its destructor
        // unlinks it from the collector's list unconditionally).
        if let Some(context) = self.context().filter(|_| self.has_private_context()) {
            track_object(context.as_ptr());
        }
    }
}

/// Stops the collector from tracking a freshly made one-shot handle.
fn untrack<T>(handle: &Py<T>) {
    untrack_object(handle.as_ptr());
}

/// A context nobody else references is ours alone: it is then left out of
/// the collector while the handle is pending (see `Slot::new`).
fn claim_private_context(context: &Py<PyAny>) -> bool {
    let private = refcount(context.as_ptr()) == 1;
    if private {
        untrack_object(context.as_ptr());
    }
    private
}

fn has_weak_references(object: *mut ffi::PyObject) -> bool {
    // SAFETY: a live object; a type with weak reference support keeps the
    // head of the weak reference list at `tp_weaklistoffset`.
    unsafe {
        let offset = (*ffi::Py_TYPE(object)).tp_weaklistoffset;
        offset > 0
            && !(*object
                .cast::<u8>()
                .add(offset as usize)
                .cast::<*mut ffi::PyObject>())
            .is_null()
    }
}

fn refcount(object: *mut ffi::PyObject) -> isize {
    // SAFETY: a live object; reading its reference count needs the GIL,
    // which every caller holds.
    unsafe { ffi::Py_REFCNT(object) }
}

fn untrack_object(object: *mut ffi::PyObject) {
    // SAFETY: a live object of a GC-enabled type (handles, contexts);
    // untracking is always allowed and their deallocation copes with an
    // untracked object.
    unsafe { ffi::PyObject_GC_UnTrack(object.cast()) };
}

fn track_object(object: *mut ffi::PyObject) {
    // SAFETY: a live object of a GC-enabled type with a working tp_traverse;
    // tracking twice is not allowed, hence the check.
    unsafe {
        if ffi::PyObject_GC_IsTracked(object) == 0 {
            ffi::PyObject_GC_Track(object.cast());
        }
    }
}

/// Spent one-shot handles kept by a loop for reuse: making and freeing a
/// Python object per callback was a quarter of `call_soon`'s cost. A handle
/// is only taken back when nothing but the loop can see it (no other
/// reference, no weak reference, no debug traceback), so reuse is
/// unobservable.
#[derive(Default)]
pub struct HandlePool {
    free: GilLocked<Vec<Py<Handle>>>,
}

impl HandlePool {
    /// Enough for a burst of 10k+ callbacks (a broadcast, a batch of
    /// completions) to reuse every handle: callgrind, `call_soon` in batches
    /// of 10k, 2,450 -> 2,118 instructions per callback against 1,024. A
    /// pooled handle is an empty shell of ~100 bytes, so a loop keeps at
    /// most ~1.6 MB after its largest burst.
    const CAPACITY: usize = 16384;

    /// A one-shot handle for `callback`: a reused one when available.
    pub fn one_shot(
        &self,
        py: Python<'_>,
        callback: Callback,
        context: Py<PyAny>,
        source_traceback: Option<Py<PyAny>>,
    ) -> PyResult<Py<Handle>> {
        if source_traceback.is_none() {
            let reused = self.free.lock(py).pop();
            if let Some(handle) = reused {
                // SAFETY: the pool held the only reference; the GIL is held.
                unsafe { handle.get().slot.refill(callback, context) };
                return Ok(handle);
            }
        }
        Handle::one_shot(py, callback, context, source_traceback)
    }

    /// Takes a handle back after its job ran, if it can be reused.
    pub fn recycle(&self, py: Python<'_>, handle: Py<Handle>) {
        if self.free.lock(py).len() >= Self::CAPACITY || !handle.get().is_reusable(&handle) {
            drop(handle.into_bound(py));
            return;
        }
        // SAFETY: `is_reusable` proved ours is the only reference; GIL held.
        let spent = unsafe { handle.get().slot.empty() };
        self.free.lock(py).push(handle);
        // Destructors run Python code, which may schedule callbacks: only
        // now, with the pool no longer borrowed.
        let (callback, context) = spent;
        if let Some(callback) = callback {
            callback.release(py);
        }
        drop(context.map(|context| context.into_bound(py)));
    }

    /// Lets go of every pooled handle (the loop is closing).
    pub fn clear(&self, py: Python<'_>) -> Vec<Py<Handle>> {
        std::mem::take(&mut *self.free.lock(py))
    }
}

/// Counts cancelled timers still sitting in a loop's heap, so the loop knows
/// when compacting the heap is worth it. Shared by the loop and its timers.
#[derive(Default)]
pub struct TimerStats {
    pub cancelled_in_heap: AtomicUsize,
}

/// `asyncio.Handle`'s counterpart: a callback scheduled once, or an I/O callback.
#[pyclass(frozen, weakref, module = "ferroloop._core")]
pub struct Handle {
    pub slot: Slot,
    debug: Option<Box<DebugOrigin>>,
}

impl Handle {
    /// A handle run once (`call_soon`), untracked by the collector.
    pub fn one_shot(
        py: Python<'_>,
        callback: Callback,
        context: Py<PyAny>,
        source_traceback: Option<Py<PyAny>>,
    ) -> PyResult<Py<Self>> {
        let handle = Py::new(
            py,
            Self {
                slot: Slot::new(callback, context, true),
                debug: DebugOrigin::new(source_traceback),
            },
        )?;
        untrack(&handle);
        Ok(handle)
    }

    /// A handle run every time its event happens (readers, writers, signals).
    pub fn repeating(
        py: Python<'_>,
        callback: Callback,
        context: Py<PyAny>,
        source_traceback: Option<Py<PyAny>>,
    ) -> PyResult<Py<Self>> {
        Py::new(
            py,
            Self {
                slot: Slot::new(callback, context, false),
                debug: DebugOrigin::new(source_traceback),
            },
        )
    }

    pub fn is_cancelled(&self) -> bool {
        self.slot.is_cancelled()
    }

    /// True when `this` (this handle) is spent and nobody else can see it.
    fn is_reusable(&self, this: &Py<Self>) -> bool {
        let object = this.as_ptr();
        self.slot.is_one_shot()
            && self.debug.is_none()
            && refcount(object) == 1
            && !has_weak_references(object)
            // SAFETY: a live object of a GC-enabled type.
            && unsafe { ffi::PyObject_GC_IsTracked(object) } == 0
    }

    pub fn cancel_now(&self, py: Python<'_>) {
        if let Some(debug) = &self.debug {
            debug.keep_repr_at_cancel(py, "Handle", &self.slot, None);
        }
        drop(self.slot.cancel(py));
    }

    pub fn describe_with(&self, py: Python<'_>, callback: &Callback) -> PyResult<String> {
        // Only debug mode reports slow callbacks.
        let parts = format_parts(
            py,
            "Handle",
            false,
            None,
            Some(callback.describe(py, true)?),
            DebugOrigin::stack(&self.debug),
        )?;
        Ok(bracketed(parts))
    }
}

#[pymethods]
impl Handle {
    /// Cancel the callback; a cancelled handle is skipped when its turn comes.
    fn cancel(&self, py: Python<'_>) {
        self.cancel_now(py);
    }

    fn cancelled(&self) -> bool {
        self.is_cancelled()
    }

    fn get_context(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.slot.context().map(|context| context.clone_ref(py))
    }

    /// asyncio's attribute for `get_context()` (the only way before 3.12).
    #[getter(_context)]
    fn context_attribute(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.get_context(py)
    }

    /// Run the callback now, reporting an exception to the loop's handler.
    fn _run(slf: &Bound<'_, Self>, loop_: &Bound<'_, PyAny>) -> PyResult<()> {
        slf.get().slot.run(slf.py(), loop_, slf.as_any())
    }

    #[getter]
    fn _callback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.slot.func(py)
    }

    #[getter]
    fn _args(&self, py: Python<'_>) -> PyResult<Option<Py<PyTuple>>> {
        self.slot.args(py)
    }

    #[getter]
    fn _cancelled(&self) -> bool {
        self.is_cancelled()
    }

    #[getter]
    fn _source_traceback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        DebugOrigin::stack(&self.debug).map(|tb| tb.clone_ref(py))
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        describe_handle(py, "Handle", &self.slot, None, &self.debug)
    }

    /// asyncio's: the words of the repr, as a list.
    fn _repr_info(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        handle_parts(py, "Handle", &self.slot, None, &self.debug)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.slot.visit(&visit)?;
        visit.call(DebugOrigin::stack(&self.debug))
    }
}

/// `asyncio.TimerHandle`'s counterpart: a callback due at a point in loop time.
#[pyclass(frozen, weakref, module = "ferroloop._core")]
pub struct TimerHandle {
    pub slot: Slot,
    pub when: f64,
    /// The `when` given to `call_at` when it was not a float (an int, say):
    /// asyncio hands back the very object from `when()`.
    when_given: Option<Py<PyAny>>,
    /// True while the timer sits in its loop's heap.
    scheduled: AtomicBool,
    stats: Arc<TimerStats>,
    debug: Option<Box<DebugOrigin>>,
}

impl TimerHandle {
    pub fn schedule(
        py: Python<'_>,
        callback: Callback,
        context: Py<PyAny>,
        (when, when_given): (f64, Option<Py<PyAny>>),
        stats: Arc<TimerStats>,
        source_traceback: Option<Py<PyAny>>,
    ) -> PyResult<Py<Self>> {
        let timer = Py::new(
            py,
            Self {
                slot: Slot::new(callback, context, true),
                when,
                when_given,
                scheduled: AtomicBool::new(true),
                stats,
                debug: DebugOrigin::new(source_traceback),
            },
        )?;
        untrack(&timer);
        Ok(timer)
    }

    pub fn is_cancelled(&self) -> bool {
        self.slot.is_cancelled()
    }

    /// The time as asyncio's repr shows it: `str()` of what `when()` returns.
    fn when_text(&self, py: Python<'_>) -> PyResult<String> {
        Ok(self.when_object(py).bind(py).str()?.to_string())
    }

    fn when_object(&self, py: Python<'_>) -> Py<PyAny> {
        match &self.when_given {
            Some(given) => given.clone_ref(py),
            None => PyFloat::new(py, self.when).into_any().unbind(),
        }
    }

    /// asyncio's `TimerHandle.__eq__`: the same time, an equal callback and
    /// equal arguments (compared with Python's `==`), and both cancelled or not.
    fn same_as(&self, py: Python<'_>, other: &TimerHandle) -> PyResult<bool> {
        if self.when != other.when {
            return Ok(false);
        }
        let equal = |a: Option<Py<PyAny>>, b: Option<Py<PyAny>>| match (a, b) {
            (Some(a), Some(b)) => a.bind(py).eq(b.bind(py)),
            (a, b) => Ok(a.is_none() && b.is_none()),
        };
        Ok(equal(self.slot.func(py), other.slot.func(py))?
            && equal(
                self.slot.args(py)?.map(Py::into_any),
                other.slot.args(py)?.map(Py::into_any),
            )?
            && self.is_cancelled() == other.is_cancelled())
    }

    /// Called by the loop when the timer leaves the heap.
    pub fn mark_unscheduled(&self) {
        self.scheduled.store(false, Ordering::Relaxed);
    }

    pub fn describe_with(&self, py: Python<'_>, callback: &Callback) -> PyResult<String> {
        let parts = format_parts(
            py,
            "TimerHandle",
            false,
            Some(self.when_text(py)?),
            Some(callback.describe(py, true)?),
            DebugOrigin::stack(&self.debug),
        )?;
        Ok(bracketed(parts))
    }
}

#[pymethods]
impl TimerHandle {
    fn cancel(&self, py: Python<'_>) {
        if self.is_cancelled() {
            return;
        }
        if let Some(debug) = &self.debug {
            debug.keep_repr_at_cancel(py, "TimerHandle", &self.slot, self.when_text(py).ok());
        }
        let released = self.slot.cancel(py);
        if self.scheduled.load(Ordering::Relaxed) {
            self.stats.cancelled_in_heap.fetch_add(1, Ordering::Relaxed);
        }
        drop(released);
    }

    fn cancelled(&self) -> bool {
        self.is_cancelled()
    }

    /// The absolute loop time at which the callback is due.
    fn when(&self, py: Python<'_>) -> Py<PyAny> {
        self.when_object(py)
    }

    fn get_context(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.slot.context().map(|context| context.clone_ref(py))
    }

    /// asyncio's attribute for `get_context()` (the only way before 3.12).
    #[getter(_context)]
    fn context_attribute(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.get_context(py)
    }

    fn _run(slf: &Bound<'_, Self>, loop_: &Bound<'_, PyAny>) -> PyResult<()> {
        slf.get().slot.run(slf.py(), loop_, slf.as_any())
    }

    #[getter]
    fn _when(&self, py: Python<'_>) -> Py<PyAny> {
        self.when_object(py)
    }

    #[getter]
    fn _scheduled(&self) -> bool {
        self.scheduled.load(Ordering::Relaxed)
    }

    #[getter]
    fn _callback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.slot.func(py)
    }

    #[getter]
    fn _args(&self, py: Python<'_>) -> PyResult<Option<Py<PyTuple>>> {
        self.slot.args(py)
    }

    #[getter]
    fn _cancelled(&self) -> bool {
        self.is_cancelled()
    }

    #[getter]
    fn _source_traceback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        DebugOrigin::stack(&self.debug).map(|tb| tb.clone_ref(py))
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        describe_handle(
            py,
            "TimerHandle",
            &self.slot,
            Some(self.when_text(py)?),
            &self.debug,
        )
    }

    /// asyncio's: the words of the repr, as a list.
    fn _repr_info(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        handle_parts(
            py,
            "TimerHandle",
            &self.slot,
            Some(self.when_text(py)?),
            &self.debug,
        )
    }

    /// asyncio's: the hash of the time (so a handle hashes as its `when()`).
    fn __hash__(&self, py: Python<'_>) -> PyResult<isize> {
        PyFloat::new(py, self.when).hash()
    }

    /// asyncio's ordering: by time; `==` also compares the callback, its
    /// arguments and whether it was cancelled; any other type is not
    /// comparable.
    fn __richcmp__(&self, other: &Bound<'_, PyAny>, op: CompareOp) -> PyResult<Py<PyAny>> {
        let py = other.py();
        let Ok(other) = other.cast::<TimerHandle>() else {
            return Ok(py.NotImplemented());
        };
        let other = other.get();
        let result = match op {
            CompareOp::Lt => self.when < other.when,
            CompareOp::Gt => self.when > other.when,
            CompareOp::Le => self.when < other.when || self.same_as(py, other)?,
            CompareOp::Ge => self.when > other.when || self.same_as(py, other)?,
            CompareOp::Eq => self.same_as(py, other)?,
            CompareOp::Ne => !self.same_as(py, other)?,
        };
        Ok(PyBool::new(py, result).to_owned().into_any().unbind())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.slot.visit(&visit)?;
        visit.call(DebugOrigin::stack(&self.debug))
    }
}

/// What a handle made in debug mode keeps besides its callback: the stack
/// where it was made and, once cancelled, its description from that moment
/// (asyncio keeps it so that a late report still names the callback).
struct DebugOrigin {
    stack: Py<PyAny>,
    repr_at_cancel: OnceLock<String>,
}

impl DebugOrigin {
    fn new(source_traceback: Option<Py<PyAny>>) -> Option<Box<Self>> {
        source_traceback.map(|stack| {
            Box::new(Self {
                stack,
                repr_at_cancel: OnceLock::new(),
            })
        })
    }

    fn stack(debug: &Option<Box<Self>>) -> Option<&Py<PyAny>> {
        debug.as_ref().map(|debug| &debug.stack)
    }

    /// Called just before `slot` lets go of its callback.
    fn keep_repr_at_cancel(&self, py: Python<'_>, kind: &str, slot: &Slot, when: Option<String>) {
        if slot.is_cancelled() {
            return;
        }
        // A callback whose repr raises is described without it, as later.
        let callback = slot.describe(py, true).ok().flatten();
        if let Ok(parts) = format_parts(py, kind, true, when, callback, Some(&self.stack)) {
            let _ = self.repr_at_cancel.set(bracketed(parts));
        }
    }
}

fn describe_handle(
    py: Python<'_>,
    kind: &str,
    slot: &Slot,
    when: Option<String>,
    debug: &Option<Box<DebugOrigin>>,
) -> PyResult<String> {
    if let Some(repr) = debug.as_ref().and_then(|debug| debug.repr_at_cancel.get()) {
        return Ok(repr.clone());
    }
    Ok(bracketed(handle_parts(py, kind, slot, when, debug)?))
}

/// asyncio's `_repr_info()`: the words of a handle's repr, from its state now.
fn handle_parts(
    py: Python<'_>,
    kind: &str,
    slot: &Slot,
    when: Option<String>,
    debug: &Option<Box<DebugOrigin>>,
) -> PyResult<Vec<String>> {
    let cancelled = slot.is_cancelled();
    let callback = if cancelled {
        None
    } else {
        // Made in debug mode stands in for asyncio's "loop in debug mode now".
        slot.describe(py, debug.is_some())?
    };
    format_parts(
        py,
        kind,
        cancelled,
        when,
        callback,
        DebugOrigin::stack(debug),
    )
}

/// A handle's repr from its words.
fn bracketed(parts: Vec<String>) -> String {
    format!("<{}>", parts.join(" "))
}

/// The words of a handle's repr, asyncio's order: `Kind [cancelled]
/// [when=...] [callback] [created at ...]`.
fn format_parts(
    py: Python<'_>,
    kind: &str,
    cancelled: bool,
    when: Option<String>,
    callback: Option<String>,
    stack: Option<&Py<PyAny>>,
) -> PyResult<Vec<String>> {
    let mut parts = vec![kind.to_owned()];
    if cancelled {
        parts.push("cancelled".to_owned());
    }
    if let Some(when) = when {
        parts.push(format!("when={when}"));
    }
    parts.extend(callback);
    parts.extend(created_at(py, stack)?.map(|origin| format!("created at {origin}")));
    Ok(parts)
}

/// "file:line" where a handle made in debug mode (which keeps its
/// `_source_traceback`) was made, as asyncio's handles describe themselves.
fn created_at(py: Python<'_>, source_traceback: Option<&Py<PyAny>>) -> PyResult<Option<String>> {
    let Some(stack) = source_traceback.map(|tb| tb.bind(py)) else {
        return Ok(None);
    };
    if stack.len()? == 0 {
        return Ok(None);
    }
    let frame = stack.get_item(-1)?;
    Ok(Some(format!(
        "{}:{}",
        frame.get_item(0)?.str()?,
        frame.get_item(1)?.str()?
    )))
}

/// Hands a callback's exception to the loop's exception handler, as asyncio's
/// `Handle._run` does. `SystemExit` and `KeyboardInterrupt` are not reported:
/// they are returned so that they stop the loop.
pub fn report_callback_error(
    loop_: &Bound<'_, PyAny>,
    handle: &Bound<'_, PyAny>,
    callback: Option<&Callback>,
    err: PyErr,
) -> PyResult<()> {
    let py = loop_.py();
    if err.is_instance_of::<pyo3::exceptions::PySystemExit>(py)
        || err.is_instance_of::<pyo3::exceptions::PyKeyboardInterrupt>(py)
    {
        return Err(err);
    }
    let description = match callback {
        Some(callback) => {
            let debug = loop_
                .call_method0(pyo3::intern!(py, "get_debug"))?
                .is_truthy()?;
            callback.describe(py, debug)?
        }
        // A native object's work: named as asyncio names the method whose
        // handle it would have run, where the object says which.
        None => match handle.getattr(pyo3::intern!(py, "_reported_as")) {
            Ok(name) => name.str()?.to_string(),
            Err(_) => handle.repr()?.to_string(),
        },
    };
    let context = PyDict::new(py);
    context.set_item("message", format!("Exception in callback {description}"))?;
    context.set_item("exception", err.value(py))?;
    context.set_item("handle", handle)?;
    // Native I/O objects have no creation traceback; only handles may.
    if let Some(source_traceback) = handle
        .getattr(pyo3::intern!(py, "_source_traceback"))
        .ok()
        .filter(|value| !value.is_none())
    {
        context.set_item("source_traceback", source_traceback)?;
    }
    loop_.call_method1(pyo3::intern!(py, "call_exception_handler"), (context,))?;
    Ok(())
}

/// Reports `err`, raised by a direct call of `func(*args)` that asyncio makes
/// through a handle of its own (a transport's `connection_made`, say), as if
/// it had been that handle: same message and context keys as asyncio.
pub fn report_as_handle_error(
    loop_: &Bound<'_, PyAny>,
    func: Bound<'_, PyAny>,
    args: Bound<'_, PyTuple>,
    err: PyErr,
) -> PyResult<()> {
    let py = loop_.py();
    let callback = Callback {
        func: func.unbind(),
        args: Args::from(&args),
    };
    let context = context_or_copy(py, None)?;
    let handle = Handle::repeating(py, callback.clone_ref(py), context, None)?;
    report_callback_error(loop_, handle.bind(py).as_any(), Some(&callback), err)
}
