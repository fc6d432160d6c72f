//! What every native transport (stream, pipe, datagram) does the same way
//! around its protocol: flow-control calls whose failures are reported, not
//! raised, fatal errors reported as asyncio does, and the one-time
//! `connection_lost` hand-off.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::errors::is_fatal;
use crate::event_loop::Loop;

/// Calls `protocol.<method>()` (`pause_writing`/`resume_writing`). A failure
/// goes to the loop's exception handler, as asyncio does; only SystemExit and
/// KeyboardInterrupt propagate.
pub fn call_flow_method(
    loop_: &Bound<'_, Loop>,
    transport: Py<PyAny>,
    protocol: Option<Py<PyAny>>,
    method: &str,
) -> PyResult<()> {
    let py = loop_.py();
    let Some(protocol) = protocol else {
        return Ok(());
    };
    let Err(err) = protocol.bind(py).call_method0(method) else {
        return Ok(());
    };
    if is_fatal(py, &err) {
        return Err(err);
    }
    let context = PyDict::new(py);
    context.set_item("message", format!("protocol.{method}() failed"))?;
    context.set_item("exception", err.value(py))?;
    context.set_item("transport", transport)?;
    context.set_item("protocol", protocol)?;
    loop_.call_method1("call_exception_handler", (context,))?;
    Ok(())
}

/// The reporting half of asyncio's `_fatal_error`. An expected failure
/// (`quiet`: an OS error, mostly) is only logged, and only in debug mode;
/// anything else goes to the loop's exception handler. Returns the
/// exception to close the transport with; SystemExit and KeyboardInterrupt
/// propagate instead.
pub fn report_fatal_error(
    loop_: &Bound<'_, Loop>,
    transport: Py<PyAny>,
    protocol: Option<Py<PyAny>>,
    err: PyErr,
    message: &str,
    quiet: bool,
) -> PyResult<Py<PyAny>> {
    let py = loop_.py();
    if is_fatal(py, &err) {
        return Err(err);
    }
    let exc = err.value(py).clone().into_any();
    if quiet {
        if loop_.get().get_debug_flag() {
            let logger = py.import("asyncio.log")?.getattr("logger")?;
            let kwargs = PyDict::new(py);
            kwargs.set_item("exc_info", &exc)?;
            logger.call_method("debug", ("%r: %s", transport, message), Some(&kwargs))?;
        }
    } else {
        let context = PyDict::new(py);
        context.set_item("message", message)?;
        context.set_item("exception", &exc)?;
        context.set_item("transport", transport)?;
        context.set_item("protocol", protocol)?;
        loop_.call_method1("call_exception_handler", (context,))?;
    }
    Ok(exc.unbind())
}

/// Schedules `transport._call_connection_lost(exc)` for the next iteration.
pub fn schedule_connection_lost(
    loop_: &Loop,
    transport: &Bound<'_, PyAny>,
    exc: Option<Py<PyAny>>,
) -> PyResult<()> {
    let py = transport.py();
    let callback = transport.getattr(pyo3::intern!(py, "_call_connection_lost"))?;
    let args = PyTuple::new(py, [exc.unwrap_or_else(|| py.None())])?;
    loop_.soon(py, callback.unbind(), args.unbind())
}

/// Calls `protocol.connection_lost(exc)`, if the transport still has a protocol.
pub fn notify_connection_lost(
    py: Python<'_>,
    protocol: Option<Py<PyAny>>,
    exc: Option<Py<PyAny>>,
) -> PyResult<()> {
    match protocol {
        Some(protocol) => protocol
            .bind(py)
            .call_method1(pyo3::intern!(py, "connection_lost"), (exc,))
            .map(|_| ()),
        None => Ok(()),
    }
}
