//! Turning an accepted connection into a protocol and its transport, natively.
//!
//! For a plain (non-TLS) server the listener does here what asyncio's
//! `_accept_connection2` does in Python: call the protocol factory, make the
//! `SocketTransport` wrapper and its native core, count the connection in
//! the `Server`, and schedule `connection_made`. The wrapper is made with
//! `SocketTransport.__new__` and given the attributes its `__init__` would
//! set (`transports.py` lists them), so no Python frame runs per connection
//! but the protocol factory's and `Server._attach`.
//!
//! A failure is reported as asyncio reports it (only in debug mode, with the
//! message "Error on transport creation for incoming connection") and the
//! connection is dropped.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;
use pyo3::{intern, PyTraverseError};
use socket2::SockAddr;

use crate::errors::is_fatal;
use crate::event_loop::Loop;
use crate::sockaddr;
use crate::stream::{SocketOwner, StreamTransport};

static TRANSPORT_CLASS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static BUFFERED_PROTOCOL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// What a plain server needs to open its connections.
pub struct ConnectionMaker {
    /// The Python `Server`: counts the connections (`_attach`/`_detach`).
    server: Py<PyAny>,
    protocol_factory: Py<PyAny>,
    family: i32,
}

impl ConnectionMaker {
    pub fn new(server: &Bound<'_, PyAny>, family: i32) -> PyResult<Self> {
        let protocol_factory = server.getattr(intern!(server.py(), "_protocol_factory"))?;
        Ok(Self {
            server: server.clone().unbind(),
            protocol_factory: protocol_factory.unbind(),
            family,
        })
    }

    /// Opens the connection `fd` (ours from now on) from `peer`.
    pub fn open(&self, event_loop: &Bound<'_, Loop>, fd: RawFd, peer: SockAddr) -> PyResult<()> {
        let py = event_loop.py();
        // SAFETY: `fd` was just accepted and nothing else owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        match self.build(event_loop, fd, owned, peer) {
            Ok(()) => Ok(()),
            Err(err) if is_fatal(py, &err) => Err(err),
            Err(err) => report_failure(event_loop, err),
        }
    }

    fn build(
        &self,
        event_loop: &Bound<'_, Loop>,
        fd: RawFd,
        owned: OwnedFd,
        peer: SockAddr,
    ) -> PyResult<()> {
        let py = event_loop.py();
        let protocol = self.protocol_factory.bind(py).call0()?;
        let class = TRANSPORT_CLASS.import(py, "ferroloop.transports", "SocketTransport")?;
        let wrapper = class.call_method1(intern!(py, "__new__"), (class,))?;
        let buffered =
            protocol.is_instance(BUFFERED_PROTOCOL.import(py, "asyncio", "BufferedProtocol")?)?;
        let core = StreamTransport::create(
            event_loop.clone(),
            fd,
            SocketOwner::Native(owned),
            wrapper.clone().unbind(),
            protocol.unbind(),
            buffered,
        );
        core.set_addresses(sockaddr::getsockname(fd).ok(), Some(peer));
        let core = Bound::new(py, core)?;
        let attached = self.attach(event_loop, &wrapper, &core);
        if attached.is_err() {
            core.get().discard();
        }
        attached
    }

    /// `SocketTransport.__init__`'s work for an accepted connection.
    fn attach(
        &self,
        event_loop: &Bound<'_, Loop>,
        wrapper: &Bound<'_, PyAny>,
        core: &Bound<'_, StreamTransport>,
    ) -> PyResult<()> {
        let py = event_loop.py();
        let server = self.server.bind(py);
        wrapper.setattr(intern!(py, "_extra"), PyDict::new(py))?;
        wrapper.setattr(intern!(py, "_loop"), event_loop)?;
        wrapper.setattr(intern!(py, "_server"), server)?;
        wrapper.setattr(intern!(py, "_family"), self.family)?;
        wrapper.setattr(intern!(py, "_core"), core)?;
        StreamTransport::_attach(core, Some(self.server.clone_ref(py)))?;
        server.call_method1(intern!(py, "_attach"), (wrapper,))?;
        StreamTransport::_open(core, None)
    }

    pub fn visit(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.server)?;
        visit.call(&self.protocol_factory)
    }
}

/// asyncio reports a failed incoming connection only in debug mode.
fn report_failure(event_loop: &Bound<'_, Loop>, err: PyErr) -> PyResult<()> {
    let py = event_loop.py();
    if !event_loop.get().get_debug_flag() {
        return Ok(());
    }
    let context = PyDict::new(py);
    context.set_item(
        "message",
        "Error on transport creation for incoming connection",
    )?;
    context.set_item("exception", err.value(py))?;
    event_loop.call_method1(intern!(py, "call_exception_handler"), (context,))?;
    Ok(())
}
