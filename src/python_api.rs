//! The few pieces of CPython's Python-level API the core calls, imported once
//! and cached per interpreter.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple};

use crate::event_loop::Loop;

static FORMAT_CALLBACK_SOURCE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static FORMAT_TAKES_DEBUG: PyOnceLock<bool> = PyOnceLock::new();
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
/// reprs and log messages read exactly like the standard loop's. From 3.13
/// (gh-112997) asyncio shows the arguments only in debug mode: `debug` is
/// passed on where its helper takes it.
pub fn format_callback_source(
    py: Python<'_>,
    func: &Bound<'_, PyAny>,
    args: &Bound<'_, PyTuple>,
    debug: bool,
) -> PyResult<String> {
    let helper = cached(
        &FORMAT_CALLBACK_SOURCE,
        py,
        "asyncio.format_helpers",
        "_format_callback_source",
    )?;
    let takes_debug = *FORMAT_TAKES_DEBUG.get_or_try_init(py, || -> PyResult<bool> {
        let defaults = helper.getattr("__kwdefaults__")?;
        Ok(!defaults.is_none() && defaults.contains("debug")?)
    })?;
    let described = if takes_debug {
        let kwargs = PyDict::new(py);
        kwargs.set_item("debug", debug)?;
        helper.call((func, args), Some(&kwargs))?
    } else {
        helper.call1((func, args))?
    };
    described.extract()
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
    Ok(cached(
        &EXTRACT_STACK,
        py,
        "asyncio.format_helpers",
        "extract_stack",
    )?
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

/// The task whose method `callback` is, if it is one (asyncio names such
/// callbacks by their task in slow-callback warnings).
pub fn owning_task<'py>(
    py: Python<'py>,
    callback: &Bound<'py, PyAny>,
) -> Option<Bound<'py, PyAny>> {
    let owner = callback.getattr("__self__").ok()?;
    let task_type = cached(&TASK_TYPE, py, "asyncio.tasks", "Task").ok()?;
    owner.is_instance(task_type).ok()?.then_some(owner)
}

static FUTURE_TYPE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static TASK_TYPE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static LOOP_KWNAMES: PyOnceLock<Py<PyTuple>> = PyOnceLock::new();
static TASK_KWNAMES: PyOnceLock<Py<PyTuple>> = PyOnceLock::new();

/// Calls `callable(*positional, **dict(zip(kwnames, keyword_values)))` through
/// vectorcall. A callable without vectorcall (a type such as the C Future)
/// still gets an argument tuple and dict, built by CPython for its `tp_call`.
fn vectorcall<'py>(
    py: Python<'py>,
    callable: &Bound<'py, PyAny>,
    args: &[*mut pyo3::ffi::PyObject],
    positional: usize,
    kwnames: &Bound<'py, PyTuple>,
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: every pointer in `args` is a live object borrowed from the caller
    // for the duration of the call; kwnames is a tuple of interned strings
    // whose length is args.len() - positional.
    unsafe {
        let result = pyo3::ffi::PyObject_Vectorcall(
            callable.as_ptr(),
            args.as_ptr(),
            positional,
            kwnames.as_ptr(),
        );
        Bound::from_owned_ptr_or_err(py, result)
    }
}

fn kwnames<'py>(
    cell: &'static PyOnceLock<Py<PyTuple>>,
    py: Python<'py>,
    names: &[&str],
) -> PyResult<&'py Bound<'py, PyTuple>> {
    Ok(cell
        .get_or_try_init(py, || {
            let interned: Vec<_> = names
                .iter()
                .map(|name| pyo3::types::PyString::intern(py, name))
                .collect();
            PyTuple::new(py, interned).map(Bound::unbind)
        })?
        .bind(py))
}

/// `asyncio.Future(loop=loop)` (the C implementation).
pub fn new_future<'py>(py: Python<'py>, loop_: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let future_type = cached(&FUTURE_TYPE, py, "asyncio.futures", "Future")?;
    if let Some(kwargs) = running_loop_kwargs(loop_) {
        return call_with_dict(py, future_type, &PyTuple::empty(py), &kwargs);
    }
    let names = kwnames(&LOOP_KWNAMES, py, &["loop"])?;
    vectorcall(py, future_type, &[loop_.as_ptr()], 0, names)
}

/// `asyncio.Task(coro, loop=loop, name=name, context=context)`.
pub fn new_task<'py>(
    py: Python<'py>,
    coro: &Bound<'py, PyAny>,
    loop_: &Bound<'py, PyAny>,
    name: &Bound<'py, PyAny>,
    context: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let task_type = cached(&TASK_TYPE, py, "asyncio.tasks", "Task")?;
    if name.is_none() && context.is_none() {
        if let Some(kwargs) = running_loop_kwargs(loop_) {
            let args = PyTuple::new(py, [coro])?;
            return call_with_dict(py, task_type, &args, &kwargs);
        }
    }
    let names = kwnames(&TASK_KWNAMES, py, &["loop", "name", "context"])?;
    let args = [
        coro.as_ptr(),
        loop_.as_ptr(),
        name.as_ptr(),
        context.as_ptr(),
    ];
    vectorcall(py, task_type, &args, 1, names)
}

/// The running ferroloop loop's `{"loop": loop}`, if `loop_` is one.
fn running_loop_kwargs<'py>(loop_: &Bound<'py, PyAny>) -> Option<Bound<'py, PyDict>> {
    let event_loop = loop_.cast::<Loop>().ok()?;
    event_loop.get().own_kwargs(loop_.py())
}

/// `callable(*args, **kwargs)` with the dict passed as it is: for a type
/// without vectorcall (the C Future and Task) this spares the dict that a
/// call with keyword names would build.
fn call_with_dict<'py>(
    py: Python<'py>,
    callable: &Bound<'py, PyAny>,
    args: &Bound<'py, PyTuple>,
    kwargs: &Bound<'py, PyDict>,
) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: all three are live objects of the types PyObject_Call expects.
    // Neither C type's constructor changes the dict.
    unsafe {
        let result = pyo3::ffi::PyObject_Call(callable.as_ptr(), args.as_ptr(), kwargs.as_ptr());
        Bound::from_owned_ptr_or_err(py, result)
    }
}

/// A byte count as a Python int, through `isize`: pyo3 converts that with
/// `PyLong_FromLong`, which builds counts up to 2**30 on CPython's one-digit
/// fast path; its `usize` conversion goes through
/// `PyLong_FromUnsignedLongLong`, which does not (~50 instructions more per
/// read handed to `buffer_updated` or returned by `sock_recv_into`).
pub fn byte_count(py: Python<'_>, count: usize) -> PyResult<Bound<'_, PyAny>> {
    let count = isize::try_from(count)
        .map_err(|_| pyo3::exceptions::PyOverflowError::new_err("byte count too large"))?;
    Ok(count.into_pyobject(py)?.into_any())
}
