//! One partition of the spilling join, from its build to its last output batch.
//!
//! ```text
//!   build ──► held in memory, each batch reserved ──(all fit)──► DataFusion's hash join ──► out
//!                    │ (a reservation refused: switch)                  ▲ probe streamed
//!                    ▼
//!   build and probe scattered into 16 bucket pairs (spill files), then bucket by bucket:
//!     build bucket fits ──► DataFusion's hash join over it, probe bucket read back ──► out
//!     else, above depth 3 and not skewed ──► split both into 8 with the next level's hash
//!     else (skew: nearly every row has one key) ──► chunked: as much of the held side as fits,
//!          joined against the other side read back in full, chunk after chunk
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use datafusion::arrow::array::{new_null_array, ArrayRef, RecordBatch};
use datafusion::arrow::compute::{filter_record_batch, is_not_null};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::utils::memory::RecordBatchMemoryCounter;
use datafusion::common::{DataFusionError, JoinType, Result};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::metrics::{Count, ExecutionPlanMetricsSet, Gauge, MetricBuilder, SpillMetrics};
use datafusion::physical_plan::spill::SpillManager;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::EmptyRecordBatchStream;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};

use super::bucket_pool::BucketPool;
use super::buckets::{Bucket, Scatter, Scattered};
use super::shared::{GatheredProbes, SharedBuild};
use super::spec::{table_bytes, JoinSpec, Unasked};

/// Buckets of the first scatter, and of each re-split of a bucket too big to hold.
const FIRST_FANOUT: usize = 16;
const SPLIT_FANOUT: usize = 8;
/// Re-splits of one bucket before it is joined in chunks.
const MAX_DEPTH: usize = 3;
/// A re-split that leaves more than this share of a bucket's rows in one child is skew (one
/// key in most rows): that child is joined in chunks, not split again.
const SKEW_SHARE: f64 = 0.9;
/// How often a chunk asks for its first batch before the join fails.
const FIRST_BATCH_TRIES: usize = 3;
/// What the operators around held builds keep at least, when half of the statement's memory
/// is more: they need a batch or a merge's headroom per partition, not a share that grows with
/// the budget (at 175 MiB, TPC-H q7's and q9's builds then fit instead of spilling).
const ROOM_BESIDE_HELD_BUILDS: usize = 48 << 20;

/// What holding build batches for DataFusion's join costs, batch by batch: their buffers not
/// counted yet (batches read back from a spill file share the chunk they were decoded from; an
/// aggregate's output batches share its buffers), the one copy the join makes of all of them
/// (it concatenates them), and its table for that many rows.
#[derive(Default)]
struct HeldCost {
    counted: RecordBatchMemoryCounter,
    bytes: usize,
    rows: usize,
}

impl HeldCost {
    /// The bytes holding `batch` adds, the join's copy and table for it included.
    fn add(&mut self, batch: &RecordBatch) -> usize {
        let before = self.projected();
        self.hold(batch);
        self.projected().saturating_sub(before)
    }

    /// The bytes of `batch` not counted yet (what holding it takes now; the join's copy and
    /// table come with [`HeldCost::projected`]).
    fn hold(&mut self, batch: &RecordBatch) -> usize {
        let added = self.counted.count_batch(batch);
        self.bytes += added;
        self.rows += batch.num_rows();
        added
    }

    /// What the held batches cost once DataFusion's join has them: the batches, the copy it
    /// concatenates them into, and its table.
    fn projected(&self) -> usize {
        (2 * self.bytes).saturating_add(table_bytes(self.rows))
    }
}

/// The join's own metrics, beside the spill metrics (`spill_count`, `spilled_bytes`,
/// `spilled_rows`) its spill files add.
#[derive(Clone)]
pub(super) struct JoinMetrics {
    /// Buckets made by scattering and re-splitting, the build's and the probe's.
    buckets: Count,
    /// Buckets written to a spill file.
    spilled_buckets: Count,
    /// In-memory joins run: one when the build fits, else one per bucket or chunk.
    rounds: Count,
    /// The deepest re-split.
    max_depth: Gauge,
    /// Skewed buckets joined in chunks.
    chunked_builds: Count,
    /// Builds that outgrew memory while running and switched to buckets.
    runtime_switches: Count,
    spill: SpillMetrics,
}

impl JoinMetrics {
    pub fn new(metrics: &ExecutionPlanMetricsSet, partition: usize) -> Self {
        let counter = |name: &'static str| MetricBuilder::new(metrics).counter(name, partition);
        Self {
            buckets: counter("buckets"),
            spilled_buckets: counter("spilled_buckets"),
            rounds: counter("rounds"),
            max_depth: MetricBuilder::new(metrics).gauge("max_depth", partition),
            chunked_builds: counter("chunked_builds"),
            runtime_switches: counter("runtime_switches"),
            spill: SpillMetrics::new(metrics, partition),
        }
    }
}

pub(super) struct PartitionJoin {
    spec: Arc<JoinSpec>,
    partition: usize,
    ctx: Arc<TaskContext>,
    metrics: JoinMetrics,
    build_spill: Arc<SpillManager>,
    probe_spill: Arc<SpillManager>,
    /// `NOT IN` over a non-empty set without NULL: build rows whose key is NULL are not output.
    drop_null_build_keys: AtomicBool,
}

impl PartitionJoin {
    pub fn new(spec: Arc<JoinSpec>, partition: usize, ctx: Arc<TaskContext>, metrics: JoinMetrics) -> Self {
        let spill = |schema: &SchemaRef| {
            Arc::new(
                SpillManager::new(ctx.runtime_env(), metrics.spill.clone(), Arc::clone(schema)).with_compression_type(ctx.session_config().spill_compression()),
            )
        };
        Self {
            build_spill: spill(&spec.left_schema),
            probe_spill: spill(&spec.right_schema),
            spec,
            partition,
            ctx,
            metrics,
            drop_null_build_keys: AtomicBool::new(false),
        }
    }

    fn reservation(&self) -> MemoryReservation {
        MemoryConsumer::new(format!("SpillingHashJoin[{}]", self.partition)).with_can_spill(true).register(self.ctx.memory_pool())
    }

    /// The reservation of a build (or bucket) held for DataFusion's join. It asks as that join
    /// does (a consumer that cannot spill): for what the pool and its borrowing allow, not just a
    /// spilling operator's fair share, as one table is much faster than more buckets; its first
    /// refusal still makes the join spill.
    fn holding_reservation(&self) -> MemoryReservation {
        MemoryConsumer::new(format!("SpillingHashJoinBuild[{}]", self.partition)).register(self.ctx.memory_pool())
    }

    /// A held build as the input of one more in-memory join (a round).
    fn round_over(&self, held: Vec<RecordBatch>) -> SendableRecordBatchStream {
        self.metrics.rounds.add(1);
        memory_stream(&self.spec.left_schema, held)
    }

    fn empty(&self) -> SendableRecordBatchStream {
        Box::pin(EmptyRecordBatchStream::new(Arc::clone(&self.spec.schema)))
    }

    fn scatter_build(&self, fanout: usize, level: usize) -> Scatter {
        let keys: Vec<_> = self.spec.on.iter().map(|(left, _)| Arc::clone(left)).collect();
        Scatter::new(&self.build_spill, &keys, fanout, level, self.ctx.session_config().batch_size(), self.reservation())
            .dropping_null_keys(self.spec.drops_null_build_keys())
    }

    fn scatter_probe(&self, fanout: usize, level: usize) -> Scatter {
        let keys: Vec<_> = self.spec.on.iter().map(|(_, right)| Arc::clone(right)).collect();
        Scatter::new(&self.probe_spill, &keys, fanout, level, self.ctx.session_config().batch_size(), self.reservation())
            .dropping_null_keys(self.spec.drops_null_probe_keys())
    }

    /// Holds the build while it fits and joins in memory; the first refused reservation
    /// switches to buckets. `holders`: the partitions holding their builds at the same time.
    pub async fn run(self: Arc<Self>, build: SendableRecordBatchStream, probe: SendableRecordBatchStream, holders: usize) -> Result<SendableRecordBatchStream> {
        match self.hold_build(build, holders).await? {
            Holding::Fit(held, reservation) => {
                let pool = BucketPool::new(reservation);
                let probe = settling(probe, &pool, self.spec.unasked(&held));
                self.spec.in_memory(self.round_over(held), probe, pool, &self.ctx, self.spec.null_aware, false)
            }
            Holding::Outgrew(held, rest, reservation) => {
                let builds = self.scatter_build_rows(held, rest, reservation).await?;
                let probes = self.scatter_probe_rows(probe).await?;
                Ok(self.grace(builds, probes))
            }
        }
    }

    /// Reads the build that every partition of the probe shares (this partition came first):
    /// held for one in-memory join while it fits, else scattered into buckets.
    pub async fn read_shared_build(self: Arc<Self>, build: SendableRecordBatchStream, partitions: usize) -> Result<SharedBuild> {
        Ok(match self.hold_build(build, 1).await? {
            Holding::Fit(held, reservation) => {
                let (pool, unasked) = (BucketPool::new(reservation), self.spec.unasked(&held));
                let join = self.spec.shared_in_memory(self.round_over(held), partitions, Arc::clone(&pool) as _, &self.ctx)?;
                SharedBuild::Held { join, pool, unasked }
            }
            Holding::Outgrew(held, rest, reservation) => {
                SharedBuild::Scattered { builds: self.scatter_build_rows(held, rest, reservation).await?, probes: GatheredProbes::new(partitions) }
            }
        })
    }

    /// This partition's probe joined with the shared build. Scattered, a join whose build rows
    /// are output by what no probe row matched is joined once, over every partition's buckets,
    /// by the last partition to scatter its probe; the others output nothing.
    pub async fn run_shared(self: Arc<Self>, build: Arc<SharedBuild>, probe: SendableRecordBatchStream) -> Result<SendableRecordBatchStream> {
        match &*build {
            SharedBuild::Held { join, pool, unasked } => join.execute(self.partition, settling(probe, pool, *unasked)),
            SharedBuild::Scattered { builds, probes } => {
                let mine = self.scatter_probe_rows(probe).await?;
                if self.spec.probe_rows_independent() {
                    return Ok(self.grace(builds.clone(), mine));
                }
                Ok(match probes.hand_in(mine) {
                    Some(every_partitions) => self.grace(builds.clone(), every_partitions),
                    None => self.empty(),
                })
            }
        }
    }

    /// The build held while its reservations are granted (each batch as it comes; what
    /// DataFusion's join will make of them once all are held), and while that projected cost is
    /// within its part of what the statement could hold (with what it may borrow): `holders`
    /// partitions hold builds at once, and together they leave half of it, or
    /// [`ROOM_BESIDE_HELD_BUILDS`] when that is less, to the operators around them (an
    /// aggregate, another partition's first batch): builds that took all of it would leave
    /// those nothing, a failed query, not a spill.
    async fn hold_build(&self, mut build: SendableRecordBatchStream, holders: usize) -> Result<Holding> {
        let reservation = self.holding_reservation();
        let holdable = self.spec.holdable;
        let part = (holdable / 2).max(holdable.saturating_sub(ROOM_BESIDE_HELD_BUILDS)) / holders.max(1);
        let mut cost = HeldCost::default();
        let mut held = vec![];
        while let Some(batch) = build.next().await {
            let batch = batch?;
            let refused = reservation.try_grow(cost.hold(&batch)).is_err() || cost.projected() > part;
            held.push(batch);
            if refused {
                self.metrics.runtime_switches.add(1);
                return Ok(Holding::Outgrew(held, build, reservation));
            }
        }
        // What DataFusion's join will make of them, reserved before it does (so it is not
        // refused half-way); refused, the build spills as if a batch had been.
        if reservation.try_grow(cost.projected().saturating_sub(reservation.size())).is_err() {
            self.metrics.runtime_switches.add(1);
            return Ok(Holding::Outgrew(held, build, reservation));
        }
        Ok(Holding::Fit(held, reservation))
    }

    /// Scatters what was held and the rest of the build into buckets.
    async fn scatter_build_rows(&self, held: Vec<RecordBatch>, mut rest: SendableRecordBatchStream, reservation: MemoryReservation) -> Result<Scattered> {
        let mut builds = self.scatter_build(FIRST_FANOUT, 0);
        for batch in held {
            builds.push(&batch)?;
        }
        reservation.free();
        while let Some(batch) = rest.next().await {
            builds.push(&batch?)?;
        }
        let builds = builds.finish()?;
        self.metrics.buckets.add(FIRST_FANOUT);
        self.metrics.spilled_buckets.add(builds.written());
        Ok(builds)
    }

    /// Scatters the probe into buckets beside the build's.
    async fn scatter_probe_rows(&self, mut probe: SendableRecordBatchStream) -> Result<Scattered> {
        let mut probes = self.scatter_probe(FIRST_FANOUT, 0);
        while let Some(batch) = probe.next().await {
            probes.push(&batch?)?;
        }
        let probes = probes.finish()?;
        self.metrics.buckets.add(FIRST_FANOUT);
        self.metrics.spilled_buckets.add(probes.written());
        Ok(probes)
    }

    /// Joins the build's buckets with the probe's, one pair at a time.
    fn grace(self: Arc<Self>, builds: Scattered, probes: Scattered) -> SendableRecordBatchStream {
        if self.spec.null_aware {
            // `x NOT IN (subquery)`: a NULL among the subquery's values makes every row's test
            // unknown, so none is output; any value at all makes a NULL `x` unknown.
            if probes.null_key {
                return self.empty();
            }
            self.drop_null_build_keys.store(probes.rows() > 0, Ordering::Relaxed);
        }
        self.join_buckets(builds, probes, 0)
    }

    /// The joins of bucket pairs, one after the other.
    fn join_buckets(self: &Arc<Self>, builds: Scattered, probes: Scattered, depth: usize) -> SendableRecordBatchStream {
        let this = Arc::clone(self);
        let pairs = builds.buckets.into_iter().zip(probes.buckets);
        let joined = futures::stream::iter(pairs).then(move |(build, probe)| Arc::clone(&this).join_pair(build, probe, depth)).try_flatten();
        Box::pin(RecordBatchStreamAdapter::new(Arc::clone(&self.spec.schema), joined))
    }

    fn join_pair(self: Arc<Self>, build: Bucket, probe: Bucket, depth: usize) -> BoxFuture<'static, Result<SendableRecordBatchStream>> {
        async move {
            if self.spec.emits_nothing(build.rows == 0, probe.rows == 0) {
                return Ok(self.empty());
            }
            if !build.skewed {
                let reservation = self.holding_reservation();
                if let Some(held) = self.hold(&build, &reservation).await? {
                    let pool = BucketPool::new(reservation);
                    let probe = settling(probe.read(&self.probe_spill)?, &pool, self.spec.unasked(&held));
                    return self.spec.in_memory(self.round_over(held), probe, pool, &self.ctx, false, false);
                }
            }
            if build.skewed || depth >= MAX_DEPTH {
                return self.chunked(build, probe);
            }
            let level = depth + 1;
            let mut builds = build.split(self.scatter_build(SPLIT_FANOUT, level)).await?;
            let probes = probe.split(self.scatter_probe(SPLIT_FANOUT, level)).await?;
            for child in &mut builds.buckets {
                child.skewed = child.rows as f64 > SKEW_SHARE * build.rows as f64;
            }
            self.metrics.buckets.add(2 * SPLIT_FANOUT);
            self.metrics.spilled_buckets.add(builds.written() + probes.written());
            self.metrics.max_depth.set_max(level);
            Ok(self.join_buckets(builds, probes, level))
        }
        .boxed()
    }

    /// A build bucket's rows in memory, reserved; `None` (and nothing reserved) when they do
    /// not fit.
    async fn hold(&self, bucket: &Bucket, reservation: &MemoryReservation) -> Result<Option<Vec<RecordBatch>>> {
        let mut rows = bucket.read(&self.build_spill)?;
        let mut cost = HeldCost::default();
        let mut held = vec![];
        while let Some(batch) = rows.next().await {
            let batch = self.kept_build_rows(batch?)?;
            if reservation.try_grow(cost.add(&batch)).is_err() {
                reservation.free();
                return Ok(None);
            }
            held.push(batch);
        }
        Ok(Some(held))
    }

    fn kept_build_rows(&self, batch: RecordBatch) -> Result<RecordBatch> {
        if !self.drop_null_build_keys.load(Ordering::Relaxed) {
            return Ok(batch);
        }
        let key = self.spec.on[0].0.evaluate(&batch)?.into_array(batch.num_rows())?;
        Ok(filter_record_batch(&batch, &is_not_null(&key)?)?)
    }

    /// A bucket too big to hold that will not split: as much of one side as fits is held and
    /// joined against the other side read back in full, chunk after chunk. Which side is held:
    /// the build, when each build row's output depends on it alone against every probe row
    /// (inner, left, left semi/anti/mark); the probe for the right-side joins, whose join is
    /// then planned the other way round. A full join is both: a left join with the build held
    /// (every build row, matched or not), then the probe rows no build row matches (an anti join
    /// with the probe held), their build columns NULL.
    fn chunked(self: Arc<Self>, build: Bucket, probe: Bucket) -> Result<SendableRecordBatchStream> {
        self.metrics.chunked_builds.add(1);
        let spec = &self.spec;
        let joined = match spec.join_type {
            JoinType::Inner | JoinType::Left | JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => {
                self.chunks(Arc::clone(spec), &build, &probe, false, Reshape::AsIs)?
            }
            JoinType::Right | JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => {
                self.chunks(Arc::clone(spec), &probe, &build, true, Reshape::AsIs)?
            }
            JoinType::Full => {
                let left = JoinSpec { join_type: JoinType::Left, ..JoinSpec::clone(spec) };
                let unmatched = JoinSpec { join_type: JoinType::RightAnti, projection: None, ..JoinSpec::clone(spec) };
                let every_build_row = self.chunks(Arc::new(left), &build, &probe, false, Reshape::AsFull)?;
                let unmatched_probe_rows = self.chunks(Arc::new(unmatched), &probe, &build, true, Reshape::NullBuild)?;
                Box::pin(RecordBatchStreamAdapter::new(Arc::clone(&spec.schema), every_build_row.chain(unmatched_probe_rows)))
            }
        };
        Ok(joined)
    }

    /// `spec`'s join of `held` (read a chunk at a time) against all of `streamed`, each chunk's
    /// output reshaped to this join's.
    fn chunks(self: &Arc<Self>, spec: Arc<JoinSpec>, held: &Bucket, streamed: &Bucket, swapped: bool, reshape: Reshape) -> Result<SendableRecordBatchStream> {
        let (held_spill, held_schema) = if swapped { (&self.probe_spill, &spec.right_schema) } else { (&self.build_spill, &spec.left_schema) };
        let (rows, schema) = (held.read(held_spill)?, Arc::clone(held_schema));
        let chunks = Chunks { join: Arc::clone(self), spec, rows, schema, next: None, streamed_side: streamed.clone(), swapped };
        let joined = futures::stream::try_unfold(chunks, |mut chunks| async move {
            let Some((held, reservation)) = chunks.next_chunk().await? else { return Ok::<_, DataFusionError>(None) };
            let join = &chunks.join;
            join.metrics.rounds.add(1);
            let held = memory_stream(&chunks.schema, held);
            let streamed = chunks.streamed_side.read(if chunks.swapped { &join.build_spill } else { &join.probe_spill })?;
            let (left, right) = if chunks.swapped { (streamed, held) } else { (held, streamed) };
            let out = chunks.spec.in_memory(left, right, BucketPool::new(reservation), &join.ctx, false, chunks.swapped)?;
            Ok(Some((out, chunks)))
        })
        .try_flatten();
        let this = Arc::clone(self);
        let reshaped = joined.and_then(move |batch| futures::future::ready(this.reshape(reshape, batch)));
        Ok(Box::pin(RecordBatchStreamAdapter::new(Arc::clone(&self.spec.schema), reshaped)))
    }

    fn reshape(&self, reshape: Reshape, batch: RecordBatch) -> Result<RecordBatch> {
        let schema = Arc::clone(&self.spec.schema);
        let columns = match reshape {
            Reshape::AsIs => return Ok(batch),
            Reshape::AsFull => batch.columns().to_vec(),
            Reshape::NullBuild => {
                let rows = batch.num_rows();
                let nulls = self.spec.left_schema.fields().iter().map(|field| new_null_array(field.data_type(), rows));
                let joined: Vec<ArrayRef> = nulls.chain(batch.columns().iter().cloned()).collect();
                match &self.spec.projection {
                    Some(projection) => projection.iter().map(|&i| Arc::clone(&joined[i])).collect(),
                    None => joined,
                }
            }
        };
        Ok(RecordBatch::try_new(schema, columns)?)
    }
}

/// The build after holding it: all of it, reserved; or what was held when a reservation was
/// refused, and the rest still to read.
enum Holding {
    Fit(Vec<RecordBatch>, MemoryReservation),
    Outgrew(Vec<RecordBatch>, SendableRecordBatchStream, MemoryReservation),
}

/// How a chunked join's output becomes this join's.
#[derive(Clone, Copy)]
enum Reshape {
    AsIs,
    /// A left join's rows under a full join's schema (its build columns nullable too).
    AsFull,
    /// An anti join's probe rows with NULL build columns, as a full join outputs them.
    NullBuild,
}

/// The held side of a chunked join, read a chunk at a time.
struct Chunks {
    join: Arc<PartitionJoin>,
    spec: Arc<JoinSpec>,
    rows: SendableRecordBatchStream,
    schema: SchemaRef,
    /// A batch read that did not fit the last chunk: the next one starts with it.
    next: Option<RecordBatch>,
    streamed_side: Bucket,
    swapped: bool,
}

impl Chunks {
    /// As many batches as can be reserved, with their reservation; `None` at the end.
    async fn next_chunk(&mut self) -> Result<Option<(Vec<RecordBatch>, MemoryReservation)>> {
        let reservation = self.join.reservation();
        let mut cost = HeldCost::default();
        let mut held = vec![];
        loop {
            let batch = match self.next.take() {
                Some(batch) => batch,
                None => match self.rows.next().await {
                    Some(batch) if self.swapped => batch?,
                    Some(batch) => self.join.kept_build_rows(batch?)?,
                    None => break,
                },
            };
            if batch.num_rows() == 0 {
                continue;
            }
            let added = cost.add(&batch);
            if let Err(refused) = reservation.try_grow(added) {
                if !held.is_empty() {
                    self.next = Some(batch);
                    break;
                }
                // A chunk holds at least one batch, or the join cannot go on: asked again
                // (a refusal may be passing), then the join fails cleanly.
                if (1..FIRST_BATCH_TRIES).all(|_| reservation.try_grow(added).is_err()) {
                    return Err(refused);
                }
            }
            held.push(batch);
        }
        Ok((!held.is_empty()).then_some((held, reservation)))
    }
}

/// The probe of DataFusion's join over a held build, which settles the join's memory at its
/// first poll: DataFusion reads the probe only once its table is built and its concatenated
/// copy of the build has replaced the held batches, so from then on one copy is held, not the
/// two that [`HeldCost`] reserved. What stays: what the join was granted and what it holds
/// without asking while it probes; when the probe ends, what it makes without asking at its
/// end is reserved too ([`JoinSpec::unasked`]).
fn settling(probe: SendableRecordBatchStream, pool: &Arc<BucketPool>, unasked: Unasked) -> SendableRecordBatchStream {
    let settle = |pool: Arc<BucketPool>, unreserved: usize| {
        futures::stream::once(async move {
            pool.settle(unreserved);
            None
        })
        .filter_map(futures::future::ready)
    };
    let schema = probe.schema();
    let settled = settle(Arc::clone(pool), unasked.probing).chain(probe).chain(settle(Arc::clone(pool), unasked.ending));
    Box::pin(RecordBatchStreamAdapter::new(schema, settled))
}

/// Batches in memory as a stream that gives each one away (so the join's copy of them is
/// the only one left once it has built its table).
fn memory_stream(schema: &SchemaRef, batches: Vec<RecordBatch>) -> SendableRecordBatchStream {
    Box::pin(RecordBatchStreamAdapter::new(Arc::clone(schema), futures::stream::iter(batches.into_iter().map(Ok))))
}
