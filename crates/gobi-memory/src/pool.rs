//! One named pool: a limit and the bytes reserved from it, with the counters `gobi memory
//! stats` shows, and how full it is (its [`Pressure`]).
//!
//! ```text
//!   try_reserve(n) ──► reserved + n <= limit ? reserved += n : rejected += 1, Err(available)
//!   release(n)     ──► reserved -= n ──► anyone waiting for less pressure? wake them
//!
//!   pressure:  0 ──── normal ────┤80 %├──── high ────┤95 %├── critical ──┤ limit
//! ```
//!
//! Every counter is an atomic, and a reservation is one compare-and-swap loop on `reserved`:
//! no lock on the hot path, correct under any number of threads. Reserved never exceeds the
//! limit through `try_reserve`; `force_reserve` exists for the one case that cannot fail
//! (DataFusion's infallible `grow`, for memory an operator already holds) and is counted as an
//! overrun so it is visible rather than silent. A release wakes the tasks waiting for the
//! pool's pressure to fall ([`Pool::wait_for_pressure_below`]); with none waiting, that is one
//! more load.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::wait::Waiters;

/// A pool this full (in percent of its limit) is under `high` pressure.
pub const HIGH_PRESSURE_PERCENT: usize = 80;
/// A pool this full is under `critical` pressure.
pub const CRITICAL_PRESSURE_PERCENT: usize = 95;

/// Which pool: what the memory is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PoolKind {
    /// Execution memory of running queries: hash tables, sort buffers, aggregation state.
    Query,
    /// What gobi keeps for reuse between queries: results, metadata, function memos.
    Cache,
    /// Session-scoped values: `let` tables and other intermediate results.
    Temp,
}

impl PoolKind {
    pub const ALL: [PoolKind; 3] = [PoolKind::Query, PoolKind::Cache, PoolKind::Temp];

    /// The unit a reservation of this pool grows in: small growth stays inside the block it
    /// already holds and touches no shared counter. Query operators grow most often; session
    /// values least.
    pub const fn block(self) -> usize {
        match self {
            PoolKind::Query => 8 << 10,
            PoolKind::Cache => 4 << 10,
            PoolKind::Temp => 1 << 10,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PoolKind::Query => "query",
            PoolKind::Cache => "cache",
            PoolKind::Temp => "temp",
        }
    }
}

impl fmt::Display for PoolKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How full a pool is: `normal` below 80 % of its limit, `high` from 80 %, `critical` from 95 %.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pressure {
    Normal,
    High,
    Critical,
}

impl Pressure {
    pub fn of(reserved: usize, limit: usize) -> Self {
        let percent = reserved as u128 * 100 / (limit.max(1) as u128);
        match percent {
            p if p >= CRITICAL_PRESSURE_PERCENT as u128 => Pressure::Critical,
            p if p >= HIGH_PRESSURE_PERCENT as u128 => Pressure::High,
            _ => Pressure::Normal,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Pressure::Normal => "normal",
            Pressure::High => "high",
            Pressure::Critical => "critical",
        }
    }
}

/// What to give back of `headroom` bytes held beyond a reservation's need, keeping `keep`
/// (one block, or a consumer's lead): nothing below `keep` and a block more, else whole blocks
/// down to `keep` (and the odd bytes), so a reservation that shrinks and grows around a block
/// boundary does not go back to the pool each time.
pub(crate) fn surplus(headroom: isize, keep: usize, block: usize) -> usize {
    let headroom = headroom.max(0) as usize;
    if headroom < keep + block {
        0
    } else {
        (headroom - keep) / block * block
    }
}

/// Raises `peak` to `now` if lower. Reads first: below the peak, which is most of the time, the
/// shared line is not written.
pub(crate) fn raise_peak(peak: &AtomicUsize, now: usize) {
    if now > peak.load(Ordering::Relaxed) {
        peak.fetch_max(now, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub struct Pool {
    kind: PoolKind,
    limit: AtomicUsize,
    reserved: AtomicUsize,
    peak: AtomicUsize,
    allocations: AtomicU64,
    deallocations: AtomicU64,
    rejected: AtomicU64,
    overruns: AtomicU64,
    /// Tasks waiting for the pressure to fall.
    waiters: Waiters,
}

/// A snapshot of one pool's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    pub kind: PoolKind,
    pub limit: usize,
    pub reserved: usize,
    pub peak: usize,
    /// Successful reservations (each growth counts once).
    pub allocations: u64,
    /// Releases (each shrink counts once).
    pub deallocations: u64,
    /// Requests refused because they would have passed the limit.
    pub rejected: u64,
    /// Growths that could not be refused and took the pool past its limit.
    pub overruns: u64,
}

impl Pool {
    pub fn new(kind: PoolKind, limit: usize) -> Self {
        Self {
            kind,
            limit: AtomicUsize::new(limit),
            reserved: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            allocations: AtomicU64::new(0),
            deallocations: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            overruns: AtomicU64::new(0),
            waiters: Waiters::default(),
        }
    }

    pub fn kind(&self) -> PoolKind {
        self.kind
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// A new limit; memory reserved above it stays reserved until released.
    pub fn set_limit(&self, limit: usize) {
        // SeqCst: a larger limit lowers the pressure, which a waiter must see (`wait.rs`).
        self.limit.store(limit, Ordering::SeqCst);
        self.waiters.wake();
    }

    pub fn reserved(&self) -> usize {
        self.reserved.load(Ordering::Relaxed)
    }

    pub fn pressure(&self) -> Pressure {
        Pressure::of(self.reserved(), self.limit())
    }

    /// Waits until the pool's pressure is below `level` (a release or a larger limit brings it
    /// there), at most `timeout`; whether it is. Woken by releases, never polls. Needs a Tokio
    /// runtime with its timer.
    pub async fn wait_for_pressure_below(&self, level: Pressure, timeout: Duration) -> bool {
        self.until(|| self.pressure() < level, timeout).await
    }

    /// Reserves `bytes` if the pool has room; otherwise returns the bytes still available.
    pub fn try_reserve(&self, bytes: usize) -> Result<(), usize> {
        self.try_reserve_between(bytes, bytes).map(|_| ())
    }

    /// Reserves `most` bytes if the pool has room, else `least` if it has room for that (a
    /// whole block, else just the bytes needed); the bytes reserved, or the bytes still
    /// available. One request, counted once.
    pub fn try_reserve_between(&self, least: usize, most: usize) -> Result<usize, usize> {
        let limit = self.limit();
        let mut taken = 0;
        let updated = self.reserved.fetch_update(Ordering::AcqRel, Ordering::Acquire, |reserved| {
            taken = [most.max(least), least].into_iter().find(|&bytes| reserved.checked_add(bytes).is_some_and(|new| new <= limit))?;
            Some(reserved + taken)
        });
        match updated {
            Ok(before) => {
                self.note_growth(before + taken);
                Ok(taken)
            }
            Err(reserved) => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                Err(limit.saturating_sub(reserved))
            }
        }
    }

    /// Reserves `bytes` even past the limit (counted as an overrun when it goes past).
    /// Reserves `bytes` even past the limit; whether it went past (counted as an overrun).
    pub fn force_reserve(&self, bytes: usize) -> bool {
        let now = self.reserved.fetch_add(bytes, Ordering::AcqRel) + bytes;
        let overran = now > self.limit();
        if overran {
            self.overruns.fetch_add(1, Ordering::Relaxed);
        }
        self.note_growth(now);
        overran
    }

    pub fn release(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        // SeqCst (the same instruction as AcqRel on x86 and ARMv8): a waiter must see either
        // this release or, through `wake`, be told of it (`wait.rs`).
        let before = self.reserved.fetch_sub(bytes, Ordering::SeqCst);
        debug_assert!(before >= bytes, "{} pool released {bytes} bytes with {before} reserved", self.kind);
        self.deallocations.fetch_add(1, Ordering::Relaxed);
        self.waiters.wake();
    }

    /// Waits until `ready()` holds, checked again after every release of this pool; at most
    /// `timeout`. Whether it holds. Needs a Tokio runtime with its timer.
    pub(crate) async fn until(&self, ready: impl Fn() -> bool, timeout: Duration) -> bool {
        self.waiters.until(ready, timeout).await
    }

    /// Blocks this thread until `ready()` holds (a refused request was granted), checked again
    /// after every release of this pool; at most `timeout`. Whether it holds.
    pub(crate) fn block_until(&self, ready: impl FnMut() -> bool, timeout: Duration) -> bool {
        self.waiters.until_blocking(ready, timeout)
    }

    /// How many tasks wait for the pressure to fall (a test's releaser waits for its waiter).
    pub fn waiting(&self) -> usize {
        self.waiters.waiting()
    }

    fn note_growth(&self, now: usize) {
        self.allocations.fetch_add(1, Ordering::Relaxed);
        raise_peak(&self.peak, now);
    }

    pub fn stats(&self) -> PoolStats {
        PoolStats {
            kind: self.kind,
            limit: self.limit(),
            reserved: self.reserved(),
            peak: self.peak.load(Ordering::Relaxed),
            allocations: self.allocations.load(Ordering::Relaxed),
            deallocations: self.deallocations.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            overruns: self.overruns.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wait::once_waiting;

    #[test]
    fn surplus_keeps_what_it_is_told_and_a_spare_block_at_most() {
        assert_eq!(surplus(-5, 1024, 1024), 0);
        assert_eq!(surplus(2047, 1024, 1024), 0);
        assert_eq!(surplus(2048, 1024, 1024), 1024);
        assert_eq!(surplus(5000, 1024, 1024), 3072, "keeps 1024 + 904");
        assert_eq!(surplus(5000, 3000, 1024), 1024, "keeps 3000 + 976");
        assert_eq!(surplus(3999, 3000, 1024), 0);
    }

    #[test]
    fn refuses_past_the_limit_and_counts() {
        let pool = Pool::new(PoolKind::Temp, 100);
        assert_eq!(pool.try_reserve(60), Ok(()));
        assert_eq!(pool.try_reserve(50), Err(40));
        pool.release(60);
        assert_eq!(pool.try_reserve(100), Ok(()));
        pool.release(100);
        let stats = pool.stats();
        assert_eq!((stats.reserved, stats.peak, stats.allocations, stats.deallocations, stats.rejected), (0, 100, 2, 2, 1));
    }

    #[test]
    fn pressure_thresholds() {
        assert_eq!(
            [0, 79, 80, 94, 95, 100, 120].map(|r| Pressure::of(r, 100)),
            [Pressure::Normal, Pressure::Normal, Pressure::High, Pressure::High, Pressure::Critical, Pressure::Critical, Pressure::Critical]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_release_on_another_thread_wakes_who_waits_for_less_pressure() {
        let pool = std::sync::Arc::new(Pool::new(PoolKind::Query, 100));
        pool.try_reserve(96).unwrap();
        let releaser = once_waiting(&pool, Pool::waiting, |pool| pool.release(10));
        assert!(pool.wait_for_pressure_below(Pressure::Critical, Duration::from_secs(60)).await, "woken by the release");
        assert_eq!(pool.pressure(), Pressure::High);
        releaser.join().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_larger_limit_wakes_who_waits_for_less_pressure() {
        let pool = std::sync::Arc::new(Pool::new(PoolKind::Query, 100));
        pool.try_reserve(100).unwrap();
        let raiser = once_waiting(&pool, Pool::waiting, |pool| pool.set_limit(1000));
        assert!(pool.wait_for_pressure_below(Pressure::High, Duration::from_secs(60)).await);
        raiser.join().unwrap();
        pool.release(100);
    }

    #[tokio::test]
    async fn waiting_for_less_pressure_times_out_while_the_pool_stays_full() {
        let pool = Pool::new(PoolKind::Query, 100);
        pool.try_reserve(95).unwrap();
        assert!(!pool.wait_for_pressure_below(Pressure::Critical, Duration::from_millis(20)).await);
        pool.release(95);
        assert!(pool.wait_for_pressure_below(Pressure::High, Duration::ZERO).await, "already below: no wait");
    }
}
