//! Thin wrappers of the non-blocking I/O system calls the transports and
//! `sock_*` operations make.
//!
//! Each call is retried on `EINTR`; `Ok(None)` means it would block
//! (`EAGAIN`); any other failure is the `Errno`. Nothing here touches Python.

use std::mem::MaybeUninit;
use std::os::fd::RawFd;

use nix::errno::Errno;
use socket2::SockAddr;

use crate::sockaddr;

/// Runs `call` until it is not interrupted; a negative result is a failure
/// with `errno` set.
fn retry(mut call: impl FnMut() -> isize) -> Result<Option<usize>, Errno> {
    loop {
        let result = call();
        if result >= 0 {
            return Ok(Some(result as usize));
        }
        match Errno::last() {
            Errno::EINTR => continue,
            Errno::EAGAIN => return Ok(None),
            errno => return Err(errno),
        }
    }
}

/// `read(2)` into memory not yet initialised (a new `bytes` object's storage).
pub fn read_uninit(fd: RawFd, buf: &mut [MaybeUninit<u8>]) -> Result<Option<usize>, Errno> {
    // SAFETY: `buf` is valid for writes of its length during the call.
    retry(|| unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
}

/// `write(2)` of `data`.
pub fn write(fd: RawFd, data: &[u8]) -> Result<Option<usize>, Errno> {
    // SAFETY: `data` is valid for reads of its length during the call.
    retry(|| unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) })
}

/// The flags of the loop's own receives: never wait, not even on a blocking
/// socket (asyncio's `sock_*` accept one outside debug mode; waiting is the
/// loop's job).
const RECV_FLAGS: libc::c_int = libc::MSG_DONTWAIT;

/// `recv(2)` into `buf`, with [`RECV_FLAGS`].
pub fn recv(fd: RawFd, buf: &mut [u8]) -> Result<Option<usize>, Errno> {
    // SAFETY: `buf` is valid for writes of its length during the call.
    retry(|| unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), RECV_FLAGS) })
}

/// `recv(2)` into memory not yet initialised (a new `bytes` object's
/// storage): `recv` only writes to it. With [`RECV_FLAGS`].
pub fn recv_uninit(fd: RawFd, buf: &mut [MaybeUninit<u8>]) -> Result<Option<usize>, Errno> {
    // SAFETY: `buf` is valid for writes of its length during the call.
    retry(|| unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), RECV_FLAGS) })
}

/// How many bytes are queued for reading on a socket (`FIONREAD`); 0 when
/// the call fails.
pub fn queued_bytes(fd: RawFd) -> usize {
    let mut queued: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer.
    let result = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut queued) };
    if result < 0 {
        0
    } else {
        queued.max(0) as usize
    }
}

/// Whether `fd` carries a byte stream: a stream socket, or no socket at all
/// (a pipe, a terminal). Datagram and sequenced-packet sockets are not.
pub fn is_byte_stream(fd: RawFd) -> bool {
    let mut kind: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: SO_TYPE writes one int through the pointer, at most `len` bytes.
    let result = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut kind as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if result < 0 {
        Errno::last() == Errno::ENOTSOCK
    } else {
        kind == libc::SOCK_STREAM
    }
}

/// `recvfrom(2)` into `buf`, with [`RECV_FLAGS`]: the size received and the
/// sender.
pub fn recvfrom(fd: RawFd, buf: &mut [u8]) -> Result<Option<(usize, SockAddr)>, Errno> {
    recvfrom_uninit(fd, as_uninit(buf))
}

/// An initialised buffer as one the read calls may write into.
pub fn as_uninit(buffer: &mut [u8]) -> &mut [MaybeUninit<u8>] {
    // SAFETY: initialised bytes are valid `MaybeUninit<u8>`s, and the read
    // calls only ever write initialised bytes into them.
    unsafe { &mut *(buffer as *mut [u8] as *mut [MaybeUninit<u8>]) }
}

/// [`recvfrom`] into a buffer that need not be initialised.
pub fn recvfrom_uninit(
    fd: RawFd,
    buf: &mut [MaybeUninit<u8>],
) -> Result<Option<(usize, SockAddr)>, Errno> {
    let mut sender = None;
    let got = retry(|| {
        let (got, from) = sockaddr::filled_by(|addr, len| {
            // SAFETY: `buf` is valid for writes of its length, `addr` and
            // `len` are a valid address buffer and its length.
            unsafe {
                libc::recvfrom(
                    fd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    RECV_FLAGS,
                    addr,
                    len,
                )
            }
        });
        sender = Some(from);
        got
    })?;
    Ok(got.zip(sender))
}

/// The flags of the loop's own sends: never wait (not even on a blocking
/// socket), and report a closed peer as `EPIPE` rather than raise `SIGPIPE`.
pub const SEND_FLAGS: libc::c_int = libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT;

/// `sendto(2)` of `data` to `dest`, or `send(2)` on a connected socket
/// when `dest` is `None`, with [`SEND_FLAGS`].
pub fn send(fd: RawFd, data: &[u8], dest: Option<&SockAddr>) -> Result<Option<usize>, Errno> {
    let (addr, addr_len) = match dest {
        Some(dest) => (dest.as_ptr().cast::<libc::sockaddr>(), dest.len()),
        None => (std::ptr::null(), 0),
    };
    // SAFETY: `data` is valid for reads of its length; the address, if any,
    // is a valid sockaddr of `addr_len` bytes.
    retry(|| unsafe {
        libc::sendto(
            fd,
            data.as_ptr().cast(),
            data.len(),
            SEND_FLAGS,
            addr,
            addr_len,
        )
    })
}

/// `accept4(2)`: the new descriptor and the peer's address.
pub fn accept(fd: RawFd, flags: libc::c_int) -> Result<Option<(RawFd, SockAddr)>, Errno> {
    let mut peer = None;
    let accepted = retry(|| {
        // SAFETY: `addr` and `len` are a valid address buffer and its length.
        let (accepted, from) =
            sockaddr::filled_by(|addr, len| unsafe { libc::accept4(fd, addr, len, flags) });
        peer = Some(from);
        accepted as isize
    })?;
    Ok(accepted.map(|fd| fd as RawFd).zip(peer))
}

/// `getsockopt(2)` of an `int` option.
pub fn getsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
) -> Result<libc::c_int, Errno> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid out-pointers of the right size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        Err(Errno::last())
    } else {
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use super::*;

    fn socketpair(kind: libc::c_int) -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors socketpair(2) writes.
        assert_eq!(
            unsafe { libc::socketpair(libc::AF_UNIX, kind, 0, fds.as_mut_ptr()) },
            0
        );
        // SAFETY: both descriptors are new and owned by nobody else.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    #[test]
    fn streams_and_non_sockets_are_byte_streams_datagram_sockets_are_not() {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe(2) writes.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both descriptors are new and owned by nobody else.
        let pipe = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        assert!(is_byte_stream(pipe.0.as_raw_fd()));
        assert!(is_byte_stream(socketpair(libc::SOCK_STREAM).0.as_raw_fd()));
        assert!(!is_byte_stream(socketpair(libc::SOCK_DGRAM).0.as_raw_fd()));
        assert!(!is_byte_stream(
            socketpair(libc::SOCK_SEQPACKET).0.as_raw_fd()
        ));
    }
}
