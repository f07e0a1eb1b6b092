//! Running a physical plan inside its statement's memory scope.
//!
//! Every node of the plan is wrapped in a [`ScopedExec`] whose streams enter the node's part of
//! the statement's allocator scope around each poll: whichever thread (or spawned task) polls
//! an operator, what the operator allocates is charged to it and to its statement ("actual"
//! bytes), and a batch it returns passes to the operator that polled for it. Before handing
//! out a batch, the stream checks that the statement's actual bytes are within its limit plus
//! `memory.actual_margin`, and stops it with a clear error when not. Consumers an operator
//! registers while it starts or runs are attributed to its node, whose peak reserved bytes
//! `EXPLAIN ANALYZE` shows as `peak_reserved`, its own allocator peak as `peak_allocated` and
//! the time spent in its own polls (its inputs' polls inside them subtracted) as
//! `elapsed_own`. Each poll first checks the statement's [`Stop`], so a cancelled statement
//! ends even where no operator yields (see `cancel`).
//!
//! ```text
//!   ScopedExec(SortExec')            SortExec' = SortExec with its child replaced
//!     └── ScopedExec(FilterExec')      the wrapper is invisible: it displays, downcasts and
//!           └── ScopedExec(scan)       reports metrics as the node it wraps
//! ```

use std::cell::Cell;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Result, Statistics};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::aggregates::AggregateExec;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::metrics::{CustomMetricValue, Metric, MetricValue, MetricsSet, Time};
use datafusion::physical_plan::{ChildStats, DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, StatisticsArgs};
use futures::Stream;
use gobi_memory::{allocator, registered_for, registering_for, AllocScope, ByteSize, NodeMemory, QueryMemory};

use crate::cancel::Stop;
use crate::topk::owned;

/// Wraps every node of `plan` so its work is charged to `query`. The root hands each batch it
/// returns over to its reader: the reader (the CLI printing rows, delta-rs's writer tasks)
/// frees it outside any poll, so without that a streamed result or a write would count every
/// batch it ever made.
pub fn scoped(plan: Arc<dyn ExecutionPlan>, query: &Arc<QueryMemory>, stop: &Stop) -> Result<Arc<dyn ExecutionPlan>> {
    let mut scoped = wrap(plan, query, stop, None)?;
    scoped.governed.root = true;
    Ok(Arc::new(scoped))
}

/// `reader`: the node that reads this one's batches.
fn wrap(plan: Arc<dyn ExecutionPlan>, query: &Arc<QueryMemory>, stop: &Stop, reader: Option<&Arc<NodeMemory>>) -> Result<ScopedExec> {
    // A grouped aggregate reserves what its table holds after each batch, grown inside it.
    let node = NodeMemory::read_by(reader);
    let node = Arc::new(if emits_its_groups_at_once(&plan) { node.growing_before_reserving() } else { node });
    let children =
        plan.children().into_iter().map(|child| wrap(Arc::clone(child), query, stop, Some(&node)).map(|c| Arc::new(c) as _)).collect::<Result<Vec<_>>>()?;
    let inner = if children.is_empty() {
        plan
    } else {
        // Keep: the wrapped children have the same properties, and a node rebuilt this way keeps
        // its state (a hash join's dynamic filter stays the one its scan was given).
        plan.replace_children(children, ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep))?
    };
    let governed = Governed {
        query: Arc::clone(query),
        stop: stop.clone(),
        node,
        allocated: Arc::new(AllocScope::part_of(query.actual())),
        own_time: Time::new(),
        root: false,
    };
    Ok(ScopedExec { inner, governed })
}

/// What the plan's operators spilled: (spill files written, bytes written).
pub fn spills(plan: &Arc<dyn ExecutionPlan>) -> (u64, u64) {
    let own = plan.metrics().map_or((0, 0), |m| (m.spill_count().unwrap_or(0) as u64, m.spilled_bytes().unwrap_or(0) as u64));
    plan.children().into_iter().map(spills).fold(own, |(a, b), (c, d)| (a + c, b + d))
}

/// The inputs of the node of `plan` (a plan [`scoped`] made) whose memory is `node`.
pub(crate) fn inputs_of<'a>(plan: &'a Arc<dyn ExecutionPlan>, node: &NodeMemory) -> Option<Vec<&'a Arc<dyn ExecutionPlan>>> {
    let scoped = (plan.as_ref() as &dyn std::any::Any).downcast_ref::<ScopedExec>()?;
    if std::ptr::eq(Arc::as_ptr(&scoped.governed.node), node) {
        return Some(plan.children());
    }
    plan.children().into_iter().find_map(|child| inputs_of(child, node))
}

pub struct ScopedExec {
    inner: Arc<dyn ExecutionPlan>,
    governed: Governed,
}

/// What a node's wrapper and each of its streams share.
#[derive(Clone)]
struct Governed {
    query: Arc<QueryMemory>,
    stop: Stop,
    /// Its node, whose reader is told how many rows it took.
    node: Arc<NodeMemory>,
    /// What this operator itself holds from the allocator.
    allocated: Arc<AllocScope>,
    /// Time in its streams' polls, its inputs' polls inside them subtracted.
    own_time: Time,
    /// The plan's root: the batches it returns leave the statement's allocator count.
    root: bool,
}

impl fmt::Debug for ScopedExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl ScopedExec {
    fn rewrapped(&self, inner: Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
        Arc::new(ScopedExec { inner, governed: self.governed.clone() })
    }
}

impl DisplayAs for ScopedExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        self.inner.fmt_as(t, f)
    }
}

impl ExecutionPlan for ScopedExec {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn downcast_delegate(&self) -> Option<&dyn ExecutionPlan> {
        Some(self.inner.as_ref())
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.inner.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        self.inner.children()
    }

    fn apply_expressions(&self, f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>) -> Result<TreeNodeRecursion> {
        self.inner.apply_expressions(f)
    }

    #[allow(deprecated)]
    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self.rewrapped(Arc::clone(&self.inner).with_new_children(children)?))
    }

    // What operators call on their inputs while running (a recursive query resets its
    // recursive term and hands it the work table each round) goes to the wrapped node.
    fn replace_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>, options: ReplaceChildrenOptions) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self.rewrapped(Arc::clone(&self.inner).replace_children(children, options)?))
    }

    fn reset_state(self: Arc<Self>) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self.rewrapped(Arc::clone(&self.inner).reset_state()?))
    }

    fn with_new_state(&self, state: Arc<dyn std::any::Any + Send + Sync>) -> Option<Arc<dyn ExecutionPlan>> {
        Some(self.rewrapped(self.inner.with_new_state(state)?))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let _scope = allocator::enter(&self.governed.allocated);
        let pool = Arc::clone(context.memory_pool());
        let batch_size = context.session_config().batch_size();
        let (inner, registered) = registered_for(&self.governed.node, || self.inner.execute(partition, context));
        let inner = inner?;
        let held = emits_its_groups_at_once(&self.inner).then(|| HeldOutput {
            reservation: registering_for(&self.governed.node, || MemoryConsumer::new(format!("{}Output[{partition}]", self.inner.name())).register(&pool)),
            batch_size,
            query: Arc::clone(&self.governed.query),
            aggregate: registered,
        });
        Ok(Box::pin(ScopedStream { inner, governed: self.governed.clone(), held }))
    }

    // Its children are the inner node's (wrapped), so the inner node derives the statistics.
    fn statistics_from_inputs(&self, input_stats: &[Arc<Statistics>], args: &StatisticsArgs) -> Result<Arc<Statistics>> {
        self.inner.statistics_from_inputs(input_stats, args)
    }

    fn child_stats_requests(&self, partition: Option<usize>) -> Vec<ChildStats> {
        self.inner.child_stats_requests(partition)
    }

    fn metrics(&self) -> Option<MetricsSet> {
        let peaks = [("peak_reserved", self.governed.node.peak()), ("peak_allocated", self.governed.allocated.peak())];
        let mut metrics = self.inner.metrics().unwrap_or_default();
        for (name, peak) in peaks.into_iter().filter(|(_, peak)| *peak > 0) {
            metrics.push(Arc::new(PeakBytes(AtomicUsize::new(peak))).metric(name));
        }
        metrics.push(Arc::new(Metric::new(MetricValue::Time { name: "elapsed_own".into(), time: self.governed.own_time.clone() }, None)));
        Some(metrics)
    }
}

struct ScopedStream {
    inner: SendableRecordBatchStream,
    governed: Governed,
    /// A grouped aggregate's output while it hands it out (see [`emits_its_groups_at_once`]);
    /// none for other operators.
    held: Option<HeldOutput>,
}

/// Whether `plan` is a grouped aggregation: DataFusion's builds its whole output from its hash
/// table at once (at the end of its input, or when it emits early), shrinks its reservation to
/// the emptied table, and hands the output out a batch-sized slice at a time, every slice
/// holding the whole output's buffers. Without [`HeldOutput`] that output was reserved by no
/// one (15 MiB of q18's at scale 1), or by every operator that kept a slice, each counting the
/// whole.
fn emits_its_groups_at_once(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.downcast_ref::<AggregateExec>().is_some_and(|aggregate| !aggregate.group_expr().is_empty())
}

/// The output a grouped aggregate holds while it hands it out, reserved as
/// `…Output[partition]`; each slice goes on in buffers of its own (`topk::owned`), so the
/// operators above reserve its rows, not the whole output.
///
/// ```text
///   aggregate emits all its groups ─► slice 1 (batch_size rows) ─► copied ─► reader
///                                     held := the whole output's bytes (the rest is still held)
///   ...                               slice k (fewer rows: the last) ─► held := 0
/// ```
///
/// Reserved once built, as it cannot be before, and only what the aggregate's own
/// reservation leaves out: DataFusion's stream mostly keeps its reservation at about the
/// output's size while it hands the output out (TPC-H q16, q17, q20: the same bytes to the
/// byte), and a partial aggregate that emitted may have let it go. Refused, the output is left
/// unreserved (untracked). A full last slice keeps the reservation one poll too long.
struct HeldOutput {
    reservation: MemoryReservation,
    batch_size: usize,
    query: Arc<QueryMemory>,
    /// The consumers the aggregate's stream registered for this partition.
    aggregate: Vec<usize>,
}

impl HeldOutput {
    fn hand_out(&mut self, batch: RecordBatch) -> Result<RecordBatch> {
        let covered: usize = self.aggregate.iter().map(|&id| self.query.held_by(id)).sum();
        let unreserved = batch.get_array_memory_size().saturating_sub(covered);
        let more_to_come = batch.num_rows() >= self.batch_size;
        let own = owned(batch)?;
        if self.reservation.try_resize(if more_to_come { unreserved } else { 0 }).is_err() {
            self.reservation.free();
        }
        Ok(own)
    }
}

thread_local! {
    /// Nanoseconds the polls of inputs took inside the poll this thread is in now.
    static INPUT_NANOS: Cell<u64> = const { Cell::new(0) };
}

impl Stream for ScopedStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let ScopedStream { inner, governed, held } = &mut *self;
        let Governed { query, stop, node, allocated, own_time, root } = governed;
        if let Some(cancelled) = stop.check() {
            return Poll::Ready(Some(Err(cancelled)));
        }
        let started = Instant::now();
        let enclosing = INPUT_NANOS.with(|nanos| nanos.replace(0));
        let polled = {
            let _scope = allocator::enter(allocated);
            match (registering_for(node, || inner.as_mut().poll_next(cx)), held.as_mut()) {
                (Poll::Ready(Some(Ok(batch))), Some(held)) => Poll::Ready(Some(held.hand_out(batch))),
                (Poll::Ready(None), Some(held)) => {
                    held.reservation.free();
                    Poll::Ready(None)
                }
                (polled, _) => polled,
            }
        };
        let took = started.elapsed().as_nanos() as u64;
        // This whole poll is input time for the poll enclosing it.
        let inputs = INPUT_NANOS.with(|nanos| nanos.replace(enclosing + took));
        own_time.add_duration(Duration::from_nanos(took.saturating_sub(inputs)));
        match polled {
            Poll::Ready(Some(Ok(batch))) => {
                if let Some(reader) = node.reader() {
                    reader.took_rows(batch.num_rows());
                }
                let checked = query.check_actual();
                if *root {
                    allocated.hand_over(batch.get_array_memory_size());
                } else {
                    allocator::pass_on(allocated, batch.get_array_memory_size());
                }
                Poll::Ready(Some(checked.map(|()| batch)))
            }
            other => other,
        }
    }
}

impl RecordBatchStream for ScopedStream {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }
}

/// A peak in bytes, shown as the pools show sizes (`24KiB`, `1.5MiB`), where DataFusion's
/// gauges print decimal-looking `KB`; partitions' peaks combine to the largest.
#[derive(Debug, Default)]
pub(crate) struct PeakBytes(AtomicUsize);

impl PeakBytes {
    /// Raises the peak to `bytes`, if higher.
    pub(crate) fn reached(&self, bytes: usize) {
        self.0.fetch_max(bytes, Ordering::Relaxed);
    }

    /// This peak as a metric named `name`.
    pub(crate) fn metric(self: &Arc<Self>, name: &'static str) -> Arc<Metric> {
        Arc::new(Metric::new(MetricValue::Custom { name: name.into(), value: Arc::clone(self) as _ }, None))
    }
}

impl fmt::Display for PeakBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", ByteSize(self.as_usize() as u64))
    }
}

impl CustomMetricValue for PeakBytes {
    fn new_empty(&self) -> Arc<dyn CustomMetricValue> {
        Arc::new(PeakBytes(AtomicUsize::new(0)))
    }

    fn aggregate(&self, other: Arc<dyn CustomMetricValue>) {
        self.0.fetch_max(other.as_usize(), Ordering::Relaxed);
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn as_usize(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    fn is_eq(&self, other: &Arc<dyn CustomMetricValue>) -> bool {
        self.as_usize() == other.as_usize()
    }
}

#[cfg(test)]
mod tests {
    use datafusion::execution::memory_pool::MemoryPool;
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use datafusion::physical_plan::execute_stream;
    use datafusion::prelude::{SessionConfig, SessionContext};
    use futures::StreamExt;
    use gobi_memory::{MemoryManager, PoolLimits, StatementLimits};

    use super::*;

    /// A grouped aggregate's 100,000 groups stay reserved, once, while it hands them out 1,024
    /// at a time, each slice in buffers of its own; once it is done, nothing is.
    #[tokio::test]
    async fn a_grouped_aggregates_output_is_reserved_while_it_is_handed_out() {
        let memory = MemoryManager::new(PoolLimits { query: ByteSize::mib(1024), ..PoolLimits::default() });
        let query = memory.begin_query("test", StatementLimits::default());
        let runtime = RuntimeEnvBuilder::new().with_memory_pool(Arc::clone(&query) as Arc<dyn MemoryPool>).build_arc().unwrap();
        let ctx = SessionContext::new_with_config_rt(SessionConfig::new().with_target_partitions(1).with_batch_size(1024), runtime);
        let sql = "SELECT value % 100000 AS g, count(*) AS c FROM range(0, 400000) GROUP BY value % 100000";
        let plan = ctx.sql(sql).await.unwrap().create_physical_plan().await.unwrap();
        let mut stream = execute_stream(scoped(plan, &query, &Stop::default()).unwrap(), ctx.task_ctx()).unwrap();
        let held = |name: &str| memory.consumers().iter().filter(|c| c.name.starts_with(name)).map(|c| c.reserved).sum::<usize>();
        let first = stream.next().await.unwrap().unwrap();
        assert_eq!(first.num_rows(), 1024);
        assert!(first.get_array_memory_size() < 64 << 10, "a slice in its own buffers: {}", first.get_array_memory_size());
        // Reserved once: DataFusion's stream keeps about the output's size reserved while it
        // hands it out, and the wrapper adds only what that leaves out.
        let unwrapped = ctx.sql(sql).await.unwrap().execute_stream().await.unwrap().next().await.unwrap().unwrap();
        let whole = unwrapped.get_array_memory_size();
        let (output, aggregate) = (held("AggregateExecOutput"), held("SingleHashAggregateStream"));
        assert!(whole >= 100_000 * 16 && output + aggregate >= whole, "the whole output ({whole}) reserved: {output} and {aggregate}");
        assert!(output + aggregate < whole + whole / 8, "and once: {output} and {aggregate} for {whole}");
        let mut rows = first.num_rows();
        while let Some(batch) = stream.next().await {
            rows += batch.unwrap().num_rows();
        }
        assert_eq!(rows, 100_000);
        assert_eq!(held("AggregateExecOutput"), 0);
    }
}
