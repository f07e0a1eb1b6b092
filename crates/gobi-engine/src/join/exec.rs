//! The spilling hash join as a plan node, and how it plans DataFusion's in-memory join over
//! one build.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{internal_err, JoinType, NullEquality, Result};
use datafusion::execution::memory_pool::MemoryPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{Distribution, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::joins::utils::{JoinFilter, JoinOn};
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::TryStreamExt;
use parking_lot::Mutex;

use super::partition::{JoinMetrics, PartitionJoin};

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
        let join = HashJoinExec::try_new(
            one_shot(left)?,
            one_shot(right)?,
            self.on.clone(),
            self.filter.clone(),
            &self.join_type,
            self.projection.clone(),
            PartitionMode::CollectLeft,
            self.null_equality,
            null_aware,
        )?;
        let plan: Arc<dyn ExecutionPlan> = if swapped { join.swap_inputs(PartitionMode::CollectLeft)? } else { Arc::new(join) };
        let runtime = RuntimeEnvBuilder::from_runtime_env(&ctx.runtime_env()).with_memory_pool(pool).build_arc()?;
        let ctx = TaskContext::new(
            ctx.task_id(),
            ctx.session_id(),
            ctx.session_config().clone(),
            ctx.scalar_functions().clone(),
            ctx.higher_order_functions().clone(),
            ctx.aggregate_functions().clone(),
            ctx.window_functions().clone(),
            runtime,
        );
        plan.execute(0, Arc::new(ctx))
    }
}

/// A plan leaf that hands out one stream, once: the inputs of DataFusion's join inside the
/// spilling join (rows held in memory, the probe as it comes, a spill file read back).
struct OneShot {
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
                futures::stream::once(async { internal_err!("an input of the spilling join's bucket was read twice") }),
            )),
        }
    }
}

fn one_shot(stream: SendableRecordBatchStream) -> Result<Arc<dyn ExecutionPlan>> {
    let schema = stream.schema();
    let partition = Arc::new(OneShot { schema: Arc::clone(&schema), stream: Mutex::new(Some(stream)) });
    Ok(Arc::new(StreamingTableExec::try_new(schema, vec![partition], None, vec![], false, None)?))
}

/// gobi's hash join that spills: each output partition joins the same partition of its two
/// inputs (hash-partitioned on the keys, or one partition each for `NOT IN`). While the build
/// fits its reservations it is DataFusion's in-memory hash join; past that, a grace hash
/// join over buckets in spill files (see `partition.rs`).
#[derive(Debug)]
pub struct SpillingHashJoinExec {
    left: Arc<dyn ExecutionPlan>,
    right: Arc<dyn ExecutionPlan>,
    spec: Arc<JoinSpec>,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl SpillingHashJoinExec {
    pub(super) fn try_new(left: Arc<dyn ExecutionPlan>, right: Arc<dyn ExecutionPlan>, spec: JoinSpec) -> Result<Self> {
        let single = spec.null_aware;
        // DataFusion's own join over the same inputs says what the output is; its rows come out
        // in no order here (bucket after bucket).
        let model = HashJoinExec::try_new(
            Arc::clone(&left),
            Arc::clone(&right),
            spec.on.clone(),
            spec.filter.clone(),
            &spec.join_type,
            spec.projection.clone(),
            if single { PartitionMode::CollectLeft } else { PartitionMode::Partitioned },
            spec.null_equality,
            false,
        )?;
        let mut equivalences = model.properties().eq_properties.clone();
        equivalences.clear_orderings();
        let mut properties = model.properties().as_ref().clone().with_eq_properties(equivalences);
        if single {
            properties = properties.with_partitioning(Partitioning::UnknownPartitioning(1));
        }
        let spec = JoinSpec { schema: model.schema(), ..spec };
        Ok(Self { left, right, spec: Arc::new(spec), properties: Arc::new(properties), metrics: ExecutionPlanMetricsSet::new() })
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
        if self.spec.null_aware {
            return vec![Distribution::SinglePartition, Distribution::SinglePartition];
        }
        let (left, right) = self.spec.on.iter().map(|(l, r)| (Arc::clone(l), Arc::clone(r))).unzip();
        vec![Distribution::KeyPartitioned(left), Distribution::KeyPartitioned(right)]
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
        Ok(Arc::new(Self::try_new(left, right, spec)?))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let build = self.left.execute(partition, Arc::clone(&context))?;
        let probe = self.right.execute(partition, Arc::clone(&context))?;
        let join = Arc::new(PartitionJoin::new(Arc::clone(&self.spec), partition, context, JoinMetrics::new(&self.metrics, partition)));
        let joined = futures::stream::once(join.run(build, probe)).try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(Arc::clone(&self.spec.schema), joined)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}
