//! `gobi repl`: statements end at `;` (or at an empty line); dot commands inspect the session.
//! Tab completes keywords, tables, columns, variables and functions; input is highlighted.

use std::borrow::Cow;

use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::{CmdKind, Highlighter};
use rustyline::history::DefaultHistory;
use rustyline::{Context, Editor, Helper, Hinter, Validator};

use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer, Whitespace};
use gobi_engine::{GobiError, Output, Session, Stops};
use gobi_lang::{is_complete, GrizzlyDialect};
use std::sync::Arc;
use tokio::sync::Notify;

use crate::output::Printer;
use crate::{run_statements, CliResult, Failure};

const HELP: &str = "\
Statements end with `;` or an empty line and may span lines. Tab completes names.
Ctrl-C cancels a running query (or clears the input), Ctrl-D or .quit leaves.

  .tables          the tables and views of the lakehouse
  .schema T        the columns of table T
  .vars            the session's variables, with their types and sizes
  .memory          the memory pools (limit, reserved, peak, …); `.memory consumers` the
                   operators holding memory now; `.memory stats|pressure [--history]|leaks|cleanup`
                   as `gobi memory …` reports them; leaks: memory held past its statement
  .mode M          how results print: table, csv, json, line, markdown
  .maxrows N       the most rows a table shows (0: all)
  .timer on|off    print each statement's run time
  .plan [--analyze] Q   how query Q runs, as `gobi plan` shows it
  .read FILE       run the statements in FILE
  .output [FILE]   write results to FILE (none: to the screen again)
  .import FILE T   load FILE (.csv, .parquet, .json) into table T, creating it if needed
  .help            this text
  .quit            leave
";

/// The words highlighted as keywords and offered by completion, besides the session's names.
const KEYWORDS: &[&str] = &[
    "SELECT",
    "FROM",
    "WHERE",
    "GROUP",
    "BY",
    "ORDER",
    "HAVING",
    "LIMIT",
    "OFFSET",
    "JOIN",
    "LEFT",
    "RIGHT",
    "FULL",
    "INNER",
    "OUTER",
    "CROSS",
    "ON",
    "USING",
    "AS",
    "AND",
    "OR",
    "NOT",
    "NULL",
    "IS",
    "IN",
    "BETWEEN",
    "LIKE",
    "ILIKE",
    "CASE",
    "WHEN",
    "THEN",
    "ELSE",
    "END",
    "DISTINCT",
    "UNION",
    "ALL",
    "EXCEPT",
    "INTERSECT",
    "WITH",
    "INSERT",
    "INTO",
    "VALUES",
    "UPDATE",
    "SET",
    "DELETE",
    "CREATE",
    "REPLACE",
    "TABLE",
    "VIEW",
    "DROP",
    "ALTER",
    "ADD",
    "COLUMN",
    "DESCRIBE",
    "SHOW",
    "TABLES",
    "FUNCTIONS",
    "HISTORY",
    "EXPLAIN",
    "ANALYZE",
    "COPY",
    "TO",
    "LET",
    "FUNCTION",
    "RETURNS",
    "RETURN",
    "IF",
    "ELIF",
    "MATCH",
    "EXTEND",
    "AGGREGATE",
    "OVER",
    "PARTITION",
    "ASC",
    "DESC",
    "TRUE",
    "FALSE",
    "CAST",
    "VERSION",
    "TIMESTAMP",
    "OF",
    "EXISTS",
    "PRIMARY",
    "KEY",
    "DEFAULT",
];

const DOT_COMMANDS: &[&str] =
    &[".tables", ".schema", ".vars", ".memory", ".mode", ".maxrows", ".timer", ".plan", ".read", ".output", ".import", ".help", ".quit"];

/// Completion and highlighting; the names are refreshed after every statement.
#[derive(Helper, Hinter, Validator, Default)]
struct GrizzlyHelper {
    names: Vec<String>,
    variables: Vec<String>,
    color: bool,
}

impl GrizzlyHelper {
    fn refresh(&mut self, runtime: &tokio::runtime::Runtime, session: &Session) {
        let mut names = session.table_names();
        for table in session.table_names() {
            if let Ok(provider) = runtime.block_on(session.context().table_provider(table.as_str())) {
                names.extend(provider.schema().fields().iter().map(|f| f.name().clone()));
            }
        }
        names.extend(session.function_names());
        names.sort();
        names.dedup();
        self.names = names;
        self.variables = session.variables().into_iter().map(|v| v.name).collect();
    }
}

impl Completer for GrizzlyHelper {
    type Candidate = Pair;

    fn complete(&self, line: &str, pos: usize, _ctx: &Context<'_>) -> rustyline::Result<(usize, Vec<Pair>)> {
        let start = line[..pos].char_indices().rev().find(|(_, c)| !(c.is_alphanumeric() || matches!(c, '_' | '$' | '.'))).map_or(0, |(i, c)| i + c.len_utf8());
        let word = &line[start..pos];
        if word.is_empty() {
            return Ok((pos, vec![]));
        }
        let lower = word.to_lowercase();
        let pair = |text: String| Pair { display: text.clone(), replacement: text };
        let candidates: Vec<Pair> = if let Some(variable) = lower.strip_prefix('$') {
            self.variables.iter().filter(|v| v.starts_with(variable)).map(|v| pair(format!("${v}"))).collect()
        } else if start == 0 && word.starts_with('.') {
            DOT_COMMANDS.iter().filter(|c| c.starts_with(&lower)).map(|c| pair(c.to_string())).collect()
        } else {
            let lowercase_word = word.chars().next().is_some_and(char::is_lowercase);
            let keywords =
                KEYWORDS.iter().filter(|k| k.to_lowercase().starts_with(&lower)).map(|k| if lowercase_word { k.to_lowercase() } else { k.to_string() });
            let names = self.names.iter().filter(|n| n.to_lowercase().starts_with(&lower)).cloned();
            names.chain(keywords).map(pair).collect()
        };
        Ok((start, candidates))
    }
}

impl Highlighter for GrizzlyHelper {
    fn highlight<'l>(&self, line: &'l str, _pos: usize) -> Cow<'l, str> {
        if !self.color {
            return Cow::Borrowed(line);
        }
        highlight(line).map_or(Cow::Borrowed(line), Cow::Owned)
    }

    fn highlight_char(&self, _line: &str, _pos: usize, _kind: CmdKind) -> bool {
        self.color
    }
}

/// The line with ANSI colors: keywords bold blue, strings green, numbers yellow, variables
/// magenta, pipes cyan, comments dim. `None` when the line does not tokenize (an open quote).
fn highlight(line: &str) -> Option<String> {
    let tokens = Tokenizer::new(&GrizzlyDialect, line).tokenize_with_location().ok()?;
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::with_capacity(line.len() * 2);
    let mut done = 0usize;
    for token in tokens {
        let (from, to) = (token.span.start.column as usize, token.span.end.column as usize);
        if token.span.start.line != 1 || token.span.end.line != 1 || from == 0 || from <= done {
            continue;
        }
        let text: String = chars[from - 1..(to - 1).min(chars.len())].iter().collect();
        let color = match &token.token {
            Token::Word(w) if w.quote_style.is_none() && KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(&w.value)) => "1;34",
            Token::SingleQuotedString(_) => "32",
            Token::Number(..) => "33",
            Token::Placeholder(_) => "35",
            Token::VerticalBarRightAngleBracket => "36",
            Token::Whitespace(Whitespace::SingleLineComment { .. } | Whitespace::MultiLineComment(_)) => "2",
            _ => "",
        };
        out.extend(&chars[done..from - 1]);
        if color.is_empty() {
            out.push_str(&text);
        } else {
            out.push_str(&format!("\x1b[{color}m{text}\x1b[0m"));
        }
        done = (to - 1).min(chars.len());
    }
    out.extend(&chars[done.min(chars.len())..]);
    Some(out)
}

/// What the dot commands change for the statements after them.
struct Shell {
    printer: Printer,
    /// `.timer on`: each statement's run time on stderr.
    timer: bool,
    /// Told of each Ctrl-C (see [`watch_ctrl_c`]).
    ctrl_c: Arc<Notify>,
}

pub fn run(runtime: &tokio::runtime::Runtime, session: Session, printer: Printer) -> CliResult {
    let mut shell = Shell { printer, timer: false, ctrl_c: watch_ctrl_c(session.stops())? };
    let mut editor: Editor<GrizzlyHelper, DefaultHistory> = Editor::new().map_err(|e| GobiError::internal(e.to_string()))?;
    let mut helper = GrizzlyHelper { color: std::env::var_os("NO_COLOR").is_none(), ..Default::default() };
    helper.refresh(runtime, &session);
    editor.set_helper(Some(helper));
    let history = session.lakehouse().map(|l| l.root().join("_gobi").join("history"));
    if let Some(history) = &history {
        let _ = editor.load_history(history);
    }
    eprintln!("gobi {} — .help for help, .quit to leave", env!("CARGO_PKG_VERSION"));
    if session.lakehouse().is_none() {
        eprintln!("in memory (no lakehouse here): tables last until you leave; `gobi init DIR` makes a lakehouse");
    }
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() { "gobi> " } else { "  ... " };
        match editor.readline(prompt) {
            Ok(line) => {
                let command = line.trim_start();
                // A dot command is one even after unfinished input (which it discards).
                if command.starts_with('.') && command[1..].starts_with(|c: char| c.is_ascii_alphabetic()) {
                    let _ = editor.add_history_entry(line.as_str());
                    if !buffer.trim().is_empty() {
                        eprintln!("(the unfinished statement was dropped)");
                    }
                    buffer.clear();
                    if dot_command(runtime, &session, &mut shell, command.trim_end()) == Flow::Quit {
                        break;
                    }
                    continue;
                }
                if buffer.is_empty() && command.starts_with('\\') {
                    eprintln!("{} is a psql command; gobi's commands start with `.` (.help lists them)", command.split_whitespace().next().unwrap_or(command));
                    continue;
                }
                let ends_at_empty_line = line.trim().is_empty() && !buffer.trim().is_empty();
                buffer.push_str(&line);
                buffer.push('\n');
                if !ends_at_empty_line && !is_complete(&buffer) {
                    continue;
                }
                let source = std::mem::take(&mut buffer);
                if source.trim().is_empty() {
                    continue;
                }
                let _ = editor.add_history_entry(source.trim_end());
                run_cancellable(runtime, &session, &source, &shell);
                if let Some(helper) = editor.helper_mut() {
                    helper.refresh(runtime, &session);
                }
            }
            Err(ReadlineError::Interrupted) => buffer.clear(),
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(GobiError::internal(e.to_string()).into()),
        }
    }
    if let Some(history) = &history {
        let _ = editor.save_history(history);
    }
    runtime.block_on(session.close());
    Ok(())
}

/// Ctrl-C, seen on a thread of its own: tokio hears signals on the runtime's idle workers,
/// and a query can keep every worker busy. Each Ctrl-C stops the session's running
/// statements (their operators fail at their next poll) and tells the REPL, which drops the
/// statement's future (for what waits outside the operators: admission, a commit).
fn watch_ctrl_c(stops: Stops) -> Result<Arc<Notify>, GobiError> {
    let ctrl_c = Arc::new(Notify::new());
    let told = Arc::clone(&ctrl_c);
    let signals = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| GobiError::internal(e.to_string()))?;
    std::thread::Builder::new()
        .name("gobi-ctrl-c".into())
        .spawn(move || {
            signals.block_on(async {
                while tokio::signal::ctrl_c().await.is_ok() {
                    stops.stop_all();
                    told.notify_waiters();
                }
            })
        })
        .map_err(|e| GobiError::internal(e.to_string()))?;
    Ok(ctrl_c)
}

/// Runs the statements until they finish or Ctrl-C arrives; dropping the future stops the
/// query, and an unfinished write never commits.
fn run_cancellable(runtime: &tokio::runtime::Runtime, session: &Session, source: &str, shell: &Shell) {
    let started = std::time::Instant::now();
    let outcome = runtime.block_on(async {
        tokio::select! {
            result = run_statements(session, source, &shell.printer) => result.map(|_| ()),
            () = shell.ctrl_c.notified() => Err(Failure::from(GobiError::cancelled())),
        }
    });
    if let Err(failure) = outcome {
        eprint!("{}", failure.error.render(failure.source.as_deref()));
    }
    if shell.timer {
        eprintln!("Run Time: {:.3} s", started.elapsed().as_secs_f64());
    }
}

#[derive(PartialEq)]
enum Flow {
    Continue,
    Quit,
}

fn dot_command(runtime: &tokio::runtime::Runtime, session: &Session, shell: &mut Shell, line: &str) -> Flow {
    let mut words = line.split_whitespace();
    let sql = match (words.next(), words.next()) {
        (Some(".quit" | ".exit"), _) => return Flow::Quit,
        (Some(".help"), _) => {
            eprint!("{HELP}");
            return Flow::Continue;
        }
        (Some(".vars"), _) => {
            if let Err(e) = print_variables(runtime, session, &shell.printer) {
                eprint!("{}", e.render(None));
            }
            return Flow::Continue;
        }
        (Some(".mode"), Some(mode)) => {
            match <crate::output::Format as clap::ValueEnum>::from_str(mode, true) {
                Ok(format) => shell.printer.format = format,
                Err(_) => eprintln!("unknown mode {mode}; one of table, csv, json, line, markdown"),
            }
            return Flow::Continue;
        }
        (Some(".maxrows"), Some(rows)) => {
            match rows.parse() {
                Ok(rows) => shell.printer.layout.max_rows = rows,
                Err(_) => eprintln!("usage: .maxrows N (0 for all rows)"),
            }
            return Flow::Continue;
        }
        (Some(".timer"), Some(switch @ ("on" | "off"))) => {
            shell.timer = switch == "on";
            return Flow::Continue;
        }
        (Some(".output"), file) => {
            match file.map(std::fs::File::create).transpose() {
                Ok(file) => shell.printer.output_to(file),
                Err(e) => eprintln!("cannot write {}: {e}", file.unwrap_or_default()),
            }
            return Flow::Continue;
        }
        (Some(".read"), Some(file)) => match std::fs::read_to_string(file) {
            Ok(script) => script,
            Err(e) => {
                eprintln!("cannot read {file}: {e}");
                return Flow::Continue;
            }
        },
        (Some(".import"), Some(file)) => match words.next() {
            Some(table) if session.lakehouse().is_some_and(|l| l.table_exists(table)) => format!("COPY '{}' TO {table}", file.replace('\'', "''")),
            Some(table) => format!("CREATE TABLE {table} AS SELECT * FROM '{}'", file.replace('\'', "''")),
            None => {
                eprintln!("usage: .import FILE TABLE");
                return Flow::Continue;
            }
        },
        (Some(".tables"), _) => "SHOW TABLES".to_string(),
        (Some(".memory"), None) => "SHOW MEMORY".to_string(),
        (Some(".memory"), Some("consumers")) => "SELECT * FROM gobi_memory_consumers()".to_string(),
        (Some(".memory"), Some(what @ ("stats" | "pressure" | "leaks" | "cleanup"))) => {
            let report = match what {
                "stats" => crate::memory::Report::Stats,
                "pressure" => crate::memory::Report::Pressure { history: words.next() == Some("--history") },
                "leaks" => crate::memory::Report::Leaks,
                _ => crate::memory::Report::Cleanup,
            };
            match runtime.block_on(crate::memory::report(session, report, shell.printer.format())) {
                Ok(text) => {
                    if let Err(e) = shell.printer.print_line(text.trim_end()) {
                        eprint!("{}", e.render(None));
                    }
                }
                Err(e) => eprint!("{}", e.render(None)),
            }
            return Flow::Continue;
        }
        (Some(".plan"), Some(_)) => {
            let rest = line.trim_start().trim_start_matches(".plan").trim_start();
            let (analyze, query) = match rest.strip_prefix("--analyze") {
                Some(query) => (true, query.trim_start()),
                None => (false, rest),
            };
            if let Err(failure) = runtime.block_on(crate::plan::print(session, query, analyze, shell.printer.format(), &shell.printer)) {
                eprint!("{}", failure.error.render(Some(query)));
            }
            return Flow::Continue;
        }
        (Some(".schema"), Some(table)) => format!("DESCRIBE {table}"),
        (Some(".schema"), None) => {
            eprintln!("usage: .schema TABLE");
            return Flow::Continue;
        }
        (Some(other @ (".mode" | ".maxrows" | ".timer" | ".plan" | ".read" | ".import")), _) => {
            let usage = HELP.lines().find(|l| l.trim_start().starts_with(other)).unwrap_or(other).trim();
            eprintln!("usage: {usage}");
            return Flow::Continue;
        }
        (Some(other), _) => {
            eprintln!("unknown command {other}; .help lists the commands");
            return Flow::Continue;
        }
        (None, _) => return Flow::Continue,
    };
    run_cancellable(runtime, session, &sql, shell);
    Flow::Continue
}

/// `.vars`: name, type and size of every variable.
fn print_variables(runtime: &tokio::runtime::Runtime, session: &Session, printer: &Printer) -> Result<(), GobiError> {
    let variables = session.variables();
    let schema = Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("type", DataType::Utf8, false),
        Field::new("size", DataType::Utf8, false),
    ]));
    let column = |f: &dyn Fn(&gobi_engine::VariableSummary) -> String| Arc::new(StringArray::from(variables.iter().map(f).collect::<Vec<_>>())) as _;
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            // Scalars are read as `$name`, tables by their bare name.
            column(&|v| if v.type_name.starts_with("table(") { v.name.clone() } else { format!("${}", v.name) }),
            column(&|v| v.type_name.clone()),
            column(&|v| gobi_memory::ByteSize(v.bytes as u64).to_string()),
        ],
    )
    .map_err(|e| GobiError::internal(e.to_string()))?;
    runtime.block_on(printer.print(Output::rows(vec![batch], schema), None)).map(|_| ())
}
