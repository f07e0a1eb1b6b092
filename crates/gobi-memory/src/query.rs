//! One statement's memory: DataFusion's `MemoryPool` for its plan, charging the shared query
//! pool in whole blocks. It holds the [`Budget`] (pools, fair share, borrowing, events), never
//! the manager: the manager holds it.
//!
//! ```text
//!   QueryMemory (one per statement: id, text, its limits, reserved, peak, borrowed)
//!     ├── consumer ExternalSorter[0]  granted, headroom, peak, can spill, registered at
//!     ├── consumer GroupedHashAggregateStream[1] …
//!     └── Arc<Budget> ──► query pool, cache pool (to borrow), fair share, events
//!
//!   MemoryReservation::try_grow(n)          (DataFusion operator, any thread)
//!        │
//!        ▼
//!   consumer.headroom -= n  ── still ≥ 0 ──► done: one atomic on the consumer's own line
//!        │ short
//!        ▼
//!   grant whole 8 KiB blocks (and a lead, for an operator that grows before it reserves):
//!   query limit? operator's fair share? query pool (else borrow from the cache pool)
//!   ──► granted += blocks, headroom += blocks, statement/node counters
//!
//!   shrink(n): headroom += n; a block past what it keeps (one block, or its lead) ──► give
//!   the rest back
//!   reserved and registered consumers reach 0 ──► wake who waits for the statement (wait_released)
//! ```
//!
//! DataFusion operators register a `MemoryConsumer` and grow a `MemoryReservation` before they
//! buffer; the reservation calls back into the statement's `QueryMemory`, which charges the
//! query pool and records who holds what. When a reservation cannot grow, spillable operators
//! (sort, hash aggregation, repartition) write to disk and try again; the others fail with one
//! message naming the pool, the request, the limit, the largest holders and the setting to
//! raise.
//!
//! Not tracked here: memory operators do not reserve (decoding buffers, batches in flight,
//! kernel intermediates). The counting allocator (`allocator.rs`) sees those: each statement's
//! actual bytes beside its reserved ones, held to the statement's limit plus its
//! `memory.actual_margin` ([`QueryMemory::check_actual`]).
//!
//! Per consumer, `granted − headroom` is what its reservations hold, and `granted` is what the
//! pools hold for it: never less, and less than two blocks more once it shrinks. A consumer's
//! growths mostly stay inside its blocks, so they touch no shared counter; the consumer is
//! found through a small per-thread cache rather than the statement's consumer map.
//!
//! A spillable consumer registered while the query pool is under high pressure spills at half
//! its fair share, so the statements already running keep room to finish. A refused consumer
//! that cannot spill waits up to a second while spillable ones hold what it lacks: their
//! shares shrink by what it wants, their next growth spills, and the room comes back to it.
//!
//! Both paths are lock-free (but for that wait). A growth that finds its consumer short reserves the blocks for its
//! own shortfall, so concurrent growths of one consumer each cover themselves; a shrink gives
//! blocks back by compare-and-swap on the headroom, so it never takes room a concurrent growth
//! already counted on.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use datafusion_common::{DataFusionError, Result};
use datafusion_execution::memory_pool::{MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation};

use crate::allocator::AllocScope;
use crate::budget::{Budget, ConsumerStats, Loan, QueryId};
use crate::byte_size::ByteSize;
use crate::pool::{raise_peak, surplus, PoolKind, Pressure};
use crate::wait::Waiters;

/// How many of the largest consumers an out-of-memory message names.
const TOP_CONSUMERS: usize = 5;

const BLOCK: usize = PoolKind::Query.block();

/// How far the grant of a consumer that grows before it reserves leads what it holds, as a
/// part of it, while the query pool is under normal pressure: a hash table or a vector that
/// doubles inside a batch holds its old and new buffers at once before the operator reserves
/// the new size (TPC-H q18's aggregates: a quarter more allocated than reserved at the peak).
const LEAD: usize = 4;

/// How long a refused request that cannot spill waits for spillable consumers to give room
/// back (see [`QueryMemory::waited_for_room`]): a spill of a few MiB takes milliseconds.
const ROOM_WAIT: Duration = Duration::from_secs(1);

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
/// query still decodes whole Parquet pages and holds its result. 128 MiB: with the default
/// pools a statement may then hold what all of them allow together (the cap in
/// `check_actual`); TPC-H q18 at scale 10 holds 115 MiB from the allocator beside 50 MiB
/// reserved, and 64 MiB stopped it inside the process's budget.
pub const DEFAULT_ACTUAL_MARGIN: Margin = Margin::Bytes(128 << 20);

/// One statement's own limits, from its session's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StatementLimits {
    /// `memory.query_limit`: the most it may reserve (else the query pool's limit).
    pub limit: Option<usize>,
    /// `memory.actual_margin`: how far past its limit its allocator bytes may go before it is
    /// stopped.
    pub actual_margin: Margin,
}

impl Default for StatementLimits {
    fn default() -> Self {
        Self { limit: None, actual_margin: DEFAULT_ACTUAL_MARGIN }
    }
}

/// What the consumers one plan node registers reserve together, now and at most: the
/// per-operator figure `EXPLAIN ANALYZE` shows. A node's consumers are those registered while
/// it runs (`registering_for`), so a sort's `ExternalSorter` and `ExternalSorterMerge` of every
/// partition count for the sort.
#[derive(Debug, Default)]
pub struct NodeMemory {
    reserved: AtomicUsize,
    peak: AtomicUsize,
    /// Rows its inputs have handed it: how far through its input the node is when refused.
    rows_in: AtomicU64,
    /// Its operator grows its buffers before it reserves them (see [`LEAD`]).
    grows_before_reserving: bool,
    /// The node its batches go to (none at the plan's root).
    reader: Option<Arc<NodeMemory>>,
}

impl NodeMemory {
    /// A node whose batches go to `reader`.
    pub fn read_by(reader: Option<&Arc<NodeMemory>>) -> Self {
        Self { reader: reader.cloned(), ..Self::default() }
    }

    /// The same node, its operator growing its buffers first and reserving what they hold after
    /// (a DataFusion grouped aggregate, after each batch): its consumers' grants lead what they
    /// hold by [`LEAD`].
    pub fn growing_before_reserving(self) -> Self {
        Self { grows_before_reserving: true, ..self }
    }

    /// The node its batches go to.
    pub fn reader(&self) -> Option<&Arc<NodeMemory>> {
        self.reader.as_ref()
    }

    /// Whether this node reads `node`'s batches, directly or through the nodes between.
    fn reads_from(&self, node: &NodeMemory) -> bool {
        std::iter::successors(node.reader.as_deref(), |below| below.reader.as_deref()).any(|reader| std::ptr::eq(reader, self))
    }

    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// The node's input handed it `rows` more.
    pub fn took_rows(&self, rows: usize) {
        self.rows_in.fetch_add(rows as u64, Ordering::Relaxed);
    }

    pub fn rows_in(&self) -> u64 {
        self.rows_in.load(Ordering::Relaxed)
    }
}

thread_local! {
    /// The node consumers registered on this thread now work for, and their ids so far.
    static REGISTERING_FOR: RefCell<Option<(Arc<NodeMemory>, Vec<usize>)>> = const { RefCell::new(None) };
}

/// Runs `f` with consumers registered on this thread attributed to `node`.
pub fn registering_for<T>(node: &Arc<NodeMemory>, f: impl FnOnce() -> T) -> T {
    registered_for(node, f).0
}

/// As [`registering_for`], and the ids of the consumers `f` registered (to read what they hold
/// with [`QueryMemory::held_by`]).
pub fn registered_for<T>(node: &Arc<NodeMemory>, f: impl FnOnce() -> T) -> (T, Vec<usize>) {
    let previous = REGISTERING_FOR.with(|current| current.replace(Some((Arc::clone(node), Vec::new()))));
    let result = f();
    let registered = REGISTERING_FOR.with(|current| std::mem::replace(&mut *current.borrow_mut(), previous));
    (result, registered.map(|(_, ids)| ids).unwrap_or_default())
}

const RECENT_SLOTS: usize = 4;

/// A thread's recent consumers: DataFusion's consumer id and the consumer, by id modulo the slots.
type Recent = [Option<(usize, Arc<Consumer>)>; RECENT_SLOTS];

thread_local! {
    /// The consumers this thread grew or shrank last, by DataFusion's consumer id (unique in
    /// the process): an operator's stream mostly runs on one thread, so its reservation's
    /// consumer is found here without reading the statement's consumer map.
    static RECENT: RefCell<Recent> = const { RefCell::new([const { None }; RECENT_SLOTS]) };
}

/// The memory of one statement, and DataFusion's `MemoryPool` for its plan.
#[derive(Debug)]
pub struct QueryMemory {
    budget: Arc<Budget>,
    id: QueryId,
    text: String,
    started: Instant,
    limit: Option<usize>,
    actual_margin: Margin,
    /// What the pools hold for this statement: its consumers' blocks.
    reserved: AtomicUsize,
    /// Consumers registered and not yet unregistered: an aborted task's operators keep theirs
    /// until the task is dropped, and may reserve again after `reserved` read 0.
    registered: AtomicUsize,
    /// Tasks waiting for `reserved` and `registered` to reach 0.
    released: Waiters,
    peak: AtomicUsize,
    /// Requests refused (by the pool, the query's limit, an operator's share or a fault).
    rejected: AtomicU64,
    /// What the allocator handed out while this statement's streams were polled.
    actual: Arc<AllocScope>,
    /// Bytes of `reserved` held in the cache pool (borrowed when the query pool was short);
    /// releases return these first.
    borrowed: Loan,
    ended: AtomicBool,
    /// A request that cannot spill waited for room and none came (see `waited_for_room`).
    waited_in_vain: AtomicBool,
    consumers: RwLock<HashMap<usize, Arc<Consumer>>>,
    /// How much of its input the statement has read, for the advice after a refusal.
    input_read: InputGauge,
}

/// The share (0 to 1) of its input the refused operator's node (when known, else the
/// statement) has taken so far, when the input's size is known.
pub type InputRead = Box<dyn Fn(Option<&NodeMemory>) -> Option<f64> + Send + Sync>;

#[derive(Default)]
struct InputGauge(std::sync::OnceLock<InputRead>);

impl fmt::Debug for InputGauge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.get().is_some() { "InputGauge(set)" } else { "InputGauge(unset)" })
    }
}

#[derive(Debug)]
struct Consumer {
    name: String,
    can_spill: bool,
    registered: Instant,
    /// Bytes the pools hold for this consumer, in whole blocks.
    granted: AtomicUsize,
    /// `granted` minus what the consumer's reservations hold. Below zero while a growth waits
    /// for its blocks, and after a cleanup wrote the grant off.
    headroom: AtomicIsize,
    peak: AtomicUsize,
    /// Registered while the query pool was under high pressure: it spills at half its fair
    /// share, leaving room to the consumers already running.
    spills_early: bool,
    /// The plan node it works for, when known.
    node: Option<Arc<NodeMemory>>,
    /// Its grants lead what it holds (its node grows before reserving).
    leads: bool,
}

impl Consumer {
    /// The headroom a trim leaves it: one block, or its lead on what it holds.
    fn keeps(&self) -> usize {
        match self.leads {
            true => (self.held() / LEAD).max(BLOCK),
            false => BLOCK,
        }
    }

    /// Takes `bytes` from the room left in the consumer's blocks; what it lacks, if anything.
    fn take(&self, bytes: usize) -> std::result::Result<(), usize> {
        let before = self.headroom.fetch_sub(bytes as isize, Ordering::AcqRel);
        if before >= bytes as isize {
            Ok(())
        } else {
            Err(bytes - before.max(0) as usize)
        }
    }

    /// Gives back `bytes` its reservations no longer hold; true when whole blocks are now spare.
    fn give_back(&self, bytes: usize) -> bool {
        surplus(self.headroom.fetch_add(bytes as isize, Ordering::AcqRel) + bytes as isize, self.keeps(), BLOCK) > 0
    }

    /// Takes the spare blocks (all but one) off the grant; the bytes the pools should release.
    fn trim(&self) -> usize {
        let mut headroom = self.headroom.load(Ordering::Acquire);
        loop {
            let spare = surplus(headroom, self.keeps(), BLOCK);
            if spare == 0 {
                return 0;
            }
            match self.headroom.compare_exchange(headroom, headroom - spare as isize, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break self.take_grant(spare),
                Err(now) => headroom = now,
            }
        }
    }

    /// Takes `bytes` off the grant; 0 (and the headroom restored) when a cleanup wrote the grant
    /// off in the meantime.
    fn take_grant(&self, bytes: usize) -> usize {
        match self.granted.fetch_update(Ordering::AcqRel, Ordering::Acquire, |granted| granted.checked_sub(bytes)) {
            Ok(_) => bytes,
            Err(_) => {
                self.headroom.fetch_add(bytes as isize, Ordering::AcqRel);
                0
            }
        }
    }

    /// Takes the whole grant; the bytes the pools should release.
    fn take_all(&self) -> usize {
        // The headroom goes down first, so no growth counts on room that is being taken.
        loop {
            let granted = self.granted.load(Ordering::Acquire);
            self.headroom.fetch_sub(granted as isize, Ordering::AcqRel);
            match self.granted.compare_exchange(granted, 0, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return granted,
                Err(_) => {
                    self.headroom.fetch_add(granted as isize, Ordering::AcqRel);
                }
            }
        }
    }

    /// What the consumer's reservations hold of what the pools hold for it: bytes a cleanup
    /// wrote off are no longer counted.
    fn held(&self) -> usize {
        let granted = self.granted.load(Ordering::Acquire);
        granted.saturating_sub(self.headroom.load(Ordering::Acquire).max(0) as usize)
    }
}

impl QueryMemory {
    pub(crate) fn new(budget: Arc<Budget>, id: QueryId, text: &str, limits: StatementLimits) -> Self {
        Self {
            budget,
            id,
            text: text.chars().take(120).collect(),
            started: Instant::now(),
            limit: limits.limit,
            actual_margin: limits.actual_margin,
            reserved: AtomicUsize::new(0),
            registered: AtomicUsize::new(0),
            released: Waiters::default(),
            peak: AtomicUsize::new(0),
            rejected: AtomicU64::new(0),
            actual: Arc::default(),
            borrowed: Loan::default(),
            ended: AtomicBool::new(false),
            waited_in_vain: AtomicBool::new(false),
            consumers: RwLock::new(HashMap::new()),
            input_read: InputGauge::default(),
        }
    }

    /// Tells the statement how to measure the share of its input read so far (the engine
    /// knows its plans' sources); a refusal's advice scales what was needed to the whole input.
    pub fn measure_input_with(&self, input_read: InputRead) {
        // Set once, when the statement starts; a second gauge would measure the same input.
        let _ = self.input_read.0.set(input_read);
    }

    /// What to set the refused limit to, in bytes of the statement's limit, with why. `needed`:
    /// what the statement held under the limit plus what it asked. A request that does not
    /// grow with the input (a spillable operator's, a fixed one) needs that and a quarter more.
    /// What `grows` with its input and cannot spill is combined at the end (partial aggregates
    /// merged, a final value built from what was kept), which holds it twice: twice what it
    /// needed so far, scaled to the whole input when the share read is known.
    fn advice(&self, needed: usize, grows: bool, node: Option<&NodeMemory>) -> (usize, String) {
        if !grows {
            return (needed + needed / 4, String::new());
        }
        let read = self.input_read.0.get().and_then(|read| read(node)).filter(|r| *r > 0.0 && *r < 1.0);
        match read {
            Some(read) => {
                let whole = (needed as f64 / read) as usize;
                let why = format!(
                    " (it cannot spill and had read {:.0}% of its input: about {} for all of it, twice that to combine it)",
                    read * 100.0,
                    ByteSize(whole as u64)
                );
                (whole * 2, why)
            }
            None => (needed * 2, " (it cannot spill: twice what it needed so far, to combine it at the end)".to_string()),
        }
    }

    pub fn id(&self) -> QueryId {
        self.id
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// The allocator's count for this statement (see `allocator.rs`).
    pub fn actual(&self) -> &Arc<AllocScope> {
        &self.actual
    }

    /// The most this statement may reserve: its own limit, else the query pool's.
    pub fn limit(&self) -> usize {
        self.limit.unwrap_or_else(|| self.budget.pool(PoolKind::Query).limit())
    }

    /// The most this statement could hold at once: its own limit, else the query pool and the
    /// cache pool it may borrow from (an upper bound, as in fair shares: `Budget::elastic_limit`).
    pub fn holdable(&self) -> usize {
        self.limit.unwrap_or_else(|| self.budget.elastic_limit())
    }

    /// How far past its limit its allocator bytes may go (`memory.actual_margin`).
    pub fn actual_margin(&self) -> Margin {
        self.actual_margin
    }

    /// Stops a statement whose allocator bytes passed its limit by more than
    /// `memory.actual_margin`: memory no operator reserved, which would otherwise push the
    /// process past its budget.
    pub fn check_actual(&self) -> Result<()> {
        let actual = self.actual.current();
        // What it borrowed from the cache pool is part of its limit too; the margin never lets
        // it hold more than all the pools together.
        let limit = self.limit() + self.borrowed.bytes();
        let margin = self.actual_margin;
        let allowed = (limit + margin.of(limit)).min(self.budget.total_limit().max(limit));
        if actual <= allowed {
            return Ok(());
        }
        self.rejected.fetch_add(1, Ordering::Relaxed);
        // Untracked memory cannot spill: the limit that would have held it, scaled like a
        // refusal's. The limit refused is the statement's own when it has one.
        let (advised, why) = self.advice(actual, true, None);
        let setting = if self.limit.is_some() { "memory.query_limit" } else { "memory.query_pool" };
        Err(DataFusionError::ResourcesExhausted(format!(
            "query {} was stopped: it holds {} from the allocator, more than the {} it may hold (its {} limit plus the {} margin, \
             never more than all pools' {} together), while its operators reserved only {}; \
             the rest ({} untracked) is memory no operator reserves (decoded batches, results, intermediates). \
             Make the query keep less (aggregate or LIMIT it), or raise the limit{why}: SET {setting} = '{}MiB'",
            self.id,
            ByteSize(actual as u64),
            ByteSize(allowed as u64),
            ByteSize(limit as u64),
            margin,
            ByteSize(self.budget.total_limit() as u64),
            ByteSize(self.peak() as u64),
            ByteSize(actual.saturating_sub(self.reserved_bytes()) as u64),
            advised.div_ceil(1 << 20).max(1),
        )))
    }

    /// What the pools hold for the statement's operators now.
    pub fn reserved_bytes(&self) -> usize {
        self.reserved.load(Ordering::Acquire)
    }

    /// Waits until the pools hold nothing for the statement's operators and none of them is
    /// still registered (its aborted tasks are gone, not only idle), at most `timeout`; whether
    /// that holds. Woken by the release or the unregistration that reaches 0, never polls.
    /// Needs a Tokio runtime with its timer.
    pub async fn wait_released(&self, timeout: Duration) -> bool {
        self.released.until(|| self.reserved.load(Ordering::SeqCst) == 0 && self.registered.load(Ordering::SeqCst) == 0, timeout).await
    }

    /// For `bytes` more that `reservation`'s consumer cannot spill for and was refused: waits,
    /// at most `timeout`, for the room, where those who hold it give it back without the
    /// asker's rows: other statements (the cache's borrowed room is given back first), and
    /// this statement's operators that do not read the asker's batches (another partition of
    /// the same scan, a branch of a union beside it). Never waits for the operators that read
    /// them (a held join build, a sort merging what it took, a sort taking its input): they
    /// give their room back only when they finish or spill, and they may need the asker's rows
    /// for that. Woken by the query and cache pools' releases, never polls; the wait and its
    /// outcome are events.
    ///
    /// ```text
    ///   holdable ─┬─ held by the asker's readers that cannot spill ─┐ + bytes > holdable:
    ///   (with the ├─ held by the asker                               ┘ WouldNotCome, at once
    ///   cache's)  ├─ held by its readers that can spill ── + the above + bytes > holdable:
    ///             │                                        AfterReadersSpill, at once
    ///             ├─ held by the rest ─ waited for
    ///             └─ free
    /// ```
    pub async fn wait_for_room(&self, reservation: &MemoryReservation, bytes: usize, timeout: Duration) -> RoomWait {
        // A request the query pool cannot take may borrow from the cache pool (`Budget::borrow`).
        let (pool, cache) = (self.budget.pool(PoolKind::Query), self.budget.pool(PoolKind::Cache));
        let free = |pool: &crate::pool::Pool| pool.limit().saturating_sub(pool.reserved()) >= bytes;
        let room = || (free(pool) || free(cache)) && self.limit.is_none_or(|limit| self.reserved_bytes() + bytes <= limit);
        if room() {
            return RoomWait::Room;
        }
        let (asker, node) = self.with_consumer(reservation.consumer().id(), |c| (c.granted.load(Ordering::Acquire), c.node.clone()));
        let (unspillable, spillable) = node.map_or((0, 0), |node| self.held_by_readers_of(&node));
        if unspillable + asker + bytes > self.holdable() {
            return RoomWait::WouldNotCome { readers: unspillable };
        }
        if unspillable + spillable + asker + bytes > self.holdable() {
            return RoomWait::AfterReadersSpill;
        }
        let consumer = reservation.consumer().name();
        let freed = self.budget.reclaim(PoolKind::Query, bytes);
        if freed > 0 {
            self.budget.record_event(
                PoolKind::Query,
                format!("{consumer} of query {} was short: gave back the cache's borrowed query pool memory", self.id),
                freed as u64,
            );
        }
        let started = Instant::now();
        // Woken by either pool's releases: borrowed room goes back to the cache pool.
        let came = tokio::select! {
            came = pool.until(&room, timeout) => came,
            came = cache.until(&room, timeout) => came,
        };
        let outcome = if came { RoomWait::Room } else { RoomWait::HeldOn };
        self.budget.record_event(
            PoolKind::Query,
            format!(
                "{consumer} of query {} waited {:.1}s for {} of room held by other statements or parts of its own {}",
                self.id,
                started.elapsed().as_secs_f64(),
                ByteSize(bytes as u64),
                if outcome == RoomWait::Room { "and it came" } else { "and none came" },
            ),
            0,
        );
        outcome
    }

    /// What the pools hold for the consumers of the nodes that read `node`'s batches: those
    /// that cannot spill, and those that can.
    fn held_by_readers_of(&self, node: &NodeMemory) -> (usize, usize) {
        let consumers = self.consumers.read().expect("the consumer map is never poisoned");
        let readers = consumers.values().filter(|c| c.node.as_deref().is_some_and(|n| n.reads_from(node)));
        readers.fold((0, 0), |(unspillable, spillable), c| match c.can_spill {
            false => (unspillable + c.granted.load(Ordering::Acquire), spillable),
            true => (unspillable, spillable + c.granted.load(Ordering::Acquire)),
        })
    }

    /// Records what happened to this statement's memory as a query-pool event
    /// (`gobi_memory_events()`, `gobi memory pressure --history`).
    pub fn record_event(&self, action: impl Into<String>) {
        self.budget.record_event(PoolKind::Query, action, 0);
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// Marks the statement finished: from now on, bytes it still holds are a leak.
    pub fn end(&self) {
        self.ended.store(true, Ordering::Relaxed);
    }

    pub fn has_ended(&self) -> bool {
        self.ended.load(Ordering::Relaxed)
    }

    /// Each consumer's bytes held by its reservations now and its peak grant.
    pub fn consumers(&self) -> Vec<ConsumerStats> {
        self.consumers
            .read()
            .expect("the consumer map is never poisoned")
            .values()
            .map(|c| ConsumerStats {
                pool: PoolKind::Query,
                query: Some(self.id),
                name: c.name.clone(),
                can_spill: c.can_spill,
                reserved: c.held(),
                peak: c.peak.load(Ordering::Relaxed),
                age: c.registered.elapsed(),
            })
            .collect()
    }

    /// What the consumer of that id (DataFusion's `MemoryConsumer::id`) holds now; 0 once it
    /// is gone.
    pub fn held_by(&self, consumer: usize) -> usize {
        self.consumers.read().expect("the consumer map is never poisoned").get(&consumer).map_or(0, |c| c.held())
    }

    /// Releases every consumer's grant (a cleanup after the statement ended, its reservations
    /// forgotten): when a reservation is finally dropped, nothing is released twice. The name
    /// and bytes of each consumer that held some.
    pub(crate) fn write_off(&self) -> Vec<(String, usize)> {
        let consumers = self.consumers.read().expect("the consumer map is never poisoned");
        consumers
            .values()
            .filter_map(|consumer| {
                let bytes = consumer.take_all();
                self.release(consumer, bytes);
                (bytes > 0).then(|| (consumer.name.clone(), bytes))
            })
            .collect()
    }

    /// Runs `f` on the consumer DataFusion registered as `id`, found in this thread's recent
    /// consumers or else in the statement's map (and then remembered). `f` should be short:
    /// the cache is borrowed while it runs.
    fn with_consumer<T>(&self, id: usize, f: impl FnOnce(&Arc<Consumer>) -> T) -> T {
        let slot = id % RECENT_SLOTS;
        let mut f = Some(f);
        let recent = RECENT.try_with(|recent| {
            let recent = recent.try_borrow().ok()?;
            match &recent[slot] {
                Some((cached, consumer)) if *cached == id => f.take().map(|f| f(consumer)),
                _ => None,
            }
        });
        if let Ok(Some(result)) = recent {
            return result;
        }
        let consumer =
            self.consumers.read().expect("the consumer map is never poisoned").get(&id).cloned().expect("DataFusion registers a consumer before it reserves");
        let result = f.take().map(|f| f(&consumer)).expect("not called yet");
        // (Not at all while the thread is ending and its locals are gone.)
        let _ = RECENT.try_with(|recent| {
            if let Ok(mut recent) = recent.try_borrow_mut() {
                recent[slot] = Some((id, consumer));
            }
        });
        result
    }

    /// Takes `additional` from the consumer's blocks; when they are short, the consumer and
    /// the bytes it lacks (the caller reserves more blocks outside this thread's cache).
    fn take_room(&self, reservation: &MemoryReservation, additional: usize) -> Option<(Arc<Consumer>, usize)> {
        self.with_consumer(reservation.consumer().id(), |consumer| consumer.take(additional).err().map(|short| (Arc::clone(consumer), short)))
    }

    /// Counts `blocks` newly granted to `consumer` (already reserved from the pools). The
    /// statement's, node's and budget's counters go first: whatever a release takes off the
    /// consumer's grant is then already in them.
    fn granted(&self, consumer: &Consumer, blocks: usize) {
        let now = self.reserved.fetch_add(blocks, Ordering::AcqRel) + blocks;
        raise_peak(&self.peak, now);
        if let Some(node) = &consumer.node {
            let now = node.reserved.fetch_add(blocks, Ordering::AcqRel) + blocks;
            raise_peak(&node.peak, now);
        }
        self.budget.consumer_granted(consumer.can_spill, blocks);
        let now = consumer.granted.fetch_add(blocks, Ordering::AcqRel) + blocks;
        raise_peak(&consumer.peak, now);
        consumer.headroom.fetch_add(blocks as isize, Ordering::AcqRel);
    }

    /// Gives back the consumer's spare blocks, if a growth that raced a shrink left some.
    fn trim(&self, consumer: &Consumer) {
        if surplus(consumer.headroom.load(Ordering::Acquire), consumer.keeps(), BLOCK) > 0 {
            self.release(consumer, consumer.trim());
        }
    }

    /// Gives `bytes` taken off a consumer's grant back to the pools (borrowed cache-pool bytes
    /// first) and off the statement's, node's and budget's counters. The release that brings
    /// the statement to 0 wakes who waits for it.
    fn release(&self, consumer: &Consumer, bytes: usize) {
        if bytes == 0 {
            return;
        }
        // The statement's counters go down before the pools give the bytes to another grant, as
        // they go up after (`granted`): what a statement counts never exceeds what the pools
        // hold for it, so its peak stays within its pool's limit.
        // SeqCst (the same instruction as AcqRel on x86 and ARMv8): a waiter sees this release
        // or is woken by it (`wait.rs`).
        let before = self.reserved.fetch_sub(bytes, Ordering::SeqCst);
        if let Some(node) = &consumer.node {
            node.reserved.fetch_sub(bytes, Ordering::AcqRel);
        }
        self.budget.consumer_released(consumer.can_spill, bytes);
        self.budget.give_back(bytes, &self.borrowed);
        if before == bytes {
            self.released.wake();
        }
    }

    /// Reserves what `consumer` is `short` of: whole blocks if the statement's limit, the
    /// operator's fair share and the pool allow, else just the bytes short (so a pool smaller
    /// than a block still works), borrowing from the cache pool when the query pool is short.
    fn grant(&self, consumer: &Consumer, reservation: &MemoryReservation, short: usize) -> Result<()> {
        let granted = self
            .try_grant(consumer, reservation, short)
            .or_else(|refused| if self.waited_for_room(consumer, reservation, short) { Ok(()) } else { Err(refused) })
            .map_err(|refused| self.exhausted(reservation, short, refused, consumer.granted.load(Ordering::Acquire)));
        self.trim(consumer);
        granted
    }

    /// For a consumer that cannot spill, refused while spillable consumers hold at least what
    /// it lacks: waits, at most [`ROOM_WAIT`], for them to spill and give room back, and takes
    /// it; whether it got it. DataFusion lets only the requester spill, so a sort's merge would
    /// fail while a sibling partition's sort holds the room, ready to spill at its next growth.
    /// While it waits the spillable shares leave its bytes out, so that growth spills.
    ///
    /// A statement that waited in vain waits no more: what holds the room is not growing (an
    /// aggregate emitting, a sort merging in memory). On a current-thread runtime it never
    /// waits: the thread it would block is the one that could give the room back.
    ///
    /// When it does not wait, it asks once more: room given back since the refusal (a sibling
    /// sort's runs freed as they reach its spill file) would otherwise fail the query for
    /// nothing.
    fn waited_for_room(&self, consumer: &Consumer, reservation: &MemoryReservation, short: usize) -> bool {
        if consumer.can_spill {
            return false;
        }
        if self.waited_in_vain.load(Ordering::Relaxed) || self.budget.spillable_held() < short {
            return self.try_grant(consumer, reservation, short).is_ok();
        }
        let pool = self.budget.pool(PoolKind::Query);
        let wait = || self.budget.wanting(short, || pool.block_until(|| self.try_grant(consumer, reservation, short).is_ok(), ROOM_WAIT));
        let granted = match tokio::runtime::Handle::try_current().map(|runtime| runtime.runtime_flavor()) {
            // Hands the worker's other tasks to another thread first.
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
            Ok(_) => return false,
            Err(_) => wait(),
        };
        if !granted {
            self.waited_in_vain.store(true, Ordering::Relaxed);
            self.budget.record_event(
                PoolKind::Query,
                format!(
                    "{} of query {} waited {:?} for spillable operators to give back {}; none did",
                    reservation.consumer().name(),
                    self.id,
                    ROOM_WAIT,
                    ByteSize(short as u64)
                ),
                0,
            );
        }
        granted
    }

    /// Grants `blocks` even past the pool's limit (counted as an overrun there).
    fn force_grant(&self, consumer: &Consumer, blocks: usize) {
        if self.budget.pool(PoolKind::Query).force_reserve(blocks) {
            self.budget.record_event(
                PoolKind::Query,
                format!(
                    "overrun: {} of query {} grew {} past the query pool's limit (memory it already held: DataFusion's grow cannot be refused)",
                    consumer.name,
                    self.id,
                    ByteSize(blocks as u64)
                ),
                0,
            );
        }
        self.granted(consumer, blocks);
    }

    fn try_grant(&self, consumer: &Consumer, reservation: &MemoryReservation, short: usize) -> std::result::Result<(), Refused> {
        // The most it may take: whole blocks and its lead, unless a limit below allows less.
        let pool = self.budget.pool(PoolKind::Query);
        let lead = match consumer.leads && pool.pressure() == Pressure::Normal {
            true => consumer.granted.load(Ordering::Acquire) / LEAD,
            false => 0,
        };
        let mut most = (short + lead).next_multiple_of(BLOCK);
        if let Some(limit) = self.limit {
            let reserved = self.reserved.load(Ordering::Acquire);
            if reserved + short > limit {
                return Err(Refused {
                    available: limit.saturating_sub(reserved),
                    limit,
                    what: "this query's memory limit",
                    setting: "memory.query_limit",
                    setting_value: limit,
                });
            }
            most = most.min(limit - reserved);
        }
        if consumer.can_spill {
            let held = consumer.granted.load(Ordering::Acquire);
            // Holding nothing but the spare blocks a spill leaves it (less than two), it has
            // nothing to spill: only the pool's own limit applies. (With a share below that, a
            // sort that had just spilled was refused its next batch, and DataFusion fails a
            // sort refused after a spill.)
            let share = match held {
                held if held < 2 * BLOCK => usize::MAX,
                _ if consumer.spills_early => self.budget.spill_share() / 2,
                _ => self.budget.spill_share(),
            };
            if held + short > share {
                return Err(Refused {
                    available: share.saturating_sub(held),
                    limit: share,
                    what: "this operator's share of the query pool",
                    setting: "memory.query_pool",
                    setting_value: self.budget.pool(PoolKind::Query).limit(),
                });
            }
            most = most.min(share - held);
        }
        let bytes = match pool.try_reserve_between(short, most) {
            Ok(bytes) => bytes,
            Err(_) if self.budget.borrow(short, &self.borrowed, reservation.consumer().name(), self.id) => short,
            Err(available) => {
                return Err(Refused { available, limit: pool.limit(), what: "the query pool", setting: "memory.query_pool", setting_value: pool.limit() })
            }
        };
        self.granted(consumer, bytes);
        Ok(())
    }

    /// The one message for a request that does not fit: pool, request, limit, who holds the
    /// memory, and the setting to raise.
    /// `held`: what the refused consumer held before asking.
    fn exhausted(&self, reservation: &MemoryReservation, bytes: usize, refused: Refused, held: usize) -> DataFusionError {
        let Refused { available, limit, what, setting, setting_value } = refused;
        self.rejected.fetch_add(1, Ordering::Relaxed);
        let pool = self.budget.pool(PoolKind::Query);
        if pool.pressure() > Pressure::Normal {
            self.budget.record_event(
                PoolKind::Query,
                format!("refused {} to {} of query {}: it spills if it can, else fails", ByteSize(bytes as u64), reservation.consumer().name(), self.id),
                0,
            );
        }
        let consumers = self.budget.statement_consumers();
        let top: Vec<String> = consumers
            .iter()
            .filter_map(|c| Some((c, c.query?)))
            .take(TOP_CONSUMERS)
            .map(|(c, query)| {
                format!("{} of query {query} ({}) holds {}", c.name, if c.can_spill { "can spill" } else { "cannot spill" }, ByteSize(c.reserved as u64))
            })
            .collect();
        let node = self.with_consumer(reservation.consumer().id(), |consumer| consumer.node.clone());
        let node = node.as_deref();
        // A request made before its operator took any input (a sort's merge headroom) is of a
        // fixed size; once the operator has input, even a partition's first request grows
        // with it (another partition may have taken the rows so far).
        let grows = !reservation.consumer().can_spill() && (held > 0 || node.is_some_and(|node| node.rows_in() > 0));
        let (advised, why) = self.advice(limit - available + bytes, grows, node);
        // The setting sizes the limit refused (a pool, or a fair share of one) in proportion.
        let advised = (advised as u128 * setting_value as u128 / limit.max(1) as u128) as u64;
        let borrowed = self.borrowed.bytes();
        let borrowed = if borrowed > 0 { format!(", and {} borrowed from the cache pool", ByteSize(borrowed as u64)) } else { String::new() };
        DataFusionError::ResourcesExhausted(format!(
            "{what} is full: {} (query {}) asked for {} more with {} of the {} limit reserved ({} in the whole query pool{borrowed}). \
             Largest holders: {}. Raise the limit{why}: SET {setting} = '{}MiB'",
            reservation.consumer().name(),
            self.id,
            ByteSize(bytes as u64),
            ByteSize((limit - available) as u64),
            ByteSize(limit as u64),
            ByteSize(pool.reserved() as u64),
            if top.is_empty() { "none".to_string() } else { top.join("; ") },
            advised.div_ceil(1 << 20).max(1),
        ))
    }
}

/// What became of a wait for room ([`QueryMemory::wait_for_room`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomWait {
    /// The room is there (ask again: another may take it first).
    Room,
    /// Not waited for: it would not come while the operators reading the asker's batches that
    /// cannot spill hold what they hold (`readers` bytes; with none, the statement's limit is
    /// too small for it).
    WouldNotCome { readers: usize },
    /// Not waited for: it would come only once the operators reading the asker's batches spill,
    /// which they do at their next growth, after the asker's next rows (DataFusion's operators
    /// cannot be told to spill).
    AfterReadersSpill,
    /// Those who hold it held on for the whole wait.
    HeldOn,
}

/// Why a grant was refused: the limit it hit, and the setting that raises it.
struct Refused {
    available: usize,
    limit: usize,
    what: &'static str,
    setting: &'static str,
    /// The setting's value now: `limit` is it, or a share of it.
    setting_value: usize,
}

impl fmt::Display for QueryMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gobi query pool (query {})", self.id)
    }
}

impl MemoryPool for QueryMemory {
    fn name(&self) -> &str {
        "gobi"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        let spills_early = consumer.can_spill() && self.budget.pool(PoolKind::Query).pressure() >= Pressure::High;
        if spills_early {
            self.budget.record_event(PoolKind::Query, format!("high pressure: {} of query {} spills at half its fair share", consumer.name(), self.id), 0);
        }
        let node = REGISTERING_FOR.with(|current| {
            current.borrow_mut().as_mut().map(|(node, ids)| {
                ids.push(consumer.id());
                Arc::clone(node)
            })
        });
        let entry = Arc::new(Consumer {
            name: consumer.name().to_string(),
            can_spill: consumer.can_spill(),
            registered: Instant::now(),
            granted: AtomicUsize::new(0),
            headroom: AtomicIsize::new(0),
            peak: AtomicUsize::new(0),
            spills_early,
            leads: node.as_ref().is_some_and(|node| node.grows_before_reserving),
            node,
        });
        if consumer.can_spill() {
            self.budget.spillable_registered();
        }
        self.registered.fetch_add(1, Ordering::SeqCst);
        self.consumers.write().expect("the consumer map is never poisoned").insert(consumer.id(), entry);
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        if let Some(entry) = self.consumers.write().expect("the consumer map is never poisoned").remove(&consumer.id()) {
            self.release(&entry, entry.take_all());
            if entry.can_spill {
                self.budget.spillable_unregistered();
            }
            if self.registered.fetch_sub(1, Ordering::SeqCst) == 1 {
                self.released.wake();
            }
        }
    }

    /// Growth that cannot be refused (memory the operator already holds): blocks are reserved
    /// even past the limit, and counted as an overrun.
    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        if let Some((consumer, short)) = self.take_room(reservation, additional) {
            self.force_grant(&consumer, short.next_multiple_of(BLOCK));
        }
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        let spare = self.with_consumer(reservation.consumer().id(), |consumer| consumer.give_back(shrink).then(|| Arc::clone(consumer)));
        if let Some(consumer) = spare {
            self.trim(&consumer);
        }
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        if additional == 0 {
            return Ok(());
        }
        if let Some(probability) = self.budget.inject_fault() {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(DataFusionError::ResourcesExhausted(format!(
                "injected fault (memory.fault_probability = {probability}): {} (query {}) was refused {}",
                reservation.consumer().name(),
                self.id,
                ByteSize(additional as u64)
            )));
        }
        let Some((consumer, short)) = self.take_room(reservation, additional) else { return Ok(()) };
        self.grant(&consumer, reservation, short).inspect_err(|_| {
            consumer.headroom.fetch_add(additional as isize, Ordering::AcqRel);
            self.trim(&consumer);
        })
    }

    fn reserved(&self) -> usize {
        self.reserved.load(Ordering::Relaxed)
    }

    /// The query pool's own limit, not what borrowing could add: operators size their merges
    /// by it, and borrowed room may be gone by the time they ask.
    fn memory_limit(&self) -> MemoryLimit {
        let pool = self.budget.pool(PoolKind::Query).limit();
        MemoryLimit::Finite(self.limit.map_or(pool, |l| l.min(pool)))
    }
}

/// A statement of its own over a new budget, for tests: query 1.
#[cfg(test)]
fn statement(limits: crate::budget::PoolLimits, statement: StatementLimits) -> (Arc<Budget>, Arc<QueryMemory>, Arc<dyn MemoryPool>) {
    let budget = Arc::new(Budget::new(limits));
    let query = Arc::new(QueryMemory::new(Arc::clone(&budget), 1, "SELECT test", statement));
    let pool: Arc<dyn MemoryPool> = Arc::clone(&query) as _;
    (budget, query, pool)
}

#[cfg(test)]
mod tests {
    use datafusion_execution::memory_pool::MemoryConsumer;

    use super::*;
    use crate::budget::PoolLimits;

    #[test]
    fn small_growths_go_to_the_pool_once_per_block_and_shrinks_keep_one_spare_block() {
        let (budget, statement, query) =
            statement(PoolLimits { query: ByteSize::mib(1), cache: ByteSize(0), ..PoolLimits::default() }, StatementLimits::default());
        let reservation = MemoryConsumer::new("GroupedHashAggregateStream[0]").with_can_spill(true).register(&query);
        let pool = budget.pool(PoolKind::Query);
        for _ in 0..81 {
            reservation.try_grow(100).unwrap();
        }
        assert_eq!((pool.reserved(), pool.stats().allocations), (BLOCK, 1), "8100 bytes fit one block");
        reservation.try_grow(100).unwrap();
        assert_eq!((pool.reserved(), pool.stats().allocations), (2 * BLOCK, 2));
        assert_eq!(statement.consumers()[0].reserved, 8200, "consumers show what the reservation holds");

        reservation.try_grow(40_000).unwrap();
        assert_eq!(pool.reserved(), 48_200usize.next_multiple_of(BLOCK));
        reservation.shrink(48_100);
        assert_eq!(pool.reserved(), 2 * BLOCK, "the block holding 100 bytes and one spare; the rest went back");
        reservation.free();
        assert_eq!(pool.reserved(), BLOCK, "one spare block stays until the consumer goes");
        drop(reservation);
        assert_eq!((pool.reserved(), query.reserved()), (0, 0));
    }

    /// A consumer of a node that grows before it reserves is granted a quarter of what it holds
    /// beyond what it asks, and keeps that lead when it shrinks a little; under high pressure
    /// it gets only what it asks.
    #[test]
    fn a_consumer_that_grows_before_reserving_is_granted_a_lead() {
        let (budget, statement, query) =
            statement(PoolLimits { query: ByteSize::mib(10), cache: ByteSize(0), ..PoolLimits::default() }, StatementLimits::default());
        let pool = budget.pool(PoolKind::Query);
        let node = Arc::new(NodeMemory::default().growing_before_reserving());
        let aggregate = registering_for(&node, || MemoryConsumer::new("GroupedHashAggregateStream[0]").with_can_spill(true).register(&query));
        aggregate.try_grow(1 << 20).unwrap();
        assert_eq!(pool.reserved(), 1 << 20, "holding nothing, it leads by nothing");
        aggregate.try_grow(1 << 20).unwrap();
        assert_eq!(pool.reserved(), (2 << 20) + (256 << 10), "a quarter of the 1 MiB it held beyond the 1 MiB it asked");
        aggregate.try_grow(200 << 10).unwrap();
        assert_eq!(pool.stats().allocations, 2, "a growth inside the lead takes no grant");
        aggregate.shrink(100 << 10);
        assert_eq!(pool.reserved(), (2 << 20) + (256 << 10), "a small shrink keeps the lead");
        aggregate.shrink(2 << 20);
        assert_eq!(pool.reserved(), 128 << 10, "the 100 KiB it holds, a quarter of them, and whole blocks");
        assert_eq!(statement.reserved_bytes(), pool.reserved());
        aggregate.free();
        assert_eq!(pool.reserved(), BLOCK, "holding nothing, one spare block, as any consumer");

        let other = MemoryConsumer::new("HashJoinInput").register(&query);
        other.try_grow(8 << 20).unwrap();
        assert_eq!(pool.pressure(), Pressure::High);
        let before = pool.reserved();
        aggregate.try_grow(1 << 20).unwrap();
        aggregate.try_grow(512 << 10).unwrap();
        assert_eq!(pool.reserved() - before, (1 << 20) + (512 << 10) - BLOCK, "no lead under high pressure (its spare block went first)");
    }

    /// A spillable consumer that spilled keeps a spare block; with a fair share smaller than
    /// that (many consumers), it still gets its next batch, as it would holding nothing.
    #[test]
    fn a_consumer_holding_only_its_spare_block_is_held_to_the_pool_not_its_share() {
        let (budget, _, query) = statement(PoolLimits { query: ByteSize::mib(1), cache: ByteSize(0), ..PoolLimits::default() }, StatementLimits::default());
        let others: Vec<_> = (0..200).map(|i| MemoryConsumer::new(format!("ExternalSorter[{i}]")).with_can_spill(true).register(&query)).collect();
        assert!(budget.spill_share() < BLOCK, "a share of {} bytes", budget.spill_share());
        let sorter = MemoryConsumer::new("ExternalSorter[200]").with_can_spill(true).register(&query);
        sorter.try_grow(12 << 10).unwrap();
        sorter.free();
        assert_eq!(budget.pool(PoolKind::Query).reserved(), BLOCK, "one spare block kept after the spill");
        sorter.try_grow(BLOCK).unwrap();
        sorter.try_grow(BLOCK).unwrap();
        sorter.try_grow(BLOCK).expect_err("holding two blocks, its share applies");
        drop(others);
    }

    #[test]
    fn a_pool_smaller_than_a_block_still_grants_the_bytes_asked() {
        let (budget, _, query) = statement(PoolLimits { query: ByteSize(1000), cache: ByteSize(0), ..PoolLimits::default() }, StatementLimits::default());
        let reservation = MemoryConsumer::new("ExternalSorter[0]").register(&query);
        reservation.try_grow(999).unwrap();
        assert_eq!(budget.pool(PoolKind::Query).reserved(), 999);
        let error = reservation.try_grow(2).unwrap_err().to_string();
        assert!(error.contains("asked for 2B more"), "{error}");
    }

    #[test]
    fn a_query_limit_stops_one_query_before_the_pool() {
        let (_, _, query) = statement(
            PoolLimits { query: ByteSize(1000), cache: ByteSize(0), ..PoolLimits::default() },
            StatementLimits { limit: Some(100), ..StatementLimits::default() },
        );
        let r = MemoryConsumer::new("GroupedHashAggregateStream[0]").register(&query);
        r.try_grow(100).unwrap();
        let error = r.try_grow(1).unwrap_err().to_string();
        assert!(error.contains("this query's memory limit is full") && error.contains("memory.query_limit"), "{error}");
    }

    #[test]
    fn fault_injection_refuses_about_that_fraction_of_requests() {
        let (budget, _, query) = statement(PoolLimits { query: ByteSize(1 << 30), cache: ByteSize(0), ..PoolLimits::default() }, StatementLimits::default());
        budget.set_fault_probability(0.25);
        let r = MemoryConsumer::new("c").register(&query);
        let refused = (0..4000).filter(|_| r.try_grow(1).is_err()).count();
        assert!((800..1200).contains(&refused), "{refused} of 4000 refused at 0.25");
        budget.set_fault_probability(0.0);
        assert!((0..1000).all(|_| r.try_grow(1).is_ok()));
    }

    #[test]
    fn each_statement_is_held_to_its_own_actual_margin() {
        let limits = PoolLimits { query: ByteSize::mib(1), ..PoolLimits::default() };
        let (_, strict, _) = statement(limits, StatementLimits { actual_margin: Margin::Bytes(512 << 10), ..StatementLimits::default() });
        let (_, lenient, _) = statement(limits, StatementLimits { actual_margin: Margin::Fraction(1.5), ..StatementLimits::default() });
        for query in [&strict, &lenient] {
            query.actual().add(2 << 20);
        }
        let error = strict.check_actual().unwrap_err().to_string();
        assert!(error.contains("more than the 1.5MiB it may hold (its 1MiB limit plus the 512KiB margin"), "{error}");
        assert_eq!(strict.rejected(), 1);
        assert!(lenient.check_actual().is_ok(), "1 MiB plus 150 %");
        assert_eq!((strict.actual_margin(), StatementLimits::default().actual_margin), (Margin::Bytes(512 << 10), DEFAULT_ACTUAL_MARGIN));
    }
}

#[cfg(test)]
mod wait {
    use datafusion_execution::memory_pool::MemoryConsumer;

    use super::*;
    use crate::budget::PoolLimits;
    use crate::wait::once_waiting;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_release_on_another_thread_wakes_who_waits_for_the_statement() {
        let (budget, statement, query) = statement(PoolLimits::default(), StatementLimits::default());
        let (sort, join) =
            (MemoryConsumer::new("ExternalSorter[0]").with_can_spill(true).register(&query), MemoryConsumer::new("HashJoinInput").register(&query));
        sort.try_grow(100_000).unwrap();
        join.try_grow(10).unwrap();
        let releaser = once_waiting(
            &statement,
            |statement| statement.released.waiting(),
            move |_| {
                drop(sort);
                drop(join);
            },
        );
        assert!(statement.wait_released(Duration::from_secs(60)).await, "woken by the release that reached 0");
        assert_eq!((statement.reserved_bytes(), budget.pool(PoolKind::Query).reserved()), (0, 0));
        releaser.join().unwrap();
    }

    /// A sort's merge (cannot spill) refused while a sibling sort holds the pool waits; the
    /// sibling's next growth is refused (its share leaves out what the merge wants), it spills,
    /// and the merge gets the room.
    #[test]
    fn a_refused_consumer_that_cannot_spill_gets_the_room_a_spillable_one_gives_back() {
        let (budget, statement, query) =
            statement(PoolLimits { query: ByteSize::mib(1), cache: ByteSize(0), ..PoolLimits::default() }, StatementLimits::default());
        let sort = MemoryConsumer::new("ExternalSorter[0]").with_can_spill(true).register(&query);
        sort.try_grow(900 << 10).unwrap();
        let merge = MemoryConsumer::new("ExternalSorterMerge[1]").register(&query);
        let spiller = once_waiting(
            &budget,
            |budget| budget.pool(PoolKind::Query).waiting(),
            move |_| {
                assert!(sort.try_grow(BLOCK).is_err(), "while the merge waits, the sort's share leaves its bytes out");
                drop(sort);
            },
        );
        merge.try_grow(400 << 10).unwrap();
        spiller.join().unwrap();
        assert_eq!((merge.size(), statement.rejected()), (400 << 10, 1), "granted; only the sort was refused");
    }

    /// When the spillable consumers hold their room and do not grow, the wait ends in the
    /// pool's message, and the statement waits no more.
    #[test]
    fn a_statement_that_waited_in_vain_fails_at_once_next_time() {
        let (budget, statement, query) =
            statement(PoolLimits { query: ByteSize::mib(1), cache: ByteSize(0), ..PoolLimits::default() }, StatementLimits::default());
        let sort = MemoryConsumer::new("ExternalSorter[0]").with_can_spill(true).register(&query);
        sort.try_grow(900 << 10).unwrap();
        let merge = MemoryConsumer::new("ExternalSorterMerge[1]").register(&query);
        let error = merge.try_grow(400 << 10).unwrap_err().to_string();
        assert!(error.contains("the query pool is full: ExternalSorterMerge[1] (query 1) asked for 400KiB"), "{error}");
        assert!(budget.take_events().iter().any(|e| e.action.contains("ExternalSorterMerge[1] of query 1 waited 1s for spillable operators")));
        let started = Instant::now();
        assert!(merge.try_grow(400 << 10).is_err());
        assert!(started.elapsed() < ROOM_WAIT, "no second wait");
        assert_eq!(statement.rejected(), 2);
    }

    /// A scan's request, refused: room held by the join reading its batches is not waited for
    /// (the join gives it back only once it finishes), nor room a sort reading them holds (it
    /// spills only at its next growth); room held by a branch beside the scan is, and the scan
    /// is told when it comes back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_request_waits_for_a_branch_beside_it_never_for_its_readers() {
        let (budget, statement, query) =
            statement(PoolLimits { query: ByteSize::mib(4), cache: ByteSize(0), ..PoolLimits::default() }, StatementLimits::default());
        let join = Arc::new(NodeMemory::read_by(None));
        let (scan, beside) = (Arc::new(NodeMemory::read_by(Some(&join))), Arc::new(NodeMemory::read_by(Some(&join))));
        let build = registering_for(&join, || MemoryConsumer::new("HashJoinInput").register(&query));
        let read = registering_for(&scan, || MemoryConsumer::new("ParquetScan[0]").register(&query));
        let branch = registering_for(&beside, || MemoryConsumer::new("ParquetScan[1]").register(&query));
        build.try_grow(3 << 20).unwrap();
        assert!(read.try_grow(2 << 20).is_err());
        let started = Instant::now();
        assert_eq!(statement.wait_for_room(&read, 2 << 20, Duration::from_secs(60)).await, RoomWait::WouldNotCome { readers: 3 << 20 });
        assert!(started.elapsed() < Duration::from_secs(60), "no wait");
        drop(build);

        // A sort reading the scan spills only at its next growth, after the scan's rows.
        let sort = registering_for(&join, || MemoryConsumer::new("ExternalSorter[0]").with_can_spill(true).register(&query));
        sort.try_grow(3 << 20).unwrap();
        assert!(read.try_grow(2 << 20).is_err());
        assert_eq!(statement.wait_for_room(&read, 2 << 20, Duration::from_secs(60)).await, RoomWait::AfterReadersSpill);
        drop(sort);

        branch.try_grow(3 << 20).unwrap();
        assert!(read.try_grow(2 << 20).is_err());
        let releaser = once_waiting(&budget, |budget| budget.pool(PoolKind::Query).waiting(), move |_| drop(branch));
        assert_eq!(statement.wait_for_room(&read, 2 << 20, Duration::from_secs(60)).await, RoomWait::Room, "woken by the branch's release");
        releaser.join().unwrap();
        read.try_grow(2 << 20).unwrap();
        assert_eq!(statement.wait_for_room(&read, 3 << 20, Duration::from_millis(20)).await, RoomWait::WouldNotCome { readers: 0 }, "past the pool");
        assert!(budget.take_events().iter().any(|e| e.action.contains("ParquetScan[0] of query 1 waited") && e.action.ends_with("and it came")));
    }

    #[tokio::test]
    async fn waiting_for_a_statement_times_out_while_it_holds_memory() {
        let (_, statement, query) = statement(PoolLimits::default(), StatementLimits::default());
        let sort = MemoryConsumer::new("ExternalSorter[0]").register(&query);
        sort.try_grow(1).unwrap();
        assert!(!statement.wait_released(Duration::from_millis(20)).await);
        sort.shrink(1);
        assert!(!statement.wait_released(Duration::ZERO).await, "a spare block is held until the consumer goes");
        let idle = MemoryConsumer::new("AggregateStream[1]").register(&query);
        drop(sort);
        assert!(!statement.wait_released(Duration::ZERO).await, "an operator still registered may reserve again");
        drop(idle);
        assert!(statement.wait_released(Duration::ZERO).await, "nothing held, nobody registered: no wait");
    }
}

#[cfg(test)]
mod pressure {
    use datafusion_execution::memory_pool::MemoryConsumer;

    use super::*;
    use crate::budget::PoolLimits;

    /// The largest a spillable consumer can grow to, in 8 KiB steps, before it is told to spill.
    fn grows_to(reservation: &MemoryReservation) -> usize {
        while reservation.try_grow(BLOCK).is_ok() {}
        reservation.size()
    }

    #[test]
    fn under_high_pressure_new_spillable_consumers_spill_at_half_their_share() {
        let (budget, _, query) = statement(PoolLimits { query: ByteSize::mib(1), cache: ByteSize(0), ..PoolLimits::default() }, StatementLimits::default());
        let before = MemoryConsumer::new("ExternalSorter[0]").with_can_spill(true).register(&query);
        let join = MemoryConsumer::new("HashJoinInput").register(&query);
        join.try_grow(840 << 10).unwrap();
        assert_eq!(budget.pool(PoolKind::Query).pressure(), Pressure::High);
        let after = MemoryConsumer::new("ExternalSorter[1]").with_can_spill(true).register(&query);
        // Two spillable consumers share the 184 KiB the join leaves: 92 KiB each.
        assert_eq!(grows_to(&after), 40 << 10, "registered under high pressure: half of its 92 KiB share, in whole blocks");
        assert_eq!(grows_to(&before), 88 << 10, "registered before: its whole share");
        assert!(budget
            .take_events()
            .iter()
            .any(|e| e.action.contains("ExternalSorter[1] of query 1 spills at half its fair share") && e.level == Pressure::High));
    }
}
