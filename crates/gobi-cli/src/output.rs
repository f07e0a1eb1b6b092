//! Printing results: a table (or lines, or Markdown) for people, CSV and JSON for programs.
//!
//! A table fits its terminal: at most `--max-rows` rows (the first and last halves, a `·` row
//! between), long cells cut with `…`, and when the columns are still too wide, the middle ones
//! dropped for a `…` column; the footer says what was left out. CSV, JSON, lines and Markdown
//! stream every row as it comes (nothing but a table's shown rows is kept).

use std::collections::VecDeque;
use std::io::Write as _;

use std::sync::Arc;

use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, CellAlignment, ContentArrangement, Table};
use datafusion::arrow::array::{Array, ArrayRef, AsArray as _, RecordBatch, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt64Type};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use futures::StreamExt;
use gobi_engine::{GobiError, Output, Progress};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Boxes fitted to the terminal: long cells cut, middle columns dropped, at most --max-rows rows.
    Table,
    /// A header line, then every row, comma-separated (lists and structs as text).
    Csv,
    /// One array of row objects, every row.
    Json,
    /// One `column = value` line per field, a blank line between rows: for wide rows.
    Line,
    /// A Markdown table of every row, to paste into documents.
    Markdown,
    /// A Graphviz graph: `gobi plan` only.
    Dot,
}

/// The error for `--format dot` where there is no plan to draw.
pub fn dot_needs_a_plan() -> GobiError {
    GobiError::new(gobi_engine::ErrorKind::Usage, "--format dot draws plans: use it with gobi plan")
        .with_hint("gobi plan --format dot \"SELECT …\" | dot -Tsvg > plan.svg")
}

pub struct Printer {
    pub format: Format,
    pub layout: Layout,
    to: Destination,
    /// Nanoseconds spent handing rows to the reader (a pipe's reader sets the pace).
    writing: std::sync::atomic::AtomicU64,
}

/// Where rows go.
enum Destination {
    Stdout,
    /// The REPL's `.output FILE`.
    File(std::sync::Mutex<std::io::BufWriter<std::fs::File>>),
    /// Nowhere: rows are read and counted (`gobi query --repeat`'s timed runs).
    Nowhere,
}

/// How a table fits the screen.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// The width to fit: the terminal's, else `COLUMNS`, else none (nothing cut or dropped).
    pub width: Option<usize>,
    /// The most rows shown; 0 for all.
    pub max_rows: usize,
}

impl Layout {
    /// The terminal's width (or `COLUMNS`), and `max_rows`.
    pub fn for_terminal(max_rows: usize) -> Self {
        let width = Table::new().width().map(usize::from).or_else(|| std::env::var("COLUMNS").ok()?.parse().ok());
        Self { width, max_rows }
    }
}

/// The widest a cell is shown when the width is known (its text is cut with `…`).
const MAX_CELL_WIDTH: usize = 32;

/// What printing a statement's output came to.
pub struct Printed {
    pub rows: usize,
    /// The reader went away (a closed pipe): nothing more should be printed.
    pub reader_left: bool,
}

impl Printer {
    pub fn new(format: Format, layout: Layout) -> Self {
        Self { format, layout, to: Destination::Stdout, writing: Default::default() }
    }

    /// A printer that reads every row and prints nothing, not even what a statement did.
    pub fn silent() -> Self {
        Self { format: Format::Csv, layout: Layout { width: None, max_rows: 0 }, to: Destination::Nowhere, writing: Default::default() }
    }

    /// The time spent so far writing rows out, waiting for the reader to take them included.
    pub fn writing(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.writing.load(std::sync::atomic::Ordering::Relaxed))
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Rows go to `file` from now on (`None`: to stdout again).
    pub fn output_to(&mut self, file: Option<std::fs::File>) {
        self.to = match file {
            Some(file) => Destination::File(std::sync::Mutex::new(std::io::BufWriter::new(file))),
            None => Destination::Stdout,
        };
    }

    /// Writes `text` where rows go; false when the reader went away (`gobi query … | head`).
    fn emit(&self, text: &str) -> Result<bool, GobiError> {
        if text.is_empty() {
            return Ok(true);
        }
        let started = std::time::Instant::now();
        let written = match &self.to {
            Destination::File(file) => {
                let mut file = file.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                file.write_all(text.as_bytes()).and_then(|()| file.flush())
            }
            Destination::Stdout => {
                let mut stdout = std::io::stdout().lock();
                stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush())
            }
            Destination::Nowhere => Ok(()),
        };
        self.writing.fetch_add(started.elapsed().as_nanos() as u64, std::sync::atomic::Ordering::Relaxed);
        match written {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Prints a statement's output as its rows arrive. Result rows go to stdout; what a
    /// statement did (created, dropped, …) goes to stderr, so stdout stays parseable. A reader
    /// that went away (`gobi query … | head`) stops the statement: its stream is dropped, and
    /// that is not an error, but the caller should print nothing more.
    /// `progress`: the session's, for a progress line while a table waits for its rows.
    pub async fn print(&self, output: Output, progress: Option<&Progress>) -> Result<Printed, GobiError> {
        let mut stream = match output {
            Output::Done(message) => {
                if !matches!(self.to, Destination::Nowhere) {
                    eprintln!("{message}");
                }
                return Ok(Printed { rows: 0, reader_left: false });
            }
            rows => rows.into_rows().expect("rows or a count"),
        };
        if matches!(self.to, Destination::Nowhere) {
            let mut rows = 0;
            while let Some(batch) = stream.next().await {
                rows += batch?.num_rows();
            }
            return Ok(Printed { rows, reader_left: false });
        }
        let schema = Arc::clone(stream.schema());
        let mut sink = match self.format {
            Format::Table => Sink::Table(Kept::new(self.layout.max_rows)),
            Format::Markdown => Sink::Markdown { header_written: false },
            Format::Csv => Sink::Csv { header_written: false },
            Format::Json => Sink::Json { first: true },
            Format::Line => Sink::Line { first: true },
            Format::Dot => return Err(dot_needs_a_plan()),
        };
        let mut rows = 0;
        let reader_left = |rows| Ok(Printed { rows, reader_left: true });
        if !self.emit(sink.start())? {
            return reader_left(0);
        }
        // Streamed rows show their own progress; a table drawn at the end shows the line.
        let buffered = matches!(sink, Sink::Table(_));
        let drain = async {
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                rows += batch.num_rows();
                if !self.emit(&sink.write(&batch)?)? {
                    return Ok(false);
                }
            }
            Ok::<_, GobiError>(true)
        };
        let drained = match progress {
            Some(progress) if buffered => showing_progress(progress, drain).await?,
            _ => drain.await?,
        };
        if !drained {
            return reader_left(rows);
        }
        if !self.emit(&sink.finish(&schema, rows, self.layout)?)? {
            return reader_left(rows);
        }
        Ok(Printed { rows, reader_left: false })
    }

    pub fn print_line(&self, line: &str) -> Result<(), GobiError> {
        self.emit(&format!("{line}\n")).map(|_| ())
    }
}

/// How often the progress line is redrawn.
const PROGRESS_TICK: std::time::Duration = std::time::Duration::from_millis(200);

/// A query that runs longer than this shows a progress line.
const PROGRESS_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs `work`, and while it runs longer than [`PROGRESS_AFTER`], shows the progress line.
pub async fn showing_progress<T>(progress: &Progress, work: impl std::future::Future<Output = T>) -> T {
    let mut line = ProgressLine::new(progress);
    let mut tick = tokio::time::interval(PROGRESS_TICK);
    let mut work = std::pin::pin!(work);
    loop {
        tokio::select! {
            done = &mut work => return done,
            _ = tick.tick() => line.show(),
        }
    }
}

/// The line under a running statement on a terminal: how long it has run and what its scans
/// have read. Drawn on stderr, and only when stderr is a terminal (never into pipes or files).
struct ProgressLine<'a> {
    progress: Option<&'a Progress>,
    started: std::time::Instant,
    bar: Option<indicatif::ProgressBar>,
}

impl<'a> ProgressLine<'a> {
    fn new(progress: &'a Progress) -> Self {
        let progress = Some(progress).filter(|_| std::io::IsTerminal::is_terminal(&std::io::stderr()));
        Self { progress, started: std::time::Instant::now(), bar: None }
    }

    fn show(&mut self) {
        if self.started.elapsed() < PROGRESS_AFTER {
            return;
        }
        let Some((rows, bytes)) = self.progress.and_then(Progress::scanned) else { return };
        let bar = self.bar.get_or_insert_with(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}").expect("a valid template"));
            bar
        });
        let read = if bytes > 0 { format!(", {} read", gobi_memory::ByteSize(bytes)) } else { String::new() };
        bar.set_message(format!("{} rows scanned{read} (Ctrl-C cancels)", indicatif::HumanCount(rows)));
        bar.tick();
    }
}

impl Drop for ProgressLine<'_> {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// Where a result's batches go as they arrive.
enum Sink {
    /// Keeps the rows a table shows, drawn once the result ends.
    Table(Kept),
    /// A Markdown table, streamed: the header with the first rows (or at the end, with none).
    Markdown {
        header_written: bool,
    },
    /// The header line comes with the first batch that has rows (or at the end, with none).
    Csv {
        header_written: bool,
    },
    /// One JSON array of row objects per result.
    Json {
        first: bool,
    },
    Line {
        first: bool,
    },
}

/// The rows a table may show: the first `max_rows` (all of them if the result is no longer),
/// and the last half of that, as slices of the batches they came in.
struct Kept {
    max_rows: usize,
    head: Vec<RecordBatch>,
    head_rows: usize,
    tail: VecDeque<RecordBatch>,
    tail_rows: usize,
}

impl Kept {
    fn new(max_rows: usize) -> Self {
        Self { max_rows, head: vec![], head_rows: 0, tail: VecDeque::new(), tail_rows: 0 }
    }

    fn push(&mut self, batch: &RecordBatch) {
        let room = if self.max_rows == 0 { batch.num_rows() } else { self.max_rows.saturating_sub(self.head_rows).min(batch.num_rows()) };
        if room > 0 {
            self.head.push(batch.slice(0, room));
            self.head_rows += room;
        }
        if self.max_rows == 0 || room == batch.num_rows() {
            return;
        }
        let half = self.max_rows.div_ceil(2);
        let rest = batch.num_rows() - room;
        let take = rest.min(half);
        self.tail.push_back(batch.slice(batch.num_rows() - take, take));
        self.tail_rows += take;
        while self.tail.front().is_some_and(|front| self.tail_rows - front.num_rows() >= half) {
            self.tail_rows -= self.tail.pop_front().map_or(0, |front| front.num_rows());
        }
    }

    /// The rows shown: all when they fit, else the first half and, drawn after a `·` row, the
    /// last half.
    fn shown(&self, total: usize) -> (Vec<RecordBatch>, Vec<RecordBatch>) {
        if self.max_rows == 0 || total <= self.max_rows {
            return (self.head.clone(), vec![]);
        }
        let (first, last) = (self.max_rows / 2, self.max_rows.div_ceil(2));
        // Everything kept after the first rows, in order: the rest of the head, then the tail.
        let (mut head, mut rest) = (vec![], vec![]);
        let mut left = first;
        for batch in &self.head {
            let take = left.min(batch.num_rows());
            left -= take;
            if take > 0 {
                head.push(batch.slice(0, take));
            }
            if take < batch.num_rows() {
                rest.push(batch.slice(take, batch.num_rows() - take));
            }
        }
        rest.extend(self.tail.iter().cloned());
        let mut skip = rest.iter().map(RecordBatch::num_rows).sum::<usize>().saturating_sub(last);
        let tail = rest
            .into_iter()
            .filter_map(|batch| {
                let drop = skip.min(batch.num_rows());
                skip -= drop;
                (drop < batch.num_rows()).then(|| batch.slice(drop, batch.num_rows() - drop))
            })
            .collect();
        (head, tail)
    }
}

impl Sink {
    /// What comes before the rows.
    fn start(&self) -> &'static str {
        match self {
            Sink::Json { .. } => "[",
            _ => "",
        }
    }

    /// One batch's text, or nothing when it is kept for the end.
    fn write(&mut self, batch: &RecordBatch) -> Result<String, GobiError> {
        if batch.num_rows() == 0 {
            return Ok(String::new());
        }
        match self {
            Sink::Table(kept) => {
                kept.push(batch);
                Ok(String::new())
            }
            Sink::Markdown { header_written } => {
                let header = if std::mem::replace(header_written, true) { String::new() } else { markdown_header(&batch.schema()) };
                Ok(header + &markdown_rows(batch)?)
            }
            Sink::Line { first } => lines(batch, std::mem::take(first)),
            Sink::Csv { header_written } => csv(batch, !std::mem::replace(header_written, true)),
            Sink::Json { first } => {
                let rows = json_rows(batch)?;
                let separator = if std::mem::take(first) { "" } else { "," };
                Ok(format!("{separator}{rows}"))
            }
        }
    }

    /// What comes after the rows (a kept table, drawn).
    fn finish(&self, schema: &SchemaRef, total: usize, layout: Layout) -> Result<String, GobiError> {
        match self {
            Sink::Table(kept) => {
                let (head, tail) = kept.shown(total);
                table(schema, &head, &tail, total, layout)
            }
            Sink::Markdown { header_written: false } => Ok(markdown_header(schema)),
            Sink::Markdown { .. } => Ok(String::new()),
            Sink::Csv { header_written: false } => {
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                Ok(format!("{}\n", names.join(",")))
            }
            Sink::Line { .. } | Sink::Csv { .. } => Ok(String::new()),
            Sink::Json { .. } => Ok("]\n".to_string()),
        }
    }
}

fn arrow_error(e: datafusion::arrow::error::ArrowError) -> GobiError {
    GobiError::internal(e.to_string())
}

/// Each row's cells as text (`NULL` for null).
/// Each row's cells as text for people (`NULL` for null): an integer column named `*_bytes`
/// in the pools' units (`50MiB`); CSV and JSON keep the plain number.
fn cells(batches: &[RecordBatch]) -> Result<Vec<Vec<String>>, GobiError> {
    let options = FormatOptions::default().with_null("NULL");
    let mut rows = vec![];
    for batch in batches {
        let schema = batch.schema();
        let formatters = batch.columns().iter().map(|c| ArrayFormatter::try_new(c.as_ref(), &options)).collect::<Result<Vec<_>, _>>().map_err(arrow_error)?;
        let bytes: Vec<Option<ArrayRef>> = schema
            .fields()
            .iter()
            .zip(batch.columns())
            .map(|(field, column)| {
                let counts_bytes = field.name().ends_with("_bytes") && field.data_type().is_integer();
                counts_bytes.then(|| datafusion::arrow::compute::cast(column, &DataType::UInt64).ok()).flatten()
            })
            .collect();
        for row in 0..batch.num_rows() {
            rows.push(
                formatters
                    .iter()
                    .zip(&bytes)
                    .map(|(f, bytes)| match bytes.as_ref().map(|b| b.as_primitive::<UInt64Type>()) {
                        Some(b) if b.is_valid(row) => gobi_memory::ByteSize(b.value(row)).to_string(),
                        _ => f.value(row).to_string(),
                    })
                    .collect(),
            );
        }
    }
    Ok(rows)
}

/// `text` on one line, cut to `width` characters with `…` when longer.
fn fit(text: &str, width: usize) -> String {
    let line: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if line.chars().count() <= width {
        return line;
    }
    let mut cut: String = line.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Which columns fit `width` (each drawn as its text plus 3 characters of border): from both
/// ends inwards, the left one first; `None` where the dropped middle goes.
fn columns_that_fit(widths: &[usize], width: usize) -> Vec<Option<usize>> {
    let all = widths.iter().map(|w| w + 3).sum::<usize>() + 1;
    if all <= width || widths.len() <= 2 {
        return (0..widths.len()).map(Some).collect();
    }
    let marker = 1 + 3;
    let (mut left, mut right, mut used) = (vec![], vec![], 1 + marker);
    let (mut next_left, mut next_right) = (0, widths.len() - 1);
    while next_left <= next_right {
        let take_left = left.len() <= right.len();
        let column = if take_left { next_left } else { next_right };
        if used + widths[column] + 3 > width && !(left.is_empty() && take_left) {
            break;
        }
        used += widths[column] + 3;
        if take_left {
            left.push(column);
            next_left += 1;
        } else {
            right.push(column);
            next_right = next_right.saturating_sub(1);
        }
    }
    let mut shown: Vec<Option<usize>> = left.into_iter().map(Some).collect();
    shown.push(None);
    shown.extend(right.into_iter().rev().map(Some));
    shown
}

/// The rows shown, drawn as a table fitted to `layout`, and a footer: the count, and what was
/// left out. `tail` is drawn after a `·` row when rows were left out between.
pub fn table(schema: &SchemaRef, head: &[RecordBatch], tail: &[RecordBatch], total: usize, layout: Layout) -> Result<String, GobiError> {
    let cell_width = layout.width.map_or(usize::MAX, |width| MAX_CELL_WIDTH.min(width.saturating_sub(4).max(1)));
    let names: Vec<String> = schema.fields().iter().map(|f| fit(f.name(), cell_width)).collect();
    let (head, tail) = (cells(head)?, cells(tail)?);
    let fitted = |rows: Vec<Vec<String>>| -> Vec<Vec<String>> { rows.into_iter().map(|row| row.iter().map(|c| fit(c, cell_width)).collect()).collect() };
    let (head, tail) = (fitted(head), fitted(tail));
    let widths: Vec<usize> =
        (0..names.len()).map(|c| head.iter().chain(&tail).map(|row| row[c].chars().count()).chain([names[c].chars().count()]).max().unwrap_or(0)).collect();
    let shown = columns_that_fit(&widths, layout.width.unwrap_or(usize::MAX));
    let numeric: Vec<bool> = schema.fields().iter().map(|f| f.data_type().is_numeric()).collect();
    let pick = |row: &[String]| -> Vec<Cell> {
        shown
            .iter()
            .map(|column| match column {
                Some(c) if numeric[*c] => Cell::new(&row[*c]).set_alignment(CellAlignment::Right),
                Some(c) => Cell::new(&row[*c]),
                None => Cell::new("…"),
            })
            .collect()
    };
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_content_arrangement(ContentArrangement::Disabled);
    table.set_header(pick(&names));
    for row in &head {
        table.add_row(pick(row));
    }
    if !tail.is_empty() {
        table.add_row(shown.iter().map(|_| Cell::new("·")));
        for row in &tail {
            table.add_row(pick(row));
        }
    }
    let noun = if total == 1 { "row" } else { "rows" };
    let mut footer = format!("{total} {noun}");
    let rows_shown = head.len() + tail.len();
    if rows_shown < total {
        footer.push_str(&format!(", {rows_shown} shown (--max-rows 0 for all)"));
    }
    let columns_shown = shown.iter().flatten().count();
    if columns_shown < names.len() {
        footer.push_str(&format!("; {} columns, {columns_shown} shown (--format line for all)", names.len()));
    }
    Ok(format!("{table}\n{footer}\n"))
}

/// The header of a Markdown table.
fn markdown_header(schema: &SchemaRef) -> String {
    let names: Vec<String> = schema.fields().iter().map(|f| markdown_cell(f.name())).collect();
    format!("| {} |\n|{}|\n", names.join(" | "), vec!["---"; names.len()].join("|"))
}

/// One batch's rows as Markdown table lines (a table needs no aligned columns to render).
fn markdown_rows(batch: &RecordBatch) -> Result<String, GobiError> {
    Ok(cells(std::slice::from_ref(batch))?
        .iter()
        .map(|row| format!("| {} |\n", row.iter().map(|c| markdown_cell(c)).collect::<Vec<_>>().join(" | ")))
        .collect())
}

fn markdown_cell(text: &str) -> String {
    fit(text, usize::MAX).replace('|', "\\|")
}

/// One batch's rows as `column = value` lines, names aligned, a blank line between rows.
fn lines(batch: &RecordBatch, first: bool) -> Result<String, GobiError> {
    let schema = batch.schema();
    let width = schema.fields().iter().map(|f| f.name().chars().count()).max().unwrap_or(0);
    let mut text = String::new();
    for (i, row) in cells(std::slice::from_ref(batch))?.into_iter().enumerate() {
        if !(first && i == 0) {
            text.push('\n');
        }
        for (field, value) in schema.fields().iter().zip(row) {
            text.push_str(&format!("{:>width$} = {value}\n", field.name()));
        }
    }
    Ok(text)
}

/// One batch as CSV, with the header line before the first. Lists, structs and maps (which
/// Arrow's CSV writer refuses) are written as text, as DuckDB writes them.
fn csv(batch: &RecordBatch, header: bool) -> Result<String, GobiError> {
    let batch = nested_as_text(batch)?;
    let mut bytes = vec![];
    {
        let mut writer = datafusion::arrow::csv::WriterBuilder::new().with_header(header).build(&mut bytes);
        writer.write(&batch).map_err(arrow_error)?;
    }
    String::from_utf8(bytes).map_err(|e| GobiError::internal(e.to_string()))
}

/// `batch` with each nested column replaced by its text: `[1, 2]`, `{'a': 1, 'b': x}`,
/// `{k=v}` (DuckDB's rendering); a null value stays null, and `NULL` inside a value.
fn nested_as_text(batch: &RecordBatch) -> Result<RecordBatch, GobiError> {
    if !batch.schema().fields().iter().any(|f| f.data_type().is_nested()) {
        return Ok(batch.clone());
    }
    let (mut fields, mut columns) = (vec![], vec![]);
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        if field.data_type().is_nested() {
            let mut text = StringBuilder::new();
            for row in 0..column.len() {
                if column.is_null(row) {
                    text.append_null();
                } else {
                    let mut value = String::new();
                    render_value(column.as_ref(), row, &mut value)?;
                    text.append_value(value);
                }
            }
            fields.push(Arc::new(Field::new(field.name(), DataType::Utf8, true)));
            columns.push(Arc::new(text.finish()) as ArrayRef);
        } else {
            fields.push(Arc::clone(field));
            columns.push(Arc::clone(column));
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(arrow_error)
}

/// Appends one value of `array` to `out`, nested values recursively.
fn render_value(array: &dyn Array, row: usize, out: &mut String) -> Result<(), GobiError> {
    if array.is_null(row) {
        out.push_str("NULL");
        return Ok(());
    }
    let items = |values: ArrayRef, out: &mut String| -> Result<(), GobiError> {
        out.push('[');
        for i in 0..values.len() {
            if i > 0 {
                out.push_str(", ");
            }
            render_value(values.as_ref(), i, out)?;
        }
        out.push(']');
        Ok(())
    };
    match array.data_type() {
        DataType::List(_) => items(array.as_list::<i32>().value(row), out),
        DataType::LargeList(_) => items(array.as_list::<i64>().value(row), out),
        DataType::FixedSizeList(..) => items(array.as_fixed_size_list().value(row), out),
        DataType::Struct(fields) => {
            let array = array.as_struct();
            out.push('{');
            for (i, field) in fields.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&format!("'{}': ", field.name()));
                render_value(array.column(i).as_ref(), row, out)?;
            }
            out.push('}');
            Ok(())
        }
        DataType::Map(..) => {
            let entries = array.as_map().value(row);
            out.push('{');
            for i in 0..entries.len() {
                if i > 0 {
                    out.push_str(", ");
                }
                render_value(entries.column(0).as_ref(), i, out)?;
                out.push('=');
                render_value(entries.column(1).as_ref(), i, out)?;
            }
            out.push('}');
            Ok(())
        }
        _ => {
            let formatter = ArrayFormatter::try_new(array, &FormatOptions::default()).map_err(arrow_error)?;
            out.push_str(&formatter.value(row).to_string());
            Ok(())
        }
    }
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
