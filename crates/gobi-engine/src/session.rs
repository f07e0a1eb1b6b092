//! A session: one DataFusion context over one lakehouse (or over plain files with `--data`),
//! and the dispatch of each statement to DataFusion or to the Delta write paths.
//!
//! ```text
//!  Statement ─► gobi's own (let, FUNCTION, COPY 'f' TO t, SHOW HISTORY, SHOW TABLES, …)
//!      │
//!      └─ expand (gobi-lang: FROM-first, $vars, inlined functions)
//!           └─► DataFusion plans it ─► a write to the lakehouse? ─► writes.rs (one Delta commit)
//!                                   └► anything else ──────────► DataFusion executes it
//! ```

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::DynamicFileCatalog;
use datafusion::logical_expr::{DdlStatement, DmlStatement, LogicalPlan, WriteOp};
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use datafusion::sql::sqlparser::ast::{AlterTableOperation, Expr as SqlExpr, SelectItem, SetExpr, Statement as SqlStatement};
use gobi_lang::{expand_expr, expand_statement, parse_script, Ast, Command, FunctionDef, LetValue, Scope, Statement};
use parking_lot::RwLock;

use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::TaskContext;
use gobi_memory::{ByteSize, Margin, MemoryManager, PoolKind, QueryMemory};

use crate::catalog::{unknown_table, FileTableFactory, LakehouseSchema};
use crate::error::{GobiError, Result};
use crate::functions::{BlockFunction, Functions};
use crate::governed;
use crate::result_cache::{ResultCache, Versions};
use crate::logs::{events_batch, events_schema, query_log_batch, query_log_schema, DeltaLog, LogFunction, QueryRecord, Status};
use crate::lakehouse::{Definition, Lakehouse};
use crate::rewrite;
use crate::variables::{TableValue, Value, Variables};
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
    variables: RwLock<Variables>,
    functions: RwLock<Functions>,
    memory: Arc<MemoryManager>,
    _session_scope: Arc<QueryMemory>,
    /// `memory.query_limit`: the most one statement may reserve (none: the pool's limit).
    query_limit: RwLock<Option<usize>>,
    query_log: Arc<DeltaLog>,
    events: Arc<DeltaLog>,
    /// `SET memory.fault_leak = 'size'` (tests): the next query keeps that many bytes reserved
    /// past its end, as a faulty operator would, for the leak report and cleanup to find.
    fault_leak: parking_lot::Mutex<Option<usize>>,
    deliberate_leaks: parking_lot::Mutex<Vec<datafusion::execution::memory_pool::MemoryReservation>>,
    /// Spill folders of dead processes removed when the session started: (folders, bytes).
    swept_at_start: (usize, u64),
    /// Set while gobi runs its own report queries (`gobi memory stats`), which stay out of
    /// the query log.
    reporting: std::sync::atomic::AtomicBool,
    result_cache: Arc<ResultCache>,
    /// `SET memory.result_cache = off` turns the result cache off (benchmarks of repeated runs).
    result_cache_on: std::sync::atomic::AtomicBool,
    /// `SET memory.admission_wait`: how long a new query waits under critical pressure.
    admission_wait: parking_lot::Mutex<std::time::Duration>,
}

/// What `gobi memory cleanup` freed.
#[derive(Debug, Clone, Default)]
pub struct CleanupReport {
    /// (what, count, bytes)
    pub freed: Vec<(&'static str, usize, u64)>,
    pub rss_before: usize,
    pub rss_after: usize,
}

/// A variable as `.vars` lists it.
#[derive(Debug, Clone)]
pub struct VariableSummary {
    pub name: String,
    pub type_name: String,
    pub bytes: usize,
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
        // Strings are read from Parquet as plain Utf8, not Utf8View: a view batch shares the
        // page buffers of its neighbours, and every operator that reserves by batch size counts
        // those whole buffers again (a 25 MB table sorted as 685 MB), so sorts and aggregations
        // would spill or fail long before they hold what their pool allows.
        config.options_mut().execution.parquet.schema_force_view_types = false;
        let limits = lakehouse.as_ref().map(|l| l.lakehouse().config().memory).unwrap_or_default();
        fit_execution_to_pool(config.options_mut(), limits.query.0);
        let memory = MemoryManager::new(limits);
        // Work that is not one statement's query (delta-rs writes, planning-time scans) is
        // charged to the query pool through this long-lived scope.
        let session_scope = memory.begin_query("(session: writes and other work outside a query)", None);
        let mut swept_at_start = (0, 0);
        let spill = match &lakehouse {
            Some(schema) => match schema.lakehouse().prepare_spill_dir() {
                Ok((dir, swept)) => {
                    if swept.0 > 0 {
                        tracing::info!("removed {} spill folders left by processes that are gone", swept.0);
                    }
                    swept_at_start = swept;
                    DiskManagerMode::Directories(vec![dir])
                }
                Err(e) => {
                    tracing::warn!("cannot prepare the spill folder ({}); spilling to the system's temporary folder", e.message);
                    DiskManagerMode::OsTmpDirectory
                }
            },
            None => DiskManagerMode::OsTmpDirectory,
        };
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::clone(&session_scope) as _)
            // Merging many spill files at once needs a batch of each in memory: merge in rounds.
            // Spill files count against a disk budget (`memory.spill_limit`): past it, the
            // spilling query fails with DataFusion's clear message instead of filling the disk.
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(spill).with_max_spill_merge_fan_in(8).with_max_temp_directory_size(DEFAULT_SPILL_LIMIT),
            )
            .build_arc()
            .expect("a runtime over gobi's memory manager");
        let ctx = SessionContext::new_with_config_rt(config, runtime);
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
        let log_url = |name: &str| lakehouse.as_ref().and_then(|schema| schema.lakehouse().log_url(name).ok());
        let query_log = DeltaLog::new("query_log", log_url("query_log"), query_log_schema());
        let events = DeltaLog::new("memory_events", log_url("memory_events"), events_schema());
        let result_cache = ResultCache::new(Arc::clone(&memory));
        for table in crate::memory_tables::MemoryTable::all(&memory, &result_cache) {
            ctx.register_udtf(table.name(), table);
        }
        for log in [&query_log, &events] {
            ctx.register_udtf(&format!("gobi_{}", log.name()), Arc::new(LogFunction(Arc::clone(log))));
        }
        if let Some(schema) = &lakehouse {
            schema.attach(ctx.state_weak_ref());
            schema.attach_memory(Arc::clone(&memory));
        }
        let session = Self {
            ctx,
            lakehouse,
            variables: Default::default(),
            functions: Default::default(),
            memory,
            _session_scope: session_scope,
            query_limit: Default::default(),
            query_log,
            events,
            fault_leak: Default::default(),
            deliberate_leaks: Default::default(),
            swept_at_start,
            reporting: Default::default(),
            result_cache,
            result_cache_on: std::sync::atomic::AtomicBool::new(true),
            admission_wait: parking_lot::Mutex::new(DEFAULT_ADMISSION_WAIT),
        };
        session.load_functions();
        session
    }

    /// Defines the functions stored in the lakehouse. One that no longer compiles (say, it
    /// calls a function since dropped) is skipped with a warning rather than failing the session.
    fn load_functions(&self) {
        let Some(lakehouse) = self.lakehouse() else { return };
        for name in lakehouse.definition_names(Definition::Function) {
            let Some(text) = lakehouse.definition(Definition::Function, &name) else { continue };
            let defined = parse_script(&text).map_err(GobiError::from).and_then(|statements| match statements.into_iter().next() {
                Some(Statement { command: Command::DefineFunction(def), .. }) => self.define_function(*def),
                _ => Err(GobiError::internal("not a FUNCTION statement")),
            });
            if let Err(e) = defined {
                tracing::warn!("stored function {name} is not available: {}", e.message);
            }
        }
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
            Command::Sql(ast) => match self.expand(ast) {
                Ok(ast) => self.execute_sql(&ast, &statement.text).await,
                Err(e) => Err(e),
            },
            Command::Let { name, value } => self.let_variable(name, value).await,
            Command::DefineFunction(def) => self.create_function(def),
            Command::ShowFunctions => self.show_functions(),
            Command::DropFunction { name, if_exists } => self.drop_function(name, *if_exists),
            Command::CopyFrom { file, table } => match &self.lakehouse {
                Some(schema) => crate::copy::copy_from(&self.ctx, schema, file, table).await,
                None => Err(needs_lakehouse("COPY … TO table")),
            },
        };
        result.map_err(|e| e.at(statement.start))
    }

    /// The statement with PL-GRIZZLY's additions rewritten into SQL for this session.
    fn expand(&self, ast: &Ast) -> Result<Ast> {
        let mut ast = ast.clone();
        expand_statement(&mut ast, &SessionScope { variables: &self.variables.read(), functions: &self.functions.read(), defining: None })?;
        Ok(ast)
    }

    async fn let_variable(&self, name: &str, value: &LetValue) -> Result<Output> {
        let value = match value {
            LetValue::Scalar(expr) => {
                let mut expr = expr.clone();
                expand_expr(&mut expr, &SessionScope { variables: &self.variables.read(), functions: &self.functions.read(), defining: None })?;
                Value::Scalar(self.evaluate_scalar(expr).await?)
            }
            LetValue::Table(query) => {
                let Output::Rows { schema, batches } = self.execute_sql(&self.expand(query)?, &query.to_string()).await? else {
                    return Err(GobiError::plan(format!("let {name} = … must be a query that returns rows")));
                };
                Value::Table(TableValue::new(schema, batches, &self.memory, name)?)
            }
        };
        let description = match &value {
            Value::Scalar(v) => format!("{name} = {v} ({})", v.data_type()),
            Value::Table(t) => format!("{name} = {} rows, {} ({})", t.rows(), gobi_memory::ByteSize(t.bytes() as u64), t.type_name()),
        };
        let previous = self.variables.read().get(name).cloned();
        if matches!(previous, Some(Value::Table(_))) {
            self.ctx.deregister_table(name)?;
        }
        if let Value::Table(table) = &value {
            if let Err(e) = self.ctx.register_table(name, table.table()?) {
                if let Some(Value::Table(old)) = &previous {
                    self.ctx.register_table(name, old.table()?)?;
                }
                return Err(GobiError::from(e).with_hint("a table variable needs a name no table or view has"));
            }
        }
        self.variables.write().set(name.to_string(), value);
        Ok(Output::Done(format!("let {description}")))
    }

    /// The value of `SELECT expr`.
    async fn evaluate_scalar(&self, expr: SqlExpr) -> Result<datafusion::common::ScalarValue> {
        let mut select = parse_script("SELECT NULL")?.remove(0);
        if let Command::Sql(Ast::Statement(statement)) = &mut select.command {
            if let SqlStatement::Query(query) = statement.as_mut() {
                if let SetExpr::Select(body) = query.body.as_mut() {
                    body.projection = vec![SelectItem::UnnamedExpr(expr)];
                }
            }
        }
        let Command::Sql(ast) = &select.command else { unreachable!("parsed as SQL") };
        let Output::Rows { batches, .. } = self.execute_sql(ast, &ast.to_string()).await? else {
            return Err(GobiError::internal("SELECT returned no rows"));
        };
        let batch = batches.iter().find(|b| b.num_rows() > 0).ok_or_else(|| GobiError::internal("SELECT returned no rows"))?;
        Ok(datafusion::common::ScalarValue::try_from_array(batch.column(0), 0)?)
    }

    fn create_function(&self, def: &FunctionDef) -> Result<Output> {
        let state = self.ctx.state();
        if state.scalar_functions().contains_key(&def.name) && !self.functions.read().names().contains(&def.name)
            || state.aggregate_functions().contains_key(&def.name)
            || state.window_functions().contains_key(&def.name)
        {
            return Err(GobiError::plan(format!("{} is a built-in function", def.name)).with_hint("give your function another name"));
        }
        if let gobi_lang::FunctionBody::Expr(body) = &def.body {
            // Expanding the body once, with the function itself in scope, finds recursion now
            // rather than at every call.
            let scope = SessionScope {
                variables: &Variables::default(),
                functions: &self.functions.read(),
                defining: Some(Arc::new(def.clone())),
            };
            expand_expr(&mut body.clone(), &scope)?;
        }
        let replaced = self.functions.read().get(&def.name).is_some();
        self.define_function(def.clone())?;
        if let Some(lakehouse) = self.lakehouse() {
            lakehouse.save_definition(Definition::Function, &def.name, &def.text)?;
        }
        let verb = if replaced { "replaced" } else { "created" };
        Ok(Output::Done(format!("{verb} function {}", def.signature())))
    }

    /// Makes `def` callable in this session: block bodies are compiled and registered as UDFs.
    fn define_function(&self, mut def: FunctionDef) -> Result<()> {
        let block = if let gobi_lang::FunctionBody::Block(statements) = &mut def.body {
            let scope = SessionScope { variables: &Variables::default(), functions: &self.functions.read(), defining: None };
            expand_block(statements, &scope)?;
            let block = Arc::new(BlockFunction::compile(&self.ctx.state(), &def, Arc::clone(&self.memory))?);
            self.ctx.register_udf(block.udf());
            Some(block)
        } else {
            None
        };
        if block.is_none() && self.functions.read().block(&def.name).is_some() {
            self.ctx.deregister_udf(&def.name);
        }
        self.functions.write().insert(Arc::new(def), block);
        Ok(())
    }

    fn show_functions(&self) -> Result<Output> {
        let functions = self.functions.read();
        let mut columns: [Vec<String>; 3] = Default::default();
        let mut memo: [Vec<u64>; 3] = Default::default();
        for def in functions.iter() {
            columns[0].push(def.name.clone());
            columns[1].push(if def.is_block() { "block" } else { "expression" }.to_string());
            columns[2].push(def.signature());
            let (bytes, hits, misses) = functions.block(&def.name).map_or((0, 0, 0), |b| b.memo_stats());
            memo[0].push(bytes as u64);
            memo[1].push(hits);
            memo[2].push(misses);
        }
        let [names, kinds, signatures] = columns;
        let [bytes, hits, misses] = memo;
        use datafusion::arrow::array::UInt64Array;
        let schema = Arc::new(Schema::new(vec![
            Field::new("name", DataType::Utf8, false),
            Field::new("kind", DataType::Utf8, false),
            Field::new("signature", DataType::Utf8, false),
            Field::new("memo_bytes", DataType::UInt64, false),
            Field::new("memo_hits", DataType::UInt64, false),
            Field::new("memo_misses", DataType::UInt64, false),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from(names)),
                Arc::new(StringArray::from(kinds)),
                Arc::new(StringArray::from(signatures)),
                Arc::new(UInt64Array::from(bytes)),
                Arc::new(UInt64Array::from(hits)),
                Arc::new(UInt64Array::from(misses)),
            ],
        )?;
        Ok(Output::rows(vec![batch], schema))
    }

    fn drop_function(&self, name: &str, if_exists: bool) -> Result<Output> {
        let removed = self.functions.write().remove(name);
        if let Some(lakehouse) = self.lakehouse() {
            lakehouse.remove_definition(Definition::Function, name)?;
        }
        match removed {
            Some(def) => {
                if def.is_block() {
                    self.ctx.deregister_udf(name);
                }
                Ok(Output::Done(format!("dropped function {name}")))
            }
            None if if_exists => Ok(Output::Done(format!("function {name} does not exist; nothing done"))),
            None => {
                let error = GobiError::plan(format!("function {name} not found"));
                Err(match gobi_lang::closest_name(name, &self.functions.read().names()) {
                    Some(close) => error.with_hint(format!("did you mean {close}?")),
                    None => error,
                })
            }
        }
    }

    /// Every variable with its type and the bytes its value holds (for `.vars`).
    pub fn variables(&self) -> Vec<VariableSummary> {
        self.variables
            .read()
            .iter()
            .map(|(name, value)| VariableSummary { name: name.clone(), type_name: value.type_name(), bytes: value.bytes() })
            .collect()
    }

    /// The names of the user functions (for completion).
    pub fn function_names(&self) -> Vec<String> {
        self.functions.read().names()
    }

    /// The logical plan (before optimization) of a SQL statement, as `SessionContext::sql`
    /// gives it: PL-GRIZZLY's additions expanded first. Other statements have no plan.
    pub async fn logical_plan(&self, statement: &Statement) -> Result<LogicalPlan> {
        let Command::Sql(ast) = &statement.command else {
            return Err(GobiError::plan("only SQL statements and queries have a plan"));
        };
        Ok(self.plan_sql(&self.expand(ast)?).await?.0)
    }

    /// Plans `ast`, naming repeated output columns if DataFusion refuses them; the statement
    /// that was planned comes back when it had to be rewritten.
    async fn plan_sql(&self, ast: &Ast) -> Result<(LogicalPlan, Option<Ast>)> {
        let state = self.ctx.state();
        let planned = match state.statement_to_plan(ast.clone()).await {
            Err(e) if is_duplicate_name_error(&e) => {
                let mut renamed = ast.clone();
                rewrite::name_duplicate_columns(&mut renamed);
                state.statement_to_plan(renamed.clone()).await.map(|plan| (plan, Some(renamed)))
            }
            planned => planned.map(|plan| (plan, None)),
        };
        planned.map_err(|e| self.explain_unknown_table(e.into()))
    }

    async fn execute_sql(&self, ast: &Ast, text: &str) -> Result<Output> {
        if let Some(output) = self.execute_gobi_statement(ast).await? {
            return Ok(output);
        }
        let (plan, renamed) = self.plan_sql(ast).await?;
        let ast = renamed.as_ref().unwrap_or(ast);
        if let Some(schema) = &self.lakehouse {
            if let Some(output) = self.execute_lakehouse_write(schema, &plan, ast).await? {
                return Ok(output);
            }
        }
        if matches!(plan, LogicalPlan::Ddl(_) | LogicalPlan::Statement(_)) {
            let what = what_it_did(&plan);
            self.ctx.execute_logical_plan(plan).await?.collect().await?;
            return Ok(Output::Done(what));
        }
        self.collect_governed(plan, text).await
    }

    /// Runs a plan with its own memory scope: every operator reserves from the query pool
    /// under this statement's id and its allocations are counted to it (`governed.rs`); the
    /// scope is ended (anything still held is a leak) when the plan's streams are gone — after
    /// success, error or cancellation alike — and the statement goes into the query log.
    async fn collect_governed(&self, plan: LogicalPlan, text: &str) -> Result<Output> {
        self.admit().await?;
        let cache_key = self.result_cache_key(&plan);
        let scope = self.memory.begin_query(text, *self.query_limit.read());
        let mut entry = LogEntry::new(self, &scope);
        if let Some((key, versions)) = &cache_key {
            if let Some((schema, batches)) = self.result_cache.get(key, versions) {
                let output = Output::rows(batches, schema);
                entry.from_cache = true;
                entry.finish(Ok(output.row_count() as u64));
                return Ok(output);
            }
        }
        let result = self.run_governed(&plan, &scope, &mut entry).await;
        entry.finish(match &result {
            Ok(output) => Ok(output.row_count() as u64),
            Err(e) => Err(e.message.clone()),
        });
        drop(entry);
        if let (Some((key, versions)), Ok(Output::Rows { schema, batches })) = (cache_key, &result) {
            self.result_cache.insert(key, versions, Arc::clone(schema), batches.clone());
        }
        self.write_logs(false).await;
        gobi_memory::allocator::purge_if_retained_over(RETAINED_FREE_PAGES);
        result
    }

    /// Moves the manager's events into their log and writes both logs: always when the session
    /// closes, otherwise once one has enough rows pending. A failure to write them is reported,
    /// and never undoes what the statements did.
    async fn write_logs(&self, closing: bool) {
        let events = self.memory.take_events();
        if !events.is_empty() {
            match events_batch(&events) {
                Ok(rows) => self.events.append(rows),
                Err(e) => tracing::warn!("memory events could not be logged: {e}"),
            }
        }
        for log in [&self.query_log, &self.events] {
            let written = if closing { log.flush().await } else { log.flush_if_full().await };
            if let Err(e) = written {
                tracing::warn!("the {} could not be written: {}", log.name(), e.message);
            }
        }
    }

    /// The result cache's key for `plan` (its text) and the Delta snapshots its scans read;
    /// `None` when the result may change without a table changing: it reads something other
    /// than Delta tables, or calls a function that is not immutable.
    fn result_cache_key(&self, plan: &LogicalPlan) -> Option<(String, Versions)> {
        use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
        use datafusion::logical_expr::{Expr, Volatility};
        if !self.result_cache_on.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
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
                        if f.func.signature().volatility != Volatility::Immutable {
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
        Some((plan.display_indent_schema().to_string(), tables))
    }

    /// Whether every table of a cached result is still at the snapshot it was read from.
    async fn still_current(&self, versions: &Versions) -> bool {
        let Some(schema) = &self.lakehouse else { return false };
        for (name, read) in versions {
            let current = schema.delta_table(name).await.ok().and_then(|table| crate::delta_scan::table_version(&table));
            if current.as_ref() != Some(read) {
                return false;
            }
        }
        true
    }

    /// Runs a query of gobi's own reports: like `execute`, but not written to the query log.
    pub async fn execute_report(&self, statement: &Statement) -> Result<Output> {
        use std::sync::atomic::Ordering;
        self.reporting.store(true, Ordering::Relaxed);
        let output = self.execute(statement).await;
        self.reporting.store(false, Ordering::Relaxed);
        output
    }

    /// Admission: while the query pool is under critical pressure, a new query waits (up to
    /// `memory.admission_wait`, 10 s) for running ones to give memory back rather than fail at
    /// once.
    ///
    /// Before that, pressure is answered: a cache pool at `high` or above is evicted down to
    /// 60 % of its limit, and cache entries borrowed from a critical query pool are given back.
    async fn admit(&self) -> Result<()> {
        use gobi_memory::Pressure;
        let cache = self.memory.pool(PoolKind::Cache);
        if cache.pressure() >= Pressure::High {
            let level = cache.pressure();
            let freed = self.memory.reclaim(PoolKind::Cache, cache.reserved().saturating_sub(cache.limit() / 10 * 6));
            self.memory.record_event(PoolKind::Cache, format!("{} pressure: evicted cached results down to 60 % of the cache pool", level.name()), freed as u64);
        }
        let pool = self.memory.pool(PoolKind::Query);
        if pool.pressure() == Pressure::Critical && self.memory.reclaimable(PoolKind::Query) > 0 {
            let freed = self.memory.reclaim(PoolKind::Query, usize::MAX);
            self.memory.record_event(PoolKind::Query, "critical pressure: gave back the cache's borrowed query pool memory", freed as u64);
        }
        if pool.pressure() < Pressure::Critical {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let wait = *self.admission_wait.lock();
        while pool.pressure() == Pressure::Critical && started.elapsed() < wait {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let waited = started.elapsed();
        if pool.pressure() == gobi_memory::Pressure::Critical {
            self.memory.record_event(PoolKind::Query, format!("admission: a new query waited {:.1}s and was refused", waited.as_secs_f64()), 0);
            return Err(GobiError::new(
                crate::error::ErrorKind::Memory,
                format!(
                    "the query pool stayed over 95 % full ({} of {}) for {:.1}s; the new query was not started",
                    ByteSize(pool.reserved() as u64),
                    ByteSize(pool.limit() as u64),
                    wait.as_secs_f64()
                ),
            )
            .with_hint("wait for running queries to finish, or SET memory.query_pool to a larger size"));
        }
        self.memory.record_event(PoolKind::Query, format!("admission: a new query waited {:.1}s for memory", waited.as_secs_f64()), 0);
        Ok(())
    }

    async fn run_governed(&self, plan: &LogicalPlan, scope: &Arc<QueryMemory>, entry: &mut LogEntry<'_>) -> Result<Output> {
        let state = self.ctx.state();
        let pool: Arc<dyn datafusion::execution::memory_pool::MemoryPool> = if cfg!(feature = "baseline") {
            Arc::new(datafusion::execution::memory_pool::UnboundedMemoryPool::default())
        } else {
            Arc::clone(scope) as _
        };
        let runtime = RuntimeEnvBuilder::from_runtime_env(state.runtime_env()).with_memory_pool(pool).build_arc()?;
        let task = Arc::new(TaskContext::from(&state).with_runtime(runtime));
        if let Some(bytes) = self.fault_leak.lock().take() {
            let leak = datafusion::execution::memory_pool::MemoryConsumer::new("DeliberateLeak").register(&task.memory_pool());
            leak.try_grow(bytes)?;
            self.deliberate_leaks.lock().push(leak);
        }
        let physical = state.create_physical_plan(plan).await?;
        let physical = if cfg!(feature = "baseline") { physical } else { governed::scoped(physical, scope)? };
        let schema = physical.schema();
        let result = datafusion::physical_plan::collect(Arc::clone(&physical), task).await;
        entry.spills = governed::spills(&physical);
        // Some operators keep memory in the plan node itself (a join's built side), so the
        // plan goes before waiting for the statement's memory to come back.
        drop(physical);
        // After an error the plan's other tasks are aborted, not yet gone: wait until they have
        // released what they held, so the next statement starts from an empty pool.
        let deadline = std::time::Instant::now() + RELEASE_WAIT;
        while scope.reserved_bytes() > 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        Ok(Output::rows(result.map_err(|e| self.spill_budget_error(e))?, schema))
    }

    /// DataFusion's "disk space … exceeded" names its own setting; gobi's is
    /// `memory.spill_limit`.
    fn spill_budget_error(&self, error: datafusion::error::DataFusionError) -> GobiError {
        if !error.to_string().contains("used disk space during the spilling process has exceeded") {
            return error.into();
        }
        let limit = self.ctx.runtime_env().disk_manager.max_temp_directory_size();
        GobiError::new(
            crate::error::ErrorKind::Memory,
            format!("the query's spill files passed the spill disk budget (memory.spill_limit = {})", ByteSize(limit)),
        )
        .with_hint(format!("raise it: SET memory.spill_limit = '{}'", ByteSize(limit.saturating_mul(4))))
    }

    /// Ends the session: writes its query log and memory events to the lakehouse.
    pub async fn close(&self) {
        self.write_logs(true).await;
    }

    /// `gobi memory cleanup`: releases what ended queries still hold, removes spill folders of
    /// processes that are gone (also those removed when this session started), and asks the
    /// allocator to return free pages to the OS.
    pub async fn cleanup(&self) -> CleanupReport {
        let rss_before = gobi_memory::allocator::rss_bytes();
        let released = self.memory.release_ended();
        let mut current = vec![];
        for versions in self.result_cache.versions() {
            if self.still_current(&versions).await {
                current.push(versions);
            }
        }
        let (stale_entries, stale_bytes) = self.result_cache.drop_stale(|versions| current.contains(versions));
        let (mut folders, mut bytes) = self.swept_at_start;
        if let Some(lakehouse) = self.lakehouse() {
            if let Ok((_, swept)) = lakehouse.prepare_spill_dir() {
                folders += swept.0;
                bytes += swept.1;
            }
        }
        let purged = gobi_memory::allocator::purge();
        let rss_after = gobi_memory::allocator::rss_bytes();
        self.memory.record_event(PoolKind::Query, format!("cleanup: {} reservations of ended queries, {folders} stale spill folders{}", released.reservations, if purged { ", allocator purged" } else { "" }), released.bytes as u64);
        CleanupReport {
            freed: vec![
                ("reservations of ended queries", released.reservations, released.bytes as u64),
                ("cached results of tables changed since", stale_entries, stale_bytes),
                ("stale spill folders", folders, bytes),
                ("free allocator pages returned to the OS", usize::from(purged), rss_before.saturating_sub(rss_after) as u64),
            ],
            rss_before,
            rss_after,
        }
    }

    /// The memory manager of this session (pools, statements, consumers).
    pub fn memory(&self) -> &Arc<MemoryManager> {
        &self.memory
    }

    /// Changes a pool's limit for this session (the `--memory-*` flags, `SET memory.*`).
    pub fn set_pool_limit(&self, pool: PoolKind, bytes: u64) {
        self.memory.pool(pool).set_limit(usize::try_from(bytes).unwrap_or(usize::MAX));
        if pool == PoolKind::Query {
            let state = self.ctx.state_ref();
            let mut state = state.write();
            fit_execution_to_pool(state.config_mut().options_mut(), bytes);
        }
    }

    /// `SET memory.query_pool|cache_pool|temp_pool|query_limit = 'size'`, and
    /// `SET memory.fault_probability = 0.01` (tests: refuse that fraction of reservations).
    fn set_memory(&self, name: &str, value: &SqlExpr) -> Result<Output> {
        let text = match value {
            SqlExpr::Value(v) => match &v.value {
                datafusion::sql::sqlparser::ast::Value::SingleQuotedString(s) => s.clone(),
                other => other.to_string(),
            },
            other => other.to_string(),
        };
        if name == "fault_probability" {
            let probability: f64 = text
                .parse()
                .ok()
                .filter(|p| (0.0..=1.0).contains(p))
                .ok_or_else(|| GobiError::plan(format!("memory.fault_probability must be a number from 0 to 1, not {text}")))?;
            self.memory.set_fault_probability(probability);
            return Ok(Output::Done(format!("memory.fault_probability = {probability}")));
        }
        if name == "spill_limit" {
            let size: ByteSize = text.parse().map_err(|e| GobiError::plan(format!("memory.spill_limit: {e}")))?;
            self.ctx.runtime_env().disk_manager.set_max_temp_directory_size(size.0)?;
            return Ok(Output::Done(format!("memory.spill_limit = {size}")));
        }
        if name == "result_cache" {
            let on = match text.to_lowercase().as_str() {
                "on" | "true" => true,
                "off" | "false" => false,
                _ => return Err(GobiError::plan(format!("memory.result_cache is on or off, not {text}"))),
            };
            self.result_cache_on.store(on, std::sync::atomic::Ordering::Relaxed);
            return Ok(Output::Done(format!("memory.result_cache = {}", if on { "on" } else { "off" })));
        }
        if name == "fault_leak" {
            let size: ByteSize = text.parse().map_err(|e| GobiError::plan(format!("memory.fault_leak: {e}")))?;
            *self.fault_leak.lock() = Some(usize::try_from(size.0).unwrap_or(usize::MAX));
            return Ok(Output::Done(format!("memory.fault_leak = {size}: the next query keeps that much past its end")));
        }
        if name == "actual_margin" {
            let margin = match text.strip_suffix('%') {
                Some(percent) => percent.trim().parse::<f64>().ok().filter(|p| *p >= 0.0).map(|p| Margin::Fraction(p / 100.0)),
                None => text.parse::<ByteSize>().ok().map(|size| Margin::Bytes(usize::try_from(size.0).unwrap_or(usize::MAX))),
            }
            .ok_or_else(|| GobiError::plan(format!("memory.actual_margin must be a size such as '64MiB' or a percentage such as '50%', not {text}")))?;
            self.memory.set_actual_margin(margin);
            return Ok(Output::Done(format!("memory.actual_margin = {margin}")));
        }
        if name == "admission_wait" {
            let wait = parse_duration(&text).ok_or_else(|| {
                GobiError::plan(format!("memory.admission_wait must be a duration such as '10s' or '500ms', not {text}"))
            })?;
            *self.admission_wait.lock() = wait;
            return Ok(Output::Done(format!("memory.admission_wait = {}s", wait.as_secs_f64())));
        }
        if name == "leak_threshold" {
            let threshold = parse_duration(&text).ok_or_else(|| {
                GobiError::plan(format!("memory.leak_threshold must be a duration such as '300s' or '5min', not {text}"))
            })?;
            self.memory.set_leak_threshold(threshold);
            return Ok(Output::Done(format!("memory.leak_threshold = {}s", threshold.as_secs_f64())));
        }
        let size: ByteSize = text.parse().map_err(|e| GobiError::plan(format!("memory.{name}: {e}")))?;
        match name {
            "query_pool" => self.set_pool_limit(PoolKind::Query, size.0),
            "cache_pool" => self.set_pool_limit(PoolKind::Cache, size.0),
            "temp_pool" => self.set_pool_limit(PoolKind::Temp, size.0),
            "query_limit" => *self.query_limit.write() = Some(usize::try_from(size.0).unwrap_or(usize::MAX)),
            other => {
                let known = ["query_pool", "cache_pool", "temp_pool", "query_limit", "spill_limit", "fault_probability", "fault_leak", "leak_threshold", "actual_margin", "result_cache", "admission_wait"].map(String::from);
                let error = GobiError::plan(format!("unknown setting memory.{other}"));
                return Err(match gobi_lang::closest_name(other, &known) {
                    Some(close) => error.with_hint(format!("did you mean memory.{close}?")),
                    None => error.with_hint("memory settings: query_pool, cache_pool, temp_pool, query_limit, spill_limit, fault_probability, fault_leak, leak_threshold, actual_margin, result_cache, admission_wait"),
                });
            }
        }
        Ok(Output::Done(format!("memory.{name} = {size}")))
    }

    /// `SHOW MEMORY`: one row per pool.
    fn show_memory(&self) -> Result<Output> {
        let batch = crate::memory_tables::pools_batch(&self.memory)?;
        Ok(Output::rows(vec![batch.clone()], batch.schema()))
    }

    /// Statements DataFusion does not plan, or that gobi answers differently.
    async fn execute_gobi_statement(&self, ast: &Ast) -> Result<Option<Output>> {
        let Ast::Statement(statement) = ast else {
            return Ok(None);
        };
        match statement.as_ref() {
            SqlStatement::ShowTables { .. } => Ok(Some(self.show_tables().await?)),
            SqlStatement::ShowVariable { variable } if variable.len() == 1 && variable[0].value.eq_ignore_ascii_case("memory") => {
                Ok(Some(self.show_memory()?))
            }
            SqlStatement::Set(datafusion::sql::sqlparser::ast::Set::SingleAssignment { variable, values, .. })
                if variable.0.len() == 2 && variable.0[0].to_string().eq_ignore_ascii_case("memory") && values.len() == 1 =>
            {
                Ok(Some(self.set_memory(&variable.0[1].to_string().to_lowercase(), &values[0])?))
            }
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

/// `300s`, `5min`, `1h`, `250ms`.
fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit.trim() {
        "ms" => number / 1000.0,
        "s" => number,
        "min" | "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return None,
    };
    std::time::Duration::try_from_secs_f64(seconds).ok()
}

/// Free allocator pages kept past a statement beyond this go back to the OS at once: between
/// statements the process holds its live memory, not the last statement's high-water mark.
const RETAINED_FREE_PAGES: usize = 32 << 20;

/// How long a finished statement waits for its aborted tasks to release their memory; what is
/// still held after that is a leak.
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The spill disk budget until `SET memory.spill_limit` says otherwise.
const DEFAULT_SPILL_LIMIT: u64 = 4 << 30;

/// How long a new query waits for a query pool under critical pressure before it is refused.
const DEFAULT_ADMISSION_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Scales the settings whose memory is fixed per partition to the query pool, so spilling
/// operators can finish in a small one:
/// - what each sort sets aside to merge its spill files: DataFusion's 10 MiB per partition
///   would not fit a small pool at all, so a quarter of the pool shared by the partitions
///   (at least 64 KiB);
/// - the batch size: merging spill files holds a batch of each run (and the final
///   aggregation's merge cannot spill again), so 8192-row batches leave a 4 MiB pool no room to
///   merge; one row per 8 KiB of each partition's share keeps the merges inside it (256 to
///   DataFusion's 8192).
fn fit_execution_to_pool(options: &mut datafusion::config::ConfigOptions, query_pool: u64) {
    let partitions = options.execution.target_partitions.max(1) as u64;
    let headroom = query_pool / (4 * partitions);
    options.execution.sort_spill_reservation_bytes = usize::try_from(headroom.clamp(64 << 10, 10 << 20)).unwrap_or(10 << 20);
    let rows = (query_pool / (partitions * (8 << 10))).clamp(256, 8192) as usize;
    options.execution.batch_size = datafusion::config::ConfigNonZeroUsize::try_new(rows).expect("at least 256 rows");
}

/// A statement's row in the query log, written when it is dropped: after success, an error
/// (`finish` not called with Ok) or cancellation (the future dropped mid-way). Dropping it
/// also ends the statement's memory scope.
struct LogEntry<'a> {
    session: &'a Session,
    scope: &'a Arc<QueryMemory>,
    started: chrono::DateTime<chrono::Utc>,
    /// Spill files and bytes the plan's operators wrote.
    spills: (u64, u64),
    from_cache: bool,
    /// Rows returned, or the error's message; `None` until finished (cancelled if dropped so).
    outcome: Option<std::result::Result<u64, String>>,
}

impl<'a> LogEntry<'a> {
    fn new(session: &'a Session, scope: &'a Arc<QueryMemory>) -> Self {
        Self { session, scope, started: chrono::Utc::now(), spills: (0, 0), from_cache: false, outcome: None }
    }

    fn finish(&mut self, outcome: std::result::Result<u64, String>) {
        self.outcome = Some(outcome);
    }
}

impl Drop for LogEntry<'_> {
    fn drop(&mut self) {
        self.scope.end();
        let (spills, spilled_bytes) = self.spills;
        let (status, rows, error) = match self.outcome.take() {
            Some(Ok(rows)) => (Status::Ok, rows, None),
            Some(Err(message)) => (Status::Error, 0, Some(message)),
            None => (Status::Cancelled, 0, None),
        };
        let memory = &self.session.memory;
        let leaked_bytes = self.scope.reserved_bytes() as u64;
        if leaked_bytes > 0 {
            memory.record_event(PoolKind::Query, format!("leak: query {} ended holding {}: {}", self.scope.id(), ByteSize(leaked_bytes), self.scope.text().chars().take(60).collect::<String>()), 0);
        }
        let record = QueryRecord {
            query_id: self.scope.id(),
            started_at: self.started,
            text: self.scope.text().to_string(),
            status,
            error,
            duration_ms: self.scope.started().elapsed().as_secs_f64() * 1000.0,
            rows,
            peak_reserved_bytes: self.scope.peak() as u64,
            peak_actual_bytes: self.scope.actual().peak() as u64,
            cache_bytes: memory.pool(PoolKind::Cache).reserved() as u64,
            temp_bytes: memory.pool(PoolKind::Temp).reserved() as u64,
            rejected: self.scope.rejected(),
            spills,
            spilled_bytes,
            leaked_bytes,
            from_cache: self.from_cache,
        };
        if self.session.reporting.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        match query_log_batch(&[record]) {
            Ok(rows) => self.session.query_log.append(rows),
            Err(e) => tracing::warn!("a query log row could not be built: {e}"),
        }
    }
}

/// What gobi-lang's expansion needs to know about this session.
struct SessionScope<'a> {
    variables: &'a Variables,
    functions: &'a Functions,
    /// A function being defined, visible to its own body (so recursion is found).
    defining: Option<Arc<FunctionDef>>,
}

impl Scope for SessionScope<'_> {
    fn variable(&self, name: &str) -> Option<SqlExpr> {
        self.variables.literal(name)
    }

    fn variable_names(&self) -> Vec<String> {
        self.variables.scalar_names()
    }

    fn function(&self, name: &str) -> Option<Arc<FunctionDef>> {
        match &self.defining {
            Some(def) if def.name == name => Some(Arc::clone(def)),
            _ => self.functions.get(name),
        }
    }

    fn table_type(&self, name: &str) -> Option<String> {
        match self.variables.get(name)? {
            Value::Table(table) => Some(table.type_name()),
            Value::Scalar(_) => None,
        }
    }
}

/// Expands every expression of a block body (nested functions inlined, no session variables:
/// a stored function must mean the same in every session).
fn expand_block(statements: &mut [gobi_lang::BlockStatement], scope: &SessionScope) -> Result<()> {
    use gobi_lang::BlockStatement;
    for statement in statements {
        match statement {
            BlockStatement::Let { value, .. } | BlockStatement::Return(value) => expand_expr(value, scope)?,
            BlockStatement::If { branches, otherwise } => {
                for (condition, body) in branches {
                    expand_expr(condition, scope)?;
                    expand_block(body, scope)?;
                }
                expand_block(otherwise, scope)?;
            }
        }
    }
    Ok(())
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
