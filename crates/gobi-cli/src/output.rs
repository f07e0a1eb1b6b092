//! Printing results: a table for people, CSV and JSON for programs.

use std::io::Write as _;

use std::sync::Arc;

use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, ContentArrangement, Table};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use futures::StreamExt;
use gobi_engine::{GobiError, Output};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

pub struct Printer {
    format: Format,
}

/// What printing a statement's output came to.
pub struct Printed {
    pub rows: usize,
    /// The reader went away (a closed pipe): nothing more should be printed.
    pub reader_left: bool,
}

/// The most rows a table keeps to print: beyond it rows are counted, not held, and the footer
/// says how many were shown (csv and json stream every row).
const TABLE_PREVIEW_ROWS: usize = 10_000;

impl Printer {
    pub fn new(format: Format) -> Self {
        Self { format }
    }

    pub fn is_json(&self) -> bool {
        matches!(self.format, Format::Json)
    }

    /// Prints a statement's output as its rows arrive. Result rows go to stdout; what a
    /// statement did (created, dropped, …) goes to stderr, so stdout stays parseable. A reader
    /// that went away (`gobi query … | head`) stops the statement: its stream is dropped, and
    /// that is not an error, but the caller should print nothing more.
    pub async fn print(&self, output: Output) -> Result<Printed, GobiError> {
        let mut stream = match output {
            Output::Done(message) => {
                eprintln!("{message}");
                return Ok(Printed { rows: 0, reader_left: false });
            }
            rows => rows.into_rows().expect("rows or a count"),
        };
        let schema = Arc::clone(stream.schema());
        let mut sink = match self.format {
            Format::Table => Sink::Table { rows: vec![], shown: 0 },
            Format::Csv => Sink::Csv { header_written: false },
            Format::Json => Sink::Json { first: true },
        };
        let mut rows = 0;
        let reader_left = |rows| Ok(Printed { rows, reader_left: true });
        if !sink.start(&schema)? {
            return reader_left(0);
        }
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            rows += batch.num_rows();
            if !sink.write(&batch)? {
                return reader_left(rows);
            }
        }
        if !sink.finish(&schema, rows)? {
            return reader_left(rows);
        }
        Ok(Printed { rows, reader_left: false })
    }

    pub fn print_line(&self, line: &str) -> Result<(), GobiError> {
        write_stdout(&format!("{line}\n")).map(|_| ())
    }
}

/// Where a result's batches go as they arrive.
enum Sink {
    /// Keeps the first [`TABLE_PREVIEW_ROWS`] rows, drawn once the result ends.
    Table { rows: Vec<RecordBatch>, shown: usize },
    /// The header line comes with the first batch that has rows (or at the end, with none).
    Csv { header_written: bool },
    /// One JSON array of row objects per result.
    Json { first: bool },
}

impl Sink {
    /// Writes what comes before the rows; false when the reader went away.
    fn start(&mut self, _schema: &SchemaRef) -> Result<bool, GobiError> {
        match self {
            Sink::Json { .. } => write_stdout("["),
            _ => Ok(true),
        }
    }

    /// Writes (or keeps) one batch; false when the reader went away.
    fn write(&mut self, batch: &RecordBatch) -> Result<bool, GobiError> {
        if batch.num_rows() == 0 {
            return Ok(true);
        }
        match self {
            Sink::Table { rows, shown } => {
                let room = TABLE_PREVIEW_ROWS - *shown;
                if room > 0 {
                    let kept = batch.slice(0, batch.num_rows().min(room));
                    *shown += kept.num_rows();
                    rows.push(kept);
                }
                Ok(true)
            }
            Sink::Csv { header_written } => write_stdout(&csv(batch, !std::mem::replace(header_written, true))?),
            Sink::Json { first } => {
                let rows = json_rows(batch)?;
                let separator = if std::mem::take(first) { "" } else { "," };
                write_stdout(&format!("{separator}{rows}"))
            }
        }
    }

    /// Writes what comes after the rows; false when the reader went away.
    fn finish(&self, schema: &SchemaRef, total: usize) -> Result<bool, GobiError> {
        match self {
            Sink::Table { rows, shown } => write_stdout(&table(schema, rows, *shown, total)?),
            Sink::Csv { header_written: false } => {
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                write_stdout(&format!("{}\n", names.join(",")))
            }
            Sink::Csv { .. } => Ok(true),
            Sink::Json { .. } => write_stdout("]\n"),
        }
    }
}

/// Writes to stdout; false when the reader went away (`gobi query … | head`).
fn write_stdout(text: &str) -> Result<bool, GobiError> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn arrow_error(e: datafusion::arrow::error::ArrowError) -> GobiError {
    GobiError::internal(e.to_string())
}

/// The rows kept, drawn as a table, and a footer with the count (and how many were shown).
pub fn table(schema: &SchemaRef, batches: &[RecordBatch], shown: usize, total: usize) -> Result<String, GobiError> {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Dynamic);
    table.set_header(schema.fields().iter().map(|f| Cell::new(f.name())));
    let options = FormatOptions::default().with_null("NULL");
    let numeric: Vec<bool> = schema.fields().iter().map(|f| f.data_type().is_numeric()).collect();
    for batch in batches {
        let formatters = batch.columns().iter().map(|c| ArrayFormatter::try_new(c.as_ref(), &options)).collect::<Result<Vec<_>, _>>().map_err(arrow_error)?;
        for row in 0..batch.num_rows() {
            table.add_row(formatters.iter().zip(&numeric).map(|(f, numeric)| {
                let cell = Cell::new(f.value(row));
                if *numeric {
                    cell.set_alignment(CellAlignment::Right)
                } else {
                    cell
                }
            }));
        }
    }
    let noun = if total == 1 { "row" } else { "rows" };
    let footer = if shown < total { format!("{total} {noun}, first {shown} shown (--format csv or json prints every row)") } else { format!("{total} {noun}") };
    Ok(format!("{table}\n{footer}\n"))
}

/// One batch as CSV, with the header line before the first.
fn csv(batch: &RecordBatch, header: bool) -> Result<String, GobiError> {
    let mut bytes = vec![];
    {
        let mut writer = datafusion::arrow::csv::WriterBuilder::new().with_header(header).build(&mut bytes);
        writer.write(batch).map_err(arrow_error)?;
    }
    String::from_utf8(bytes).map_err(|e| GobiError::internal(e.to_string()))
}

/// One batch's rows as JSON objects separated by commas (no brackets).
fn json_rows(batch: &RecordBatch) -> Result<String, GobiError> {
    let mut bytes = vec![];
    {
        let mut writer =
            datafusion::arrow::json::WriterBuilder::new().with_explicit_nulls(true).build::<_, datafusion::arrow::json::writer::JsonArray>(&mut bytes);
        writer.write(batch).map_err(arrow_error)?;
        writer.finish().map_err(arrow_error)?;
    }
    let text = String::from_utf8(bytes).map_err(|e| GobiError::internal(e.to_string()))?;
    Ok(text.trim().trim_start_matches('[').trim_end_matches(']').to_string())
}
