//! SQL statements: gobi's own answers first (SHOW …, SET memory.*, ALTER TABLE, CREATE
//! INDEX), then DataFusion's plan — a write goes to `write.rs`, DDL DataFusion runs itself,
//! anything else is a query run through the governed path as a stream.

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::{DdlStatement, Expr, LogicalPlan, Volatility};
use datafusion::sql::sqlparser::ast::{Set, Statement as SqlStatement};
use gobi_lang::Ast;

use crate::catalog::unknown_table;
use crate::error::Result;
use crate::output::Output;
use crate::result_cache::Versions;
use crate::runner::Statement;
use crate::session::Session;
use crate::settings;

impl Session {
    pub(crate) async fn execute_sql(&self, ast: &Ast, text: &str) -> Result<Output> {
        if let Some(output) = self.execute_gobi_statement(ast).await? {
            return Ok(output);
        }
        let (plan, renamed) = self.plan_sql(ast).await?;
        let ast = renamed.as_ref().unwrap_or(ast);
        if let Some(output) = self.execute_write(&plan, ast, text).await? {
            return Ok(output);
        }
        if let LogicalPlan::Statement(datafusion::logical_expr::Statement::Execute(_)) = &plan {
            // PREPARE stored the plan in this session's state (the session's place for prepared
            // statements); EXECUTE is that plan with its parameters, run like any query.
            let prepared = self.ctx.execute_logical_plan(plan).await?.into_unoptimized_plan();
            return self.query_plan(prepared, text).await;
        }
        if matches!(plan, LogicalPlan::Ddl(_) | LogicalPlan::Statement(_)) {
            let what = what_it_did(&plan);
            self.ctx.execute_logical_plan(plan).await?.collect().await?;
            return Ok(Output::Done(what));
        }
        self.query_plan(plan, text).await
    }

    /// Runs a query through the governed path: its rows stream back; a repeated query over
    /// unchanged Delta tables is answered from the result cache.
    pub(crate) async fn query_plan(&self, plan: LogicalPlan, text: &str) -> Result<Output> {
        let cache_key = self.result_cache_key(&plan);
        let settings = self.settings.read().limits;
        let mut statement = Statement::begin(self.engine(), text, settings, self.logged(), &self.progress, &self.stops).await?;
        if let Some((key, versions)) = &cache_key {
            if let Some((schema, batches)) = self.engine().result_cache().get(key, versions) {
                return Ok(Output::Rows(statement.cached(schema, batches)));
            }
        }
        let state = statement.state(&self.ctx.state())?;
        Ok(Output::Rows(statement.query(&state, &plan, cache_key).await?))
    }

    /// The result cache's key for `plan` (its text) and the Delta snapshots its scans read;
    /// `None` when the result may change without a table changing: it reads something other
    /// than Delta tables, or calls a function that is not immutable.
    fn result_cache_key(&self, plan: &LogicalPlan) -> Option<(String, Versions)> {
        // A statement that writes (COPY TO a file, INSERT INTO a session table) or measures a
        // run (EXPLAIN ANALYZE) must run every time.
        let does_work = matches!(plan, LogicalPlan::Dml(_) | LogicalPlan::Copy(_) | LogicalPlan::Analyze(_) | LogicalPlan::Explain(_));
        if does_work || !self.engine().result_cache_on() {
            return None;
        }
        let tables = scanned_versions(plan)?;
        Some((plan.display_indent_schema().to_string(), tables))
    }

    /// Statements DataFusion does not plan, or that gobi answers differently.
    async fn execute_gobi_statement(&self, ast: &Ast) -> Result<Option<Output>> {
        let Ast::Statement(statement) = ast else {
            return Ok(None);
        };
        match statement.as_ref() {
            SqlStatement::ShowTables { .. } => Ok(Some(self.show_tables().await?)),
            SqlStatement::ShowVariable { variable } => {
                let words: Vec<String> = variable.iter().map(|part| part.value.to_lowercase()).collect();
                match words.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
                    ["memory"] => Ok(Some(self.show_memory()?)),
                    ["settings"] => Ok(Some(self.show_settings(None)?)),
                    [section, name] if settings::is_section(section) => Ok(Some(self.show_settings(Some(&format!("{section}.{name}")))?)),
                    _ => Ok(None),
                }
            }
            SqlStatement::Set(Set::SingleAssignment { variable, values, .. })
                if variable.0.len() == 2 && settings::is_section(&variable.0[0].to_string()) && values.len() == 1 =>
            {
                Ok(Some(self.set_setting(&variable.to_string(), &values[0])?))
            }
            SqlStatement::AlterTable(alter) => Ok(Some(self.alter_table(alter).await?)),
            SqlStatement::CreateIndex(index) => {
                let table = object_name(&index.table_name);
                if !self.table_names().contains(&table) {
                    return Err(unknown_table(&table, &self.table_names()));
                }
                Ok(Some(Output::Done(format!(
                    "gobi keeps no secondary indexes: CREATE INDEX on {table} accepted and ignored \
                     (Delta file statistics serve range and equality filters)"
                ))))
            }
            _ => Ok(None),
        }
    }
}

/// The Delta table id and version each scan of `plan` reads, sorted by table name; `None` when
/// it scans anything else or calls a function that is not immutable (its result may change
/// with no table changing).
fn scanned_versions(plan: &LogicalPlan) -> Option<Versions> {
    let mut tables = vec![];
    let mut cacheable = true;
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let read = datafusion::datasource::source_as_provider(&scan.source).ok();
            match read.as_deref().and_then(crate::delta_scan::scanned_version) {
                Some(version) => tables.push((scan.table_name.table().to_string(), version.clone())),
                None => cacheable = false,
            }
        }
        let _ = node.apply_expressions(|expr| {
            expr.apply(|e| {
                if let Expr::ScalarFunction(f) = e {
                    // A user's block function can be replaced or dropped with no table changing.
                    let user_function = f.func.inner().is::<crate::functions::BlockFunction>();
                    if user_function || f.func.signature().volatility != Volatility::Immutable {
                        cacheable = false;
                    }
                }
                Ok(TreeNodeRecursion::Continue)
            })
        });
        Ok(if cacheable { TreeNodeRecursion::Continue } else { TreeNodeRecursion::Stop })
    });
    if !cacheable || tables.is_empty() {
        return None;
    }
    tables.sort_by(|a, b| a.0.cmp(&b.0));
    tables.dedup();
    Some(tables)
}

/// The words for a statement DataFusion ran that returns no rows.
fn what_it_did(plan: &LogicalPlan) -> String {
    match plan {
        LogicalPlan::Ddl(DdlStatement::CreateView(view)) => format!("created view {}", view.name),
        LogicalPlan::Ddl(DdlStatement::DropView(view)) => format!("dropped view {}", view.name),
        LogicalPlan::Ddl(DdlStatement::CreateExternalTable(table)) => format!("created external table {}", table.name),
        LogicalPlan::Ddl(DdlStatement::DropTable(table)) => format!("dropped table {}", table.name),
        LogicalPlan::Ddl(ddl) => ddl.name().to_string(),
        other => other.display().to_string(),
    }
}

/// The last part of a (possibly qualified) name, as SQL resolves it.
pub(crate) fn object_name(name: &datafusion::sql::sqlparser::ast::ObjectName) -> String {
    let last = name.0.last().and_then(|part| part.as_ident()).cloned().unwrap_or_else(|| datafusion::sql::sqlparser::ast::Ident::new(name.to_string()));
    gobi_lang::normalize_ident(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Session;

    async fn plan(session: &Session, sql: &str) -> LogicalPlan {
        let statement = gobi_lang::parse_script(sql).unwrap().remove(0);
        session.logical_plan(&statement).await.unwrap()
    }

    /// Only plans over Delta tables with immutable functions have a cache key; it names each
    /// table once with the version its scan read.
    #[tokio::test]
    async fn the_result_cache_key_is_the_snapshots_a_plan_reads() {
        let dir = tempfile::tempdir().unwrap();
        let session = Session::open(crate::Lakehouse::init(dir.path()).unwrap());
        session.run_script("CREATE TABLE t AS SELECT 1 AS x; INSERT INTO t VALUES (2)").await.unwrap();
        let versions = scanned_versions(&plan(&session, "SELECT a.x FROM t a JOIN t b ON a.x = b.x").await).unwrap();
        assert_eq!(versions.len(), 1, "one table, read twice, named once: {versions:?}");
        assert_eq!(versions[0].0, "t");
        assert_eq!(versions[0].1.version, 1);
        assert!(scanned_versions(&plan(&session, "SELECT x, random() FROM t").await).is_none(), "random() may change");
        assert!(scanned_versions(&plan(&session, "SELECT 1").await).is_none(), "no Delta table: nothing to key on");
        assert!(scanned_versions(&plan(&session, "SELECT * FROM t, (VALUES (1)) v(y)").await).is_some(), "VALUES is no scan");
    }
}
