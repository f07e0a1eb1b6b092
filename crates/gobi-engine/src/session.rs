//! A session: one DataFusion context over one lakehouse (or over plain files with `--data`),
//! and the dispatch of each statement to DataFusion or to the Delta write paths.
//!
//! ```text
//!  Statement ─► gobi's own (SHOW HISTORY, SHOW TABLES, ALTER TABLE, CREATE INDEX)
//!      │
//!      └─────► DataFusion plans it ─► a write to the lakehouse? ─► writes.rs (one Delta commit)
//!                                   └► anything else ──────────► DataFusion executes it
//! ```

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::DynamicFileCatalog;
use datafusion::logical_expr::{DdlStatement, DmlStatement, LogicalPlan, WriteOp};
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use datafusion::sql::sqlparser::ast::{AlterTableOperation, Statement as SqlStatement};
use gobi_lang::{parse_script, Ast, Command, Statement};

use crate::catalog::{unknown_table, FileTableFactory, LakehouseSchema};
use crate::error::{GobiError, Result};
use crate::lakehouse::Lakehouse;
use crate::rewrite;
use crate::writes;

/// What a statement produced.
#[derive(Debug, Clone)]
pub enum Output {
    /// A result set (queries, EXPLAIN, DESCRIBE, and the row count of INSERT/UPDATE/DELETE).
    Rows { schema: SchemaRef, batches: Vec<RecordBatch> },
    /// A statement that changes things and returns no rows: what it did, in words.
    Done(String),
}

impl Output {
    pub fn rows(batches: Vec<RecordBatch>, schema: SchemaRef) -> Self {
        Output::Rows { schema, batches }
    }

    pub fn row_count(&self) -> usize {
        match self {
            Output::Rows { batches, .. } => batches.iter().map(RecordBatch::num_rows).sum(),
            Output::Done(_) => 0,
        }
    }
}

pub struct Session {
    ctx: SessionContext,
    lakehouse: Option<Arc<LakehouseSchema>>,
}

impl Session {
    /// A session over a lakehouse: tables are Delta tables, views persist.
    pub fn open(lakehouse: Lakehouse) -> Self {
        Self::build(Some(Arc::new(LakehouseSchema::new(lakehouse))))
    }

    /// A session with no lakehouse: tables registered with [`Session::register_data_dir`] or
    /// created in the session live in memory until it ends.
    pub fn in_memory() -> Self {
        Self::build(None)
    }

    fn build(lakehouse: Option<Arc<LakehouseSchema>>) -> Self {
        let mut config = SessionConfig::new().with_information_schema(true);
        config.options_mut().sql_parser.collect_spans = true;
        let ctx = SessionContext::new_with_config(config);
        if let Some(schema) = &lakehouse {
            let catalog = ctx.catalog("datafusion").expect("DataFusion's default catalog");
            catalog
                .register_schema("public", Arc::clone(schema) as _)
                .expect("the default catalog accepts schemas");
        }
        let files = Arc::new(FileTableFactory::default());
        let catalogs = Arc::new(DynamicFileCatalog::new(
            Arc::clone(ctx.state().catalog_list()),
            Arc::clone(&files) as _,
        ));
        let session_id = ctx.session_id();
        let ctx: SessionContext = ctx
            .into_state_builder()
            .with_session_id(session_id)
            .with_catalog_list(catalogs)
            // delta-rs plans its writes with extension nodes only its planner knows.
            .with_query_planner(deltalake::delta_datafusion::planner::DeltaPlanner::new())
            .with_optimizer_rules(optimizer_rules())
            .build()
            .into();
        files.attach(ctx.state_weak_ref());
        if let Some(schema) = &lakehouse {
            schema.attach(ctx.state_weak_ref());
        }
        Self { ctx, lakehouse }
    }

    pub fn lakehouse(&self) -> Option<&Lakehouse> {
        self.lakehouse.as_deref().map(LakehouseSchema::lakehouse)
    }

    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Makes every `NAME.parquet` in `dir` a read-only table `NAME`; returns the names.
    pub async fn register_data_dir(&self, dir: &Path) -> Result<Vec<String>> {
        let entries = std::fs::read_dir(dir).map_err(|e| {
            GobiError::plan(format!("cannot read the data folder {}: {e}", dir.display()))
        })?;
        let mut names = vec![];
        for entry in entries.flatten() {
            let path = entry.path();
            let (Some(name), Some("parquet")) = (
                path.file_stem().and_then(|s| s.to_str()),
                path.extension().and_then(|s| s.to_str()),
            ) else {
                continue;
            };
            let location = path.to_string_lossy();
            self.ctx.register_parquet(name, location.as_ref(), ParquetReadOptions::default()).await?;
            names.push(name.to_string());
        }
        names.sort();
        Ok(names)
    }

    /// Names that `FROM` can use: tables, views and session tables.
    pub fn table_names(&self) -> Vec<String> {
        self.ctx
            .catalog("datafusion")
            .and_then(|c| c.schema("public"))
            .map(|s| s.table_names())
            .unwrap_or_default()
    }

    /// Parses the whole script, then runs its statements in order, stopping at the first error.
    pub async fn run_script(&self, source: &str) -> Result<Vec<Output>> {
        let mut outputs = vec![];
        for statement in parse_script(source)? {
            outputs.push(self.execute(&statement).await?);
        }
        Ok(outputs)
    }

    /// Runs one statement. An error without a position of its own points at the statement.
    pub async fn execute(&self, statement: &Statement) -> Result<Output> {
        let result = match &statement.command {
            Command::ShowHistory { table } => match &self.lakehouse {
                Some(schema) => writes::history(schema, table).await,
                None => Err(needs_lakehouse("SHOW HISTORY")),
            },
            Command::Sql(ast) => self.execute_sql(ast).await,
        };
        result.map_err(|e| e.at(statement.start))
    }

    async fn execute_sql(&self, ast: &Ast) -> Result<Output> {
        if let Some(output) = self.execute_gobi_statement(ast).await? {
            return Ok(output);
        }
        let state = self.ctx.state();
        let mut ast = ast.clone();
        let plan = match state.statement_to_plan(ast.clone()).await {
            Err(e) if is_duplicate_name_error(&e) => {
                rewrite::name_duplicate_columns(&mut ast);
                state.statement_to_plan(ast.clone()).await
            }
            planned => planned,
        }
        .map_err(|e| self.explain_unknown_table(e.into()))?;
        if let Some(schema) = &self.lakehouse {
            if let Some(output) = self.execute_lakehouse_write(schema, &plan, &ast).await? {
                return Ok(output);
            }
        }
        let returns_rows = !matches!(plan, LogicalPlan::Ddl(_) | LogicalPlan::Statement(_));
        let what = what_it_did(&plan);
        let frame = self.ctx.execute_logical_plan(plan).await?;
        let schema = Arc::clone(frame.schema().inner());
        let batches = frame.collect().await?;
        Ok(if returns_rows { Output::rows(batches, schema) } else { Output::Done(what) })
    }

    /// Statements DataFusion does not plan, or that gobi answers differently.
    async fn execute_gobi_statement(&self, ast: &Ast) -> Result<Option<Output>> {
        let Ast::Statement(statement) = ast else {
            return Ok(None);
        };
        match statement.as_ref() {
            SqlStatement::ShowTables { .. } => Ok(Some(self.show_tables().await?)),
            SqlStatement::AlterTable(alter) => {
                let schema = self.lakehouse.as_ref().ok_or_else(|| needs_lakehouse("ALTER TABLE"))?;
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
                Ok(Some(Output::Done(writes::add_columns(schema, &table, columns).await?)))
            }
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

    async fn execute_lakehouse_write(
        &self,
        schema: &LakehouseSchema,
        plan: &LogicalPlan,
        ast: &Ast,
    ) -> Result<Option<Output>> {
        let state = self.ctx.state();
        let output = match plan {
            LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(create)) => {
                writes::create_table(&state, schema, create).await?
            }
            LogicalPlan::Ddl(DdlStatement::CreateView(view)) => {
                writes::create_view(schema, view.name.table(), view.or_replace, &ast.to_string())?
            }
            LogicalPlan::Ddl(DdlStatement::DropTable(drop)) => {
                writes::drop_table(schema, drop.name.table(), drop.if_exists).await?
            }
            LogicalPlan::Ddl(DdlStatement::DropView(drop)) => {
                writes::drop_view(schema, drop.name.table(), drop.if_exists)?
            }
            LogicalPlan::Dml(DmlStatement { table_name, op, input, .. }) => {
                let table = table_name.table();
                if schema.is_session_table(table) {
                    return Ok(None);
                }
                match op {
                    WriteOp::Insert(insert) => {
                        writes::insert(&state, schema, table, Arc::unwrap_or_clone(Arc::clone(input)), *insert).await?
                    }
                    WriteOp::Delete => writes::delete(&state, schema, table, input).await?,
                    WriteOp::Update => writes::update(&state, schema, table, input).await?,
                    _ => return Ok(None),
                }
            }
            _ => return Ok(None),
        };
        Ok(Some(output))
    }

    /// DataFusion says "table 'datafusion.public.x' not found"; say "table x not found" and
    /// suggest a close name.
    fn explain_unknown_table(&self, error: GobiError) -> GobiError {
        let missing = error
            .message
            .strip_prefix("table '")
            .and_then(|rest| rest.strip_suffix("' not found"))
            .map(|name| name.rsplit('.').next().unwrap_or(name).to_string());
        match missing {
            Some(name) => GobiError { position: error.position, width: error.width, ..unknown_table(&name, &self.table_names()) },
            None => error,
        }
    }

    async fn show_tables(&self) -> Result<Output> {
        let schema = self
            .ctx
            .catalog("datafusion")
            .and_then(|c| c.schema("public"))
            .ok_or_else(|| GobiError::internal("the public schema is missing"))?;
        let names = schema.table_names();
        let mut kinds = Vec::with_capacity(names.len());
        for name in &names {
            let kind = match schema.table_type(name).await? {
                Some(datafusion::datasource::TableType::View) => "view",
                _ if self.lakehouse.as_ref().is_some_and(|l| l.lakehouse().table_exists(name)) => "table",
                _ => "session table",
            };
            kinds.push(kind);
        }
        let result_schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("kind", DataType::Utf8, false),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&result_schema),
            vec![Arc::new(StringArray::from(names)), Arc::new(StringArray::from(kinds))],
        )
        .map_err(|e| GobiError::internal(e.to_string()))?;
        Ok(Output::rows(vec![batch], result_schema))
    }
}

/// The words for a statement DataFusion ran that returns no rows.
fn what_it_did(plan: &LogicalPlan) -> String {
    match plan {
        LogicalPlan::Ddl(DdlStatement::CreateView(view)) => format!("created view {}", view.name),
        LogicalPlan::Ddl(DdlStatement::DropView(view)) => format!("dropped view {}", view.name),
        LogicalPlan::Ddl(DdlStatement::CreateExternalTable(table)) => format!("created external table {}", table.name),
        LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(table)) => format!("created table {} (in memory)", table.name),
        LogicalPlan::Ddl(DdlStatement::DropTable(table)) => format!("dropped table {}", table.name),
        LogicalPlan::Ddl(ddl) => ddl.name().to_string(),
        other => other.display().to_string(),
    }
}

/// DataFusion refuses a SELECT whose output names repeat, in one of two words.
fn is_duplicate_name_error(error: &datafusion::error::DataFusionError) -> bool {
    let text = error.to_string();
    text.contains("Projections require unique expression names") || text.contains("which would be ambiguous")
}

/// DataFusion's optimizer rules, with gobi's decorrelation of non-equality correlated scalar
/// subqueries first, so DataFusion's own rule finishes the job.
fn optimizer_rules() -> Vec<Arc<dyn datafusion::optimizer::OptimizerRule + Send + Sync>> {
    let mut rules = datafusion::optimizer::Optimizer::new().rules;
    rules.insert(0, Arc::new(rewrite::NonEquiCorrelatedSubquery));
    rules
}

fn object_name(name: &datafusion::sql::sqlparser::ast::ObjectName) -> String {
    let last = name.0.last().and_then(|part| part.as_ident()).cloned().unwrap_or_else(|| {
        datafusion::sql::sqlparser::ast::Ident::new(name.to_string())
    });
    if last.quote_style.is_some() {
        last.value
    } else {
        last.value.to_lowercase()
    }
}

fn needs_lakehouse(what: &str) -> GobiError {
    GobiError::plan(format!("{what} needs a lakehouse; this session reads plain files"))
        .with_hint("run it with --lakehouse DIR (create one with `gobi init DIR`)")
}
