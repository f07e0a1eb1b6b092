//! The memory manager: the registry of statements. It begins each statement's accounting
//! ([`QueryMemory`]), finds the memory of those that ended (leaks) and gives it back
//! (cleanup); everything else it answers from the [`Budget`] it shares with every statement.
//!
//! ```text
//!                       MemoryManager
//!     next query id, statements (weak: a QueryMemory lives as long as its plan's streams)
//!         │ begin_query(text, StatementLimits)        leaks(), release_ended(), consumers()
//!         ▼
//!   QueryMemory (one per statement) ──Arc──► Budget ◄──Arc── MemoryManager
//!                                              │          (pools, stats, pressure, events,
//!                                              │           reclaimers, reservations, settings:
//!                                              │           delegated)
//!                            query pool │ cache pool │ temp pool
//! ```
//!
//! The manager imports the statements (`query.rs`), the reservations kept between them
//! (`reservation.rs`) and the budget (`budget.rs`); none of them imports the manager. The
//! budget reaches the registry only through the [`Registry`] trait, to name the largest
//! holders when a request is refused.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::budget::{largest_first, Budget, ConsumerStats, MemoryEvent, PoolLimits, Reclaim, Registry};
use crate::byte_size::ByteSize;
use crate::pool::{Pool, PoolKind, PoolStats, Pressure};
use crate::query::{QueryMemory, StatementLimits};
use crate::reservation::{PoolFull, Reservation};

#[derive(Debug)]
pub struct MemoryManager {
    /// The pools and the rules over them, shared with every statement.
    budget: Arc<Budget>,
    next_query: AtomicU64,
    /// Statements whose memory may still be held (their `QueryMemory` is alive).
    queries: Mutex<Vec<Weak<QueryMemory>>>,
}

/// What [`MemoryManager::release_ended`] gave back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Released {
    pub reservations: usize,
    pub bytes: usize,
}

/// Memory that outlived its reason: still held after its statement ended, or held longer than
/// the leak threshold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeakStats {
    pub consumer: ConsumerStats,
    /// The start of the statement's text.
    pub text: String,
    /// True when the statement has ended (the memory can no longer be in use by it).
    pub ended: bool,
}

impl MemoryManager {
    pub fn new(limits: PoolLimits) -> Arc<Self> {
        let manager = Arc::new(Self { budget: Arc::new(Budget::new(limits)), next_query: AtomicU64::new(1), queries: Mutex::new(vec![]) });
        let registry: Weak<MemoryManager> = Arc::downgrade(&manager);
        manager.budget.set_registry(registry);
        manager
    }

    // The registry of statements.

    /// The accounting of a new statement, held to its own `limits`. Keep the handle until its
    /// plan's streams are dropped.
    pub fn begin_query(&self, text: &str, limits: StatementLimits) -> Arc<QueryMemory> {
        let query = Arc::new(QueryMemory::new(Arc::clone(&self.budget), self.next_query.fetch_add(1, Ordering::Relaxed), text, limits));
        let mut queries = self.queries.lock().expect("the query list is never poisoned");
        queries.retain(|q| q.strong_count() > 0);
        queries.push(Arc::downgrade(&query));
        query
    }

    fn live_queries(&self) -> Vec<Arc<QueryMemory>> {
        self.queries.lock().expect("the query list is never poisoned").iter().filter_map(Weak::upgrade).collect()
    }

    /// Whether any statement's operators hold memory now: while none do, the cache may borrow
    /// the query pool's free space.
    pub fn queries_idle(&self) -> bool {
        self.live_queries().iter().all(|q| q.has_ended() || q.reserved_bytes() == 0)
    }

    /// Consumers holding bytes after their statement ended, or for longer than `threshold`,
    /// largest first. Memory released by the end of a statement (early LIMIT, errors, cancel)
    /// is gone before `end()` is called, so it is never reported.
    pub fn leaks(&self, threshold: Duration) -> Vec<LeakStats> {
        let mut leaks: Vec<LeakStats> = self
            .live_queries()
            .iter()
            .flat_map(|q| {
                let ended = q.has_ended();
                q.consumers().into_iter().filter(move |c| c.reserved > 0 && (ended || c.age >= threshold)).map(move |consumer| LeakStats {
                    consumer,
                    text: q.text().chars().take(60).collect(),
                    ended,
                })
            })
            .collect();
        leaks.sort_by_key(|leak| std::cmp::Reverse(leak.consumer.reserved));
        leaks
    }

    /// Gives back to the pool what statements that have ended still hold (a leak): the bytes are
    /// written off, so when the forgotten reservation is finally dropped nothing is released
    /// twice.
    pub fn release_ended(&self) -> Released {
        let mut released = Released::default();
        for query in self.live_queries().iter().filter(|q| q.has_ended()) {
            for (consumer, bytes) in query.write_off() {
                released.reservations += 1;
                released.bytes += bytes;
                self.record_event(
                    PoolKind::Query,
                    format!("cleanup: released {} held by {consumer} of ended query {}", ByteSize(bytes as u64), query.id()),
                    bytes as u64,
                );
            }
        }
        released
    }

    /// Every consumer of every live statement, and every reservation kept between statements,
    /// largest first.
    pub fn consumers(&self) -> Vec<ConsumerStats> {
        let mut all = self.statement_consumers();
        all.extend(self.budget.kept_consumers());
        largest_first(&mut all);
        all
    }

    // Answered by the budget.

    pub fn pool(&self, kind: PoolKind) -> &Pool {
        self.budget.pool(kind)
    }

    pub fn stats(&self) -> Vec<PoolStats> {
        self.budget.stats()
    }

    /// The three pools' limits together: the memory budget of the whole process.
    pub fn total_limit(&self) -> usize {
        self.budget.total_limit()
    }

    pub fn pressure(&self, kind: PoolKind) -> Pressure {
        self.budget.pressure(kind)
    }

    /// The pressure of all pools together (reserved over the sum of the limits), or the worst
    /// single pool's if that is higher.
    pub fn overall_pressure(&self) -> Pressure {
        self.budget.overall_pressure()
    }

    /// Waits until pool `kind`'s pressure is below `level`, at most `timeout`; whether it is.
    /// Woken by the pool's releases (and a larger limit), never polls: admission waits here
    /// while the query pool is critical. Needs a Tokio runtime with its timer.
    pub async fn wait_for_pressure_below(&self, kind: PoolKind, level: Pressure, timeout: Duration) -> bool {
        self.pool(kind).wait_for_pressure_below(level, timeout).await
    }

    /// Holds `bytes` of pool `kind` for `what` (e.g. `let big`) until the reservation drops.
    pub fn reserve(&self, kind: PoolKind, bytes: usize, what: &str) -> std::result::Result<Reservation, PoolFull> {
        Reservation::new(&self.budget, kind, bytes, what)
    }

    /// A reservation of pool `kind` for `what`, holding nothing yet, to grow and shrink.
    pub fn empty_reservation(&self, kind: PoolKind, what: &str) -> Reservation {
        Reservation::empty(&self.budget, kind, what)
    }

    /// Registers a holder of evictable memory; it is forgotten once dropped.
    pub fn register_reclaimer(&self, reclaimer: Weak<dyn Reclaim>) {
        self.budget.register_reclaimer(reclaimer);
    }

    /// Asks the holders of evictable memory in pool `kind` to free `bytes`; returns what they
    /// freed.
    pub fn reclaim(&self, kind: PoolKind, bytes: usize) -> usize {
        self.budget.reclaim(kind, bytes)
    }

    /// What the reclaimers could free in pool `kind`.
    pub fn reclaimable(&self, kind: PoolKind) -> usize {
        self.budget.reclaimable(kind)
    }

    pub fn record_event(&self, pool: PoolKind, action: impl Into<String>, bytes_freed: u64) {
        self.budget.record_event(pool, action, bytes_freed);
    }

    /// The events recorded since the last call.
    pub fn take_events(&self) -> Vec<MemoryEvent> {
        self.budget.take_events()
    }

    /// The fraction of reservation requests refused on purpose (`memory.fault_probability`).
    pub fn fault_probability(&self) -> f64 {
        self.budget.fault_probability()
    }

    /// How many tasks wait for the query pool to give room back: new statements (admission),
    /// and scans short of room other statements hold.
    pub fn admission_waiters(&self) -> usize {
        self.pool(PoolKind::Query).waiting()
    }

    /// Makes that fraction (0 to 1) of later reservation requests fail, as if the pool were full.
    pub fn set_fault_probability(&self, probability: f64) {
        self.budget.set_fault_probability(probability);
    }

    pub fn set_leak_threshold(&self, threshold: Duration) {
        self.budget.set_leak_threshold(threshold);
    }

    pub fn leak_threshold(&self) -> Duration {
        self.budget.leak_threshold()
    }
}

impl Registry for MemoryManager {
    fn statement_consumers(&self) -> Vec<ConsumerStats> {
        self.live_queries().iter().flat_map(|q| q.consumers()).collect()
    }
}

#[cfg(test)]
mod tests {
    use datafusion_execution::memory_pool::{MemoryConsumer, MemoryPool};

    use super::*;
    use crate::query::{Margin, DEFAULT_ACTUAL_MARGIN};
    use crate::wait::once_waiting;

    /// A manager whose cache pool has nothing to lend, so the query pool's limit is the limit.
    fn manager(query: u64) -> Arc<MemoryManager> {
        MemoryManager::new(PoolLimits { query: ByteSize(query), cache: ByteSize(0), ..PoolLimits::default() })
    }

    #[test]
    fn a_statement_charges_the_query_pool_and_names_its_consumers() {
        let manager = manager(1000);
        let query: Arc<dyn MemoryPool> = manager.begin_query("SELECT 1", StatementLimits::default());
        let sort = MemoryConsumer::new("ExternalSorter[0]").with_can_spill(true).register(&query);
        let join = MemoryConsumer::new("HashJoinInput").register(&query);
        sort.try_grow(600).unwrap();
        join.try_grow(300).unwrap();
        assert_eq!(manager.pool(PoolKind::Query).reserved(), 900);
        let error = join.try_grow(200).unwrap_err().to_string();
        for part in [
            "the query pool is full",
            "HashJoinInput (query 1) asked for 200B",
            "ExternalSorter[0] of query 1 (can spill) holds 600B",
            "SET memory.query_pool = '1MiB'",
        ] {
            assert!(error.contains(part), "{part} in {error}");
        }
        let consumers = manager.consumers();
        assert_eq!(consumers.iter().map(|c| (c.name.as_str(), c.reserved)).collect::<Vec<_>>(), [("ExternalSorter[0]", 600), ("HashJoinInput", 300)]);
        drop(sort);
        drop(join);
        assert_eq!(manager.pool(PoolKind::Query).reserved(), 0);
        assert_eq!(query.reserved(), 0);
        assert!(manager.consumers().is_empty());
    }

    #[test]
    fn memory_held_after_its_statement_ended_is_a_leak_and_nothing_else_is() {
        let manager = manager(1 << 20);
        let finished: Arc<dyn MemoryPool> = manager.begin_query("SELECT * FROM t LIMIT 1", StatementLimits::default());
        let released = MemoryConsumer::new("ExternalSorter[0]").register(&finished);
        released.try_grow(1000).unwrap();
        drop(released);
        manager.live_queries()[0].end();
        assert!(manager.leaks(Duration::from_secs(300)).is_empty(), "released before the end: no leak");

        let leaky: Arc<dyn MemoryPool> = manager.begin_query("SELECT leaky", StatementLimits::default());
        let kept = MemoryConsumer::new("HashJoinInput").register(&leaky);
        kept.try_grow(4096).unwrap();
        assert!(manager.leaks(Duration::from_secs(300)).is_empty(), "a running statement is not leaking");
        assert_eq!(manager.leaks(Duration::ZERO).len(), 1, "past the threshold it is reported");
        manager.live_queries().iter().find(|q| q.text() == "SELECT leaky").unwrap().end();
        let leaks = manager.leaks(Duration::from_secs(300));
        assert_eq!(leaks.len(), 1);
        assert_eq!(
            (leaks[0].consumer.name.as_str(), leaks[0].consumer.reserved, leaks[0].text.as_str(), leaks[0].ended),
            ("HashJoinInput", 4096, "SELECT leaky", true)
        );
        let released = manager.release_ended();
        assert_eq!((released.reservations, released.bytes), (1, PoolKind::Query.block()), "the whole block the pool held for it");
        assert_eq!(manager.pool(PoolKind::Query).reserved(), 0);
        kept.try_grow(PoolKind::Query.block()).unwrap();
        drop(kept);
        assert_eq!(manager.pool(PoolKind::Query).reserved(), 0, "what was written off is not released twice");
        assert!(manager.leaks(Duration::ZERO).is_empty());
    }

    #[test]
    fn a_refusal_names_the_largest_holders_of_every_statement() {
        let manager = manager(64 << 10);
        let first: Arc<dyn MemoryPool> = manager.begin_query("SELECT big", StatementLimits::default());
        let second: Arc<dyn MemoryPool> = manager.begin_query("SELECT small", StatementLimits::default());
        let big = MemoryConsumer::new("HashJoinInput").register(&first);
        big.try_grow(48 << 10).unwrap();
        let small = MemoryConsumer::new("ExternalSorter[0]").register(&second);
        let error = small.try_grow(20 << 10).unwrap_err().to_string();
        assert!(error.contains("Largest holders: HashJoinInput of query 1 (cannot spill) holds 48KiB"), "{error}");
        let _kept = manager.reserve(PoolKind::Temp, 1 << 20, "let a").unwrap();
        assert_eq!(
            manager.consumers().iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["let a", "HashJoinInput", "ExternalSorter[0]"],
            "statements' consumers and kept reservations, largest first"
        );
    }

    #[test]
    fn each_statement_keeps_its_own_limits() {
        let manager = manager(1 << 20);
        let strict = manager.begin_query("SELECT strict", StatementLimits { limit: Some(1000), actual_margin: Margin::Fraction(0.5) });
        let open = manager.begin_query("SELECT open", StatementLimits::default());
        assert_eq!((strict.limit(), strict.actual_margin()), (1000, Margin::Fraction(0.5)));
        assert_eq!((open.limit(), open.actual_margin(), open.id()), (1 << 20, DEFAULT_ACTUAL_MARGIN, strict.id() + 1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn admission_waits_for_a_release_without_polling() {
        let manager = manager(1 << 20);
        let held = manager.reserve(PoolKind::Query, 1000 << 10, "a running query's hash table").unwrap();
        assert_eq!(manager.pressure(PoolKind::Query), Pressure::Critical);
        let waiter = {
            let manager = Arc::clone(&manager);
            tokio::spawn(async move { manager.wait_for_pressure_below(PoolKind::Query, Pressure::Critical, Duration::from_secs(60)).await })
        };
        let releaser = once_waiting(&manager, |manager| manager.pool(PoolKind::Query).waiting(), move |_| drop(held));
        assert!(waiter.await.unwrap(), "woken by the reservation's release");
        releaser.join().unwrap();
        assert_eq!(manager.pressure(PoolKind::Query), Pressure::Normal);
    }

    #[tokio::test]
    async fn admission_gives_up_after_its_timeout() {
        let manager = manager(1 << 20);
        let _held = manager.reserve(PoolKind::Query, 1000 << 10, "a running query's hash table").unwrap();
        assert!(!manager.wait_for_pressure_below(PoolKind::Query, Pressure::Critical, Duration::from_millis(20)).await);
    }
}

#[cfg(test)]
mod concurrency {
    use std::sync::atomic::AtomicBool;

    use datafusion_execution::memory_pool::{MemoryConsumer, MemoryPool, MemoryReservation};
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// Threads grow, shrink and release random amounts in every pool at once: reserved never
        /// passes a limit, per-statement counters add up to the query pool, and all end at 0.
        #[test]
        fn reserved_never_passes_the_limit_and_ends_at_zero(threads in 2usize..8, seed in any::<u64>(), limit in 1_000usize..100_000) {
            let manager = MemoryManager::new(PoolLimits { query: ByteSize(limit as u64), cache: ByteSize(limit as u64), temp: ByteSize(limit as u64) });
            let stop = Arc::new(AtomicBool::new(false));
            let watcher = {
                let (manager, stop) = (Arc::clone(&manager), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut worst = 0usize;
                    while !stop.load(Ordering::Relaxed) {
                        for kind in PoolKind::ALL {
                            worst = worst.max(manager.pool(kind).reserved().saturating_sub(manager.pool(kind).limit()));
                        }
                    }
                    worst
                })
            };
            let workers: Vec<_> = (0..threads as u64)
                .map(|t| {
                    let manager = Arc::clone(&manager);
                    std::thread::spawn(move || {
                        let mut state = seed ^ (t + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                        let mut next = move |n: usize| {
                            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                            (state >> 33) as usize % n.max(1)
                        };
                        let query: Arc<dyn MemoryPool> = manager.begin_query("fuzz", StatementLimits::default());
                        let reservations: Vec<MemoryReservation> =
                            (0..3).map(|i| MemoryConsumer::new(format!("c{t}.{i}")).with_can_spill(i % 2 == 0).register(&query)).collect();
                        for _ in 0..2_000 {
                            let r = &reservations[next(3)];
                            match next(4) {
                                0 | 1 => { let _ = r.try_grow(next(limit / 4)); }
                                2 => r.shrink(next(r.size() + 1).min(r.size())),
                                _ => { r.free(); }
                            };
                            let (cache, temp) = (manager.pool(PoolKind::Cache), manager.pool(PoolKind::Temp));
                            let bytes = next(limit / 8);
                            if cache.try_reserve(bytes).is_ok() { cache.release(bytes); }
                            if temp.try_reserve(bytes).is_ok() { temp.release(bytes); }
                        }
                        let held: usize = reservations.iter().map(MemoryReservation::size).sum();
                        let spare = query.reserved() - held;
                        assert!(spare < 3 * 2 * PoolKind::Query.block(), "the statement holds its reservations and less than two spare blocks per consumer, not {spare} bytes more");
                    })
                })
                .collect();
            for worker in workers {
                worker.join().unwrap();
            }
            stop.store(true, Ordering::Relaxed);
            prop_assert_eq!(watcher.join().unwrap(), 0, "no pool was ever seen above its limit");
            for kind in PoolKind::ALL {
                prop_assert_eq!(manager.pool(kind).reserved(), 0, "{} pool back to 0", kind);
            }
            prop_assert!(manager.consumers().is_empty());
        }
    }
}
