//! `add_reader`/`add_writer` bookkeeping: which handle to call when a file
//! descriptor becomes readable or writable.

use rustc_hash::FxHashMap;
use std::os::fd::RawFd;

use pyo3::prelude::*;

use crate::event_loop::Loop;
use crate::handles::Handle;
use crate::poller::{Interest, Readiness};

/// How a native object (a transport, a server, a pending `sock_*` call) is
/// told that its descriptor is ready: a plain function, called with the
/// object, the loop and the readiness, with no Python-level dispatch.
pub type Dispatch = for<'py> fn(&Bound<'py, PyAny>, &Bound<'py, Loop>, Readiness) -> PyResult<()>;

pub struct NativeWatch {
    pub target: Py<PyAny>,
    pub dispatch: Dispatch,
    pub interest: Interest,
}

#[derive(Default)]
pub struct Watch {
    pub reader: Option<Py<Handle>>,
    pub writer: Option<Py<Handle>>,
    pub native: Option<NativeWatch>,
}

impl Watch {
    pub fn interest(&self) -> Interest {
        let native = self.native.as_ref().map(|n| n.interest).unwrap_or_default();
        let handles = self.reader.is_some() || self.writer.is_some();
        Interest {
            read: self.reader.is_some() || native.read,
            write: self.writer.is_some() || native.write,
            // add_reader/add_writer callbacks need level-triggering.
            edge: native.edge && !handles,
        }
    }

    fn is_unused(&self) -> bool {
        self.reader.is_none() && self.writer.is_none() && self.native.is_none()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Read,
    Write,
}

/// The change one call made: what epoll must be told, and the handle that was
/// replaced or removed (to be cancelled and dropped by the caller outside any lock).
pub struct Change {
    pub before: Interest,
    pub after: Interest,
    pub replaced: Option<Py<Handle>>,
}

#[derive(Default)]
pub struct FdWatchers {
    watches: FxHashMap<RawFd, Watch>,
}

impl FdWatchers {
    pub fn set(&mut self, fd: RawFd, direction: Direction, handle: Option<Py<Handle>>) -> Change {
        let watch = self.watches.entry(fd).or_default();
        let before = watch.interest();
        let slot = match direction {
            Direction::Read => &mut watch.reader,
            Direction::Write => &mut watch.writer,
        };
        let replaced = std::mem::replace(slot, handle);
        let after = watch.interest();
        if watch.is_unused() {
            self.watches.remove(&fd);
        }
        Change {
            before,
            after,
            replaced,
        }
    }

    /// Installs, updates (same or new target) or, with `None`, removes the
    /// native watcher of `fd`. Returns the interest before and after, and the
    /// previous target for the caller to drop outside any lock.
    pub fn set_native(
        &mut self,
        fd: RawFd,
        native: Option<NativeWatch>,
    ) -> (Interest, Interest, Option<Py<PyAny>>) {
        let watch = self.watches.entry(fd).or_default();
        let before = watch.interest();
        let previous = std::mem::replace(&mut watch.native, native).map(|n| n.target);
        let after = watch.interest();
        if watch.is_unused() {
            self.watches.remove(&fd);
        }
        (before, after, previous)
    }

    /// Changes only the interest of an existing native watcher.
    pub fn set_native_interest(
        &mut self,
        fd: RawFd,
        interest: Interest,
    ) -> Option<(Interest, Interest)> {
        let watch = self.watches.get_mut(&fd)?;
        let before = watch.interest();
        watch.native.as_mut()?.interest = interest;
        Some((before, watch.interest()))
    }

    /// True if `target` is the native watcher of `fd`.
    pub fn is_native_owner(&self, fd: RawFd, target: &Bound<'_, PyAny>) -> bool {
        self.native_owner(fd).is_some_and(|owner| owner.is(target))
    }

    pub fn native_owner(&self, fd: RawFd) -> Option<&Py<PyAny>> {
        self.watches.get(&fd)?.native.as_ref().map(|n| &n.target)
    }

    pub fn is_empty(&self) -> bool {
        self.watches.is_empty()
    }

    pub fn get(&self, fd: RawFd) -> Option<&Watch> {
        self.watches.get(&fd)
    }

    pub fn is_watched(&self, fd: RawFd, direction: Direction) -> bool {
        self.watches.get(&fd).is_some_and(|watch| match direction {
            Direction::Read => watch.reader.is_some(),
            Direction::Write => watch.writer.is_some(),
        })
    }

    pub fn drain(&mut self, garbage: &mut Vec<Py<Handle>>, natives: &mut Vec<Py<PyAny>>) {
        for (_, watch) in self.watches.drain() {
            garbage.extend(watch.reader);
            garbage.extend(watch.writer);
            natives.extend(watch.native.map(|n| n.target));
        }
    }

    pub fn visit(&self, mut handles: impl FnMut(&Py<Handle>), mut natives: impl FnMut(&Py<PyAny>)) {
        for watch in self.watches.values() {
            watch.reader.iter().for_each(&mut handles);
            watch.writer.iter().for_each(&mut handles);
            if let Some(native) = watch.native.as_ref() {
                natives(&native.target);
            }
        }
    }
}
