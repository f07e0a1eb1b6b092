//! The logs gobi keeps in the lakehouse as Delta tables under `_gobi/`, so a later process
//! (`gobi memory stats`, `gobi memory pressure --history`) sees what earlier ones did:
//! - `query_log`: one row per finished statement that ran a query plan (id, text, status,
//!   duration, peak reserved and actual bytes, rejections, spills, bytes leaked);
//! - `memory_events`: what the memory manager did about pressure, leaks and cleanups.
//!
//! Rows are buffered and appended in one commit per log when the session closes, or sooner
//! once `FLUSH_ROWS` are pending, so the buffer never grows with the session's length; a
//! session without a lakehouse keeps its last `FLUSH_ROWS` rows only. The table functions
//! `gobi_query_log()` and `gobi_memory_events()` show the persisted rows followed by this
//! session's pending ones.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{MemTable, Session as CatalogSession, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{plan_err, Result as DfResult};
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_plan::ExecutionPlan;
use deltalake::protocol::SaveMode;
use deltalake::DeltaTable;
use parking_lot::Mutex;
use url::Url;

use gobi_memory::MemoryEvent;

use crate::error::Result;

/// How a statement ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Error,
    Cancelled,
}

impl Status {
    fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Error => "error",
            Status::Cancelled => "cancelled",
        }
    }
}

/// One finished statement.
#[derive(Debug, Clone)]
pub struct QueryRecord {
    /// Unique across processes and time-ordered (a UUIDv7): the log's key.
    pub statement_id: uuid::Uuid,
    /// The statement's number in its process, as its messages name it ("query 2").
    pub query_id: u64,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub text: String,
    pub status: Status,
    pub error: Option<String>,
    pub duration_ms: f64,
    pub rows: u64,
    /// The most the statement's operators reserved from the query pool at once.
    pub peak_reserved_bytes: u64,
    /// The most the allocator held for the statement's operators at once.
    pub peak_actual_bytes: u64,
    /// What the cache and temp pools held when the statement ended.
    pub cache_bytes: u64,
    pub temp_bytes: u64,
    /// Reservation requests refused (pool full, query limit, operator share, injected fault).
    pub rejected: u64,
    pub spills: u64,
    pub spilled_bytes: u64,
    /// Bytes its operators still held once it had ended (a leak).
    pub leaked_bytes: u64,
    /// Answered from the result cache (nothing ran).
    pub from_cache: bool,
}

/// A new statement id: a UUIDv7 of `started`'s milliseconds, so ids sort by time.
pub fn statement_id(started: chrono::DateTime<chrono::Utc>) -> uuid::Uuid {
    let random: [u8; 10] = uuid::Uuid::new_v4().as_bytes()[..10].try_into().expect("ten of sixteen bytes");
    uuid::Builder::from_unix_timestamp_millis(started.timestamp_millis().max(0) as u64, &random).into_uuid()
}

pub fn query_log_schema() -> SchemaRef {
    let utc = Some(Arc::from("UTC"));
    Arc::new(Schema::new(vec![
        // Nullable: rows written before gobi kept it have none.
        Field::new("statement_id", DataType::Utf8, true),
        Field::new("query_id", DataType::Int64, false),
        Field::new("process", DataType::Int64, false),
        Field::new("started_at", DataType::Timestamp(TimeUnit::Microsecond, utc), false),
        Field::new("text", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("error", DataType::Utf8, true),
        Field::new("duration_ms", DataType::Float64, false),
        Field::new("rows", DataType::Int64, false),
        Field::new("peak_reserved_bytes", DataType::Int64, false),
        Field::new("peak_actual_bytes", DataType::Int64, false),
        Field::new("cache_bytes", DataType::Int64, false),
        Field::new("temp_bytes", DataType::Int64, false),
        Field::new("rejected", DataType::Int64, false),
        Field::new("spills", DataType::Int64, false),
        Field::new("spilled_bytes", DataType::Int64, false),
        Field::new("leaked_bytes", DataType::Int64, false),
        Field::new("from_cache", DataType::Boolean, false),
    ]))
}

pub fn query_log_batch(records: &[QueryRecord]) -> DfResult<RecordBatch> {
    let int = |f: &dyn Fn(&QueryRecord) -> u64| Arc::new(Int64Array::from_iter_values(records.iter().map(|r| f(r) as i64))) as ArrayRef;
    let process = std::process::id() as i64;
    Ok(RecordBatch::try_new(
        query_log_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(records.iter().map(|r| r.statement_id.to_string()))),
            int(&|r| r.query_id),
            Arc::new(Int64Array::from_iter_values(records.iter().map(|_| process))),
            Arc::new(TimestampMicrosecondArray::from_iter_values(records.iter().map(|r| r.started_at.timestamp_micros())).with_timezone("UTC")),
            Arc::new(StringArray::from_iter_values(records.iter().map(|r| r.text.as_str()))),
            Arc::new(StringArray::from_iter_values(records.iter().map(|r| r.status.name()))),
            Arc::new(StringArray::from_iter(records.iter().map(|r| r.error.as_deref()))),
            Arc::new(Float64Array::from_iter_values(records.iter().map(|r| r.duration_ms))),
            int(&|r| r.rows),
            int(&|r| r.peak_reserved_bytes),
            int(&|r| r.peak_actual_bytes),
            int(&|r| r.cache_bytes),
            int(&|r| r.temp_bytes),
            int(&|r| r.rejected),
            int(&|r| r.spills),
            int(&|r| r.spilled_bytes),
            int(&|r| r.leaked_bytes),
            Arc::new(BooleanArray::from_iter(records.iter().map(|r| Some(r.from_cache)))),
        ],
    )?)
}

pub fn events_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("at", DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from("UTC"))), false),
        Field::new("process", DataType::Int64, false),
        Field::new("pool", DataType::Utf8, false),
        Field::new("level", DataType::Utf8, false),
        Field::new("action", DataType::Utf8, false),
        Field::new("bytes_freed", DataType::Int64, false),
    ]))
}

pub fn events_batch(events: &[MemoryEvent]) -> DfResult<RecordBatch> {
    let micros = |e: &MemoryEvent| e.at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
    let process = std::process::id() as i64;
    Ok(RecordBatch::try_new(
        events_schema(),
        vec![
            Arc::new(TimestampMicrosecondArray::from_iter_values(events.iter().map(micros)).with_timezone("UTC")),
            Arc::new(Int64Array::from_iter_values(events.iter().map(|_| process))),
            Arc::new(StringArray::from_iter_values(events.iter().map(|e| e.pool.name()))),
            Arc::new(StringArray::from_iter_values(events.iter().map(|e| e.level.name()))),
            Arc::new(StringArray::from_iter_values(events.iter().map(|e| e.action.as_str()))),
            Arc::new(Int64Array::from_iter_values(events.iter().map(|e| e.bytes_freed as i64))),
        ],
    )?)
}

/// Pending rows that make a log write them (or, without a lakehouse, the most it keeps).
const FLUSH_ROWS: usize = 256;

/// One log: rows not yet written, and the Delta table they go to.
#[derive(Debug)]
pub struct DeltaLog {
    name: &'static str,
    /// `_gobi/<name>` of the lakehouse; `None` for a session without one.
    url: Option<Url>,
    schema: SchemaRef,
    pending: Mutex<Vec<RecordBatch>>,
}

impl DeltaLog {
    pub fn new(name: &'static str, url: Option<Url>, schema: SchemaRef) -> Arc<Self> {
        Arc::new(Self { name, url, schema, pending: Mutex::new(vec![]) })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn append(&self, rows: RecordBatch) {
        if rows.num_rows() == 0 {
            return;
        }
        let mut pending = self.pending.lock();
        pending.push(rows);
        if self.url.is_none() {
            while pending.iter().map(RecordBatch::num_rows).sum::<usize>() > FLUSH_ROWS {
                pending.remove(0);
            }
        }
    }

    /// Writes the pending rows once there are `FLUSH_ROWS` of them.
    pub async fn flush_if_full(&self) -> Result<()> {
        let full = self.pending.lock().iter().map(RecordBatch::num_rows).sum::<usize>() >= FLUSH_ROWS;
        if full {
            self.flush().await
        } else {
            Ok(())
        }
    }

    /// Appends the pending rows to the Delta table in one commit (creating it the first time).
    /// Without a lakehouse the rows stay in memory for the session's life.
    pub async fn flush(&self) -> Result<()> {
        let Some(url) = &self.url else { return Ok(()) };
        let batches = std::mem::take(&mut *self.pending.lock());
        if batches.is_empty() {
            return Ok(());
        }
        let mut attempt = 0;
        loop {
            let table = DeltaTable::try_from_url(url.clone()).await?;
            // Merge: a log written by an older gobi gains the newer columns. The configuration
            // applies when this write creates the log: checkpointed like gobi's tables, so a
            // process opening it replays at most that many commits (with delta-rs's default of
            // 100, replaying 24 of them allocated 18 MB at once).
            let written = table
                .write(batches.clone())
                .with_save_mode(SaveMode::Append)
                .with_schema_mode(deltalake::operations::write::SchemaMode::Merge)
                .with_table_name(self.name)
                .with_configuration(crate::writes::CREATED_TABLE_CONFIGURATION)
                .await;
            match written {
                Ok(_) => return Ok(()),
                // Two processes creating the log at once: the second appends to the first's.
                Err(deltalake::DeltaTableError::VersionAlreadyExists(_)) if attempt < 3 => attempt += 1,
                Err(e) => {
                    self.pending.lock().splice(0..0, batches);
                    return Err(e.into());
                }
            }
        }
    }

    /// The persisted rows (oldest first) followed by this session's pending ones.
    async fn all_rows(&self, state: &SessionState) -> DfResult<Vec<RecordBatch>> {
        let mut batches = vec![];
        if let Some(url) = &self.url {
            if let Ok(table) = deltalake::open_table(url.clone()).await {
                let provider = table.table_provider().with_session(Arc::new(state.clone())).await?;
                let plan = provider.scan(state, None, &[], None).await?;
                for persisted in datafusion::physical_plan::collect(plan, state.task_ctx()).await? {
                    // A log written by an older gobi may lack newer columns: those rows are left out.
                    if let Ok(cast) = cast_to(&persisted, &self.schema) {
                        batches.push(cast);
                    }
                }
            }
        }
        batches.extend(self.pending.lock().iter().cloned());
        Ok(batches)
    }
}

fn cast_to(batch: &RecordBatch, schema: &SchemaRef) -> DfResult<RecordBatch> {
    let columns = schema
        .fields()
        .iter()
        .map(|field| {
            let column = batch.column_by_name(field.name()).ok_or_else(|| datafusion::common::DataFusionError::Plan(format!("no column {}", field.name())))?;
            Ok(datafusion::arrow::compute::cast(column, field.data_type())?)
        })
        .collect::<DfResult<Vec<_>>>()?;
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

/// `gobi_<log>()`: `gobi_query_log()`, `gobi_memory_events()`.
#[derive(Debug)]
pub struct LogFunction(pub Arc<DeltaLog>);

impl TableFunctionImpl for LogFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> DfResult<Arc<dyn TableProvider>> {
        if !args.exprs().is_empty() {
            return plan_err!("gobi_{}() takes no arguments", self.0.name);
        }
        Ok(Arc::new(LogTable(Arc::clone(&self.0))))
    }
}

#[derive(Debug)]
struct LogTable(Arc<DeltaLog>);

#[async_trait]
impl TableProvider for LogTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.0.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn CatalogSession,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let Some(session_state) = state.as_any().downcast_ref::<SessionState>() else {
            return plan_err!("gobi_{}() needs a gobi session", self.0.name);
        };
        let rows = self.0.all_rows(session_state).await?;
        MemTable::try_new(Arc::clone(&self.0.schema), vec![rows])?.scan(state, projection, filters, limit).await
    }
}
