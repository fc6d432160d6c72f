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
//!
//! Buffers the loop does not own (a `BufferedProtocol`'s, `sock_recv_into`'s)
//! can start at such an offset too: a `bytearray` of 128 KiB or more is
//! glibc's `mmap` path again. [`copies_slowly_to`] says which starts to
//! avoid on this CPU.

use std::sync::OnceLock;

const PAGE: usize = 4096;

/// Destinations starting this many bytes past a page boundary made the
/// kernel's copy of page-aligned data slow on an AMD EPYC machine: a 100 KiB
/// `BufferedProtocol` echo took twice the server CPU per request with its
/// buffer at 8, 16 or 24 bytes into a page, and the same as at 0 with it at
/// 32, 48, 64, 2,064 or 4,080 (docs/performance.md, session 17).
const SLOW_OFFSETS: std::ops::Range<usize> = 1..32;

/// Whether `start` is at one of the [`SLOW_OFFSETS`] of its page.
pub fn is_slow_copy_destination(start: *const u8) -> bool {
    SLOW_OFFSETS.contains(&(start as usize % PAGE))
}

/// Whether the kernel would copy received data to `start` slowly on this
/// CPU: at a slow offset, on a CPU where such copies were measured slow.
pub fn copies_slowly_to(start: *const u8) -> bool {
    // The offset first: most buffers are not at one, and it needs no load.
    is_slow_copy_destination(start) && slow_offsets_are_slow_on_this_cpu()
}

/// AMD's CPUs, as far as measured. On an Intel Xeon machine (with fast short
/// `rep movsb`, FSRM) the offsets did not slow the kernel's copy, and going
/// around them through a staging buffer cost a 100 KiB `BufferedProtocol`
/// echo about a fifth more server CPU per request (docs/performance.md,
/// session 21).
fn slow_offsets_are_slow_on_this_cpu() -> bool {
    static ANSWER: OnceLock<bool> = OnceLock::new();
    *ANSWER.get_or_init(cpu_is_amd)
}

#[cfg(target_arch = "x86_64")]
fn cpu_is_amd() -> bool {
    // CPUID leaf 0 names the vendor in EBX, EDX, ECX: "AuthenticAMD".
    #[allow(unused_unsafe)]
    // SAFETY: every x86_64 CPU implements CPUID and its leaf 0.
    let leaf = unsafe { std::arch::x86_64::__cpuid(0) };
    [leaf.ebx, leaf.edx, leaf.ecx] == [*b"Auth", *b"enti", *b"cAMD"].map(u32::from_le_bytes)
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_is_amd() -> bool {
    false
}

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

    #[test]
    fn only_starts_just_past_a_page_boundary_are_slow() {
        let page = PAGE as *const u8;
        let at = |offset: usize| page.wrapping_add(offset);
        assert!(!is_slow_copy_destination(at(0)));
        assert!(is_slow_copy_destination(at(1)));
        assert!(is_slow_copy_destination(at(16)));
        assert!(is_slow_copy_destination(at(31)));
        assert!(!is_slow_copy_destination(at(32)));
        assert!(!is_slow_copy_destination(at(PAGE - 16)));
        assert!(is_slow_copy_destination(at(5 * PAGE + 16)));
    }

    #[test]
    fn slow_offsets_are_avoided_only_on_cpus_where_they_are_slow() {
        let page = PAGE as *const u8;
        assert_eq!(copies_slowly_to(page.wrapping_add(16)), cpu_is_amd());
        assert!(!copies_slowly_to(page.wrapping_add(64)));
    }
}
