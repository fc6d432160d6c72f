//! What every native transport (stream, pipe, datagram) does the same way
//! around its protocol: pausing and resuming reading, flow-control calls whose
//! failures are reported, not raised, fatal errors reported as asyncio does,
//! and the one-time `connection_lost` hand-off.

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::callback_context::{self, TransportContexts};
use crate::errors::is_fatal;
use crate::event_loop::Loop;
use crate::gil_locked::GilLocked;

/// The Python class name of a transport's wrapper (`SocketTransport`, say),
/// or `fallback` once the wrapper is gone.
pub fn wrapper_class_name(py: Python<'_>, wrapper: &Py<PyAny>, fallback: &str) -> String {
    let wrapper = wrapper.bind(py);
    if wrapper.is_none() {
        return fallback.to_owned();
    }
    wrapper
        .get_type()
        .name()
        .map(|name| name.to_string())
        .unwrap_or_else(|_| fallback.to_owned())
}

/// How a native transport names itself where the loop reports on the work
/// it ran (a slow callback in debug mode, an escaping error): the class the
/// protocol sees and the descriptor.
pub fn describe_native(py: Python<'_>, wrapper: &Py<PyAny>, fallback: &str, fd: i32) -> String {
    format!("<{} fd={fd}>", wrapper_class_name(py, wrapper, fallback))
}

/// asyncio's debug-mode lines about a transport ("%r pauses reading", "%r
/// was closed by peer", ...), logged only while its loop is in debug mode;
/// `transport` (the wrapper, which takes a lock to get) is asked for only then.
pub fn log_if_debug(
    py: Python<'_>,
    loop_: &Loop,
    level: &str,
    message: &str,
    transport: impl FnOnce() -> Py<PyAny>,
) -> PyResult<()> {
    if !loop_.get_debug_flag() {
        return Ok(());
    }
    let logger = py.import("asyncio.log")?.getattr("logger")?;
    logger.call_method1(level, (message, transport()))?;
    Ok(())
}

/// The fields of a transport's state that `pause_reading`/`resume_reading` use.
pub trait ReadingSwitch {
    fn reading_paused(&self) -> bool;
    fn set_reading_paused(&mut self, paused: bool);
    fn closing(&self) -> bool;
    fn contexts(&mut self) -> &mut TransportContexts;
}

/// Implements `ReadingSwitch` for a state struct through its `reading_paused`,
/// `closing` and `contexts` fields.
macro_rules! reading_switch_on_fields {
    ($state:ty) => {
        impl $crate::transport_common::ReadingSwitch for $state {
            fn reading_paused(&self) -> bool {
                self.reading_paused
            }

            fn set_reading_paused(&mut self, paused: bool) {
                self.reading_paused = paused;
            }

            fn closing(&self) -> bool {
                self.closing
            }

            fn contexts(&mut self) -> &mut $crate::callback_context::TransportContexts {
                &mut self.contexts
            }
        }
    };
}
pub(crate) use reading_switch_on_fields;

/// asyncio's `is_reading()`: neither paused nor closing.
pub fn is_reading<S: ReadingSwitch>(py: Python<'_>, state: &GilLocked<S>) -> bool {
    let state = state.lock(py);
    !state.reading_paused() && !state.closing()
}

/// asyncio's `pause_reading()`; true when the caller must update its poller interest.
pub fn pause_reading<S: ReadingSwitch>(py: Python<'_>, state: &GilLocked<S>) -> bool {
    let mut state = state.lock(py);
    if state.reading_paused() || state.closing() {
        return false;
    }
    state.set_reading_paused(true);
    true
}

/// asyncio's `resume_reading()`; true when the caller must update its poller interest.
pub fn resume_reading<S: ReadingSwitch>(py: Python<'_>, state: &GilLocked<S>) -> PyResult<bool> {
    // asyncio adds a new reader handle: reads go on in the caller's context.
    let caller = callback_context::copy_current(py)?;
    let previous = {
        let mut state = state.lock(py);
        if state.closing() || !state.reading_paused() {
            return Ok(false);
        }
        state.set_reading_paused(false);
        state.contexts().reading_resumed(caller)
    };
    // The context reads ran in until now, dropped with no lock held.
    drop(previous);
    Ok(true)
}

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
