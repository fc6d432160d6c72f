//! `Loop.call_soon` on CPython 3.11: a method descriptor that binds once per
//! run.
//!
//! On 3.11, asyncio's C `Future` and `Task` schedule every done callback and
//! every task step with `PyObject_GetAttr(loop, "call_soon")` and a call of
//! the result. With a plain `method_descriptor` that attribute access makes a
//! new bound method each time and frees it after the call: ~380 of the ~5,700
//! user-space instructions of a `sleep(0)` task switch. From 3.12 on they use
//! `PyObject_VectorcallMethod`, which binds nothing, so this is installed on
//! 3.11 only.
//!
//! The descriptor wraps `call_soon`'s plain method descriptor:
//! * on a running loop, attribute access returns the bound method made when
//!   the run started (the loop holds it only while it runs: it refers back to
//!   the loop);
//! * anywhere else it binds as the plain descriptor does, and on the class
//!   (`EventLoop.call_soon`) it is the plain descriptor;
//! * it is itself an unbound-method descriptor (`Py_TPFLAGS_METHOD_DESCRIPTOR`
//!   with vectorcall), so `loop.call_soon(...)` written in Python is still
//!   called without binding, through the plain descriptor's own call.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::mem::{offset_of, size_of};
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyType;

use crate::event_loop::Loop;

/// The descriptor object.
#[repr(C)]
struct RunBoundDescriptor {
    ob_base: ffi::PyObject,
    /// Its vectorcall slot (`__vectorcalloffset__` points here).
    vectorcall: Option<ffi::vectorcallfunc>,
    /// The plain `method_descriptor` (a strong reference).
    plain: *mut ffi::PyObject,
    /// The plain descriptor's own vectorcall function.
    plain_vectorcall: Option<ffi::vectorcallfunc>,
}

/// The type whose instances (and subclasses' instances) the descriptor binds
/// for: `_core.Loop`.
static LOOP_TYPE: AtomicPtr<ffi::PyTypeObject> = AtomicPtr::new(ptr::null_mut());
/// The plain descriptor, once installed (a reference that is never given
/// back, so that a run can bind it even if the class attribute is replaced).
static PLAIN: AtomicPtr<ffi::PyObject> = AtomicPtr::new(ptr::null_mut());

/// Whether this interpreter's C `Future`/`Task` bind `call_soon` on each use.
pub fn wanted(py: Python<'_>) -> bool {
    py.version_info() < (3, 12)
}

/// Installs the descriptor for `plain` (the `call_soon` method descriptor of
/// `owner`, which must be `_core.Loop`) as `owner.call_soon`.
pub fn install(owner: &Bound<'_, PyType>, plain: Bound<'_, PyAny>) -> PyResult<()> {
    let py = owner.py();
    let descriptor_type = new_descriptor_type(py)?;
    // SAFETY: `descriptor_type` is a live type whose instances are
    // `RunBoundDescriptor`s; the alloc zeroes the object, and every field is
    // set before anything can see it.
    let descriptor = unsafe {
        let object = ffi::PyType_GenericAlloc(descriptor_type.as_ptr().cast(), 0);
        let object = Bound::from_owned_ptr_or_err(py, object)?;
        let this = object.as_ptr().cast::<RunBoundDescriptor>();
        (*this).vectorcall = Some(call_unbound);
        (*this).plain_vectorcall = ffi::PyVectorcall_Function(plain.as_ptr());
        (*this).plain = plain.clone().into_ptr();
        object
    };
    if LOOP_TYPE.load(Ordering::Relaxed).is_null() {
        LOOP_TYPE.store(owner.as_ptr().cast(), Ordering::Relaxed);
        PLAIN.store(plain.into_ptr(), Ordering::Relaxed);
    }
    owner.setattr("call_soon", descriptor)
}

/// `loop.call_soon` bound by the plain descriptor, for the loop to hold while
/// it runs; None when the descriptor is not installed.
pub fn bind_for_run(event_loop: &Bound<'_, Loop>) -> PyResult<Option<Py<PyAny>>> {
    let plain = PLAIN.load(Ordering::Relaxed);
    if plain.is_null() {
        return Ok(None);
    }
    let py = event_loop.py();
    // SAFETY: `plain` is a live method descriptor (PLAIN's reference is never
    // released), and binding it to a `Loop` is what attribute access does.
    unsafe {
        let Some(bind) = (*ffi::Py_TYPE(plain)).tp_descr_get else {
            return Ok(None);
        };
        let loop_type = ffi::Py_TYPE(event_loop.as_ptr()).cast::<ffi::PyObject>();
        let bound = bind(plain, event_loop.as_ptr(), loop_type);
        Ok(Some(Bound::from_owned_ptr_or_err(py, bound)?.unbind()))
    }
}

fn new_descriptor_type(py: Python<'_>) -> PyResult<Bound<'_, PyType>> {
    // The type keeps pointers into these arrays: leak them once per import.
    let members = Box::leak(Box::new([
        ffi::PyMemberDef {
            name: c"__vectorcalloffset__".as_ptr(),
            type_code: ffi::Py_T_PYSSIZET,
            offset: offset_of!(RunBoundDescriptor, vectorcall) as ffi::Py_ssize_t,
            flags: ffi::Py_READONLY,
            doc: ptr::null(),
        },
        ffi::PyMemberDef::default(),
    ]));
    let getset = Box::leak(Box::new([
        forwarded_attribute(c"__doc__"),
        forwarded_attribute(c"__name__"),
        forwarded_attribute(c"__qualname__"),
        forwarded_attribute(c"__objclass__"),
        forwarded_attribute(c"__text_signature__"),
        ffi::PyGetSetDef::default(),
    ]));
    let slots = Box::leak(Box::new([
        slot(ffi::Py_tp_descr_get, descr_get as *mut c_void),
        slot(ffi::Py_tp_call, ffi::PyVectorcall_Call as *mut c_void),
        slot(ffi::Py_tp_repr, repr as *mut c_void),
        slot(ffi::Py_tp_traverse, traverse as *mut c_void),
        slot(ffi::Py_tp_dealloc, dealloc as *mut c_void),
        slot(ffi::Py_tp_members, members.as_mut_ptr().cast()),
        slot(ffi::Py_tp_getset, getset.as_mut_ptr().cast()),
        ffi::PyType_Slot::default(),
    ]));
    let flags = ffi::Py_TPFLAGS_DEFAULT
        | ffi::Py_TPFLAGS_HAVE_GC
        | ffi::Py_TPFLAGS_HAVE_VECTORCALL
        | ffi::Py_TPFLAGS_METHOD_DESCRIPTOR
        | ffi::Py_TPFLAGS_DISALLOW_INSTANTIATION;
    let spec = Box::leak(Box::new(ffi::PyType_Spec {
        name: c"ferroloop._core.run_bound_method_descriptor".as_ptr(),
        basicsize: size_of::<RunBoundDescriptor>() as c_int,
        itemsize: 0,
        flags: flags as c_uint,
        slots: slots.as_mut_ptr(),
    }));
    // SAFETY: the spec and everything it points to live forever.
    unsafe {
        Ok(Bound::from_owned_ptr_or_err(py, ffi::PyType_FromSpec(spec))?.cast_into_unchecked())
    }
}

fn slot(slot: c_int, pfunc: *mut c_void) -> ffi::PyType_Slot {
    ffi::PyType_Slot { slot, pfunc }
}

/// A read-only attribute taken from the plain descriptor.
fn forwarded_attribute(name: &'static CStr) -> ffi::PyGetSetDef {
    ffi::PyGetSetDef {
        name: name.as_ptr(),
        get: Some(get_forwarded),
        set: None,
        doc: ptr::null(),
        closure: name.as_ptr() as *mut c_void,
    }
}

/// # Safety
/// `descriptor` is a `RunBoundDescriptor`.
unsafe fn plain_of(descriptor: *mut ffi::PyObject) -> *mut ffi::PyObject {
    unsafe { (*descriptor.cast::<RunBoundDescriptor>()).plain }
}

unsafe extern "C" fn descr_get(
    descriptor: *mut ffi::PyObject,
    instance: *mut ffi::PyObject,
    owner: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls this with the descriptor, a borrowed instance (or
    // NULL) and owner (or NULL), holding the GIL.
    unsafe {
        if !instance.is_null() {
            let bound = bound_while_running(instance);
            if !bound.is_null() {
                return bound;
            }
        }
        let plain = plain_of(descriptor);
        match (*ffi::Py_TYPE(plain)).tp_descr_get {
            Some(bind) => bind(plain, instance, owner),
            None => {
                ffi::Py_INCREF(plain);
                plain
            }
        }
    }
}

/// A new reference to the bound method `instance` holds for its run, or NULL
/// when `instance` is not a running loop.
///
/// # Safety
/// `instance` is a live object and the caller holds the GIL.
unsafe fn bound_while_running(instance: *mut ffi::PyObject) -> *mut ffi::PyObject {
    unsafe {
        if ffi::PyObject_TypeCheck(instance, LOOP_TYPE.load(Ordering::Relaxed)) == 0 {
            return ptr::null_mut();
        }
        let py = Python::assume_attached();
        let event_loop = Borrowed::from_ptr(py, instance).cast_unchecked::<Loop>();
        match event_loop.get().call_soon_of_run(py) {
            Some(bound) => bound.into_ptr(),
            None => ptr::null_mut(),
        }
    }
}

/// The unbound call `descriptor(loop, callback, *args, context=None)`, made
/// by the plain descriptor (which checks `loop`'s type as before).
unsafe extern "C" fn call_unbound(
    descriptor: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: usize,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls this through the vectorcall slot, with the GIL.
    unsafe {
        let this = descriptor.cast::<RunBoundDescriptor>();
        match (*this).plain_vectorcall {
            Some(call) => call((*this).plain, args, nargsf, kwnames),
            None => ffi::PyObject_Vectorcall((*this).plain, args, nargsf, kwnames),
        }
    }
}

unsafe extern "C" fn repr(descriptor: *mut ffi::PyObject) -> *mut ffi::PyObject {
    // SAFETY: called by CPython with a live descriptor and the GIL.
    unsafe { ffi::PyObject_Repr(plain_of(descriptor)) }
}

unsafe extern "C" fn get_forwarded(
    descriptor: *mut ffi::PyObject,
    name: *mut c_void,
) -> *mut ffi::PyObject {
    // SAFETY: `name` is the NUL-terminated name the getset entry was made with.
    unsafe { ffi::PyObject_GetAttrString(plain_of(descriptor), name as *const c_char) }
}

unsafe extern "C" fn traverse(
    descriptor: *mut ffi::PyObject,
    visit: ffi::visitproc,
    arg: *mut c_void,
) -> c_int {
    // SAFETY: called by the collector with a live descriptor. A heap type's
    // instances report their type too.
    unsafe {
        let plain = plain_of(descriptor);
        if !plain.is_null() {
            let status = visit(plain, arg);
            if status != 0 {
                return status;
            }
        }
        visit(ffi::Py_TYPE(descriptor).cast(), arg)
    }
}

unsafe extern "C" fn dealloc(descriptor: *mut ffi::PyObject) {
    // SAFETY: called once, when the last reference went; the type reference
    // the instance held is released last.
    unsafe {
        let descriptor_type = ffi::Py_TYPE(descriptor);
        ffi::PyObject_GC_UnTrack(descriptor.cast());
        let this = descriptor.cast::<RunBoundDescriptor>();
        let plain = std::mem::replace(&mut (*this).plain, ptr::null_mut());
        ffi::Py_XDECREF(plain);
        ffi::PyObject_GC_Del(descriptor.cast());
        ffi::Py_DECREF(descriptor_type.cast());
    }
}
