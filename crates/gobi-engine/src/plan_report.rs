//! What `gobi plan` shows: a statement's physical plan as it runs under the statement's memory,
//! each operator with what is known of it before it runs (estimated rows and bytes, whether
//! what it holds can spill; for a join, the algorithm chosen and why) and, once run, what it
//! did (rows, time, peak reserved bytes, spills).
//!
//! Estimates come from DataFusion's statistics, which gobi feeds from the Delta log (rows,
//! bytes, min/max per column) and Parquet footers; "unknown" where nothing is known.

use std::sync::Arc;

use datafusion::common::stats::Precision;
use datafusion::physical_plan::aggregates::AggregateExec;
use datafusion::physical_plan::joins::{CrossJoinExec, HashJoinExec, NestedLoopJoinExec, SortMergeJoinExec};
use datafusion::physical_plan::metrics::MetricValue;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::{ExecutionPlan, StatisticsArgs, StatisticsContext};
use serde::Serialize;

use crate::join::{SpillingHashJoinExec, SpillingJoins};

/// One operator of the plan, with its inputs.
#[derive(Debug, Clone, Serialize)]
pub struct PlanNode {
    /// DataFusion's name of the operator (`HashJoinExec`, `SortExec`, …).
    pub operator: String,
    /// Its one-line description (DataFusion's `EXPLAIN` text of the node).
    pub detail: String,
    pub estimated_rows: Estimate,
    pub estimated_bytes: Estimate,
    pub memory: Holds,
    pub join: Option<JoinReport>,
    /// After `--analyze`: what it did; `None` for an operator that keeps no metrics (one that
    /// passes its input's batches on unchanged).
    pub actual: Option<Actual>,
    pub children: Vec<PlanNode>,
}

/// A figure known before the plan runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Estimate {
    Exact(u64),
    About(u64),
    Unknown,
}

impl Estimate {
    fn of(precision: &Precision<usize>) -> Self {
        match precision {
            Precision::Exact(n) => Estimate::Exact(*n as u64),
            Precision::Inexact(n) => Estimate::About(*n as u64),
            Precision::Absent => Estimate::Unknown,
        }
    }

    pub fn value(self) -> Option<u64> {
        match self {
            Estimate::Exact(n) | Estimate::About(n) => Some(n),
            Estimate::Unknown => None,
        }
    }
}

/// What an operator holds while it runs, from the query pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Holds {
    /// Nothing that grows with its input: batches pass through.
    Streams,
    /// A buffer that grows with its input and is written to spill files when refused.
    Spills,
    /// A buffer that grows with its input and cannot spill: refused, the query fails.
    CannotSpill,
}

/// How a join runs, and why.
#[derive(Debug, Clone, Serialize)]
pub struct JoinReport {
    pub algorithm: &'static str,
    /// The side held in memory (or scattered to buckets), and the side streamed past it.
    pub build: String,
    pub probe: String,
    pub reason: String,
}

/// What one operator did in an analyzed run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Actual {
    pub rows: u64,
    /// CPU time inside the operator, without its inputs (DataFusion's `elapsed_compute`).
    pub elapsed_compute_ns: u64,
    /// The most its memory consumers reserved at once.
    pub peak_reserved_bytes: u64,
    pub spills: u64,
    pub spilled_bytes: u64,
    /// For the spilling hash join: how it ran.
    pub join: Option<JoinRun>,
}

/// How a spilling hash join ran: all zero when its build fit in memory.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct JoinRun {
    /// Buckets made by scattering and re-splitting, the build's and the probe's.
    pub buckets: u64,
    pub spilled_buckets: u64,
    /// In-memory joins run: one when the build fits, else one per bucket or chunk.
    pub rounds: u64,
    /// The deepest re-split of a bucket too big.
    pub max_depth: u64,
}

/// The report of `plan` as the statement's memory (`statement_memory`, what the statement may
/// reserve) shaped it; `ran`: whether it has run, so its metrics are its actuals;
/// `spilling_join`: whether gobi's spilling join may replace DataFusion's.
pub(crate) fn report(plan: &Arc<dyn ExecutionPlan>, statement_memory: usize, spilling_join: bool, ran: bool) -> PlanNode {
    node(plan, &SpillingJoins::new(statement_memory), spilling_join, ran)
}

fn node(plan: &Arc<dyn ExecutionPlan>, joins: &SpillingJoins, spilling_join: bool, ran: bool) -> PlanNode {
    let statistics = StatisticsContext::new().compute(plan.as_ref(), &StatisticsArgs::new()).ok();
    let (estimated_rows, estimated_bytes) = match &statistics {
        Some(s) => (Estimate::of(&s.num_rows), Estimate::of(&s.total_byte_size)),
        None => (Estimate::Unknown, Estimate::Unknown),
    };
    let detail = datafusion::physical_plan::displayable(plan.as_ref()).one_line().to_string().trim_end().to_string();
    PlanNode {
        operator: plan.name().to_string(),
        detail,
        estimated_rows,
        estimated_bytes,
        memory: holds(plan),
        join: join(plan, joins, spilling_join),
        actual: if ran { actual(plan) } else { None },
        children: plan.children().into_iter().map(|child| node(child, joins, spilling_join, ran)).collect(),
    }
}

/// How an operator holds memory, by what it is.
fn holds(plan: &Arc<dyn ExecutionPlan>) -> Holds {
    if let Some(sort) = plan.downcast_ref::<SortExec>() {
        // With a fetch it is a TopK: it keeps k rows and cannot spill them.
        return if sort.fetch().is_some() { Holds::CannotSpill } else { Holds::Spills };
    }
    if let Some(aggregate) = plan.downcast_ref::<AggregateExec>() {
        return if aggregate.group_expr().is_empty() { Holds::CannotSpill } else { Holds::Spills };
    }
    if plan.downcast_ref::<SpillingHashJoinExec>().is_some() || plan.name() == "RepartitionExec" || plan.downcast_ref::<SortMergeJoinExec>().is_some() {
        return Holds::Spills;
    }
    let holds_in_memory = plan.downcast_ref::<HashJoinExec>().is_some()
        || plan.downcast_ref::<NestedLoopJoinExec>().is_some()
        || plan.downcast_ref::<CrossJoinExec>().is_some()
        || matches!(plan.name(), "WindowAggExec" | "BoundedWindowAggExec");
    if holds_in_memory {
        Holds::CannotSpill
    } else {
        Holds::Streams
    }
}

fn join(plan: &Arc<dyn ExecutionPlan>, joins: &SpillingJoins, spilling_join: bool) -> Option<JoinReport> {
    let children = plan.children();
    let side = |i: usize| children.get(i).map_or_else(String::new, |child| child.name().to_string());
    let (algorithm, reason) = if let Some(hash) = plan.downcast_ref::<HashJoinExec>() {
        let reason = if !spilling_join {
            "memory.spilling_join = off".to_string()
        } else if hash.fetch().is_some() {
            "a LIMIT ends it early".to_string()
        } else {
            joins.choice(hash.left()).map_or_else(|e| e.to_string(), |choice| choice.reason)
        };
        ("in-memory hash join", reason)
    } else if plan.downcast_ref::<SpillingHashJoinExec>().is_some() {
        ("spilling hash join", joins.choice(children[0]).map_or_else(|e| e.to_string(), |choice| choice.reason))
    } else if plan.downcast_ref::<NestedLoopJoinExec>().is_some() {
        ("nested loop join", "no equality between the sides to hash on".to_string())
    } else if plan.downcast_ref::<CrossJoinExec>().is_some() {
        ("cross join", "every row of one side with every row of the other".to_string())
    } else if plan.downcast_ref::<SortMergeJoinExec>().is_some() {
        ("sort-merge join", "both sides arrive sorted on the keys".to_string())
    } else {
        return None;
    };
    Some(JoinReport { algorithm, build: side(0), probe: side(1), reason })
}

/// The operator's own metrics (summed over its partitions) after a run.
fn actual(plan: &Arc<dyn ExecutionPlan>) -> Option<Actual> {
    let metrics = plan.metrics()?;
    let peak_reserved_bytes = metrics
        .iter()
        .filter_map(|metric| match metric.value() {
            MetricValue::PeakMemoryUsage { name, gauge } if name == "peak_reserved" => Some(gauge.value() as u64),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    Some(Actual {
        rows: metrics.output_rows().unwrap_or(0) as u64,
        elapsed_compute_ns: metrics.elapsed_compute().unwrap_or(0) as u64,
        peak_reserved_bytes,
        spills: metrics.spill_count().unwrap_or(0) as u64,
        spilled_bytes: metrics.spilled_bytes().unwrap_or(0) as u64,
        join: plan.downcast_ref::<SpillingHashJoinExec>().map(|_| {
            let sum = |name: &str| metrics.sum_by_name(name).map_or(0, |v| v.as_usize() as u64);
            let max_depth = metrics.iter().filter(|m| m.value().name() == "max_depth").map(|m| m.value().as_usize() as u64).max().unwrap_or(0);
            JoinRun { buckets: sum("buckets"), spilled_buckets: sum("spilled_buckets"), rounds: sum("rounds"), max_depth }
        }),
    })
}
