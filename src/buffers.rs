//! Borrowing the bytes of Python buffer objects (bytes, bytearray,
//! memoryview, ...) without copying them.

use std::mem::MaybeUninit;
use std::os::raw::c_int;

use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::{PyBufferError, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// A contiguous buffer acquired with `PyObject_GetBuffer` and released on
/// drop, held by value. PyO3's `PyUntypedBuffer` boxes its `Py_buffer` (a
/// `malloc` and a `free` per call: with the flags it asks for, ~260
/// instructions per `get_buffer()` result or bytearray written) and asks
/// for strides and format that only its checks use. A writable request
/// that fails falls back to it for asyncio's error messages.
pub struct Acquired(ffi::Py_buffer);

impl Acquired {
    /// `PyBUF_SIMPLE` (or `PyBUF_WRITABLE`) asks for a C-contiguous buffer;
    /// anything else (not a buffer, not contiguous, read-only) is the error
    /// the exporter raised.
    fn get(data: &Bound<'_, PyAny>, flags: c_int) -> PyResult<Self> {
        let mut view = MaybeUninit::<ffi::Py_buffer>::uninit();
        // SAFETY: `view` is a valid out-pointer; on success it is filled and
        // owns a reference to the exporter until PyBuffer_Release.
        unsafe {
            if ffi::PyObject_GetBuffer(data.as_ptr(), view.as_mut_ptr(), flags) == 0 {
                Ok(Self(view.assume_init()))
            } else {
                Err(PyErr::fetch(data.py()))
            }
        }
    }

    fn as_slice(&self) -> &[u8] {
        if self.0.len <= 0 || self.0.buf.is_null() {
            return &[];
        }
        // SAFETY: a simple buffer is `len` contiguous bytes at `buf`, valid
        // until released (callers run no Python code meanwhile).
        unsafe { std::slice::from_raw_parts(self.0.buf as *const u8, self.0.len as usize) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        if self.0.len <= 0 || self.0.buf.is_null() {
            return &mut [];
        }
        // SAFETY: as `as_slice`; acquired with PyBUF_WRITABLE.
        unsafe { std::slice::from_raw_parts_mut(self.0.buf as *mut u8, self.0.len as usize) }
    }
}

impl Drop for Acquired {
    fn drop(&mut self) {
        // SAFETY: acquired by PyObject_GetBuffer and not released yet; the
        // GIL is held wherever an `Acquired` exists.
        unsafe { ffi::PyBuffer_Release(&mut self.0) };
    }
}

/// Calls `f` with the contents of a bytes-like object. The slice must not
/// outlive the call, and `f` must not run Python code (which could resize a
/// bytearray under it). A buffer that is not contiguous (a strided
/// memoryview) fails with the `BufferError` CPython raises for it, as
/// `socket.send` would: see [`is_non_contiguous`].
pub fn with_bytes<R>(
    data: &Bound<'_, PyAny>,
    what: &str,
    f: impl FnOnce(&[u8]) -> R,
) -> PyResult<R> {
    if let Ok(bytes) = data.cast::<PyBytes>() {
        return Ok(f(bytes.as_bytes()));
    }
    let buffer = simple_buffer(data, what)?;
    Ok(f(buffer.as_slice()))
}

fn simple_buffer(data: &Bound<'_, PyAny>, what: &str) -> PyResult<Acquired> {
    Acquired::get(data, ffi::PyBUF_SIMPLE).map_err(|err| {
        if is_non_contiguous(data.py(), &err) {
            err
        } else {
            not_bytes_like(data, what)
        }
    })
}

/// Whether `err` is the `BufferError` of a buffer that cannot be read as
/// one block of bytes. asyncio's transports hand such data (a strided
/// memoryview) to the socket as it is, so the failure shows only when
/// they send it: the transport is closed with the error if it was to be
/// sent at once, and a copy is queued if other data was waiting.
pub fn is_non_contiguous(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PyBufferError>(py)
}

/// `bytes(data)`: a contiguous copy of any bytes-like object.
pub fn contiguous_copy<'py>(data: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    // SAFETY: PyBytes_FromObject returns a new reference or NULL with an
    // exception set.
    unsafe {
        Bound::from_owned_ptr_or_err(data.py(), ffi::PyBytes_FromObject(data.as_ptr()))
            .map(|copy| copy.cast_into_unchecked())
    }
}

/// Calls `f` with the writable contents of a buffer (for `recv_into`).
pub fn with_bytes_mut<R>(
    data: &Bound<'_, PyAny>,
    what: &str,
    f: impl FnOnce(&mut [u8]) -> R,
) -> PyResult<R> {
    if let Ok(mut buffer) = Acquired::get(data, ffi::PyBUF_WRITABLE) {
        return Ok(f(buffer.as_mut_slice()));
    }
    let buffer = PyUntypedBuffer::get(data).map_err(|_| not_bytes_like(data, what))?;
    if buffer.readonly() {
        return Err(PyTypeError::new_err(format!(
            "{what} must be a writable bytes-like object, not {}",
            type_name(data)
        )));
    }
    if !buffer.is_c_contiguous() {
        return Err(PyBufferError::new_err("buffer must be C-contiguous"));
    }
    // SAFETY: as in `with_bytes`; the buffer is writable and exclusively ours
    // for the duration of `f`, which runs no Python code.
    Ok(f(unsafe { untyped_slice_mut(&buffer) }))
}

/// The bytes of a C-contiguous buffer; an exporter may give a NULL pointer
/// for an empty one, which a Rust slice must not have.
///
/// # Safety
/// The buffer must stay exported, unmoved and unresized while the slice lives.
pub unsafe fn untyped_slice(buffer: &PyUntypedBuffer) -> &[u8] {
    let data = buffer.buf_ptr() as *const u8;
    if data.is_null() || buffer.len_bytes() == 0 {
        return &[];
    }
    // SAFETY: `len_bytes` contiguous bytes at `data`, valid per the caller.
    unsafe { std::slice::from_raw_parts(data, buffer.len_bytes()) }
}

/// `untyped_slice` for a writable buffer.
///
/// # Safety
/// As `untyped_slice`; the buffer must be writable and nothing else may use
/// it while the slice lives.
#[allow(clippy::mut_from_ref)]
unsafe fn untyped_slice_mut(buffer: &PyUntypedBuffer) -> &mut [u8] {
    let data = buffer.buf_ptr() as *mut u8;
    if data.is_null() || buffer.len_bytes() == 0 {
        return &mut [];
    }
    // SAFETY: as `untyped_slice`, writable and exclusive per the caller.
    unsafe { std::slice::from_raw_parts_mut(data, buffer.len_bytes()) }
}

fn type_name(data: &Bound<'_, PyAny>) -> String {
    data.get_type()
        .name()
        .map(|name| name.to_string())
        .unwrap_or_else(|_| "?".to_owned())
}

/// The types `transport.write()` accepts, as asyncio checks them: bytes,
/// bytearray and memoryview (subclasses included), not any buffer.
pub fn check_write_type(data: &Bound<'_, PyAny>) -> PyResult<()> {
    let raw = data.as_ptr();
    // SAFETY: type checks on a live object.
    let accepted = unsafe {
        ffi::PyBytes_Check(raw) != 0
            || ffi::PyByteArray_Check(raw) != 0
            || ffi::PyMemoryView_Check(raw) != 0
    };
    if accepted {
        Ok(())
    } else {
        Err(not_bytes_like(data, "data"))
    }
}

fn not_bytes_like(data: &Bound<'_, PyAny>, what: &str) -> PyErr {
    PyTypeError::new_err(format!(
        "{what} argument must be a bytes-like object, not '{}'",
        type_name(data)
    ))
}

/// The bytes of a bytes-like object, borrowed for as long as the view lives
/// (for `writelines`, which sends several of them in one system call).
pub enum BytesView<'py> {
    Bytes(Bound<'py, PyBytes>),
    Acquired(Acquired),
}

impl<'py> BytesView<'py> {
    pub fn new(data: &Bound<'py, PyAny>, what: &str) -> PyResult<Self> {
        if let Ok(bytes) = data.cast::<PyBytes>() {
            return Ok(Self::Bytes(bytes.clone()));
        }
        simple_buffer(data, what).map(Self::Acquired)
    }

    /// Valid while `self` lives and no Python code runs (which could resize
    /// a bytearray under it).
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Self::Bytes(bytes) => bytes.as_bytes(),
            Self::Acquired(buffer) => buffer.as_slice(),
        }
    }
}
