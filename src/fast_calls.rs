//! `Loop.call_soon` as a raw `METH_FASTCALL | METH_KEYWORDS` C function.
//!
//! `call_soon` is the loop's hottest entry point: every `Future` completion
//! and every `Task` step goes through it (CPython's C Task calls it with a
//! `context=` keyword). This parser knows the one shape (`callback, *args,
//! context=None`) and takes the arguments straight from the vector the
//! interpreter passes, instead of PyO3's generic extraction. The gain measured
//! small (886 -> 866 instructions per call, docs/performance.md): the handle
//! and the context copy are the real costs. The behaviour, errors included,
//! is that of asyncio's `call_soon`.

use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple};

use crate::event_loop::Loop;

const CALL_SOON_DOC: &CStr = c"call_soon($self, callback, *args, context=None)\n--\n\n\
Arrange for callback(*args) to be called soon, in context (a copy of the current one by default).";

/// Installs the fast call as `Loop.call_soon`.
pub fn install(py: Python<'_>, loop_type: &Bound<'_, pyo3::types::PyType>) -> PyResult<()> {
    // The definition must outlive the type: leak it once per module import.
    let definition = Box::leak(Box::new(ffi::PyMethodDef {
        ml_name: c"call_soon".as_ptr(),
        ml_meth: ffi::PyMethodDefPointer {
            PyCFunctionFastWithKeywords: call_soon_fastcall,
        },
        ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
        ml_doc: CALL_SOON_DOC.as_ptr() as *const c_char,
    }));
    // SAFETY: `loop_type` is a live type object and `definition` lives forever.
    let descriptor = unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            ffi::PyDescr_NewMethod(loop_type.as_ptr().cast(), definition),
        )?
    };
    loop_type.setattr("call_soon", descriptor)
}

unsafe extern "C" fn call_soon_fastcall(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // The interpreter holds the GIL for us; attaching only bumps PyO3's count
    // so that references dropped in here are released at once.
    Python::attach(|py| {
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: CPython passes `nargs` positional arguments followed by
            // one value per keyword name, all alive for the call.
            unsafe { call_soon(py, slf, args, nargsf, kwnames) }
        }));
        let result = outcome.unwrap_or_else(|_| {
            Err(PyRuntimeError::new_err(
                "internal error in ferroloop's call_soon",
            ))
        });
        match result {
            Ok(handle) => handle.into_ptr(),
            Err(err) => {
                err.restore(py);
                std::ptr::null_mut()
            }
        }
    })
}

/// # Safety
/// `args` holds `nargs` positional arguments and then one value per name in
/// `kwnames` (a tuple, or NULL), as the vectorcall protocol guarantees.
unsafe fn call_soon(
    py: Python<'_>,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<Py<PyAny>> {
    // SAFETY: the descriptor only binds to instances of `Loop` (CPython checks
    // the type of `self` before calling a method descriptor's function).
    let this = unsafe { Bound::from_borrowed_ptr(py, slf).cast_into_unchecked::<Loop>() };
    let nargs = unsafe { ffi::PyVectorcall_NARGS(nargsf as usize) } as usize;
    let positional = unsafe { std::slice::from_raw_parts(args, nargs) };
    let keywords = unsafe { Keywords::parse(py, args.add(nargs), kwnames)? };
    let callback = match (positional.first(), keywords.callback) {
        (Some(&callback), None) => unsafe { Bound::from_borrowed_ptr(py, callback) },
        (None, Some(callback)) => callback,
        (Some(_), Some(_)) => {
            return Err(PyTypeError::new_err(
                "call_soon() got multiple values for argument 'callback'",
            ))
        }
        (None, None) => {
            return Err(PyTypeError::new_err(
                "call_soon() missing 1 required positional argument: 'callback'",
            ))
        }
    };
    let rest = positional
        .iter()
        .skip(1)
        .map(|&arg| unsafe { Bound::from_borrowed_ptr(py, arg) });
    let call_args = PyTuple::new(py, rest)?;
    this.get()
        .call_soon(py, &callback, &call_args, keywords.context)
        .map(Py::into_any)
}

/// The keywords `call_soon` accepts: `context`, and `callback` by name.
struct Keywords<'py> {
    callback: Option<Bound<'py, PyAny>>,
    context: Option<Py<PyAny>>,
}

impl<'py> Keywords<'py> {
    /// # Safety
    /// `values` holds one value per name in `kwnames` (a tuple, or NULL).
    unsafe fn parse(
        py: Python<'py>,
        values: *const *mut ffi::PyObject,
        kwnames: *mut ffi::PyObject,
    ) -> PyResult<Self> {
        let mut keywords = Keywords {
            callback: None,
            context: None,
        };
        if kwnames.is_null() {
            return Ok(keywords);
        }
        let names =
            unsafe { Bound::from_borrowed_ptr(py, kwnames).cast_into_unchecked::<PyTuple>() };
        for (index, name) in names.iter().enumerate() {
            let value = unsafe { Bound::from_borrowed_ptr(py, *values.add(index)) };
            match keyword_name(py, &name) {
                Some("context") => keywords.context = Some(value.unbind()),
                Some("callback") => keywords.callback = Some(value),
                _ => {
                    return Err(PyTypeError::new_err(format!(
                        "call_soon() got an unexpected keyword argument '{name}'"
                    )))
                }
            }
        }
        Ok(keywords)
    }
}

/// Keyword names are interned strings: compare by identity first.
fn keyword_name(py: Python<'_>, name: &Bound<'_, PyAny>) -> Option<&'static str> {
    if name.is(pyo3::intern!(py, "context")) {
        return Some("context");
    }
    match name.cast::<PyString>().ok()?.to_str().ok()? {
        "context" => Some("context"),
        "callback" => Some("callback"),
        _ => None,
    }
}
