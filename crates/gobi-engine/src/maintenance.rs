//! Table maintenance: OPTIMIZE, VACUUM, RESTORE and DESCRIBE DETAIL, delta-rs's operations run
//! as gobi statements. OPTIMIZE reads and writes data, so it runs as a governed write with the
//! statement's state, as an INSERT does: its scans and a Z-order's sort reserve from the
//! statement and spill under it, and its one Parquet writer is reserved up front. VACUUM and
//! RESTORE change only the log and the folder.
//!
//! ```text
//!   OPTIMIZE t      small files ──► files of ~target size      one commit (data unchanged)
//!   VACUUM t        files no version within the retention needs, and files no commit ever
//!                   named (a writer killed before committing) ──► deleted
//!   RESTORE t TO VERSION n    one commit: version n's files current again
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool, MemoryReservation};
use datafusion::execution::session_state::SessionState;
use deltalake::delta_datafusion::SessionFallbackPolicy;
use deltalake::operations::optimize::OptimizeType;
use deltalake::operations::vacuum::VacuumMode;
use deltalake::table::config::TablePropertiesExt as _;
use deltalake::DeltaTable;
use gobi_lang::TableVersion;
use gobi_memory::ByteSize;

use crate::catalog::LakehouseSchema;
use crate::error::{GobiError, Result};
use crate::output::Output;
use crate::writes::{batch_output, commit_properties, commit_timestamp, writable_table, WriterMemory, Written};

/// Files under this share of OPTIMIZE's target size count as small in DESCRIBE DETAIL.
const SMALL_FILE_SHARE: u64 = 4;

pub async fn optimize(state: &SessionState, schema: &LakehouseSchema, name: &str, zorder: &[String]) -> Result<Written> {
    // Before the snapshot it compacts is read: no other OPTIMIZE, DELETE or UPDATE meanwhile.
    let _lock = schema.lakehouse().lock_table(name, true).await?;
    let table = writable_table(schema, name).await?;
    let columns: Vec<String> = table.snapshot()?.schema().fields().map(|field| field.name().to_string()).collect();
    if let Some(unknown) = zorder.iter().find(|column| !columns.contains(column)) {
        let error = GobiError::plan(format!("table {name} has no column {unknown}"));
        return Err(match gobi_lang::closest_name(unknown, &columns) {
            Some(close) => error.with_hint(format!("did you mean {close}?")),
            None => error,
        });
    }
    let target = schema.lakehouse().config().maintenance.target_file_size.0.max(1 << 20);
    let writer = WriterMemory::reserve(state)?;
    let kind = if zorder.is_empty() { OptimizeType::Compact } else { OptimizeType::ZOrder(zorder.to_vec()) };
    let (table, metrics) = table
        .optimize()
        .with_type(kind)
        .with_target_size(std::num::NonZeroU64::new(target).expect("at least 1 MiB"))
        .with_writer_properties(writer.properties.clone())
        // One file written at a time: the writer's reservation covers one.
        .with_max_concurrent_tasks(1)
        .with_session_state(Arc::new(state.clone()))
        .with_session_fallback_policy(SessionFallbackPolicy::RequireSessionState)
        .with_commit_properties(commit_properties())
        .await?;
    schema.remember(name, table).await;
    let message = if metrics.num_files_removed == 0 {
        format!("table {name} has no small files to compact; nothing done")
    } else {
        format!(
            "optimized {name}: {} files ({}) into {} ({})",
            metrics.num_files_removed,
            ByteSize(metrics.files_removed.total_size.max(0) as u64),
            metrics.num_files_added,
            ByteSize(metrics.files_added.total_size.max(0) as u64)
        )
    };
    Ok(Written::done(0, message))
}

/// VACUUM: deletes the files no version within the retention needs — those removed by a
/// commit older than the retention, and files no commit ever named (delta-rs's full mode)
/// older than it. `DRY RUN` lists them with their sizes instead.
pub async fn vacuum(
    state: &SessionState,
    schema: &LakehouseSchema,
    name: &str,
    retain_hours: Option<u64>,
    dry_run: bool,
    allow_short_retention: bool,
) -> Result<Written> {
    let table = writable_table(schema, name).await?;
    let minimum = table.snapshot()?.table_config().deleted_file_retention_duration();
    let retention = retain_hours.map_or(minimum, |hours| Duration::from_secs(hours.saturating_mul(3600)));
    let short = retention < minimum;
    let hours = retention.as_secs() / 3600;
    let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    // Read from the log only when the retention is short: each commit read is a file read.
    let unreadable = if short { versions_losing_files(&table, chrono::Utc::now() - retention).await } else { None };
    if short && !allow_short_retention {
        let losing = unreadable.map_or_else(|| "old versions".to_string(), |before| format!("versions before {before}"));
        return Err(GobiError::plan(format!(
            "VACUUM {name} RETAIN {hours} HOURS keeps less than the table's retention of {} hours: {losing} could no longer be read",
            minimum.as_secs() / 3600
        ))
        .with_hint("SET maintenance.allow_short_retention = on to do it anyway"));
    }
    let root = schema.lakehouse().table_path(name)?;
    let pool = &state.runtime_env().memory_pool;
    let lists = reserve_file_lists(pool, &root, name)?;
    let files = removable(&table, &root, retention).await?;
    if dry_run {
        return batch_output(vec![
            ("file", DataType::Utf8, Arc::new(StringArray::from_iter_values(files.iter().map(|(file, _)| file))) as ArrayRef),
            ("bytes", DataType::Int64, Arc::new(Int64Array::from_iter_values(files.iter().map(|(_, bytes)| *bytes as i64)))),
        ])
        .map(Written::reporting);
    }
    if files.is_empty() {
        return Ok(Written::done(0, format!("vacuumed {name}: no file to remove")));
    }
    let (table, done) = vacuum_builder(table, retention).with_dry_run(false).await?;
    drop(lists);
    schema.remember(name, table).await;
    let bytes: u64 = files.iter().map(|(_, bytes)| bytes).sum();
    let mut message = format!("vacuumed {name}: removed {} files ({})", done.files_deleted.len(), ByteSize(bytes));
    if let Some(before) = unreadable {
        message.push_str(&format!("; versions before {before} can no longer be read"));
    }
    Ok(Written::done(0, message))
}

/// What VACUUM's lists hold per file of the table's folder, besides its path: the entries of
/// delta-rs's list and of gobi's (with the file's size), and delta-rs's listing of the folder.
const LISTED_FILE_OVERHEAD: usize = 128;

/// Reserves, before anything lists the files VACUUM may delete, what those lists can hold: for
/// each file under `root` (counted by walking the folder, nothing kept), its path twice and
/// [`LISTED_FILE_OVERHEAD`]. An upper bound: which files go is known only once listed. A
/// folder of stray files too big for the pool fails here, before anything is deleted.
fn reserve_file_lists(pool: &Arc<dyn MemoryPool>, root: &Path, name: &str) -> Result<MemoryReservation> {
    fn walk(dir: &Path, depth: usize, bytes: &mut usize) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                walk(&entry.path(), depth + entry.file_name().len() + 1, bytes)?;
            } else {
                *bytes += 2 * (depth + entry.file_name().len()) + LISTED_FILE_OVERHEAD;
            }
        }
        Ok(())
    }
    let mut bytes = 0;
    walk(root, 0, &mut bytes).map_err(|e| GobiError::data(format!("cannot list table {name}'s folder {}: {e}", root.display())))?;
    let reservation = MemoryConsumer::new(format!("VACUUM {name}'s file list")).register(pool);
    reservation.try_grow(bytes)?;
    Ok(reservation)
}

/// delta-rs's VACUUM at `retention`, in full mode: files no commit ever named go too.
fn vacuum_builder(table: DeltaTable, retention: chrono::Duration) -> deltalake::operations::vacuum::VacuumBuilder {
    table
        .vacuum()
        .with_retention_period(retention)
        .with_enforce_retention_duration(false)
        .with_mode(VacuumMode::Full)
        .with_commit_properties(commit_properties())
}

/// The files VACUUM would delete at `retention`, with their sizes (read before anything is
/// deleted: delta-rs reports only the paths), sorted.
async fn removable(table: &DeltaTable, root: &std::path::Path, retention: chrono::Duration) -> Result<Vec<(String, u64)>> {
    let (_, planned) = vacuum_builder(table.clone(), retention).with_dry_run(true).await?;
    let mut files: Vec<(String, u64)> = planned
        .files_deleted
        .into_iter()
        .map(|file| {
            let size = std::fs::metadata(root.join(&file)).map_or(0, |m| m.len());
            (file, size)
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Per table of the lakehouse, the files a VACUUM at the table's own retention would delete
/// (`gobi memory cleanup` points at them): (table, files, bytes), tables with none left out,
/// and tables whose lists do not fit `pool`.
pub async fn vacuumable(lakehouse: &crate::lakehouse::Lakehouse, tables: &crate::catalog::OpenTables, pool: &Arc<dyn MemoryPool>) -> Vec<(String, usize, u64)> {
    let mut found = vec![];
    for name in lakehouse.table_names() {
        let (Ok(table), Ok(root)) = (tables.delta_table(&name).await, lakehouse.table_path(&name)) else { continue };
        let Ok(snapshot) = table.snapshot() else { continue };
        let retention = chrono::Duration::from_std(snapshot.table_config().deleted_file_retention_duration()).unwrap_or(chrono::Duration::MAX);
        let Ok(_lists) = reserve_file_lists(pool, &root, &name) else { continue };
        if let Ok(files) = removable(&table, &root, retention).await {
            if !files.is_empty() {
                found.push((name, files.len(), files.iter().map(|(_, bytes)| bytes).sum()));
            }
        }
    }
    found
}

/// The first version that keeps every file it needs once files removed before `cutoff` are
/// deleted: the latest commit made before it. `None` when no commit is that old.
async fn versions_losing_files(table: &DeltaTable, cutoff: chrono::DateTime<chrono::Utc>) -> Option<u64> {
    let latest = table.version()?;
    for version in (0..=latest).rev() {
        if commit_timestamp(table, version).await.is_some_and(|at| at < cutoff) {
            return (version > 0).then_some(version);
        }
    }
    None
}

pub async fn restore(schema: &LakehouseSchema, name: &str, to: &TableVersion) -> Result<Written> {
    let table = writable_table(schema, name).await?;
    let current = table.version().unwrap_or(0);
    let builder = table.restore().with_commit_properties(commit_properties());
    let builder = match to {
        TableVersion::Version(version) => {
            let version = u64::try_from(*version).map_err(|_| GobiError::plan(format!("table {name} has no version {version}")))?;
            if version >= current {
                return Err(GobiError::plan(format!("table {name} is at version {current}; RESTORE goes back to an earlier one, not {version}")));
            }
            builder.with_version_to_restore(version)
        }
        TableVersion::Timestamp(text) => builder.with_datetime_to_restore(crate::catalog::parse_timestamp(text)?),
    };
    let (table, metrics) = builder.await.map_err(|e| {
        let error = GobiError::from(e);
        match error.message.contains("Find missing file") {
            true => GobiError::plan(format!("cannot restore {name}: a file of that version was removed by VACUUM")),
            false => error,
        }
    })?;
    let now = table.version().unwrap_or(0);
    schema.remember(name, table).await;
    let target = match to {
        TableVersion::Version(version) => format!("version {version}"),
        TableVersion::Timestamp(text) => format!("its state at {text}"),
    };
    let message =
        format!("restored {name} to {target} as version {now} ({} files removed, {} brought back)", metrics.num_removed_file, metrics.num_restored_file);
    Ok(Written::done(0, message))
}

/// DESCRIBE DETAIL: one row of what the table is made of, and advice when small files dominate.
pub async fn describe_detail(schema: &LakehouseSchema, name: &str) -> Result<Output> {
    let table = schema.delta_table(name).await?;
    let snapshot = table.snapshot()?;
    let small_below = schema.lakehouse().config().maintenance.target_file_size.0 / SMALL_FILE_SHARE;
    // One pass over the snapshot's files (rows unknown once a file lacks its count).
    let (files, bytes, rows, small) = snapshot.log_data().iter().fold((0usize, 0u64, Some(0usize), 0usize), |(files, bytes, rows, small), file| {
        let size = file.size().max(0) as u64;
        (files + 1, bytes + size, rows.zip(file.num_records()).map(|(a, b)| a + b), small + usize::from(size < small_below))
    });
    let root = schema.lakehouse().table_path(name)?;
    let last_checkpoint = last_checkpoint(&root);
    let advice = if small >= 2 && small * 2 > files { format!("{small} of {files} files are small: OPTIMIZE {name} compacts them") } else { String::new() };
    let int = |value: Option<i64>| Arc::new(Int64Array::from(vec![value])) as ArrayRef;
    let text = |value: String| Arc::new(StringArray::from(vec![value])) as ArrayRef;
    batch_output(vec![
        ("table", DataType::Utf8, text(name.to_string())),
        ("location", DataType::Utf8, text(root.display().to_string())),
        ("version", DataType::Int64, int(table.version().map(|v| v as i64))),
        ("files", DataType::Int64, int(Some(files as i64))),
        ("bytes", DataType::Int64, int(Some(bytes as i64))),
        ("rows", DataType::Int64, int(rows.map(|rows| rows as i64))),
        ("small_files", DataType::Int64, int(Some(small as i64))),
        ("last_checkpoint", DataType::Int64, int(last_checkpoint)),
        ("checkpoint_interval", DataType::Int64, int(Some(snapshot.table_config().checkpoint_interval().get() as i64))),
        ("advice", DataType::Utf8, text(advice)),
    ])
}

/// The version of the table's last checkpoint, from `_delta_log/_last_checkpoint`.
pub fn last_checkpoint(table_root: &std::path::Path) -> Option<i64> {
    let text = std::fs::read_to_string(table_root.join("_delta_log/_last_checkpoint")).ok()?;
    serde_json::from_str::<serde_json::Value>(&text).ok()?.get("version")?.as_i64()
}
