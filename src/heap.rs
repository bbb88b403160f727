//! The heap's live bytes, counted when the binary installs `CountingAllocator` (built with the
//! `heap-stats` feature). It tells a leak (live bytes grow with resident memory) from memory
//! the allocator keeps (they do not). Owns two process-wide counters; it never allocates.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);
static COUNTING: AtomicBool = AtomicBool::new(false);

/// Wraps an allocator and counts the bytes it has handed out and not had back. One relaxed
/// atomic add per call: for finding growth, not for production builds.
pub struct CountingAllocator<A>(pub A);

fn count(delta: isize) {
    LIVE_BYTES.fetch_add(delta, Ordering::Relaxed);
}

/// Counts a new allocation of `layout` at `ptr` (none when null), and notes that this binary
/// counts: a load first, so the flag's cache line is written once, not on every allocation.
fn allocated(ptr: *mut u8, layout: Layout) -> *mut u8 {
    if !COUNTING.load(Ordering::Relaxed) {
        COUNTING.store(true, Ordering::Relaxed);
    }
    if !ptr.is_null() {
        count(size(layout));
    }
    ptr
}

fn size(layout: Layout) -> isize {
    // A layout's size never exceeds `isize::MAX`.
    isize::try_from(layout.size()).unwrap_or(isize::MAX)
}

// SAFETY: every call is passed on unchanged to the inner allocator, which upholds the
// `GlobalAlloc` contract; the counting beside it touches only atomics, never the memory.
unsafe impl<A: GlobalAlloc> GlobalAlloc for CountingAllocator<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's guarantees for `layout` are the inner allocator's.
        allocated(unsafe { self.0.alloc(layout) }, layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        allocated(unsafe { self.0.alloc_zeroed(layout) }, layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, so from the inner one, with `layout`.
        unsafe { self.0.dealloc(ptr, layout) };
        count(-size(layout));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`, and the caller's guarantees for `new_size` pass on.
        let new = unsafe { self.0.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            count(isize::try_from(new_size).unwrap_or(isize::MAX) - size(layout));
        }
        new
    }
}

/// Bytes allocated and not yet freed, when the running binary counts them.
pub fn live_bytes() -> Option<usize> {
    COUNTING
        .load(Ordering::Relaxed)
        .then(|| usize::try_from(LIVE_BYTES.load(Ordering::Relaxed)).unwrap_or(0))
}

/// This process's resident memory, from `/proc/self/statm`.
pub fn resident_bytes() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: `sysconf` only reads its integer argument.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * usize::try_from(page).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::System;

    #[test]
    fn counts_what_is_allocated_and_not_freed() {
        let counting = CountingAllocator(System);
        let before = LIVE_BYTES.load(Ordering::Relaxed);
        let layout = Layout::from_size_align(1000, 8).expect("layout");
        // SAFETY: a non-zero layout; each pointer is freed once with the layout it came with.
        unsafe {
            let a = counting.alloc(layout);
            let b = counting.alloc_zeroed(layout);
            assert_eq!(LIVE_BYTES.load(Ordering::Relaxed) - before, 2000);
            let b = counting.realloc(b, layout, 3000);
            assert_eq!(LIVE_BYTES.load(Ordering::Relaxed) - before, 4000);
            counting.dealloc(a, layout);
            counting.dealloc(b, Layout::from_size_align(3000, 8).expect("layout"));
        }
        assert_eq!(LIVE_BYTES.load(Ordering::Relaxed), before);
        assert!(live_bytes().is_some());
        assert!(resident_bytes().is_some_and(|r| r > 0));
    }
}
