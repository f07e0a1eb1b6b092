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
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::metrics::{CustomMetricValue, Metric, MetricValue, MetricsSet, Time};
use datafusion::physical_plan::{ChildStats, DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, StatisticsArgs};
use futures::Stream;
use gobi_memory::{allocator, registering_for, AllocScope, ByteSize, NodeMemory, QueryMemory};

use crate::cancel::Stop;

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
    let node = Arc::default();
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
        reader: reader.cloned(),
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
    node: Arc<NodeMemory>,
    /// The node its batches go to, told how many rows it took.
    reader: Option<Arc<NodeMemory>>,
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
        let inner = registering_for(&self.governed.node, || self.inner.execute(partition, context))?;
        Ok(Box::pin(ScopedStream { inner, governed: self.governed.clone() }))
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
            let value = Arc::new(PeakBytes(AtomicUsize::new(peak)));
            metrics.push(Arc::new(Metric::new(MetricValue::Custom { name: name.into(), value }, None)));
        }
        metrics.push(Arc::new(Metric::new(MetricValue::Time { name: "elapsed_own".into(), time: self.governed.own_time.clone() }, None)));
        Some(metrics)
    }
}

struct ScopedStream {
    inner: SendableRecordBatchStream,
    governed: Governed,
}

thread_local! {
    /// Nanoseconds the polls of inputs took inside the poll this thread is in now.
    static INPUT_NANOS: Cell<u64> = const { Cell::new(0) };
}

impl Stream for ScopedStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let ScopedStream { inner, governed } = &mut *self;
        let Governed { query, stop, node, reader, allocated, own_time, root } = governed;
        if let Some(cancelled) = stop.check() {
            return Poll::Ready(Some(Err(cancelled)));
        }
        let started = Instant::now();
        let enclosing = INPUT_NANOS.with(|nanos| nanos.replace(0));
        let polled = {
            let _scope = allocator::enter(allocated);
            registering_for(node, || inner.as_mut().poll_next(cx))
        };
        let took = started.elapsed().as_nanos() as u64;
        // This whole poll is input time for the poll enclosing it.
        let inputs = INPUT_NANOS.with(|nanos| nanos.replace(enclosing + took));
        own_time.add_duration(Duration::from_nanos(took.saturating_sub(inputs)));
        match polled {
            Poll::Ready(Some(Ok(batch))) => {
                if let Some(reader) = reader {
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
#[derive(Debug)]
pub(crate) struct PeakBytes(AtomicUsize);

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
