//! Reusing the `bytes` object of the previous read.
//!
//! A transport hands every read to `data_received` as a new `bytes`. Most
//! protocols consume it there (parse it, copy it into a buffer, write it
//! back) and keep no reference, so when the call returns the transport holds
//! the only one. Such an object is nobody else's: its storage can be
//! refilled for the next read instead of being freed and allocated again.
//! Reads over 512 bytes come from `malloc`, whose allocation and free were
//! ~45% of the user-space instructions of a 1 KiB echo request.
//!
//! CPython relies on the same fact (a reference count of one means nobody
//! else can see the object) to resize `bytes` and `str` in place. A reused
//! object gets the new size, its trailing NUL and an empty hash cache, so it
//! is indistinguishable from a new one. Each thread keeps one spare object;
//! a read reuses it only if it would fill more than half of it, so a
//! protocol that keeps what it is given never holds much unused storage.

use std::cell::Cell;
use std::ptr::NonNull;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// The largest spare kept: the size of the transports' read buffer.
const MAX_SPARE: usize = crate::reads::READ_SIZE;

/// A `bytes` object only this thread references, and how many bytes of
/// storage it owns (at least).
struct Spare {
    object: NonNull<ffi::PyObject>,
    capacity: usize,
}

thread_local! {
    // A raw pointer rather than `Py<PyBytes>`: dropping a Python reference
    // in a thread-local destructor could run after the interpreter is gone.
    // A thread that ends without closing its loop leaks this one object.
    static SPARE: Cell<Option<Spare>> = const { Cell::new(None) };
}

/// A `bytes` object of `size` (> 0) bytes whose contents the caller must
/// fill before anyone else sees it: the spare if it fits, else a new one.
pub fn new_uninit(py: Python<'_>, size: usize) -> PyResult<Bound<'_, PyBytes>> {
    debug_assert!(size > 0);
    if let Some(spare) = SPARE.take() {
        if size <= spare.capacity && size > spare.capacity / 2 {
            // SAFETY: the spare is an exact bytes object with at least
            // `capacity` bytes of storage, referenced only by SPARE (now
            // moved into this function).
            unsafe {
                reset(spare.object.as_ptr(), size);
                return Ok(Bound::from_owned_ptr(py, spare.object.as_ptr()).cast_into_unchecked());
            }
        }
        SPARE.set(Some(spare));
    }
    // SAFETY: with a NULL source, PyBytes_FromStringAndSize returns a new
    // reference (or NULL with an exception set) to a new object, never a
    // shared singleton, whose `size` bytes are uninitialised.
    unsafe {
        let raw = ffi::PyBytes_FromStringAndSize(std::ptr::null(), size as ffi::Py_ssize_t);
        Ok(Bound::from_owned_ptr_or_err(py, raw)?.cast_into_unchecked())
    }
}

/// A `bytes` object holding a copy of `data` (non-empty).
pub fn copy_of<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    let object = new_uninit(py, data.len())?;
    // SAFETY: the object owns `data.len()` bytes of storage and nobody else
    // sees it yet.
    unsafe {
        let storage = ffi::PyBytes_AS_STRING(object.as_ptr())
            .cast::<u8>()
            .cast_mut();
        std::ptr::copy_nonoverlapping(data.as_ptr(), storage, data.len());
    }
    Ok(object)
}

/// Takes back `data` after a protocol call: kept as the spare if the caller
/// holds the only reference, released otherwise.
pub fn recycle(data: Bound<'_, PyBytes>) {
    let raw = data.as_ptr();
    // SAFETY: `raw` is a live object we hold a reference to.
    let (alone, size) = unsafe {
        (
            ffi::Py_REFCNT(raw) == 1 && ffi::PyBytes_CheckExact(raw) != 0,
            ffi::Py_SIZE(raw),
        )
    };
    let capacity = size as usize;
    if !alone || capacity == 0 || capacity > MAX_SPARE {
        return;
    }
    // SAFETY: `into_ptr` hands our (only) reference over to the spare.
    let object = unsafe { NonNull::new_unchecked(data.into_ptr()) };
    if let Some(previous) = SPARE.replace(Some(Spare { object, capacity })) {
        // SAFETY: the GIL is held (we had a `Bound`); this drops the
        // reference the spare owned.
        unsafe { ffi::Py_DECREF(previous.object.as_ptr()) };
    }
}

/// Frees this thread's spare (when its loop closes).
pub fn release(_py: Python<'_>) {
    if let Some(spare) = SPARE.take() {
        // SAFETY: the GIL is held; this drops the reference the spare owned.
        unsafe { ffi::Py_DECREF(spare.object.as_ptr()) };
    }
}

/// Gives a spare bytes object the size `size` (at most its capacity).
///
/// # Safety
/// `object` must be an exact bytes object with at least `size` bytes of
/// storage that nobody else references.
unsafe fn reset(object: *mut ffi::PyObject, size: usize) {
    let bytes = object.cast::<ffi::PyBytesObject>();
    (*bytes.cast::<ffi::PyVarObject>()).ob_size = size as ffi::Py_ssize_t;
    #[allow(deprecated)]
    {
        // -1: not computed yet; the next hash() fills it in.
        (*bytes).ob_shash = -1;
    }
    *ffi::PyBytes_AS_STRING(object).cast_mut().add(size) = 0;
}
