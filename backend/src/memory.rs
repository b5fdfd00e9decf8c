//! Large buffers in huge pages: the packed weights and the KV cache are read by every step, in
//! 4 KiB pages a TLB miss every few rows (the hardware prefetchers also stop at each page). On
//! Linux, where transparent huge pages are usually enabled in `madvise` mode, [`advise_huge`]
//! asks for 2 MiB pages before a buffer is first written, so its pages are faulted in huge from
//! the start. Elsewhere, or when the kernel refuses, buffers stay as they are: only speed
//! depends on it, never a result.

/// The huge page size asked for.
const HUGE: usize = 2 << 20;

/// Asks for huge pages under the whole 2 MiB pages of `len` bytes at `ptr` (not yet written).
pub fn advise_huge(ptr: *const u8, len: usize) {
    let start = (ptr as usize).next_multiple_of(HUGE);
    let end = (ptr as usize + len) / HUGE * HUGE;
    if end <= start {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: `start..end` lies inside the caller's allocation; MADV_HUGEPAGE only changes how
    // its pages are backed, never their contents. A refusal (THP disabled) is harmless.
    unsafe {
        libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
    }
}

/// `n` copies of `value` in a new buffer in huge pages where the system gives them.
pub fn filled<T: Copy>(n: usize, value: T) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(n);
    advise_huge(v.as_ptr().cast(), n * std::mem::size_of::<T>());
    v.resize(n, value);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filled_buffers_hold_their_values() {
        for n in [0usize, 1, 1000, 3 << 20] {
            let v = filled(n, 7u16);
            assert_eq!(v.len(), n);
            assert!(v.iter().all(|&x| x == 7));
        }
        // Unaligned and short ranges are accepted (nothing to advise).
        advise_huge(std::ptr::null(), 100);
        advise_huge(12345 as *const u8, HUGE);
    }
}
