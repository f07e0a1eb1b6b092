//! Querying files: Parquet, CSV, JSON and Delta folders, and `--data` for benchmarks.

use std::io::Read;
use std::time::{Duration, Instant};

use crate::rows;
use crate::support::{gobi, gobi_started, parse_json_rows, Lakehouse};

#[test]
fn parquet_csv_json_and_delta_folders_are_tables() {
    let lh = Lakehouse::new();
    lh.run("CREATE TABLE t (a INT, b STRING); INSERT INTO t VALUES (1, 'x'), (2, 'y')").ok();
    lh.run("COPY (SELECT * FROM t) TO 'out.parquet'; COPY (SELECT * FROM t) TO 'out.csv'; COPY (SELECT * FROM t) TO 'out.json'").ok();
    for file in ["out.parquet", "out.csv", "out.json"] {
        assert_eq!(lh.values(&format!("SELECT a, b FROM '{file}' ORDER BY a")), rows![[1, "x"], [2, "y"]], "{file}");
    }
    lh.run("DELETE FROM t WHERE a = 1").ok();
    // A Delta folder is read through its log: the deleted row's file is not read.
    assert_eq!(lh.values("SELECT a, b FROM 'tables/t'"), rows![[2, "y"]]);
}

#[test]
fn insert_from_a_file() {
    let lh = Lakehouse::new();
    std::fs::write(lh.path().join("more.csv"), "id,name\n7,Gus\n8,Hal\n").unwrap();
    lh.run("CREATE TABLE users (id BIGINT, name STRING); INSERT INTO users SELECT * FROM 'more.csv'").ok();
    assert_eq!(lh.values("SELECT * FROM users ORDER BY id"), rows![[7, "Gus"], [8, "Hal"]]);
}

#[test]
fn data_mode_reads_parquet_files_without_a_lakehouse_and_prints_a_summary() {
    let lh = Lakehouse::new();
    let data = tempfile::tempdir().unwrap();
    let target = data.path().join("nums.parquet");
    lh.run(&format!("COPY (SELECT * FROM (VALUES (1), (2), (3)) v(n)) TO '{}'", target.display())).ok();
    let query = data.path().join("q.sql");
    std::fs::write(&query, "create view big as select n from nums where n > 1;\nselect n from big order by n;\ndrop view big;").unwrap();
    let run =
        gobi(&["query", "--file", query.to_str().unwrap(), "--data", data.path().to_str().unwrap(), "--summary", "json", "--format", "json"], data.path()).ok();
    let last: serde_json::Value = serde_json::from_str(run.stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["rows"], 2);
    assert!(last["seconds"].as_f64().unwrap() > 0.0);
    let results: Vec<&str> = run.stdout.lines().filter(|l| l.starts_with('[')).collect();
    assert_eq!(parse_json_rows(results[0]), rows![[2], [3]]);
    assert!(!data.path().join("gobi.toml").exists());
}

/// The summary's seconds are the engine's: a reader that takes the rows slowly (here, not at
/// all for two seconds, with far more than a pipe holds still to come) does not add its pause.
#[test]
fn a_slow_reader_of_the_rows_is_not_in_the_summary_seconds() {
    let lh = Lakehouse::new();
    let started = Instant::now();
    let query = "SELECT value, md5(CAST(value AS STRING)) AS h FROM generate_series(1, 100000)";
    let mut child = gobi_started(&["query", "--format", "csv", "--summary", "json", query], lh.path());
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    stdout.read_exact(&mut first).unwrap();
    let pause = Duration::from_secs(2);
    std::thread::sleep(pause);
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert!(child.wait().unwrap().success());
    let elapsed = started.elapsed();
    let summary: serde_json::Value = serde_json::from_str(rest.lines().last().unwrap()).unwrap();
    assert_eq!(summary["rows"], 100000);
    let seconds = summary["seconds"].as_f64().unwrap();
    assert!(seconds > 0.0 && seconds < (elapsed - pause * 3 / 4).as_secs_f64(), "{seconds} s in the summary, {elapsed:?} in all with a {pause:?} pause");
}

#[test]
fn repeat_runs_a_warm_up_and_timed_runs_printing_once_with_the_result_cache_off() {
    let lh = Lakehouse::new();
    lh.run("CREATE TABLE t AS SELECT * FROM (VALUES (1), (2), (3)) v(n)").ok();
    let count = "SELECT count(*) AS n FROM t";
    let run = gobi(&["query", "--format", "csv", "--repeat", "2", "--summary", "json", count], lh.path()).ok();
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines[..2], ["n", "3"], "the warm-up's rows are printed, the timed runs' are not: {}", run.stdout);
    let summary: serde_json::Value = serde_json::from_str(lines[2]).unwrap();
    assert_eq!(lines.len(), 3, "{}", run.stdout);
    assert_eq!(summary["rows"], 1);
    let times = summary["times"].as_array().unwrap();
    assert_eq!(times.len(), 3, "warm-up and two timed runs: {summary}");
    assert!(times.iter().all(|t| t.as_f64().unwrap() > 0.0), "{summary}");
    let from_cache = gobi(&["query", "--format", "csv", &format!("SELECT from_cache FROM gobi_query_log() WHERE text = '{count}'")], lh.path()).ok();
    assert_eq!(from_cache.stdout.lines().collect::<Vec<_>>(), ["from_cache", "false", "false", "false"], "every run ran");
}
