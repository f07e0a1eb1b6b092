//! `read_parquet('f')`, `read_csv('f', header = false, delim = '|')`, `read_json('f')`: a file,
//! a folder or a glob as a table, with DuckDB's common options. (`FROM 'f.csv'` reads the same
//! files by their extension, with the default options: `catalog.rs`.)
//!
//! ```text
//!   read_csv('in/*.csv', header = false)
//!      │ gobi-lang: read_csv('in/*.csv', 'header', false)
//!      │ path: a string;  options: name and value pairs, checked against the format's names
//!      ▼
//!   ListingOptions (format, extension) ──► schema inferred now ──► ListingTable
//! ```
//!
//! DataFusion calls table functions while it plans, which is not async; the schema is inferred
//! by blocking this thread on the file's footer or first rows (on a multi-threaded runtime,
//! `block_in_place` hands its other tasks to another thread first).

use std::sync::Arc;

use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{plan_err, ScalarValue};
use datafusion::datasource::file_format::csv::CsvFormat;
use datafusion::datasource::file_format::json::JsonFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::Expr;

/// The file formats a `read_*` function reads.
#[derive(Debug, Clone, Copy)]
pub enum ReadFile {
    Parquet,
    Csv,
    Json,
}

impl ReadFile {
    pub const ALL: [ReadFile; 3] = [ReadFile::Parquet, ReadFile::Csv, ReadFile::Json];

    pub fn function_name(self) -> &'static str {
        match self {
            ReadFile::Parquet => "read_parquet",
            ReadFile::Csv => "read_csv",
            ReadFile::Json => "read_json",
        }
    }

    /// The options it takes (`name = value` after the path).
    fn option_names(self) -> &'static [&'static str] {
        match self {
            ReadFile::Csv => &["header", "delim", "sep", "delimiter", "quote", "escape"],
            ReadFile::Parquet | ReadFile::Json => &[],
        }
    }

    /// The format, its options applied.
    fn format(self, options: &[(String, ScalarValue)]) -> DfResult<(Arc<dyn FileFormat>, &'static str)> {
        Ok(match self {
            ReadFile::Parquet => (Arc::new(ParquetFormat::default()), ".parquet"),
            ReadFile::Json => (Arc::new(JsonFormat::default()), ".json"),
            ReadFile::Csv => {
                let mut csv = CsvFormat::default().with_has_header(true);
                for (name, value) in options {
                    csv = match name.as_str() {
                        "header" => csv.with_has_header(boolean(self, name, value)?),
                        "delim" | "sep" | "delimiter" => csv.with_delimiter(one_byte(self, name, value)?),
                        "quote" => csv.with_quote(one_byte(self, name, value)?),
                        _ => csv.with_escape(Some(one_byte(self, name, value)?)),
                    };
                }
                (Arc::new(csv), ".csv")
            }
        })
    }
}

impl TableFunctionImpl for ReadFile {
    fn call_with_args(&self, args: TableFunctionArgs) -> DfResult<Arc<dyn TableProvider>> {
        let name = self.function_name();
        let (path, options) = match args.exprs() {
            [path, options @ ..] if text(path).is_some() && options.len() % 2 == 0 => {
                (text(path).unwrap_or_default(), options.chunks(2).map(|pair| named_option(*self, &pair[0], &pair[1])).collect::<DfResult<Vec<_>>>()?)
            }
            [path, ..] if text(path).is_some() => return plan_err!("{name}() takes options as name = value after the path{}", listed(self.option_names())),
            _ => return plan_err!("{name}() takes a path in quotes first, e.g. {name}('data/file{}')", self.format(&[])?.1),
        };
        let (format, extension) = self.format(&options)?;
        let is_local = !path.contains("://");
        if is_local && !path.contains('*') && !std::path::Path::new(path).exists() {
            return plan_err!("no such file or folder: {path}");
        }
        let url = ListingTableUrl::parse(path)?;
        // A glob or a folder reads every file it matches; a single file is read whatever its name.
        let extension = if path.ends_with('/') || std::path::Path::new(path).is_dir() || path.contains('*') { extension } else { "" };
        let listing = ListingOptions::new(format).with_file_extension(extension);
        let session = args.session();
        let schema = block_on(listing.infer_schema(session, &url))?;
        let config = ListingTableConfig::new(url).with_listing_options(listing).with_schema(schema);
        Ok(Arc::new(ListingTable::try_new(config)?))
    }
}

/// A string constant's text.
fn text(expr: &Expr) -> Option<&str> {
    match expr {
        Expr::Literal(value, _) => value.try_as_str().flatten(),
        _ => None,
    }
}

/// One option after the path (`name = value`, passed by gobi-lang as the name and the value):
/// the name checked against the function's options.
fn named_option(function: ReadFile, option: &Expr, value: &Expr) -> DfResult<(String, ScalarValue)> {
    let name = function.function_name();
    let allowed = function.option_names();
    let (Some(option), Expr::Literal(value, _)) = (text(option), value) else {
        return plan_err!("{name}() takes options as name = value (a constant) after the path{}", listed(allowed));
    };
    if !allowed.contains(&option) {
        return plan_err!("{name}() has no option {option}{}", listed(allowed));
    }
    Ok((option.to_string(), value.clone()))
}

fn listed(allowed: &[&str]) -> String {
    if allowed.is_empty() {
        "; it takes no options".to_string()
    } else {
        format!("; its options: {}", allowed.join(", "))
    }
}

fn boolean(function: ReadFile, option: &str, value: &ScalarValue) -> DfResult<bool> {
    match value {
        ScalarValue::Boolean(Some(value)) => Ok(*value),
        other => plan_err!("{}(): {option} is true or false, not {other}", function.function_name()),
    }
}

fn one_byte(function: ReadFile, option: &str, value: &ScalarValue) -> DfResult<u8> {
    match value.try_as_str().flatten().map(str::as_bytes) {
        Some([byte]) => Ok(*byte),
        _ => plan_err!("{}(): {option} is one character in quotes, e.g. '|', not {value}", function.function_name()),
    }
}

/// Runs `future` to its end on this thread (see the module's doc).
fn block_on<T>(future: impl std::future::Future<Output = DfResult<T>>) -> DfResult<T> {
    let run = || futures::executor::block_on(future);
    match tokio::runtime::Handle::try_current().map(|runtime| runtime.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(run),
        _ => run(),
    }
}
