//! Borrowing the bytes of Python buffer objects (bytes, bytearray,
//! memoryview, ...) without copying them.

use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::{PyBufferError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// Calls `f` with the contents of a bytes-like object. The slice must not
/// outlive the call, and `f` must not run Python code (which could resize a
/// bytearray under it).
pub fn with_bytes<R>(
    data: &Bound<'_, PyAny>,
    what: &str,
    f: impl FnOnce(&[u8]) -> R,
) -> PyResult<R> {
    if let Ok(bytes) = data.cast::<PyBytes>() {
        return Ok(f(bytes.as_bytes()));
    }
    let buffer = PyUntypedBuffer::get(data).map_err(|_| not_bytes_like(data, what))?;
    if !buffer.is_c_contiguous() {
        return Err(PyBufferError::new_err("data must be a C-contiguous buffer"));
    }
    // SAFETY: the buffer stays acquired (and so valid and unmoved) until
    // `buffer` is dropped, after `f` returns; `f` runs no Python code.
    let slice =
        unsafe { std::slice::from_raw_parts(buffer.buf_ptr() as *const u8, buffer.len_bytes()) };
    Ok(f(slice))
}

/// Calls `f` with the writable contents of a buffer (for `recv_into`).
pub fn with_bytes_mut<R>(
    data: &Bound<'_, PyAny>,
    what: &str,
    f: impl FnOnce(&mut [u8]) -> R,
) -> PyResult<R> {
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
    let slice =
        unsafe { std::slice::from_raw_parts_mut(buffer.buf_ptr() as *mut u8, buffer.len_bytes()) };
    Ok(f(slice))
}

fn type_name(data: &Bound<'_, PyAny>) -> String {
    data.get_type()
        .name()
        .map(|name| name.to_string())
        .unwrap_or_else(|_| "?".to_owned())
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
    Buffer(PyUntypedBuffer),
}

impl<'py> BytesView<'py> {
    pub fn new(data: &Bound<'py, PyAny>, what: &str) -> PyResult<Self> {
        if let Ok(bytes) = data.cast::<PyBytes>() {
            return Ok(Self::Bytes(bytes.clone()));
        }
        let buffer = PyUntypedBuffer::get(data).map_err(|_| not_bytes_like(data, what))?;
        if !buffer.is_c_contiguous() {
            return Err(PyBufferError::new_err("data must be a C-contiguous buffer"));
        }
        Ok(Self::Buffer(buffer))
    }

    /// Valid while `self` lives and no Python code runs (which could resize
    /// a bytearray under it).
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Self::Bytes(bytes) => bytes.as_bytes(),
            // SAFETY: the buffer stays acquired while `self` lives.
            Self::Buffer(buffer) => unsafe {
                std::slice::from_raw_parts(buffer.buf_ptr() as *const u8, buffer.len_bytes())
            },
        }
    }
}
