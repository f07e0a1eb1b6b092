//! The one governed path every statement that does work takes: queries and writes alike.
//!
//! ```text
//!   Statement::begin(engine, text, session settings)
//!     ├─ admission (engine.admit: evict the cache under pressure, wait while critical)
//!     ├─ a statement scope (QueryMemory): query_limit, actual_margin, its own id
//!     ├─ a state for it: the session's, with the scope as memory pool, batch size and sort
//!     │  headroom fitted to the pool, and a physical optimizer rule that wraps every node of
//!     │  every plan made with it in a ScopedExec (governed.rs) — also the plans delta-rs
//!     │  makes for a write — and one that makes every Parquet scan reserve the row group
//!     │  it reads (scan.rs)
//!     └─ a log entry: one query-log row under the statement's id when it ends
//!   then
//!     query ─► execute ─► ResultStream (batches as they come; the scope ends when the stream
//!              ends or is dropped; a result small enough is cached when it ends)
//!     write ─► delta-rs with that state ─► one commit ─► row count
//! ```
//!
//! Not followed by the allocator scope: the tasks delta-rs spawns to write Parquet files (their
//! buffers are reserved up front, `writes::WriterMemory`) and the tasks DataFusion spawns
//! outside an operator's poll; their reservations are charged all the same, through the scope
//! as memory pool.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::config::ConfigOptions;
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool, UnboundedMemoryPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::ExecutionPlan;
use futures::StreamExt;
use gobi_memory::{ByteSize, PoolKind, QueryMemory, StatementLimits};

use crate::cancel::{Stop, Stops};
use crate::engine::{Engine, RETAINED_FREE_PAGES};
use crate::error::{ErrorKind, GobiError, Result};
use crate::governed;
use crate::join::SpillingJoins;
use crate::logs::{query_log_batch, QueryRecord, Status};
use crate::output::{Output, Progress, ResultStream};
use crate::result_cache::Versions;
use crate::scan::ReservedScans;
use crate::sort::{set_merge_headroom, SortsInBudget, MIN_HEADROOM};
use crate::topk::TopKInBudget;
use crate::writes::Written;

/// How long a finished statement waits for its aborted tasks to release their memory; what is
/// still held after that is a leak.
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// One statement running under governance: its memory scope and its query-log row.
pub(crate) struct Statement {
    engine: Arc<Engine>,
    scope: Arc<QueryMemory>,
    entry: LogEntry,
    progress: Progress,
    /// Set when the statement is dropped before its end or the session cancels it.
    stop: Stop,
}

impl Statement {
    /// Admits a statement and opens its scope. `logged`: false for gobi's own report queries,
    /// which stay out of the query log. `progress`: the session's, told of every plan the
    /// statement runs; `stops`: the session's, so it can cancel the statement.
    pub(crate) async fn begin(engine: &Arc<Engine>, text: &str, limits: StatementLimits, logged: bool, progress: &Progress, stops: &Stops) -> Result<Self> {
        engine.admit().await?;
        let stop = Stop::default();
        stops.running(&stop);
        let scope = engine.memory().begin_query(text, limits);
        let read = progress.clone();
        scope.measure_input_with(Box::new(move |node| read.read_share(node)));
        let entry = LogEntry {
            engine: Arc::clone(engine),
            scope: Arc::clone(&scope),
            started: chrono::Utc::now(),
            spills: (0, 0),
            from_cache: false,
            logged,
            delivered: 0,
            outcome: None,
        };
        Ok(Self { engine: Arc::clone(engine), scope, entry, progress: progress.clone(), stop })
    }

    /// The session's state with this statement's scope as its memory pool, execution fitted
    /// to the query pool, and every physical plan it makes wrapped to charge the statement.
    /// A failure here is the statement's logged outcome.
    pub(crate) fn state(&mut self, session: &SessionState) -> Result<SessionState> {
        let state = self.governed_state(session);
        if let Err(error) = &state {
            self.entry.outcome = Some(Err(error.message.clone()));
        }
        state
    }

    fn governed_state(&self, session: &SessionState) -> Result<SessionState> {
        let baseline = cfg!(feature = "baseline");
        let pool: Arc<dyn MemoryPool> = if baseline { Arc::new(UnboundedMemoryPool::default()) } else { Arc::clone(&self.scope) as _ };
        let runtime = RuntimeEnvBuilder::from_runtime_env(self.engine.runtime()).with_memory_pool(pool).build_arc()?;
        let mut builder = SessionStateBuilder::new_from_existing(session.clone()).with_runtime_env(Arc::clone(&runtime));
        if !baseline {
            let mut rules = session.physical_optimizers().to_vec();
            // Before dynamic filters are pushed down: they would point at the replaced joins.
            let before_dynamic_filters = rules.iter().position(|rule| rule.name() == "FilterPushdown(Post)").unwrap_or(rules.len());
            if self.engine.spilling_join_on() {
                rules.insert(before_dynamic_filters, Arc::new(SpillingJoins::new(self.scope.limit()).holding_up_to(self.scope.holdable())));
            }
            rules.push(Arc::new(TopKInBudget::new(self.scope.limit())));
            rules.push(Arc::new(SortsInBudget));
            rules.push(Arc::new(ReservedScans::new(runtime, Arc::clone(&self.scope), self.engine.admission_wait())));
            rules.push(Arc::new(Govern { scope: Arc::clone(&self.scope), progress: self.progress.clone(), stop: self.stop.clone() }));
            builder = builder.with_physical_optimizer_rules(rules);
        }
        let mut state = builder.build();
        // The statement's memory: a `query_limit` below the pool is what its sorts must fit.
        fit_execution_to_pool(state.config_mut().options_mut(), self.scope.limit() as u64);
        if let Some(bytes) = self.engine.take_fault_leak() {
            let leak = MemoryConsumer::new("DeliberateLeak").register(&state.runtime_env().memory_pool);
            leak.try_grow(bytes)?;
            self.engine.keep_deliberate_leak(leak);
        }
        Ok(state)
    }

    /// Runs a write under this statement: `work` is given the statement's state (from
    /// [`Statement::state`]) by the caller; the query log counts the rows it changed.
    pub(crate) async fn finish_write(mut self, work: impl std::future::Future<Output = Result<Written>>) -> Result<Output> {
        let result = work.await;
        self.entry.outcome = Some(match &result {
            Ok(written) => Ok(written.rows),
            Err(e) => Err(e.message.clone()),
        });
        self.scope.wait_released(RELEASE_WAIT).await;
        drop(self);
        result.map(|written| written.output)
    }

    /// The task context `physical` runs in: its sorts share the merge headroom.
    fn task_context(&self, state: &SessionState, physical: &Arc<dyn ExecutionPlan>) -> Arc<TaskContext> {
        let mut config = state.config().clone();
        fit_sorts_to_pool(config.options_mut(), self.scope.limit() as u64, sorters(physical));
        Arc::new(TaskContext::from(state).with_session_config(config))
    }

    /// What the statement may reserve: its `query_limit`, else the query pool.
    pub(crate) fn statement_memory(&self) -> usize {
        self.scope.limit()
    }

    /// The physical plan `plan` runs as under this statement (`gobi plan`).
    pub(crate) async fn physical_plan(&mut self, state: &SessionState, plan: &LogicalPlan) -> Result<Arc<dyn ExecutionPlan>> {
        match state.create_physical_plan(plan).await {
            Ok(physical) => Ok(physical),
            Err(error) => Err(self.failed(error)),
        }
    }

    /// `error`, which stopped the statement before its first batch, as the user sees it and as
    /// the statement's logged outcome (an error, not a cancel).
    fn failed(&mut self, error: datafusion::error::DataFusionError) -> GobiError {
        let error = self.engine.classify(error);
        self.entry.outcome = Some(Err(error.message.clone()));
        error
    }

    /// Runs `physical` (from [`Statement::physical_plan`]) to its end, dropping its rows
    /// (`gobi plan --analyze`); its operators' metrics stay on it. The statement is logged
    /// with the rows made.
    pub(crate) async fn run_to_end(mut self, state: &SessionState, physical: &Arc<dyn ExecutionPlan>) -> Result<u64> {
        let mut rows = 0;
        let ran = async {
            let mut stream = datafusion::physical_plan::execute_stream(Arc::clone(physical), self.task_context(state, physical))?;
            while let Some(batch) = stream.next().await {
                rows += batch?.num_rows() as u64;
            }
            Ok::<_, datafusion::error::DataFusionError>(())
        }
        .await;
        self.entry.spills = governed::spills(physical);
        let result = ran.map(|()| rows).map_err(|error| self.engine.classify(error));
        self.entry.outcome = Some(result.as_ref().map(|rows| *rows).map_err(|e| e.message.clone()));
        self.scope.wait_released(RELEASE_WAIT).await;
        result
    }

    /// Answers from cached batches (a result-cache hit).
    pub(crate) fn cached(mut self, schema: SchemaRef, batches: Vec<RecordBatch>) -> ResultStream {
        self.entry.from_cache = true;
        self.entry.outcome = Some(Ok(batches.iter().map(|b| b.num_rows() as u64).sum()));
        drop(self);
        ResultStream::from_batches(schema, batches)
    }

    /// Plans and starts `plan` with `state` (from [`Statement::state`]): its batches stream
    /// back as the plan makes them. `cache_key`: kept in the result cache when it ends, if
    /// it fits an entry.
    pub(crate) async fn query(mut self, state: &SessionState, plan: &LogicalPlan, cache_key: Option<(String, Versions)>) -> Result<ResultStream> {
        let physical = self.physical_plan(state, plan).await?;
        let stream = match datafusion::physical_plan::execute_stream(Arc::clone(&physical), self.task_context(state, &physical)) {
            Ok(stream) => stream,
            Err(error) => return Err(self.failed(error)),
        };
        let schema = physical.schema();
        let cache_limit = self.engine.result_cache().entry_limit();
        let running = Running {
            statement: Some(self),
            plan: Some(physical),
            stream,
            rows: 0,
            cache: cache_key.map(|key| CacheFill { key, batches: vec![], bytes: 0 }),
            cache_limit,
        };
        let stream = futures::stream::unfold(running, |mut running| async move {
            let statement = running.statement.as_ref()?;
            match running.stream.next().await {
                Some(Ok(batch)) => {
                    running.rows += batch.num_rows() as u64;
                    running.fill(&batch);
                    Some((Ok(batch), running))
                }
                Some(Err(error)) => {
                    let error = statement.engine.classify(error);
                    running.end(Err(error.message.clone())).await;
                    Some((Err(error), running))
                }
                None => {
                    running.end(Ok(())).await;
                    None
                }
            }
        });
        Ok(ResultStream::new(schema, Box::pin(stream)))
    }
}

impl Drop for Statement {
    /// A write's future dropped half-way (Ctrl-C) leaves delta-rs's plan running in spawned
    /// tasks: the stop ends them. After the statement's end it changes nothing.
    fn drop(&mut self) {
        self.stop.set();
    }
}

/// A query's plan while its batches stream out.
struct Running {
    /// Taken when the statement ends.
    statement: Option<Statement>,
    plan: Option<Arc<dyn ExecutionPlan>>,
    stream: SendableRecordBatchStream,
    rows: u64,
    cache: Option<CacheFill>,
    cache_limit: usize,
}

/// A result being gathered for the cache while it streams, given up once it passes an entry's
/// limit (the result still streams, uncached).
struct CacheFill {
    key: (String, Versions),
    batches: Vec<RecordBatch>,
    bytes: usize,
}

impl Running {
    fn fill(&mut self, batch: &RecordBatch) {
        let Some(fill) = &mut self.cache else { return };
        fill.bytes += batch.get_array_memory_size();
        if fill.bytes > self.cache_limit {
            self.cache = None;
        } else {
            fill.batches.push(batch.clone());
        }
    }

    /// Ends the statement: the plan goes (some operators keep memory in the node itself, such
    /// as a join's built side), its tasks are given time to release, the log row is written
    /// and, after success, the result cached.
    async fn end(&mut self, outcome: std::result::Result<(), String>) {
        let Some(mut statement) = self.statement.take() else { return };
        if let Some(plan) = self.plan.take() {
            statement.entry.spills = governed::spills(&plan);
        }
        self.stream = Box::pin(datafusion::physical_plan::EmptyRecordBatchStream::new(self.stream.schema()));
        // The outcome first: dropped while it waits, the statement still logs how it ended.
        let succeeded = outcome.is_ok();
        statement.entry.outcome = Some(outcome.map(|()| self.rows));
        statement.scope.wait_released(RELEASE_WAIT).await;
        let engine = Arc::clone(&statement.engine);
        drop(statement);
        if let (true, Some(fill)) = (succeeded, self.cache.take()) {
            let schema = self.stream.schema();
            engine.result_cache().insert(fill.key.0, fill.key.1, schema, fill.batches);
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Dropped before its end (the reader stopped: `| head`, Ctrl-C): the stream and the plan
        // go first, so the plan's tasks are aborted; the log row (cancelled, with the rows
        // delivered) is written once they have given their memory back.
        let Some(mut statement) = self.statement.take() else { return };
        statement.stop.set();
        self.stream = Box::pin(datafusion::physical_plan::EmptyRecordBatchStream::new(self.stream.schema()));
        if let Some(plan) = self.plan.take() {
            statement.entry.spills = governed::spills(&plan);
        }
        statement.entry.delivered = self.rows;
        let engine = Arc::clone(&statement.engine);
        engine.finish_in_background(async move {
            statement.scope.wait_released(RELEASE_WAIT).await;
            drop(statement);
        });
    }
}

/// Wraps every node of every physical plan made with a statement's state (its queries and the
/// plans delta-rs makes for its writes) so the work is charged to the statement, and tells the
/// session's progress that the plan runs.
#[derive(Debug)]
struct Govern {
    scope: Arc<QueryMemory>,
    progress: Progress,
    stop: Stop,
}

impl PhysicalOptimizerRule for Govern {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let plan = governed::scoped(plan, &self.scope, &self.stop)?;
        self.progress.running(&plan);
        Ok(plan)
    }

    fn name(&self) -> &str {
        "gobi_govern"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

impl Engine {
    /// An error from a running plan, in gobi's words.
    fn classify(&self, error: DataFusionError) -> GobiError {
        if !crate::error::spill_budget_exceeded(&error) {
            return error.into();
        }
        let limit = self.runtime().disk_manager.max_temp_directory_size();
        GobiError::new(ErrorKind::Memory, format!("the query's spill files passed the spill disk budget (memory.spill_limit = {})", ByteSize(limit)))
            .with_hint(format!("raise it: SET memory.spill_limit = '{}'", ByteSize(limit.saturating_mul(4))))
    }
}

/// Scales the settings whose memory is fixed per partition to the query pool, so spilling
/// operators can finish in a small one:
/// - the batch size: merging spill files holds a batch of each run (and the final
///   aggregation's merge cannot spill again), so 8192-row batches leave a 4 MiB pool no room to
///   merge; one row per 8 KiB of each partition's share keeps the merges inside it (256 to
///   DataFusion's 8192);
/// - the sorts' merge headroom (see [`fit_sorts_to_pool`]), for one sort per partition until
///   the plan is known;
/// - a repartition's spill file holds one batch: with two of its inputs spilling at once,
///   DataFusion 55.2 reads only the oldest open file and waits on it while the batch it needs is
///   in the newer one, and the query hangs (apache/datafusion#24883, fixed after 55.2). A file
///   finished at every batch is never left open, so its reservations can be refused like any
///   other's (and it spills) without that risk.
pub(crate) fn fit_execution_to_pool(options: &mut ConfigOptions, query_pool: u64) {
    let partitions = options.execution.target_partitions.max(1) as u64;
    options.execution.max_spill_file_size_bytes = datafusion::config::ConfigNonZeroUsize::try_new(1).expect("one byte");
    fit_sorts_to_pool(options, query_pool, partitions);
    let rows = (query_pool / (partitions * (8 << 10))).clamp(256, 8192) as usize;
    options.execution.batch_size = datafusion::config::ConfigNonZeroUsize::try_new(rows).expect("at least 256 rows");
}

/// Shares a quarter of the query pool among the `sorters` that may set merge headroom aside at
/// once (see [`sorters`]): what each sort sets aside to merge its spill files. DataFusion's
/// 10 MiB per partition would not fit a small pool at all, and ten sorts in a plan would need
/// ten shares; so the quarter divided among them (at least 64 KiB each). A sort whose input
/// turns out small sets less aside (`sort.rs`).
pub(crate) fn fit_sorts_to_pool(options: &mut ConfigOptions, query_pool: u64, sorters: u64) {
    let share = usize::try_from(query_pool / (4 * sorters.max(1))).unwrap_or(usize::MAX);
    set_merge_headroom(options, share.clamp(MIN_HEADROOM, 10 << 20));
}

/// The sorters of `plan`: one per partition of each sort that can spill (a TopK, a sort with a
/// fetch, keeps its rows instead and sets no headroom aside).
fn sorters(plan: &Arc<dyn ExecutionPlan>) -> u64 {
    let own = match plan.downcast_ref::<SortExec>() {
        Some(sort) if sort.fetch().is_none() => sort.properties().partitioning.partition_count() as u64,
        _ => 0,
    };
    own + plan.children().into_iter().map(sorters).sum::<u64>()
}

/// A statement's row in the query log, written when it is dropped: after success, an error,
/// or cancellation (dropped with no outcome). Dropping it also ends the statement's scope.
struct LogEntry {
    engine: Arc<Engine>,
    scope: Arc<QueryMemory>,
    started: chrono::DateTime<chrono::Utc>,
    /// Spill files and bytes the plan's operators wrote.
    spills: (u64, u64),
    from_cache: bool,
    logged: bool,
    /// Rows handed out before the reader stopped (a cancelled statement's row count).
    delivered: u64,
    /// Rows returned or changed, or the error's message; `None` until finished (cancelled if
    /// dropped so).
    outcome: Option<std::result::Result<u64, String>>,
}

impl Drop for LogEntry {
    fn drop(&mut self) {
        self.scope.end();
        let (spills, spilled_bytes) = self.spills;
        let (status, rows, error) = match self.outcome.take() {
            Some(Ok(rows)) => (Status::Ok, rows, None),
            Some(Err(message)) => (Status::Error, 0, Some(message)),
            None => (Status::Cancelled, self.delivered, None),
        };
        let memory = self.engine.memory();
        let leaked_bytes = self.scope.reserved_bytes() as u64;
        if leaked_bytes > 0 {
            memory.record_event(
                PoolKind::Query,
                format!("leak: query {} ended holding {}: {}", self.scope.id(), ByteSize(leaked_bytes), self.scope.text().chars().take(60).collect::<String>()),
                0,
            );
        }
        gobi_memory::allocator::purge_if_retained_over(RETAINED_FREE_PAGES);
        if !self.logged {
            return;
        }
        let record = QueryRecord {
            statement_id: crate::logs::statement_id(self.started),
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
        match query_log_batch(&[record]) {
            Ok(rows) => self.engine.query_log().append(rows),
            Err(e) => tracing::warn!("a query log row could not be built: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};

    use super::*;

    #[test]
    fn execution_fits_the_query_pool() {
        let mut options = ConfigOptions::default();
        options.execution.target_partitions = 2;
        fit_execution_to_pool(&mut options, 4 << 20);
        assert_eq!(
            (options.execution.batch_size.get(), options.execution.sort_spill_reservation_bytes),
            (256, 512 << 10),
            "4 MiB: the smallest batches, a quarter of the pool to merge"
        );
        assert_eq!(options.execution.sort_in_place_threshold_bytes, 128 << 10);
        fit_execution_to_pool(&mut options, 50 << 20);
        assert_eq!((options.execution.batch_size.get(), options.execution.sort_spill_reservation_bytes), (3200, 50 << 20 >> 3));
        fit_execution_to_pool(&mut options, 1 << 30);
        assert_eq!((options.execution.batch_size.get(), options.execution.sort_spill_reservation_bytes), (8192, 10 << 20), "DataFusion's own defaults at most");
        assert_eq!(options.execution.sort_in_place_threshold_bytes, 1 << 20);
        fit_execution_to_pool(&mut options, 0);
        assert_eq!((options.execution.batch_size.get(), options.execution.sort_spill_reservation_bytes), (256, 64 << 10));
    }

    /// apache/datafusion#24883's reproduction: a grouped `count(DISTINCT)` on two partitions in
    /// a 4 MiB pool makes the hash repartition spill from both inputs at once, and on DataFusion
    /// 55.2's defaults the first attempt never completes. With the execution fitted to the pool
    /// every attempt finishes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_repartition_spilling_from_two_inputs_at_once_does_not_hang() {
        use datafusion::execution::memory_pool::GreedyMemoryPool;
        use datafusion::physical_plan::repartition::RepartitionExec;
        use datafusion::prelude::{SessionConfig, SessionContext};

        async fn run_once() -> datafusion::error::Result<(usize, usize)> {
            let runtime = RuntimeEnvBuilder::new().with_memory_pool(Arc::new(GreedyMemoryPool::new(4 << 20))).build_arc()?;
            let mut config = SessionConfig::new().with_target_partitions(2);
            fit_execution_to_pool(config.options_mut(), 4 << 20);
            let ctx = SessionContext::new_with_config_rt(config.with_batch_size(64), runtime);
            let setup = "CREATE TABLE events AS SELECT v % 13 AS g, CASE WHEN v % 29 = 0 THEN NULL ELSE arrow_cast(md5(CAST(v % 337 AS VARCHAR)), 'Utf8View') END AS trace \
                         FROM generate_series(1, 40000) AS t(v)";
            ctx.sql(setup).await?.collect().await?;
            let plan = ctx.sql("SELECT g, count(DISTINCT trace) AS n FROM events GROUP BY g").await?.create_physical_plan().await?;
            let rows = datafusion::physical_plan::collect(Arc::clone(&plan), ctx.task_ctx()).await?.iter().map(RecordBatch::num_rows).sum();
            let mut spills = 0;
            plan.apply(|node| {
                if node.downcast_ref::<RepartitionExec>().is_some() {
                    spills += node.metrics().and_then(|m| m.spill_count()).unwrap_or(0);
                }
                Ok(TreeNodeRecursion::Continue)
            })?;
            Ok((rows, spills))
        }

        let mut spilled = 0;
        for attempt in 0..12 {
            match tokio::time::timeout(std::time::Duration::from_secs(60), run_once()).await {
                Err(_) => panic!("attempt {attempt} never completed: the repartition's spill files deadlocked"),
                Ok(Ok((rows, spills))) => {
                    assert_eq!(rows, 13, "attempt {attempt}");
                    spilled += usize::from(spills > 0);
                }
                // First come, first served, the greedy pool may refuse the aggregation: a
                // legitimate outcome of the limit, not a hang.
                Ok(Err(e)) if matches!(e.find_root(), DataFusionError::ResourcesExhausted(_)) => {}
                Ok(Err(e)) => panic!("attempt {attempt}: {e}"),
            }
        }
        assert!(spilled > 0, "no attempt spilled: the test no longer reaches the repartition's spill files");
    }

    #[test]
    fn sorts_share_a_quarter_of_the_pool() {
        let mut options = ConfigOptions::default();
        fit_sorts_to_pool(&mut options, 40 << 20, 10);
        assert_eq!(options.execution.sort_spill_reservation_bytes, 1 << 20, "ten sorters share 10 MiB");
        fit_sorts_to_pool(&mut options, 4 << 20, 20);
        assert_eq!(options.execution.sort_spill_reservation_bytes, 64 << 10, "at least 64 KiB each");
        assert_eq!(options.execution.sort_in_place_threshold_bytes, 16 << 10);
    }

    #[tokio::test]
    async fn sorters_are_the_partitions_of_sorts_without_a_fetch() {
        let ctx = datafusion::prelude::SessionContext::new_with_config(datafusion::prelude::SessionConfig::new().with_target_partitions(2));
        ctx.sql("CREATE TABLE t AS VALUES (1, 2), (3, 4)").await.unwrap();
        let plan = |sql: &'static str| {
            let ctx = ctx.clone();
            async move { ctx.sql(sql).await.unwrap().create_physical_plan().await.unwrap() }
        };
        let windows = plan("SELECT row_number() OVER (ORDER BY column1), row_number() OVER (ORDER BY column2 DESC) FROM t").await;
        assert_eq!(sorters(&windows), 2, "two sorts of one partition each");
        let top = plan("SELECT column1 FROM t ORDER BY column2 LIMIT 1").await;
        assert_eq!(sorters(&top), 0, "a TopK sets no merge headroom aside");
    }
}
