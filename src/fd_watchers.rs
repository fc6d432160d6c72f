//! `add_reader`/`add_writer` bookkeeping: which handle to call when a file
//! descriptor becomes readable or writable.

use std::collections::HashMap;
use std::os::fd::RawFd;

use pyo3::prelude::*;

use crate::handles::Handle;
use crate::poller::Interest;

#[derive(Default)]
pub struct Watch {
    pub reader: Option<Py<Handle>>,
    pub writer: Option<Py<Handle>>,
}

impl Watch {
    pub fn interest(&self) -> Interest {
        Interest {
            read: self.reader.is_some(),
            write: self.writer.is_some(),
        }
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
    watches: HashMap<RawFd, Watch>,
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
        if after.is_empty() {
            self.watches.remove(&fd);
        }
        Change {
            before,
            after,
            replaced,
        }
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

    pub fn drain(&mut self, garbage: &mut Vec<Py<Handle>>) {
        for (_, watch) in self.watches.drain() {
            garbage.extend(watch.reader);
            garbage.extend(watch.writer);
        }
    }

    pub fn visit(&self, mut f: impl FnMut(&Py<Handle>)) {
        for watch in self.watches.values() {
            watch.reader.iter().for_each(&mut f);
            watch.writer.iter().for_each(&mut f);
        }
    }
}
