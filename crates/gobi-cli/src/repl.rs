//! `gobi repl`: statements end at `;`; dot commands inspect the lakehouse.

use rustyline::error::ReadlineError;
use rustyline::DefaultEditor;

use gobi_engine::{GobiError, Session};
use gobi_lang::is_complete;

use crate::output::Printer;
use crate::{run_statements, CliResult, Failure};

const HELP: &str = "\
Statements end with `;` and may span lines. Ctrl-C cancels a running query (or clears the
input), Ctrl-D or .quit leaves.

  .tables        the tables and views of the lakehouse
  .schema T      the columns of table T
  .help          this text
  .quit          leave
";

pub fn run(runtime: &tokio::runtime::Runtime, session: Session, printer: &Printer) -> CliResult {
    let mut editor = DefaultEditor::new().map_err(|e| GobiError::internal(e.to_string()))?;
    let history = session.lakehouse().map(|l| l.root().join("_gobi").join("history"));
    if let Some(history) = &history {
        let _ = editor.load_history(history);
    }
    eprintln!("gobi {} — .help for help, .quit to leave", env!("CARGO_PKG_VERSION"));
    let mut buffer = String::new();
    loop {
        let prompt = if buffer.is_empty() { "gobi> " } else { "  ... " };
        match editor.readline(prompt) {
            Ok(line) => {
                if buffer.is_empty() && line.trim_start().starts_with('.') {
                    let _ = editor.add_history_entry(line.as_str());
                    if dot_command(runtime, &session, printer, line.trim()) == Flow::Quit {
                        break;
                    }
                    continue;
                }
                buffer.push_str(&line);
                buffer.push('\n');
                if !is_complete(&buffer) {
                    continue;
                }
                let source = std::mem::take(&mut buffer);
                let _ = editor.add_history_entry(source.trim_end());
                run_cancellable(runtime, &session, &source, printer);
            }
            Err(ReadlineError::Interrupted) => buffer.clear(),
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(GobiError::internal(e.to_string()).into()),
        }
    }
    if let Some(history) = &history {
        let _ = editor.save_history(history);
    }
    Ok(())
}

/// Runs the statements until they finish or Ctrl-C arrives; dropping the future stops the
/// query, and an unfinished write never commits.
fn run_cancellable(runtime: &tokio::runtime::Runtime, session: &Session, source: &str, printer: &Printer) {
    let outcome = runtime.block_on(async {
        tokio::select! {
            result = run_statements(session, source, printer) => result.map(|_| ()),
            _ = tokio::signal::ctrl_c() => Err(Failure::from(GobiError::new(gobi_engine::ErrorKind::Cancelled, "query cancelled"))),
        }
    });
    if let Err(failure) = outcome {
        eprint!("{}", failure.error.render(failure.source.as_deref()));
    }
}

#[derive(PartialEq)]
enum Flow {
    Continue,
    Quit,
}

fn dot_command(runtime: &tokio::runtime::Runtime, session: &Session, printer: &Printer, line: &str) -> Flow {
    let mut words = line.split_whitespace();
    let sql = match (words.next(), words.next()) {
        (Some(".quit" | ".exit"), _) => return Flow::Quit,
        (Some(".help"), _) => {
            eprint!("{HELP}");
            return Flow::Continue;
        }
        (Some(".tables"), _) => "SHOW TABLES".to_string(),
        (Some(".schema"), Some(table)) => format!("DESCRIBE {table}"),
        (Some(".schema"), None) => {
            eprintln!("usage: .schema TABLE");
            return Flow::Continue;
        }
        (Some(other), _) => {
            eprintln!("unknown command {other}; .help lists the commands");
            return Flow::Continue;
        }
        (None, _) => return Flow::Continue,
    };
    run_cancellable(runtime, session, &sql, printer);
    Flow::Continue
}
