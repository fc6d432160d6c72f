//! A zeroed byte buffer that starts on a page boundary, for the buffers the
//! kernel copies received data into.
//!
//! Where the destination starts within its page matters to the kernel's copy.
//! `vec![0; 256 KiB]` comes from glibc's `mmap` path and starts 16 bytes into
//! a page; data queued on a loopback socket or in a pipe usually starts at
//! the beginning of a page, so source and destination were 16 bytes apart
//! modulo 4 KiB, and the copy's loads kept waiting on its own earlier stores
//! to addresses that look the same to the CPU ("4K aliasing"). On this
//! machine (AMD EPYC) that made `_copy_to_iter` 19-20% of the 10 KiB
//! Protocol echo server's CPU samples instead of 3% (uvloop's share); with
//! the destination at any other offset tried, 3-4.5%.

const PAGE: usize = 4096;

/// `len` zeroed bytes starting on a page boundary: a page more is allocated
/// and the part before the first boundary left unused. Pages are mapped
/// lazily by the allocator, as with `vec![0; len]`.
pub struct PageAlignedBuffer {
    storage: Vec<u8>,
    start: usize,
}

impl PageAlignedBuffer {
    pub fn zeroed(len: usize) -> Self {
        let storage = vec![0; len + PAGE];
        let start = (PAGE - storage.as_ptr() as usize % PAGE) % PAGE;
        Self { storage, start }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let len = self.storage.len() - PAGE;
        &mut self.storage[self.start..self.start + len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_on_a_page_and_is_zeroed() {
        let mut buffer = PageAlignedBuffer::zeroed(256 * 1024);
        let bytes = buffer.as_mut_slice();
        assert_eq!(bytes.as_ptr() as usize % PAGE, 0);
        assert_eq!(bytes.len(), 256 * 1024);
        assert!(bytes.iter().all(|&b| b == 0));
    }
}
