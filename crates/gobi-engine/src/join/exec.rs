//! The spilling hash join as a plan node, and how it plans DataFusion's in-memory join over
//! one build.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::utils::memory::RecordBatchMemoryCounter;
use datafusion::common::{internal_err, JoinType, NullEquality, Result, Statistics};
use datafusion::execution::memory_pool::MemoryPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{Distribution, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::joins::utils::{JoinFilter, JoinOn};
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::{ChildStats, DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, StatisticsArgs};
use futures::{StreamExt, TryStreamExt};
use parking_lot::Mutex;

use super::partition::{hash_chain_bytes, rows_of, JoinMetrics, PartitionJoin};
use super::shared::SharedSlot;

/// What DataFusion's hash join holds or makes without reserving it, beside what it reserves.
#[derive(Debug, Clone, Copy)]
pub(super) struct Unasked {
    /// While it probes: the chain of equal hashes of its table.
    pub probing: usize,
    /// When its probe has ended: the chain, and for a join that outputs build rows at its end
    /// (left, full, left semi, anti and mark joins) that output, made at once from its
    /// concatenated build: the rows' indices (a `u64` and a `u32` each) and a batch of up to
    /// every build row (TPC-H q4's semi join: 2.2 MB unreserved beside a 2.5 MB table).
    pub ending: usize,
}

/// What a join is, apart from its inputs: enough to plan DataFusion's hash join over any pair
/// of inputs with the same schemas.
#[derive(Debug, Clone)]
pub(super) struct JoinSpec {
    pub left_schema: SchemaRef,
    pub right_schema: SchemaRef,
    /// The join's output.
    pub schema: SchemaRef,
    pub on: JoinOn,
    pub filter: Option<JoinFilter>,
    pub join_type: JoinType,
    pub projection: Option<Vec<usize>>,
    pub null_equality: NullEquality,
    /// `NOT IN`: a NULL on either side changes the answer for every row.
    pub null_aware: bool,
    /// What the statement could hold: the bound of its held builds (`PartitionJoin::hold_build`).
    pub holdable: usize,
}

impl JoinSpec {
    /// Whether a pair of buckets cannot produce a row: (build empty, probe empty).
    pub fn emits_nothing(&self, build_empty: bool, probe_empty: bool) -> bool {
        match self.join_type {
            JoinType::Inner | JoinType::LeftSemi | JoinType::RightSemi => build_empty || probe_empty,
            JoinType::Left | JoinType::LeftAnti | JoinType::LeftMark => build_empty,
            JoinType::Right | JoinType::RightAnti | JoinType::RightMark => probe_empty,
            JoinType::Full => build_empty && probe_empty,
        }
    }

    /// Whether build rows with a NULL key may be dropped before they are held: they match
    /// nothing, and this join does not output unmatched build rows.
    pub fn drops_null_build_keys(&self) -> bool {
        let never_output =
            matches!(self.join_type, JoinType::Inner | JoinType::LeftSemi | JoinType::RightSemi | JoinType::Right | JoinType::RightAnti | JoinType::RightMark);
        never_output && !self.null_aware && self.null_equality == NullEquality::NullEqualsNothing
    }

    /// Whether probe rows with a NULL key may be dropped: likewise for unmatched probe rows.
    pub fn drops_null_probe_keys(&self) -> bool {
        let never_output =
            matches!(self.join_type, JoinType::Inner | JoinType::LeftSemi | JoinType::RightSemi | JoinType::Left | JoinType::LeftAnti | JoinType::LeftMark);
        never_output && !self.null_aware && self.null_equality == NullEquality::NullEqualsNothing
    }

    /// What DataFusion's join over the `held` build batches holds or makes without asking,
    /// beside what it reserves (its batches and map).
    pub fn unasked(&self, held: &[RecordBatch]) -> Unasked {
        let rows = rows_of(held);
        let build_rows_at_end = matches!(self.join_type, JoinType::Left | JoinType::Full | JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark);
        let output = match build_rows_at_end {
            true => {
                let mut counted = RecordBatchMemoryCounter::default();
                rows * (size_of::<u64>() + size_of::<u32>()) + held.iter().map(|batch| counted.count_batch(batch)).sum::<usize>()
            }
            false => 0,
        };
        Unasked { probing: hash_chain_bytes(rows), ending: hash_chain_bytes(rows) + output }
    }

    /// Whether each probe row's output depends on the build alone, not on the other probe rows:
    /// then each partition of the probe can be joined on its own against the whole build, even
    /// when that build is in buckets. (The other joins output build rows by what no probe row
    /// of any partition matched: their buckets are joined once, over every partition's probe.)
    pub fn probe_rows_independent(&self) -> bool {
        matches!(self.join_type, JoinType::Inner | JoinType::Right | JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark) && !self.null_aware
    }

    /// DataFusion's in-memory hash join of `left` and `right` (streams of the two inputs'
    /// rows), with its memory from `pool`. It builds its table from `left`, or from `right`
    /// when `swapped` (the join planned the other way round, as DataFusion swaps joins).
    pub fn in_memory(
        &self,
        left: SendableRecordBatchStream,
        right: SendableRecordBatchStream,
        pool: Arc<dyn MemoryPool>,
        ctx: &Arc<TaskContext>,
        null_aware: bool,
        swapped: bool,
    ) -> Result<SendableRecordBatchStream> {
        let plan = self.in_memory_plan(left, one_shot(right)?, null_aware, swapped)?;
        plan.execute(0, pooled_context(ctx, pool)?)
    }

    /// DataFusion's in-memory hash join of a build that fit against `partitions` partitions
    /// of the probe, sharing one table as its CollectLeft joins do: the join, where each
    /// partition's probe stream is handed in before that partition is executed, and the
    /// context to execute it in (memory from `pool`).
    pub fn shared_in_memory(
        &self,
        build: SendableRecordBatchStream,
        partitions: usize,
        pool: Arc<dyn MemoryPool>,
        ctx: &Arc<TaskContext>,
    ) -> Result<SharedJoin> {
        let probes: Vec<Arc<OneShot>> = (0..partitions).map(|_| OneShot::waiting(&self.right_schema)).collect();
        let streams = probes.iter().map(|probe| Arc::clone(probe) as Arc<dyn PartitionStream>).collect();
        let right = Arc::new(StreamingTableExec::try_new(Arc::clone(&self.right_schema), streams, None, vec![], false, None)?);
        let join = self.in_memory_plan(build, right, false, false)?;
        Ok(SharedJoin { join, probes, ctx: pooled_context(ctx, pool)? })
    }

    fn in_memory_plan(
        &self,
        left: SendableRecordBatchStream,
        right: Arc<dyn ExecutionPlan>,
        null_aware: bool,
        swapped: bool,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let join = HashJoinExec::try_new(
            one_shot(left)?,
            right,
            self.on.clone(),
            self.filter.clone(),
            &self.join_type,
            self.projection.clone(),
            PartitionMode::CollectLeft,
            self.null_equality,
            null_aware,
        )?;
        Ok(if swapped { join.swap_inputs(PartitionMode::CollectLeft)? } else { Arc::new(join) })
    }
}

/// `ctx` with its memory from `pool`.
fn pooled_context(ctx: &Arc<TaskContext>, pool: Arc<dyn MemoryPool>) -> Result<Arc<TaskContext>> {
    let runtime = RuntimeEnvBuilder::from_runtime_env(&ctx.runtime_env()).with_memory_pool(pool).build_arc()?;
    Ok(Arc::new(crate::task_context::copied(ctx).with_runtime(runtime)))
}

/// DataFusion's join over a shared build that fit (see [`JoinSpec::shared_in_memory`]).
pub(super) struct SharedJoin {
    join: Arc<dyn ExecutionPlan>,
    probes: Vec<Arc<OneShot>>,
    ctx: Arc<TaskContext>,
}

impl SharedJoin {
    /// Partition `partition` of the join, over `probe`.
    pub fn execute(&self, partition: usize, probe: SendableRecordBatchStream) -> Result<SendableRecordBatchStream> {
        match self.probes.get(partition) {
            Some(slot) => *slot.stream.lock() = Some(probe),
            None => return internal_err!("the spilling join's shared build has no probe partition {partition}"),
        }
        self.join.execute(partition, Arc::clone(&self.ctx))
    }
}

/// A plan leaf that hands out one stream, once: the inputs of DataFusion's join inside the
/// spilling join (rows held in memory, the probe as it comes, a spill file read back).
pub(super) struct OneShot {
    schema: SchemaRef,
    stream: Mutex<Option<SendableRecordBatchStream>>,
}

impl fmt::Debug for OneShot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OneShot")
    }
}

impl PartitionStream for OneShot {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        match self.stream.lock().take() {
            Some(stream) => stream,
            None => Box::pin(RecordBatchStreamAdapter::new(
                Arc::clone(&self.schema),
                futures::stream::once(async { internal_err!("an input of the spilling join's in-memory join was read twice, or never handed in") }),
            )),
        }
    }
}

impl OneShot {
    /// A leaf whose stream is handed in later.
    fn waiting(schema: &SchemaRef) -> Arc<Self> {
        Arc::new(Self { schema: Arc::clone(schema), stream: Mutex::new(None) })
    }
}

fn one_shot(stream: SendableRecordBatchStream) -> Result<Arc<dyn ExecutionPlan>> {
    let schema = stream.schema();
    let partition = Arc::new(OneShot { schema: Arc::clone(&schema), stream: Mutex::new(Some(stream)) });
    Ok(Arc::new(StreamingTableExec::try_new(schema, vec![partition], None, vec![], false, None)?))
}

/// How the join's inputs meet, partition by partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Layout {
    /// Partition p of the build meets partition p of the probe: both hash-partitioned on the
    /// keys.
    Partitioned,
    /// One build partition, read once and shared by every partition of the probe (DataFusion's
    /// CollectLeft, without repartitioning the probe; see `shared.rs`).
    SharedBuild,
    /// One partition each: `NOT IN`, where one NULL anywhere changes every row's answer.
    Single,
}

/// gobi's hash join that spills: each output partition joins a partition of the probe with
/// its build (see [`Layout`]). While the build fits its reservations it is DataFusion's
/// in-memory hash join; past that, a grace hash join over buckets in spill files (see
/// `partition.rs`).
#[derive(Debug)]
pub struct SpillingHashJoinExec {
    left: Arc<dyn ExecutionPlan>,
    right: Arc<dyn ExecutionPlan>,
    spec: Arc<JoinSpec>,
    layout: Layout,
    /// The build of [`Layout::SharedBuild`], once read.
    shared: Arc<SharedSlot>,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
    /// DataFusion's join over the same inputs: what the output is, and its estimates.
    model: Arc<HashJoinExec>,
}

impl SpillingHashJoinExec {
    pub(super) fn try_new(left: Arc<dyn ExecutionPlan>, right: Arc<dyn ExecutionPlan>, spec: JoinSpec, layout: Layout) -> Result<Self> {
        // DataFusion's own join over the same inputs says what the output is; its rows come out
        // in no order here (bucket after bucket).
        let model = HashJoinExec::try_new(
            Arc::clone(&left),
            Arc::clone(&right),
            spec.on.clone(),
            spec.filter.clone(),
            &spec.join_type,
            spec.projection.clone(),
            if layout == Layout::Partitioned { PartitionMode::Partitioned } else { PartitionMode::CollectLeft },
            spec.null_equality,
            false,
        )?;
        let mut equivalences = model.properties().eq_properties.clone();
        equivalences.clear_orderings();
        let mut properties = model.properties().as_ref().clone().with_eq_properties(equivalences);
        if layout == Layout::Single {
            properties = properties.with_partitioning(Partitioning::UnknownPartitioning(1));
        }
        let spec = JoinSpec { schema: model.schema(), ..spec };
        let shared = Arc::new(SharedSlot::new(properties.partitioning.partition_count()));
        Ok(Self {
            left,
            right,
            spec: Arc::new(spec),
            layout,
            shared,
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
            model: Arc::new(model),
        })
    }

    fn spec_for(&self, left: &Arc<dyn ExecutionPlan>, right: &Arc<dyn ExecutionPlan>) -> JoinSpec {
        JoinSpec { left_schema: left.schema(), right_schema: right.schema(), ..JoinSpec::clone(&self.spec) }
    }
}

impl DisplayAs for SpillingHashJoinExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let on = self.spec.on.iter().map(|(l, r)| format!("({l}, {r})")).collect::<Vec<_>>().join(", ");
        write!(f, "SpillingHashJoinExec: join_type={}, on=[{on}]", self.spec.join_type)?;
        if let Some(filter) = &self.spec.filter {
            write!(f, ", filter={}", filter.expression())?;
        }
        if self.spec.null_aware {
            write!(f, ", null_aware")?;
        }
        if self.layout == Layout::SharedBuild {
            write!(f, ", build=shared")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for SpillingHashJoinExec {
    fn name(&self) -> &str {
        "SpillingHashJoinExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.left, &self.right]
    }

    fn apply_expressions(&self, f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>) -> Result<TreeNodeRecursion> {
        let keys = self.spec.on.iter().flat_map(|(left, right)| [left, right]);
        for expr in keys.chain(self.spec.filter.iter().map(JoinFilter::expression)) {
            if f(expr)? == TreeNodeRecursion::Stop {
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    }

    fn required_input_distribution(&self) -> Vec<Distribution> {
        match self.layout {
            Layout::Single => vec![Distribution::SinglePartition, Distribution::SinglePartition],
            Layout::SharedBuild => vec![Distribution::SinglePartition, Distribution::UnspecifiedDistribution],
            Layout::Partitioned => {
                let (left, right) = self.spec.on.iter().map(|(l, r)| (Arc::clone(l), Arc::clone(r))).unzip();
                vec![Distribution::KeyPartitioned(left), Distribution::KeyPartitioned(right)]
            }
        }
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![false, false]
    }

    #[allow(deprecated)]
    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(children, ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute))
    }

    fn replace_children(self: Arc<Self>, mut children: Vec<Arc<dyn ExecutionPlan>>, _options: ReplaceChildrenOptions) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 2 {
            return internal_err!("SpillingHashJoinExec has two children, not {}", children.len());
        }
        let right = children.pop().expect("two children");
        let left = children.pop().expect("two children");
        let spec = self.spec_for(&left, &right);
        Ok(Arc::new(Self::try_new(left, right, spec, self.layout)?))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let probe = self.right.execute(partition, Arc::clone(&context))?;
        let join = Arc::new(PartitionJoin::new(Arc::clone(&self.spec), partition, Arc::clone(&context), JoinMetrics::new(&self.metrics, partition)));
        let joined = match self.layout {
            Layout::SharedBuild => {
                let (slot, left) = (Arc::clone(&self.shared), Arc::clone(&self.left));
                let read = {
                    let join = Arc::clone(&join);
                    move |partitions| async move { join.read_shared_build(left.execute(0, context)?, partitions).await }
                };
                futures::stream::once(async move { join.run_shared(slot.take(read).await?, probe).await }).try_flatten().boxed()
            }
            Layout::Partitioned | Layout::Single => {
                let build = self.left.execute(partition, context)?;
                let holders = self.properties().output_partitioning().partition_count();
                futures::stream::once(join.run(build, probe, holders)).try_flatten().boxed()
            }
        };
        let output_rows = MetricBuilder::new(&self.metrics).output_rows(partition);
        let joined = joined.inspect_ok(move |batch| output_rows.add(batch.num_rows()));
        Ok(Box::pin(RecordBatchStreamAdapter::new(Arc::clone(&self.spec.schema), joined)))
    }

    // The same rows as DataFusion's join over the same inputs: its estimate is this one's.
    fn statistics_from_inputs(&self, input_stats: &[Arc<Statistics>], args: &StatisticsArgs) -> Result<Arc<Statistics>> {
        self.model.statistics_from_inputs(input_stats, args)
    }

    fn child_stats_requests(&self, partition: Option<usize>) -> Vec<ChildStats> {
        self.model.child_stats_requests(partition)
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{ArrayRef, Int64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::physical_expr::expressions::Column;

    use super::*;

    fn spec(join_type: JoinType) -> JoinSpec {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let key = || Arc::new(Column::new("k", 0)) as Arc<dyn PhysicalExpr>;
        JoinSpec {
            left_schema: Arc::clone(&schema),
            right_schema: Arc::clone(&schema),
            schema,
            on: vec![(key(), key())],
            filter: None,
            join_type,
            projection: None,
            null_equality: NullEquality::NullEqualsNothing,
            null_aware: false,
            holdable: 1 << 30,
        }
    }

    /// Every join holds its chain of equal hashes unasked; the joins that output build rows
    /// at their end also make that output unasked: the rows' indices and up to every build
    /// row, counted once where batches share buffers.
    #[test]
    fn joins_that_output_build_rows_at_their_end_make_them_unasked() {
        let batch = RecordBatch::try_from_iter([("k", Arc::new(Int64Array::from_iter_values(0..1000)) as ArrayRef)]).unwrap();
        let held = [batch.clone(), batch.slice(0, 500)];
        let chain = 1500 * size_of::<u32>();
        for join_type in [JoinType::Inner, JoinType::Right, JoinType::RightSemi, JoinType::RightAnti, JoinType::RightMark] {
            let unasked = spec(join_type).unasked(&held);
            assert_eq!((unasked.probing, unasked.ending), (chain, chain), "{join_type}");
        }
        let output = 1500 * (size_of::<u64>() + size_of::<u32>()) + 1000 * size_of::<i64>();
        for join_type in [JoinType::Left, JoinType::Full, JoinType::LeftSemi, JoinType::LeftAnti, JoinType::LeftMark] {
            let unasked = spec(join_type).unasked(&held);
            assert_eq!((unasked.probing, unasked.ending), (chain, chain + output), "{join_type}");
        }
    }
}
