//! gobi's hash join that spills, and the rule that chooses it over DataFusion's.
//!
//! DataFusion's `HashJoinExec` holds its whole build side in memory and cannot spill: a build
//! bigger than the query's memory fails the query. [`SpillingHashJoinExec`] holds the build
//! while its reservations are granted and then runs DataFusion's own join over it (the same
//! speed); the first refused reservation turns it into a grace hash join over buckets in
//! spill files (`partition.rs`), so a build of any size finishes with the exact answer.
//!
//! ```text
//!   physical plan (after DataFusion's rules, before dynamic filters are pushed down)
//!     HashJoinExec, build estimated to fit its share with room ──► kept (full speed)
//!     HashJoinExec, any other ──► SpillingHashJoinExec
//!        Partitioned: same inputs
//!        CollectLeft: same inputs, one build shared by every probe partition (`shared.rs`)
//!        NOT IN (null-aware): one partition each
//! ```
//!
//! Not tracked by reservations: the one batch being scattered and its parts (a batch at a
//! time), the spill files' write buffers, and DataFusion's probe-side work inside its join
//! (as with its own join). The rows waiting per bucket to fill a batch are reserved.

mod bucket_pool;
mod buckets;
mod exec;
mod partition;
mod shared;
mod spec;

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::Result;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties, StatisticsArgs, StatisticsContext};
use gobi_memory::ByteSize;

use exec::Layout;
pub use exec::SpillingHashJoinExec;
use spec::JoinSpec;

/// How far an inexact estimate (after a filter, an aggregate, another join) is trusted: such a
/// build keeps DataFusion's join only if it would still fit its share when 128 times the
/// estimate. (An exact row count from the Delta log is trusted as it is.)
const INEXACT_MARGIN: usize = 128;
/// Bytes per row for an estimate with rows but no bytes.
pub(crate) const ROW_BYTES_GUESS: usize = 64;

/// What [`SpillingJoins`] chose for one join: whether it spills, and why in words.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinChoice {
    pub spills: bool,
    pub reason: String,
}

/// The physical optimizer rule that puts [`SpillingHashJoinExec`] where a build may not fit.
#[derive(Debug)]
pub(crate) struct SpillingJoins {
    /// The memory a join's build may take: a quarter of the statement's.
    share: usize,
    /// What the statement could hold with borrowing, which bounds the builds a spilling join
    /// holds at once (`PartitionJoin::hold_build`).
    holdable: usize,
}

impl SpillingJoins {
    /// `statement_memory`: what the statement may reserve (its pool, or its `query_limit`).
    pub(crate) fn new(statement_memory: usize) -> Self {
        Self { share: statement_memory / 4, holdable: statement_memory }
    }

    /// Held builds bounded by `holdable` (`QueryMemory::holdable`) rather than the statement's
    /// pool: a build that fits the room the statement could borrow is joined in one round.
    pub(crate) fn holding_up_to(self, holdable: usize) -> Self {
        Self { holdable, ..self }
    }

    /// What the rule chooses for a join whose build side is `build`, and why: DataFusion's
    /// join when the build's estimate fits the share with room, else the spilling join.
    pub(crate) fn choice(&self, build: &Arc<dyn ExecutionPlan>) -> Result<JoinChoice> {
        let statistics = StatisticsContext::new().compute(build.as_ref(), &StatisticsArgs::new())?;
        let share = ByteSize(self.share as u64);
        let bytes = match (statistics.total_byte_size.get_value(), statistics.num_rows.get_value()) {
            (Some(&bytes), _) if bytes > 0 => bytes,
            (_, Some(&rows)) => rows.saturating_mul(ROW_BYTES_GUESS),
            _ => return Ok(JoinChoice { spills: true, reason: format!("build size unknown, share {share}") }),
        };
        let exact = statistics.num_rows.is_exact() == Some(true);
        let margin = if exact { 1 } else { INEXACT_MARGIN };
        let spills = bytes.saturating_mul(margin) > self.share;
        let estimate = if exact {
            format!("build {} (exact)", ByteSize(bytes as u64))
        } else {
            format!("build ≈{}, an estimate: ×{INEXACT_MARGIN} = {}", ByteSize(bytes as u64), ByteSize(bytes.saturating_mul(margin) as u64))
        };
        Ok(JoinChoice { spills, reason: format!("{estimate} {} share {share}", if spills { ">" } else { "≤" }) })
    }

    fn replacement(&self, join: &HashJoinExec) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        if join.fetch().is_some() || !self.choice(join.left())?.spills {
            return Ok(None);
        }
        let spec = JoinSpec {
            left_schema: join.left().schema(),
            right_schema: join.right().schema(),
            schema: join.schema(),
            on: join.on().to_vec(),
            filter: join.filter().cloned(),
            join_type: *join.join_type(),
            projection: join.projection.as_deref().map(<[usize]>::to_vec),
            null_equality: join.null_equality(),
            null_aware: join.null_aware,
            holdable: self.holdable,
        };
        let (left, right, layout) = match (join.null_aware, join.partition_mode()) {
            (true, _) => (one_partition(join.left()), one_partition(join.right()), Layout::Single),
            (false, PartitionMode::Partitioned) => (Arc::clone(join.left()), Arc::clone(join.right()), Layout::Partitioned),
            (false, PartitionMode::CollectLeft) => (Arc::clone(join.left()), Arc::clone(join.right()), Layout::SharedBuild),
            (false, PartitionMode::Auto) => return Ok(None),
        };
        let spec = JoinSpec { left_schema: left.schema(), right_schema: right.schema(), ..spec };
        Ok(Some(Arc::new(SpillingHashJoinExec::try_new(left, right, spec, layout)?)))
    }
}

impl PhysicalOptimizerRule for SpillingJoins {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(join) = node.downcast_ref::<HashJoinExec>() else { return Ok(Transformed::no(node)) };
            Ok(match self.replacement(join)? {
                Some(spilling) => Transformed::yes(spilling),
                None => Transformed::no(node),
            })
        })
        .data()
    }

    fn name(&self) -> &str {
        "gobi_spilling_joins"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

fn one_partition(input: &Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
    if input.output_partitioning().partition_count() <= 1 {
        return Arc::clone(input);
    }
    Arc::new(CoalescePartitionsExec::new(Arc::clone(input)))
}
