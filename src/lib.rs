//! ferroloop's native core: the event loop's hot path in Rust.
//!
//! The Python package `ferroloop` subclasses [`event_loop::Loop`] and adds
//! the parts of asyncio's API that run once per loop or per connection.

mod buffers;
mod call_soon_descriptor;
mod callback_context;
mod connector;
mod dns;
mod errors;
mod event_loop;
mod fast_calls;
mod fd_watchers;
mod flow_control;
mod fork;
mod gil_locked;
mod handles;
mod page_aligned;
mod pipe_capacity;
mod pipes;
mod poller;
mod process;
mod python_api;
mod reads;
mod recycled_bytes;
mod server;
mod signals;
mod sock_ops;
mod sockaddr;
mod socket_transport;
mod stream;
mod sys_io;
mod timers;
mod transport_common;
mod udp;

use pyo3::prelude::*;

// `gil_used`: the module relies on the GIL (see gil_locked.rs).
#[pymodule(gil_used = true)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<event_loop::Loop>()?;
    m.add_class::<handles::Handle>()?;
    m.add_class::<handles::TimerHandle>()?;
    m.add_class::<stream::StreamTransport>()?;
    fast_calls::install(m.py())?;
    m.add_class::<server::Listener>()?;
    sock_ops::register(m)?;
    connector::register(m)?;
    udp::register(m)?;
    pipes::register(m)?;
    process::register(m)?;
    dns::register(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
