//! Cache hints: asks the CPU to start loading a line it is about to need.
//! Owns nothing; never reads or writes memory, so a hint on a wrong address costs a wasted load
//! and nothing else.

/// Bytes of a cache line on the CPUs this runs on.
pub(super) const CACHE_LINE_BYTES: usize = 64;

/// Starts loading the cache line that holds `at` into every cache level.
#[inline(always)]
pub(super) fn prefetch_line<T>(at: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 is a hint: it never faults, not even on an unmapped address, and
    // changes no memory or register state (Intel SDM, PREFETCHh). SSE, which it belongs to, is
    // part of the x86_64 baseline, so the instruction is always there.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(at.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// Starts loading every cache line of the `len` bytes from address `at`; only an address,
/// which may be stale or wrong: it is never read.
#[inline(always)]
pub(super) fn prefetch_span(at: usize, len: usize) {
    prefetch_line(std::ptr::without_provenance::<u8>(at));
    let last = at.wrapping_add(len.saturating_sub(1));
    if last / CACHE_LINE_BYTES != at / CACHE_LINE_BYTES {
        prefetch_line(std::ptr::without_provenance::<u8>(last));
    }
}
