//! Datagram transports.

use pyo3::prelude::*;

/// Adds this module's classes to `ferroloop._core`.
pub fn register(_m: &Bound<'_, PyModule>) -> PyResult<()> {
    Ok(())
}
