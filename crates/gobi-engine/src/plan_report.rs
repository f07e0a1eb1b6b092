//! What `gobi plan` shows: a statement's physical plan as it runs under the statement's memory,
//! each operator with what is known of it before it runs (estimated rows and bytes, the memory
//! it would hold and whether that can spill; for a join, the algorithm chosen and why) and,
//! once run, what it did (rows, time, peak reserved and allocated bytes, spills).
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

use crate::join::{SpillingHashJoinExec, SpillingJoins, ROW_BYTES_GUESS};

/// One operator of the plan, with its inputs.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub struct PlanNode {
    /// DataFusion's name of the operator (`HashJoinExec`, `SortExec`, …).
    pub operator: String,
    /// Its one-line description (DataFusion's `EXPLAIN` text of the node).
    pub detail: String,
    pub estimated_rows: Estimate,
    pub estimated_bytes: Estimate,
    pub memory: Holds,
    /// What its growing buffers would hold were nothing spilled (0 for an operator that
    /// streams), from the estimates: a join's build side, a sort's or window's input, an
    /// aggregate's groups, a TopK's rows.
    pub estimated_memory: Estimate,
    /// The pool that memory is reserved from; `None` for an operator that streams.
    pub pool: Option<&'static str>,
    pub join: Option<JoinReport>,
    /// After `--analyze`: what it did; null before a run.
    pub actual: Option<Actual>,
    pub children: Vec<PlanNode>,
}

/// A figure known before the plan runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
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
#[cfg_attr(test, derive(schemars::JsonSchema))]
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
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub struct JoinReport {
    pub algorithm: &'static str,
    /// The side held in memory (or scattered to buckets), and the side streamed past it.
    pub build: String,
    pub probe: String,
    pub reason: String,
}

/// What one operator did in an analyzed run.
#[derive(Debug, Clone, Copy, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub struct Actual {
    /// Rows it returned; `None` for an operator that does not count them (one that passes
    /// its input's batches on).
    pub rows: Option<u64>,
    /// Time in the operator's own polls, its inputs' polls inside them subtracted (wall time:
    /// reading a file counts, waiting for another thread does not).
    pub elapsed_ns: u64,
    /// The most its memory consumers reserved at once.
    pub peak_reserved_bytes: u64,
    /// The most the allocator held for the operator itself at once: its own polls' allocations
    /// and the batches its inputs handed it, less what it freed and passed on (its inputs'
    /// own buffers are theirs). 0 where allocations are not counted.
    pub peak_allocated_bytes: u64,
    pub spills: u64,
    pub spilled_bytes: u64,
    /// For the spilling hash join: how it ran.
    pub join: Option<JoinRun>,
}

/// How a spilling hash join ran: all zero when its build fit in memory.
#[derive(Debug, Clone, Copy, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
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
    let children: Vec<PlanNode> = plan.children().into_iter().map(|child| node(child, joins, spilling_join, ran)).collect();
    let (memory, keeps) = holding(plan);
    PlanNode {
        operator: plan.name().to_string(),
        detail,
        estimated_rows,
        estimated_bytes,
        memory,
        estimated_memory: memory_need(keeps, sized(estimated_rows, estimated_bytes), &children),
        pool: (memory != Holds::Streams).then_some("query"),
        join: join(plan, joins, spilling_join),
        actual: if ran { actual(plan) } else { None },
        children,
    }
}

/// Bytes from an estimate of bytes, else of rows at the width the spilling-join rule assumes
/// (`ROW_BYTES_GUESS`), so a join's memory reads as the figure its algorithm was chosen by.
fn sized(rows: Estimate, bytes: Estimate) -> Estimate {
    match (bytes, rows) {
        (known @ (Estimate::Exact(bytes) | Estimate::About(bytes)), _) if bytes > 0 => known,
        (_, Estimate::Exact(rows) | Estimate::About(rows)) => Estimate::About(rows.saturating_mul(ROW_BYTES_GUESS as u64)),
        _ => Estimate::Unknown,
    }
}

/// What an operator's growing buffers keep, were nothing spilled.
#[derive(Clone, Copy)]
enum Keeps {
    Nothing,
    /// Its first input whole: a join's build side, a sort's or a window's input.
    FirstInput,
    /// What it outputs: a TopK's k rows, an aggregate's row per group.
    Output,
    /// What depends on timing: a repartition's batches in flight, a sort-merge join's rows of
    /// one key.
    Unknown,
}

/// How an operator holds memory and what it keeps, by what it is.
fn holding(plan: &Arc<dyn ExecutionPlan>) -> (Holds, Keeps) {
    if let Some(sort) = plan.downcast_ref::<SortExec>() {
        // With a fetch it is a TopK: it keeps k rows and cannot spill them.
        return if sort.fetch().is_some() { (Holds::CannotSpill, Keeps::Output) } else { (Holds::Spills, Keeps::FirstInput) };
    }
    if let Some(aggregate) = plan.downcast_ref::<AggregateExec>() {
        return (if aggregate.group_expr().is_empty() { Holds::CannotSpill } else { Holds::Spills }, Keeps::Output);
    }
    if plan.downcast_ref::<SpillingHashJoinExec>().is_some() {
        return (Holds::Spills, Keeps::FirstInput);
    }
    if plan.name() == "RepartitionExec" || plan.downcast_ref::<SortMergeJoinExec>().is_some() {
        return (Holds::Spills, Keeps::Unknown);
    }
    let holds_its_first_input = plan.downcast_ref::<HashJoinExec>().is_some()
        || plan.downcast_ref::<NestedLoopJoinExec>().is_some()
        || plan.downcast_ref::<CrossJoinExec>().is_some()
        || matches!(plan.name(), "WindowAggExec" | "BoundedWindowAggExec");
    if holds_its_first_input {
        (Holds::CannotSpill, Keeps::FirstInput)
    } else {
        (Holds::Streams, Keeps::Nothing)
    }
}

/// What an operator's growing buffers would hold were nothing spilled, from what it keeps and
/// the estimates of its output (`own`) and inputs.
fn memory_need(keeps: Keeps, own: Estimate, children: &[PlanNode]) -> Estimate {
    match keeps {
        Keeps::Nothing => Estimate::Exact(0),
        Keeps::FirstInput => children.first().map_or(Estimate::Unknown, |child| sized(child.estimated_rows, child.estimated_bytes)),
        Keeps::Output => own,
        Keeps::Unknown => Estimate::Unknown,
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
    let peak = |wanted: &str| {
        metrics
            .iter()
            .filter_map(|metric| match metric.value() {
                MetricValue::Custom { name, value } if name == wanted => Some(value.as_usize() as u64),
                _ => None,
            })
            .max()
            .unwrap_or(0)
    };
    Some(Actual {
        rows: metrics.output_rows().map(|rows| rows as u64),
        elapsed_ns: metrics.sum_by_name("elapsed_own").map_or(0, |time| time.as_usize() as u64),
        peak_reserved_bytes: peak("peak_reserved"),
        peak_allocated_bytes: peak("peak_allocated"),
        spills: metrics.spill_count().unwrap_or(0) as u64,
        spilled_bytes: metrics.spilled_bytes().unwrap_or(0) as u64,
        join: plan.downcast_ref::<SpillingHashJoinExec>().map(|_| {
            let sum = |name: &str| metrics.sum_by_name(name).map_or(0, |v| v.as_usize() as u64);
            let max_depth = metrics.iter().filter(|m| m.value().name() == "max_depth").map(|m| m.value().as_usize() as u64).max().unwrap_or(0);
            JoinRun { buckets: sum("buckets"), spilled_buckets: sum("spilled_buckets"), rounds: sum("rounds"), max_depth }
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::PlanNode;

    /// The JSON form's schema, derived from the types it is written from, is the one in
    /// docs/plan.schema.json: a change to the JSON form shows there. `GOBI_BLESS=1` rewrites it.
    #[test]
    fn the_json_form_keeps_its_documented_schema() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/plan.schema.json");
        let mut schema = schemars::schema_for!(PlanNode);
        schema.insert("title".into(), "gobi plan --format json: one operator and its inputs".into());
        let schema = serde_json::to_string_pretty(&schema).unwrap() + "\n";
        if std::env::var_os("GOBI_BLESS").is_some() {
            std::fs::write(path, &schema).unwrap();
        }
        let documented = std::fs::read_to_string(path).unwrap_or_default();
        assert!(documented == schema, "docs/plan.schema.json differs from the JSON form's schema (GOBI_BLESS=1 rewrites it):\n{schema}");
    }
}
