//! The one error type every gobi entry point shows to users, and the one place that reads
//! DataFusion's and delta-rs's errors.
//!
//! ```text
//!  DataFusionError ──► classify ───────┐                   (by variant, wrappers walked to the
//!  DeltaTableError ──► classify_delta ─┴──► ErrorKind        root; by text only where the
//!  PoolFull (gobi-memory) ─────────────────► Memory          variant says too little)
//! ```
//!
//! Everything that reads an upstream error's text lives in this file, and each text it
//! relies on has a test that produces the real upstream error (a query, a delta-rs call), so
//! an upgrade that changes a message fails a test here instead of misleading users. The kind
//! decides the CLI's exit code (`gobi --help`, gobi-cli's `main.rs`).

use std::error::Error as StdError;
use std::sync::Arc;

use datafusion::arrow::error::ArrowError;
use datafusion::common::SchemaError;
use datafusion::error::DataFusionError;
use deltalake::kernel::transaction::TransactionError;
use deltalake::{DeltaTableError, ObjectStoreError};
use gobi_lang::{render_snippet, NameError, Position, SyntaxError};

/// What kind of mistake it was; it decides the CLI's exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The command line asks for something gobi cannot do (clap reports its own mistakes).
    Usage,
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
    /// A memory limit was reached and the query could not spill its way under it (or its
    /// spill files reached the spill disk budget).
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

    /// A statement stopped by Ctrl-C or [`crate::Session::cancel`].
    pub fn cancelled() -> Self {
        Self::new(ErrorKind::Cancelled, "query cancelled")
    }

    /// Points at `span` of the script: its start, and as wide as it is where it stays on one
    /// line.
    pub(crate) fn pointing_at(mut self, span: &datafusion::common::Span) -> Self {
        self.position = Some(Position { line: span.start.line, column: span.start.column });
        self.width = if span.start.line == span.end.line { span.end.column.saturating_sub(span.start.column).max(1) as usize } else { 1 };
        self
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

/// An unknown or misused PL-GRIZZLY name, found as a statement is expanded (after the ones
/// before it ran): a plan error, like an unknown column.
impl From<NameError> for GobiError {
    fn from(e: NameError) -> Self {
        Self { position: Some(e.position), ..Self::new(ErrorKind::Plan, e.message) }
    }
}

impl From<datafusion::arrow::error::ArrowError> for GobiError {
    fn from(error: datafusion::arrow::error::ArrowError) -> Self {
        GobiError::from(DataFusionError::ArrowError(Box::new(error), None))
    }
}

impl From<DataFusionError> for GobiError {
    fn from(e: DataFusionError) -> Self {
        if let Some(error) = carried_gobi_error(&e) {
            return error.clone();
        }
        let error = Self::new(classify(&e), clean_message(&e.find_root().strip_backtrace()));
        match e.diagnostic().and_then(|d| d.span) {
            Some(span) => error.pointing_at(&span),
            None => error,
        }
    }
}

impl From<DeltaTableError> for GobiError {
    fn from(e: DeltaTableError) -> Self {
        if let Some(error) = carried_gobi_error(&e) {
            return error.clone();
        }
        Self::new(classify_delta(&e), clean_message(&e.to_string()))
    }
}

/// gobi's own file operations in the lakehouse folder: a failure is an I/O failure.
impl From<std::io::Error> for GobiError {
    fn from(e: std::io::Error) -> Self {
        Self::internal(e.to_string())
    }
}

/// A pool of gobi's memory manager refused a reservation (a `let` table, a cached value).
impl From<gobi_memory::PoolFull> for GobiError {
    fn from(e: gobi_memory::PoolFull) -> Self {
        Self::new(ErrorKind::Memory, e.0)
    }
}

/// A `GobiError` that went through DataFusion or delta-rs (a catalog lookup, a UDF) comes back
/// as it was.
fn carried_gobi_error<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a GobiError> {
    let mut layer = Some(error);
    while let Some(error) = layer {
        if let Some(gobi) = error.downcast_ref::<GobiError>() {
            return Some(gobi);
        }
        layer = error.source();
    }
    None
}

/// The kind of a DataFusion error: by its variant, with `Context`, `Diagnostic`, `Shared`,
/// `Collection`, `External` and Arrow's `ExternalError` walked to the error they wrap. Text
/// is read only for the spill disk budget (an `io::Error` with nothing but a message).
pub fn classify(error: &DataFusionError) -> ErrorKind {
    if spill_budget_exceeded(error) {
        return ErrorKind::Memory;
    }
    classify_variant(error)
}

fn classify_variant(error: &DataFusionError) -> ErrorKind {
    use DataFusionError as E;
    match error {
        E::Context(_, inner) | E::Diagnostic(_, inner) => classify_variant(inner),
        E::Shared(inner) => classify_variant(inner),
        E::Collection(errors) => errors.first().map_or(ErrorKind::Internal, classify_variant),
        E::External(inner) => classify_source(inner.as_ref()),
        E::ArrowError(inner, _) => classify_arrow(inner),
        E::ResourcesExhausted(_) => ErrorKind::Memory,
        E::SQL(..) => ErrorKind::Syntax,
        E::Plan(_) | E::SchemaError(..) | E::NotImplemented(_) | E::Configuration(_) => ErrorKind::Plan,
        E::ParquetError(inner) => classify_parquet(inner),
        E::Execution(_) => ErrorKind::Data,
        E::ObjectStore(inner) => classify_object_store(inner),
        E::IoError(inner) => classify_io(inner),
        E::ExecutionJoin(join) if join.is_cancelled() => ErrorKind::Cancelled,
        E::ExecutionJoin(_) | E::Internal(_) | E::Substrait(_) | E::Ffi(_) => ErrorKind::Internal,
    }
}

/// The kind of a delta-rs error. delta-rs turns most DataFusion errors into text
/// (`DeltaTableError::Generic(error.to_string())`), so for those the kind is read back from
/// DataFusion's prefixes ([`DATAFUSION_PREFIXES`]); its own operations' errors that are not
/// public types are recognized by their words ([`CONFLICT_TEXTS`]).
pub fn classify_delta(error: &DeltaTableError) -> ErrorKind {
    use DeltaTableError as D;
    match error {
        D::VersionAlreadyExists(_) | D::VersionMismatch(..) => ErrorKind::Conflict,
        D::Transaction { source } => match source {
            TransactionError::VersionAlreadyExists(_) | TransactionError::CommitConflict(_) | TransactionError::MaxCommitAttempts(_) => ErrorKind::Conflict,
            TransactionError::DeltaTableAppendOnly | TransactionError::UnsupportedTableFeatures(_) | TransactionError::TableFeaturesRequired(_) => {
                ErrorKind::Plan
            }
            _ => ErrorKind::Internal,
        },
        D::InvalidData { .. } | D::Parquet { .. } => ErrorKind::Data,
        D::Arrow { source } => classify_arrow(source),
        D::Generic(text) => classify_text(text).unwrap_or(ErrorKind::Plan),
        D::GenericError { source } => match classify_source(source.as_ref()) {
            ErrorKind::Internal if CONFLICT_TEXTS.iter().any(|t| source.to_string().contains(t)) => ErrorKind::Conflict,
            kind => kind,
        },
        D::SchemaMismatch { .. }
        | D::InvalidTableLocation(_)
        | D::InvalidVersion(_)
        | D::InvalidDateTimeString { .. }
        | D::NotATable(_)
        | D::VersionDowngrade { .. }
        | D::PartitionError { .. }
        | D::InvalidPartitionFilter { .. }
        | D::NotInitialized
        | D::NotInitializedWithFiles(_)
        | D::UnsupportedColumnMapping { .. } => ErrorKind::Plan,
        D::ObjectStore { source } => classify_object_store(source),
        D::Io { source } => classify_io(source),
        _ => ErrorKind::Internal,
    }
}

/// An error DataFusion, Arrow or delta-rs carries as `dyn Error`: one of the types above, or
/// something gobi does not know (internal).
fn classify_source(error: &(dyn StdError + 'static)) -> ErrorKind {
    if let Some(e) = error.downcast_ref::<GobiError>() {
        e.kind
    } else if let Some(e) = error.downcast_ref::<DataFusionError>() {
        classify_variant(e)
    } else if let Some(e) = error.downcast_ref::<Arc<DataFusionError>>() {
        classify_variant(e)
    } else if let Some(e) = error.downcast_ref::<DeltaTableError>() {
        classify_delta(e)
    } else if let Some(e) = error.downcast_ref::<ArrowError>() {
        classify_arrow(e)
    } else if let Some(e) = error.downcast_ref::<std::io::Error>() {
        classify_io(e)
    } else if let Some(e) = error.downcast_ref::<ObjectStoreError>() {
        classify_object_store(e)
    } else if let Some(e) = error.downcast_ref::<datafusion::parquet::errors::ParquetError>() {
        classify_parquet(e)
    } else {
        // A type gobi does not depend on (delta kernel's `Schema error: Invalid data type for
        // Delta Lake: Time64(ns)`, tested through the binary): by DataFusion's prefixes, which
        // the kernel's errors share.
        classify_text(&error.to_string()).unwrap_or(ErrorKind::Internal)
    }
}

/// A Parquet error is the file's, unless it carries another: an error of a reader wrapped
/// around DataFusion's (`scan.rs`) reaches DataFusion inside a Parquet error.
fn classify_parquet(error: &datafusion::parquet::errors::ParquetError) -> ErrorKind {
    match error {
        datafusion::parquet::errors::ParquetError::External(inner) => classify_source(inner.as_ref()),
        _ => ErrorKind::Data,
    }
}

fn classify_arrow(error: &ArrowError) -> ErrorKind {
    match error {
        ArrowError::ExternalError(inner) => classify_source(inner.as_ref()),
        ArrowError::IoError(_, inner) => classify_io(inner),
        ArrowError::NotYetImplemented(_) => ErrorKind::Plan,
        ArrowError::CDataInterface(_) => ErrorKind::Internal,
        // Casts, arithmetic, parsing, malformed CSV/JSON/IPC: what the data holds.
        _ => ErrorKind::Data,
    }
}

/// An I/O error inside a statement: reading the files it names, or spilling.
fn classify_io(error: &std::io::Error) -> ErrorKind {
    use std::io::ErrorKind as Io;
    if error.to_string().contains(SPILL_BUDGET_TEXT) {
        return ErrorKind::Memory;
    }
    match error.kind() {
        Io::NotFound | Io::PermissionDenied | Io::InvalidData | Io::UnexpectedEof => ErrorKind::Data,
        // `io::Error::other(error)` keeps the error it carries (DataFusion's errors become
        // `io::Error`s that way).
        _ => error.get_ref().map_or(ErrorKind::Internal, |inner| classify_source(inner)),
    }
}

/// A file a statement reads that is not there is the statement's data; other storage failures
/// are I/O.
fn classify_object_store(error: &ObjectStoreError) -> ErrorKind {
    match error {
        ObjectStoreError::NotFound { .. } => ErrorKind::Data,
        _ => ErrorKind::Internal,
    }
}

/// How `DataFusionError` displays each variant (its `error_prefix`), with the kind
/// [`classify`] gives that variant: what is left of a DataFusion error once delta-rs has
/// made it text. A memory refusal anywhere in the text decides (it is the cause; the rest is
/// what it interrupted).
const DATAFUSION_PREFIXES: [(&str, ErrorKind); 9] = [
    ("SQL error: ", ErrorKind::Syntax),
    ("Error during planning: ", ErrorKind::Plan),
    ("Schema error: ", ErrorKind::Plan),
    ("This feature is not implemented: ", ErrorKind::Plan),
    ("Execution error: ", ErrorKind::Data),
    ("Arrow error: ", ErrorKind::Data),
    ("Parquet error: ", ErrorKind::Data),
    ("Internal error: ", ErrorKind::Internal),
    ("Resources exhausted: ", ErrorKind::Memory),
];

/// What wraps an error's own words when DataFusion or delta-rs makes it text: DataFusion's
/// `External` prefix, and delta-rs's `InvalidData` (its data validation, e.g. NOT NULL).
const WRAPPER_PREFIXES: [(&str, Option<ErrorKind>); 2] = [("External error: ", None), ("Invalid data found: ", Some(ErrorKind::Data))];

/// delta-rs's words for a table created by someone else first: `WriteError::AlreadyExists`
/// (a write in `ErrorIfExists` mode) and `CreateError::TableAlreadyExists`, both private types.
const CONFLICT_TEXTS: [&str; 2] = ["A table already exists at: ", "A Delta Lake table already exists at that location."];

/// The kind of a DataFusion error delta-rs turned into text, from DataFusion's own prefixes.
fn classify_text(text: &str) -> Option<ErrorKind> {
    if text.contains("Resources exhausted: ") || text.contains(SPILL_BUDGET_TEXT) {
        return Some(ErrorKind::Memory);
    }
    // DataFusion's `Context` shows as "<context>\ncaused by\n<error>": the last is the cause.
    let mut text = text.rsplit("\ncaused by\n").next().unwrap_or(text).trim_start();
    loop {
        if let Some((_, kind)) = DATAFUSION_PREFIXES.iter().find(|(prefix, _)| text.starts_with(prefix)) {
            return Some(*kind);
        }
        match WRAPPER_PREFIXES.iter().find(|(prefix, _)| text.starts_with(prefix)) {
            Some((_, Some(kind))) => return Some(*kind),
            Some((prefix, None)) => text = &text[prefix.len()..],
            None => return None,
        }
    }
}

/// The start of what DataFusion's disk manager says when spill files pass
/// `max_temp_directory_size` (gobi's `memory.spill_limit`).
const SPILL_BUDGET_TEXT: &str = "used disk space during the spilling process has exceeded";

/// Whether the error is DataFusion refusing to spill past the spill disk budget
/// (`memory.spill_limit`). It arrives as an `io::Error` holding only a message, wrapped by
/// whatever was writing the spill file, so every layer's message is read.
pub fn spill_budget_exceeded(error: &DataFusionError) -> bool {
    let mut layer: Option<&(dyn StdError + 'static)> = Some(error);
    while let Some(error) = layer {
        if error.to_string().contains(SPILL_BUDGET_TEXT) {
            return true;
        }
        layer = error.source();
    }
    false
}

/// A value Arrow could not convert, as it says so once `clean_message` has taken its
/// prefixes: "Cannot cast string 'abc' to value of Int64 type" → (`abc`, `Int64`).
/// delta-rs passes it on as text, after what it interrupted ("'simplify_expressions' failed").
pub fn failed_cast(message: &str) -> Option<(String, String)> {
    const CAST: &str = "Cannot cast string '";
    let rest = &message[message.find(CAST)? + CAST.len()..];
    let (value, to) = rest.rsplit_once("' to value of ")?;
    Some((value.to_string(), to.strip_suffix(" type")?.to_string()))
}

/// The table a statement names that does not exist, as the statement wrote it
/// (`usres`, not DataFusion's `datafusion.public.usres`); `None` for any other error.
/// DataFusion says it as a `Plan` error "table 'catalog.schema.name' not found".
pub fn unknown_table_name(error: &DataFusionError) -> Option<String> {
    let DataFusionError::Plan(message) = error.find_root() else { return None };
    let resolved = message.strip_prefix("table '")?.strip_suffix("' not found")?;
    let mut parts = resolved.splitn(3, '.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(_), Some(table)) => Some(table.to_string()),
        _ => Some(resolved.to_string()),
    }
}

/// Whether DataFusion refused a SELECT because two output columns have the same name:
/// "Projections require unique expression names …" (a `Plan` error), or a qualified and an
/// unqualified column of one name (`SchemaError::AmbiguousReference`).
pub fn is_duplicate_output_name(error: &DataFusionError) -> bool {
    match error.find_root() {
        DataFusionError::Plan(message) => message.contains("require unique expression names"),
        DataFusionError::SchemaError(schema_error, _) => {
            matches!(schema_error.as_ref(), SchemaError::AmbiguousReference { field } if field.relation.is_some())
        }
        _ => false,
    }
}

/// A write that put NULL into a NOT NULL column, as delta-rs reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotNullViolation {
    /// Arrow refused the batch: the column as the plan feeding the write names it (`column2`
    /// of `VALUES`).
    Column(String),
    /// delta-rs's own check (its `DataValidationExec`): how many rows, and its preview of them.
    Rows { rows: u64, preview: String },
}

/// Arrow's words when a batch has NULL in a non-nullable column: "Column '<name>' is declared
/// as non-nullable but contains null values".
const NON_NULLABLE_TEXT: (&str, &str) = ("Column '", "' is declared as non-nullable but contains null values");

/// delta-rs's words when its validation finds rows that break a constraint: "Invalid data
/// found: <n> rows failed validation check.\nPreview of invalid data: …".
const VALIDATION_TEXT: (&str, &str) = ("Invalid data found: ", " rows failed validation check.");

/// What a failed write says about a NULL in a NOT NULL column, if that is why it failed.
pub fn not_null_violation(error: &DeltaTableError) -> Option<NotNullViolation> {
    let text = error.to_string();
    let (before, after) = NON_NULLABLE_TEXT;
    if let Some(column) = text.split_once(after).and_then(|(head, _)| head.rsplit_once(before)).map(|(_, column)| column) {
        return Some(NotNullViolation::Column(column.to_string()));
    }
    let (before, after) = VALIDATION_TEXT;
    let (head, preview) = text.split_once(after)?;
    let rows = head.rsplit_once(before)?.1.parse().ok()?;
    Some(NotNullViolation::Rows { rows, preview: preview.trim_end().to_string() })
}

/// `message` without a backtrace captured after it (delta kernel's errors carry one when
/// `RUST_BACKTRACE` is set): from the first frame (`0: …`) or a `Backtrace:` heading on.
fn without_backtrace(message: &str) -> &str {
    let mut offset = 0;
    for line in message.split_inclusive('\n') {
        let start = line.trim_start();
        let is_backtrace = start.starts_with("0: ") || start.starts_with("Backtrace:") || start.starts_with("Stack backtrace:");
        if offset > 0 && is_backtrace {
            return message[..offset].trim_end();
        }
        offset += line.len();
    }
    message
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
    let mut text = without_backtrace(message).trim();
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
    //! Every upstream text this file reads is checked here against the real error: a query
    //! DataFusion refuses, a delta-rs call that fails. A DataFusion or delta-rs upgrade that
    //! rewords one fails these tests.

    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::MemTable;
    use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
    use datafusion::execution::memory_pool::GreedyMemoryPool;
    use datafusion::execution::runtime_env::RuntimeEnvBuilder;
    use datafusion::execution::session_state::SessionStateBuilder;
    use datafusion::logical_expr::lit;
    use datafusion::logical_expr::LogicalPlan;
    use datafusion::prelude::{SessionConfig, SessionContext};
    use datafusion::scalar::ScalarValue;
    use deltalake::kernel::engine::arrow_conversion::TryIntoKernel as _;
    use deltalake::protocol::SaveMode;
    use deltalake::DeltaTable;

    #[test]
    fn render_shows_line_caret_and_hint() {
        let error = GobiError { width: 3, ..GobiError::plan("no column nme").at(Position { line: 2, column: 8 }) }.with_hint("did you mean name?");
        let text = error.render(Some("SELECT 1;\nSELECT nme FROM t"));
        assert_eq!(text, "error: no column nme\n --> 2:8\n  |\n2 | SELECT nme FROM t\n  |        ^^^\nhint: did you mean name?\n");
    }

    #[test]
    fn clean_message_drops_a_captured_backtrace() {
        let kernel = "Failed to convert into Arrow schema: External error: Schema error: Invalid data type for Delta Lake: Time64(ns)\n   \
                      0: buoyant_kernel::error::Error::with_backtrace\n   1: buoyant_kernel::schema::StructType::try_new\n             at src/x.rs:1:2";
        assert_eq!(clean_message(kernel), "Failed to convert into Arrow schema: External error: Schema error: Invalid data type for Delta Lake: Time64(ns)");
        assert_eq!(clean_message("boom\n\nStack backtrace:\n   0: f"), "boom");
        assert_eq!(clean_message("two lines\nof message"), "two lines\nof message");
    }

    #[tokio::test]
    async fn a_failed_cast_is_read_from_arrows_words() {
        let error = GobiError::from(datafusion_error(&roomy(), "SELECT CAST('12x' AS BIGINT) + 1").await);
        assert_eq!(failed_cast(&error.message), Some(("12x".to_string(), "Int64".to_string())), "{}", error.message);
        let error = GobiError::from(datafusion_error(&roomy(), "SELECT CAST('it''s' AS DATE)").await);
        assert_eq!(failed_cast(&error.message), Some(("it's".to_string(), "Date32".to_string())), "{}", error.message);
        assert_eq!(failed_cast("Cannot cast to Int64"), None);
        // Through delta-rs, which plans a write's input itself and passes the error on as text.
        let dir = tempfile::tempdir().unwrap();
        let ctx = roomy();
        let plan = ctx.sql("SELECT CAST('abc' AS BIGINT) AS id").await.unwrap().into_unoptimized_plan();
        let error = not_null_table(dir.path()).await.write(vec![]).with_input_plan(plan).with_session_state(Arc::new(ctx.state())).await.unwrap_err();
        let error = GobiError::from(error);
        assert_eq!(failed_cast(&error.message), Some(("abc".to_string(), "Int64".to_string())), "{}", error.message);
    }

    #[test]
    fn clean_message_strips_nested_prefixes() {
        assert_eq!(clean_message("External error: Execution error: boom"), "boom");
        assert_eq!(
            clean_message("Function 'f' user-defined coercion failed with: Error during planning: function f: argument 1 (x) must be Float64, got Utf8. No function matches the given name and argument types 'f(Utf8)'."),
            "function f: argument 1 (x) must be Float64, got Utf8"
        );
    }

    /// The error DataFusion gives for `sql`, planning or running it.
    async fn datafusion_error(ctx: &SessionContext, sql: &str) -> DataFusionError {
        match ctx.sql(sql).await {
            Err(e) => e,
            Ok(frame) => frame.collect().await.expect_err(sql),
        }
    }

    /// One partition, a `pool`-byte memory pool, spill files allowed `spill` bytes (none if 0),
    /// and delta-rs's planner for its writes.
    fn context(pool: usize, spill: u64) -> SessionContext {
        let disk = match spill {
            0 => DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            bytes => DiskManagerBuilder::default().with_max_temp_directory_size(bytes),
        };
        let runtime = RuntimeEnvBuilder::new().with_memory_pool(Arc::new(GreedyMemoryPool::new(pool))).with_disk_manager_builder(disk).build_arc().unwrap();
        let mut config = SessionConfig::new().with_target_partitions(1).with_batch_size(1024);
        config.options_mut().execution.sort_spill_reservation_bytes = 64 << 10;
        SessionStateBuilder::new()
            .with_default_features()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_query_planner(deltalake::delta_datafusion::planner::DeltaPlanner::new())
            .build()
            .into()
    }

    fn roomy() -> SessionContext {
        context(1 << 30, 1 << 30)
    }

    /// 200 000 distinct 32-byte strings.
    const STRINGS: &str = "(SELECT md5(CAST(value AS VARCHAR)) AS s FROM generate_series(1, 200000))";

    /// A hash join's build side cannot spill: refused by the pool, it is `ResourcesExhausted`.
    async fn memory_refusal() -> DataFusionError {
        let sql = format!("SELECT count(*) FROM {STRINGS} a JOIN {STRINGS} b ON a.s = b.s");
        datafusion_error(&context(256 << 10, 0), &sql).await
    }

    /// A sort that must spill 6 MB with 16 KiB of spill budget.
    async fn spill_budget_refusal() -> DataFusionError {
        datafusion_error(&context(2 << 20, 16 << 10), &format!("SELECT s FROM {STRINGS} ORDER BY s")).await
    }

    #[tokio::test]
    async fn datafusion_errors_are_classified_by_variant() {
        let ctx = roomy();
        let cases = [
            ("SELEC 1", ErrorKind::Syntax),
            ("SELECT * FROM usres", ErrorKind::Plan),
            ("SELECT nope", ErrorKind::Plan),
            ("SELECT 1 + 'x'", ErrorKind::Plan),
            ("CREATE TEMPORARY TABLE t (a INT)", ErrorKind::Plan),
            ("SELECT CAST('x' AS INT)", ErrorKind::Data),
            ("SELECT factorial(v) FROM (VALUES (-1)) t(v)", ErrorKind::Data),
            ("SELECT 1 / v FROM (VALUES (0)) t(v)", ErrorKind::Data),
        ];
        for (sql, kind) in cases {
            let error = datafusion_error(&ctx, sql).await;
            assert_eq!(classify(&error), kind, "{sql}: {error:?}");
            assert_eq!(GobiError::from(error).kind, kind, "{sql}");
        }
        let error = memory_refusal().await;
        assert!(matches!(error.find_root(), DataFusionError::ResourcesExhausted(_)), "{error:?}");
        assert_eq!(GobiError::from(error).kind, ErrorKind::Memory);
    }

    #[tokio::test]
    async fn spill_budget_is_recognized_by_its_words() {
        let error = spill_budget_refusal().await;
        assert!(spill_budget_exceeded(&error), "{error:?}");
        assert_eq!(classify(&error), ErrorKind::Memory);
        assert!(!spill_budget_exceeded(&memory_refusal().await));
        assert!(!spill_budget_exceeded(&datafusion_error(&roomy(), "SELECT nope").await));
    }

    #[tokio::test]
    async fn unknown_tables_are_named_as_the_statement_wrote_them() {
        let ctx = roomy();
        let error = datafusion_error(&ctx, "SELECT * FROM usres").await;
        assert_eq!(unknown_table_name(&error).as_deref(), Some("usres"));
        let error = datafusion_error(&ctx, "SELECT * FROM \"my.table\"").await;
        assert_eq!(unknown_table_name(&error).as_deref(), Some("my.table"));
        for sql in ["SELECT nope", "SELECT * FROM usres(1)", "SELEC 1"] {
            assert_eq!(unknown_table_name(&datafusion_error(&ctx, sql).await), None, "{sql}");
        }
    }

    #[tokio::test]
    async fn repeated_output_names_are_recognized() {
        let ctx = roomy();
        for sql in ["SELECT 1 AS c, 2 AS c", "SELECT t.a, 1 AS a FROM (SELECT 1 AS a) t"] {
            let error = datafusion_error(&ctx, sql).await;
            assert!(is_duplicate_output_name(&error), "{sql}: {error:?}");
        }
        for sql in ["SELECT nope", "SELECT * FROM usres", "SELECT a FROM (SELECT 1 AS a) x, (SELECT 2 AS a) y"] {
            assert!(!is_duplicate_output_name(&datafusion_error(&ctx, sql).await), "{sql}");
        }
    }

    /// delta-rs keeps only the text of most DataFusion errors; the kind read back from it is the
    /// kind of the error it came from.
    #[tokio::test]
    async fn datafusion_errors_turned_into_text_by_delta_rs_keep_their_kind() {
        let ctx = roomy();
        let mut errors = vec![];
        for sql in [
            "SELEC 1",
            "SELECT * FROM usres",
            "SELECT nope",
            "CREATE TEMPORARY TABLE t (a INT)",
            "SELECT factorial(v) FROM (VALUES (-1)) t(v)",
            "SELECT factorial(-1)",
        ] {
            errors.push((sql.to_string(), datafusion_error(&ctx, sql).await));
        }
        errors.push(("memory".into(), memory_refusal().await));
        errors.push(("spill budget".into(), spill_budget_refusal().await));
        let mut generic = 0;
        for (what, error) in errors {
            let kind = classify(&error);
            let error = DeltaTableError::from(error);
            generic += usize::from(matches!(error, DeltaTableError::Generic(_)));
            assert_eq!(classify_delta(&error), kind, "{what}: {error:?}");
        }
        assert!(generic >= 6, "delta-rs made text of {generic} of them");
    }

    /// The prefixes read back from delta-rs's text are how DataFusion itself displays each
    /// variant, and give the kind `classify` gives that variant.
    #[test]
    fn datafusion_prefixes_are_datafusions_own() {
        use datafusion::parquet::errors::ParquetError;
        use datafusion::sql::sqlparser::parser::ParserError;
        let samples = [
            DataFusionError::SQL(Box::new(ParserError::ParserError("x".into())), None),
            DataFusionError::Plan("x".into()),
            DataFusionError::SchemaError(Box::new(SchemaError::DuplicateUnqualifiedField { name: "x".into() }), Box::new(None)),
            DataFusionError::NotImplemented("x".into()),
            DataFusionError::Execution("x".into()),
            DataFusionError::ArrowError(Box::new(ArrowError::DivideByZero), None),
            DataFusionError::ParquetError(Box::new(ParquetError::General("x".into()))),
            DataFusionError::Internal("x".into()),
            DataFusionError::ResourcesExhausted("x".into()),
        ];
        for (error, (prefix, kind)) in samples.into_iter().zip(DATAFUSION_PREFIXES) {
            let text = error.to_string();
            assert!(text.starts_with(prefix), "{text:?} does not start with {prefix:?}");
            assert_eq!(classify(&error), kind, "{text}");
            assert_eq!(classify_text(&text), Some(kind), "{text}");
            assert_eq!(classify_text(&format!("External error: {text}")), Some(kind), "{text}");
            let context = DataFusionError::Context("while scanning".into(), Box::new(error)).to_string();
            assert_eq!(classify_text(&context), Some(kind), "{context}");
        }
    }

    /// A Parquet error is the file's unless it carries another error, which then decides:
    /// what a reader wrapped around DataFusion's (`scan.rs`) returns reaches DataFusion so.
    #[test]
    fn a_parquet_error_carrying_another_is_classified_by_it() {
        use datafusion::parquet::errors::ParquetError;
        let carried = |inner: DataFusionError| DataFusionError::ParquetError(Box::new(ParquetError::External(Box::new(inner))));
        assert_eq!(classify(&carried(DataFusionError::ResourcesExhausted("pool full".into()))), ErrorKind::Memory);
        assert_eq!(classify(&carried(DataFusionError::Plan("x".into()))), ErrorKind::Plan);
        assert_eq!(classify(&DataFusionError::ParquetError(Box::new(ParquetError::EOF("truncated".into())))), ErrorKind::Data);
    }

    /// A delta-rs write whose input runs out of memory is a memory error, as it is in a query.
    #[tokio::test]
    async fn a_delta_write_refused_memory_is_a_memory_error() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = context(256 << 10, 0);
        let sql = format!("SELECT a.s FROM {STRINGS} a JOIN {STRINGS} b ON a.s = b.s");
        let plan = ctx.sql(&sql).await.unwrap().into_unoptimized_plan();
        let table = DeltaTable::try_from_url(url::Url::from_directory_path(dir.path()).unwrap()).await.unwrap();
        let error = table.write(vec![]).with_input_plan(plan).with_session_state(Arc::new(ctx.state())).await.unwrap_err();
        assert_eq!(classify_delta(&error), ErrorKind::Memory, "{error:?}");
    }

    /// A table with a NOT NULL column `id`, in `dir`.
    async fn not_null_table(dir: &std::path::Path) -> DeltaTable {
        let url = url::Url::from_directory_path(dir).unwrap();
        let column: deltalake::kernel::StructField = (&Field::new("id", DataType::Int64, false)).try_into_kernel().unwrap();
        DeltaTable::try_from_url(url).await.unwrap().create().with_columns(vec![column]).await.unwrap()
    }

    #[tokio::test]
    async fn not_null_violations_are_read_from_delta_rs_words() {
        let dir = tempfile::tempdir().unwrap();
        let table = not_null_table(dir.path()).await;
        let ctx = roomy();
        let write = |sql: &'static str, table: DeltaTable| {
            let ctx = ctx.clone();
            async move {
                let plan = ctx.sql(sql).await.unwrap().into_unoptimized_plan();
                table.write(vec![]).with_input_plan(plan).with_session_state(Arc::new(ctx.state())).with_save_mode(SaveMode::Append).await
            }
        };
        // An INSERT as DataFusion plans it (gobi hands delta-rs this input): its VALUES take
        // the table's NOT NULL, so Arrow refuses the batch, naming VALUES' column.
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        ctx.register_table("t", Arc::new(MemTable::try_new(schema, vec![vec![]]).unwrap())).unwrap();
        let LogicalPlan::Dml(insert) = ctx.state().create_logical_plan("INSERT INTO t VALUES (1), (NULL)").await.unwrap() else {
            panic!("INSERT plans as DML");
        };
        let error = table
            .clone()
            .write(vec![])
            .with_input_plan(Arc::unwrap_or_clone(insert.input))
            .with_session_state(Arc::new(ctx.state()))
            .with_save_mode(SaveMode::Append)
            .await
            .unwrap_err();
        assert_eq!(not_null_violation(&error), Some(NotNullViolation::Column("column1".into())), "{error:?}");
        assert_eq!(classify_delta(&error), ErrorKind::Data);

        // A query's NULL reaches delta-rs's own check, which counts the rows.
        let error = write("SELECT CAST(NULL AS BIGINT) AS id", table.clone()).await.unwrap_err();
        assert!(matches!(not_null_violation(&error), Some(NotNullViolation::Rows { rows: 1, .. })), "{error:?}");
        assert_eq!(classify_delta(&error), ErrorKind::Data);

        let table = write("SELECT CAST(1 AS BIGINT) AS id", table).await.unwrap();
        let error = table.update().with_update("id", lit(ScalarValue::Int64(None))).with_session_state(Arc::new(ctx.state())).await.unwrap_err();
        match not_null_violation(&error) {
            Some(NotNullViolation::Rows { rows: 1, preview }) => assert!(preview.contains("Preview"), "{preview}"),
            other => panic!("{other:?} from {error:?}"),
        }
        assert_eq!(classify_delta(&error), ErrorKind::Data);

        let error = DeltaTableError::from(datafusion_error(&ctx, "SELECT nope").await);
        assert_eq!(not_null_violation(&error), None);
    }

    /// Creating a table someone else created first: delta-rs says so in words only.
    #[tokio::test]
    async fn a_table_created_by_another_writer_is_a_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let url = url::Url::from_directory_path(dir.path()).unwrap();
        let late = DeltaTable::try_from_url(url.clone()).await.unwrap();
        not_null_table(dir.path()).await;
        let column: deltalake::kernel::StructField = (&Field::new("id", DataType::Int64, false)).try_into_kernel().unwrap();
        let error = late.create().with_columns(vec![column]).await.unwrap_err();
        assert_eq!(classify_delta(&error), ErrorKind::Conflict, "{error:?}");

        let ctx = roomy();
        let plan = ctx.sql("SELECT CAST(1 AS BIGINT) AS id").await.unwrap().into_unoptimized_plan();
        let opened = deltalake::open_table(url).await.unwrap();
        let error =
            opened.write(vec![]).with_input_plan(plan).with_session_state(Arc::new(ctx.state())).with_save_mode(SaveMode::ErrorIfExists).await.unwrap_err();
        assert_eq!(classify_delta(&error), ErrorKind::Conflict, "{error:?}");
    }

    #[test]
    fn gobi_refusals_keep_their_kind() {
        let memory = gobi_memory::MemoryManager::new(gobi_memory::PoolLimits::default());
        let full = memory.reserve(gobi_memory::PoolKind::Temp, 1 << 40, "let huge").unwrap_err();
        assert_eq!(GobiError::from(full).kind, ErrorKind::Memory);
        let carried = DataFusionError::External(Box::new(GobiError::data("bad row")));
        let wrapped = DataFusionError::Shared(Arc::new(DataFusionError::Context("scan".into(), Box::new(carried))));
        let error = GobiError::from(wrapped);
        assert_eq!((error.kind, error.message.as_str()), (ErrorKind::Data, "bad row"));
    }
}
