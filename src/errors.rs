//! Turning OS errors into the Python exceptions asyncio users expect.

use nix::errno::Errno;
use pyo3::exceptions::{PyKeyboardInterrupt, PyOSError, PySystemExit};
use pyo3::prelude::*;

/// An `OSError` (or the matching subclass, e.g. `ConnectionResetError`) with
/// the errno and its message, as the `socket` module would raise it.
pub fn os_error(_py: Python<'_>, errno: Errno) -> PyErr {
    PyOSError::new_err((errno as i32, errno.desc()))
}

/// `SystemExit` and `KeyboardInterrupt`, which asyncio never reports through
/// the exception handler but lets propagate.
pub fn is_fatal(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PySystemExit>(py) || err.is_instance_of::<PyKeyboardInterrupt>(py)
}
