//! Hot methods as raw `METH_FASTCALL | METH_KEYWORDS` C functions.
//!
//! * `Loop.call_soon`: every `Future` completion and every `Task` step goes
//!   through it (CPython's C Task calls it with a `context=` keyword). The
//!   parser knows the one shape (`callback, *args, context=None`). The gain
//!   measured small (886 -> 866 instructions per call, docs/performance.md):
//!   the handle and the context copy are the real costs.
//! * `Loop.create_task`: one per task, and gather, TaskGroup and
//!   `asyncio.create_task` all go through it. Its `**kwargs` gave it PyO3's
//!   tuple-and-dict convention (~300 instructions per task, 1.2% of a
//!   gather of 100k tasks); the common shapes pass no extra keywords.
//! * `StreamTransport.write(data)` and `writelines`: one per response. PyO3's
//!   trampoline and generic argument extraction were ~370 of the ~2,240
//!   user-space instructions of a 1 KiB echo request; one positional
//!   argument is now taken as it is.
//!
//! Both take the arguments straight from the vector the interpreter passes.
//! Their behaviour, errors included, is asyncio's.

use std::ffi::{c_char, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple, PyType};

use crate::call_soon_descriptor;
use crate::event_loop::Loop;
use crate::handles::Args;
use crate::stream::StreamTransport;

const CALL_SOON_DOC: &CStr = c"call_soon($self, callback, *args, context=None)\n--\n\n\
Arrange for callback(*args) to be called soon, in context (a copy of the current one by default).";

// The signature shown is asyncio's up to 3.13.2, which takes no other
// keywords (`_create_task_slow` rejects them there).
const CREATE_TASK_DOC: &CStr = c"create_task($self, coro, *, name=None, context=None)\n--\n\n\
Schedule coro as an asyncio.Task (or through the task factory).";

const WRITELINES_DOC: &CStr = c"writelines($self, list_of_data)\n--\n\n\
Write a sequence of bytes-like objects, with one writev system call where possible.";

const WRITE_DOC: &CStr = c"write($self, data)\n--\n\n\
Write a bytes-like object to the transport, buffering what the socket does not take at once.";

/// The signature CPython calls a `METH_FASTCALL | METH_KEYWORDS` function with.
type FastCall = unsafe extern "C" fn(
    *mut ffi::PyObject,
    *const *mut ffi::PyObject,
    ffi::Py_ssize_t,
    *mut ffi::PyObject,
) -> *mut ffi::PyObject;

/// Installs the fast calls on their types.
pub fn install(py: Python<'_>) -> PyResult<()> {
    let loop_type = py.get_type::<Loop>();
    let call_soon = method_descriptor(&loop_type, c"call_soon", call_soon_fastcall, CALL_SOON_DOC)?;
    if call_soon_descriptor::wanted(py) {
        call_soon_descriptor::install(&loop_type, call_soon)?;
    } else {
        loop_type.setattr("call_soon", call_soon)?;
    }
    install_method(
        &loop_type,
        c"create_task",
        create_task_fastcall,
        CREATE_TASK_DOC,
    )?;
    let stream_transport = py.get_type::<StreamTransport>();
    install_method(&stream_transport, c"write", write_fastcall, WRITE_DOC)?;
    install_method(
        &stream_transport,
        c"writelines",
        writelines_fastcall,
        WRITELINES_DOC,
    )
}

fn install_method(
    owner: &Bound<'_, PyType>,
    name: &'static CStr,
    function: FastCall,
    doc: &'static CStr,
) -> PyResult<()> {
    let descriptor = method_descriptor(owner, name, function, doc)?;
    owner.setattr(name.to_str().expect("method names are ASCII"), descriptor)
}

/// A `method_descriptor` of `owner` for a fast call.
fn method_descriptor<'py>(
    owner: &Bound<'py, PyType>,
    name: &'static CStr,
    function: FastCall,
    doc: &'static CStr,
) -> PyResult<Bound<'py, PyAny>> {
    // The definition must outlive the type: leak it once per module import.
    let definition = Box::leak(Box::new(ffi::PyMethodDef {
        ml_name: name.as_ptr(),
        ml_meth: ffi::PyMethodDefPointer {
            PyCFunctionFastWithKeywords: function,
        },
        ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
        ml_doc: doc.as_ptr() as *const c_char,
    }));
    // SAFETY: `owner` is a live type object and `definition` lives forever.
    unsafe {
        Bound::from_owned_ptr_or_err(
            owner.py(),
            ffi::PyDescr_NewMethod(owner.as_ptr().cast(), definition),
        )
    }
}

/// Runs a fast call's body: attached to the interpreter (which holds the GIL
/// for us; attaching only bumps PyO3's count so that references dropped in
/// here are released at once), with panics turned into `RuntimeError`.
fn run_fast_call(
    what: &str,
    body: impl for<'py> FnOnce(Python<'py>) -> PyResult<Py<PyAny>>,
) -> *mut ffi::PyObject {
    Python::attach(|py| {
        let outcome = catch_unwind(AssertUnwindSafe(|| body(py)));
        let result = outcome.unwrap_or_else(|_| {
            Err(PyRuntimeError::new_err(format!(
                "internal error in ferroloop's {what}"
            )))
        });
        match result {
            Ok(value) => value.into_ptr(),
            Err(err) => {
                err.restore(py);
                std::ptr::null_mut()
            }
        }
    })
}

/// Defines `$fastcall`, the `METH_FASTCALL | METH_KEYWORDS` function of the
/// `Loop` method `$name`, which runs `$body(py, loop, positional arguments,
/// keyword values, keyword names or NULL)`; the body may rely on one value
/// per keyword name, all alive for the call. A macro rather than a shared
/// function taking the body: through a function pointer `call_soon` cost ~28
/// instructions more per call (docs/performance.md, session 25).
macro_rules! loop_fast_call {
    ($fastcall:ident, $name:literal, $body:ident) => {
        unsafe extern "C" fn $fastcall(
            slf: *mut ffi::PyObject,
            args: *const *mut ffi::PyObject,
            nargsf: ffi::Py_ssize_t,
            kwnames: *mut ffi::PyObject,
        ) -> *mut ffi::PyObject {
            run_fast_call($name, |py| {
                // SAFETY: the descriptor only binds to instances of `Loop`
                // (CPython checks the type of `self` before calling a method
                // descriptor's function), and CPython passes `nargs`
                // positional arguments followed by one value per keyword
                // name, all alive for the call.
                unsafe {
                    let this = Bound::from_borrowed_ptr(py, slf).cast_into_unchecked::<Loop>();
                    let nargs = ffi::PyVectorcall_NARGS(nargsf as usize) as usize;
                    // A caller may pass NULL for no arguments, which a Rust
                    // slice must not hold.
                    let positional = match nargs {
                        0 => &[],
                        _ => std::slice::from_raw_parts(args, nargs),
                    };
                    $body(py, &this, positional, args.add(nargs), kwnames)
                }
            })
        }
    };
}

loop_fast_call!(create_task_fastcall, "create_task", create_task);

/// `create_task(coro, *, name=None, context=None, **kwargs)`, with the
/// `TypeError`s Python raises for a def with that signature.
///
/// # Safety
/// As for every body of [`loop_fast_call`].
unsafe fn create_task(
    py: Python<'_>,
    this: &Bound<'_, Loop>,
    positional: &[*mut ffi::PyObject],
    keyword_values: *const *mut ffi::PyObject,
    kwnames: *mut ffi::PyObject,
) -> PyResult<Py<PyAny>> {
    let nargs = positional.len();
    if nargs > 1 {
        return Err(PyTypeError::new_err(format!(
            "create_task() takes 2 positional arguments but {} were given",
            nargs + 1
        )));
    }
    let mut coro = positional
        .first()
        .map(|&coro| unsafe { Bound::from_borrowed_ptr(py, coro) });
    let (mut name, mut context, mut extra) = (None, None, None);
    if !kwnames.is_null() {
        let names =
            unsafe { Bound::from_borrowed_ptr(py, kwnames).cast_into_unchecked::<PyTuple>() };
        for (index, keyword) in names.iter().enumerate() {
            let value = unsafe { Bound::from_borrowed_ptr(py, *keyword_values.add(index)) };
            let slot = if keyword.is(pyo3::intern!(py, "name")) {
                &mut name
            } else if keyword.is(pyo3::intern!(py, "context")) {
                &mut context
            } else {
                match keyword.cast::<PyString>()?.to_str()? {
                    "name" => &mut name,
                    "context" => &mut context,
                    "coro" if coro.is_some() => {
                        return Err(PyTypeError::new_err(
                            "create_task() got multiple values for argument 'coro'",
                        ))
                    }
                    "coro" => &mut coro,
                    _ => {
                        extra
                            .get_or_insert_with(|| PyDict::new(py))
                            .set_item(keyword, value)?;
                        continue;
                    }
                }
            };
            *slot = Some(value);
        }
    }
    let coro = coro.ok_or_else(|| {
        PyTypeError::new_err("create_task() missing 1 required positional argument: 'coro'")
    })?;
    Loop::create_task(this, &coro, name.as_ref(), context.as_ref(), extra).map(Bound::unbind)
}

unsafe extern "C" fn write_fastcall(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    let method = OneArgumentMethod {
        name: "write",
        param: "data",
        body: StreamTransport::write,
    };
    // SAFETY: CPython calls this as the descriptor's fast call.
    unsafe { method.call(slf, args, nargsf, kwnames) }
}

unsafe extern "C" fn writelines_fastcall(
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    let method = OneArgumentMethod {
        name: "writelines",
        param: "list_of_data",
        body: StreamTransport::writelines,
    };
    // SAFETY: CPython calls this as the descriptor's fast call.
    unsafe { method.call(slf, args, nargsf, kwnames) }
}

/// A `StreamTransport` method `name(self, param)` returning None.
struct OneArgumentMethod {
    name: &'static str,
    param: &'static str,
    body: for<'py> fn(&Bound<'py, StreamTransport>, &Bound<'py, PyAny>) -> PyResult<()>,
}

impl OneArgumentMethod {
    /// # Safety
    /// The arguments are those CPython passes to a `METH_FASTCALL |
    /// METH_KEYWORDS` function of a descriptor installed on StreamTransport.
    unsafe fn call(
        &self,
        slf: *mut ffi::PyObject,
        args: *const *mut ffi::PyObject,
        nargsf: ffi::Py_ssize_t,
        kwnames: *mut ffi::PyObject,
    ) -> *mut ffi::PyObject {
        run_fast_call(self.name, |py| {
            // SAFETY: the descriptor only binds to StreamTransport instances
            // (CPython checks the type of `self`), and the vectorcall
            // protocol guarantees `nargs` arguments plus one value per
            // keyword name.
            unsafe {
                let this =
                    Bound::from_borrowed_ptr(py, slf).cast_into_unchecked::<StreamTransport>();
                let value = only_argument(py, self.name, self.param, args, nargsf, kwnames)?;
                (self.body)(&this, &value)?;
            }
            Ok(py.None())
        })
    }
}

/// The one argument of a method `name(self, param)`, given by position or by
/// name, with the `TypeError`s Python raises for a def with that signature.
///
/// # Safety
/// `args` holds `nargs` positional arguments and then one value per name in
/// `kwnames` (a tuple, or NULL).
unsafe fn only_argument<'py>(
    py: Python<'py>,
    name: &str,
    param: &str,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<Bound<'py, PyAny>> {
    let nargs = unsafe { ffi::PyVectorcall_NARGS(nargsf as usize) } as usize;
    if nargs == 1 && kwnames.is_null() {
        return Ok(unsafe { Bound::from_borrowed_ptr(py, *args) });
    }
    if nargs > 1 {
        return Err(PyTypeError::new_err(format!(
            "{name}() takes 2 positional arguments but {} were given",
            nargs + 1
        )));
    }
    let mut value = (nargs == 1).then(|| unsafe { Bound::from_borrowed_ptr(py, *args) });
    if !kwnames.is_null() {
        let names =
            unsafe { Bound::from_borrowed_ptr(py, kwnames).cast_into_unchecked::<PyTuple>() };
        for (index, keyword) in names.iter().enumerate() {
            let is_param = keyword
                .cast::<PyString>()
                .ok()
                .and_then(|k| k.to_str().ok().map(|k| k == param))
                .unwrap_or(false);
            if !is_param {
                return Err(PyTypeError::new_err(format!(
                    "{name}() got an unexpected keyword argument '{keyword}'"
                )));
            }
            if value.is_some() {
                return Err(PyTypeError::new_err(format!(
                    "{name}() got multiple values for argument '{param}'"
                )));
            }
            value = Some(unsafe { Bound::from_borrowed_ptr(py, *args.add(nargs + index)) });
        }
    }
    value.ok_or_else(|| {
        PyTypeError::new_err(format!(
            "{name}() missing 1 required positional argument: '{param}'"
        ))
    })
}

loop_fast_call!(call_soon_fastcall, "call_soon", call_soon);

/// `call_soon(callback, *args, context=None)`.
///
/// # Safety
/// As for every body of [`loop_fast_call`].
unsafe fn call_soon(
    py: Python<'_>,
    this: &Bound<'_, Loop>,
    positional: &[*mut ffi::PyObject],
    keyword_values: *const *mut ffi::PyObject,
    kwnames: *mut ffi::PyObject,
) -> PyResult<Py<PyAny>> {
    let keywords = unsafe { Keywords::parse(py, keyword_values, kwnames)? };
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
    let rest = positional.get(1..).unwrap_or_default();
    let call_args = match rest {
        [] => Args::None,
        [only] => Args::One(unsafe { Bound::from_borrowed_ptr(py, *only) }.unbind()),
        _ => Args::Tuple(
            PyTuple::new(
                py,
                rest.iter()
                    .map(|&arg| unsafe { Bound::from_borrowed_ptr(py, arg) }),
            )?
            .unbind(),
        ),
    };
    this.get()
        .call_soon(py, &callback, call_args, keywords.context)
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
