//! A counting global allocator, for the tests that prove a path allocates nothing per
//! message (`kdbus-core/tests/native_alloc.rs`, `kdbus-bridge/tests/dbus_alloc.rs`,
//! `kdbusd/tests/client_alloc.rs` include this file). Counting is off until a test
//! switches it on around the code it measures, on its own thread: tests running beside
//! it in other threads are not counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

pub struct Counting;

thread_local! {
    /// Whether this thread's allocations are counted now, and how many were. (`const`
    /// initializers: the allocator may use them without the thread-locals allocating.)
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

/// Whether every thread's allocations are counted now ([`counted_all`]), and how many.
static ALL: AtomicBool = AtomicBool::new(false);
static ALL_ALLOCS: AtomicUsize = AtomicUsize::new(0);

/// Count one allocation if this thread, or every thread, counts.
fn count() {
    if ALL.load(Ordering::Relaxed) {
        ALL_ALLOCS.fetch_add(1, Ordering::Relaxed);
    } else if COUNTING.try_with(Cell::get).unwrap_or(false) {
        let _ = ALLOCS.try_with(|a| a.set(a.get() + 1));
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; counting only
// touches atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` came from `System.alloc` with `l`.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        count();
        // SAFETY: `p` came from `System.alloc` with `l`.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Run `f` with counting on, for this thread.
#[allow(dead_code)]
pub fn counted<T>(f: impl FnOnce() -> T) -> T {
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    r
}

/// Run `f` counting the allocations of every thread (for a test whose path spans
/// threads; such tests must not run beside each other).
#[allow(dead_code)]
pub fn counted_all<T>(f: impl FnOnce() -> T) -> T {
    ALL.store(true, Ordering::SeqCst);
    let r = f();
    ALL.store(false, Ordering::SeqCst);
    r
}

/// Allocations counted so far: this thread's, and every thread's under [`counted_all`].
pub fn allocs() -> usize {
    ALLOCS.with(Cell::get) + ALL_ALLOCS.load(Ordering::SeqCst)
}
