//! The engine: what every session of one process (or, later, one server) shares.
//!
//! ```text
//!                         Engine (one per process)
//!   ┌──────────────┬───────────────┬──────────────┬──────────────┬─────────────────────┐
//!   │ OpenTables   │ MemoryManager │ ResultCache  │ query_log,   │ RuntimeEnv: spill   │
//!   │ (lakehouse,  │ (query, cache,│ (cache pool) │ memory_events│ folder + disk budget│
//!   │  metadata)   │  temp pools)  │              │ (Delta logs) │                     │
//!   └──────▲───────┴───────▲───────┴──────▲───────┴──────▲───────┴─────────▲───────────┘
//!          └───────────────┴─── Session, Session, … (settings, variables, functions) ─┘
//! ```
//!
//! Two sessions of one engine share the pools, so one session's big query makes the other's
//! admission wait; each keeps its own variables and statement limits. Nothing here knows
//! about statements: the governed path that runs them is `runner.rs`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use datafusion::execution::cache::cache_manager::{CacheManagerConfig, FileMetadataCache};
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::MemoryReservation;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use gobi_memory::{ByteSize, MemoryManager, PoolKind, Pressure, QueryMemory, StatementLimits};
use parking_lot::Mutex;

use crate::catalog::OpenTables;
use crate::error::{ErrorKind, GobiError, Result};
use crate::footer_cache::FooterCache;
use crate::lakehouse::{Lakehouse, SpillDir};
use crate::logs::{events_batch, events_schema, query_log_schema, DeltaLog};
use crate::result_cache::ResultCache;
use crate::settings::{self, Owner, Setting, SettingValue};

/// Free allocator pages kept past a statement beyond this go back to the OS at once: between
/// statements the process holds its live memory, not the last statement's high-water mark.
pub(crate) const RETAINED_FREE_PAGES: usize = 32 << 20;

/// The spill disk budget until `SET memory.spill_limit` says otherwise.
const DEFAULT_SPILL_LIMIT: u64 = 4 << 30;

/// How long a new statement waits for a query pool under critical pressure before it is
/// refused, until `SET memory.admission_wait` says otherwise.
const DEFAULT_ADMISSION_WAIT: Duration = Duration::from_secs(10);

/// What `gobi memory cleanup` freed.
#[derive(Debug, Clone, Default)]
pub struct CleanupReport {
    /// (what, count, bytes)
    pub freed: Vec<(&'static str, usize, u64)>,
    /// Per table, files older than its retention that no version needs (a replaced version's,
    /// a killed writer's): (table, files, bytes). Cleanup leaves them to `VACUUM`.
    pub vacuumable: Vec<(String, usize, u64)>,
    pub rss_before: usize,
    pub rss_after: usize,
}

pub struct Engine {
    tables: Option<Arc<OpenTables>>,
    memory: Arc<MemoryManager>,
    /// Spill folder and spill disk budget (`memory.spill_limit`), shared by every statement;
    /// its memory pool is `outside_statements`.
    runtime: Arc<RuntimeEnv>,
    /// Work done outside any statement (reading a data folder's schemas, planning a view)
    /// reserves through this long-lived scope.
    _outside_statements: Arc<QueryMemory>,
    result_cache: Arc<ResultCache>,
    query_log: Arc<DeltaLog>,
    events: Arc<DeltaLog>,
    admission_wait: Mutex<Duration>,
    result_cache_on: AtomicBool,
    /// `memory.spilling_join`: whether the planner may put gobi's spilling hash join in plans.
    spilling_join_on: AtomicBool,
    /// `SET memory.fault_leak = 'size'` (tests): the next statement keeps that many bytes
    /// reserved past its end, as a faulty operator would, for the leak report to find.
    fault_leak: Mutex<Option<usize>>,
    deliberate_leaks: Mutex<Vec<MemoryReservation>>,
    /// Spill folders of dead processes removed when the engine started: (folders, bytes).
    swept_at_start: (usize, u64),
    /// Statements whose reader stopped early, waiting for their tasks to give memory back
    /// before they log how they ended: awaited before the logs are written for the last time.
    finishing: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The engine's spill folder in the lakehouse, removed when the engine goes (last, after
    /// the runtime that spills into it).
    _spill_dir: Option<SpillDir>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("lakehouse", &self.lakehouse().map(Lakehouse::root)).finish()
    }
}

impl Engine {
    /// An engine over a lakehouse: tables are Delta tables, views and functions persist, the
    /// query log and memory events are written under `_gobi/`.
    pub fn open(lakehouse: Lakehouse) -> Arc<Self> {
        Self::build(Some(lakehouse))
    }

    /// An engine with no lakehouse: files can be read, tables live in memory, spill files go to
    /// the system's temporary folder.
    pub fn in_memory() -> Arc<Self> {
        Self::build(None)
    }

    fn build(lakehouse: Option<Lakehouse>) -> Arc<Self> {
        let limits = lakehouse.as_ref().map(|l| l.config().memory).unwrap_or_default();
        let memory = MemoryManager::new(limits);
        let outside_statements = memory.begin_query("(outside statements: schemas, views)", StatementLimits::default());
        let mut swept_at_start = (0, 0);
        // A read-only lakehouse spills to the system's temporary folder, as an in-memory engine.
        let spill_dir = lakehouse.as_ref().filter(|l| !l.is_read_only()).and_then(|lakehouse| {
            match lakehouse.sweep_spill_dirs().and_then(|swept| Ok((swept, lakehouse.create_spill_dir()?))) {
                Ok((swept, dir)) => {
                    if swept.0 > 0 {
                        tracing::info!("removed {} spill folders left by processes that are gone", swept.0);
                    }
                    swept_at_start = swept;
                    Some(dir)
                }
                Err(e) => {
                    tracing::warn!("cannot prepare the spill folder ({}); spilling to the system's temporary folder", e.message);
                    None
                }
            }
        });
        let spill = match &spill_dir {
            Some(dir) => DiskManagerMode::Directories(vec![dir.path().to_path_buf()]),
            None => DiskManagerMode::OsTmpDirectory,
        };
        let footers: Arc<FileMetadataCache> = FooterCache::new(Arc::clone(&memory));
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::clone(&outside_statements) as _)
            .with_cache_manager(CacheManagerConfig::default().with_file_metadata_cache(Some(footers)))
            // Merging many spill files at once needs a batch of each in memory: merge in rounds.
            // Spill files count against a disk budget (`memory.spill_limit`): past it, the
            // spilling statement fails instead of filling the disk.
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(spill).with_max_spill_merge_fan_in(8).with_max_temp_directory_size(DEFAULT_SPILL_LIMIT),
            )
            .build_arc()
            .expect("a runtime over gobi's memory manager");
        // A read-only lakehouse keeps this run's log rows in memory only, as an in-memory engine.
        let log_url = |name: &str| lakehouse.as_ref().filter(|l| !l.is_read_only()).and_then(|l| l.log_url(name).ok());
        let query_log = DeltaLog::new("query_log", log_url("query_log"), query_log_schema());
        let events = DeltaLog::new("memory_events", log_url("memory_events"), events_schema());
        let result_cache = ResultCache::new(Arc::clone(&memory));
        let tables = lakehouse.map(|lakehouse| Arc::new(OpenTables::new(lakehouse, Arc::clone(&memory))));
        Arc::new(Self {
            tables,
            memory,
            runtime,
            _outside_statements: outside_statements,
            result_cache,
            query_log,
            events,
            admission_wait: Mutex::new(DEFAULT_ADMISSION_WAIT),
            result_cache_on: AtomicBool::new(true),
            spilling_join_on: AtomicBool::new(true),
            fault_leak: Mutex::default(),
            deliberate_leaks: Mutex::default(),
            swept_at_start,
            _spill_dir: spill_dir,
            finishing: Mutex::default(),
        })
    }

    pub fn lakehouse(&self) -> Option<&Lakehouse> {
        self.tables.as_deref().map(OpenTables::lakehouse)
    }

    pub(crate) fn tables(&self) -> Option<&Arc<OpenTables>> {
        self.tables.as_ref()
    }

    /// The memory manager every session of this engine reserves from.
    pub fn memory(&self) -> &Arc<MemoryManager> {
        &self.memory
    }

    pub(crate) fn runtime(&self) -> &Arc<RuntimeEnv> {
        &self.runtime
    }

    pub(crate) fn result_cache(&self) -> &Arc<ResultCache> {
        &self.result_cache
    }

    pub(crate) fn result_cache_on(&self) -> bool {
        self.result_cache_on.load(Ordering::Relaxed)
    }

    pub(crate) fn spilling_join_on(&self) -> bool {
        self.spilling_join_on.load(Ordering::Relaxed)
    }

    pub(crate) fn query_log(&self) -> &Arc<DeltaLog> {
        &self.query_log
    }

    pub(crate) fn events(&self) -> &Arc<DeltaLog> {
        &self.events
    }

    /// Changes a pool's limit for every session (the `--memory-*` flags, `SET memory.*_pool`).
    pub fn set_pool_limit(&self, pool: PoolKind, bytes: u64) {
        self.memory.pool(pool).set_limit(usize::try_from(bytes).unwrap_or(usize::MAX));
    }

    /// Turns the result cache on or off for every session (`SET memory.result_cache`, and
    /// `gobi query --repeat`, whose runs must run).
    pub fn set_result_cache(&self, on: bool) {
        self.result_cache_on.store(on, Ordering::Relaxed);
    }

    /// Applies an engine setting; what it now is, in words.
    pub(crate) fn apply(&self, setting: &Setting, value: SettingValue) -> Result<String> {
        debug_assert_eq!(setting.owner, Owner::Engine);
        match (setting.name, value) {
            ("query_pool", value) => self.set_pool_limit(PoolKind::Query, value.bytes() as u64),
            ("cache_pool", value) => self.set_pool_limit(PoolKind::Cache, value.bytes() as u64),
            ("temp_pool", value) => self.set_pool_limit(PoolKind::Temp, value.bytes() as u64),
            ("spill_limit", SettingValue::Size(bytes)) => self.runtime.disk_manager.set_max_temp_directory_size(bytes)?,
            ("admission_wait", SettingValue::Duration(wait)) => *self.admission_wait.lock() = wait,
            ("leak_threshold", SettingValue::Duration(threshold)) => self.memory.set_leak_threshold(threshold),
            ("result_cache", SettingValue::Switch(on)) => self.set_result_cache(on),
            ("spilling_join", SettingValue::Switch(on)) => self.spilling_join_on.store(on, Ordering::Relaxed),
            ("fault_probability", SettingValue::Probability(p)) => self.memory.set_fault_probability(p),
            ("fault_leak", value) => *self.fault_leak.lock() = Some(value.bytes()),
            (name, value) => return Err(GobiError::internal(format!("memory.{name} cannot take {value:?}"))),
        }
        Ok(self.current(setting))
    }

    /// An engine setting's value now, as `SHOW` prints it.
    pub(crate) fn current(&self, setting: &Setting) -> String {
        let size = |bytes: usize| ByteSize(bytes as u64).to_string();
        match setting.name {
            "query_pool" => size(self.memory.pool(PoolKind::Query).limit()),
            "cache_pool" => size(self.memory.pool(PoolKind::Cache).limit()),
            "temp_pool" => size(self.memory.pool(PoolKind::Temp).limit()),
            "spill_limit" => ByteSize(self.runtime.disk_manager.max_temp_directory_size()).to_string(),
            "admission_wait" => settings::format_duration(*self.admission_wait.lock()),
            "leak_threshold" => settings::format_duration(self.memory.leak_threshold()),
            "result_cache" => SettingValue::Switch(self.result_cache_on()).to_string(),
            "spilling_join" => SettingValue::Switch(self.spilling_join_on()).to_string(),
            "fault_probability" => self.memory.fault_probability().to_string(),
            "fault_leak" => size(self.fault_leak.lock().unwrap_or(0)),
            other => unreachable!("{other} is not an engine setting"),
        }
    }

    /// The bytes the next statement must keep past its end (`memory.fault_leak`), once.
    pub(crate) fn take_fault_leak(&self) -> Option<usize> {
        self.fault_leak.lock().take()
    }

    pub(crate) fn keep_deliberate_leak(&self, leak: MemoryReservation) {
        self.deliberate_leaks.lock().push(leak);
    }

    /// How long a statement waits for others to give memory back (`memory.admission_wait`):
    /// to start, and when a scan is short.
    pub(crate) fn admission_wait(&self) -> Duration {
        *self.admission_wait.lock()
    }

    /// Admission: while the query pool is under critical pressure, a new statement waits (up
    /// to `memory.admission_wait`) for running ones to give memory back rather than fail at
    /// once.
    ///
    /// Before that, pressure is answered: a cache pool at `high` or above is evicted down to
    /// 60 % of its limit, and cache entries borrowed from a critical query pool are given back.
    pub(crate) async fn admit(&self) -> Result<()> {
        let memory = &self.memory;
        let cache = memory.pool(PoolKind::Cache);
        if cache.pressure() >= Pressure::High {
            let level = cache.pressure();
            let freed = memory.reclaim(PoolKind::Cache, cache.reserved().saturating_sub(cache.limit() / 10 * 6));
            memory.record_event(PoolKind::Cache, format!("{} pressure: evicted cached results down to 60 % of the cache pool", level.name()), freed as u64);
        }
        let pool = memory.pool(PoolKind::Query);
        if pool.pressure() == Pressure::Critical && memory.reclaimable(PoolKind::Query) > 0 {
            let freed = memory.reclaim(PoolKind::Query, usize::MAX);
            memory.record_event(PoolKind::Query, "critical pressure: gave back the cache's borrowed query pool memory", freed as u64);
        }
        if pool.pressure() < Pressure::Critical {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let wait = self.admission_wait();
        let admitted = memory.wait_for_pressure_below(PoolKind::Query, Pressure::Critical, wait).await;
        let waited = started.elapsed();
        if !admitted {
            memory.record_event(PoolKind::Query, format!("admission: a new query waited {:.1}s and was refused", waited.as_secs_f64()), 0);
            return Err(GobiError::new(
                ErrorKind::Memory,
                format!(
                    "the query pool stayed over 95 % full ({} of {}) for {:.1}s; the new query was not started",
                    ByteSize(pool.reserved() as u64),
                    ByteSize(pool.limit() as u64),
                    wait.as_secs_f64()
                ),
            )
            .with_hint("wait for running queries to finish, or SET memory.query_pool to a larger size"));
        }
        memory.record_event(PoolKind::Query, format!("admission: a new query waited {:.1}s for memory", waited.as_secs_f64()), 0);
        Ok(())
    }

    /// Moves the manager's events into their log and writes both logs: always when `closing`,
    /// otherwise once one has enough rows pending. A failure to write them is reported, and
    /// never undoes what the statements did.
    pub async fn write_logs(&self, closing: bool) {
        if closing {
            let finishing = std::mem::take(&mut *self.finishing.lock());
            for statement in finishing {
                if let Err(e) = statement.await {
                    tracing::warn!("a statement's end could not be logged: {e}");
                }
            }
        }
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
        if closing {
            for pool in self.memory.stats().into_iter().filter(|pool| pool.overruns > 0) {
                tracing::warn!(
                    "the {} pool went past its limit {} times (an operator grew memory it already held); `gobi memory pressure --history` says which",
                    pool.kind,
                    pool.overruns
                );
            }
        }
    }

    /// Runs `end` (a statement ending after its reader stopped) on the current runtime;
    /// [`Engine::write_logs`] waits for it when closing. Without a runtime `end` is dropped,
    /// which ends the statement (and writes its log row) at once.
    pub(crate) fn finish_in_background(&self, end: impl std::future::Future<Output = ()> + Send + 'static) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let mut finishing = self.finishing.lock();
        finishing.retain(|statement| !statement.is_finished());
        finishing.push(runtime.spawn(end));
    }

    /// `gobi memory cleanup`: releases what ended statements still hold, drops cached results
    /// of tables changed since, removes spill folders of processes that are gone (also those
    /// removed when the engine started), and asks the allocator to return free pages to the OS.
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
            if let Ok(swept) = lakehouse.sweep_spill_dirs() {
                folders += swept.0;
                bytes += swept.1;
            }
        }
        let vacuumable = match (self.lakehouse(), &self.tables) {
            (Some(lakehouse), Some(tables)) => crate::maintenance::vacuumable(lakehouse, tables, &self.runtime.memory_pool).await,
            _ => vec![],
        };
        let purged = gobi_memory::allocator::purge();
        let rss_after = gobi_memory::allocator::rss_bytes();
        self.memory.record_event(
            PoolKind::Query,
            format!(
                "cleanup: {} reservations of ended queries, {folders} stale spill folders{}",
                released.reservations,
                if purged { ", allocator purged" } else { "" }
            ),
            released.bytes as u64,
        );
        CleanupReport {
            freed: vec![
                ("reservations of ended queries", released.reservations, released.bytes as u64),
                ("cached results of tables changed since", stale_entries, stale_bytes),
                ("stale spill folders", folders, bytes),
                ("free allocator pages returned to the OS", usize::from(purged), rss_before.saturating_sub(rss_after) as u64),
            ],
            vacuumable,
            rss_before,
            rss_after,
        }
    }

    /// Whether every table of a cached result is still at the snapshot it was read from.
    async fn still_current(&self, versions: &crate::result_cache::Versions) -> bool {
        let Some(tables) = &self.tables else { return false };
        for (name, read) in versions {
            let current = tables.delta_table(name).await.ok().and_then(|table| crate::delta_scan::table_version(&table));
            if current.as_ref() != Some(read) {
                return false;
            }
        }
        true
    }
}
