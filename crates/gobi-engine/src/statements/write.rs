//! Changes to tables. With a lakehouse, every write that reads or writes data runs as a
//! governed statement (admission, its own scope and limits, a query-log row) and hands delta-rs
//! the statement's state, so delta-rs's plans reserve from the statement and are charged to it;
//! DDL that touches only the folder (views, DROP) needs no scope. Without a lakehouse, a
//! created table's batches are held from the temp pool, like a `let` table.

use std::sync::Arc;

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::TableProvider;
use datafusion::logical_expr::{DdlStatement, DmlStatement, LogicalPlan, WriteOp};
use datafusion::sql::sqlparser::ast::{AlterTable, AlterTableOperation};
use gobi_lang::Ast;

use crate::error::{GobiError, Result};
use crate::output::{Collected, Output};
use crate::runner::Statement;
use crate::session::{needs_lakehouse, Session};
use crate::statements::query::object_name;
use crate::variables::TableValue;
use crate::writes;

impl Session {
    /// Performs `plan` if it is a write gobi does itself; `None` for everything else.
    pub(crate) async fn execute_write(&self, plan: &LogicalPlan, ast: &Ast, text: &str) -> Result<Option<Output>> {
        let Some(schema) = &self.schema else {
            return self.write_in_memory(plan, text).await;
        };
        let output = match plan {
            LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(create)) => {
                self.governed_write(text, |state| async move { writes::create_table(&state, schema, create).await }).await?
            }
            LogicalPlan::Ddl(DdlStatement::CreateView(view)) => writes::create_view(schema, view.name.table(), view.or_replace, &ast.to_string())?,
            LogicalPlan::Ddl(DdlStatement::DropTable(drop)) => writes::drop_table(schema, drop.name.table(), drop.if_exists).await?,
            LogicalPlan::Ddl(DdlStatement::DropView(drop)) => writes::drop_view(schema, drop.name.table(), drop.if_exists)?,
            LogicalPlan::Dml(DmlStatement { table_name, op, input, .. }) => {
                let table = table_name.table();
                if schema.is_session_table(table) {
                    return Ok(None);
                }
                match op {
                    WriteOp::Insert(insert) => {
                        let input = Arc::unwrap_or_clone(Arc::clone(input));
                        self.governed_write(text, |state| async move { writes::insert(&state, schema, table, input, *insert).await }).await?
                    }
                    WriteOp::Delete => self.governed_write(text, |state| async move { writes::delete(&state, schema, table, input).await }).await?,
                    WriteOp::Update => self.governed_write(text, |state| async move { writes::update(&state, schema, table, input).await }).await?,
                    _ => return Ok(None),
                }
            }
            _ => return Ok(None),
        };
        Ok(Some(output))
    }

    /// Runs `write` as a governed statement, giving it the statement's state.
    async fn governed_write<F, Fut>(&self, text: &str, write: F) -> Result<Output>
    where
        F: FnOnce(datafusion::execution::session_state::SessionState) -> Fut,
        Fut: std::future::Future<Output = Result<writes::Written>>,
    {
        if let Some(lakehouse) = self.lakehouse() {
            lakehouse.writable()?;
        }
        let settings = self.settings.read().limits;
        let mut statement = Statement::begin(self.engine(), text, settings, self.logged(), &self.progress, &self.stops).await?;
        let state = statement.state(&self.ctx.state())?;
        statement.finish_write(write(state)).await
    }

    /// `COPY 'file' TO table`: a governed write.
    pub(crate) async fn copy_from(&self, file: &str, table: &str, text: &str) -> Result<Output> {
        let schema = self.schema.as_ref().ok_or_else(|| needs_lakehouse("COPY … TO table"))?;
        self.governed_write(text, |state| async move { crate::copy::copy_from(&state, schema, file, table).await }).await
    }

    /// `OPTIMIZE t [ZORDER BY (…)]`: a governed write (it reads and rewrites the table's files).
    pub(crate) async fn optimize(&self, table: &str, zorder: &[String], text: &str) -> Result<Output> {
        let schema = self.schema.as_ref().ok_or_else(|| needs_lakehouse("OPTIMIZE"))?;
        self.governed_write(text, |state| async move { crate::maintenance::optimize(&state, schema, table, zorder).await }).await
    }

    /// `VACUUM t …`: a governed statement (logged, admitted) that deletes files.
    pub(crate) async fn vacuum(&self, table: &str, retain_hours: Option<u64>, dry_run: bool, text: &str) -> Result<Output> {
        let schema = self.schema.as_ref().ok_or_else(|| needs_lakehouse("VACUUM"))?;
        let allow_short_retention = self.settings.read().allow_short_retention;
        self.governed_write(text, |state| async move { crate::maintenance::vacuum(&state, schema, table, retain_hours, dry_run, allow_short_retention).await })
            .await
    }

    /// `RESTORE t TO …`: one commit.
    pub(crate) async fn restore(&self, table: &str, to: &gobi_lang::TableVersion, text: &str) -> Result<Output> {
        let schema = self.schema.as_ref().ok_or_else(|| needs_lakehouse("RESTORE"))?;
        self.governed_write(text, |_| async move { crate::maintenance::restore(schema, table, to).await }).await
    }

    /// `ALTER TABLE t ADD COLUMN …`: one commit.
    pub(crate) async fn alter_table(&self, alter: &AlterTable) -> Result<Output> {
        let schema = self.schema.as_ref().ok_or_else(|| needs_lakehouse("ALTER TABLE"))?;
        schema.lakehouse().writable()?;
        let table = object_name(&alter.name);
        let mut columns = vec![];
        for operation in &alter.operations {
            match operation {
                AlterTableOperation::AddColumn { column_def, if_not_exists, .. } => {
                    columns.push((writes::column_field(&self.ctx.state(), column_def).await?, *if_not_exists));
                }
                other => {
                    return Err(GobiError::plan(format!(
                        "ALTER TABLE … {} is not supported; gobi supports ALTER TABLE … ADD COLUMN",
                        other.to_string().split_whitespace().take(2).collect::<Vec<_>>().join(" ")
                    )))
                }
            }
        }
        Ok(Output::Done(writes::add_columns(schema, &table, columns).await?))
    }

    /// CREATE TABLE, INSERT and DROP TABLE in a session without a lakehouse: the table's batches
    /// are computed through the governed path, then held from the temp pool for as long as the
    /// table lives (an INSERT makes a new value of the old rows and the new).
    async fn write_in_memory(&self, plan: &LogicalPlan, text: &str) -> Result<Option<Output>> {
        // `created`: the keys a CREATE declares; `None` for an INSERT, which keeps the table's.
        let (name, input, created) = match plan {
            LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(create)) => {
                let name = create.name.table().to_string();
                let exists = self.ctx.table_exist(name.as_str())?;
                if exists && create.if_not_exists {
                    return Ok(Some(Output::Done(format!("table {name} already exists; nothing done"))));
                }
                if exists && !(create.or_replace && self.memory_tables.read().contains_key(&name)) {
                    return Err(GobiError::plan(format!("table {name} already exists")).with_hint("use CREATE OR REPLACE TABLE, or DROP TABLE first"));
                }
                (name, create.input.as_ref().clone(), Some(create.constraints.clone()))
            }
            LogicalPlan::Dml(DmlStatement { table_name, op: WriteOp::Insert(_), input, .. }) if self.memory_tables.read().contains_key(table_name.table()) => {
                (table_name.table().to_string(), input.as_ref().clone(), None)
            }
            LogicalPlan::Ddl(DdlStatement::DropTable(drop)) if self.memory_tables.read().contains_key(drop.name.table()) => {
                let name = drop.name.table();
                self.ctx.deregister_table(name)?;
                self.memory_tables.write().remove(name);
                return Ok(Some(Output::Done(format!("dropped table {name}"))));
            }
            _ => return Ok(None),
        };
        let Collected::Rows { schema, mut batches } = self.query_plan(input, text).await?.collect().await? else {
            return Err(GobiError::internal("a table's rows came back as no rows"));
        };
        let added: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        let replace = created.is_some();
        let mut constraints = created.unwrap_or_default();
        if !replace {
            let old = self.ctx.table_provider(name.as_str()).await?;
            constraints = old.constraints().cloned().unwrap_or_default();
            let mut rows = self.memory_tables.read().get(&name).map(TableValue::batches).unwrap_or_default();
            let schema = old.schema();
            for batch in batches {
                let batch = RecordBatch::try_new(Arc::clone(&schema), batch.columns().to_vec());
                rows.push(batch.map_err(|e| GobiError::data(format!("the new rows do not fit table {name}: {e}")))?);
            }
            batches = rows;
        }
        let schema = if replace { schema } else { self.ctx.table_provider(name.as_str()).await?.schema() };
        let value = TableValue::new(schema, batches, self.engine().memory(), &format!("table {name}"))?;
        let table: Arc<dyn TableProvider> = Arc::new(value.table()?.with_constraints(constraints));
        self.ctx.deregister_table(name.as_str())?;
        self.ctx.register_table(name.as_str(), table)?;
        self.memory_tables.write().insert(name.clone(), value);
        Ok(Some(if replace { Output::Done(format!("created table {name} (in memory, {added} rows)")) } else { Output::Count(added) }))
    }
}
