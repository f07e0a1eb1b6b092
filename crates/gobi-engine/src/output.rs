//! What a statement yields: rows as a stream, the rows a write changed, or what it did.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use datafusion::arrow::array::UInt64Array;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::physical_plan::{ExecutionPlan, StatisticsArgs, StatisticsContext};
use futures::{Stream, StreamExt};
use gobi_lang::Position;
use gobi_memory::NodeMemory;

use crate::error::Result;
use crate::governed;

/// What a statement produced.
#[derive(Debug)]
pub enum Output {
    /// A result set (queries, EXPLAIN, DESCRIBE, SHOW …), as its batches come.
    Rows(ResultStream),
    /// The rows a write changed (INSERT, UPDATE, DELETE, COPY TO a file): a one-row `count`
    /// result.
    Count(u64),
    /// A statement that changes things and returns no rows: what it did, in words.
    Done(String),
}

/// A statement's output with its rows held in memory (scripts, tests, `let`).
#[derive(Debug, Clone)]
pub enum Collected {
    Rows { schema: SchemaRef, batches: Vec<RecordBatch> },
    Done(String),
}

impl Collected {
    pub fn row_count(&self) -> usize {
        match self {
            Collected::Rows { batches, .. } => batches.iter().map(RecordBatch::num_rows).sum(),
            Collected::Done(_) => 0,
        }
    }
}

impl Output {
    /// Rows already in memory.
    pub fn rows(batches: Vec<RecordBatch>, schema: SchemaRef) -> Self {
        Output::Rows(ResultStream::from_batches(schema, batches))
    }

    /// The rows to print, if it has any: a count becomes its one-row result.
    pub fn into_rows(self) -> Option<ResultStream> {
        match self {
            Output::Rows(stream) => Some(stream),
            Output::Count(rows) => {
                let schema = Arc::new(Schema::new(vec![Field::new("count", DataType::UInt64, false)]));
                let batch = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(UInt64Array::from(vec![rows]))]).expect("one column, one row");
                Some(ResultStream::from_batches(schema, vec![batch]))
            }
            Output::Done(_) => None,
        }
    }

    /// Runs the statement to its end, holding every row.
    pub async fn collect(self) -> Result<Collected> {
        match self {
            Output::Done(message) => Ok(Collected::Done(message)),
            rows => {
                let (schema, batches) = rows.into_rows().expect("rows or a count").collect().await?;
                Ok(Collected::Rows { schema, batches })
            }
        }
    }

    /// Errors of its stream without a position of their own point at `position`.
    pub(crate) fn at(self, position: Position) -> Self {
        match self {
            Output::Rows(stream) => Output::Rows(stream.at(position)),
            other => other,
        }
    }
}

/// A statement's rows as they come: the schema first, then batches. Dropping it before its end
/// stops the statement (its tasks are aborted, its memory and spill files released).
pub struct ResultStream {
    schema: SchemaRef,
    inner: Pin<Box<dyn Stream<Item = Result<RecordBatch>> + Send>>,
    /// Where errors point when they have no position of their own: the statement.
    at: Option<Position>,
}

/// How far a session's running statement has read its sources, for a progress line: the
/// latest plan one of its statements made (a query's, or one delta-rs made for a write), held
/// weakly, so an ended plan's memory is not kept.
#[derive(Clone, Debug, Default)]
pub struct Progress(Arc<parking_lot::Mutex<Option<std::sync::Weak<dyn ExecutionPlan>>>>);

impl Progress {
    /// `plan` starts running (the `Govern` rule calls this for every plan it wraps).
    pub(crate) fn running(&self, plan: &Arc<dyn ExecutionPlan>) {
        *self.0.lock() = Some(Arc::downgrade(plan));
    }

    /// The rows and bytes the running plan's scans have read so far (bytes where the source
    /// counts them: Parquet); `None` when no plan runs.
    pub fn scanned(&self) -> Option<(u64, u64)> {
        let plan = self.0.lock().as_ref()?.upgrade()?;
        Some(scanned(&plan))
    }

    /// The share of its input `node` has taken (else the share of its sources' rows the
    /// running plan has read), when the input's rows are known (a Delta table's log, a
    /// Parquet footer, a range). Scans read ahead of the operators above them, so a node's
    /// own count is the truer one.
    pub(crate) fn read_share(&self, node: Option<&NodeMemory>) -> Option<f64> {
        let plan = self.0.lock().as_ref()?.upgrade()?;
        let taken = node.and_then(|node| {
            let inputs = governed::inputs_of(&plan, node)?;
            let rows: Option<u64> = inputs.into_iter().map(|input| estimated_rows(input).or_else(|| source_rows(input))).sum();
            Some((node.rows_in(), rows?))
        });
        let (read, total) = match taken {
            Some(taken) => taken,
            None => (scanned(&plan).0, source_rows(&plan)?),
        };
        (total > 0).then(|| read as f64 / total as f64)
    }
}

/// The rows the plan's leaves hold in all: each leaf's own count, or where a leaf does not
/// know it, the count of the nearest node above it that does (a Delta scan's rows come from
/// the table's log, above the Parquet scan).
fn source_rows(plan: &Arc<dyn ExecutionPlan>) -> Option<u64> {
    let children = plan.children();
    let below = if children.is_empty() { None } else { children.into_iter().map(source_rows).sum() };
    below.or_else(|| estimated_rows(plan))
}

/// The rows `plan` yields by its statistics, exact or estimated.
fn estimated_rows(plan: &Arc<dyn ExecutionPlan>) -> Option<u64> {
    let statistics = StatisticsContext::new().compute(plan.as_ref(), &StatisticsArgs::new()).ok()?;
    statistics.num_rows.get_value().map(|&rows| rows as u64)
}

/// What the plan's leaves (its scans) have read: rows out, and bytes scanned.
fn scanned(plan: &Arc<dyn ExecutionPlan>) -> (u64, u64) {
    let children = plan.children();
    if children.is_empty() {
        return plan.metrics().map_or((0, 0), |m| (m.output_rows().unwrap_or(0) as u64, m.sum_by_name("bytes_scanned").map_or(0, |v| v.as_usize() as u64)));
    }
    children.into_iter().map(scanned).fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
}

impl std::fmt::Debug for ResultStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultStream").field("schema", &self.schema).finish_non_exhaustive()
    }
}

impl ResultStream {
    pub(crate) fn new(schema: SchemaRef, inner: Pin<Box<dyn Stream<Item = Result<RecordBatch>> + Send>>) -> Self {
        Self { schema, inner, at: None }
    }

    /// Batches already in memory (SHOW …, a cached result).
    pub fn from_batches(schema: SchemaRef, batches: Vec<RecordBatch>) -> Self {
        Self { schema, inner: Box::pin(futures::stream::iter(batches.into_iter().map(Ok))), at: None }
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Errors without a position of their own point at `position`.
    pub(crate) fn at(mut self, position: Position) -> Self {
        self.at = Some(position);
        self
    }

    /// Every batch, held in memory (tests, `let`, small reports).
    pub async fn collect(mut self) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let mut batches = vec![];
        while let Some(batch) = self.next().await {
            batches.push(batch?);
        }
        Ok((self.schema, batches))
    }
}

impl Stream for ResultStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let at = self.at;
        self.inner.as_mut().poll_next(cx).map(|item| {
            item.map(|result| {
                result.map_err(|e| match at {
                    Some(position) => e.at(position),
                    None => e,
                })
            })
        })
    }
}
