//! Each sort's merge headroom, sized by what it sorts.
//!
//! DataFusion's sort sets its merge headroom (`sort_spill_reservation_bytes`) aside at its
//! first batch, before anything knows whether it will spill, and holds it until its input
//! ends. The statement's sorts share a quarter of its memory (`runner::fit_sorts_to_pool`), and
//! plan statistics cannot tell a big sort from a small one (DataFusion 55.2 estimates an
//! aggregate's output as its input's rows), so a sort of an aggregate's few rows (TPC-H q1's
//! four) held its whole share, 6.25 MiB a partition at 175 MiB, beside a few KiB of rows:
//! reserved memory no one allocates, which starves other operators as surely as too little
//! lets the process past its budget.
//!
//! So every sort that can spill (no fetch: a TopK sets nothing aside) reads its input before
//! the sort starts, up to a quarter of its share, holding what it read reserved as
//! `SortInput[partition]`:
//!
//! ```text
//!   SortInBudget ── input ──► read up to share ÷ 4 ──► the input ended: headroom = 4 × what was
//!     │                                           │    read (at least 64 KiB)
//!     │                                           └──► it did not: headroom = the share
//!     └── SortExec, started with that headroom ◄── PeekedInput: the batches read, then the rest
//! ```
//!
//! Four times what was read: a sort that spills anyway (other operators took the pool) merges
//! its runs with their sort keys in DataFusion's row format, which for a string key is several
//! times the row (an md5's 48 B beside an 8 B value). A sort whose input did not end within the
//! quarter may well spill, and keeps the whole share.
//!
//! The wrapper is invisible in plans: it displays, downcasts and reports metrics as its sort,
//! with one more: `merge_headroom`, the most a partition set aside.
//! Not tracked: a batch the reservation refused while reading (the sort reserves it, or spills,
//! as soon as it takes it).

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::common::{internal_datafusion_err, internal_err, Result, Statistics};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::metrics::MetricsSet;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{ChildStats, DisplayAs, DisplayFormatType, ExecutionPlan, InputDistributionRequirements, PlanProperties, StatisticsArgs};
use futures::{StreamExt, TryStreamExt};
use parking_lot::Mutex;

use crate::governed::PeakBytes;

/// The least merge headroom a sort sets aside.
pub(crate) const MIN_HEADROOM: usize = 64 << 10;

/// Sets the merge headroom a sort sets aside and, from it, the size below which it
/// concatenates its buffered batches to sort them in place (and so spills, and later merges,
/// them as one batch): a quarter of the headroom, at most DataFusion's 1 MiB, so a run read
/// back while merging fits beside the others.
pub(crate) fn set_merge_headroom(options: &mut ConfigOptions, headroom: usize) {
    options.execution.sort_spill_reservation_bytes = headroom;
    options.execution.sort_in_place_threshold_bytes = (headroom / 4).clamp(16 << 10, 1 << 20);
}

/// The physical optimizer rule that puts every sort that can spill in a [`SortInBudget`].
#[derive(Debug)]
pub(crate) struct SortsInBudget;

impl PhysicalOptimizerRule for SortsInBudget {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            // A SortInBudget downcasts as its sort: ask for its own type.
            if (node.as_ref() as &dyn Any).is::<SortInBudget>() {
                return Ok(Transformed::no(node));
            }
            match node.downcast_ref::<SortExec>() {
                Some(sort) if sort.fetch().is_none() => {
                    let input = Arc::clone(sort.input());
                    Ok(Transformed::yes(Arc::new(SortInBudget::new(node, input, ChildrenPropertiesMode::Keep)?)))
                }
                _ => Ok(Transformed::no(node)),
            }
        })
        .data()
    }

    fn name(&self) -> &str {
        "gobi_sorts_in_budget"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// A sort that reads the start of its input before it starts, to set its merge headroom (see
/// the module's doc).
#[derive(Debug)]
pub(crate) struct SortInBudget {
    input: Arc<dyn ExecutionPlan>,
    /// The sort, reading its input from `handoff` through a [`PeekedInput`].
    sort: Arc<dyn ExecutionPlan>,
    handoff: Arc<Handoff>,
    /// The most merge headroom a partition's sort set aside.
    headroom: Arc<PeakBytes>,
}

impl SortInBudget {
    /// `sort` over `input` (`sort`'s own input is replaced).
    fn new(sort: Arc<dyn ExecutionPlan>, input: Arc<dyn ExecutionPlan>, mode: ChildrenPropertiesMode) -> Result<Self> {
        let handoff = Arc::new(Handoff::default());
        let peeked = Arc::new(PeekedInput { properties: Arc::clone(input.properties()), handoff: Arc::clone(&handoff) });
        let sort = sort.replace_children(vec![peeked], ReplaceChildrenOptions::new(mode))?;
        Ok(Self { input, sort, handoff, headroom: Arc::default() })
    }
}

impl DisplayAs for SortInBudget {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        self.sort.fmt_as(t, f)
    }
}

impl ExecutionPlan for SortInBudget {
    fn name(&self) -> &str {
        self.sort.name()
    }

    fn downcast_delegate(&self) -> Option<&dyn ExecutionPlan> {
        Some(self.sort.as_ref())
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.sort.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(&self, f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>) -> Result<TreeNodeRecursion> {
        self.sort.apply_expressions(f)
    }

    fn input_distribution_requirements(&self) -> InputDistributionRequirements {
        self.sort.input_distribution_requirements()
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        self.sort.maintains_input_order()
    }

    #[allow(deprecated)]
    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(children, ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute))
    }

    fn replace_children(self: Arc<Self>, mut children: Vec<Arc<dyn ExecutionPlan>>, options: ReplaceChildrenOptions) -> Result<Arc<dyn ExecutionPlan>> {
        match (children.pop(), children.is_empty()) {
            (Some(input), true) => Ok(Arc::new(Self::new(Arc::clone(&self.sort), input, options.children_properties)?)),
            _ => internal_err!("SortInBudget has one child"),
        }
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, Arc::clone(&context))?;
        let reservation = MemoryConsumer::new(format!("SortInput[{partition}]")).register(context.memory_pool());
        let (sort, handoff, most) = (Arc::clone(&self.sort), Arc::clone(&self.handoff), Arc::clone(&self.headroom));
        let sorted = futures::stream::once(async move {
            let share = context.session_config().options().execution.sort_spill_reservation_bytes;
            let start = Start::read(input, share / 4, reservation).await?;
            let headroom = start.headroom(share);
            most.reached(headroom);
            handoff.put(partition, start.into_stream());
            // A sort that fails to start leaves its input (and what was read) to no one.
            sort.execute(partition, with_merge_headroom(&context, headroom)).inspect_err(|_| drop(handoff.take(partition)))
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.schema(), sorted)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        let mut metrics = self.sort.metrics().unwrap_or_default();
        metrics.push(self.headroom.metric("merge_headroom"));
        Some(metrics)
    }

    fn statistics_from_inputs(&self, input_stats: &[Arc<Statistics>], args: &StatisticsArgs) -> Result<Arc<Statistics>> {
        self.sort.statistics_from_inputs(input_stats, args)
    }

    fn child_stats_requests(&self, partition: Option<usize>) -> Vec<ChildStats> {
        self.sort.child_stats_requests(partition)
    }
}

/// `context` with the sorts' merge headroom set to `headroom`.
fn with_merge_headroom(context: &TaskContext, headroom: usize) -> Arc<TaskContext> {
    let mut config = context.session_config().clone();
    set_merge_headroom(config.options_mut(), headroom);
    Arc::new(crate::task_context::copied(context).with_session_config(config))
}

/// The start of a sort's input, read before the sort starts.
struct Start {
    schema: SchemaRef,
    /// Each batch read and what the reservation holds for it (0 for the one it refused).
    batches: Vec<(RecordBatch, usize)>,
    bytes: usize,
    /// What is left of the input; `None` when it ended.
    rest: Option<SendableRecordBatchStream>,
    /// Holds what `batches` take until the sort takes them.
    reservation: MemoryReservation,
}

impl Start {
    /// Reads `input` until it ends, more than `limit` bytes are read, or `reservation` refuses
    /// a batch (kept all the same: the sort takes it next).
    async fn read(mut input: SendableRecordBatchStream, limit: usize, reservation: MemoryReservation) -> Result<Self> {
        let schema = input.schema();
        let (mut batches, mut bytes) = (Vec::new(), 0);
        while bytes <= limit {
            let Some(batch) = input.next().await.transpose()? else {
                return Ok(Self { schema, batches, bytes, rest: None, reservation });
            };
            let size = batch.get_array_memory_size();
            let reserved = reservation.try_grow(size).is_ok();
            bytes += size;
            batches.push((batch, if reserved { size } else { 0 }));
            if !reserved {
                break;
            }
        }
        Ok(Self { schema, batches, bytes, rest: Some(input), reservation })
    }

    /// The merge headroom for a sort of this input when the sorts' share is `share`.
    fn headroom(&self, share: usize) -> usize {
        match self.rest {
            Some(_) => share,
            None => (4 * self.bytes).max(MIN_HEADROOM).min(share),
        }
    }

    /// The batches read, each let go of as the sort takes it, then the rest of the input.
    fn into_stream(self) -> SendableRecordBatchStream {
        let Start { schema, batches, rest, reservation, .. } = self;
        let read = futures::stream::iter(batches).map(move |(batch, reserved)| {
            reservation.shrink(reserved);
            Ok(batch)
        });
        Box::pin(RecordBatchStreamAdapter::new(schema, read.chain(futures::stream::iter(rest).flatten())))
    }
}

/// Each partition's input, from its [`SortInBudget`] to its sort's [`PeekedInput`].
#[derive(Default)]
struct Handoff(Mutex<HashMap<usize, SendableRecordBatchStream>>);

impl Handoff {
    fn put(&self, partition: usize, input: SendableRecordBatchStream) {
        self.0.lock().insert(partition, input);
    }

    fn take(&self, partition: usize) -> Option<SendableRecordBatchStream> {
        self.0.lock().remove(&partition)
    }
}

impl fmt::Debug for Handoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Handoff")
    }
}

/// A sort's input as its [`SortInBudget`] read it: a leaf that hands the sort the stream.
#[derive(Debug)]
struct PeekedInput {
    properties: Arc<PlanProperties>,
    handoff: Arc<Handoff>,
}

impl DisplayAs for PeekedInput {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("PeekedInput")
    }
}

impl ExecutionPlan for PeekedInput {
    fn name(&self) -> &str {
        "PeekedInput"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(&self, _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    #[allow(deprecated)]
    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        match children.is_empty() {
            true => Ok(self),
            false => internal_err!("PeekedInput has no children"),
        }
    }

    fn execute(&self, partition: usize, _context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        self.handoff.take(partition).ok_or_else(|| internal_datafusion_err!("PeekedInput: partition {partition} was not read by its SortInBudget"))
    }
}
