//! Memory truth: what the allocator really holds, per query and for the process.
//!
//! Pools only know what operators reserve. Decoding buffers, batches in flight, kernel
//! intermediates and results are allocated without asking. [`CountingAllocator`] wraps the
//! global allocator (jemalloc in the `gobi` binary) and charges every allocation to the
//! [`AllocScope`] of the query the thread is working for, as ClickHouse's MemoryTracker does:
//!
//! ```text
//!   poll of a query's stream ──► enter(scope) ─┐       ┌─► scope.actual (+/- per 256 KiB)
//!     alloc / dealloc / realloc ──► thread-local pending ┘
//!   end of the poll ──────────► flush pending, restore the previous scope
//! ```
//!
//! Each thread keeps a pending count and flushes it to its scope once it passes 256 KiB either
//! way (and whenever the scope changes), so the shared counter is touched about once per
//! quarter MiB, not once per allocation. The figure is net: memory allocated under a query and
//! freed under it cancels out. A batch of its result handed to the reader leaves its count
//! ([`AllocScope::hand_over`]): the reader frees it outside any poll, and a streamed result
//! must not count every batch it ever returned.
//!
//! Not counted per query: allocations made outside any poll (planning, printing). The
//! process figures ([`ProcessMemory`]) come from jemalloc and the OS and see everything.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

/// How far a thread's pending count may drift before it is flushed to its scope.
const FLUSH_BYTES: i64 = 256 << 10;

/// The bytes the allocator handed to work done for one query: now (net) and at most.
#[derive(Debug, Default)]
pub struct AllocScope {
    current: AtomicI64,
    peak: AtomicI64,
}

impl AllocScope {
    /// Net bytes allocated for this scope and not yet freed (never below 0).
    pub fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed).max(0) as usize
    }

    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed).max(0) as usize
    }

    /// Takes `bytes` off the count: memory the statement handed over to its reader (a result
    /// batch), which will be freed outside its polls.
    /// Never below 0: a batch's size counts whole shared buffers (a slice of a bigger batch, a
    /// `let` table's rows the statement never allocated), so it can exceed what was charged.
    pub fn hand_over(&self, bytes: usize) {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        let _ = self.current.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| Some((now - bytes).max(0)));
    }

    pub(crate) fn add(&self, bytes: i64) {
        let now = self.current.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }
}

thread_local! {
    /// The scope this thread works for now (null: none), borrowed from the guard that set it.
    static SCOPE: Cell<*const AllocScope> = const { Cell::new(ptr::null()) };
    static PENDING: Cell<i64> = const { Cell::new(0) };
}

/// Set when the counting allocator is the process's global allocator.
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Whether allocations are being counted (the `gobi` binary installs the allocator; library
/// tests may not).
pub fn counting() -> bool {
    INSTALLED.load(Ordering::Relaxed)
}

fn flush() {
    let pending = PENDING.with(|p| p.replace(0));
    let scope = SCOPE.with(Cell::get);
    if pending != 0 && !scope.is_null() {
        // SAFETY: a non-null scope is kept alive by the `ScopeGuard` that set it, which
        // restores the previous one before it lets go of its `Arc`.
        unsafe { &*scope }.add(pending);
    }
}

#[inline]
fn count(bytes: i64) {
    // `try_with`: during thread teardown the thread-locals may be gone; then nothing is counted.
    let _ = PENDING.try_with(|p| {
        let now = p.get() + bytes;
        p.set(now);
        if now.abs() >= FLUSH_BYTES {
            flush();
        }
    });
}

/// Charges this thread's allocations to `scope` until the guard drops.
pub fn enter(scope: &std::sync::Arc<AllocScope>) -> ScopeGuard {
    flush();
    let previous = SCOPE.with(|s| s.replace(std::sync::Arc::as_ptr(scope)));
    ScopeGuard { previous, _scope: std::sync::Arc::clone(scope) }
}

/// Restores the thread's previous scope (after flushing what this one allocated).
pub struct ScopeGuard {
    previous: *const AllocScope,
    _scope: std::sync::Arc<AllocScope>,
}

impl Drop for ScopeGuard {
    fn drop(&mut self) {
        flush();
        SCOPE.with(|s| s.set(self.previous));
    }
}

/// A global allocator that counts what it hands out into the current thread's scope.
pub struct CountingAllocator<A>(pub A);

unsafe impl<A: GlobalAlloc> GlobalAlloc for CountingAllocator<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { self.0.alloc(layout) };
        if !p.is_null() {
            count(layout.size() as i64);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { self.0.alloc_zeroed(layout) };
        if !p.is_null() {
            count(layout.size() as i64);
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { self.0.dealloc(p, layout) };
        count(-(layout.size() as i64));
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let q = unsafe { self.0.realloc(p, layout, new_size) };
        if !q.is_null() {
            count(new_size as i64 - layout.size() as i64);
        }
        q
    }
}

/// gobi's global allocator: jemalloc, counted.
pub type GobiAllocator = CountingAllocator<tikv_jemallocator::Jemalloc>;

impl GobiAllocator {
    pub const fn new() -> Self {
        CountingAllocator(tikv_jemallocator::Jemalloc)
    }
}

impl Default for GobiAllocator {
    fn default() -> Self {
        Self::new()
    }
}

/// Marks the counting allocator as installed; the binary calls it first thing in `main`.
pub fn mark_installed() {
    INSTALLED.store(true, Ordering::Relaxed);
}

/// What the process holds, from jemalloc and the OS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessMemory {
    /// Bytes jemalloc has handed out and not had back (0 when jemalloc is not the allocator).
    pub allocated: usize,
    /// Bytes of pages jemalloc holds from the OS.
    pub resident: usize,
    /// The resident set size the OS reports for the whole process.
    pub rss: usize,
}

impl ProcessMemory {
    pub fn now() -> Self {
        let (allocated, resident) = if counting() {
            let _ = tikv_jemalloc_ctl::epoch::advance();
            (tikv_jemalloc_ctl::stats::allocated::read().unwrap_or(0), tikv_jemalloc_ctl::stats::resident::read().unwrap_or(0))
        } else {
            (0, 0)
        };
        Self { allocated, resident, rss: rss_bytes() }
    }
}

/// The process's resident set size from `/proc/self/statm` (0 where there is none).
pub fn rss_bytes() -> usize {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else { return 0 };
    let pages: usize = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

/// Asks jemalloc to give free pages back to the OS (all arenas). Returns false when jemalloc
/// is not the allocator.
/// After a statement: when jemalloc keeps more than `threshold` bytes of free pages, returns
/// them to the OS now instead of at its decay time (10 s), so a process running statement
/// after statement holds its live memory and not its last statement's high-water mark. The
/// bytes given back, if it purged.
pub fn purge_if_retained_over(threshold: usize) -> Option<usize> {
    if !counting() {
        return None;
    }
    // Free pages: resident, less the pages holding live allocations and jemalloc's own
    // metadata, which no purge returns (otherwise fragmentation would make every statement
    // pay for a purge that frees nothing).
    let free_pages = || {
        let _ = tikv_jemalloc_ctl::epoch::advance();
        let stat = |read: fn() -> tikv_jemalloc_ctl::Result<usize>| read().unwrap_or(0);
        stat(tikv_jemalloc_ctl::stats::resident::read)
            .saturating_sub(stat(tikv_jemalloc_ctl::stats::active::read))
            .saturating_sub(stat(tikv_jemalloc_ctl::stats::metadata::read))
    };
    let before = free_pages();
    if before <= threshold || !purge() {
        return None;
    }
    Some(before.saturating_sub(free_pages()))
}

pub fn purge() -> bool {
    if !counting() {
        return false;
    }
    // "arena.<MALLCTL_ARENAS_ALL>.purge" (4096 is MALLCTL_ARENAS_ALL) takes no value: both
    // pointers must be null, which the ctl crate's typed `write` cannot express.
    let name = b"arena.4096.purge\0";
    // SAFETY: a NUL-terminated name, no old or new value.
    unsafe { tikv_jemalloc_sys::mallctl(name.as_ptr().cast(), ptr::null_mut(), ptr::null_mut(), ptr::null_mut(), 0) == 0 }
}
