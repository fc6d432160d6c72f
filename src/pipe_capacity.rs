//! Growing a child's pipe once it fills.
//!
//! Linux gives a pipe 64 KiB of buffer. When the process at the other end
//! writes (or reads) faster than the loop turns round, that fills after every
//! read, and each 64 KiB then costs both processes a sleep and a wake-up:
//! reading 512 MiB from `dd bs=64K` ran at ~650 MiB/s against ~2,200 MiB/s
//! with a 512 KiB pipe, and writing to `cat` at ~750 against ~2,500 (uvloop
//! gets this headroom by giving children socket pairs, whose buffers are
//! larger, instead of pipes).
//!
//! Only the pipes of a child the loop started grow (the subprocess transport
//! asks for it), and only once one has filled, so a child that says little
//! keeps the default. The size counts against the user's
//! `/proc/sys/fs/pipe-user-pages-soft`; a kernel that refuses (over that limit,
//! or a `pipe-max-size` below ours) leaves the pipe as it was.

use std::os::fd::{BorrowedFd, RawFd};
use std::sync::atomic::{AtomicU8, Ordering};

use nix::fcntl::{fcntl, FcntlArg};

/// What a pipe that filled grows to.
pub const GROWN_CAPACITY: usize = 512 * 1024;
/// Linux's default capacity: a read this large emptied a full pipe (or one
/// the writer kept filling while it ran).
const DEFAULT_CAPACITY: usize = 64 * 1024;

const OFF: u8 = 0;
const ARMED: u8 = 1;
const DONE: u8 = 2;

/// Whether a pipe transport grows its pipe, and whether it already did.
#[derive(Default)]
pub struct PipeGrowth(AtomicU8);

impl PipeGrowth {
    /// Grow the pipe the next time it is found full.
    pub fn arm(&self) {
        let _ = self
            .0
            .compare_exchange(OFF, ARMED, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// After a read of `count` bytes from `fd`.
    pub fn after_read(&self, fd: RawFd, count: usize) {
        if count >= DEFAULT_CAPACITY {
            self.grow_if_armed(fd);
        }
    }

    /// After a write to `fd` that the kernel did not take whole.
    pub fn after_short_write(&self, fd: RawFd) {
        self.grow_if_armed(fd);
    }

    fn grow_if_armed(&self, fd: RawFd) {
        if self.0.load(Ordering::Relaxed) != ARMED {
            return;
        }
        self.0.store(DONE, Ordering::Relaxed);
        grow(fd, GROWN_CAPACITY);
    }
}

/// Raises `fd`'s pipe capacity to `capacity` unless it is that large already;
/// true if it is now at least that large.
fn grow(fd: RawFd, capacity: usize) -> bool {
    // SAFETY: `fd` stays open for the call: the transport watching it
    // closes it only after its last read or write.
    let pipe = unsafe { BorrowedFd::borrow_raw(fd) };
    match fcntl(pipe, FcntlArg::F_GETPIPE_SZ) {
        Ok(current) if current as usize >= capacity => true,
        Ok(_) => fcntl(pipe, FcntlArg::F_SETPIPE_SZ(capacity as libc::c_int)).is_ok(),
        // Not a pipe after all (a socket, a tty handed over as stdout).
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, AsRawFd};

    use super::*;

    fn capacity(pipe: BorrowedFd<'_>) -> usize {
        fcntl(pipe, FcntlArg::F_GETPIPE_SZ).unwrap() as usize
    }

    #[test]
    fn an_armed_pipe_grows_once_a_large_read_shows_it_full() {
        let (read_end, _write_end) = nix::unistd::pipe().unwrap();
        let fd = read_end.as_raw_fd();
        let growth = PipeGrowth::default();
        growth.after_read(fd, DEFAULT_CAPACITY);
        assert_eq!(capacity(read_end.as_fd()), DEFAULT_CAPACITY, "not armed");
        growth.arm();
        growth.after_read(fd, DEFAULT_CAPACITY - 1);
        assert_eq!(capacity(read_end.as_fd()), DEFAULT_CAPACITY, "a small read");
        growth.after_read(fd, DEFAULT_CAPACITY);
        assert_eq!(capacity(read_end.as_fd()), GROWN_CAPACITY);
    }

    #[test]
    fn a_pipe_grows_at_most_once() {
        let (_read_end, write_end) = nix::unistd::pipe().unwrap();
        let fd = write_end.as_raw_fd();
        let growth = PipeGrowth::default();
        growth.arm();
        growth.after_short_write(fd);
        fcntl(write_end.as_fd(), FcntlArg::F_SETPIPE_SZ(4096)).unwrap();
        growth.arm();
        growth.after_short_write(fd);
        assert_eq!(capacity(write_end.as_fd()), 4096);
    }

    #[test]
    fn something_that_is_not_a_pipe_is_left_alone() {
        let (left, _right) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(!grow(left.as_raw_fd(), GROWN_CAPACITY));
    }
}
