//! A counting allocator: `System`, plus the live heap bytes now and the
//! most there have been, in two atomics.
//!
//! The workspace forbids `unsafe` and this crate denies it; an allocator
//! cannot be written without it (`GlobalAlloc` is an unsafe trait), so this
//! module alone allows it, and does nothing unsafe beyond passing each call
//! to `System` unchanged.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes are counted as requested (`Layout::size`), not as `malloc` rounds
/// them up: the heap as the program sees it. What the allocator adds on
/// top shows in `VmHWM`, read beside it.
pub struct Counting {
    current: AtomicUsize,
    peak: AtomicUsize,
}

impl Counting {
    pub const fn new() -> Self {
        Self {
            current: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }

    /// Live heap bytes now.
    pub fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }

    /// The most live heap bytes since the last [`Counting::reset_peak`].
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Starts a new peak from what is live now.
    pub fn reset_peak(&self) {
        self.peak.store(self.current(), Ordering::Relaxed);
    }

    // Each `fetch_add` returns the value just before it in `current`'s one
    // modification order, so every high point is seen by the call that made
    // it: the peak is exact, whatever the threads.
    fn grew(&self, bytes: usize) {
        let now = self.current.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    fn shrank(&self, bytes: usize) {
        self.current.fetch_sub(bytes, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `layout`, passed on unchanged.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            self.grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            self.grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout` (every
        // allocation of this process goes through this allocator).
        unsafe { System.dealloc(ptr, layout) };
        self.shrank(layout.size());
    }

    /// Counted as if the new block were allocated before the old one is
    /// freed, as a moving `realloc` does: the peak is an upper bound even
    /// when `realloc` grows in place.
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.grew(new_size);
        // SAFETY: as `dealloc` for `ptr` and `layout`; `new_size` is the
        // caller's, passed on unchanged.
        let moved = unsafe { System.realloc(ptr, layout, new_size) };
        if moved.is_null() {
            // Failed: the old block is still live, the new one never was.
            self.shrank(new_size);
        } else {
            self.shrank(layout.size());
        }
        moved
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::HEAP;

    const MIB: usize = 1 << 20;
    /// Other tests run on other threads and allocate meanwhile.
    const NOISE: usize = MIB;
    /// The heap is one counter for the whole process: the two tests that
    /// allocate megabytes take turns, or each sees the other's blocks.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn counts_a_block_while_it_lives_and_keeps_its_peak() {
        let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let before = HEAP.current();
        HEAP.reset_peak();
        let block = vec![1u8; 8 * MIB];
        assert!(HEAP.current() + NOISE >= before + 8 * MIB);
        drop(block);
        assert!(HEAP.current() < before + NOISE);
        assert!(HEAP.peak() + NOISE >= before + 8 * MIB);
    }

    #[test]
    fn a_growing_realloc_counts_old_and_new_at_once() {
        let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let base = HEAP.current();
        let mut v: Vec<u8> = Vec::with_capacity(4 * MIB);
        v.push(1);
        HEAP.reset_peak();
        v.reserve_exact(8 * MIB);
        // 4 MiB old + 8 MiB new, where an in-place count would say 8.
        assert!(HEAP.peak() + NOISE >= base + 12 * MIB);
        assert!(HEAP.current() < base + 8 * MIB + NOISE);
        drop(v);
    }
}
