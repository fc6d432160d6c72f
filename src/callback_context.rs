//! The `contextvars` contexts native transports and servers run their
//! protocols' callbacks in.
//!
//! asyncio reaches a protocol through handles, and a handle runs in a copy of
//! the context current when it was made. So a transport reads (and calls
//! `data_received`, `eof_received`, `get_buffer`, ...) in a copy of the context
//! it was made in, the same copy for every read, until `resume_reading` makes
//! a new reader handle in the caller's context; it flushes its write buffer
//! (and calls `resume_writing`) in a copy of the context of the `write` that
//! started buffering. A listening socket accepts in a copy of the context the
//! server started serving in. Callbacks the transports schedule
//! (`connection_made`, `connection_lost`) copy the current context as any
//! `call_soon` does, so they follow from these.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::{PyTraverseError, PyVisit};

use crate::handles::context_or_copy;

/// A copy of the current context, as `call_soon` without `context=` makes.
pub fn copy_current(py: Python<'_>) -> PyResult<Py<PyAny>> {
    context_or_copy(py, None)
}

/// Runs `body` with `context` entered (if any), as a handle runs its callback.
pub fn run_in<R>(
    py: Python<'_>,
    context: Option<&Bound<'_, PyAny>>,
    body: impl FnOnce() -> PyResult<R>,
) -> PyResult<R> {
    let Some(context) = context else {
        return body();
    };
    // SAFETY: `context` is a live contextvars.Context (the GIL is held); enter
    // and exit are paired, and `body` leaves the same context current.
    unsafe {
        if ffi::PyContext_Enter(context.as_ptr()) < 0 {
            return Err(PyErr::fetch(py));
        }
        let result = body();
        if ffi::PyContext_Exit(context.as_ptr()) < 0 {
            let err = PyErr::fetch(py);
            return result.and(Err(err));
        }
        result
    }
}

/// A transport's reading and writing contexts (see the module's text).
pub struct TransportContexts {
    reading: Option<Py<PyAny>>,
    writing: Option<Py<PyAny>>,
}

impl TransportContexts {
    /// Contexts for a transport made in `made_in` (a copy of the context
    /// current then); flushes run there too until a write has to buffer.
    pub fn new(made_in: Py<PyAny>) -> Self {
        Self {
            reading: Some(made_in),
            writing: None,
        }
    }

    /// The context to read in.
    pub fn reading<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.reading
            .as_ref()
            .map(|context| context.bind(py).clone())
    }

    /// The context to flush the write buffer in.
    pub fn writing<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        self.writing
            .as_ref()
            .or(self.reading.as_ref())
            .map(|context| context.bind(py).clone())
    }

    /// `resume_reading`: reads now run in `caller` (a copy of the caller's
    /// context); returns the context they ran in, to drop with no lock held.
    pub fn reading_resumed(&mut self, caller: Py<PyAny>) -> Option<Py<PyAny>> {
        self.reading.replace(caller)
    }

    /// Flushes now run in `caller`; returns the context they ran in, for the
    /// caller to drop with no lock held.
    pub fn set_writing(&mut self, caller: Py<PyAny>) -> Option<Py<PyAny>> {
        self.writing.replace(caller)
    }

    pub fn visit(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.reading)?;
        visit.call(&self.writing)
    }

    /// Everything held, for the caller to drop with no lock held.
    pub fn take(&mut self) -> (Option<Py<PyAny>>, Option<Py<PyAny>>) {
        (self.reading.take(), self.writing.take())
    }
}
