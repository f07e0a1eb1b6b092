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
//! A statement's operators each count in a part of its scope ([`AllocScope::part_of`]): a
//! poll enters the operator's own scope, so what its inputs allocate in their polls is theirs,
//! and a batch it returns is passed on to the operator that polled for it ([`pass_on`]). An
//! operator's count is then what it holds itself — what `gobi plan --analyze` shows beside
//! its reservation.
//!
//! Not counted per query: allocations made outside any poll (planning, printing). The
//! process figures ([`ProcessMemory`]) come from jemalloc and the OS and see everything.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

/// How far a thread's pending count may drift before it is flushed to its scope.
const FLUSH_BYTES: i64 = 256 << 10;

/// The bytes the allocator handed to work done for one query (or one operator of it): now
/// (net) and at most.
#[derive(Debug, Default)]
pub struct AllocScope {
    current: AtomicI64,
    peak: AtomicI64,
    /// The scope this one is a part of (an operator's statement): what is counted here is
    /// counted there too.
    whole: Option<Arc<AllocScope>>,
}

impl AllocScope {
    /// A scope for one part of `whole`'s work (an operator of a statement).
    pub fn part_of(whole: &Arc<AllocScope>) -> Self {
        Self { whole: Some(Arc::clone(whole)), ..Self::default() }
    }

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
        if let Some(whole) = &self.whole {
            whole.hand_over(bytes as usize);
        }
    }

    pub(crate) fn add(&self, bytes: i64) {
        let now = self.current.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
        if let Some(whole) = &self.whole {
            whole.add(bytes);
        }
    }
}

/// Moves `bytes` of a batch from `from`, the operator that made it, to the scope this thread
/// works for now, the operator that polled for it: the receiver holds the batch from here on
/// and frees it under its own scope. So each operator's count is its own, its inputs' not
/// included (a sort holding its input counts it; the scan that read it does not). A thread
/// that works for no scope is a task DataFusion spawned (a repartition's input task): it sends
/// the batch, or batches cut from it, through a channel to the operator above, which frees them
/// under its own scope. The batch leaves `from` but stays its statement's, where those frees
/// subtract it again; that operator's own count then misses it (it is shown as no operator's).
/// Nothing moves when the thread works for `from` itself.
pub fn pass_on(from: &AllocScope, bytes: usize) {
    let to = SCOPE.with(Cell::get);
    let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
    if to.is_null() {
        from.current.fetch_sub(bytes, Ordering::Relaxed);
        return;
    }
    if ptr::eq(to, from) {
        return;
    }
    // Off first, then on: a whole both are part of never sees the batch twice.
    from.add(-bytes);
    // SAFETY: a non-null scope is kept alive by the `ScopeGuard` that set it (see `flush`).
    unsafe { &*to }.add(bytes);
}

/// Charges `bytes` that arrived from a thread working for no scope (an object store reads a
/// file in tokio's blocking pool) to the scope this thread works for now, which will free
/// them: without it their frees would take off what was never counted, and the statement's
/// count would read less than it holds.
pub fn adopt(bytes: usize) {
    adopt_signed(i64::try_from(bytes).unwrap_or(i64::MAX));
}

fn adopt_signed(bytes: i64) {
    let scope = SCOPE.with(Cell::get);
    if !scope.is_null() {
        // SAFETY: a non-null scope is kept alive by the `ScopeGuard` that set it (see `flush`).
        unsafe { &*scope }.add(bytes);
    }
}

/// Takes `bytes` off the scope this thread works for now: memory it allocated that a cache
/// keeps from here on (a file's footer), which no statement holds any more. The cache frees it
/// in [`unscoped`], or gives it back to a scope with [`adopt`].
pub fn disown(bytes: usize) {
    adopt_signed(-i64::try_from(bytes).unwrap_or(i64::MAX));
}

/// Runs `f` working for no scope: what it frees (entries a cache evicts) was [`disown`]ed and
/// is taken off no statement's count.
pub fn unscoped<R>(f: impl FnOnce() -> R) -> R {
    flush();
    let previous = SCOPE.with(|s| s.replace(ptr::null()));
    let result = f();
    // With no scope, what is pending is dropped, not charged.
    flush();
    SCOPE.with(|s| s.set(previous));
    result
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
pub fn enter(scope: &Arc<AllocScope>) -> ScopeGuard {
    flush();
    let previous = SCOPE.with(|s| s.replace(Arc::as_ptr(scope)));
    ScopeGuard { previous, _scope: Arc::clone(scope) }
}

/// Restores the thread's previous scope (after flushing what this one allocated).
pub struct ScopeGuard {
    previous: *const AllocScope,
    _scope: Arc<AllocScope>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_counts_to_its_whole_and_a_batch_passed_on_moves_to_its_receiver() {
        let query = Arc::new(AllocScope::default());
        let scan = Arc::new(AllocScope::part_of(&query));
        let sort = Arc::new(AllocScope::part_of(&query));
        scan.add(1000);
        assert_eq!((scan.current(), query.current()), (1000, 1000));
        {
            let _sort_polls = enter(&sort);
            pass_on(&scan, 600);
            pass_on(&sort, 100);
        }
        assert_eq!((scan.current(), sort.current(), query.current()), (400, 600, 1000), "a scope passing to itself moves nothing");
        assert_eq!((query.peak(), scan.peak()), (1000, 1000), "the whole never saw the batch twice");
        pass_on(&scan, 100);
        assert_eq!((scan.current(), query.current()), (300, 1000), "to a thread of no scope: off the part, still the whole's");
        sort.hand_over(700);
        assert_eq!((sort.current(), query.current()), (0, 300), "handed over: off the part and its whole, never below 0");
    }

    #[test]
    fn bytes_made_on_a_thread_of_no_scope_are_adopted_by_the_scope_that_frees_them() {
        let query = Arc::new(AllocScope::default());
        let scan = Arc::new(AllocScope::part_of(&query));
        adopt(500);
        assert_eq!(query.current(), 0, "a thread of no scope adopts nothing");
        {
            let _scan_polls = enter(&scan);
            adopt(500);
        }
        assert_eq!((scan.current(), query.current(), query.peak()), (500, 500, 500));
        scan.add(-500);
        assert_eq!((scan.current(), query.current()), (0, 0), "freed where adopted: nothing left over, nothing taken off twice");
    }
}
