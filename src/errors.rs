//! Turning OS errors into the Python exceptions asyncio users expect.

use nix::errno::Errno;
use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;

/// An `OSError` (or the matching subclass, e.g. `ConnectionResetError`) with
/// the errno and its message, as the `socket` module would raise it.
pub fn os_error(_py: Python<'_>, errno: Errno) -> PyErr {
    PyOSError::new_err((errno as i32, errno.desc()))
}
