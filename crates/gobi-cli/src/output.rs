//! Printing results: a table for people, CSV and JSON for programs.

use std::io::Write as _;

use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, ContentArrangement, Table};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
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

impl Printer {
    pub fn new(format: Format) -> Self {
        Self { format }
    }

    pub fn is_json(&self) -> bool {
        matches!(self.format, Format::Json)
    }

    /// Result rows go to stdout; what a statement did (created, dropped, …) goes to stderr,
    /// so that stdout stays parseable.
    pub fn print(&self, output: &Output) -> Result<(), GobiError> {
        match output {
            Output::Done(message) => {
                eprintln!("{message}");
                Ok(())
            }
            Output::Rows { schema, batches } => {
                let text = match self.format {
                    Format::Table => table(schema, batches)?,
                    Format::Csv => csv(schema, batches)?,
                    Format::Json => json(batches)?,
                };
                write_stdout(&text)
            }
        }
    }

    pub fn print_line(&self, line: &str) -> Result<(), GobiError> {
        write_stdout(&format!("{line}\n"))
    }
}

/// Writes to stdout; a reader that went away (`gobi query … | head`) is not an error.
fn write_stdout(text: &str) -> Result<(), GobiError> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn arrow_error(e: datafusion::arrow::error::ArrowError) -> GobiError {
    GobiError::internal(e.to_string())
}

pub fn table(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<String, GobiError> {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Dynamic);
    table.set_header(schema.fields().iter().map(|f| Cell::new(f.name())));
    let options = FormatOptions::default().with_null("NULL");
    let numeric: Vec<bool> = schema.fields().iter().map(|f| f.data_type().is_numeric()).collect();
    let mut rows = 0;
    for batch in batches {
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()
            .map_err(arrow_error)?;
        for row in 0..batch.num_rows() {
            table.add_row(formatters.iter().zip(&numeric).map(|(f, numeric)| {
                let cell = Cell::new(f.value(row));
                if *numeric { cell.set_alignment(CellAlignment::Right) } else { cell }
            }));
        }
        rows += batch.num_rows();
    }
    let noun = if rows == 1 { "row" } else { "rows" };
    Ok(format!("{table}\n{rows} {noun}\n"))
}

fn csv(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<String, GobiError> {
    if batches.iter().all(|b| b.num_rows() == 0) {
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        return Ok(format!("{}\n", names.join(",")));
    }
    let mut bytes = vec![];
    {
        let mut writer = datafusion::arrow::csv::WriterBuilder::new().with_header(true).build(&mut bytes);
        for batch in batches {
            writer.write(batch).map_err(arrow_error)?;
        }
    }
    String::from_utf8(bytes).map_err(|e| GobiError::internal(e.to_string()))
}

/// One JSON array of row objects per result, on one line.
fn json(batches: &[RecordBatch]) -> Result<String, GobiError> {
    let mut bytes = vec![];
    {
        let mut writer = datafusion::arrow::json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, datafusion::arrow::json::writer::JsonArray>(&mut bytes);
        let refs: Vec<&RecordBatch> = batches.iter().collect();
        writer.write_batches(&refs).map_err(arrow_error)?;
        writer.finish().map_err(arrow_error)?;
    }
    let mut text = String::from_utf8(bytes).map_err(|e| GobiError::internal(e.to_string()))?;
    if text.is_empty() {
        text.push_str("[]");
    }
    text.push('\n');
    Ok(text)
}
