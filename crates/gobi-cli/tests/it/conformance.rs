//! The conformance corpus: no file may pass fewer records than CONFORMANCE.md records.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use gobi_slt::Counts;

use crate::support::{require, shared_dir};

const GOBI_SLT: &str = env!("CARGO_BIN_EXE_gobi-slt");

/// The committed counts: `| `file` | passed | failed | skipped | …` rows of CONFORMANCE.md.
fn committed() -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../CONFORMANCE.md")).unwrap();
    text.lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let file = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            Some((file.to_string(), cells.get(2)?.parse().ok()?))
        })
        .collect()
}

/// Runs `gobi-slt` on the committed files under `dir` (their paths relative to it).
fn run_corpus(dir: &Path, files: &[&String]) -> BTreeMap<String, Counts> {
    let out = tempfile::NamedTempFile::new().unwrap();
    let output = Command::new(GOBI_SLT).args(files.iter().map(|f| f.as_str())).arg("--json").arg(out.path()).current_dir(dir).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(matches!(output.status.code(), Some(0 | 1)), "gobi-slt broke: {}", String::from_utf8_lossy(&output.stderr));
    let counts: BTreeMap<String, Counts> = serde_json::from_slice(&std::fs::read(out.path()).unwrap()).unwrap();
    let mut total = Counts::default();
    for (file, c) in &counts {
        assert!(stdout.contains(&format!("{file}: {c}\n")), "no line for {file} in:\n{stdout}");
        total += *c;
    }
    assert_eq!(stdout.lines().last().unwrap(), total.to_string());
    counts
}

#[test]
fn no_conformance_file_passes_fewer_records_than_committed() {
    let Some(shared) = shared_dir() else {
        require(false, "the shared conformance corpus (../shared/conformance/public)");
        return;
    };
    let public = shared.join("conformance/public");
    let committed = committed();
    assert!(committed.len() >= 20, "CONFORMANCE.md lists {} files", committed.len());
    let (sqlite, datafusion): (Vec<&String>, Vec<&String>) = committed.keys().partition(|f| f.starts_with("sqlite-run/"));
    let mut actual = run_corpus(&public, &sqlite);
    actual.extend(run_corpus(&public.join("datafusion/datafusion/sqllogictest"), &datafusion));
    let regressions: Vec<String> = committed
        .iter()
        .filter(|(file, passed)| actual[*file].passed < **passed)
        .map(|(file, passed)| format!("{file}: {} passed, {passed} committed", actual[file].passed))
        .collect();
    assert!(regressions.is_empty(), "conformance dropped:\n{}", regressions.join("\n"));
}

#[test]
fn gobi_slt_goes_on_after_a_failure_and_logs_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("mixed.slt"),
        "statement ok\nCREATE TABLE t (a INT)\n\nstatement ok\nINSERT INTO t VALUES (1), (2)\n\n\
         query I\nSELECT sum(a) FROM t\n----\n4\n\n\
         onlyif sqlite\nquery I\nSELECT 1\n----\n1\n\n\
         query I rowsort\nSELECT a FROM t\n----\n1\n2\n",
    )
    .unwrap();
    let output = Command::new(GOBI_SLT).args(["mixed.slt", "--json", "counts.json", "--fail-log", "failures.log"]).current_dir(dir.path()).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "a failed record makes the run fail");
    assert_eq!(stdout, "mixed.slt: 3 passed, 1 failed, 1 skipped\n3 passed, 1 failed, 1 skipped\n");
    let counts: BTreeMap<String, Counts> = serde_json::from_slice(&std::fs::read(dir.path().join("counts.json")).unwrap()).unwrap();
    assert_eq!(counts["mixed.slt"], Counts { passed: 3, failed: 1, skipped: 1 });
    let log = std::fs::read_to_string(dir.path().join("failures.log")).unwrap();
    assert!(log.contains("SELECT sum(a) FROM t"), "{log}");
    assert!(log.contains('3') && log.contains('4'), "expected and actual values are logged: {log}");
}
