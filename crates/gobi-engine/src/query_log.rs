//! The query log: one row per finished statement that ran a query plan (id, text, status,
//! duration, peak reserved and actual bytes, spills), kept in the lakehouse as the Delta table
//! `_gobi/query_log` so a later process (`gobi memory stats`) sees recent peaks, rejections
//! and spills. Rows are buffered and appended in one commit when the session closes; the table
//! function `gobi_query_log()` shows the persisted rows and this session's pending ones.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
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
}

pub fn schema() -> SchemaRef {
    let utc = Some(Arc::from("UTC"));
    Arc::new(Schema::new(vec![
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
    ]))
}

fn batch(records: &[QueryRecord]) -> DfResult<RecordBatch> {
    let int = |f: &dyn Fn(&QueryRecord) -> u64| Arc::new(Int64Array::from_iter_values(records.iter().map(|r| f(r) as i64))) as ArrayRef;
    let process = std::process::id() as i64;
    Ok(RecordBatch::try_new(
        schema(),
        vec![
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
        ],
    )?)
}

/// This session's log: rows not yet written, and where they go.
#[derive(Debug)]
pub struct QueryLog {
    /// `_gobi/query_log` of the lakehouse; `None` for a session without one.
    url: Option<Url>,
    pending: Mutex<Vec<QueryRecord>>,
}

impl QueryLog {
    pub fn new(url: Option<Url>) -> Arc<Self> {
        Arc::new(Self { url, pending: Mutex::new(vec![]) })
    }

    pub fn record(&self, record: QueryRecord) {
        self.pending.lock().push(record);
    }

    /// Appends the pending rows to the Delta table in one commit (creating it the first time).
    /// Without a lakehouse the rows stay in memory for the session's life.
    pub async fn flush(&self) -> Result<()> {
        let Some(url) = &self.url else { return Ok(()) };
        let records = std::mem::take(&mut *self.pending.lock());
        if records.is_empty() {
            return Ok(());
        }
        let rows = batch(&records)?;
        let mut attempt = 0;
        loop {
            let table = DeltaTable::try_from_url(url.clone()).await?;
            let written = table.write(vec![rows.clone()]).with_save_mode(SaveMode::Append).with_table_name("query_log").await;
            match written {
                Ok(_) => return Ok(()),
                // Two processes creating the log at once: the second appends to the first's.
                Err(deltalake::DeltaTableError::VersionAlreadyExists(_)) if attempt < 3 => attempt += 1,
                Err(e) => {
                    self.pending.lock().splice(0..0, records);
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
                    if let Ok(cast) = cast_to(&persisted, &schema()) {
                        batches.push(cast);
                    }
                }
            }
        }
        batches.push(batch(&self.pending.lock())?);
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

/// `gobi_query_log()`.
#[derive(Debug)]
pub struct QueryLogFunction(pub Arc<QueryLog>);

impl TableFunctionImpl for QueryLogFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> DfResult<Arc<dyn TableProvider>> {
        if !args.exprs().is_empty() {
            return plan_err!("gobi_query_log() takes no arguments");
        }
        Ok(Arc::new(QueryLogTable(Arc::clone(&self.0))))
    }
}

#[derive(Debug)]
struct QueryLogTable(Arc<QueryLog>);

#[async_trait]
impl TableProvider for QueryLogTable {
    fn schema(&self) -> SchemaRef {
        schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(&self, state: &dyn CatalogSession, projection: Option<&Vec<usize>>, filters: &[Expr], limit: Option<usize>) -> DfResult<Arc<dyn ExecutionPlan>> {
        let Some(session_state) = state.as_any().downcast_ref::<SessionState>() else {
            return plan_err!("gobi_query_log() needs a gobi session");
        };
        let rows = self.0.all_rows(session_state).await?;
        MemTable::try_new(schema(), vec![rows])?.scan(state, projection, filters, limit).await
    }
}
