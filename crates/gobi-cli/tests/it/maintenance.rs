//! Table maintenance through the binary: OPTIMIZE, VACUUM, RESTORE, DESCRIBE DETAIL and
//! checkpoints, on real Delta tables.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::rows;
use crate::support::{gobi_started, Lakehouse};

/// Everything the table holds, in one row: a change to any value shows.
const CHECKSUM: &str = "SELECT count(*) AS n, sum(id) AS ids, string_agg(name, ',' ORDER BY id) AS names FROM t";

fn detail(lh: &Lakehouse) -> serde_json::Map<String, Value> {
    let run = crate::support::gobi(&["query", "--format", "json", "DESCRIBE DETAIL t"], lh.path()).ok();
    let rows: Vec<serde_json::Map<String, Value>> = serde_json::from_str(run.stdout.lines().rev().find(|l| l.starts_with('[')).unwrap()).unwrap();
    rows.into_iter().next().unwrap()
}

fn data_files(lh: &Lakehouse) -> usize {
    std::fs::read_dir(lh.path().join("tables/t")).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".parquet")).count()
}

#[test]
fn optimize_compacts_small_files_in_one_commit_and_keeps_every_value_while_an_insert_lands() {
    let lh = Lakehouse::new();
    let inserts: Vec<String> = (1..=20).map(|i| format!("INSERT INTO t VALUES ({i}, 'n{i}')")).collect();
    lh.run(&format!("CREATE TABLE t (id BIGINT, name STRING); {}", inserts.join("; "))).ok();
    let before = lh.values(CHECKSUM);
    let described = detail(&lh);
    assert_eq!((described["files"].as_u64(), described["small_files"].as_u64()), (Some(20), Some(20)), "{described:?}");
    assert!(described["advice"].as_str().unwrap().contains("OPTIMIZE t"), "{described:?}");
    let commits = lh.commits("t");

    // An INSERT from another process while OPTIMIZE runs: both land, whichever commits first.
    let insert = gobi_started(&["query", "INSERT INTO t VALUES (21, 'n21')"], lh.path());
    let optimized = lh.run("OPTIMIZE t").ok();
    let inserted = insert.wait_with_output().unwrap();
    assert!(inserted.status.success(), "{}", String::from_utf8_lossy(&inserted.stderr));
    assert!(optimized.stderr.contains("optimized t: 20 files") || optimized.stderr.contains("optimized t: 21 files"), "{}", optimized.stderr);
    assert_eq!(lh.commits("t"), commits + 2, "one commit for OPTIMIZE, one for the INSERT");
    let history = lh.values("SHOW HISTORY t");
    assert!(history[..2].iter().any(|row| row[2] == "OPTIMIZE"), "{history:?}");

    lh.run("DELETE FROM t WHERE id = 21").ok();
    assert_eq!(lh.values(CHECKSUM), before, "every row and value as before");
    let described = detail(&lh);
    assert!(described["files"].as_u64().unwrap() <= 2, "{described:?}");
    assert_eq!(described["advice"], "", "{described:?}");
    // Nothing left to compact: no commit.
    let commits = lh.commits("t");
    let again = lh.run("OPTIMIZE t").ok();
    assert!(again.stderr.contains("nothing done") || lh.commits("t") == commits + 1, "{}", again.stderr);
}

#[test]
fn optimize_zorder_clusters_rows_and_keeps_them() {
    let lh = Lakehouse::new();
    lh.run("CREATE TABLE t AS SELECT value AS id, 'n' || (value % 97) AS name FROM generate_series(1, 5000); INSERT INTO t VALUES (5001, 'last')").ok();
    let before = lh.values(CHECKSUM);
    let run = lh.run("OPTIMIZE t ZORDER BY (name, id)").ok();
    assert!(run.stderr.contains("optimized t"), "{}", run.stderr);
    assert_eq!(lh.values(CHECKSUM), before);
    let run = lh.run("OPTIMIZE t ZORDER BY (nmae)").user_error();
    assert!(run.stderr.contains("table t has no column nmae") && run.stderr.contains("did you mean name?"), "{}", run.stderr);
}

#[test]
fn vacuum_removes_a_killed_writers_files_and_nothing_a_retained_version_needs() {
    let lh = Lakehouse::new();
    lh.run("CREATE TABLE t (id BIGINT, name STRING); INSERT INTO t VALUES (1, 'a'), (2, 'b'); UPDATE t SET name = 'B' WHERE id = 2").ok();
    // A writer killed after writing a data file, before its commit.
    // Its output is never read: it prints nothing before it is killed.
    let mut writer =
        gobi_started(&["--memory-query", "16MiB", "query", "INSERT INTO t SELECT value, repeat('x', 50) FROM generate_series(1, 400000000)"], lh.path());
    let files_before = data_files(&lh);
    let started = Instant::now();
    while data_files(&lh) == files_before && started.elapsed() < Duration::from_secs(60) {
        assert!(writer.try_wait().unwrap().is_none(), "the insert finished before it could be killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(writer.id() as i32, libc::SIGKILL) };
    writer.wait().unwrap();
    let orphans = data_files(&lh) - files_before;
    assert!(orphans > 0, "the killed insert left a data file");

    // Within the default retention (7 days) nothing is old enough to go.
    let run = lh.run("VACUUM t").ok();
    assert!(run.stderr.contains("no file to remove"), "{}", run.stderr);
    assert_eq!(lh.values("SELECT name FROM t AS OF VERSION 1 ORDER BY id"), rows![["a"], ["b"]], "time travel inside the retention");

    // A shorter retention must be asked for, and says what it costs.
    let run = lh.run("VACUUM t RETAIN 0 HOURS").user_error();
    assert!(run.stderr.contains("could no longer be read") && run.stderr.contains("maintenance.allow_short_retention"), "{}", run.stderr);
    let short = "SET maintenance.allow_short_retention = on; ";
    let planned = lh.values(&format!("{short} VACUUM t RETAIN 0 HOURS DRY RUN"));
    let planned_parquet = planned.iter().filter(|row| row[0].as_str().unwrap().ends_with(".parquet")).count();
    assert_eq!(planned_parquet, orphans + 1, "the killed writer's files and the file the UPDATE replaced: {planned:?}");
    assert!(planned.iter().any(|row| row[1].as_u64() > Some(0)), "{planned:?}");
    assert_eq!(data_files(&lh), files_before + orphans, "a dry run deletes nothing");
    let run = lh.run(&format!("{short} VACUUM t RETAIN 0 HOURS")).ok();
    assert!(run.stderr.contains(&format!("removed {} files", planned.len())), "{}", run.stderr);
    assert!(run.stderr.contains("versions before 2 can no longer be read"), "{}", run.stderr);
    let left: Vec<_> = crate::support::files_under(&lh.path().join("tables/t")).into_iter().filter(|f| !f.to_string_lossy().contains("_delta_log")).collect();
    assert_eq!(left.len(), 1, "only the current version's file: {left:?}");
    assert_eq!(lh.values("SELECT id, name FROM t ORDER BY id"), rows![[1, "a"], [2, "B"]], "the current version keeps every file");
}

#[test]
fn restore_brings_back_a_versions_rows_in_one_commit() {
    let lh = Lakehouse::new();
    lh.run("CREATE TABLE t (id BIGINT, name STRING); INSERT INTO t VALUES (1, 'a'), (2, 'b'); UPDATE t SET name = 'oops'").ok();
    let commits = lh.commits("t");
    let run = lh.run("RESTORE TABLE t TO VERSION 1").ok();
    assert!(run.stderr.contains("restored t to version 1 as version 3"), "{}", run.stderr);
    assert_eq!(lh.commits("t"), commits + 1);
    assert_eq!(lh.values("SELECT id, name FROM t ORDER BY id"), rows![[1, "a"], [2, "b"]]);
    assert_eq!(lh.values("SELECT name FROM t AS OF VERSION 2 ORDER BY id"), rows![["oops"], ["oops"]], "the bad version stays in the history");
    let run = lh.run("RESTORE TABLE t TO VERSION 9").user_error();
    assert!(run.stderr.contains("is at version 3"), "{}", run.stderr);
}

/// The checkpoint files in a Delta log folder, by name.
fn checkpoints(log: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(log).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.contains(".checkpoint.")).collect();
    names.sort();
    names
}

/// gobi's own logs are checkpointed like its tables: a process appending to the query log
/// replays at most ten of its commits, not delta-rs's default of a hundred.
#[test]
fn the_query_log_is_checkpointed_every_ten_commits() {
    let lh = Lakehouse::new();
    for rows in 1..=10 {
        lh.run(&format!("SELECT count(*) FROM range({rows})")).ok();
    }
    assert_eq!(checkpoints(&lh.path().join("_gobi/query_log/_delta_log")).len(), 1);
    assert_eq!(lh.values("SELECT count(*) FROM gobi_query_log() WHERE starts_with(text, 'SELECT count(*) FROM range(')"), rows![[10]]);
}

#[test]
fn a_table_gobi_creates_checkpoints_every_ten_commits_and_opens_from_the_checkpoint() {
    let lh = Lakehouse::new();
    let inserts: Vec<String> = (1..=24).map(|i| format!("INSERT INTO t VALUES ({i})")).collect();
    lh.run(&format!("CREATE TABLE t (id BIGINT); {}", inserts.join("; "))).ok();
    let log = lh.table_log("t");
    assert_eq!(checkpoints(&log), ["00000000000000000009.checkpoint.parquet", "00000000000000000019.checkpoint.parquet"]);
    let described = detail(&lh);
    assert_eq!((described["last_checkpoint"].as_u64(), described["checkpoint_interval"].as_u64()), (Some(19), Some(10)));
    let history = lh.values("SHOW HISTORY t");
    let marked: Vec<&Value> = history.iter().filter(|row| row[5] == true).map(|row| &row[0]).collect();
    assert_eq!(marked, [19, 9], "SHOW HISTORY marks the checkpoints");
    // Opening reads the checkpoint and the commits after it: without the first twenty JSON
    // commits the table still reads whole.
    let aside = lh.path().join("aside");
    std::fs::create_dir(&aside).unwrap();
    for version in 0..=19 {
        let name = format!("{version:020}.json");
        std::fs::rename(log.join(&name), aside.join(&name)).unwrap();
    }
    assert_eq!(lh.values("SELECT count(*), sum(id) FROM t"), rows![[24, 300]]);
}

/// Delta's conflict check does not see OPTIMIZE's removes: two at once would both commit and
/// every compacted row would be there twice. gobi's table lock makes the second wait.
#[test]
fn two_optimizes_at_once_never_duplicate_rows() {
    let lh = Lakehouse::new();
    let inserts: Vec<String> = (1..=30).map(|i| format!("INSERT INTO t VALUES ({i}, 'n{i}')")).collect();
    lh.run(&format!("CREATE TABLE t (id BIGINT, name STRING); {}", inserts.join("; "))).ok();
    let before = lh.values(CHECKSUM);
    let optimizers: Vec<_> = (0..2).map(|_| gobi_started(&["query", "OPTIMIZE t"], lh.path())).collect();
    for optimizer in optimizers {
        let done = optimizer.wait_with_output().unwrap();
        assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    }
    assert_eq!(lh.values(CHECKSUM), before);
    assert_eq!(detail(&lh)["files"].as_u64(), Some(1));
}

/// `gobi memory cleanup` points at files older than the retention that no version needs, and
/// `VACUUM` with the default retention removes them.
#[test]
fn cleanup_points_at_old_orphaned_files_and_vacuum_removes_them() {
    let lh = Lakehouse::new();
    lh.run("CREATE TABLE t (id BIGINT, name STRING); INSERT INTO t VALUES (1, 'a')").ok();
    let table = lh.path().join("tables/t");
    let data = std::fs::read_dir(&table).unwrap().flatten().find(|e| e.file_name().to_string_lossy().ends_with(".parquet")).unwrap().path();
    let orphan = table.join("part-00000-orphan-of-a-crashed-writer.parquet");
    std::fs::copy(&data, &orphan).unwrap();
    let eight_days_ago = std::time::SystemTime::now() - Duration::from_secs(8 * 24 * 3600);
    std::fs::File::options().write(true).open(&orphan).unwrap().set_modified(eight_days_ago).unwrap();

    let report: Value = serde_json::from_str(&crate::support::gobi(&["memory", "cleanup", "--json"], lh.path()).ok().stdout).unwrap();
    let listed = &report["files_for_vacuum"][0];
    assert_eq!((listed["table"].as_str(), listed["files"].as_u64(), listed["run"].as_str()), (Some("t"), Some(1), Some("VACUUM t")), "{report:#}");
    assert!(orphan.exists(), "cleanup only points at them");
    let run = lh.run("VACUUM t").ok();
    assert!(run.stderr.contains("removed 1 files"), "{}", run.stderr);
    assert!(!orphan.exists() && data.exists());
    assert_eq!(lh.values(CHECKSUM), rows![[1, 1, "a"]]);
}

/// VACUUM's lists of files grow with the stray files in the table's folder: they are reserved
/// from the statement before anything lists them, so a folder too big for the limit fails
/// cleanly with nothing deleted, and under a limit that fits the reservation is in the log.
#[test]
fn vacuum_reserves_its_file_lists_before_listing() {
    let lh = Lakehouse::new();
    lh.run("CREATE TABLE t (id BIGINT, name STRING); INSERT INTO t VALUES (1, 'a')").ok();
    let table = lh.path().join("tables/t");
    let strays = 10_000;
    for i in 0..strays {
        std::fs::write(table.join(format!("part-{i:05}-a-killed-writer-left-this-file-behind-c000.snappy.parquet")), b"").unwrap();
    }
    let vacuum = "SET maintenance.allow_short_retention = on; VACUUM t RETAIN 0 HOURS";
    let run = lh.run(&format!("SET memory.query_limit = '1MiB'; {vacuum}")).fails_with(crate::support::exit::MEMORY);
    assert!(run.stderr.contains("VACUUM t's file list"), "{}", run.stderr);
    assert_eq!(data_files(&lh), strays + 1, "nothing deleted");
    let run = lh.run(vacuum).ok();
    assert!(run.stderr.contains(&format!("removed {strays} files")), "{}", run.stderr);
    assert_eq!(data_files(&lh), 1);
    let reserved = lh.values("SELECT peak_reserved_bytes FROM gobi_query_log() WHERE text LIKE '%VACUUM t RETAIN 0 HOURS' AND status = 'ok'");
    let reserved = reserved[0][0].as_u64().unwrap();
    assert!(reserved >= strays as u64 * 128, "the lists were reserved: {reserved}");
    assert_eq!(lh.values(CHECKSUM), rows![[1, 1, "a"]]);
}

/// OPTIMIZE of a table ten times the budget runs under it: its scans reserve from the
/// statement and spill under it, its one Parquet writer is reserved up front, so the process's
/// anonymous memory stays within a generous 1.25 × the budget (bench/RESULTS.md holds the
/// measured figure).
#[test]
fn optimize_compacts_a_table_ten_times_the_budget_within_it() {
    let budget: u64 = 32 << 20;
    let lh = Lakehouse::new();
    // Twelve appends of 600,000 rows: 270 MiB of Parquet, 370 MiB once decoded.
    let appends: Vec<String> = (0..12)
        .map(|i| format!("INSERT INTO t SELECT value, value * 7 % 1000, md5(CAST(value AS STRING)) FROM range({}, {})", i * 600_000, (i + 1) * 600_000))
        .collect();
    lh.run_with(&["--memory-limit", "64MiB"], &format!("CREATE TABLE t (id BIGINT, k BIGINT, s STRING); {}", appends.join("; "))).ok();
    let checksum = "SELECT count(*), sum(id), sum(k), min(s), max(s) FROM t";
    let before = lh.values(checksum);
    let files = detail(&lh)["files"].as_u64().unwrap();
    let mut child = crate::support::gobi_piped(&["--memory-limit", "32MiB", "query", "OPTIMIZE t"], &lh);
    let (status, peak) = crate::support::wait_sampling_anonymous(&mut child);
    assert!(status.success());
    assert!(detail(&lh)["files"].as_u64().unwrap() < files, "compacted");
    assert_eq!(lh.values(checksum), before, "every row and value as before");
    assert!(peak > 0 && peak <= budget * 5 / 4, "peak anonymous memory {} MiB within 1.25 × the {} MiB budget", peak >> 20, budget >> 20);
}
