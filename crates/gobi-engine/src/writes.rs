//! Every change to the lakehouse: table and view DDL, INSERT, UPDATE, DELETE.
//!
//! A change to a table is exactly one Delta commit, made by delta-rs: data files are written
//! first and become visible only when the commit lands, so a failure or a kill leaves the
//! table at its previous version (stray data files are invisible and left for VACUUM).
//! Concurrent appends are retried by delta-rs's optimistic commit; conflicting rewrites fail
//! with a conflict error instead of losing a write.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::metadata::FieldMetadata;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::Column;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryLimit, MemoryReservation};
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{cast, CreateMemoryTable, DdlStatement, Expr, LogicalPlan, LogicalPlanBuilder};
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::properties::WriterProperties;
use datafusion::sql::sqlparser::ast::{ColumnDef, Statement as SqlStatement};
use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::StructField;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableError};
use gobi_lang::Ast;

use crate::catalog::{unknown_table, LakehouseSchema};
use crate::error::{classify_delta, not_null_violation, ErrorKind, GobiError, NotNullViolation, Result};
use crate::keys;
use crate::output::Output;
use crate::stored_types::{kernel_field, stored_field, stored_type};

/// What a write did: its output, and the rows it added or changed for the query log.
pub struct Written {
    pub rows: u64,
    pub output: Output,
}

impl Written {
    /// A write whose output is the count of the rows it changed.
    fn count(rows: u64) -> Self {
        Written { rows, output: Output::Count(rows) }
    }

    pub(crate) fn done(rows: u64, message: String) -> Self {
        Written { rows, output: Output::Done(message) }
    }

    /// A statement that changed no rows, with what it reports.
    pub(crate) fn reporting(output: Output) -> Self {
        Written { rows: 0, output }
    }
}

/// The interval between checkpoints of the tables gobi creates, as Spark's Delta default:
/// opening a table reads its last checkpoint and at most this many JSON commits.
const CHECKPOINT_INTERVAL: &str = "10";

/// The configuration of every table gobi creates, its logs included: a checkpoint every
/// `CHECKPOINT_INTERVAL` commits, in the table property other Delta writers honour too.
pub(crate) const CREATED_TABLE_CONFIGURATION: [(&str, Option<&str>); 1] = [("delta.checkpointInterval", Some(CHECKPOINT_INTERVAL))];

pub async fn create_table(state: &SessionState, schema: &LakehouseSchema, create: &CreateMemoryTable) -> Result<Written> {
    let name = create.name.table();
    let lakehouse = schema.lakehouse();
    let exists = lakehouse.table_exists(name);
    if lakehouse.view_sql(name).is_some() || schema.is_session_table(name) {
        return Err(GobiError::plan(format!("{name} already exists and is not a Delta table")));
    }
    if exists && create.if_not_exists {
        return Ok(Written::done(0, format!("table {name} already exists; nothing done")));
    }
    refuse_defaults(create)?;
    if exists && !create.or_replace {
        return Err(
            GobiError::plan(format!("table {name} already exists")).with_hint("use CREATE TABLE IF NOT EXISTS, CREATE OR REPLACE TABLE, or DROP TABLE first")
        );
    }
    let declared_keys = keys::column_metadata(&create.constraints, create.input.schema().as_arrow());
    // Before the table's folder exists: a column Delta cannot hold is refused here.
    let input = delta_input(Arc::unwrap_or_clone(Arc::clone(&create.input)), Some(&declared_keys))?;
    std::fs::create_dir_all(lakehouse.table_path(name)?)?;
    let table = if exists { schema.delta_table(name).await? } else { DeltaTable::try_from_url(lakehouse.table_url(name)?).await? };
    let has_rows = !matches!(create.input.as_ref(), LogicalPlan::EmptyRelation(empty) if !empty.produce_one_row);
    let table = if has_rows || exists {
        let writer = WriterMemory::reserve(state)?;
        let mut write = table
            .write(vec![])
            .with_input_plan(input)
            .with_session_state(Arc::new(state.clone()))
            .with_save_mode(if exists { SaveMode::Overwrite } else { SaveMode::ErrorIfExists })
            .with_target_file_size(writer.target_file_size)
            .with_writer_properties(writer.properties)
            .with_table_name(name)
            .with_commit_properties(commit_properties());
        if !exists {
            write = write.with_configuration(CREATED_TABLE_CONFIGURATION);
        }
        if exists {
            write = write.with_schema_mode(deltalake::operations::write::SchemaMode::Overwrite);
        }
        write.await
    } else {
        let columns = delta_columns(create.input.schema().inner(), Some(&declared_keys))?;
        table
            .create()
            .with_columns(columns)
            .with_table_name(name)
            .with_configuration(CREATED_TABLE_CONFIGURATION)
            .with_commit_properties(commit_properties())
            .await
    };
    let table = table.map_err(|e| match classify_delta(&e) {
        ErrorKind::Conflict => {
            GobiError::new(ErrorKind::Conflict, format!("table {name} was {} by another writer at the same time", if exists { "changed" } else { "created" }))
        }
        _ => e.into(),
    })?;
    let rows = committed_metric(&table, "num_added_rows").await.unwrap_or(0);
    schema.remember(name, table).await;
    Ok(Written::done(rows, if rows > 0 { format!("created table {name} with {rows} rows") } else { format!("created table {name}") }))
}

pub async fn insert(state: &SessionState, schema: &LakehouseSchema, name: &str, input: LogicalPlan, op: InsertOp) -> Result<Written> {
    let mode = match op {
        InsertOp::Append => SaveMode::Append,
        InsertOp::Overwrite => SaveMode::Overwrite,
        InsertOp::Replace => return Err(GobiError::plan("INSERT OR REPLACE is not supported on Delta tables")),
    };
    // An overwrite removes every file, as a DELETE does: not beside an OPTIMIZE.
    let _lock = match mode {
        SaveMode::Overwrite => Some(schema.lakehouse().lock_table(name, false).await?),
        _ => None,
    };
    let table = writable_table(schema, name).await?;
    let input_columns = output_sources(&input);
    let table_columns = table_columns(&table)?;
    // Columns Delta stores as another type arrive as declared (the table reads so).
    let input = if input.schema().fields().iter().any(|f| stored_type(f.data_type()).is_some()) { delta_input(input, None)? } else { input };
    let writer = WriterMemory::reserve(state)?;
    let table = table
        .write(vec![])
        .with_input_plan(input)
        .with_session_state(Arc::new(state.clone()))
        .with_save_mode(mode)
        .with_target_file_size(writer.target_file_size)
        .with_writer_properties(writer.properties)
        .with_commit_properties(commit_properties())
        .await
        .map_err(|e| not_null_message(e, name, &input_columns, &table_columns))?;
    let rows = committed_metric(&table, "num_added_rows").await.unwrap_or(0);
    schema.remember(name, table).await;
    Ok(Written::count(rows))
}

pub async fn delete(state: &SessionState, schema: &LakehouseSchema, name: &str, input: &LogicalPlan) -> Result<Written> {
    let change = planned_change(input, "DELETE")?;
    let _lock = schema.lakehouse().lock_table(name, false).await?;
    let table = writable_table(schema, name).await?;
    let before = table.version();
    let writer = WriterMemory::reserve(state)?;
    let mut builder =
        table.delete().with_session_state(Arc::new(state.clone())).with_writer_properties(writer.properties).with_commit_properties(commit_properties());
    if let Some(predicate) = change.predicate {
        builder = builder.with_predicate(predicate);
    }
    let (table, metrics) = builder.await?;
    let deleted = match metrics.num_deleted_rows {
        Some(rows) => rows as u64,
        None if table.version() == before => 0,
        None => committed_metric(&table, "num_deleted_rows").await.unwrap_or(0),
    };
    schema.remember(name, table).await;
    Ok(Written::count(deleted))
}

pub async fn update(state: &SessionState, schema: &LakehouseSchema, name: &str, input: &LogicalPlan) -> Result<Written> {
    let change = planned_change(input, "UPDATE")?;
    let _lock = schema.lakehouse().lock_table(name, false).await?;
    let table = writable_table(schema, name).await?;
    let columns = table_columns(&table)?;
    let writer = WriterMemory::reserve(state)?;
    let mut builder =
        table.update().with_session_state(Arc::new(state.clone())).with_writer_properties(writer.properties).with_commit_properties(commit_properties());
    for (column, value) in change.assignments {
        builder = builder.with_update(column, value);
    }
    if let Some(predicate) = change.predicate {
        builder = builder.with_predicate(predicate);
    }
    let (table, metrics) = builder.await.map_err(|e| not_null_message(e, name, &[], &columns))?;
    schema.remember(name, table).await;
    Ok(Written::count(metrics.num_updated_rows as u64))
}

/// delta-rs's own minimum upload part: its writer fills one part in memory before it writes it
/// out (`DELTARS_UPLOAD_PART_SIZE` may only raise it).
const UPLOAD_PART: usize = 5 << 20;

/// What delta-rs's Parquet writer holds while a write runs, bounded by the statement's pool and
/// reserved from it before the first row is written, for as long as the write runs:
///
/// ```text
///  input plan ─► ArrowWriter: the row group being encoded        ≤ row_group
///                   │ flushed: the encoded row group              ≤ row_group
///                   ▼
///                BufWriter: one upload part                       UPLOAD_PART
///                   ▼
///                the data file (cut at target_file_size)
/// ```
///
/// The writer runs in tasks delta-rs spawns, which the statement's allocator scope does not
/// follow, so this reservation is how the pool sees it. Not counted here: the batches on their
/// way from the input plan to the writer (at most delta-rs's channel of 10), and uploads of
/// closed files still in flight (on a local disk they finish as the file is cut).
pub(crate) struct WriterMemory {
    _reservation: Option<MemoryReservation>,
    pub(crate) properties: WriterProperties,
    target_file_size: Option<std::num::NonZeroU64>,
}

impl WriterMemory {
    /// Sizes the writer from the statement's limit and reserves it; fails as any refused
    /// reservation does (the pool's message names the holders and the setting to raise).
    /// A statement without a limit (the unbounded baseline) gets delta-rs's defaults.
    pub(crate) fn reserve(state: &SessionState) -> Result<Self> {
        let pool = &state.runtime_env().memory_pool;
        let properties = WriterProperties::builder().set_compression(Compression::SNAPPY).set_created_by(format!("gobi version {}", env!("CARGO_PKG_VERSION")));
        let MemoryLimit::Finite(limit) = pool.memory_limit() else {
            return Ok(WriterMemory { _reservation: None, properties: properties.build(), target_file_size: None });
        };
        // A sixteenth of the limit: a table's row groups are what its scans reserve later
        // (`scan.rs`), so what is written under a budget can be read back under it.
        let row_group = (limit / 16).clamp(256 << 10, 16 << 20);
        let reservation = MemoryConsumer::new("DeltaWriter").register(pool);
        reservation.try_grow(2 * row_group + UPLOAD_PART)?;
        Ok(WriterMemory {
            _reservation: Some(reservation),
            properties: properties.set_max_row_group_bytes(Some(row_group)).build(),
            // The size new files are cut at: half the statement's limit, from 8 MiB to
            // delta-rs's 100 MiB. Each closed file's upload briefly holds its last row group.
            target_file_size: std::num::NonZeroU64::new((limit as u64 / 2).clamp(8 << 20, 100 << 20)),
        })
    }
}

/// What a DELETE or UPDATE planned by DataFusion changes, in the terms delta-rs takes: the
/// condition and the new value of each assigned column, with column names unqualified.
/// DataFusion has resolved every name and type already, so nothing is parsed twice.
struct PlannedChange {
    predicate: Option<Expr>,
    assignments: Vec<(String, Expr)>,
}

fn planned_change(input: &LogicalPlan, statement: &str) -> Result<PlannedChange> {
    let mut assignments = vec![];
    let mut below = input;
    if let LogicalPlan::Projection(projection) = input {
        for (expr, field) in projection.expr.iter().zip(projection.schema.fields()) {
            let value = expr.clone().unalias();
            if !matches!(&value, Expr::Column(c) if c.name == *field.name()) {
                assignments.push((field.name().clone(), unqualified(value)?));
            }
        }
        below = projection.input.as_ref();
    }
    let predicate = match below {
        LogicalPlan::Filter(filter) if is_table_scan(&filter.input) => Some(unqualified(filter.predicate.clone())?),
        plan if is_table_scan(plan) => None,
        LogicalPlan::Limit(_) => return Err(GobiError::plan(format!("{statement} … LIMIT is not supported on Delta tables"))),
        _ => return Err(GobiError::plan(format!("{statement} with FROM or joins is not supported on Delta tables yet"))),
    };
    let has_subquery = predicate
        .iter()
        .chain(assignments.iter().map(|(_, e)| e))
        .any(|e| e.exists(|e| Ok(matches!(e, Expr::ScalarSubquery(_) | Expr::InSubquery(_) | Expr::Exists(_)))).unwrap_or(true));
    if has_subquery {
        return Err(GobiError::plan(format!("{statement} with a subquery is not supported on Delta tables yet"))
            .with_hint("compute the rows first, e.g. CREATE TABLE keep AS SELECT … then CREATE OR REPLACE TABLE"));
    }
    Ok(PlannedChange { predicate, assignments })
}

fn is_table_scan(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::TableScan(_) => true,
        LogicalPlan::SubqueryAlias(alias) => is_table_scan(&alias.input),
        _ => false,
    }
}

/// delta-rs evaluates expressions against its own scan of the table, where columns have no
/// table qualifier.
fn unqualified(expr: Expr) -> Result<Expr> {
    Ok(expr
        .transform(|e| match e {
            Expr::Column(column) => Ok(Transformed::yes(Expr::Column(Column::new_unqualified(column.name)))),
            other => Ok(Transformed::no(other)),
        })?
        .data)
}

/// The Arrow field a column definition describes, as DataFusion's `CREATE TABLE` reads it.
pub async fn column_field(state: &SessionState, column: &ColumnDef) -> Result<Field> {
    let plan = state
        .create_logical_plan(&format!("CREATE TABLE gobi_column_probe ({column})"))
        .await
        .map_err(|e| GobiError { position: None, ..GobiError::from(e) })?;
    let LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(create)) = plan else {
        return Err(GobiError::internal("a column definition did not plan as CREATE TABLE"));
    };
    refuse_defaults(&create)?;
    Ok(create.input.schema().field(0).as_ref().clone())
}

/// `ALTER TABLE t ADD COLUMN …[, ADD COLUMN …]`: every column checked, then one commit.
pub async fn add_columns(schema: &LakehouseSchema, name: &str, columns: Vec<(Field, bool)>) -> Result<String> {
    let table = writable_table(schema, name).await?;
    let existing = table_columns(&table)?;
    let mut fields = vec![];
    let mut skipped = vec![];
    for (field, if_not_exists) in columns {
        if existing.iter().any(|(column, _)| column == field.name()) || fields.iter().any(|f: &Field| f.name() == field.name()) {
            if if_not_exists {
                skipped.push(field.name().clone());
                continue;
            }
            return Err(GobiError::plan(format!("column {} already exists in {name}", field.name())));
        }
        if !field.is_nullable() {
            return Err(GobiError::plan(format!("cannot add NOT NULL column {}: the rows already in {name} would have no value for it", field.name())));
        }
        fields.push(field);
    }
    let added: Vec<String> = fields.iter().map(|f| f.name().clone()).collect();
    if !fields.is_empty() {
        let columns = delta_columns(&Arc::new(Schema::new(fields)), None)?;
        let table = table.add_columns().with_fields(columns).with_commit_properties(commit_properties()).await?;
        schema.remember(name, table).await;
    }
    let mut message = vec![];
    if !added.is_empty() {
        message.push(format!("added {} to {name}", added.join(", ")));
    }
    if !skipped.is_empty() {
        message.push(format!("{} already in {name}; skipped", skipped.join(", ")));
    }
    Ok(message.join("; "))
}

pub fn create_view(schema: &LakehouseSchema, name: &str, or_replace: bool, create_view_sql: &str) -> Result<Output> {
    let lakehouse = schema.lakehouse();
    if lakehouse.table_exists(name) || schema.is_session_table(name) {
        return Err(GobiError::plan(format!("a table named {name} already exists")));
    }
    if lakehouse.view_sql(name).is_some() && !or_replace {
        return Err(GobiError::plan(format!("view {name} already exists")).with_hint("use CREATE OR REPLACE VIEW"));
    }
    if view_reaches(lakehouse, create_view_sql, name)? {
        return Err(GobiError::plan(format!("view {name} would refer to itself")));
    }
    lakehouse.save_view(name, create_view_sql)?;
    Ok(Output::Done(format!("created view {name}")))
}

/// Whether the view defined by `create_view_sql`, through the views it reads, reads `target`.
fn view_reaches(lakehouse: &crate::lakehouse::Lakehouse, create_view_sql: &str, target: &str) -> Result<bool> {
    let mut pending = vec![create_view_sql.to_string()];
    let mut seen = std::collections::HashSet::new();
    while let Some(sql) = pending.pop() {
        for statement in datafusion::sql::parser::DFParser::parse_sql(&sql)? {
            let Ast::Statement(statement) = statement else { continue };
            let SqlStatement::CreateView(view) = *statement else { continue };
            let query = Ast::Statement(Box::new(SqlStatement::Query(view.query)));
            let (relations, _) = datafusion::sql::resolve::resolve_table_references(&query, true)?;
            for relation in relations {
                let name = relation.table().to_string();
                if name == target {
                    return Ok(true);
                }
                if let (true, Some(sql)) = (seen.insert(name.clone()), lakehouse.view_sql(&name)) {
                    pending.push(sql);
                }
            }
        }
    }
    Ok(false)
}

pub async fn drop_table(schema: &LakehouseSchema, name: &str, if_exists: bool) -> Result<Output> {
    let lakehouse = schema.lakehouse();
    if schema.is_session_table(name) {
        use datafusion::catalog::SchemaProvider as _;
        schema.deregister_table(name)?;
        return Ok(Output::Done(format!("dropped session table {name}")));
    }
    if lakehouse.view_sql(name).is_some() {
        return Err(GobiError::plan(format!("{name} is a view")).with_hint(format!("use DROP VIEW {name}")));
    }
    if !lakehouse.table_exists(name) {
        return if if_exists {
            Ok(Output::Done(format!("table {name} does not exist; nothing done")))
        } else {
            Err(unknown_table(name, &lakehouse.table_names()))
        };
    }
    schema.forget(name).await;
    lakehouse.remove_table(name)?;
    Ok(Output::Done(format!("dropped table {name}")))
}

pub fn drop_view(schema: &LakehouseSchema, name: &str, if_exists: bool) -> Result<Output> {
    match schema.lakehouse().remove_view(name)? {
        true => Ok(Output::Done(format!("dropped view {name}"))),
        false if if_exists => Ok(Output::Done(format!("view {name} does not exist; nothing done"))),
        false => Err(GobiError::plan(format!("view {name} not found"))),
    }
}

/// `SHOW HISTORY t`: one row per commit, newest first, read from the Delta log itself.
pub async fn history(schema: &LakehouseSchema, name: &str) -> Result<Output> {
    let table = schema.delta_table(name).await?;
    let latest = table.version().unwrap_or(0);
    let log = schema.lakehouse().table_path(name)?.join("_delta_log");
    let (mut versions, mut timestamps, mut operations, mut parameters, mut metrics, mut checkpoints) = (vec![], vec![], vec![], vec![], vec![], vec![]);
    for version in (0..=latest).rev() {
        let Some(info) = commit_info(&table, version).await else { continue };
        versions.push(version as i64);
        checkpoints.push(log.join(format!("{version:020}.checkpoint.parquet")).exists());
        let millis = info.get("timestamp").and_then(|t| t.as_i64()).unwrap_or(0);
        timestamps.push(chrono::DateTime::from_timestamp_millis(millis).map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f").to_string()).unwrap_or_default());
        operations.push(info.get("operation").and_then(|o| o.as_str()).unwrap_or("").to_string());
        parameters.push(info.get("operationParameters").map(|p| p.to_string()).unwrap_or_default());
        metrics.push(info.get("operationMetrics").map(|p| p.to_string()).unwrap_or_default());
    }
    let columns: Vec<(&str, DataType, ArrayRef)> = vec![
        ("version", DataType::Int64, Arc::new(Int64Array::from(versions))),
        ("timestamp", DataType::Utf8, Arc::new(StringArray::from(timestamps))),
        ("operation", DataType::Utf8, Arc::new(StringArray::from(operations))),
        ("parameters", DataType::Utf8, Arc::new(StringArray::from(parameters))),
        ("metrics", DataType::Utf8, Arc::new(StringArray::from(metrics))),
        ("checkpoint", DataType::Boolean, Arc::new(BooleanArray::from(checkpoints))),
    ];
    batch_output(columns)
}

pub(crate) async fn writable_table(schema: &LakehouseSchema, name: &str) -> Result<DeltaTable> {
    if schema.lakehouse().view_sql(name).is_some() {
        return Err(GobiError::plan(format!("{name} is a view; only tables can be changed")));
    }
    schema.delta_table(name).await
}

/// The `commitInfo` of one commit, as written in the log.
async fn commit_info(table: &DeltaTable, version: u64) -> Option<serde_json::Map<String, serde_json::Value>> {
    let bytes = table.log_store().read_commit_entry(version).await.ok()??;
    std::str::from_utf8(&bytes).ok()?.lines().find_map(|line| {
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        value.get("commitInfo")?.as_object().cloned()
    })
}

/// When a commit was made, as its `commitInfo` says.
pub(crate) async fn commit_timestamp(table: &DeltaTable, version: u64) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp_millis(commit_info(table, version).await?.get("timestamp")?.as_i64()?)
}

/// A number from the `operationMetrics` of the commit that made the table's current version.
async fn committed_metric(table: &DeltaTable, key: &str) -> Option<u64> {
    let info = commit_info(table, table.version()?).await?;
    let value = info.get("operationMetrics")?.get(key)?;
    value.as_u64().or_else(|| value.as_str()?.parse().ok())
}

pub(crate) fn commit_properties() -> CommitProperties {
    CommitProperties::default().with_metadata([("engineInfo".to_string(), serde_json::Value::String(format!("gobi/{}", env!("CARGO_PKG_VERSION"))))])
}

/// The row count that INSERT, UPDATE and DELETE return, shaped as DataFusion returns it.
/// One batch of the given columns as a statement's rows; a column with nulls is nullable.
pub(crate) fn batch_output(columns: Vec<(&str, DataType, ArrayRef)>) -> Result<Output> {
    let field = |(name, data_type, array): &(&str, DataType, ArrayRef)| Field::new(*name, data_type.clone(), array.null_count() > 0);
    let schema = Arc::new(Schema::new(columns.iter().map(field).collect::<Vec<_>>()));
    let batch = RecordBatch::try_new(Arc::clone(&schema), columns.into_iter().map(|(_, _, a)| a).collect()).map_err(|e| GobiError::internal(e.to_string()))?;
    Ok(Output::rows(vec![batch], schema))
}

/// Delta has no column defaults; refusing them beats dropping them silently.
fn refuse_defaults(create: &CreateMemoryTable) -> Result<()> {
    match create.column_defaults.first() {
        Some((column, _)) => Err(GobiError::plan(format!("column {column}: DEFAULT values are not supported on Delta tables"))),
        None => Ok(()),
    }
}

/// The Delta columns of an Arrow schema, stored as Delta can (see `stored_types`), with each
/// column's key metadata when the table is created (see `keys`).
fn delta_columns(schema: &SchemaRef, keys: Option<&[String]>) -> Result<Vec<StructField>> {
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, field)| {
            let mut field = stored_field(field)?;
            if let Some(keys) = keys.map(|keys| &keys[i]).filter(|keys| *keys != keys::NO_KEYS) {
                field = field.clone().with_metadata(keys::with_keys(field.metadata(), keys));
            }
            kernel_field(&field)
        })
        .collect()
}

/// A write's input as Delta stores it: each column cast to its stored type, with its declared
/// type in its metadata (see `stored_types`); for a created table (`keys`, one per column)
/// also its key metadata, which replaces what a column read from a keyed table carries.
fn delta_input(plan: LogicalPlan, keys: Option<&[String]>) -> Result<LogicalPlan> {
    let mut columns = vec![];
    for (i, (qualifier, field)) in plan.schema().iter().enumerate() {
        let stored = stored_field(field)?;
        let column = Expr::Column(Column::new(qualifier.cloned(), field.name()));
        let value = if stored.data_type() == field.data_type() { column } else { cast(column, stored.data_type().clone()) };
        // A column in no key gets key metadata only to replace what it was read with.
        let metadata = match keys.map(|keys| &keys[i]).filter(|keys| *keys != keys::NO_KEYS || field.metadata().contains_key(keys::METADATA)) {
            Some(keys) => keys::with_keys(stored.metadata(), keys),
            None => stored.metadata().clone(),
        };
        columns.push(value.alias_with_metadata(field.name(), Some(FieldMetadata::from(metadata))));
    }
    Ok(LogicalPlanBuilder::from(plan).project(columns)?.build()?)
}

/// For each output column of a write's input plan: its own name and the columns it is
/// computed from (a projection maps `column2` of VALUES to `id`).
fn output_sources(plan: &LogicalPlan) -> Vec<Vec<String>> {
    let names = plan.schema().fields().iter().map(|f| vec![f.name().clone()]);
    match plan {
        LogicalPlan::Projection(projection) => names
            .zip(&projection.expr)
            .map(|(mut names, expr)| {
                names.extend(expr.column_refs().into_iter().map(|c| c.name.clone()));
                names
            })
            .collect(),
        _ => names.collect(),
    }
}

/// A table's columns with whether each may hold NULL.
fn table_columns(table: &DeltaTable) -> Result<Vec<(String, bool)>> {
    Ok(table.snapshot()?.schema().fields().map(|f| (f.name().clone(), f.is_nullable())).collect())
}

/// delta-rs reports a NULL in a NOT NULL column in its own words (read by
/// [`not_null_violation`]): either naming the column as the plan feeding the write calls it
/// (`column2` of VALUES; the plan's columns are in the table's order, so the position maps it
/// to the table's name), or as rows that failed its validation, with a preview. Either way,
/// say which table and column in the user's terms.
fn not_null_message(error: DeltaTableError, table: &str, input_columns: &[Vec<String>], table_columns: &[(String, bool)]) -> GobiError {
    match not_null_violation(&error) {
        Some(NotNullViolation::Column(plan_name)) => {
            let column = input_columns
                .iter()
                .position(|names| names.contains(&plan_name))
                .and_then(|i| table_columns.get(i))
                .map_or(plan_name.as_str(), |(name, _)| name.as_str());
            GobiError::data(format!("NOT NULL violation: column {column} of {table} cannot hold NULL, and the new rows have NULL in it"))
        }
        Some(NotNullViolation::Rows { rows, preview }) => {
            let required: Vec<&str> = table_columns.iter().filter(|(_, nullable)| !nullable).map(|(n, _)| n.as_str()).collect();
            GobiError::data(format!(
                "NOT NULL violation in {table}: {rows} {} would have NULL in a NOT NULL column ({}){preview}",
                if rows == 1 { "row" } else { "rows" },
                required.join(", "),
            ))
        }
        None => error.into(),
    }
}
