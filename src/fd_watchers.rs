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
        let native = native_interest(self);
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

fn native_interest(watch: &Watch) -> Interest {
    watch
        .native
        .as_ref()
        .map(|n| n.interest)
        .unwrap_or_default()
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
    /// Native interest withdrawn since the last poll, by descriptor. asyncio
    /// cancels a reader's (writer's) handle when it is removed, so readiness
    /// this iteration's poll already queued for it is dropped, even when the
    /// interest comes back before the queued callback's turn (a transport
    /// paused and resumed in one iteration): the renewed interest waits for
    /// the next poll. Mostly empty.
    withdrawn: Withdrawals,
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
        let old_native = native_interest(watch);
        let same_target = match (&watch.native, &native) {
            (Some(old), Some(new)) => old.target.is(&new.target),
            _ => false,
        };
        let previous = std::mem::replace(&mut watch.native, native).map(|n| n.target);
        // A new target withdraws everything the old one waited for.
        let kept = if same_target {
            native_interest(watch)
        } else {
            Interest::default()
        };
        let after = watch.interest();
        if watch.is_unused() {
            self.watches.remove(&fd);
        }
        self.withdrawn.record(fd, old_native, kept);
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
        let native = watch.native.as_mut()?;
        let old_native = std::mem::replace(&mut native.interest, interest);
        let after = watch.interest();
        self.withdrawn.record(fd, old_native, interest);
        Some((before, after))
    }

    /// True if native interest was withdrawn since the last poll.
    pub fn has_withdrawals(&self) -> bool {
        !self.withdrawn.is_empty()
    }

    /// Forgets the withdrawals: a new poll reports only what is wanted now.
    pub fn clear_withdrawals(&mut self) {
        self.withdrawn.clear();
    }

    /// `readiness` queued by the last poll, less the directions whose native
    /// interest was withdrawn since.
    pub fn still_wanted(&self, readiness: Readiness) -> Readiness {
        self.withdrawn.still_wanted(readiness)
    }

    /// True if `target` is the native watcher of `fd`.
    pub fn is_native_owner(&self, fd: RawFd, target: &Bound<'_, PyAny>) -> bool {
        self.native_owner(fd).is_some_and(|owner| owner.is(target))
    }

    pub fn native_owner(&self, fd: RawFd) -> Option<&Py<PyAny>> {
        self.watches.get(&fd)?.native.as_ref().map(|n| &n.target)
    }

    /// Every native watcher (transports, servers, `sock_*` waiters).
    pub fn native_targets(&self) -> impl Iterator<Item = &Py<PyAny>> {
        self.watches
            .values()
            .filter_map(|watch| watch.native.as_ref().map(|n| &n.target))
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
        self.withdrawn.clear();
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

/// The directions of native interest withdrawn since the last poll, by
/// descriptor. A map, not a list: every queued native job is checked against
/// it, and when a thousand transports close in one iteration, scanning a list
/// per job made that iteration quadratic.
#[derive(Default)]
struct Withdrawals {
    by_fd: FxHashMap<RawFd, Interest>,
}

impl Withdrawals {
    /// Notes what going from `old` to `new` interest in `fd` withdrew.
    fn record(&mut self, fd: RawFd, old: Interest, new: Interest) {
        let read = old.read && !new.read;
        let write = old.write && !new.write;
        if read || write {
            let withdrawn = self.by_fd.entry(fd).or_default();
            withdrawn.read |= read;
            withdrawn.write |= write;
        }
    }

    fn is_empty(&self) -> bool {
        self.by_fd.is_empty()
    }

    fn clear(&mut self) {
        // Cheap when empty: the map returns at once without touching its
        // table (hashbrown special-cases it).
        self.by_fd.clear();
    }

    /// `readiness` less the directions withdrawn from its descriptor.
    fn still_wanted(&self, readiness: Readiness) -> Readiness {
        let Some(withdrawn) = self.by_fd.get(&readiness.fd) else {
            return readiness;
        };
        Readiness {
            readable: readiness.readable && !withdrawn.read,
            writable: readiness.writable && !withdrawn.write,
            ..readiness
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Withdrawals;
    use crate::poller::{Interest, Readiness};

    const BOTH: Interest = Interest {
        read: true,
        write: true,
        edge: true,
    };
    const READ: Interest = Interest {
        read: true,
        write: false,
        edge: true,
    };
    const NONE: Interest = Interest {
        read: false,
        write: false,
        edge: false,
    };

    fn ready(fd: i32) -> Readiness {
        Readiness {
            fd,
            readable: true,
            writable: true,
        }
    }

    #[test]
    fn withdrawals_of_one_descriptor_add_up_and_spare_the_others() {
        let mut withdrawals = Withdrawals::default();
        withdrawals.record(7, BOTH, READ);
        // Interest that comes back does not undo a withdrawal before the poll.
        withdrawals.record(7, READ, BOTH);
        withdrawals.record(7, BOTH, NONE);
        withdrawals.record(8, NONE, BOTH);
        let seven = withdrawals.still_wanted(ready(7));
        assert!(!seven.readable && !seven.writable);
        let eight = withdrawals.still_wanted(ready(8));
        assert!(eight.readable && eight.writable);
        withdrawals.clear();
        assert!(withdrawals.is_empty());
        assert!(withdrawals.still_wanted(ready(7)).readable);
    }

    #[test]
    fn a_withdrawn_direction_leaves_the_other_one() {
        let mut withdrawals = Withdrawals::default();
        withdrawals.record(3, BOTH, READ);
        let three = withdrawals.still_wanted(ready(3));
        assert!(three.readable && !three.writable);
    }
}
