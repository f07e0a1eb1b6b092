//! `gobi-slt`: runs sqllogictest files against gobi; the runner is the `gobi-slt` library.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use gobi_slt::{run_file, Counts};

#[derive(Parser)]
#[command(
    name = "gobi-slt",
    about = "Run sqllogictest files against gobi, counting passed, failed and skipped records.",
    after_help = "Example:\n  cd ../shared/conformance/public && gobi-slt sqlite-run/*.slt --json counts.json"
)]
struct Cli {
    /// The .slt files to run.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Write per-file counts to this JSON file.
    #[arg(long, value_name = "OUT")]
    json: Option<PathBuf>,
    /// Write each failing record with its expected and actual output to this file.
    #[arg(long, value_name = "F")]
    fail_log: Option<PathBuf>,
    /// Extra labels for `skipif`/`onlyif` (the engine's own name, `gobi`, always counts).
    #[arg(long)]
    label: Vec<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut fail_log = match cli.fail_log.as_ref().map(std::fs::File::create).transpose() {
        Ok(log) => log,
        Err(e) => {
            eprintln!("error: cannot create the fail log: {e}");
            return ExitCode::from(2);
        }
    };
    let mut per_file = BTreeMap::new();
    let mut total = Counts::default();
    for file in &cli.files {
        let log = fail_log.as_mut().map(|f| f as &mut dyn std::io::Write);
        let counts = match run_file(file, &cli.label, log).await {
            Ok(counts) => counts,
            Err(message) => {
                eprintln!("error: {}: {message}", file.display());
                return ExitCode::from(2);
            }
        };
        println!("{}: {counts}", file.display());
        total += counts;
        per_file.insert(file.display().to_string(), counts);
    }
    if let Some(json) = &cli.json {
        let text = serde_json::to_string_pretty(&per_file).expect("counts serialize");
        if let Err(e) = std::fs::write(json, text + "\n") {
            eprintln!("error: cannot write {}: {e}", json.display());
            return ExitCode::from(2);
        }
    }
    println!("{total}");
    if total.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
