//! The spilling hash join as a plan node.

use std::fmt;
use std::sync::Arc;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{internal_err, Result, Statistics};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{Distribution, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::joins::utils::JoinFilter;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::metrics::{ExecutionPlanMetricsSet, MetricBuilder, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{ChildStats, DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, StatisticsArgs};
use futures::{StreamExt, TryStreamExt};

use super::partition::{JoinMetrics, PartitionJoin};
use super::shared::SharedSlot;
use super::spec::JoinSpec;

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
