//! The memory manager: the three pools, and the accounting of each running query inside the
//! query pool.
//!
//! ```text
//!                       MemoryManager
//!         ┌───────────────┬───────────┬──────────┐
//!         │ query pool    │ cache pool│ temp pool│   limits from gobi.toml / flags / SET
//!         └──────▲────────┴───────────┴──────────┘
//!                │ try_reserve / release (atomic)
//!   QueryMemory (one per statement; DataFusion's MemoryPool for that statement's plan)
//!     ├── consumer ExternalSorter[0]  reserved, peak, can spill, registered at
//!     ├── consumer GroupedHashAggregateStream[1] …
//!     └── query id, text, reserved, peak, optional per-query limit
//! ```
//!
//! DataFusion operators register a `MemoryConsumer` and grow a `MemoryReservation` before they
//! buffer; the reservation calls back into the statement's [`QueryMemory`] (`query.rs`), which
//! charges the shared query pool in whole blocks and records who holds what. When a reservation
//! cannot grow, spillable operators (sort, hash aggregation, repartition) write to disk and try
//! again; the others fail with one message naming the pool, the request, the limit, the
//! largest holders and the setting to raise.
//!
//! Not tracked here: memory operators do not reserve (decoding buffers, batches in flight,
//! kernel intermediates). The counting allocator (`allocator.rs`) sees those: each statement's
//! actual bytes beside its reserved ones.
//!
//! Elastic borrowing: the query and cache pools lend each other room. A query short of memory
//! takes back what cached results borrowed from the query pool, then borrows the cache pool's
//! room (evicting cached results through a [`Reclaim`]er); each pool stays within its limit.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use crate::pool::{raise_peak, surplus, Pool, PoolKind, PoolStats, Pressure};
use crate::query::QueryMemory;
use crate::{ByteSize, PoolLimits};

pub type QueryId = u64;

/// Memory held longer than this is reported as a leak unless `memory.leak_threshold` says
/// otherwise.
pub const DEFAULT_LEAK_THRESHOLD: Duration = Duration::from_secs(300);

/// A pool this full (in percent of its limit) is under `high` pressure.
pub const HIGH_PRESSURE_PERCENT: usize = 80;
/// A pool this full is under `critical` pressure.
pub const CRITICAL_PRESSURE_PERCENT: usize = 95;

#[derive(Debug)]
pub struct MemoryManager {
    pools: [Pool; 3],
    next_query: AtomicU64,
    /// Statements whose memory may still be held (their `QueryMemory` is alive).
    queries: Mutex<Vec<Weak<QueryMemory>>>,
    /// Registered consumers that can spill, over all statements: they share what the
    /// unspillable ones leave of the query pool.
    pub(crate) spillable: AtomicUsize,
    pub(crate) unspillable_reserved: AtomicUsize,
    /// `memory.fault_probability` as f64 bits: the fraction of reservation requests refused
    /// on purpose, so tests drive every out-of-memory path with real queries.
    fault_probability: AtomicU64,
    /// `memory.leak_threshold` in milliseconds: held longer than this counts as a leak.
    leak_threshold_ms: AtomicU64,
    /// `memory.actual_margin`: how far past its limit a query's allocator bytes may go before
    /// it is stopped.
    actual_margin: RwLock<Margin>,
    /// What the manager did about pressure, leaks and cleanup, oldest first, until taken.
    events: Mutex<Vec<MemoryEvent>>,
    /// Holders of evictable memory (the result cache), asked to give some back.
    reclaimers: RwLock<Vec<Weak<dyn Reclaim>>>,
    /// What each live [`Reservation`] holds, for the consumer listing.
    kept: Mutex<Vec<Weak<Kept>>>,
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
    pub at: std::time::SystemTime,
    pub pool: PoolKind,
    /// The pool's pressure when it happened.
    pub level: Pressure,
    pub action: String,
    pub bytes_freed: u64,
}

/// What [`MemoryManager::release_ended`] gave back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Released {
    pub reservations: usize,
    pub bytes: usize,
}

/// How far past its limit a query's allocator bytes may go: decoding buffers, batches in
/// flight and the query's result are memory no operator reserves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Margin {
    Bytes(usize),
    /// A part of the query's limit (0.5: half of it).
    Fraction(f64),
}

impl Margin {
    pub fn of(self, limit: usize) -> usize {
        match self {
            Margin::Bytes(bytes) => bytes,
            Margin::Fraction(fraction) => (limit as f64 * fraction) as usize,
        }
    }
}

impl fmt::Display for Margin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Margin::Bytes(bytes) => write!(f, "{}", ByteSize(*bytes as u64)),
            Margin::Fraction(fraction) => write!(f, "{:.0}%", fraction * 100.0),
        }
    }
}

/// The default margin: a fixed amount rather than a part of the limit, because a small pool's
/// query still decodes whole Parquet pages and holds its result.
pub const DEFAULT_ACTUAL_MARGIN: Margin = Margin::Bytes(64 << 20);

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

impl MemoryManager {
    pub fn new(limits: PoolLimits) -> Arc<Self> {
        let bytes = |size: ByteSize| usize::try_from(size.0).unwrap_or(usize::MAX);
        Arc::new(Self {
            pools: [
                Pool::new(PoolKind::Query, bytes(limits.query)),
                Pool::new(PoolKind::Cache, bytes(limits.cache)),
                Pool::new(PoolKind::Temp, bytes(limits.temp)),
            ],
            next_query: AtomicU64::new(1),
            queries: Mutex::new(vec![]),
            spillable: AtomicUsize::new(0),
            unspillable_reserved: AtomicUsize::new(0),
            fault_probability: AtomicU64::new(0f64.to_bits()),
            leak_threshold_ms: AtomicU64::new(DEFAULT_LEAK_THRESHOLD.as_millis() as u64),
            actual_margin: RwLock::new(DEFAULT_ACTUAL_MARGIN),
            events: Mutex::new(vec![]),
            reclaimers: RwLock::new(vec![]),
            kept: Mutex::new(vec![]),
        })
    }

    pub fn pool(&self, kind: PoolKind) -> &Pool {
        &self.pools[kind as usize]
    }

    pub fn stats(&self) -> Vec<PoolStats> {
        self.pools.iter().map(Pool::stats).collect()
    }

    /// The accounting of a new statement. Keep the handle until its plan's streams are dropped.
    pub fn begin_query(self: &Arc<Self>, text: &str, limits: StatementLimits) -> Arc<QueryMemory> {
        self.set_actual_margin(limits.actual_margin);
        let limit = limits.limit;
        let query = Arc::new(QueryMemory::new(Arc::clone(self), self.next_query.fetch_add(1, Ordering::Relaxed), text, limit));
        let mut queries = self.queries.lock().expect("the query list is never poisoned");
        queries.retain(|q| q.strong_count() > 0);
        queries.push(Arc::downgrade(&query));
        query
    }

    /// What one spillable consumer may hold: an equal share of what the unspillable ones
    /// leave. A consumer past its share spills itself, so one partition's hash table cannot take
    /// the whole pool and leave its siblings nothing (DataFusion only lets the requester spill).
    pub(crate) fn spill_share(&self) -> usize {
        let free = self.elastic_limit().saturating_sub(self.unspillable_reserved.load(Ordering::Acquire));
        free / self.spillable.load(Ordering::Acquire).max(1)
    }

    /// What queries can hold at most: the query pool plus the cache pool they can borrow from.
    /// An upper bound (cache bytes no one can evict, such as memos, are counted as lendable):
    /// it sets the fair share on every growth, so it reads two atomics and takes no lock; a
    /// share the pools cannot give is refused by the pools, and the operator spills.
    fn elastic_limit(&self) -> usize {
        self.pool(PoolKind::Query).limit() + self.pool(PoolKind::Cache).limit()
    }

    /// The three pools' limits together: the memory budget of the whole process.
    pub fn total_limit(&self) -> usize {
        self.pools.iter().map(Pool::limit).fold(0, usize::saturating_add)
    }

    /// Registers a holder of evictable memory; it is forgotten once dropped.
    pub fn register_reclaimer(&self, reclaimer: Weak<dyn Reclaim>) {
        self.reclaimers.write().expect("the reclaimer list is never poisoned").push(reclaimer);
    }

    fn reclaimers(&self) -> Vec<Arc<dyn Reclaim>> {
        self.reclaimers.read().expect("the reclaimer list is never poisoned").iter().filter_map(Weak::upgrade).collect()
    }

    /// Asks the holders of evictable memory in pool `kind` to free `bytes`; returns what they
    /// freed.
    pub fn reclaim(&self, kind: PoolKind, bytes: usize) -> usize {
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
    pub fn reclaimable(&self, kind: PoolKind) -> usize {
        let reclaimers = self.reclaimers.read().expect("the reclaimer list is never poisoned");
        reclaimers.iter().filter_map(Weak::upgrade).map(|r| r.reclaimable(kind)).sum()
    }

    /// Whether any statement's operators hold memory now: while none do, the cache may borrow
    /// the query pool's free space.
    pub fn queries_idle(&self) -> bool {
        self.live_queries().iter().all(|q| q.has_ended() || q.reserved_bytes() == 0)
    }

    fn live_queries(&self) -> Vec<Arc<QueryMemory>> {
        self.queries.lock().expect("the query list is never poisoned").iter().filter_map(Weak::upgrade).collect()
    }

    /// Makes that fraction (0 to 1) of later reservation requests fail, as if the pool were full.
    pub fn set_fault_probability(&self, probability: f64) {
        self.fault_probability.store(probability.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
    }

    /// Whether this request is one of those refused on purpose.
    pub(crate) fn inject_fault(&self) -> Option<f64> {
        let probability = f64::from_bits(self.fault_probability.load(Ordering::Relaxed));
        (probability > 0.0 && fault_dice() < probability).then_some(probability)
    }

    /// Holds `bytes` of pool `kind` for `what` (e.g. `let big`) until the reservation drops.
    pub fn reserve(self: &Arc<Self>, kind: PoolKind, bytes: usize, what: &str) -> std::result::Result<Reservation, PoolFull> {
        let mut reservation = self.empty_reservation(kind, what);
        reservation.try_grow(bytes)?;
        Ok(reservation)
    }

    /// A reservation of pool `kind` for `what`, holding nothing yet, to grow and shrink.
    pub fn empty_reservation(self: &Arc<Self>, kind: PoolKind, what: &str) -> Reservation {
        let kept = Arc::new(Kept { pool: kind, name: what.to_string(), since: Instant::now(), bytes: AtomicUsize::new(0), peak: AtomicUsize::new(0) });
        let mut all = self.kept.lock().expect("the kept list is never poisoned");
        all.retain(|k| k.strong_count() > 0);
        all.push(Arc::downgrade(&kept));
        Reservation { manager: Arc::clone(self), kind, bytes: 0, granted: 0, kept }
    }

    pub fn set_leak_threshold(&self, threshold: Duration) {
        self.leak_threshold_ms.store(threshold.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn set_actual_margin(&self, margin: Margin) {
        *self.actual_margin.write().expect("the margin is never poisoned") = margin;
    }

    pub fn actual_margin(&self) -> Margin {
        *self.actual_margin.read().expect("the margin is never poisoned")
    }

    pub fn leak_threshold(&self) -> Duration {
        Duration::from_millis(self.leak_threshold_ms.load(Ordering::Relaxed))
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
                q.consumers()
                    .into_iter()
                    .filter(move |c| c.reserved > 0 && (ended || c.age >= threshold))
                    .map(move |consumer| LeakStats { consumer, text: q.text().chars().take(60).collect(), ended })
            })
            .collect();
        leaks.sort_by(|a, b| b.consumer.reserved.cmp(&a.consumer.reserved));
        leaks
    }

    pub fn pressure(&self, kind: PoolKind) -> Pressure {
        self.pool(kind).pressure()
    }

    /// The pressure of all pools together (reserved over the sum of the limits), or the worst
    /// single pool's if that is higher.
    pub fn overall_pressure(&self) -> Pressure {
        let (reserved, limit) = self.pools.iter().fold((0, 0), |(r, l), p| (r + p.reserved(), l + p.limit()));
        PoolKind::ALL.iter().map(|&kind| self.pressure(kind)).max().unwrap_or(Pressure::Normal).max(Pressure::of(reserved, limit))
    }

    pub fn record_event(&self, pool: PoolKind, action: impl Into<String>, bytes_freed: u64) {
        let event = MemoryEvent { at: std::time::SystemTime::now(), pool, level: self.pressure(pool), action: action.into(), bytes_freed };
        self.events.lock().expect("the event list is never poisoned").push(event);
    }

    /// The events recorded since the last call.
    pub fn take_events(&self) -> Vec<MemoryEvent> {
        std::mem::take(&mut *self.events.lock().expect("the event list is never poisoned"))
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
                self.record_event(PoolKind::Query, format!("cleanup: released {} held by {consumer} of ended query {}", ByteSize(bytes as u64), query.id()), bytes as u64);
            }
        }
        released
    }

    /// Every consumer of every live statement, and every reservation kept between statements,
    /// largest first.
    pub fn consumers(&self) -> Vec<ConsumerStats> {
        let mut all: Vec<ConsumerStats> = self.live_queries().iter().flat_map(|q| q.consumers()).collect();
        let kept = self.kept.lock().expect("the kept list is never poisoned");
        all.extend(kept.iter().filter_map(Weak::upgrade).map(|k| ConsumerStats {
            pool: k.pool,
            query: None,
            name: k.name.clone(),
            can_spill: false,
            reserved: k.bytes.load(Ordering::Relaxed),
            peak: k.peak.load(Ordering::Relaxed),
            age: k.since.elapsed(),
        }));
        all.sort_by(|a, b| b.reserved.cmp(&a.reserved).then(a.query.cmp(&b.query)));
        all
    }
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

/// A request that did not fit its pool, with the message users see.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct PoolFull(pub String);

/// Bytes held from one pool (a `let` table, a cached result, a table's metadata, a function
/// memo) until dropped. The pool holds whole blocks ([`PoolKind::block`]): a reservation that
/// grows a little at a time goes to the pool once per block.
#[derive(Debug)]
pub struct Reservation {
    manager: Arc<MemoryManager>,
    kind: PoolKind,
    /// What the owner asked for.
    bytes: usize,
    /// What the pool holds for it: `bytes` rounded up to blocks, plus at most one spare block.
    granted: usize,
    /// What the consumer listing shows of it.
    kept: Arc<Kept>,
}

/// A reservation as `gobi_memory_consumers()` lists it: its pool's bytes, by name.
#[derive(Debug)]
struct Kept {
    pool: PoolKind,
    name: String,
    since: Instant,
    /// What the pool holds for it.
    bytes: AtomicUsize,
    peak: AtomicUsize,
}

impl Reservation {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn pool(&self) -> PoolKind {
        self.kind
    }

    /// Grows by `bytes`, reserving whole blocks when the ones held are short (or just the
    /// bytes short, when the pool has less than a block left).
    pub fn try_grow(&mut self, bytes: usize) -> std::result::Result<(), PoolFull> {
        let short = (self.bytes + bytes).saturating_sub(self.granted);
        if short > 0 {
            let (manager, kind, what) = (&self.manager, self.kind, &self.kept.name);
            if let Some(probability) = manager.inject_fault() {
                return Err(PoolFull(format!("injected fault (memory.fault_probability = {probability}): {what} was refused {}", ByteSize(bytes as u64))));
            }
            let pool = manager.pool(kind);
            let granted = pool.try_reserve_between(short, short.next_multiple_of(kind.block())).map_err(|available| {
                let limit = pool.limit();
                let needed = (limit + short - available).div_ceil(1 << 20);
                PoolFull(format!(
                    "the {kind} pool is full: {what} needs {} with {} of the {} limit reserved. Raise the limit: SET memory.{kind}_pool = '{needed}MiB'",
                    ByteSize(bytes as u64),
                    ByteSize((limit - available) as u64),
                    ByteSize(limit as u64),
                ))
            })?;
            self.granted += granted;
        }
        self.bytes += bytes;
        self.show();
        Ok(())
    }

    /// Shrinks by `bytes`, giving spare blocks back (all of them once nothing is held).
    pub fn shrink(&mut self, bytes: usize) {
        self.bytes -= bytes;
        let spare = if self.bytes == 0 { self.granted } else { surplus((self.granted - self.bytes) as isize, self.kind.block()) };
        self.manager.pool(self.kind).release(spare);
        self.granted -= spare;
        self.show();
    }

    /// What the consumer listing shows: the bytes the pool holds for it.
    fn show(&self) {
        self.kept.bytes.store(self.granted, Ordering::Relaxed);
        raise_peak(&self.kept.peak, self.granted);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.manager.pool(self.kind).release(self.granted);
    }
}

#[cfg(test)]
mod tests {
    use datafusion_execution::memory_pool::{MemoryConsumer, MemoryPool};

    use super::*;

    /// A manager whose cache pool has nothing to lend, so the query pool's limit is the limit.
    fn manager(query: u64) -> Arc<MemoryManager> {
        MemoryManager::new(PoolLimits { query: ByteSize(query), cache: ByteSize(0), ..PoolLimits::default() })
    }

    #[test]
    fn a_statement_charges_the_query_pool_and_names_its_consumers() {
        let manager = manager(1000);
        let query: Arc<dyn MemoryPool> = manager.begin_query("SELECT 1", None);
        let sort = MemoryConsumer::new("ExternalSorter[0]").with_can_spill(true).register(&query);
        let join = MemoryConsumer::new("HashJoinInput").register(&query);
        sort.try_grow(600).unwrap();
        join.try_grow(300).unwrap();
        assert_eq!(manager.pool(PoolKind::Query).reserved(), 900);
        let error = join.try_grow(200).unwrap_err().to_string();
        for part in ["the query pool is full", "HashJoinInput (query 1) asked for 200B", "ExternalSorter[0] of query 1 (can spill) holds 600B", "SET memory.query_pool = '1MiB'"] {
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
    fn a_reservation_holds_its_pool_until_dropped() {
        let manager = MemoryManager::new(PoolLimits { temp: ByteSize(1 << 20), ..PoolLimits::default() });
        let held = manager.reserve(PoolKind::Temp, 800 << 10, "let a").unwrap();
        let error = manager.reserve(PoolKind::Temp, 300 << 10, "let b").unwrap_err().to_string();
        assert!(error.contains("the temp pool is full: let b needs 300KiB") && error.contains("SET memory.temp_pool = '2MiB'"), "{error}");
        drop(held);
        assert_eq!(manager.pool(PoolKind::Temp).reserved(), 0);
    }

    #[test]
    fn memory_held_after_its_statement_ended_is_a_leak_and_nothing_else_is() {
        let manager = manager(1 << 20);
        let finished: Arc<dyn MemoryPool> = manager.begin_query("SELECT * FROM t LIMIT 1", None);
        let released = MemoryConsumer::new("ExternalSorter[0]").register(&finished);
        released.try_grow(1000).unwrap();
        drop(released);
        manager.live_queries()[0].end();
        assert!(manager.leaks(Duration::from_secs(300)).is_empty(), "released before the end: no leak");

        let leaky: Arc<dyn MemoryPool> = manager.begin_query("SELECT leaky", None);
        let kept = MemoryConsumer::new("HashJoinInput").register(&leaky);
        kept.try_grow(4096).unwrap();
        assert!(manager.leaks(Duration::from_secs(300)).is_empty(), "a running statement is not leaking");
        assert_eq!(manager.leaks(Duration::ZERO).len(), 1, "past the threshold it is reported");
        manager.live_queries().iter().find(|q| q.text() == "SELECT leaky").unwrap().end();
        let leaks = manager.leaks(Duration::from_secs(300));
        assert_eq!(leaks.len(), 1);
        assert_eq!((leaks[0].consumer.name.as_str(), leaks[0].consumer.reserved, leaks[0].text.as_str(), leaks[0].ended), ("HashJoinInput", 4096, "SELECT leaky", true));
        let released = manager.release_ended();
        assert_eq!((released.reservations, released.bytes), (1, PoolKind::Query.block()), "the whole block the pool held for it");
        assert_eq!(manager.pool(PoolKind::Query).reserved(), 0);
        kept.try_grow(PoolKind::Query.block()).unwrap();
        drop(kept);
        assert_eq!(manager.pool(PoolKind::Query).reserved(), 0, "what was written off is not released twice");
        assert!(manager.leaks(Duration::ZERO).is_empty());
    }

    #[test]
    fn fault_injection_refuses_about_that_fraction_of_requests() {
        let manager = manager(1 << 30);
        manager.set_fault_probability(0.25);
        let query: Arc<dyn MemoryPool> = manager.begin_query("SELECT 3", None);
        let r = MemoryConsumer::new("c").register(&query);
        let refused = (0..4000).filter(|_| r.try_grow(1).is_err()).count();
        assert!((800..1200).contains(&refused), "{refused} of 4000 refused at 0.25");
        manager.set_fault_probability(0.0);
        assert!((0..1000).all(|_| r.try_grow(1).is_ok()));
    }

    #[test]
    fn a_query_limit_stops_one_query_before_the_pool() {
        let manager = manager(1000);
        let query: Arc<dyn MemoryPool> = manager.begin_query("SELECT 2", Some(100));
        let r = MemoryConsumer::new("GroupedHashAggregateStream[0]").register(&query);
        r.try_grow(100).unwrap();
        let error = r.try_grow(1).unwrap_err().to_string();
        assert!(error.contains("this query's memory limit is full") && error.contains("memory.query_limit"), "{error}");
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
                        let query: Arc<dyn MemoryPool> = manager.begin_query("fuzz", None);
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

/// SHIM (replaced by the memory-shape branch).
#[derive(Debug, Clone, Copy)]
pub struct StatementLimits {
    pub limit: Option<usize>,
    pub actual_margin: Margin,
}

impl Default for StatementLimits {
    fn default() -> Self {
        Self { limit: None, actual_margin: DEFAULT_ACTUAL_MARGIN }
    }
}

static WAITERS: AtomicUsize = AtomicUsize::new(0);

impl MemoryManager {
    pub async fn wait_for_pressure_below(&self, kind: PoolKind, level: Pressure, timeout: Duration) -> bool {
        let started = Instant::now();
        WAITERS.fetch_add(1, Ordering::SeqCst);
        while self.pressure(kind) >= level && started.elapsed() < timeout {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        WAITERS.fetch_sub(1, Ordering::SeqCst);
        self.pressure(kind) < level
    }

    pub fn fault_probability(&self) -> f64 {
        f64::from_bits(self.fault_probability.load(Ordering::Relaxed))
    }

    pub fn admission_waiters(&self) -> usize {
        WAITERS.load(Ordering::SeqCst)
    }
}

impl QueryMemory {
    pub async fn wait_released(&self, timeout: Duration) -> bool {
        let started = Instant::now();
        while self.reserved_bytes() > 0 && started.elapsed() < timeout {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.reserved_bytes() == 0
    }
}
