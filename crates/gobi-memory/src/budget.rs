//! The budget: what the manager and every statement's accounting share. The three pools, and
//! the rules by which they are divided: fair shares of spillable operators, elastic borrowing
//! between the query and cache pools, holders of evictable memory, faults on purpose; with the
//! events that say what was done, the reservations kept between statements, and the engine-wide
//! settings.
//!
//! ```text
//!                 MemoryManager (registry of statements)      QueryMemory (one statement)
//!                          │ Arc                                   │ Arc
//!                          └──────────────────┬────────────────────┘
//!                                             ▼
//!                                           Budget
//!         ┌───────────────┬────────────┬────────────┐
//!         │ query pool    │ cache pool │ temp pool  │   limits from gobi.toml / flags / SET
//!         └───────────────┴────────────┴────────────┘
//!         fair share      spillable consumers, unspillable bytes ──► spill_share()
//!         borrowing       query short? reclaim what the cache borrowed of the query pool,
//!                         then borrow the cache pool's room, evicting through Reclaim
//!         reclaimers      holders of evictable memory (the result cache)
//!         kept            reservations held between statements (cache, temp), by name
//!         events          what was done about pressure, leaks and cleanup, until taken
//!         settings        memory.fault_probability, memory.leak_threshold
//! ```
//!
//! The budget knows no statement: it is below them. To name the largest holders in an
//! out-of-memory message it asks the [`Registry`] of statements (the manager), which registers
//! itself when it is made.
//!
//! Elastic borrowing: the query and cache pools lend each other room. A query short of memory
//! takes back what cached results borrowed from the query pool, then borrows the cache pool's
//! room (evicting cached results through a [`Reclaim`]er); each pool stays within its limit,
//! and a statement's releases return what it borrowed first.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::byte_size::ByteSize;
use crate::pool::{raise_peak, Pool, PoolKind, PoolStats, Pressure};

pub type QueryId = u64;

/// Memory held longer than this is reported as a leak unless `memory.leak_threshold` says
/// otherwise.
pub const DEFAULT_LEAK_THRESHOLD: Duration = Duration::from_secs(300);

/// The configured limit of each pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolLimits {
    /// Execution memory of running queries: hash tables, sort buffers, aggregation state.
    pub query: ByteSize,
    /// What gobi keeps for reuse between queries: results, Parquet metadata, function memos.
    pub cache: ByteSize,
    /// Session-scoped values: `let` tables and other intermediate results.
    pub temp: ByteSize,
}

impl Default for PoolLimits {
    fn default() -> Self {
        Self { query: ByteSize::mib(50), cache: ByteSize::mib(100), temp: ByteSize::mib(25) }
    }
}

/// Something holding memory it can drop on demand (cached entries), in the cache pool or
/// borrowed from the query pool.
pub trait Reclaim: Send + Sync + fmt::Debug {
    /// Drops entries (least recently used first) held in pool `kind` until at least `bytes`
    /// are freed or none are left; returns the bytes freed.
    fn reclaim(&self, kind: PoolKind, bytes: usize) -> usize;
    /// What could be freed in pool `kind`.
    fn reclaimable(&self, kind: PoolKind) -> usize;
}

/// One response to memory pressure (or a leak, or a cleanup), as `gobi memory pressure
/// --history` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryEvent {
    pub at: SystemTime,
    pub pool: PoolKind,
    /// The pool's pressure when it happened.
    pub level: Pressure,
    pub action: String,
    pub bytes_freed: u64,
}

/// One consumer as `gobi memory stats` lists it: an operator of a running statement, or
/// something gobi keeps between statements (a cached result, a table's metadata, a `let`
/// value, a function memo), which belongs to no statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerStats {
    pub pool: PoolKind,
    pub query: Option<QueryId>,
    pub name: String,
    pub can_spill: bool,
    pub reserved: usize,
    pub peak: usize,
    pub age: Duration,
}

/// Sorts consumers as they are listed: largest first, then by statement.
pub(crate) fn largest_first(consumers: &mut [ConsumerStats]) {
    consumers.sort_by(|a, b| b.reserved.cmp(&a.reserved).then(a.query.cmp(&b.query)));
}

/// The registry of statements, as the budget sees it: their consumers, to name the largest
/// holders when a request is refused. The manager is one, and registers itself.
pub(crate) trait Registry: Send + Sync + fmt::Debug {
    fn statement_consumers(&self) -> Vec<ConsumerStats>;
}

#[derive(Debug)]
pub(crate) struct Budget {
    pools: [Pool; 3],
    /// Registered consumers that can spill, over all statements: they share what the
    /// unspillable ones leave of the query pool.
    spillable: AtomicUsize,
    /// What statements' consumers hold, by whether they can spill.
    spillable_reserved: AtomicUsize,
    unspillable_reserved: AtomicUsize,
    /// What refused requests that cannot spill wait for: the shares leave it out, so the next
    /// growth of a spillable consumer holding it spills and gives it back.
    wanted: AtomicUsize,
    /// `memory.fault_probability` as f64 bits: the fraction of reservation requests refused
    /// on purpose, so tests drive every out-of-memory path with real queries.
    fault_probability: AtomicU64,
    /// `memory.leak_threshold` in milliseconds: held longer than this counts as a leak.
    leak_threshold_ms: AtomicU64,
    /// What was done about pressure, leaks and cleanup, oldest first, until taken.
    events: Mutex<Vec<MemoryEvent>>,
    /// Holders of evictable memory (the result cache), asked to give some back.
    reclaimers: RwLock<Vec<Weak<dyn Reclaim>>>,
    /// What each live reservation kept between statements holds, for the consumer listing.
    kept: Mutex<Vec<Weak<Kept>>>,
    /// Who lists the statements' consumers (set once, by the manager).
    registry: OnceLock<Weak<dyn Registry>>,
}

/// A reservation kept between statements, as `gobi_memory_consumers()` lists it: its pool's
/// bytes, by name.
#[derive(Debug)]
pub(crate) struct Kept {
    pool: PoolKind,
    name: String,
    since: Instant,
    /// What the pool holds for it.
    bytes: AtomicUsize,
    peak: AtomicUsize,
}

impl Kept {
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// What the listing shows: the bytes the pool holds for it now.
    pub(crate) fn show(&self, granted: usize) {
        self.bytes.store(granted, Ordering::Relaxed);
        raise_peak(&self.peak, granted);
    }

    fn stats(&self) -> ConsumerStats {
        ConsumerStats {
            pool: self.pool,
            query: None,
            name: self.name.clone(),
            can_spill: false,
            reserved: self.bytes.load(Ordering::Relaxed),
            peak: self.peak.load(Ordering::Relaxed),
            age: self.since.elapsed(),
        }
    }
}

/// What one statement borrowed from the cache pool (part of what the pools hold for it):
/// [`Budget::give_back`] returns these bytes first.
#[derive(Debug, Default)]
pub(crate) struct Loan(AtomicUsize);

impl Loan {
    pub(crate) fn bytes(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

impl Budget {
    pub(crate) fn new(limits: PoolLimits) -> Self {
        let bytes = |size: ByteSize| usize::try_from(size.0).unwrap_or(usize::MAX);
        Self {
            pools: [
                Pool::new(PoolKind::Query, bytes(limits.query)),
                Pool::new(PoolKind::Cache, bytes(limits.cache)),
                Pool::new(PoolKind::Temp, bytes(limits.temp)),
            ],
            spillable: AtomicUsize::new(0),
            spillable_reserved: AtomicUsize::new(0),
            unspillable_reserved: AtomicUsize::new(0),
            wanted: AtomicUsize::new(0),
            fault_probability: AtomicU64::new(0f64.to_bits()),
            leak_threshold_ms: AtomicU64::new(DEFAULT_LEAK_THRESHOLD.as_millis() as u64),
            events: Mutex::new(vec![]),
            reclaimers: RwLock::new(vec![]),
            kept: Mutex::new(vec![]),
            registry: OnceLock::new(),
        }
    }

    pub(crate) fn pool(&self, kind: PoolKind) -> &Pool {
        &self.pools[kind as usize]
    }

    pub(crate) fn stats(&self) -> Vec<PoolStats> {
        self.pools.iter().map(Pool::stats).collect()
    }

    /// The three pools' limits together: the memory budget of the whole process.
    pub(crate) fn total_limit(&self) -> usize {
        self.pools.iter().map(Pool::limit).fold(0, usize::saturating_add)
    }

    pub(crate) fn pressure(&self, kind: PoolKind) -> Pressure {
        self.pool(kind).pressure()
    }

    /// The pressure of all pools together (reserved over the sum of the limits), or the worst
    /// single pool's if that is higher.
    pub(crate) fn overall_pressure(&self) -> Pressure {
        let (reserved, limit) = self.pools.iter().fold((0, 0), |(r, l), p| (r + p.reserved(), l + p.limit()));
        PoolKind::ALL.iter().map(|&kind| self.pressure(kind)).max().unwrap_or(Pressure::Normal).max(Pressure::of(reserved, limit))
    }

    // Fair share.

    /// What one spillable consumer may hold: an equal share of what the unspillable ones
    /// leave. A consumer past its share spills itself, so one partition's hash table cannot take
    /// the whole pool and leave its siblings nothing (DataFusion only lets the requester spill).
    pub(crate) fn spill_share(&self) -> usize {
        let unspillable = self.unspillable_reserved.load(Ordering::Acquire) + self.wanted.load(Ordering::Acquire);
        self.elastic_limit().saturating_sub(unspillable) / self.spillable.load(Ordering::Acquire).max(1)
    }

    /// What spillable consumers hold: room they give back when they spill. (Not the query
    /// pool less the unspillable: the pool also holds what no statement's consumer does, such
    /// as the cache's borrowed room.)
    pub(crate) fn spillable_held(&self) -> usize {
        self.spillable_reserved.load(Ordering::Acquire)
    }

    /// Runs `wait` with `bytes` left out of the spillable consumers' shares.
    pub(crate) fn wanting<T>(&self, bytes: usize, wait: impl FnOnce() -> T) -> T {
        self.wanted.fetch_add(bytes, Ordering::AcqRel);
        let result = wait();
        self.wanted.fetch_sub(bytes, Ordering::AcqRel);
        result
    }

    /// What queries can hold at most: the query pool plus the cache pool they can borrow from.
    /// An upper bound (cache bytes no one can evict, such as memos, are counted as lendable):
    /// it sets the fair share on every growth, so it reads two atomics and takes no lock; a
    /// share the pools cannot give is refused by the pools, and the operator spills.
    pub(crate) fn elastic_limit(&self) -> usize {
        self.pool(PoolKind::Query).limit() + self.pool(PoolKind::Cache).limit()
    }

    /// A consumer that can spill was registered: one more to share with.
    pub(crate) fn spillable_registered(&self) {
        self.spillable.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn spillable_unregistered(&self) {
        self.spillable.fetch_sub(1, Ordering::AcqRel);
    }

    /// Bytes granted to a statement's consumer, which can spill or not.
    pub(crate) fn consumer_granted(&self, can_spill: bool, bytes: usize) {
        self.held_by(can_spill).fetch_add(bytes, Ordering::AcqRel);
    }

    /// Bytes a statement's consumer gave back.
    pub(crate) fn consumer_released(&self, can_spill: bool, bytes: usize) {
        self.held_by(can_spill).fetch_sub(bytes, Ordering::AcqRel);
    }

    fn held_by(&self, can_spill: bool) -> &AtomicUsize {
        if can_spill {
            &self.spillable_reserved
        } else {
            &self.unspillable_reserved
        }
    }

    // Elastic borrowing.

    /// Before a statement's request of `bytes` is refused: first the cache gives back what it
    /// borrowed from the query pool; then the statement borrows the cache pool's free space,
    /// evicting cached entries to make room (counted in its `loan`). True when `bytes` were
    /// reserved. `consumer` and `query` name the requester in the events.
    pub(crate) fn borrow(&self, bytes: usize, loan: &Loan, consumer: &str, query: QueryId) -> bool {
        let query_pool = self.pool(PoolKind::Query);
        if self.reclaimable(PoolKind::Query) > 0 {
            let freed = self.reclaim(PoolKind::Query, bytes);
            if freed > 0 {
                self.record_event(
                    PoolKind::Query,
                    format!("evicted {} of cache entries borrowed from the query pool for {consumer} of query {query}", ByteSize(freed as u64)),
                    freed as u64,
                );
            }
            if query_pool.try_reserve(bytes).is_ok() {
                return true;
            }
        }
        let cache_pool = self.pool(PoolKind::Cache);
        if cache_pool.try_reserve(bytes).is_err() {
            let freed = self.reclaim(PoolKind::Cache, bytes);
            if freed == 0 || cache_pool.try_reserve(bytes).is_err() {
                return false;
            }
            self.record_event(
                PoolKind::Cache,
                format!("evicted {} of cache entries so {consumer} of query {query} could borrow it", ByteSize(freed as u64)),
                freed as u64,
            );
        }
        loan.0.fetch_add(bytes, Ordering::AcqRel);
        true
    }

    /// Gives `bytes` a statement held back to the pools: what it borrowed from the cache pool
    /// first, the rest to the query pool.
    pub(crate) fn give_back(&self, bytes: usize, loan: &Loan) {
        let from_cache = take_up_to(&loan.0, bytes);
        self.pool(PoolKind::Cache).release(from_cache);
        self.pool(PoolKind::Query).release(bytes - from_cache);
    }

    // Reclaimers.

    /// Registers a holder of evictable memory; it is forgotten once dropped.
    pub(crate) fn register_reclaimer(&self, reclaimer: Weak<dyn Reclaim>) {
        self.reclaimers.write().expect("the reclaimer list is never poisoned").push(reclaimer);
    }

    fn reclaimers(&self) -> Vec<Arc<dyn Reclaim>> {
        self.reclaimers.read().expect("the reclaimer list is never poisoned").iter().filter_map(Weak::upgrade).collect()
    }

    /// Asks the holders of evictable memory in pool `kind` to free `bytes`; returns what they
    /// freed.
    pub(crate) fn reclaim(&self, kind: PoolKind, bytes: usize) -> usize {
        let mut freed = 0;
        for reclaimer in self.reclaimers() {
            if freed >= bytes {
                break;
            }
            freed += reclaimer.reclaim(kind, bytes - freed);
        }
        freed
    }

    /// What the reclaimers could free in pool `kind` (asked before borrowing; takes no
    /// allocation).
    pub(crate) fn reclaimable(&self, kind: PoolKind) -> usize {
        let reclaimers = self.reclaimers.read().expect("the reclaimer list is never poisoned");
        reclaimers.iter().filter_map(Weak::upgrade).map(|r| r.reclaimable(kind)).sum()
    }

    // Faults and settings.

    /// Makes that fraction (0 to 1) of later reservation requests fail, as if the pool were full.
    pub(crate) fn fault_probability(&self) -> f64 {
        f64::from_bits(self.fault_probability.load(Ordering::Relaxed))
    }

    pub(crate) fn set_fault_probability(&self, probability: f64) {
        self.fault_probability.store(probability.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
    }

    /// Whether this request is one of those refused on purpose.
    pub(crate) fn inject_fault(&self) -> Option<f64> {
        let probability = self.fault_probability();
        (probability > 0.0 && fault_dice() < probability).then_some(probability)
    }

    pub(crate) fn set_leak_threshold(&self, threshold: Duration) {
        self.leak_threshold_ms.store(threshold.as_millis() as u64, Ordering::Relaxed);
    }

    pub(crate) fn leak_threshold(&self) -> Duration {
        Duration::from_millis(self.leak_threshold_ms.load(Ordering::Relaxed))
    }

    // Events.

    pub(crate) fn record_event(&self, pool: PoolKind, action: impl Into<String>, bytes_freed: u64) {
        let event = MemoryEvent { at: SystemTime::now(), pool, level: self.pressure(pool), action: action.into(), bytes_freed };
        self.events.lock().expect("the event list is never poisoned").push(event);
    }

    /// The events recorded since the last call.
    pub(crate) fn take_events(&self) -> Vec<MemoryEvent> {
        std::mem::take(&mut *self.events.lock().expect("the event list is never poisoned"))
    }

    // Who holds what.

    /// A new entry of the listing of reservations kept between statements, holding nothing
    /// yet; listed while the returned handle lives.
    pub(crate) fn keep(&self, pool: PoolKind, what: &str) -> Arc<Kept> {
        let kept = Arc::new(Kept { pool, name: what.to_string(), since: Instant::now(), bytes: AtomicUsize::new(0), peak: AtomicUsize::new(0) });
        let mut all = self.kept.lock().expect("the kept list is never poisoned");
        all.retain(|k| k.strong_count() > 0);
        all.push(Arc::downgrade(&kept));
        kept
    }

    /// Every reservation kept between statements (belonging to none), unsorted.
    pub(crate) fn kept_consumers(&self) -> Vec<ConsumerStats> {
        self.kept.lock().expect("the kept list is never poisoned").iter().filter_map(Weak::upgrade).map(|k| k.stats()).collect()
    }

    /// Sets who lists the statements' consumers; only the first call counts.
    pub(crate) fn set_registry(&self, registry: Weak<dyn Registry>) {
        let _ = self.registry.set(registry);
    }

    /// Every consumer of every live statement, largest first (none without a registry).
    pub(crate) fn statement_consumers(&self) -> Vec<ConsumerStats> {
        let mut consumers = self.registry.get().and_then(Weak::upgrade).map(|r| r.statement_consumers()).unwrap_or_default();
        largest_first(&mut consumers);
        consumers
    }
}

/// Takes up to `most` from `counter`; returns what was taken.
fn take_up_to(counter: &AtomicUsize, most: usize) -> usize {
    // Almost always 0: a plain load keeps the shared line unwritten.
    if counter.load(Ordering::Acquire) == 0 {
        return 0;
    }
    counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| Some(held - held.min(most))).map_or(0, |held| held.min(most))
}

/// A number in [0, 1) from a per-thread xorshift generator: cheap, and good enough to pick
/// which requests fail.
fn fault_dice() -> f64 {
    use std::cell::Cell;
    static SEEDS: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    thread_local! {
        static STATE: Cell<u64> = Cell::new(SEEDS.fetch_add(0x2545_F491_4F6C_DD1D, Ordering::Relaxed) | 1);
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache holding `bytes` in each of the query and cache pools, evicting on demand.
    #[derive(Debug)]
    struct Cache {
        budget: Arc<Budget>,
        held: Mutex<[usize; 2]>,
    }

    impl Cache {
        fn holding(budget: &Arc<Budget>, in_query: usize, in_cache: usize) -> Arc<Self> {
            budget.pool(PoolKind::Query).try_reserve(in_query).unwrap();
            budget.pool(PoolKind::Cache).try_reserve(in_cache).unwrap();
            let cache = Arc::new(Self { budget: Arc::clone(budget), held: Mutex::new([in_query, in_cache]) });
            let weak: Weak<Cache> = Arc::downgrade(&cache);
            budget.register_reclaimer(weak);
            cache
        }
    }

    impl Reclaim for Cache {
        fn reclaim(&self, kind: PoolKind, bytes: usize) -> usize {
            let held = &mut self.held.lock().unwrap()[kind as usize];
            let freed = bytes.min(*held);
            *held -= freed;
            self.budget.pool(kind).release(freed);
            freed
        }

        fn reclaimable(&self, kind: PoolKind) -> usize {
            self.held.lock().unwrap().get(kind as usize).copied().unwrap_or(0)
        }
    }

    fn budget(query: u64, cache: u64) -> Arc<Budget> {
        Arc::new(Budget::new(PoolLimits { query: ByteSize(query), cache: ByteSize(cache), ..PoolLimits::default() }))
    }

    #[test]
    fn a_statement_short_of_memory_takes_back_what_the_cache_borrowed_first() {
        let budget = budget(1000, 1000);
        let cache = Cache::holding(&budget, 600, 0);
        budget.pool(PoolKind::Query).try_reserve(400).unwrap();
        let loan = Loan::default();
        assert!(budget.borrow(300, &loan, "HashJoinInput", 7));
        assert_eq!(
            (cache.reclaimable(PoolKind::Query), budget.pool(PoolKind::Query).reserved(), loan.bytes()),
            (300, 1000, 0),
            "evicted just enough, nothing borrowed"
        );
        assert!(budget.take_events()[0].action.contains("evicted 300B of cache entries borrowed from the query pool for HashJoinInput of query 7"));
    }

    #[test]
    fn then_it_borrows_the_cache_pool_evicting_and_gives_it_back_first() {
        let budget = budget(1000, 1000);
        let cache = Cache::holding(&budget, 0, 900);
        budget.pool(PoolKind::Query).try_reserve(1000).unwrap();
        let loan = Loan::default();
        assert!(budget.borrow(50, &loan, "ExternalSorter[0]", 1), "the cache pool's free room");
        assert!(budget.take_events().is_empty(), "nothing evicted");
        assert!(budget.borrow(200, &loan, "ExternalSorter[0]", 1), "evicting cached entries");
        assert_eq!((cache.reclaimable(PoolKind::Cache), budget.pool(PoolKind::Cache).reserved(), loan.bytes()), (700, 950, 250));
        assert!(budget.take_events()[0].action.contains("so ExternalSorter[0] of query 1 could borrow it"));
        assert!(!budget.borrow(800, &loan, "ExternalSorter[0]", 1), "not even by evicting everything");
        assert_eq!((cache.reclaimable(PoolKind::Cache), budget.pool(PoolKind::Cache).reserved()), (0, 250), "the cache was evicted trying");

        budget.give_back(300, &loan);
        assert_eq!(
            (loan.bytes(), budget.pool(PoolKind::Cache).reserved(), budget.pool(PoolKind::Query).reserved()),
            (0, 0, 950),
            "borrowed bytes go back first"
        );
    }

    #[test]
    fn spillable_consumers_share_what_the_unspillable_leave() {
        let budget = budget(1000, 200);
        assert_eq!(budget.spill_share(), 1200, "query and cache pools, no one to share with");
        budget.spillable_registered();
        budget.spillable_registered();
        budget.consumer_granted(false, 400);
        budget.consumer_granted(true, 300);
        assert_eq!(budget.spill_share(), 400);
        assert_eq!(budget.spillable_held(), 300);
        budget.consumer_released(false, 400);
        budget.consumer_released(true, 300);
        budget.spillable_unregistered();
        assert_eq!(budget.spill_share(), 1200);
    }

    #[test]
    fn kept_reservations_are_listed_while_they_live() {
        let budget = budget(1000, 1000);
        let kept = budget.keep(PoolKind::Cache, "a cached result");
        kept.show(4096);
        kept.show(1024);
        let listed = budget.kept_consumers();
        assert_eq!((listed[0].name.as_str(), listed[0].reserved, listed[0].peak, listed[0].query), ("a cached result", 1024, 4096, None));
        drop(kept);
        assert!(budget.kept_consumers().is_empty());
    }
}
