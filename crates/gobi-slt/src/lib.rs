//! gobi-slt: runs sqllogictest files against gobi's engine, in process.
//!
//! Each file runs in a fresh temporary lakehouse. Unlike the stock runner it goes on after a
//! failing record, so a file's score is the number of records that pass. Values are printed
//! the way DataFusion's own runner prints them (NULL, `(empty)`, floats rounded to 12
//! decimals, one line per line of a multi-line cell), so DataFusion's files compare as
//! written.

use std::io::Write as _;
use std::path::Path;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Float16Type, Float32Type, Float64Type};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use gobi_engine::{Collected, GobiError, Lakehouse, Session};
use serde::{Deserialize, Serialize};
use sqllogictest::{AsyncDB, Condition, DBOutput, DefaultColumnType, Record, Runner};

/// Records of one file (or of many, added up).
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, other: Self) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.skipped += other.skipped;
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} passed, {} failed, {} skipped", self.passed, self.failed, self.skipped)
    }
}

const ENGINE: &str = "gobi";

/// Runs every record of `file` in a fresh lakehouse; failing records are written to `fail_log`.
pub async fn run_file(file: &Path, labels: &[String], mut fail_log: Option<&mut dyn std::io::Write>) -> Result<Counts, String> {
    let records = sqllogictest::parse_file::<DefaultColumnType>(file).map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let lakehouse = Lakehouse::init(dir.path()).map_err(|e| e.message)?;
    let mut runner = Runner::new(move || {
        let lakehouse = lakehouse.clone();
        async move {
            let session = Session::open(lakehouse);
            // DataFusion's own runner plans with 4 partitions; its EXPLAIN records expect it.
            session.run_script("SET datafusion.execution.target_partitions = 4").await?;
            Ok(GobiDb { session })
        }
    });
    for label in labels {
        runner.add_label(label);
    }
    runner.set_var("__TEST_DIR__".into(), format!("{}/", dir.path().display()));
    let mut active_labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    active_labels.push(ENGINE);
    let mut counts = Counts::default();
    for record in records {
        let counted = match &record {
            Record::Statement { conditions, .. } | Record::Query { conditions, .. } => {
                if conditions.iter().any(|c| skips(c, &active_labels)) {
                    counts.skipped += 1;
                    continue;
                }
                true
            }
            Record::Halt { .. } => break,
            _ => false,
        };
        // Display panics on some records (include markers); only counted ones are logged.
        let shown = if counted { record.to_string() } else { String::new() };
        match runner.run_async(record).await {
            Ok(_) if counted => counts.passed += 1,
            Ok(_) => {}
            Err(error) => {
                counts.failed += u64::from(counted);
                if let Some(log) = fail_log.as_mut() {
                    let _ = writeln!(log, "--- {}\n{shown}\n{}\n", file.display(), error.display(false));
                }
            }
        }
    }
    Ok(counts)
}

fn skips(condition: &Condition, labels: &[&str]) -> bool {
    match condition {
        Condition::OnlyIf { label } => !labels.contains(&label.as_str()),
        Condition::SkipIf { label } => labels.contains(&label.as_str()),
    }
}

struct GobiDb {
    session: Session,
}

#[async_trait::async_trait]
impl AsyncDB for GobiDb {
    type Error = GobiError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, GobiError> {
        let outputs = self.session.run_script(sql).await?;
        match outputs.into_iter().last() {
            Some(Collected::Rows { schema, batches }) => {
                let types = schema.fields().iter().map(|f| column_type(f.data_type())).collect();
                let mut rows = vec![];
                for batch in &batches {
                    rows.extend(batch_rows(batch)?.into_iter().flat_map(expand_multiline));
                }
                Ok(DBOutput::Rows { types, rows })
            }
            Some(Collected::Done(_)) | None => Ok(DBOutput::StatementComplete(0)),
        }
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        ENGINE
    }
}

fn column_type(data_type: &DataType) -> DefaultColumnType {
    if data_type.is_integer() {
        DefaultColumnType::Integer
    } else if data_type.is_floating() || matches!(data_type, DataType::Decimal128(..) | DataType::Decimal256(..)) {
        DefaultColumnType::FloatingPoint
    } else if matches!(data_type, DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8) {
        DefaultColumnType::Text
    } else {
        DefaultColumnType::Any
    }
}

fn batch_rows(batch: &RecordBatch) -> Result<Vec<Vec<String>>, GobiError> {
    let options = FormatOptions::default();
    let formatters = batch
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| GobiError::internal(e.to_string()))?;
    Ok((0..batch.num_rows())
        .map(|row| batch.columns().iter().zip(&formatters).map(|(column, formatter)| cell(column, row, &formatter.value(row).to_string())).collect())
        .collect())
}

/// One value as the sqllogictest files write it.
fn cell(column: &ArrayRef, row: usize, formatted: &str) -> String {
    if column.is_null(row) {
        return "NULL".into();
    }
    match column.data_type() {
        DataType::Float16 => float(f64::from(column.as_primitive::<Float16Type>().value(row))),
        DataType::Float32 => float(f64::from(column.as_primitive::<Float32Type>().value(row))),
        DataType::Float64 => float(column.as_primitive::<Float64Type>().value(row)),
        DataType::Decimal128(..) | DataType::Decimal256(..) => trim_fraction(formatted.to_string()),
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 if formatted.is_empty() => "(empty)".into(),
        _ => formatted.to_string(),
    }
}

fn float(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        }
    } else {
        let text = trim_fraction(format!("{value:.12}"));
        if text == "-0" {
            "0".into()
        } else {
            text
        }
    }
}

/// `12.500` → `12.5`, `3.000` → `3`.
fn trim_fraction(text: String) -> String {
    if !text.contains('.') {
        return text;
    }
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A cell with several lines (EXPLAIN) becomes several rows, numbered `01)`, `02)`, …;
/// leading spaces become `-` because sqllogictest ignores whitespace differences.
fn expand_multiline(mut row: Vec<String>) -> Vec<Vec<String>> {
    let Some(last) = row.pop() else { return vec![row] };
    let lines: Vec<&str> = last.split('\n').collect();
    if lines.len() < 2 {
        row.push(last);
        return vec![row];
    }
    std::iter::once(row)
        .chain(lines.into_iter().enumerate().map(|(i, line)| {
            let content = line.trim_start();
            vec![format!("{:02}){}{content}", i + 1, "-".repeat(line.len() - content.len()))]
        }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_round_to_twelve_decimals_without_trailing_zeros() {
        assert_eq!(float(0.1 + 0.2), "0.3");
        assert_eq!(float(-2.5), "-2.5");
        assert_eq!(float(3.0), "3");
        assert_eq!(float(-0.0), "0");
        assert_eq!(float(f64::NEG_INFINITY), "-Infinity");
        assert_eq!(trim_fraction("12.500".into()), "12.5");
    }
}
