//! How the spilling join plans DataFusion's in-memory hash join over one build, and what that
//! join holds without reserving it.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::utils::memory::{estimate_memory_size, RecordBatchMemoryCounter};
use datafusion::common::{internal_err, JoinType, NullEquality, Result};
use datafusion::execution::memory_pool::MemoryPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::joins::utils::{JoinFilter, JoinOn};
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::ExecutionPlan;
use parking_lot::Mutex;

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
        let output = match self.outputs_build_rows_at_end() {
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
        !self.outputs_build_rows_at_end() && !self.null_aware
    }

    /// Whether the join outputs build rows after its whole probe, by what the probe matched or
    /// did not (left, full, left semi, anti and mark joins).
    fn outputs_build_rows_at_end(&self) -> bool {
        matches!(self.join_type, JoinType::Left | JoinType::Full | JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark)
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

/// DataFusion's join table for `rows` build rows: the hash map as DataFusion estimates it
/// (`estimate_memory_size::<(u32, u64)>`: its buckets, rounded up to a power of two), the
/// chain of equal hashes (a `u32` per row, which it does not reserve) and the visited-rows
/// bitmap.
pub(super) fn table_bytes(rows: usize) -> usize {
    estimate_memory_size::<(u32, u64)>(rows, 0).unwrap_or(usize::MAX).saturating_add(hash_chain_bytes(rows) + rows.div_ceil(8))
}

/// The chain of equal hashes of DataFusion's join table for `rows` build rows (a `u32` per
/// row), which the join holds without reserving it.
fn hash_chain_bytes(rows: usize) -> usize {
    rows * size_of::<u32>()
}

/// The rows of `batches`.
fn rows_of(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{ArrayRef, Int64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::physical_expr::expressions::Column;
    use datafusion::physical_expr::PhysicalExpr;

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
