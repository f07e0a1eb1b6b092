//! Name resolution: what `FROM name` means.
//!
//! ```text
//!  FROM users                 ──► LakehouseSchema ──► tables/users (Delta, latest version)
//!  FROM users AS OF VERSION 3 ──► LakehouseSchema ──► tables/users (Delta, version 3)
//!  FROM top_users             ──► LakehouseSchema ──► _gobi/views/top_users.sql, planned
//!  FROM ext  (CREATE EXTERNAL TABLE, --data)      ──► session tables, in memory
//!  FROM 'dir/x.parquet'       ──► FileTableFactory ──► DataFusion listing table
//!  FROM 'path/to/delta_dir'   ──► FileTableFactory ──► Delta table written by any tool
//! ```
//!
//! Delta tables are opened once per engine (shared by its sessions) and brought up to date (one listing of the
//! `_delta_log` folder) each time a statement names them, so a commit by another process is
//! seen by the next statement. What an open table keeps between statements — its files' paths
//! and statistics — is reserved from the **cache** pool; a table that does not fit is opened
//! again by each statement instead of kept.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock, Weak};

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use datafusion::catalog::{SchemaProvider, TableProvider, UrlTableFactory};
use datafusion::datasource::dynamic_file::DynamicListTableFactory;
use datafusion::datasource::view::ViewTable;
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::{DdlStatement, LogicalPlan};
use deltalake::{DeltaTable, DeltaTableBuilder};
use gobi_lang::closest_name;
use gobi_lang::{TableVersion, VersionedName};
use gobi_memory::{MemoryManager, PoolKind, Reservation};
use parking_lot::RwLock;

use crate::delta_scan::delta_provider;
use crate::error::{ErrorKind, GobiError, Result};
use crate::lakehouse::{checked_name, directory_url, Lakehouse, NameKind};

/// The Delta tables of a lakehouse kept open between statements: one per engine, shared by
/// its sessions, each table's metadata reserved from the cache pool.
pub struct OpenTables {
    lakehouse: Lakehouse,
    memory: Arc<MemoryManager>,
    open: tokio::sync::Mutex<HashMap<String, OpenTable>>,
}

impl std::fmt::Debug for OpenTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenTables").field("root", &self.lakehouse.root()).finish()
    }
}

impl OpenTables {
    pub fn new(lakehouse: Lakehouse, memory: Arc<MemoryManager>) -> Self {
        Self { lakehouse, memory, open: Default::default() }
    }

    pub fn lakehouse(&self) -> &Lakehouse {
        &self.lakehouse
    }

    /// The table at its latest version, opened once and then refreshed.
    pub async fn delta_table(&self, name: &str) -> Result<DeltaTable> {
        if !self.lakehouse.table_exists(name) {
            return Err(unknown_table(name, &self.lakehouse.table_names()));
        }
        let cached = self.open.lock().await.get(name).map(|open| open.table.clone());
        let opened = match cached {
            Some(mut table) => table.update_incremental(None).await.map(|()| table),
            None => deltalake::open_table(self.lakehouse.table_url(name)?).await,
        };
        let table = opened.map_err(|e| self.unreadable(name, e.into()))?;
        self.remember(name, table.clone()).await;
        Ok(table)
    }

    /// Why table `name` cannot be read, in words that name it, the log file that is not JSON
    /// (when one is not: a file cut short by a crash or an edit), and what can be done.
    fn unreadable(&self, name: &str, error: GobiError) -> GobiError {
        if !matches!(error.kind, ErrorKind::Data | ErrorKind::Internal | ErrorKind::Plan) {
            return error;
        }
        let log = self.lakehouse.table_path(name).map(|path| path.join("_delta_log")).ok();
        let broken = log.as_deref().and_then(first_log_file_not_json);
        let (what, earlier) = match &broken {
            Some((file, version)) => (format!("its log file _delta_log/{file} is not valid JSON"), version.checked_sub(1)),
            None => ("its log cannot be read".to_string(), None),
        };
        let read_earlier = earlier.map(|v| format!("read the version before: SELECT * FROM {name} AS OF VERSION {v}; or ")).unwrap_or_default();
        GobiError::new(ErrorKind::Data, format!("table {name} cannot be read: {what} ({})", error.message))
            .with_hint(format!("{read_earlier}drop the table: DROP TABLE {name} (other tables are not affected)"))
    }

    /// Keeps the table (a write returned it, or it was brought up to date), so the next read
    /// starts from it, with its metadata reserved from the cache pool: made room for by
    /// evicting cached results if need be, else not kept.
    pub async fn remember(&self, name: &str, table: DeltaTable) {
        let mut open = self.open.lock().await;
        if let Some(kept) = open.get_mut(name).filter(|kept| kept.table.version() == table.version()) {
            kept.table = table;
            return;
        }
        open.remove(name);
        let memory = &self.memory;
        let bytes = metadata_bytes(&table);
        let what = format!("metadata of table {name}");
        let reservation = memory.reserve(PoolKind::Cache, bytes, &what).or_else(|full| {
            // Evicting cached results helps only if it can make enough room.
            let cache = memory.pool(PoolKind::Cache);
            let room = cache.limit().saturating_sub(cache.reserved()) + memory.reclaimable(PoolKind::Cache);
            if bytes > room {
                return Err(full);
            }
            memory.reclaim(PoolKind::Cache, bytes);
            memory.reserve(PoolKind::Cache, bytes, &what)
        });
        match reservation {
            Ok(reservation) => {
                open.insert(name.to_string(), OpenTable { table, _reservation: reservation });
            }
            Err(e) => tracing::debug!("table {name} is not kept open: {e}"),
        }
    }

    pub async fn forget(&self, name: &str) {
        self.open.lock().await.remove(name);
    }

    async fn versioned_table(&self, name: &VersionedName) -> Result<DeltaTable> {
        if !self.lakehouse.table_exists(&name.table) {
            return Err(unknown_table(&name.table, &self.lakehouse.table_names()));
        }
        let builder = DeltaTableBuilder::from_url(self.lakehouse.table_url(&name.table)?)?;
        match &name.version {
            // Loaded before the latest is asked for: a version before a broken log file reads.
            TableVersion::Version(version) => match u64::try_from(*version) {
                Ok(v) => match builder.with_version(v).load().await {
                    Ok(table) => Ok(table),
                    Err(e) => {
                        let table = self.delta_table(&name.table).await?;
                        let latest = table.version().unwrap_or(0);
                        if v > latest {
                            return Err(GobiError::plan(format!("table {} has no version {version} (the latest is {latest})", name.table)));
                        }
                        let log = self.lakehouse.table_path(&name.table)?.join("_delta_log");
                        match log_files(&log).map(|(version, _)| version).min() {
                            Some(earliest) if v < earliest => {
                                use deltalake::table::config::TablePropertiesExt as _;
                                let retention = table.snapshot().map(|s| s.table_config().log_retention_duration()).ok();
                                let retention = retention.map_or_else(String::new, |r| match r.as_secs() {
                                    s if s > 0 && s % 86_400 == 0 => format!(" ({} days)", s / 86_400),
                                    s if s > 0 && s % 3_600 == 0 => format!(" ({} hours)", s / 3_600),
                                    s => format!(" ({s} seconds)"),
                                });
                                Err(GobiError::plan(format!(
                                    "table {}'s version {version} is no longer in its log: commits older than the table's \
                                     delta.logRetentionDuration{retention} are removed when a checkpoint is written; the earliest \
                                     version that can be read is {earliest}",
                                    name.table
                                )))
                            }
                            _ => Err(e.into()),
                        }
                    }
                },
                Err(_) => Err(GobiError::plan(format!("table {} has no version {version}", name.table))),
            },
            TableVersion::Timestamp(text) => {
                let timestamp = parse_timestamp(text)?;
                builder
                    .with_timestamp(timestamp)
                    .load()
                    .await
                    .map_err(|e| GobiError::plan(format!("table {} at {text}: {}", name.table, GobiError::from(e).message)))
            }
        }
    }
}

/// The `public` schema of one session over a lakehouse: the engine's Delta tables and
/// persisted views, and the tables that live only as long as the session (external tables,
/// `let` tables).
pub struct LakehouseSchema {
    tables: Arc<OpenTables>,
    state: OnceLock<Weak<RwLock<SessionState>>>,
    session_tables: RwLock<HashMap<String, Arc<dyn TableProvider>>>,
}

impl std::fmt::Debug for LakehouseSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LakehouseSchema").field("root", &self.lakehouse().root()).finish()
    }
}

impl LakehouseSchema {
    pub fn new(tables: Arc<OpenTables>) -> Self {
        Self { tables, state: OnceLock::new(), session_tables: Default::default() }
    }

    pub fn lakehouse(&self) -> &Lakehouse {
        self.tables.lakehouse()
    }

    /// Views are planned with the session's state; the session hands it over once built.
    pub fn attach(&self, state: Weak<RwLock<SessionState>>) {
        let _ = self.state.set(state);
    }

    fn session_state(&self) -> DfResult<SessionState> {
        self.state.get().and_then(Weak::upgrade).map(|state| state.read().clone()).ok_or_else(|| DataFusionError::Internal("the session has ended".into()))
    }

    pub fn is_session_table(&self, name: &str) -> bool {
        self.session_tables.read().contains_key(name)
    }

    pub async fn delta_table(&self, name: &str) -> Result<DeltaTable> {
        self.tables.delta_table(name).await
    }

    pub async fn remember(&self, name: &str, table: DeltaTable) {
        self.tables.remember(name, table).await
    }

    pub async fn forget(&self, name: &str) {
        self.tables.forget(name).await
    }
}

/// A Delta table kept open between statements, and the cache-pool bytes its metadata holds.
struct OpenTable {
    table: DeltaTable,
    _reservation: Reservation,
}

/// What an open table's snapshot keeps per data file beyond its path and statistics: size,
/// times, partition values, the parsed statistics' columns.
const FILE_ENTRY_BYTES: usize = 256;

/// An estimate of what a table's snapshot holds: each data file's path and statistics (kept as
/// JSON and parsed into columns, hence twice), and a fixed part per file.
fn metadata_bytes(table: &DeltaTable) -> usize {
    let Ok(snapshot) = table.snapshot() else { return 0 };
    snapshot.log_data().iter().map(|file| file.path().len() + 2 * file.stats().map_or(0, |stats| stats.len()) + FILE_ENTRY_BYTES).sum()
}

/// `'2026-11-20 10:00:00'`, `'2026-11-20T10:00:00Z'`, `'2026-11-20'`; without a zone, UTC.
pub(crate) fn parse_timestamp(text: &str) -> Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M"]
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
        .or_else(|| NaiveDate::parse_from_str(text, "%Y-%m-%d").ok().and_then(|d| d.and_hms_opt(0, 0, 0)))
        .map(|t| t.and_utc())
        .ok_or_else(|| {
            GobiError::plan(format!("cannot read {text:?} as a timestamp"))
                .with_hint("write it as 'YYYY-MM-DD HH:MM:SS' (UTC) or RFC 3339, e.g. '2026-11-20T10:00:00+01:00'")
        })
}

/// "table x not found", with the closest existing name when one is close.
pub fn unknown_table(name: &str, known: &[String]) -> GobiError {
    let error = GobiError::plan(format!("table {name} not found"));
    match closest_name(name, known) {
        Some(close) => error.with_hint(format!("did you mean {close}?")),
        None => error,
    }
}

/// DataFusion's "table 'datafusion.public.x' not found" as gobi says it: "table x not found",
/// with the closest of `known`.
pub fn explain_unknown_table(error: DataFusionError, known: &[String]) -> GobiError {
    let missing = crate::error::unknown_table_name(&error);
    let error = GobiError::from(error);
    match missing {
        Some(name) => GobiError { position: error.position, width: error.width, ..unknown_table(&name, known) },
        None => error,
    }
}

fn to_datafusion(error: GobiError) -> DataFusionError {
    DataFusionError::External(Box::new(error))
}

#[async_trait]
impl SchemaProvider for LakehouseSchema {
    fn table_names(&self) -> Vec<String> {
        let mut names = self.lakehouse().table_names();
        names.extend(self.lakehouse().view_names());
        names.extend(self.session_tables.read().keys().cloned());
        names.sort();
        names.dedup();
        names
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        if let Some(table) = self.session_tables.read().get(name) {
            return Ok(Some(Arc::clone(table)));
        }
        let lakehouse = self.lakehouse();
        let table = if let Some(versioned) = VersionedName::parse(name) {
            self.tables.versioned_table(&versioned).await.map_err(to_datafusion)?
        } else if lakehouse.table_exists(name) {
            self.delta_table(name).await.map_err(to_datafusion)?
        } else if let Some(sql) = lakehouse.view_sql(name) {
            // The view's own text is not the user's script: its positions would point nowhere.
            let view = plan_view(&self.session_state()?, &sql)
                .await
                .map_err(|e| to_datafusion(GobiError { position: None, ..GobiError::plan(format!("in view {name}: {}", GobiError::from(e).message)) }))?;
            return Ok(Some(Arc::new(view)));
        } else {
            return Ok(None);
        };
        Ok(Some(delta_provider(&table, self.session_state()?).await?))
    }

    async fn table_type(&self, name: &str) -> DfResult<Option<TableType>> {
        if self.session_tables.read().contains_key(name) || self.lakehouse().table_exists(name) {
            Ok(Some(TableType::Base))
        } else if self.lakehouse().view_sql(name).is_some() {
            Ok(Some(TableType::View))
        } else {
            Ok(None)
        }
    }

    fn register_table(&self, name: String, table: Arc<dyn TableProvider>) -> DfResult<Option<Arc<dyn TableProvider>>> {
        if self.lakehouse().table_exists(&name) || self.lakehouse().view_sql(&name).is_some() {
            return Err(DataFusionError::Plan(format!("a table or view named {name} already exists")));
        }
        Ok(self.session_tables.write().insert(name, table))
    }

    fn deregister_table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        Ok(self.session_tables.write().remove(name))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.session_tables.read().contains_key(name) || self.lakehouse().table_exists(name) || self.lakehouse().view_sql(name).is_some()
    }
}

/// The first commit file in `log` (oldest first) with a line that is not JSON, and its version.
fn first_log_file_not_json(log: &Path) -> Option<(String, u64)> {
    let mut commits: Vec<(u64, String)> = log_files(log).filter(|(_, file)| file.ends_with(".json")).collect();
    commits.sort();
    commits.into_iter().find_map(|(version, file)| {
        let text = std::fs::read_to_string(log.join(&file)).ok()?;
        let broken = text.lines().filter(|line| !line.trim().is_empty()).any(|line| serde_json::from_str::<serde_json::Value>(line).is_err());
        broken.then_some((file, version))
    })
}

/// The version-named files of a Delta log folder: its commits (`N.json`) and checkpoints
/// (`N.checkpoint.parquet`), as (version, file name), in no order; none when it cannot be read.
fn log_files(log: &Path) -> impl Iterator<Item = (u64, String)> {
    std::fs::read_dir(log).into_iter().flatten().flatten().filter_map(|entry| {
        let file = entry.file_name().into_string().ok()?;
        let (version, kind) = file.split_once('.')?;
        let version = version.parse().ok().filter(|_| matches!(kind, "json" | "checkpoint.parquet"))?;
        Some((version, file))
    })
}

/// A persisted view is its `CREATE VIEW` statement; planning it again yields the view's query.
pub async fn plan_view(state: &SessionState, create_view_sql: &str) -> DfResult<ViewTable> {
    match state.create_logical_plan(create_view_sql).await? {
        LogicalPlan::Ddl(DdlStatement::CreateView(view)) => Ok(ViewTable::new(Arc::unwrap_or_clone(view.input), Some(create_view_sql.to_string()))),
        other => Err(DataFusionError::Internal(format!("a stored view is not a CREATE VIEW statement: {}", other.display()))),
    }
}

/// Resolves `FROM 'path'`: a folder with a `_delta_log` is read as a Delta table (at its latest
/// version, whoever wrote it); anything else goes to DataFusion's file reader.
#[derive(Debug, Default)]
pub struct FileTableFactory {
    files: DynamicListTableFactory,
}

impl FileTableFactory {
    pub fn attach(&self, state: Weak<RwLock<SessionState>>) {
        self.files.session_store().with_state(state);
    }
}

#[async_trait]
impl UrlTableFactory for FileTableFactory {
    async fn try_new(&self, url: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let path = Path::new(url);
        if path.join("_delta_log").is_dir() {
            let table = deltalake::open_table(directory_url(path).map_err(to_datafusion)?).await.map_err(|e| to_datafusion(e.into()))?;
            let state = self.files.session_store().get_session().upgrade().and_then(|session| session.read().as_any().downcast_ref::<SessionState>().cloned());
            let state = state.ok_or_else(|| DataFusionError::Internal("the session has ended".into()))?;
            return Ok(Some(delta_provider(&table, state).await?));
        }
        let looks_like_a_path = url.contains('/') || path.extension().is_some();
        let is_remote = url.contains("://");
        if looks_like_a_path && !is_remote && !path.exists() {
            // DataFusion looks up every name a statement mentions, also the one CREATE TABLE
            // or INSERT is about to write: say why it cannot be a table name either.
            let error = GobiError::plan(format!("no such file or folder: {url}"));
            return Err(to_datafusion(match checked_name(NameKind::Table, url) {
                Err(name) => error.with_hint(format!("{}; {}", name.message, name.hint.unwrap_or_default())),
                Ok(_) => error,
            }));
        }
        if !looks_like_a_path {
            return Ok(None);
        }
        match self.files.try_new(url).await? {
            Some(table) => Ok(Some(table)),
            None => Err(to_datafusion(
                GobiError::plan(format!("cannot read {url}: not a Parquet, CSV, JSON or Delta source"))
                    .with_hint("name files by their format (.parquet, .csv, .json) or point at a Delta table folder"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_name_finds_typos_only() {
        let known = vec!["users".to_string(), "orders".to_string()];
        assert_eq!(closest_name("usres", &known), Some("users"));
        assert_eq!(closest_name("ORDER", &known), Some("orders"));
        assert_eq!(closest_name("lineitem", &known), None);
    }

    #[test]
    fn timestamps_in_common_shapes() {
        for text in ["2026-11-20 10:00:00", "2026-11-20T10:00:00Z", "2026-11-20T11:00:00+01:00", "2026-11-20 10:00"] {
            assert_eq!(parse_timestamp(text).unwrap().to_rfc3339(), "2026-11-20T10:00:00+00:00", "{text}");
        }
        assert!(parse_timestamp("yesterday").is_err());
    }
}
