//! A semi join (`x IN (subquery)`, `EXISTS`) moved below an inner join on its own key.
//!
//! DataFusion decorrelates `WHERE o_orderkey IN (SELECT …)` into a semi join above all of the
//! query's inner joins, so it filters their output. When the join just below it is on the same
//! key, the semi join can filter that join's input instead (TPC-H q18):
//!
//! ```text
//!  LeftSemi o_orderkey = s.k                Inner o_orderkey = l_orderkey
//!    Inner o_orderkey = l_orderkey            LeftSemi o_orderkey = s.k
//!      orders ⋈ customer            ──►         orders ⋈ customer
//!      lineitem                                 s
//!    s                                        lineitem
//! ```
//!
//! Both give the same rows: a semi join only drops rows of its left side by columns of that
//! side, and an inner join neither invents nor changes them. Where it pays: a join on the semi
//! join's key filters by that key too, so the rows it drops below are the rows whose key has no
//! match, and a join from a table to its detail rows (an order's lines) has more rows out than
//! in. In q18 the semi join keeps 57 of 1.5 M orders, and the join with lineitem then holds 57
//! rows instead of 1.5 M (which spilled at 175 MiB). Joins on another key are left alone: one
//! that filters (q21's supplier by nation) would give the semi join more rows to probe.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::common::tree_node::Transformed;
use datafusion::common::{Column, JoinType, Result};
use datafusion::logical_expr::{Expr, Join, LogicalPlan, Projection};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};

#[derive(Debug, Default)]
pub struct SemiJoinBelowKeyJoin;

impl OptimizerRule for SemiJoinBelowKeyJoin {
    fn name(&self) -> &str {
        "gobi_semi_join_below_key_join"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::TopDown)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(&self, plan: LogicalPlan, _config: &dyn OptimizerConfig) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Join(semi) = &plan else { return Ok(Transformed::no(plan)) };
        if semi.join_type != JoinType::LeftSemi {
            return Ok(Transformed::no(plan));
        }
        match pushed(semi)? {
            Some(pushed) => Ok(Transformed::yes(pushed)),
            None => Ok(Transformed::no(plan)),
        }
    }
}

/// The semi join moved into the key side of the inner join below it (through a projection
/// that passes its columns on), or `None` when it stays.
fn pushed(semi: &Join) -> Result<Option<LogicalPlan>> {
    let (projection, inner) = match semi.left.as_ref() {
        LogicalPlan::Projection(projection) => match projection.input.as_ref() {
            LogicalPlan::Join(inner) => (Some(projection), inner),
            _ => return Ok(None),
        },
        LogicalPlan::Join(inner) => (None, inner),
        _ => return Ok(None),
    };
    if inner.join_type != JoinType::Inner {
        return Ok(None);
    }
    let used = left_columns(semi);
    if let Some(projection) = projection {
        let passed: HashSet<&Column> = projection.expr.iter().filter_map(|e| if let Expr::Column(c) = e { Some(c) } else { None }).collect();
        if !used.iter().all(|c| passed.contains(c)) {
            return Ok(None);
        }
    }
    let semi_keys: Vec<&Expr> = semi.on.iter().map(|(left, _)| left).collect();
    let on_side = |side: &LogicalPlan, keys: Vec<&Expr>| used.iter().all(|c| side.schema().has_column(c)) && semi_keys.iter().all(|k| keys.contains(k));
    let into_left = on_side(&inner.left, inner.on.iter().map(|(l, _)| l).collect());
    let into_right = !into_left && on_side(&inner.right, inner.on.iter().map(|(_, r)| r).collect());
    if !into_left && !into_right {
        return Ok(None);
    }
    let below = |side: &Arc<LogicalPlan>| rejoined(semi, Arc::clone(side), Arc::clone(&semi.right)).map(Arc::new);
    let (left, right) = if into_left { (below(&inner.left)?, Arc::clone(&inner.right)) } else { (Arc::clone(&inner.left), below(&inner.right)?) };
    let joined = rejoined(inner, left, right)?;
    Ok(Some(match projection {
        Some(projection) => LogicalPlan::Projection(Projection::try_new(projection.expr.clone(), Arc::new(joined))?),
        None => joined,
    }))
}

/// `join` over other inputs, its schema made anew from theirs.
fn rejoined(join: &Join, left: Arc<LogicalPlan>, right: Arc<LogicalPlan>) -> Result<LogicalPlan> {
    Ok(LogicalPlan::Join(Join::try_new(
        left,
        right,
        join.on.clone(),
        join.filter.clone(),
        join.join_type,
        join.join_constraint,
        join.null_equality,
        join.null_aware,
    )?))
}

/// The columns of the semi join's left side its keys and filter use.
fn left_columns(semi: &Join) -> HashSet<Column> {
    let right = semi.right.schema();
    let mut columns: HashSet<Column> = semi.on.iter().flat_map(|(left, _)| left.column_refs()).cloned().collect();
    if let Some(filter) = &semi.filter {
        columns.extend(filter.column_refs().into_iter().filter(|c| !right.has_column(c)).cloned());
    }
    columns
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::execution::session_state::SessionStateBuilder;
    use datafusion::prelude::SessionContext;

    use super::*;

    fn context(with_rule: bool) -> SessionContext {
        let mut rules = datafusion::optimizer::Optimizer::new().rules;
        if with_rule {
            rules.push(Arc::new(SemiJoinBelowKeyJoin));
        }
        SessionContext::new_with_state(SessionStateBuilder::new().with_default_features().with_optimizer_rules(rules).build())
    }

    async fn tables(ctx: &SessionContext) {
        for sql in [
            "CREATE TABLE customer (c_custkey INT, c_nation INT) AS VALUES (1, 10), (2, 20), (3, 10)",
            "CREATE TABLE orders (o_orderkey INT, o_custkey INT) AS VALUES (100, 1), (101, 2), (102, 3), (103, 1), (104, NULL)",
            "CREATE TABLE lineitem (l_orderkey INT, l_qty INT) AS VALUES (100, 5), (100, 7), (101, 1), (102, 9), (102, 9), (103, 2), (104, 20), (NULL, 30)",
        ] {
            ctx.sql(sql).await.unwrap().collect().await.unwrap();
        }
    }

    /// The optimized plan's text and the query's rows, sorted.
    async fn run(with_rule: bool, sql: &str) -> (String, Vec<String>) {
        let ctx = context(with_rule);
        tables(&ctx).await;
        let frame = ctx.sql(sql).await.unwrap();
        let plan = frame.clone().into_optimized_plan().unwrap().display_indent().to_string();
        let text = pretty_format_batches(&frame.collect().await.unwrap()).unwrap().to_string();
        let mut rows: Vec<String> = text.lines().filter(|l| l.starts_with("| ")).skip(1).map(str::to_string).collect();
        rows.sort();
        (plan, rows)
    }

    /// The line of the plan that holds `needle`, by its indentation (depth).
    fn depth(plan: &str, needle: &str) -> usize {
        let line = plan.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("{needle} not in\n{plan}"));
        line.len() - line.trim_start().len()
    }

    /// q18's shape: the semi join ends below the join on its key, and the rows are the same.
    #[tokio::test]
    async fn a_semi_join_moves_below_the_join_on_its_key_with_the_same_rows() {
        let sql = "SELECT c_custkey, o_orderkey, sum(l_qty) FROM customer, orders, lineitem \
                   WHERE o_orderkey IN (SELECT l_orderkey FROM lineitem GROUP BY l_orderkey HAVING sum(l_qty) > 10) \
                   AND c_custkey = o_custkey AND o_orderkey = l_orderkey GROUP BY c_custkey, o_orderkey";
        let (before, expected) = run(false, sql).await;
        let (after, rows) = run(true, sql).await;
        assert!(depth(&before, "LeftSemi Join") < depth(&before, "Inner Join: orders.o_orderkey = lineitem.l_orderkey"), "{before}");
        assert!(depth(&after, "LeftSemi Join") > depth(&after, "Inner Join: orders.o_orderkey = lineitem.l_orderkey"), "{after}");
        assert_eq!(rows, expected);
        assert_eq!(rows.len(), 2, "orders 100 (12) and 102 (18): {rows:?}");
    }

    /// A semi join whose key is not the key of the join below stays where it is (a join that
    /// filters, like q21's by nation, would leave it more rows to probe).
    #[tokio::test]
    async fn a_semi_join_on_another_key_stays() {
        let sql = "SELECT o_orderkey FROM customer, orders WHERE c_custkey = o_custkey AND c_nation = 10 \
                   AND o_orderkey IN (SELECT l_orderkey FROM lineitem WHERE l_qty > 4)";
        let (before, expected) = run(false, sql).await;
        let (after, rows) = run(true, sql).await;
        assert_eq!(after, before);
        assert_eq!(rows, expected);
    }

    /// A filter of the semi join (EXISTS with a correlated non-equality) that uses a column of
    /// the side it would move into moves with it; the rows stay the same.
    #[tokio::test]
    async fn a_correlated_exists_moves_with_its_filter() {
        let sql = "SELECT o_orderkey, l_qty FROM orders, lineitem WHERE o_orderkey = l_orderkey \
                   AND EXISTS (SELECT 1 FROM lineitem l2 WHERE l2.l_orderkey = orders.o_orderkey AND l2.l_qty > orders.o_custkey * 4)";
        let (before, expected) = run(false, sql).await;
        let (after, rows) = run(true, sql).await;
        assert!(depth(&after, "LeftSemi Join") > depth(&after, "Inner Join: orders.o_orderkey = lineitem.l_orderkey"), "{after}");
        assert_ne!(after, before);
        assert_eq!(rows, expected);
        assert!(!rows.is_empty());
    }
}
