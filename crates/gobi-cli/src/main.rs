//! `gobi`: the command-line front end. It parses arguments, opens a session and prints
//! what the engine returns; everything else lives in the library crates.

mod demo;
mod memory;
mod output;
mod plan;
mod repl;

use std::io::{IsTerminal as _, Read as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::{Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use gobi_engine::{Engine, ErrorKind, GobiError, Lakehouse, Output, Session, CONFIG_FILE};
use gobi_lang::parse_script;
use gobi_memory::{ByteSize, PoolKind};

use crate::output::{Format, Layout, Printer};

/// jemalloc, counting what each query's operators allocate (gobi-memory's `allocator`). The
/// `baseline` build (the accounting-overhead benchmark's reference) keeps the system allocator.
#[cfg(not(feature = "baseline"))]
#[global_allocator]
static ALLOCATOR: gobi_memory::GobiAllocator = gobi_memory::GobiAllocator::new();

/// jemalloc's settings, read before the first allocation. One arena instead of four per CPU:
/// memory one thread frees is reused by the others instead of staying resident in its arena
/// (TPC-H scale 1 at a 175 MiB limit: peak RSS 8-15 % lower, the same speed on 2 cores; each
/// thread's cache still serves most allocations without the arena's lock).
#[cfg(not(feature = "baseline"))]
#[export_name = "_rjem_malloc_conf"]
static JEMALLOC_CONF: JemallocConf = JemallocConf(c"narenas:1".as_ptr());

/// A C string pointer jemalloc reads as `const char *malloc_conf`.
#[cfg(not(feature = "baseline"))]
#[repr(transparent)]
struct JemallocConf(*const std::ffi::c_char);

// SAFETY: it points at a string literal, never written.
#[cfg(not(feature = "baseline"))]
unsafe impl Sync for JemallocConf {}

#[derive(Parser)]
#[command(
    name = "gobi",
    version,
    about = "An embedded lakehouse: Delta tables in a folder, SQL on top.",
    // The exit codes are appended from `EXIT_CODES` (see `help_text`).
    after_help = "Examples:\n  gobi demo                               # TPC-H in ./gobi-demo, a few queries\n  gobi init sales && cd sales             # a new lakehouse\n  gobi query \"CREATE TABLE t AS SELECT 1 AS x\"\n  gobi query \"SELECT * FROM t\" --format json\n  gobi repl"
)]
struct Cli {
    /// The lakehouse folder. Without it (nor GOBI_LAKEHOUSE), the current folder when it is a
    /// lakehouse; else gobi runs in memory: files are readable, tables last for the run, spill
    /// files go to the system's temporary folder and nothing is logged.
    #[arg(long, short = 'l', global = true, env = "GOBI_LAKEHOUSE", value_name = "DIR")]
    lakehouse: Option<PathBuf>,

    /// How results are printed: table (default on a terminal), csv (default otherwise), json,
    /// line (`column = value`, for wide rows), markdown.
    #[arg(long, global = true, value_enum)]
    format: Option<Format>,

    /// The most rows a table shows (the first and the last halves); 0 for all.
    #[arg(long, global = true, default_value_t = 40, value_name = "N")]
    max_rows: usize,

    #[command(flatten)]
    memory: MemoryArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a lakehouse folder (gobi.toml, tables/, _gobi/).
    #[command(after_help = "Example:\n  gobi init my-lakehouse")]
    Init {
        /// Where to create it (default: the current folder).
        dir: Option<PathBuf>,
    },
    /// Run statements given on the command line, on stdin (`-`) or in a file.
    #[command(
        after_help = "Examples:\n  gobi query \"SELECT count(*) FROM orders\"\n  gobi query \"FROM orders |> WHERE total > 100 |> AGGREGATE count(*) GROUP BY status\"\n  echo \"SHOW TABLES\" | gobi query -\n  gobi query --file q1.sql --data tpch-parquet/ --summary json\n  gobi query --file q1.sql --data tpch-parquet/ --repeat 3 --summary json"
    )]
    Query(QueryArgs),
    /// Run a script file of statements separated by `;` (`-`: read it from stdin).
    #[command(after_help = "Examples:\n  gobi run setup.sql\n  cat setup.sql | gobi run -")]
    Run {
        /// The script, or `-` for stdin.
        file: PathBuf,
    },
    /// An interactive shell: statements end at `;`, `.help` lists the dot commands.
    #[command(after_help = "Example:\n  gobi --lakehouse gobi-demo repl")]
    Repl,
    /// Memory: pools, pressure, leaks and cleanup of this process, with the lakehouse's query
    /// log and memory events from earlier ones.
    #[command(after_help = "Examples:\n  gobi memory stats\n  gobi memory pressure --history --json\n  gobi memory leaks\n  gobi memory cleanup")]
    Memory {
        #[command(subcommand)]
        report: memory::Report,
        /// The same as `--format json`: one JSON object, a key per section, byte figures as
        /// plain numbers.
        #[arg(long, global = true)]
        json: bool,
    },
    /// How a query runs: its physical plan under this run's memory, each operator's estimated
    /// rows and bytes and whether what it holds can spill, each join's algorithm and why;
    /// `--analyze` runs it and adds what each operator did. Statements before the last run
    /// first (a SET, a CREATE); the last is the query planned.
    #[command(
        after_help = "Examples:\n  gobi plan \"SELECT c.name, count(*) FROM orders o JOIN customers c ON o.cid = c.id GROUP BY c.name\"\n  gobi --memory-query 4MiB plan --analyze --file q18.sql\n  gobi plan --format json \"SELECT ...\""
    )]
    Plan(PlanArgs),
    /// Generate TPC-H data into a new lakehouse and run a few TPC-H queries on it.
    #[command(after_help = "Example:\n  gobi demo              # scale 0.1 (~100 MiB of raw data) in ./gobi-demo\n  gobi demo big --scale 1")]
    Demo {
        /// Where to put the lakehouse (default: ./gobi-demo).
        dir: Option<PathBuf>,
        /// TPC-H scale factor: 1 is about 1 GiB of raw data, 6 million lineitem rows.
        #[arg(long, default_value_t = 0.1)]
        scale: f64,
    },
}

/// Where a command's statements come from, and what they run on.
#[derive(Args)]
struct Statements {
    /// The statements; `-` reads them from stdin. Text starting with `-` (a `-- comment`) is
    /// taken as statements too.
    #[arg(allow_hyphen_values = true)]
    sql: Option<String>,
    /// Read the statements from this file instead.
    #[arg(long, short = 'f', conflicts_with = "sql", value_name = "FILE")]
    file: Option<PathBuf>,
    /// Query the NAME.parquet files in DIR as read-only tables NAME; no lakehouse needed.
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
}

impl Statements {
    /// The statements' text.
    fn source(&self) -> Result<String, GobiError> {
        match (&self.sql, &self.file) {
            (_, Some(file)) => read_file(file),
            (Some(sql), None) if sql == "-" => read_file(Path::new("-")),
            (Some(sql), None) => Ok(sql.clone()),
            (None, None) => Err(GobiError::new(ErrorKind::Usage, "no statements given")
                .with_hint("gobi query \"SELECT 1\", gobi query - < script.sql, or gobi query --file script.sql")),
        }
    }

    /// A session over `--data`'s files, else the lakehouse (or in memory).
    async fn session(&self, lakehouse: Option<PathBuf>, memory: &MemoryArgs) -> Result<Session, GobiError> {
        match &self.data {
            Some(dir) => {
                let session = memory.session(Engine::in_memory());
                session.register_data_dir(dir).await?;
                Ok(session)
            }
            None => memory.open_or_in_memory(lakehouse),
        }
    }
}

#[derive(Args)]
struct PlanArgs {
    #[command(flatten)]
    statements: Statements,
    /// Run the query (its rows are not printed) and show what each operator did.
    #[arg(long)]
    analyze: bool,
}

#[derive(Args)]
struct QueryArgs {
    #[command(flatten)]
    statements: Statements,
    /// After the results, print one line `{"rows": N, "seconds": S}`: N rows in the last
    /// result, S seconds spent running the statements and formatting their rows (not writing
    /// them out: a slow reader of the output does not count).
    #[arg(long, value_enum, value_name = "FORMAT")]
    summary: Option<SummaryFormat>,
    /// For benchmarks: run the statements once as a warm-up (its rows printed), then N more
    /// times in this process (every row read, none printed), with the result cache off; the
    /// summary line then carries `"times": [warm-up s, run 1 s, …]`.
    #[arg(long, value_name = "N")]
    repeat: Option<u32>,
}

/// Memory pool limits for this run, over those of gobi.toml.
#[derive(Args, Clone, Default)]
struct MemoryArgs {
    /// The query pool's limit, e.g. 256MiB (default: gobi.toml's, else 50MiB).
    #[arg(long, global = true, env = "GOBI_MEMORY_QUERY", value_name = "SIZE")]
    memory_query: Option<ByteSize>,
    /// The cache pool's limit (default: gobi.toml's, else 100MiB).
    #[arg(long, global = true, env = "GOBI_MEMORY_CACHE", value_name = "SIZE")]
    memory_cache: Option<ByteSize>,
    /// The temp pool's limit (default: gobi.toml's, else 25MiB).
    #[arg(long, global = true, env = "GOBI_MEMORY_TEMP", value_name = "SIZE")]
    memory_temp: Option<ByteSize>,
    /// All three pools from one total, split 50:100:25 (query:cache:temp), e.g. 175MiB.
    #[arg(long, global = true, value_name = "BYTES")]
    memory_limit: Option<ByteSize>,
}

impl MemoryArgs {
    fn apply(&self, engine: &Engine) {
        if let Some(total) = self.memory_limit {
            engine.set_pool_limit(PoolKind::Query, total.0 * 50 / 175);
            engine.set_pool_limit(PoolKind::Cache, total.0 * 100 / 175);
            engine.set_pool_limit(PoolKind::Temp, total.0 * 25 / 175);
        }
        for (pool, size) in [(PoolKind::Query, self.memory_query), (PoolKind::Cache, self.memory_cache), (PoolKind::Temp, self.memory_temp)] {
            if let Some(size) = size {
                engine.set_pool_limit(pool, size.0);
            }
        }
    }

    /// A session of an engine over the lakehouse in `dir` with these limits.
    fn open(&self, dir: Option<PathBuf>) -> Result<Session, GobiError> {
        Ok(self.session(Engine::open(open_lakehouse(dir)?)))
    }

    /// A session over the lakehouse in `dir`; with none given, over the current folder when it
    /// is a lakehouse, else in memory. A `dir` given that is not a lakehouse is refused.
    fn open_or_in_memory(&self, dir: Option<PathBuf>) -> Result<Session, GobiError> {
        match dir {
            None if !Path::new(CONFIG_FILE).exists() => Ok(self.session(Engine::in_memory())),
            dir => self.open(dir),
        }
    }

    /// A session of `engine`, its pools set to these limits.
    fn session(&self, engine: Arc<Engine>) -> Session {
        self.apply(&engine);
        Session::new(&engine)
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SummaryFormat {
    Json,
}

/// How `gobi` exits, by the kind of error that stopped it, in the spirit of psql's and
/// sysexits' codes but small and contiguous, so a script can tell what to do next:
/// - 1 is "the statement failed" (a name, a type, a value, a file): fix the statement or the
///   data. Plan and data errors share it; the message says which.
/// - 2 is a wrong command line, as clap already exits for its own usage errors.
/// - 3 is a syntax error: gobi parses a whole script before running it, so nothing ran
///   (except for the few syntax errors DataFusion's planner finds, such as a numeric literal
///   it cannot read, which come when their statement is planned).
/// - 4 memory and 5 conflict are the failures worth retrying unchanged or with other
///   settings: more memory (`--memory-query`, `SET memory.…`), or again after the other writer.
/// - 6 is a folder that is not a lakehouse or a wrong `gobi.toml`: fix the setup.
/// - 7 is gobi's fault or the machine's (a bug, an I/O failure).
/// - 130 is a cancelled query, what shells report for a program stopped by Ctrl-C (128 +
///   SIGINT).
///
/// The REPL reports errors and goes on; it exits 0 unless it cannot run at all.
fn exit_code(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::Plan | ErrorKind::Data => 1,
        ErrorKind::Usage => 2,
        ErrorKind::Syntax => 3,
        ErrorKind::Memory => 4,
        ErrorKind::Conflict => 5,
        ErrorKind::Lakehouse => 6,
        ErrorKind::Internal => 7,
        ErrorKind::Cancelled => 130,
    }
}

/// The table `gobi --help` shows: each code of [`exit_code`] (and clap's 2) with its meaning.
const EXIT_CODES: [(u8, &str); 9] = [
    (0, "success"),
    (1, "a statement failed: unknown name, wrong type, bad value or file"),
    (2, "usage: wrong arguments or options"),
    (3, "syntax: the script does not parse (none of it ran)"),
    (4, "memory: a memory limit refused a query (raise it or make the query smaller)"),
    (5, "conflict: another writer committed first (run it again)"),
    (6, "lakehouse: not a lakehouse folder, or gobi.toml is wrong"),
    (7, "internal: a bug or an I/O failure"),
    (130, "cancelled (Ctrl-C)"),
];

/// The top-level `after_help`: the examples, then the exit codes.
fn help_text(examples: &str) -> String {
    let mut text = format!("{examples}\n\nExit codes:");
    for (code, meaning) in EXIT_CODES {
        text.push_str(&format!("\n  {code:<3}  {meaning}"));
    }
    text
}

fn main() -> ExitCode {
    #[cfg(not(feature = "baseline"))]
    gobi_memory::allocator::mark_installed();
    let command = Cli::command();
    let examples = command.get_after_help().map(|help| help.to_string()).unwrap_or_default();
    let matches = command.after_help(help_text(&examples)).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    log_warnings();
    let format = cli.format.unwrap_or(if std::io::stdout().is_terminal() { Format::Table } else { Format::Csv });
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    let printer = Printer::new(format, Layout::for_terminal(cli.max_rows));
    let result = match cli.command {
        Command::Init { dir } => init(dir.or(cli.lakehouse)),
        Command::Query(args) => runtime.block_on(query(cli.lakehouse, &cli.memory, args, &printer)),
        Command::Run { file } => runtime.block_on(run_file(cli.lakehouse, &cli.memory, &file, &printer)),
        Command::Repl => match cli.memory.open_or_in_memory(cli.lakehouse) {
            Ok(session) => repl::run(&runtime, session, printer),
            Err(error) => Err(error.into()),
        },
        Command::Memory { report, json } => {
            let format = if json { Format::Json } else { format };
            runtime.block_on(memory_report(cli.lakehouse, &cli.memory, report, format, &printer))
        }
        Command::Plan(args) => runtime.block_on(plan::run(cli.lakehouse, &cli.memory, args, format, &printer)),
        Command::Demo { dir, scale } => runtime.block_on(demo::run(dir.or(cli.lakehouse).unwrap_or_else(|| "gobi-demo".into()), scale, &printer)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprint!("{}", failure.error.render(failure.source.as_deref()));
            ExitCode::from(exit_code(failure.error.kind))
        }
    }
}

/// gobi's own warnings (a log that could not be written, a pool that went past its limit) go
/// to stderr; `GOBI_LOG` sets other targets and levels (`GOBI_LOG=debug`,
/// `GOBI_LOG=datafusion=trace,gobi_engine=debug`).
fn log_warnings() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = std::env::var("GOBI_LOG")
        .ok()
        .and_then(|targets| targets.parse::<tracing_subscriber::filter::Targets>().ok())
        .unwrap_or_else(|| "gobi_engine=warn,gobi_cli=warn,gobi_memory=warn".parse().expect("a valid filter"));
    let stderr = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal()).without_time().with_target(false);
    tracing_subscriber::registry().with(stderr).with(filter).init();
}

/// An error together with the script it points into, so it can show the offending line.
pub struct Failure {
    error: GobiError,
    source: Option<String>,
}

impl From<GobiError> for Failure {
    fn from(error: GobiError) -> Self {
        Self { error, source: None }
    }
}

type CliResult = Result<(), Failure>;

fn init(dir: Option<PathBuf>) -> CliResult {
    let dir = dir.unwrap_or_else(|| ".".into());
    Lakehouse::init(&dir)?;
    eprintln!("created a gobi lakehouse in {}", dir.display());
    eprintln!("next: gobi --lakehouse {} query \"CREATE TABLE t (id BIGINT NOT NULL, name STRING)\"", dir.display());
    Ok(())
}

fn open_lakehouse(dir: Option<PathBuf>) -> Result<Lakehouse, GobiError> {
    Lakehouse::open(&dir.unwrap_or_else(|| ".".into()))
}

async fn query(lakehouse: Option<PathBuf>, memory: &MemoryArgs, args: QueryArgs, printer: &Printer) -> CliResult {
    let source = args.statements.source()?;
    let session = args.statements.session(lakehouse, memory).await?;
    let summary = run_repeated(&session, &source, printer, args.repeat).await;
    session.close().await;
    let (summary, times) = summary?;
    if args.summary.is_some() {
        let mut line = serde_json::json!({ "rows": summary.rows, "seconds": summary.seconds });
        if args.repeat.is_some() {
            line["times"] = serde_json::json!(times);
        }
        printer.print_line(&line.to_string())?;
    }
    Ok(())
}

/// Runs the statements once, printing; with `repeat`, N more times printing nothing, the result
/// cache off for all of them (a repeat must run the query, not look it up). The first run's
/// summary, and every run's seconds.
async fn run_repeated(session: &Session, source: &str, printer: &Printer, repeat: Option<u32>) -> Result<(Summary, Vec<f64>), Failure> {
    if repeat.is_some() {
        session.engine().set_result_cache(false);
    }
    let first = run_statements(session, source, printer).await?;
    let mut times = vec![first.seconds];
    let silent = Printer::silent();
    for _ in 0..repeat.unwrap_or(0) {
        if first.reader_left {
            break;
        }
        times.push(run_statements(session, source, &silent).await?.seconds);
    }
    Ok((first, times))
}

async fn run_file(lakehouse: Option<PathBuf>, memory: &MemoryArgs, file: &Path, printer: &Printer) -> CliResult {
    let source = read_file(file)?;
    let session = memory.open_or_in_memory(lakehouse)?;
    let result = run_statements(&session, &source, printer).await.map(|_| ());
    session.close().await;
    result
}

async fn memory_report(lakehouse: Option<PathBuf>, memory: &MemoryArgs, report: memory::Report, format: Format, printer: &Printer) -> CliResult {
    let session = memory.open(lakehouse)?;
    let text = memory::report(&session, report, format).await;
    session.close().await;
    printer.print_line(text?.trim_end())?;
    Ok(())
}

/// A script's text from `file`, or from stdin when it is `-`.
fn read_file(file: &Path) -> Result<String, GobiError> {
    if file == Path::new("-") {
        let mut text = String::new();
        std::io::stdin().read_to_string(&mut text).map_err(|e| GobiError::new(ErrorKind::Usage, format!("cannot read stdin: {e}")))?;
        return Ok(text);
    }
    std::fs::read_to_string(file).map_err(|e| GobiError::new(ErrorKind::Usage, format!("cannot read {}: {e}", file.display())))
}

pub struct Summary {
    rows: usize,
    seconds: f64,
    /// The reader went away (a closed pipe); the statements after it were not run.
    pub reader_left: bool,
}

/// Parses the whole script first (a syntax error anywhere stops it before anything runs),
/// then runs and prints each statement in turn.
pub async fn run_statements(session: &Session, source: &str, printer: &Printer) -> Result<Summary, Failure> {
    let with_source = |error: GobiError| Failure { error, source: Some(source.to_string()) };
    let statements = parse_script(source).map_err(|e| with_source(e.into()))?;
    let mut summary = Summary { rows: 0, seconds: 0.0, reader_left: false };
    for statement in &statements {
        let (started, writing) = (Instant::now(), printer.writing());
        let progress = session.progress();
        let output = output::showing_progress(&progress, session.execute(statement)).await.map_err(with_source)?;
        let returns_rows = !matches!(output, Output::Done(_));
        let printed = printer.print(output, Some(&progress)).await.map_err(with_source)?;
        summary.seconds += started.elapsed().saturating_sub(printer.writing() - writing).as_secs_f64();
        if returns_rows {
            summary.rows = printed.rows;
        }
        if printed.reader_left {
            summary.reader_left = true;
            break;
        }
    }
    Ok(summary)
}
