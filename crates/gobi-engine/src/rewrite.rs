//! Valid SQL that DataFusion 55 does not plan as written, made plannable without changing
//! its meaning.
//!
//! - [`name_duplicate_columns`]: `SELECT 1 AS c, 2 AS c` and `SELECT (SELECT …), (SELECT …)`
//!   are valid, but DataFusion requires unique output names.
//! - [`NonEquiCorrelatedSubquery`]: a scalar subquery correlated by anything but `=`
//!   (`(SELECT count(*) FROM t x WHERE x.c > t.c)`), which DataFusion cannot decorrelate.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::arrow::datatypes::FieldRef;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, Result};
use datafusion::logical_expr::utils::{conjunction, split_conjunction};
use datafusion::logical_expr::{BinaryExpr, Expr, Filter, LogicalPlan, LogicalPlanBuilder, Operator, Subquery};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};
use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, Ident, Query, SelectItem, SetExpr, VisitMut, VisitorMut};
use gobi_lang::Ast;

/// Gives every repeated output name of a SELECT a suffix (`c`, `c_2`); unnamed expressions
/// are first named after their own text, so two different subqueries no longer collide.
pub fn name_duplicate_columns(statement: &mut Ast) {
    let Ast::Statement(statement) = statement else { return };
    let _ = statement.visit(&mut DuplicateNames);
}

struct DuplicateNames;

impl VisitorMut for DuplicateNames {
    type Break = ();

    fn post_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        name_columns(&mut query.body);
        ControlFlow::Continue(())
    }
}

fn name_columns(body: &mut SetExpr) {
    match body {
        SetExpr::Select(select) => {
            let mut seen: HashMap<String, usize> = HashMap::new();
            for item in &mut select.projection {
                let (name, computed) = match item {
                    SelectItem::UnnamedExpr(SqlExpr::Identifier(id)) => (id.value.to_lowercase(), false),
                    SelectItem::UnnamedExpr(SqlExpr::CompoundIdentifier(parts)) => (parts.last().map(|p| p.value.to_lowercase()).unwrap_or_default(), false),
                    SelectItem::UnnamedExpr(expr) => (expr.to_string(), true),
                    SelectItem::ExprWithAlias { alias, .. } => (alias.value.to_lowercase(), false),
                    _ => continue,
                };
                let count = seen.entry(name.clone()).or_default();
                *count += 1;
                if *count == 1 && !computed {
                    continue;
                }
                let alias = Ident::with_quote('"', if *count == 1 { name } else { format!("{name}_{count}") });
                *item = match std::mem::replace(item, SelectItem::Wildcard(Default::default())) {
                    SelectItem::UnnamedExpr(expr) | SelectItem::ExprWithAlias { expr, .. } => SelectItem::ExprWithAlias { expr, alias },
                    other => other,
                };
            }
        }
        SetExpr::SetOperation { left, right, .. } => {
            name_columns(left);
            name_columns(right);
        }
        SetExpr::Query(query) => name_columns(&mut query.body),
        _ => {}
    }
}

/// Rewrites a scalar subquery whose correlation is not `inner = outer` into one that is, so
/// DataFusion's `ScalarSubqueryToJoin` can decorrelate it (as a grouped left join, with its
/// handling of `count` over no rows). Runs before that rule.
///
/// ```text
///  SELECT (SELECT count(*) FROM t x WHERE x.c > t.c) FROM t
///
///  becomes, inside the subquery:
///
///  Filter: x.c > d.c0 AND d.c0 = outer(t.c)
///    Cross join
///      x
///      d: SELECT DISTINCT t.c AS c0 FROM <the outer query's input>
/// ```
///
/// The added equality matches no row when the outer value is NULL, which gives the subquery
/// its value over no rows (0 for count, NULL otherwise). That is what the original predicate
/// gives only if it cannot be true when that outer value is NULL, so the rule applies only
/// when, for every outer column, some conjunct is built from it with operators that carry a
/// NULL through (comparisons, arithmetic, casts, NOT, BETWEEN, LIKE); `t.c IS NULL` or
/// `coalesce(t.c, 0)` leave the subquery to DataFusion.
#[derive(Debug, Default)]
pub struct NonEquiCorrelatedSubquery;

impl OptimizerRule for NonEquiCorrelatedSubquery {
    fn name(&self) -> &str {
        "gobi_non_equi_correlated_subquery"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::TopDown)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(&self, plan: LogicalPlan, _config: &dyn OptimizerConfig) -> Result<Transformed<LogicalPlan>> {
        let inputs = plan.inputs();
        let needs_rewrite = |e: &Expr| e.exists(|e| Ok(matches!(e, Expr::ScalarSubquery(s) if correlated_filter(s).is_some()))).unwrap_or(false);
        if inputs.len() != 1 || !plan.expressions().iter().any(needs_rewrite) {
            return Ok(Transformed::no(plan));
        }
        let outer = inputs[0].clone();
        let mut rewritten = 0;
        plan.map_expressions(|expr| {
            expr.transform_up(|e| match e {
                Expr::ScalarSubquery(subquery) if correlated_filter(&subquery).is_some() => {
                    rewritten += 1;
                    Ok(Transformed::yes(Expr::ScalarSubquery(with_outer_values(subquery, &outer, rewritten)?)))
                }
                other => Ok(Transformed::no(other)),
            })
        })
    }
}

/// The one filter of an aggregated subquery that holds all its outer references, when one of
/// its correlated conjuncts is not an equality DataFusion can pull up.
fn correlated_filter(subquery: &Subquery) -> Option<&Filter> {
    let mut plan = subquery.subquery.as_ref();
    let mut aggregated = false;
    loop {
        match plan {
            LogicalPlan::Filter(filter) if filter.predicate.contains_outer() => {
                let below_is_plain = !filter.input.exists(|p| Ok(p.contains_outer_reference())).unwrap_or(true);
                let conjuncts = split_conjunction(&filter.predicate);
                let non_equi = conjuncts.iter().any(|c| c.contains_outer() && !is_pullable_equality(c));
                let null_rejecting = outer_references(&filter.predicate).iter().all(|(_, column)| conjuncts.iter().any(|c| null_if_null(c, column)));
                return (aggregated && below_is_plain && non_equi && null_rejecting).then_some(filter);
            }
            LogicalPlan::Aggregate(aggregate) if aggregate.group_expr.is_empty() => aggregated = true,
            LogicalPlan::Projection(_) | LogicalPlan::SubqueryAlias(_) => {}
            _ => return None,
        }
        if plan.contains_outer_reference() {
            return None;
        }
        plan = plan.inputs().first()?;
    }
}

/// The distinct outer columns an expression references, with their fields.
fn outer_references(expr: &Expr) -> Vec<(FieldRef, Column)> {
    let mut references: Vec<(FieldRef, Column)> = vec![];
    let _ = expr.apply(|e| {
        if let Expr::OuterReferenceColumn(field, column) = e {
            if !references.iter().any(|(_, c)| c == column) {
                references.push((Arc::clone(field), column.clone()));
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    references
}

/// True when `expr` is NULL (or false) whenever the outer column `column` is NULL.
fn null_if_null(expr: &Expr, column: &Column) -> bool {
    use Operator::*;
    match expr {
        Expr::OuterReferenceColumn(_, c) => c == column,
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Eq | NotEq | Lt | LtEq | Gt | GtEq | Plus | Minus | Multiply | Divide | Modulo | And => null_if_null(left, column) || null_if_null(right, column),
            Or => null_if_null(left, column) && null_if_null(right, column),
            _ => false,
        },
        Expr::Not(e) | Expr::Negative(e) => null_if_null(e, column),
        Expr::Cast(cast) => null_if_null(&cast.expr, column),
        Expr::Between(between) => [&between.expr, &between.low, &between.high].iter().any(|e| null_if_null(e, column)),
        Expr::Like(like) => null_if_null(&like.expr, column) || null_if_null(&like.pattern, column),
        _ => false,
    }
}

/// `inner_column = outer_column`, the form DataFusion decorrelates itself.
fn is_pullable_equality(expr: &Expr) -> bool {
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::Eq, right }) => {
            matches!((left.as_ref(), right.as_ref()), (Expr::Column(_), Expr::OuterReferenceColumn(..)) | (Expr::OuterReferenceColumn(..), Expr::Column(_)))
        }
        _ => false,
    }
}

fn with_outer_values(subquery: Subquery, outer: &LogicalPlan, id: usize) -> Result<Subquery> {
    let original = correlated_filter(&subquery).expect("checked by the caller").predicate.clone();
    let references = outer_references(&original);
    let alias = format!("__gobi_outer_{id}");
    let value = |i: usize| Expr::Column(Column::new(Some(alias.as_str()), format!("c{i}")));
    let outer_values = LogicalPlanBuilder::from(outer.clone())
        .project(references.iter().enumerate().map(|(i, (_, c))| Expr::Column(c.clone()).alias(format!("c{i}"))))?
        .distinct()?
        .alias(alias.as_str())?
        .build()?;
    let local = original.clone().transform(|e| match e {
        Expr::OuterReferenceColumn(_, column) => {
            let i = references.iter().position(|(_, c)| *c == column).expect("collected above");
            Ok(Transformed::yes(value(i)))
        }
        other => Ok(Transformed::no(other)),
    })?;
    let correlation = references.iter().enumerate().map(|(i, (field, column))| value(i).eq(Expr::OuterReferenceColumn(Arc::clone(field), column.clone())));
    let predicate = conjunction(std::iter::once(local.data).chain(correlation)).expect("at least one conjunct");
    let plan = Arc::unwrap_or_clone(Arc::clone(&subquery.subquery)).transform_up(|node| match node {
        LogicalPlan::Filter(f) if f.predicate == original => {
            let input = LogicalPlanBuilder::from(Arc::unwrap_or_clone(f.input)).cross_join(outer_values.clone())?.build()?;
            Ok(Transformed::yes(LogicalPlan::Filter(Filter::try_new(predicate.clone(), Arc::new(input))?)))
        }
        other => Ok(Transformed::no(other)),
    })?;
    Ok(Subquery { subquery: Arc::new(plan.data), ..subquery })
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::SessionContext;

    use super::*;

    fn parsed(sql: &str) -> Ast {
        datafusion::sql::parser::DFParser::parse_sql(sql).unwrap().pop_front().unwrap()
    }

    #[test]
    fn repeated_output_names_get_suffixes_and_computed_ones_their_text() {
        let mut statement = parsed("SELECT 1 AS c, 2 AS c, a, t.a, a + 1 FROM t");
        name_duplicate_columns(&mut statement);
        assert_eq!(statement.to_string(), r#"SELECT 1 AS c, 2 AS "c_2", a, t.a AS "a_2", a + 1 AS "a + 1" FROM t"#);
        let mut unique = parsed("SELECT a, b AS c FROM t UNION SELECT x, x FROM u");
        name_duplicate_columns(&mut unique);
        assert_eq!(unique.to_string(), r#"SELECT a, b AS c FROM t UNION SELECT x, x AS "x_2" FROM u"#);
    }

    /// A scalar subquery correlated by `>` plans once the rule has run, and answers as the
    /// SQL means (counting no rows as 0).
    #[tokio::test]
    async fn a_non_equality_correlated_subquery_is_planned_and_right() {
        let state = datafusion::execution::session_state::SessionStateBuilder::new()
            .with_default_features()
            .with_optimizer_rules({
                let mut rules = datafusion::optimizer::Optimizer::new().rules;
                rules.insert(0, Arc::new(NonEquiCorrelatedSubquery));
                rules
            })
            .build();
        let ctx = SessionContext::new_with_state(state);
        ctx.sql("CREATE TABLE t (c INT) AS VALUES (1), (2), (3)").await.unwrap().collect().await.unwrap();
        let batches = ctx.sql("SELECT c, (SELECT count(*) FROM t x WHERE x.c > t.c) AS above FROM t ORDER BY c").await.unwrap().collect().await.unwrap();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches).unwrap().to_string();
        assert_eq!(
            text.lines().filter(|l| l.starts_with("| ")).skip(1).map(|l| l.split_whitespace().collect::<String>()).collect::<Vec<_>>(),
            ["|1|2|", "|2|1|", "|3|0|"]
        );
    }
}
