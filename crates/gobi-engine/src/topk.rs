//! TopK (a `SortExec` with a fetch) inside the statement's budget.
//!
//! DataFusion's TopK keeps its `k` best rows in memory and cannot spill. Two things make it
//! fit:
//! - A TopK whose rows cannot fit a quarter of the statement's memory (`k` × the row's width
//!   from the schema, twice: the rows and their sort keys) is planned as what it means: a sort
//!   that spills, then a limit. This is decided when the plan is made, from the estimate; a
//!   TopK that is planned and then refused still fails, as a memory error.
//! - A TopK keeps every input batch that holds one of its rows and reserves each kept batch's
//!   whole memory, buffers it shares with other batches included. An aggregate emits its
//!   groups as slices of one big batch, so a TopK over a group-by reserved that big batch for
//!   every slice it kept a row of (5.6 MB for TPC-H q10's 20 rows at scale 1). A batch that is
//!   a slice of something much bigger is copied into buffers of its own before TopK sees it;
//!   other batches pass untouched. (A grouped aggregate's wrapper now copies its own output,
//!   `governed.rs`; this still covers other inputs that hand out slices, such as a limit.)
//!
//! ```text
//!   SortExec(fetch=k)                 SortExec(fetch=k)            k rows fit a quarter
//!     AggregateExec          ──►        OwnedBuffersExec
//!                                         AggregateExec
//!
//!   SortExec(fetch=k)                 LimitExec(k)                 k rows do not
//!     input                  ──►        SortExec (spills)
//!                                         input
//! ```
//!
//! Not tracked: the copy itself while TopK looks at it (a batch at a time). Not compacted: the
//! data buffers a string view array's copy still shares (its views are copied, their bytes not).

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::common::{internal_err, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::limit::{GlobalLimitExec, LocalLimitExec};
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::StreamExt;

/// A batch is copied when the buffers it refers to take more than this many times its own
/// rows' bytes (and at least [`MIN_WASTE`] more).
const SHARED_FACTOR: usize = 2;
const MIN_WASTE: usize = 64 << 10;

/// The physical optimizer rule that fits every TopK to the statement's memory (see the
/// module's doc). It runs after DataFusion's rules: a TopK kept keeps the dynamic filter it has
/// already pushed to its scan (a TopK replaced leaves it at its first value, which filters
/// nothing).
#[derive(Debug)]
pub(crate) struct TopKInBudget {
    /// What a TopK's rows may take: a quarter of the statement's memory.
    share: usize,
}

impl TopKInBudget {
    pub(crate) fn new(statement_memory: usize) -> Self {
        Self { share: statement_memory / 4 }
    }
}

/// A row's bytes as the schema tells them: each fixed-width column's width, 32 for the others.
fn row_bytes(schema: &datafusion::arrow::datatypes::Schema) -> usize {
    schema.fields().iter().map(|f| f.data_type().primitive_width().unwrap_or(32)).sum::<usize>().max(1)
}

impl PhysicalOptimizerRule for TopKInBudget {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(sort) = node.downcast_ref::<SortExec>() else { return Ok(Transformed::no(node)) };
            let Some(fetch) = sort.fetch() else { return Ok(Transformed::no(node)) };
            if sort.input().downcast_ref::<OwnedBuffersExec>().is_some() {
                return Ok(Transformed::no(node));
            }
            if fetch.saturating_mul(2 * row_bytes(&sort.schema())) > self.share {
                let spilling = Arc::new(sort.with_fetch(None));
                return Ok(Transformed::yes(match sort.preserve_partitioning() {
                    true => Arc::new(LocalLimitExec::new(spilling, fetch)) as Arc<dyn ExecutionPlan>,
                    false => Arc::new(GlobalLimitExec::new(spilling, 0, Some(fetch))),
                }));
            }
            let owned = Arc::new(OwnedBuffersExec { input: Arc::clone(sort.input()) });
            Ok(Transformed::yes(node.replace_children(vec![owned], ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep))?))
        })
        .data()
    }

    fn name(&self) -> &str {
        "gobi_top_k_in_budget"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `batch`, in buffers of its own if it is a slice of something much bigger.
pub(crate) fn owned(batch: RecordBatch) -> Result<RecordBatch> {
    let whole = batch.get_array_memory_size();
    let own: usize = batch.columns().iter().map(|column| column.to_data().get_slice_memory_size().unwrap_or(whole)).sum();
    if whole <= SHARED_FACTOR * own || whole - own < MIN_WASTE {
        return Ok(batch);
    }
    let rows = UInt32Array::from_iter_values(0..batch.num_rows() as u32);
    Ok(take_record_batch(&batch, &rows)?)
}

/// Passes its input's batches on, each in buffers of its own (see the module's doc).
#[derive(Debug)]
pub struct OwnedBuffersExec {
    input: Arc<dyn ExecutionPlan>,
}

impl DisplayAs for OwnedBuffersExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("OwnedBuffersExec")
    }
}

impl ExecutionPlan for OwnedBuffersExec {
    fn name(&self) -> &str {
        "OwnedBuffersExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(&self, _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    #[allow(deprecated)]
    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(children, ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute))
    }

    fn replace_children(self: Arc<Self>, mut children: Vec<Arc<dyn ExecutionPlan>>, _options: ReplaceChildrenOptions) -> Result<Arc<dyn ExecutionPlan>> {
        match (children.pop(), children.is_empty()) {
            (Some(input), true) => Ok(Arc::new(Self { input })),
            _ => internal_err!("OwnedBuffersExec has one child"),
        }
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context)?;
        let schema = input.schema();
        let owned = input.map(|batch| batch.and_then(owned));
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, owned)))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{ArrayRef, Int64Array};

    use super::*;

    #[test]
    fn a_slice_of_a_big_batch_gets_buffers_of_its_own_and_a_whole_batch_is_passed_on() {
        let big = RecordBatch::try_from_iter([("v", Arc::new(Int64Array::from_iter_values(0..100_000)) as ArrayRef)]).unwrap();
        let slice = big.slice(500, 100);
        assert!(slice.get_array_memory_size() >= 800_000, "a slice refers to the whole buffer");
        let copied = owned(slice.clone()).unwrap();
        assert_eq!(copied, slice, "the same rows");
        assert!(copied.get_array_memory_size() < 4096, "{} bytes", copied.get_array_memory_size());
        let passed = owned(big.clone()).unwrap();
        assert!(std::ptr::eq(passed.column(0).to_data().buffers()[0].as_ptr(), big.column(0).to_data().buffers()[0].as_ptr()), "not copied");
    }

    /// The plan of `sql` over `t` after the rule, for a statement of `memory` bytes.
    async fn planned(sql: &str, memory: usize) -> String {
        let ctx = datafusion::prelude::SessionContext::new();
        ctx.sql("CREATE TABLE t AS VALUES (1, 2), (3, 4)").await.unwrap();
        let plan = ctx.sql(sql).await.unwrap().create_physical_plan().await.unwrap();
        let plan = TopKInBudget::new(memory).optimize(plan, &ConfigOptions::default()).unwrap();
        let shown = datafusion::physical_plan::displayable(plan.as_ref()).indent(false).to_string();
        shown
    }

    /// 100,000 rows of two BIGINTs (and their keys) take 3.2 MB: a TopK in 64 MiB, a sort
    /// that spills and a limit in 4 MiB.
    #[tokio::test]
    async fn a_top_k_whose_rows_do_not_fit_a_quarter_becomes_a_sort_and_a_limit() {
        let sql = "SELECT column1, column2 FROM t ORDER BY column2 LIMIT 100000";
        let roomy = planned(sql, 64 << 20).await;
        assert!(roomy.contains("TopK(fetch=100000)"), "{roomy}");
        let small = planned(sql, 4 << 20).await;
        assert!(!small.contains("TopK") && small.contains("SortExec") && small.contains("fetch=100000"), "{small}");
    }

    #[tokio::test]
    async fn every_top_k_reads_its_input_through_owned_buffers() {
        let shown = planned("SELECT column1, count(*) FROM t GROUP BY column1 ORDER BY 2 DESC LIMIT 1", 1 << 30).await;
        let top = shown.lines().position(|l| l.contains("TopK")).unwrap_or_else(|| panic!("{shown}"));
        assert!(shown.lines().nth(top + 1).is_some_and(|l| l.contains("OwnedBuffersExec")), "{shown}");
    }
}
