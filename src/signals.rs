//! The signal wake-up channel.
//!
//! Python's own C-level signal handler writes the number of every caught
//! signal to the descriptor given to `signal.set_wakeup_fd`. The loop hands it
//! the write end of this socket pair and watches the read end, so a signal
//! wakes a sleeping loop at once and its handler runs as an ordinary callback.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

pub struct SignalChannel {
    read_end: OwnedFd,
    write_end: OwnedFd,
}

impl SignalChannel {
    pub fn new() -> nix::Result<Self> {
        let (read_end, write_end) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        )?;
        Ok(Self {
            read_end,
            write_end,
        })
    }

    pub fn read_fd(&self) -> RawFd {
        self.read_end.as_raw_fd()
    }

    pub fn write_fd(&self) -> RawFd {
        self.write_end.as_raw_fd()
    }

    /// Reads every pending signal number.
    pub fn drain(&self, signals: &mut Vec<i32>) {
        let mut buffer = [0u8; 256];
        loop {
            match nix::unistd::read(&self.read_end, &mut buffer) {
                Ok(0) => return,
                Ok(count) => signals.extend(buffer[..count].iter().map(|&b| i32::from(b))),
                Err(Errno::EINTR) => continue,
                Err(_) => return,
            }
        }
    }
}
