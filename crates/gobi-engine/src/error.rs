//! The one error type every gobi entry point shows to users.

use datafusion::error::DataFusionError;
use deltalake::DeltaTableError;
use gobi_lang::{render_snippet, Position, SyntaxError};

/// What kind of mistake it was; the CLI maps all of them to exit code 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The text does not parse.
    Syntax,
    /// It parses but names something that does not exist or mixes types.
    Plan,
    /// The data broke a rule: NOT NULL, a cast that fails, a file that cannot be read.
    Data,
    /// The folder is not a lakehouse or its settings are wrong.
    Lakehouse,
    /// Another writer committed first and the write could not be retried safely.
    Conflict,
    /// The query was cancelled (Ctrl-C).
    Cancelled,
    /// A memory limit was reached and the query could not spill its way under it.
    Memory,
    /// Something gobi did not expect: a bug or an I/O failure.
    Internal,
}

/// An error with an optional position in the script and an optional hint.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct GobiError {
    pub kind: ErrorKind,
    pub message: String,
    pub position: Option<Position>,
    /// How many characters the caret covers.
    pub width: usize,
    pub hint: Option<String>,
}

pub type Result<T, E = GobiError> = std::result::Result<T, E>;

impl GobiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), position: None, width: 1, hint: None }
    }

    pub fn plan(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Plan, message)
    }

    pub fn data(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Data, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Points the error at `position` unless it already points somewhere more precise.
    pub fn at(mut self, position: Position) -> Self {
        self.position.get_or_insert(position);
        self
    }

    /// The full text shown to users: message, the offending line with a caret, and the hint.
    pub fn render(&self, source: Option<&str>) -> String {
        let mut text = format!("error: {}\n", self.message);
        if let Some(position) = self.position {
            match source {
                Some(source) => text.push_str(&render_snippet(source, position, self.width)),
                None => text.push_str(&format!("  --> {position}\n")),
            }
        }
        if let Some(hint) = &self.hint {
            text.push_str(&format!("hint: {hint}\n"));
        }
        text
    }
}

impl From<SyntaxError> for GobiError {
    fn from(e: SyntaxError) -> Self {
        Self { position: Some(e.position), ..Self::new(ErrorKind::Syntax, e.message) }
    }
}

impl From<datafusion::arrow::error::ArrowError> for GobiError {
    fn from(error: datafusion::arrow::error::ArrowError) -> Self {
        GobiError::from(DataFusionError::ArrowError(Box::new(error), None))
    }
}

impl From<DataFusionError> for GobiError {
    fn from(e: DataFusionError) -> Self {
        let position = e.diagnostic().and_then(|d| d.span).map(|span| {
            let width = if span.start.line == span.end.line {
                span.end.column.saturating_sub(span.start.column).max(1) as usize
            } else {
                1
            };
            (Position { line: span.start.line, column: span.start.column }, width)
        });
        let root = e.find_root();
        let kind = match root {
            DataFusionError::SQL(..) => ErrorKind::Syntax,
            DataFusionError::Plan(_) | DataFusionError::SchemaError(..) | DataFusionError::NotImplemented(_) => ErrorKind::Plan,
            DataFusionError::Execution(_) | DataFusionError::ArrowError(..) | DataFusionError::ParquetError(_) => ErrorKind::Data,
            DataFusionError::External(inner) if inner.downcast_ref::<GobiError>().is_some() => {
                return inner.downcast_ref::<GobiError>().cloned().expect("checked");
            }
            _ => ErrorKind::Internal,
        };
        let mut error = Self::new(kind, clean_message(&root.strip_backtrace()));
        if let Some((position, width)) = position {
            error.position = Some(position);
            error.width = width;
        }
        error
    }
}

impl From<DeltaTableError> for GobiError {
    fn from(e: DeltaTableError) -> Self {
        let kind = match &e {
            DeltaTableError::VersionAlreadyExists(_) | DeltaTableError::Transaction { .. } => ErrorKind::Conflict,
            DeltaTableError::InvalidData { .. } | DeltaTableError::Arrow { .. } | DeltaTableError::Parquet { .. } => ErrorKind::Data,
            DeltaTableError::Generic(_) | DeltaTableError::SchemaMismatch { .. } | DeltaTableError::InvalidTableLocation(_) => ErrorKind::Plan,
            DeltaTableError::InvalidVersion(_) | DeltaTableError::InvalidDateTimeString { .. } | DeltaTableError::NotATable(_) => ErrorKind::Plan,
            DeltaTableError::GenericError { source } if source.downcast_ref::<DataFusionError>().is_some() => ErrorKind::Data,
            _ => ErrorKind::Internal,
        };
        Self::new(kind, clean_message(&e.to_string()))
    }
}

impl From<std::io::Error> for GobiError {
    fn from(e: std::io::Error) -> Self {
        Self::internal(e.to_string())
    }
}

/// DataFusion refused a SELECT whose output names repeat (in one of two wordings).
pub fn is_duplicate_output_name(error: &DataFusionError) -> bool {
    let text = error.to_string();
    text.contains("Projections require unique expression names") || text.contains("which would be ambiguous")
}

/// A statement's spill files passed DataFusion's disk budget (`memory.spill_limit`).
pub fn spill_budget_exceeded(error: &DataFusionError) -> bool {
    error.to_string().contains("used disk space during the spilling process has exceeded")
}

/// The table DataFusion says is missing ("table 'datafusion.public.x' not found"), if that is
/// the error.
pub fn unknown_table_name(error: &GobiError) -> Option<String> {
    let name = error.message.strip_prefix("table '")?.strip_suffix("' not found")?;
    Some(name.rsplit('.').next().unwrap_or(name).to_string())
}

/// Drops the layers of prefixes DataFusion and delta-rs put before the one sentence users need.
fn clean_message(message: &str) -> String {
    const PREFIXES: [&str; 14] = [
        "Error during planning: ",
        "Schema error: ",
        "Execution error: ",
        "Arrow error: ",
        "External error: ",
        "Invalid argument error: ",
        "Parser error: ",
        "This feature is not implemented: ",
        "Optimizer rule ",
        "Generic DeltaTable error: ",
        "Generic error: ",
        "Invalid data found: ",
        "DataFusion error: ",
        "Cast error: ",
    ];
    let mut text = message.trim();
    // A user function's own coercion message, without DataFusion's list of candidates.
    if let Some((_, inner)) = text.split_once("user-defined coercion failed with: ") {
        text = inner.split(" No function matches the given name").next().unwrap_or(inner).trim_end_matches('.');
    }
    while let Some(rest) = PREFIXES.iter().find_map(|p| text.strip_prefix(p)) {
        text = rest.trim();
    }
    text.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_shows_line_caret_and_hint() {
        let error = GobiError { width: 3, ..GobiError::plan("no column nme").at(Position { line: 2, column: 8 }) }
            .with_hint("did you mean name?");
        let text = error.render(Some("SELECT 1;\nSELECT nme FROM t"));
        assert_eq!(text, "error: no column nme\n --> 2:8\n  |\n2 | SELECT nme FROM t\n  |        ^^^\nhint: did you mean name?\n");
    }

    #[test]
    fn clean_message_strips_nested_prefixes() {
        assert_eq!(clean_message("External error: Execution error: boom"), "boom");
        assert_eq!(
            clean_message("Function 'f' user-defined coercion failed with: Error during planning: function f: argument 1 (x) must be Float64, got Utf8. No function matches the given name and argument types 'f(Utf8)'."),
            "function f: argument 1 (x) must be Float64, got Utf8"
        );
    }
}
