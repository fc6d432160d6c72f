//! Noticing `fork()`.
//!
//! A forked child inherits the parent's epoll descriptor, and epoll
//! instances are shared, not copied: a child that registered or removed
//! descriptors on an inherited loop would change what the *parent's* loop
//! waits for. So every poller remembers the fork generation it was created
//! in; in a child (a later generation) an inherited poller leaves epoll alone
//! and the inherited loop refuses to run. The child closes it (which is
//! safe: closing only drops the child's copies of the descriptors) and
//! creates a new loop, as `gunicorn`/`uvicorn` workers do.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

static GENERATION: AtomicU64 = AtomicU64::new(0);
static INSTALL: Once = Once::new();

extern "C" fn after_fork_in_child() {
    GENERATION.fetch_add(1, Ordering::SeqCst);
}

/// The current fork generation (0 in the process that loaded ferroloop).
pub fn generation() -> u64 {
    INSTALL.call_once(|| {
        // SAFETY: registering a handler that only touches an atomic, which is
        // async-signal-safe as a fork handler must be.
        unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
    });
    GENERATION.load(Ordering::Relaxed)
}
