//! The few pieces of CPython's Python-level API the core calls, imported once
//! and cached per interpreter.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyTuple;

static FORMAT_CALLBACK_SOURCE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static GET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static SET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static EXTRACT_STACK: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static SYS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn cached<'py>(
    cell: &'static PyOnceLock<Py<PyAny>>,
    py: Python<'py>,
    module: &str,
    attr: &str,
) -> PyResult<&'py Bound<'py, PyAny>> {
    cell.import(py, module, attr)
}

/// asyncio's own rendering of a callback and its arguments, so our handle
/// reprs and log messages read exactly like the standard loop's.
pub fn format_callback_source(
    py: Python<'_>,
    func: &Bound<'_, PyAny>,
    args: &Bound<'_, PyTuple>,
) -> PyResult<String> {
    cached(
        &FORMAT_CALLBACK_SOURCE,
        py,
        "asyncio.format_helpers",
        "_format_callback_source",
    )?
    .call1((func, args))?
    .extract()
}

/// The loop registered as running in this thread, if any.
pub fn running_loop(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    cached(&GET_RUNNING_LOOP, py, "asyncio.events", "_get_running_loop")?.call0()
}

pub fn set_running_loop(py: Python<'_>, loop_: &Bound<'_, PyAny>) -> PyResult<()> {
    cached(&SET_RUNNING_LOOP, py, "asyncio.events", "_set_running_loop")?.call1((loop_,))?;
    Ok(())
}

/// The caller's stack, as asyncio records it for handles created in debug mode.
pub fn extract_stack(py: Python<'_>) -> PyResult<Py<PyAny>> {
    let sys = SYS.get_or_try_init(py, || py.import("sys").map(|m| m.into_any().unbind()))?;
    let frame = sys.bind(py).call_method1("_getframe", (0,))?;
    Ok(cached(&EXTRACT_STACK, py, "asyncio.format_helpers", "extract_stack")?
        .call1((frame,))?
        .unbind())
}

pub fn sys(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    Ok(SYS
        .get_or_try_init(py, || py.import("sys").map(|m| m.into_any().unbind()))?
        .bind(py))
}

static IS_COROUTINE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static IS_COROUTINE_FUNCTION: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// True for coroutine objects. Native coroutines are recognised without a
/// Python call; other awaitables go through asyncio's own test.
pub fn is_coroutine(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    // SAFETY: a type check on a live object.
    if unsafe { pyo3::ffi::PyCoro_CheckExact(obj.as_ptr()) } != 0 {
        return Ok(true);
    }
    if obj.is_callable() {
        // Callables are never coroutine objects in practice; skip the Python call.
        return Ok(false);
    }
    cached(&IS_COROUTINE, py, "asyncio.coroutines", "iscoroutine")?
        .call1((obj,))?
        .is_truthy()
}

pub fn is_coroutine_function(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<bool> {
    cached(&IS_COROUTINE_FUNCTION, py, "inspect", "iscoroutinefunction")?
        .call1((obj,))?
        .is_truthy()
}

/// `repr()` of a handle, for log messages.
pub fn format_handle(_py: Python<'_>, handle: &Bound<'_, PyAny>) -> PyResult<String> {
    Ok(handle.repr()?.to_string())
}
