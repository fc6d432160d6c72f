//! The poller: one level-triggered epoll instance plus an eventfd that other
//! threads use to wake the loop.
//!
//! Level-triggered on purpose: asyncio's `add_reader`/`add_writer` contract is
//! that a callback which does not drain its file descriptor is called again on
//! the next iteration. mio only offers edge-triggered readiness, which would
//! silently break that contract, so epoll is driven directly through `nix`.
//! (Native `sock_*` waiters opt into edge-triggering per descriptor: they stay
//! registered between calls, see `sock_ops.rs`.)
//!
//! Guarantees: `wait` never holds the GIL (the caller detaches around it), a
//! wake-up requested while the loop is not sleeping costs no system call, and
//! every descriptor owned here is closed when the poller is dropped.

use std::os::fd::{AsFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::fork;

/// Readiness of one descriptor, as reported by one `wait`.
#[derive(Clone, Copy, Debug)]
pub struct Readiness {
    pub fd: RawFd,
    pub readable: bool,
    pub writable: bool,
}

/// Which directions a descriptor is watched for, and how.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Interest {
    pub read: bool,
    pub write: bool,
    /// Edge-triggered: reported when the descriptor's state changes, not for
    /// as long as it stays ready. Only for native watchers that always try
    /// their system call before waiting (see `sock_ops.rs`); everything
    /// asyncio-facing is level-triggered.
    pub edge: bool,
}

impl Interest {
    /// Level-triggered interest, asyncio's `add_reader`/`add_writer` kind.
    pub const fn level(read: bool, write: bool) -> Self {
        Self {
            read,
            write,
            edge: false,
        }
    }

    pub fn is_empty(self) -> bool {
        !self.read && !self.write
    }

    fn flags(self) -> EpollFlags {
        let mut flags = EpollFlags::empty();
        if self.edge {
            flags |= EpollFlags::EPOLLET;
        }
        if self.read {
            flags |= EpollFlags::EPOLLIN;
        }
        if self.write {
            flags |= EpollFlags::EPOLLOUT;
        }
        flags
    }
}

/// The token of the waker's eventfd; user descriptors use their own number.
const WAKER_TOKEN: u64 = u64::MAX;
const EVENT_CAPACITY: usize = 1024;

pub struct Poller {
    epoll: Epoll,
    /// The fork generation the epoll instance belongs to (see `fork.rs`).
    generation: u64,
    /// Reused across waits (only the loop thread waits).
    events: parking_lot::Mutex<Vec<EpollEvent>>,
    waker: EventFd,
    /// True while the loop thread sleeps (or is about to sleep) in `wait`.
    sleeping: AtomicBool,
    /// True once a wake-up was written and not yet consumed.
    wake_pending: AtomicBool,
}

impl Poller {
    pub fn new() -> nix::Result<Self> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let waker = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        epoll.add(
            waker.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, WAKER_TOKEN),
        )?;
        Ok(Self {
            epoll,
            generation: fork::generation(),
            events: parking_lot::Mutex::new(vec![EpollEvent::empty(); EVENT_CAPACITY]),
            waker,
            sleeping: AtomicBool::new(false),
            wake_pending: AtomicBool::new(false),
        })
    }

    /// Starts, changes or stops watching `fd`. `previous` is what the caller
    /// had registered before, so that the right `epoll_ctl` is chosen.
    pub fn set_interest(&self, fd: RawFd, previous: Interest, next: Interest) -> nix::Result<()> {
        if !self.owned_by_this_process() {
            // An inherited epoll instance is the parent's too: leave it alone.
            return Ok(());
        }
        if previous == next {
            // Nothing registered changes: spare the system call (transports
            // forget descriptors they may never have watched).
            return Ok(());
        }
        // SAFETY: the caller guarantees `fd` was valid when it was handed to us;
        // epoll only records the number, it never takes ownership.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        if next.is_empty() {
            return match self.epoll.delete(borrowed) {
                // Closing a descriptor removes it from epoll on its own.
                Ok(()) | Err(Errno::ENOENT) | Err(Errno::EBADF) => Ok(()),
                Err(err) => Err(err),
            };
        }
        let mut event = EpollEvent::new(next.flags(), fd as u64);
        if previous.is_empty() {
            match self.epoll.add(borrowed, event) {
                // The number was reused after a close we never saw: re-arm it.
                Err(Errno::EEXIST) => self.epoll.modify(borrowed, &mut event),
                other => other,
            }
        } else {
            match self.epoll.modify(borrowed, &mut event) {
                // The old descriptor was closed behind our back and the number reused.
                Err(Errno::ENOENT) => self.epoll.add(borrowed, event),
                other => other,
            }
        }
    }

    /// False in a child forked after the poller was made: the epoll instance
    /// is shared with the parent and must not be used from here.
    pub fn owned_by_this_process(&self) -> bool {
        self.generation == fork::generation()
    }

    /// Marks the loop as about to sleep. Call before deciding the timeout, so
    /// that a wake-up racing with that decision is never lost.
    pub fn prepare_to_sleep(&self) {
        self.sleeping.store(true, Ordering::SeqCst);
    }

    /// Waits for readiness for at most `timeout_ms` (negative: forever) and
    /// appends what is ready to `out`. Interrupted waits return normally.
    pub fn wait(&self, timeout_ms: i32, out: &mut Vec<Readiness>) -> nix::Result<()> {
        let mut events = self.events.lock();
        let timeout = EpollTimeout::try_from(timeout_ms).unwrap_or(EpollTimeout::NONE);
        let result = self.epoll.wait(&mut events, timeout);
        let count = match result {
            Ok(count) => count,
            Err(Errno::EINTR) => 0,
            Err(err) => return Err(err),
        };
        for event in &events[..count] {
            if event.data() == WAKER_TOKEN {
                self.consume_wakeup();
                continue;
            }
            let flags = event.events();
            // Errors and hang-ups wake both directions, as selectors do, so the
            // callback discovers the condition through its own read or write.
            let failed = flags.intersects(EpollFlags::EPOLLERR | EpollFlags::EPOLLHUP);
            out.push(Readiness {
                fd: event.data() as RawFd,
                readable: failed || flags.contains(EpollFlags::EPOLLIN),
                writable: failed || flags.contains(EpollFlags::EPOLLOUT),
            });
        }
        Ok(())
    }

    /// The wait is over (or was skipped): wake-ups need no system call.
    pub fn done_sleeping(&self) {
        // Only the loop's thread sets the flag, so it reads its own last
        // write; skipping the store when not set spares a busy iteration
        // the locked instruction a sequentially consistent store is.
        if self.sleeping.load(Ordering::Relaxed) {
            self.sleeping.store(false, Ordering::SeqCst);
        }
    }

    /// Wakes the loop if it sleeps; cheap when it does not.
    pub fn wake(&self) {
        if !self.sleeping.load(Ordering::SeqCst) {
            return;
        }
        if self.wake_pending.swap(true, Ordering::SeqCst) {
            return;
        }
        // EAGAIN means the counter is already non-zero: the loop will wake anyway.
        let _ = self.waker.write(1);
    }

    fn consume_wakeup(&self) {
        // Read first, then clear: clearing first would let a waker that runs
        // in between write a wake-up that this read then swallows, leaving
        // `wake_pending` set with nothing in the eventfd (a lost wake-up for
        // every later call_soon_threadsafe).
        let _ = self.waker.read();
        self.wake_pending.store(false, Ordering::SeqCst);
    }
}
