//! A session: one user's view of an [`Engine`]: its settings, variables and functions, and a
//! DataFusion context that plans its statements over the engine's tables.
//!
//! ```text
//!  Statement ─► gobi's own (let, FUNCTION, COPY 'f' TO t, SHOW …, SET memory.*) ─► statements/
//!      │
//!      └─ expand (gobi-lang: FROM-first, $vars, inlined functions)
//!           └─► DataFusion plans it ─► a write? ─► statements/write.rs ─┐
//!                                   └► a query ─► statements/query.rs ─┴► runner.rs (governed)
//! ```
//!
//! A session holds no memory of its own beyond its values: the pools, the result cache, the
//! logs and open tables are the engine's, shared with every other session.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::settings::SessionSettings;
use datafusion::catalog::DynamicFileCatalog;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use datafusion::sql::sqlparser::ast::Expr as SqlExpr;
use gobi_lang::{expand_statement, parse_script, Ast, Command, FunctionDef, Scope, Statement};
use parking_lot::RwLock;

use crate::cancel::Stops;
use crate::catalog::{FileTableFactory, LakehouseSchema};
use crate::engine::Engine;
use crate::error::{GobiError, Result};
use crate::functions::Functions;
use crate::lakehouse::Lakehouse;
use crate::logs::LogFunction;
use crate::output::{Collected, Output, Progress};
use crate::rewrite;
use crate::semi_join;
use crate::variables::{TableValue, Value, Variables};
use crate::writes;

pub struct Session {
    engine: Arc<Engine>,
    pub(crate) ctx: SessionContext,
    /// The `public` schema over the engine's lakehouse (none for an engine without one).
    pub(crate) schema: Option<Arc<LakehouseSchema>>,
    pub(crate) variables: RwLock<Variables>,
    pub(crate) functions: RwLock<Functions>,
    /// This session's settings: its statements' limits (`memory.query_limit`,
    /// `memory.actual_margin`), `maintenance.allow_short_retention`.
    pub(crate) settings: RwLock<SessionSettings>,
    /// Tables created in a session without a lakehouse: their batches, held from the temp pool.
    pub(crate) memory_tables: RwLock<std::collections::HashMap<String, TableValue>>,
    /// Set while gobi runs its own report queries (`gobi memory stats`), which stay out of
    /// the query log.
    reporting: AtomicBool,
    /// How far the running statement has read (its latest plan).
    pub(crate) progress: Progress,
    /// The stop flags of the statements it runs.
    pub(crate) stops: Stops,
}

/// A variable as `.vars` lists it.
#[derive(Debug, Clone)]
pub struct VariableSummary {
    pub name: String,
    pub type_name: String,
    pub bytes: usize,
}

impl Session {
    /// A new session of `engine`; the functions stored in its lakehouse are defined.
    pub fn new(engine: &Arc<Engine>) -> Self {
        let mut config = SessionConfig::new().with_information_schema(true);
        config.options_mut().sql_parser.collect_spans = true;
        // Strings are read from Parquet as plain Utf8, not Utf8View: a view batch shares the
        // page buffers of its neighbours, and every operator that reserves by batch size counts
        // those whole buffers again (a 25 MB table sorted as 685 MB), so sorts and aggregations
        // would spill or fail long before they hold what their pool allows.
        config.options_mut().execution.parquet.schema_force_view_types = false;
        let ctx = SessionContext::new_with_config_rt(config, Arc::clone(engine.runtime()));
        let schema = engine.tables().map(|tables| Arc::new(LakehouseSchema::new(Arc::clone(tables))));
        if let Some(schema) = &schema {
            let catalog = ctx.catalog("datafusion").expect("DataFusion's default catalog");
            catalog.register_schema("public", Arc::clone(schema) as _).expect("the default catalog accepts schemas");
        }
        let files = Arc::new(FileTableFactory::default());
        let catalogs = Arc::new(DynamicFileCatalog::new(Arc::clone(ctx.state().catalog_list()), Arc::clone(&files) as _));
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
        for table in crate::memory_tables::MemoryTable::all(engine.memory(), engine.result_cache()) {
            ctx.register_udtf(table.name(), table);
        }
        for read in crate::read_files::ReadFile::ALL {
            ctx.register_udtf(read.function_name(), Arc::new(read));
        }
        for log in [engine.query_log(), engine.events()] {
            ctx.register_udtf(&format!("gobi_{}", log.name()), Arc::new(LogFunction(Arc::clone(log))));
        }
        if let Some(schema) = &schema {
            schema.attach(ctx.state_weak_ref());
        }
        let session = Self {
            engine: Arc::clone(engine),
            ctx,
            schema,
            variables: Default::default(),
            functions: Default::default(),
            settings: Default::default(),
            memory_tables: Default::default(),
            reporting: AtomicBool::new(false),
            progress: Progress::default(),
            stops: Stops::default(),
        };
        session.load_functions();
        session
    }

    /// A session of a new engine over `lakehouse` (one process, one session).
    pub fn open(lakehouse: Lakehouse) -> Self {
        Self::new(&Engine::open(lakehouse))
    }

    /// A session of a new engine with no lakehouse: tables registered with
    /// [`Session::register_data_dir`] or created in the session live in memory until it ends.
    pub fn in_memory() -> Self {
        Self::new(&Engine::in_memory())
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// How far the running statement has read, for a progress line (read from another task
    /// while the statement runs).
    pub fn progress(&self) -> Progress {
        self.progress.clone()
    }

    /// Stops whatever statement the session runs (a server's cancel request; the CLI drops
    /// the statement's future instead, which stops it the same way): its next poll fails
    /// with "query cancelled", its memory and spill files are released. True if one ran.
    pub fn cancel(&self) -> bool {
        self.stops.stop_all()
    }

    /// A handle that cancels this session's statements from another thread (a signal
    /// handler's, a server's connection task).
    pub fn stops(&self) -> Stops {
        self.stops.clone()
    }

    pub fn lakehouse(&self) -> Option<&Lakehouse> {
        self.engine.lakehouse()
    }

    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Makes every `NAME.parquet` in `dir` a read-only table `NAME`; returns the names.
    pub async fn register_data_dir(&self, dir: &Path) -> Result<Vec<String>> {
        let entries = std::fs::read_dir(dir).map_err(|e| GobiError::plan(format!("cannot read the data folder {}: {e}", dir.display())))?;
        let mut names = vec![];
        for entry in entries.flatten() {
            let path = entry.path();
            let (Some(name), Some("parquet")) = (path.file_stem().and_then(|s| s.to_str()), path.extension().and_then(|s| s.to_str())) else {
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
        self.ctx.catalog("datafusion").and_then(|c| c.schema("public")).map(|s| s.table_names()).unwrap_or_default()
    }

    /// Parses the whole script, then runs its statements in order, each to its end, stopping
    /// at the first error.
    pub async fn run_script(&self, source: &str) -> Result<Vec<Collected>> {
        let mut outputs = vec![];
        for statement in parse_script(source)? {
            outputs.push(self.execute(&statement).await?.collect().await.map_err(|e| e.at(statement.start))?);
        }
        Ok(outputs)
    }

    /// Runs one statement. Its rows stream: the statement ends when the returned stream ends or
    /// is dropped. An error without a position of its own points at the statement.
    pub async fn execute(&self, statement: &Statement) -> Result<Output> {
        self.engine.write_logs(false).await;
        let result = match &statement.command {
            Command::ShowHistory { table } => match &self.schema {
                Some(schema) => writes::history(schema, table).await,
                None => Err(needs_lakehouse("SHOW HISTORY")),
            },
            Command::Sql(ast) => match self.expand(ast) {
                Ok(ast) => match self.execute_sql(&ast, &statement.text).await {
                    Err(e) => Err(self.located(e, &ast).await),
                    ok => ok,
                },
                Err(e) => Err(e),
            },
            Command::Let { name, value } => self.let_variable(name, value).await,
            Command::DefineFunction(def) => self.create_function(def),
            Command::ShowFunctions => self.show_functions(),
            Command::DropFunction { name, if_exists } => self.drop_function(name, *if_exists),
            Command::CopyFrom { file, table } => self.copy_from(file, table, &statement.text).await,
            Command::Optimize { table, zorder } => self.optimize(table, zorder, &statement.text).await,
            Command::Vacuum { table, retain_hours, dry_run } => self.vacuum(table, *retain_hours, *dry_run, &statement.text).await,
            Command::Restore { table, to } => self.restore(table, to, &statement.text).await,
            Command::DescribeDetail { table } => match &self.schema {
                Some(schema) => crate::maintenance::describe_detail(schema, table).await,
                None => Err(needs_lakehouse("DESCRIBE DETAIL")),
            },
        };
        result.map(|output| output.at(statement.start)).map_err(|e| e.at(statement.start))
    }

    /// Runs a query of gobi's own reports to its end: like `execute`, but not written to the
    /// query log.
    pub async fn execute_report(&self, statement: &Statement) -> Result<Collected> {
        self.reporting.store(true, Ordering::Relaxed);
        let _reporting = ReportingUntilDropped(&self.reporting);
        match self.execute(statement).await {
            Ok(output) => output.collect().await,
            Err(e) => Err(e),
        }
    }

    /// Whether this session's statements go into the query log now.
    pub(crate) fn logged(&self) -> bool {
        !self.reporting.load(Ordering::Relaxed)
    }

    /// The statement with PL-GRIZZLY's additions rewritten into SQL for this session.
    pub(crate) fn expand(&self, ast: &Ast) -> Result<Ast> {
        let mut ast = ast.clone();
        expand_statement(&mut ast, &SessionScope { variables: &self.variables.read(), functions: &self.functions.read(), defining: None })?;
        Ok(ast)
    }

    /// Every variable with its type and the bytes its value holds (for `.vars`).
    pub fn variables(&self) -> Vec<VariableSummary> {
        self.variables.read().iter().map(|(name, value)| VariableSummary { name: name.clone(), type_name: value.type_name(), bytes: value.bytes() }).collect()
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
    pub(crate) async fn plan_sql(&self, ast: &Ast) -> Result<(LogicalPlan, Option<Ast>)> {
        let state = self.ctx.state();
        let planned = match state.statement_to_plan(ast.clone()).await {
            Err(e) if crate::error::is_duplicate_output_name(&e) => {
                let mut renamed = ast.clone();
                rewrite::name_duplicate_columns(&mut renamed);
                state.statement_to_plan(renamed.clone()).await.map(|plan| (plan, Some(renamed)))
            }
            planned => planned.map(|plan| (plan, None)),
        };
        planned.map_err(|e| crate::catalog::explain_unknown_table(e, &self.table_names()))
    }

    /// Ends the session: writes the engine's query log and memory events to the lakehouse.
    pub async fn close(&self) {
        self.engine.write_logs(true).await;
    }
}

/// What gobi-lang's expansion needs to know about a session.
pub(crate) struct SessionScope<'a> {
    pub(crate) variables: &'a Variables,
    pub(crate) functions: &'a Functions,
    /// A function being defined, visible to its own body (so recursion is found).
    pub(crate) defining: Option<Arc<FunctionDef>>,
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

/// DataFusion's optimizer rules, with gobi's decorrelation of non-equality correlated scalar
/// subqueries first, so DataFusion's own rule finishes the job, and semi joins moved below the
/// join on their key last, once DataFusion has made them and the joins below.
fn optimizer_rules() -> Vec<Arc<dyn datafusion::optimizer::OptimizerRule + Send + Sync>> {
    let mut rules = datafusion::optimizer::Optimizer::new().rules;
    rules.insert(0, Arc::new(rewrite::NonEquiCorrelatedSubquery));
    rules.push(Arc::new(semi_join::SemiJoinBelowKeyJoin));
    rules
}

pub(crate) fn needs_lakehouse(what: &str) -> GobiError {
    GobiError::plan(format!("{what} needs a lakehouse; this session reads plain files"))
        .with_hint("run it with --lakehouse DIR (create one with `gobi init DIR`)")
}

/// Ends a report's exemption from the query log however the report ends (also when its
/// future is dropped half-way).
struct ReportingUntilDropped<'a>(&'a AtomicBool);

impl Drop for ReportingUntilDropped<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}
