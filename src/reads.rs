//! Reading from a descriptor into a new `bytes` object, the two ways:
//!
//! * [`read_copied`]: into a reusable per-thread buffer, then copied into a
//!   `bytes` of the size read. One system call; the copy is cheap for small
//!   messages.
//! * [`read_direct`]: ask the kernel how much is queued (`FIONREAD`), make
//!   an uninitialised `bytes` of exactly that size and read straight into
//!   it. One system call more, one copy less: worth it for large messages
//!   (100 KiB echo: -23% server CPU per request).
//!
//! Either way the `bytes` is the one the previous read handed out if its
//! receiver kept nothing (see `recycled_bytes`), else a new one.
//!
//! Callers choose by the size of their previous read ([`ReadSizeHint`]): stream
//! traffic tends to keep its message size. Direct reads are capped under
//! glibc's 128 KiB mmap threshold, above which every allocation would be a
//! fresh `mmap` (and every free a `munmap`), far dearer than the copy.
//! Stream sockets and pipes both answer `FIONREAD`. A capped read is right
//! for a byte stream only: where a descriptor may carry datagrams
//! ([`Framing::Unknown`]), nothing is read shorter than the caller asked.
//!
//! [`recv_into`] and [`recvfrom_into`] receive into a buffer the caller owns
//! (a `BufferedProtocol`'s, `sock_recv_into`'s, `sock_recvfrom_into`'s). They
//! and direct reads go through the shared buffer when the destination starts
//! where the kernel copies slowly (see `page_aligned`).

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use socket2::SockAddr;

use crate::errors::os_error;
use crate::page_aligned::{self, PageAlignedBuffer};
use crate::recycled_bytes;
use crate::sys_io::{self, as_uninit};

/// The shared buffer's size, and so the most one copied read returns.
pub const READ_SIZE: usize = 256 * 1024;
/// A read of at least this size makes the next one direct.
const LARGE_READ: usize = 32 * 1024;
/// The largest direct read (see the module documentation).
const DIRECT_READ_CAP: usize = 120 * 1024;

thread_local! {
    static READ_BUFFER: RefCell<PageAlignedBuffer> = RefCell::new(PageAlignedBuffer::zeroed(READ_SIZE));
}

extern "C" {
    /// Exported by CPython 3.11 but not bound by pyo3.
    fn _PyBytes_Resize(bytes: *mut *mut ffi::PyObject, size: ffi::Py_ssize_t) -> libc::c_int;
}

/// The system call that reads: `recv` for sockets (non-blocking even on a
/// blocking socket), `read` for pipes.
#[derive(Clone, Copy)]
pub enum ReadCall {
    Recv,
    Read,
}

impl ReadCall {
    fn call(self, fd: RawFd, buffer: &mut [MaybeUninit<u8>]) -> Result<Option<usize>, Errno> {
        match self {
            ReadCall::Recv => sys_io::recv_uninit(fd, buffer),
            ReadCall::Read => sys_io::read_uninit(fd, buffer),
        }
    }
}

/// What one read produced.
pub enum Received<'py> {
    WouldBlock,
    Eof,
    Data(Bound<'py, PyBytes>),
}

impl<'py> Received<'py> {
    fn from_count(
        count: Option<usize>,
        data: impl FnOnce(usize) -> PyResult<Bound<'py, PyBytes>>,
    ) -> PyResult<Self> {
        Ok(match count {
            None => Self::WouldBlock,
            Some(0) => Self::Eof,
            Some(count) => Self::Data(data(count)?),
        })
    }
}

/// Runs `f` with this thread's shared read buffer ([`READ_SIZE`] bytes), for
/// reads that copy out of it (`recvfrom` too).
pub fn with_read_buffer<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
    READ_BUFFER.with(|cell| f(cell.borrow_mut().as_mut_slice()))
}

/// True if a read that returned `data` should make the next one direct.
pub fn is_large(data: &Bound<'_, PyBytes>) -> bool {
    data.as_bytes().len() >= LARGE_READ
}

/// Reads at most `limit` (at most [`READ_SIZE`]) bytes into the shared
/// buffer and copies them into a new `bytes`.
fn read_copied(py: Python<'_>, fd: RawFd, call: ReadCall, limit: usize) -> PyResult<Received<'_>> {
    with_read_buffer(|buffer| {
        let limit = limit.min(buffer.len());
        let count = call
            .call(fd, as_uninit(&mut buffer[..limit]))
            .map_err(|errno| os_error(py, errno))?;
        Received::from_count(count, |count| recycled_bytes::copy_of(py, &buffer[..count]))
    })
}

/// Where [`read_into`] stages data in the shared buffer: far enough past
/// the page boundary for the kernel's copy into it to be fast, and ahead of
/// any slow destination's offset, so that our copy out of it reads ahead of
/// where it writes modulo a page. Staged at the page boundary itself, our
/// copy to a destination 16 bytes into a page was as slow as the kernel's.
const STAGING_OFFSET: usize = 64;

/// `recv` into `buffer`, a buffer the caller owns; `Ok(None)` means nothing
/// to read right now. See [`staged_if_slow`].
pub fn recv_into(fd: RawFd, buffer: &mut [u8], framing: Framing) -> Result<Option<usize>, Errno> {
    read_into(fd, ReadCall::Recv, as_uninit(buffer), framing)
}

/// `recvfrom` of one datagram into `buffer`, a buffer the caller owns, with
/// the sender; `Ok(None)` means nothing to read right now. See
/// [`staged_if_slow`].
pub fn recvfrom_into(fd: RawFd, buffer: &mut [u8]) -> Result<Option<(usize, SockAddr)>, Errno> {
    staged_if_slow(as_uninit(buffer), Framing::Unknown, |target| {
        sys_io::recvfrom_uninit(fd, target)
    })
}

/// Reads into `buffer`. See [`staged_if_slow`].
fn read_into(
    fd: RawFd,
    call: ReadCall,
    buffer: &mut [MaybeUninit<u8>],
    framing: Framing,
) -> Result<Option<usize>, Errno> {
    let got = staged_if_slow(buffer, framing, |target| {
        Ok(call.call(fd, target)?.map(|count| (count, ())))
    })?;
    Ok(got.map(|(count, ())| count))
}

/// What a descriptor carries, as far as its reader knows: whether a read
/// may ask the kernel for less than the caller asked for.
#[derive(Clone, Copy, PartialEq)]
pub enum Framing {
    /// A byte stream (a stream transport's socket): what is not read now is
    /// read next time.
    Stream,
    /// Perhaps datagrams or records (a socket or "pipe" the application
    /// handed over): a read shorter than one would cut it and lose the rest.
    Unknown,
}

/// Runs `read` (a read that reports how many bytes it wrote, and something
/// else) on `buffer`; or, if the kernel would copy to `buffer` slowly on
/// this CPU, [`staged`]. One more copy, ours, costs a fraction of what the
/// slow copy loses (100 KiB `BufferedProtocol` echo on AMD: about half the
/// server CPU per request).
fn staged_if_slow<T>(
    buffer: &mut [MaybeUninit<u8>],
    framing: Framing,
    read: impl FnOnce(&mut [MaybeUninit<u8>]) -> Result<Option<(usize, T)>, Errno>,
) -> Result<Option<(usize, T)>, Errno> {
    if page_aligned::copies_slowly_to(buffer.as_ptr().cast()) {
        staged(buffer, framing, read)
    } else {
        read(buffer)
    }
}

/// Runs `read` on the shared buffer (at [`STAGING_OFFSET`]) and copies what
/// it wrote into `buffer`. A buffer larger than the staging area is read
/// into directly unless `framing` allows a shorter read.
fn staged<T>(
    buffer: &mut [MaybeUninit<u8>],
    framing: Framing,
    read: impl FnOnce(&mut [MaybeUninit<u8>]) -> Result<Option<(usize, T)>, Errno>,
) -> Result<Option<(usize, T)>, Errno> {
    with_read_buffer(|shared| {
        let staging = &mut shared[STAGING_OFFSET..];
        if framing == Framing::Unknown && buffer.len() > staging.len() {
            return read(buffer);
        }
        let limit = buffer.len().min(staging.len());
        let got = read(as_uninit(&mut staging[..limit]))?;
        if let Some((count, _)) = &got {
            // SAFETY: both are valid for `count` bytes (`count` <= `limit`),
            // and the shared buffer is not the caller's.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    staging.as_ptr(),
                    buffer.as_mut_ptr().cast::<u8>(),
                    *count,
                );
            }
        }
        Ok(got)
    })
}

/// Reads straight into a new `bytes` of the size queued (at most `limit`
/// and the cap). With nothing queued (end of file, a pending error, a
/// spurious wake-up) the copied path finds out which. With more than the cap
/// queued, a read of only the cap is right for a byte stream but would cut
/// short a datagram or record (`FIONREAD` is then the next one's size, or
/// all of them): a descriptor not known to be a stream is asked.
fn read_direct(
    py: Python<'_>,
    fd: RawFd,
    call: ReadCall,
    limit: usize,
    framing: Framing,
) -> PyResult<Received<'_>> {
    let queued = sys_io::queued_bytes(fd);
    let capped = queued > DIRECT_READ_CAP && limit > DIRECT_READ_CAP;
    if queued == 0 || (capped && framing == Framing::Unknown && !sys_io::is_byte_stream(fd)) {
        return read_copied(py, fd, call, limit);
    }
    let size = queued.min(DIRECT_READ_CAP).min(limit);
    let object = recycled_bytes::new_uninit(py, size)?;
    // SAFETY: the object owns `size` bytes of storage, and nobody else can
    // see the object until this function returns it.
    let storage = unsafe {
        let data = ffi::PyBytes_AS_STRING(object.as_ptr()) as *mut MaybeUninit<u8>;
        std::slice::from_raw_parts_mut(data, size)
    };
    let count = read_into(fd, call, storage, framing).map_err(|errno| os_error(py, errno))?;
    match count {
        Some(count) if count > 0 && count < size => {
            Ok(Received::Data(shrink_new_bytes(object, count)?))
        }
        Some(count) if count > 0 => Ok(Received::Data(object)),
        None => {
            recycled_bytes::recycle(object);
            Ok(Received::WouldBlock)
        }
        Some(_) => {
            recycled_bytes::recycle(object);
            Ok(Received::Eof)
        }
    }
}

/// Whether a descriptor's last read was large, choosing how to read the
/// next (one per transport).
#[derive(Default)]
pub struct ReadSizeHint(AtomicBool);

impl ReadSizeHint {
    /// Reads at most `limit` bytes the way the previous read suggests, and
    /// remembers this read's size for the next one.
    pub fn read<'py>(
        &self,
        py: Python<'py>,
        fd: RawFd,
        call: ReadCall,
        limit: usize,
        framing: Framing,
    ) -> PyResult<Received<'py>> {
        let large = self.0.load(Ordering::Relaxed);
        let received = read_adaptive(py, fd, call, limit, framing, large)?;
        if let Received::Data(data) = &received {
            let now_large = is_large(data);
            if now_large != large {
                self.0.store(now_large, Ordering::Relaxed);
            }
        }
        Ok(received)
    }
}

/// Reads the way the previous read's size suggests.
pub fn read_adaptive(
    py: Python<'_>,
    fd: RawFd,
    call: ReadCall,
    limit: usize,
    framing: Framing,
    previous_was_large: bool,
) -> PyResult<Received<'_>> {
    if previous_was_large {
        read_direct(py, fd, call, limit, framing)
    } else {
        read_copied(py, fd, call, limit)
    }
}

/// Shrinks a new `bytes` that the read filled only the first `size` bytes
/// of (rare: `FIONREAD` said more was queued than the read returned).
fn shrink_new_bytes(object: Bound<'_, PyBytes>, size: usize) -> PyResult<Bound<'_, PyBytes>> {
    let py = object.py();
    let mut raw = object.into_ptr();
    // SAFETY: `raw` is the only reference to a bytes object nobody has seen,
    // as _PyBytes_Resize requires; on failure it frees the object, sets
    // `raw` to NULL and sets an exception. `size` > 0, so it stays a new
    // object rather than becoming the empty singleton.
    unsafe {
        if _PyBytes_Resize(&mut raw, size as ffi::Py_ssize_t) < 0 {
            return Err(PyErr::fetch(py));
        }
        Ok(Bound::from_owned_ptr(py, raw).cast_into_unchecked())
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use super::*;

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe(2) writes.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both descriptors are new and owned by nobody else.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    #[test]
    fn a_destination_the_kernel_copies_to_slowly_gets_the_data_whole() {
        let (read_end, write_end) = pipe();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        assert_eq!(
            sys_io::write(write_end.as_raw_fd(), &data),
            Ok(Some(data.len()))
        );
        let read_end = read_end.as_raw_fd();
        for offset in [16, 64] {
            let mut backing = PageAlignedBuffer::zeroed(4 * 4096);
            let destination = &mut backing.as_mut_slice()[offset..offset + 2_000];
            let count = read_into(
                read_end,
                ReadCall::Read,
                as_uninit(destination),
                Framing::Stream,
            );
            assert_eq!(count, Ok(Some(2_000)));
            let start = if offset == 16 { 0 } else { 2_000 };
            assert_eq!(destination, &data[start..start + 2_000]);
        }
        // Staged whatever this CPU is (read_into stages only on some).
        let mut backing = PageAlignedBuffer::zeroed(4 * 4096);
        let destination = &mut backing.as_mut_slice()[16..16 + 4_000];
        let count = staged(as_uninit(destination), Framing::Stream, |target| {
            Ok(ReadCall::Read.call(read_end, target)?.map(|n| (n, ())))
        });
        assert_eq!(count, Ok(Some((4_000, ()))));
        assert_eq!(destination, &data[4_000..8_000]);
        drop(write_end);
        let mut rest = [0u8; 4_000];
        let count = read_into(
            read_end.as_raw_fd(),
            ReadCall::Read,
            as_uninit(&mut rest),
            Framing::Stream,
        );
        assert_eq!(count, Ok(Some(2_000)));
    }

    #[test]
    fn a_datagram_for_a_slow_destination_arrives_whole() {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors socketpair(2) writes.
        let made =
            unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_DGRAM, 0, fds.as_mut_ptr()) };
        assert_eq!(made, 0);
        // SAFETY: both descriptors are new and owned by nobody else.
        let (receiver, sender) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let datagram: Vec<u8> = (0..3_000u32).map(|i| (i * 13 % 251) as u8).collect();
        for offset in [16, 64] {
            assert_eq!(
                sys_io::write(sender.as_raw_fd(), &datagram),
                Ok(Some(datagram.len()))
            );
            let mut backing = PageAlignedBuffer::zeroed(2 * 4096);
            let destination = &mut backing.as_mut_slice()[offset..offset + 4_000];
            let got =
                recvfrom_into(receiver.as_raw_fd(), destination).map(|got| got.map(|(n, _)| n));
            assert_eq!(got, Ok(Some(3_000)));
            assert_eq!(&destination[..3_000], &datagram[..]);
        }
        assert_eq!(
            recvfrom_into(receiver.as_raw_fd(), &mut [0u8; 16]).map(|got| got.is_none()),
            Ok(true)
        );
    }

    #[test]
    fn a_buffer_larger_than_the_staging_area_is_staged_only_if_a_short_read_is_allowed() {
        let mut backing = PageAlignedBuffer::zeroed(READ_SIZE + 2 * 4096);
        let buffer = as_uninit(&mut backing.as_mut_slice()[16..16 + READ_SIZE]);
        let caller = buffer.as_ptr();
        let seen_by = |framing, buffer: &mut [MaybeUninit<u8>]| {
            staged(buffer, framing, |target| {
                Ok(Some((0, (target.as_ptr(), target.len()))))
            })
            .unwrap()
            .unwrap()
            .1
        };
        assert_eq!(seen_by(Framing::Unknown, buffer), (caller, READ_SIZE));
        let (staged, limit) = seen_by(Framing::Stream, buffer);
        assert_ne!(staged, caller);
        assert_eq!(limit, READ_SIZE - STAGING_OFFSET);
    }
}
