//! `SocketTransport` objects made natively, for the two hot paths that make
//! them: a plain server's accepted connections and `create_connection`'s
//! natively connected sockets.
//!
//! What asyncio's `_accept_connection2` and `_make_socket_transport` do in
//! Python happens here: the protocol factory is called (accepted
//! connections), the `SocketTransport` wrapper is made with `__new__` and
//! given the attributes its `__init__` would set (`transports.py`; keep the
//! two in step), its native core is made, the server counts the connection,
//! and `connection_made` is scheduled. No Python frame runs per connection
//! but the protocol factory's and `Server._attach`.
//!
//! A failure while accepting is reported as asyncio reports it (only in
//! debug mode, "Error on transport creation for incoming connection") and
//! the connection is dropped.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use pyo3::gc::PyVisit;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;
use pyo3::{intern, PyTraverseError};
use socket2::SockAddr;

use crate::callback_context;
use crate::connector::ConnectedSocket;
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

    /// Opens the connection `fd` (ours from now on) from `peer`, whose reads
    /// run in `context` (the connection's own copy of the serving context,
    /// current while this runs).
    pub fn open(
        &self,
        event_loop: &Bound<'_, Loop>,
        fd: RawFd,
        peer: SockAddr,
        context: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let py = event_loop.py();
        // SAFETY: `fd` was just accepted and nothing else owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        match self.build(event_loop, fd, owned, peer, context) {
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
        context: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let py = event_loop.py();
        if event_loop.get().get_debug_flag() {
            // asyncio's debug-mode line for each accepted connection.
            let address = sockaddr::to_python(py, &peer)?;
            self.server
                .bind(py)
                .call_method1(intern!(py, "_log_new_connection"), (fd, address))?;
        }
        let protocol = self.protocol_factory.bind(py).call0()?;
        let addresses = (sockaddr::getsockname(fd).ok(), Some(peer));
        let made = SocketTransportParts {
            owner: SocketOwner::Native(owned),
            fd,
            family: self.family,
            addresses,
            server: Some(self.server.bind(py).clone()),
            waiter: None,
            // asyncio's reader handle copies the connection task's context,
            // in which nothing runs after this: the context itself will do.
            context: Some(context.clone().unbind()),
        };
        made.make(event_loop, &protocol).map(drop)
    }

    pub fn visit(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.server)?;
        visit.call(&self.protocol_factory)
    }
}

/// Everything a native `SocketTransport` is made of, but its protocol.
pub struct SocketTransportParts<'py> {
    pub owner: SocketOwner,
    pub fd: RawFd,
    pub family: i32,
    pub addresses: (Option<SockAddr>, Option<SockAddr>),
    /// The server counting the connection (accepted connections).
    pub server: Option<Bound<'py, PyAny>>,
    /// Resolved once `connection_made` ran (`create_connection` awaits it).
    pub waiter: Option<Py<PyAny>>,
    /// The context the transport's reads run in; None for a copy of the
    /// current one.
    pub context: Option<Py<PyAny>>,
}

impl<'py> SocketTransportParts<'py> {
    /// The `SocketTransport` wrapper and its core, with `connection_made`
    /// scheduled: what `SocketTransport.__init__` does, without its frame.
    pub fn make(
        self,
        event_loop: &Bound<'py, Loop>,
        protocol: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = event_loop.py();
        let class = TRANSPORT_CLASS.import(py, "ferroloop.transports", "SocketTransport")?;
        let wrapper = class.call_method1(intern!(py, "__new__"), (class,))?;
        let buffered =
            protocol.is_instance(BUFFERED_PROTOCOL.import(py, "asyncio", "BufferedProtocol")?)?;
        let core = StreamTransport::create(
            event_loop.clone(),
            self.fd,
            self.owner,
            wrapper.clone().unbind(),
            protocol.clone().unbind(),
            buffered,
            match self.context {
                Some(context) => context,
                None => callback_context::copy_current(py)?,
            },
        );
        core.set_addresses(py, self.addresses.0, self.addresses.1);
        let core = Bound::new(py, core)?;
        let attached = attach(
            event_loop,
            &wrapper,
            &core,
            self.family,
            self.server,
            self.waiter,
        );
        if attached.is_err() {
            core.get().discard(py);
        }
        attached.map(|()| wrapper)
    }
}

/// `SocketTransport.__init__`'s attributes (keep in step with it), the
/// registration with the loop and the server, and the scheduled start.
fn attach(
    event_loop: &Bound<'_, Loop>,
    wrapper: &Bound<'_, PyAny>,
    core: &Bound<'_, StreamTransport>,
    family: i32,
    server: Option<Bound<'_, PyAny>>,
    waiter: Option<Py<PyAny>>,
) -> PyResult<()> {
    let py = event_loop.py();
    wrapper.setattr(intern!(py, "_loop"), event_loop)?;
    wrapper.setattr(intern!(py, "_server"), server.as_ref())?;
    wrapper.setattr(intern!(py, "_family"), family)?;
    wrapper.setattr(intern!(py, "_core"), core)?;
    StreamTransport::_attach(core, server.as_ref().map(|s| s.clone().unbind()))?;
    if let Some(server) = &server {
        server.call_method1(intern!(py, "_attach"), (wrapper,))?;
    }
    StreamTransport::_open(core, waiter)
}

/// `SocketTransport(loop, connected, -1, protocol, waiter=waiter)` for a
/// socket `connector.rs` connected, made natively (`create_connection`).
#[pyfunction]
pub fn connected_transport<'py>(
    event_loop: &Bound<'py, Loop>,
    connected: &Bound<'py, ConnectedSocket>,
    protocol: &Bound<'py, PyAny>,
    waiter: Py<PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let connected = connected.get();
    let owned = connected.take_fd()?;
    let fd = owned.as_raw_fd();
    let parts = SocketTransportParts {
        owner: SocketOwner::Native(owned),
        fd,
        family: connected.family(),
        addresses: connected.addresses(),
        server: None,
        waiter: Some(waiter),
        context: None,
    };
    parts.make(event_loop, protocol)
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
