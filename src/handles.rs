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

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use pyo3::ffi;
use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use pyo3::PyTraverseError;

use crate::python_api::format_callback_source;

/// A callback with its arguments and the context it runs in.
pub struct Callback {
    pub func: Py<PyAny>,
    pub args: Py<PyTuple>,
    pub context: Py<PyAny>,
}

impl Callback {
    /// `context=None` means "a copy of the caller's current context", as asyncio does.
    pub fn new(
        py: Python<'_>,
        func: Py<PyAny>,
        args: Py<PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let context = match context {
            Some(context) if !context.is_none(py) => context,
            _ => copy_current_context(py)?,
        };
        Ok(Self {
            func,
            args,
            context,
        })
    }

    /// Runs the callback inside its context; an exception is returned, not raised.
    pub fn invoke(&self, py: Python<'_>) -> PyResult<()> {
        // SAFETY: all three pointers are owned by `self` and alive for the call;
        // the GIL is held (we have `py`).
        unsafe {
            if ffi::PyContext_Enter(self.context.as_ptr()) < 0 {
                return Err(PyErr::fetch(py));
            }
            let result =
                ffi::PyObject_Call(self.func.as_ptr(), self.args.as_ptr(), std::ptr::null_mut());
            if result.is_null() {
                let err = PyErr::fetch(py);
                ffi::PyContext_Exit(self.context.as_ptr());
                return Err(err);
            }
            ffi::Py_DECREF(result);
            if ffi::PyContext_Exit(self.context.as_ptr()) < 0 {
                return Err(PyErr::fetch(py));
            }
        }
        Ok(())
    }

    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.func)?;
        visit.call(&self.args)?;
        visit.call(&self.context)
    }

    pub fn describe(&self, py: Python<'_>) -> PyResult<String> {
        format_callback_source(py, self.func.bind(py), self.args.bind(py))
    }
}

fn copy_current_context(py: Python<'_>) -> PyResult<Py<PyAny>> {
    // SAFETY: PyContext_CopyCurrent returns a new reference or NULL with an error set.
    unsafe {
        let ptr = ffi::PyContext_CopyCurrent();
        Bound::from_owned_ptr_or_err(py, ptr).map(Bound::unbind)
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
    pub callback: Callback,
    cancelled: AtomicBool,
    source_traceback: Option<Py<PyAny>>,
}

impl Handle {
    pub fn new(callback: Callback, source_traceback: Option<Py<PyAny>>) -> Self {
        Self {
            callback,
            cancelled: AtomicBool::new(false),
            source_traceback,
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    pub fn cancel_now(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }
}

#[pymethods]
impl Handle {
    /// Cancel the callback; a cancelled handle is skipped when its turn comes.
    fn cancel(&self) {
        self.cancel_now();
    }

    fn cancelled(&self) -> bool {
        self.is_cancelled()
    }

    fn get_context(&self, py: Python<'_>) -> Py<PyAny> {
        self.callback.context.clone_ref(py)
    }

    /// Run the callback now, reporting an exception to the loop's handler.
    fn _run(slf: &Bound<'_, Self>, loop_: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        match slf.get().callback.invoke(py) {
            Ok(()) => Ok(()),
            Err(err) => report_callback_error(loop_, slf.as_any(), Some(&slf.get().callback), err),
        }
    }

    #[getter]
    fn _callback(&self, py: Python<'_>) -> Py<PyAny> {
        self.callback.func.clone_ref(py)
    }

    #[getter]
    fn _args(&self, py: Python<'_>) -> Py<PyTuple> {
        self.callback.args.clone_ref(py)
    }

    #[getter]
    fn _cancelled(&self) -> bool {
        self.is_cancelled()
    }

    #[getter]
    fn _source_traceback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.source_traceback.as_ref().map(|tb| tb.clone_ref(py))
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        describe_handle(py, "Handle", &self.callback, self.is_cancelled(), None)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.callback.traverse(&visit)?;
        visit.call(&self.source_traceback)
    }
}

/// `asyncio.TimerHandle`'s counterpart: a callback due at a point in loop time.
#[pyclass(frozen, weakref, module = "ferroloop._core")]
pub struct TimerHandle {
    pub callback: Callback,
    pub when: f64,
    cancelled: AtomicBool,
    /// True while the timer sits in its loop's heap.
    scheduled: AtomicBool,
    stats: Arc<TimerStats>,
    source_traceback: Option<Py<PyAny>>,
}

impl TimerHandle {
    pub fn new(
        callback: Callback,
        when: f64,
        stats: Arc<TimerStats>,
        source_traceback: Option<Py<PyAny>>,
    ) -> Self {
        Self {
            callback,
            when,
            cancelled: AtomicBool::new(false),
            scheduled: AtomicBool::new(true),
            stats,
            source_traceback,
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Called by the loop when the timer leaves the heap.
    pub fn mark_unscheduled(&self) {
        self.scheduled.store(false, Ordering::Relaxed);
    }
}

#[pymethods]
impl TimerHandle {
    fn cancel(&self) {
        if self.cancelled.swap(true, Ordering::Relaxed) {
            return;
        }
        if self.scheduled.load(Ordering::Relaxed) {
            self.stats.cancelled_in_heap.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn cancelled(&self) -> bool {
        self.is_cancelled()
    }

    /// The absolute loop time at which the callback is due.
    fn when(&self) -> f64 {
        self.when
    }

    fn get_context(&self, py: Python<'_>) -> Py<PyAny> {
        self.callback.context.clone_ref(py)
    }

    fn _run(slf: &Bound<'_, Self>, loop_: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        match slf.get().callback.invoke(py) {
            Ok(()) => Ok(()),
            Err(err) => report_callback_error(loop_, slf.as_any(), Some(&slf.get().callback), err),
        }
    }

    #[getter]
    fn _when(&self) -> f64 {
        self.when
    }

    #[getter]
    fn _scheduled(&self) -> bool {
        self.scheduled.load(Ordering::Relaxed)
    }

    #[getter]
    fn _callback(&self, py: Python<'_>) -> Py<PyAny> {
        self.callback.func.clone_ref(py)
    }

    #[getter]
    fn _args(&self, py: Python<'_>) -> Py<PyTuple> {
        self.callback.args.clone_ref(py)
    }

    #[getter]
    fn _cancelled(&self) -> bool {
        self.is_cancelled()
    }

    #[getter]
    fn _source_traceback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.source_traceback.as_ref().map(|tb| tb.clone_ref(py))
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        describe_handle(
            py,
            "TimerHandle",
            &self.callback,
            self.is_cancelled(),
            Some(self.when),
        )
    }

    fn __hash__(&self) -> u64 {
        self.when.to_bits()
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.callback.traverse(&visit)?;
        visit.call(&self.source_traceback)
    }
}

fn describe_handle(
    py: Python<'_>,
    kind: &str,
    callback: &Callback,
    cancelled: bool,
    when: Option<f64>,
) -> PyResult<String> {
    let mut parts = vec![kind.to_owned()];
    if cancelled {
        parts.push("cancelled".to_owned());
    }
    if let Some(when) = when {
        parts.push(format!("when={when}"));
    }
    if !cancelled {
        parts.push(callback.describe(py)?);
    }
    Ok(format!("<{}>", parts.join(" ")))
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
        Some(callback) => callback.describe(py)?,
        None => handle.repr()?.to_string(),
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
