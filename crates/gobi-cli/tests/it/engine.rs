//! One engine, many sessions; one governed path for every statement; results that stream.

use std::io::{BufRead as _, BufReader};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gobi_engine::{Collected, Engine, Session, SETTINGS};
use gobi_memory::PoolKind;

use crate::support::{gobi, gobi_piped, strings, wait_sampling_anonymous, Lakehouse};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// A setting's value as `SHOW memory.name` gives it.
fn shown(runtime: &tokio::runtime::Runtime, session: &Session, name: &str) -> String {
    let Collected::Rows { batches, .. } = runtime.block_on(session.run_script(&format!("SHOW {name}"))).unwrap().remove(0) else { panic!("SHOW returns rows") };
    datafusion::arrow::util::display::array_value_to_string(batches[0].column(1), 0).unwrap()
}

/// Two sessions of one engine share its pools: an engine setting set in one is seen by the
/// other, one session's statement holding the query pool makes the other's admission wait (a
/// query and a write alike), and each session keeps its own variables and statement limits.
#[test]
fn sessions_of_one_engine_share_the_pools_and_nothing_else() {
    let lh = Lakehouse::new();
    let runtime = runtime();
    let engine = Engine::open(gobi_engine::Lakehouse::open(lh.path()).unwrap());
    let first = Arc::new(Session::new(&engine));
    let second = Arc::new(Session::new(&engine));
    runtime.block_on(first.run_script("SET memory.query_pool = '8MiB'; SET memory.cache_pool = '0B'; CREATE TABLE t AS SELECT 1 AS x")).unwrap();
    assert_eq!(shown(&runtime, &second, "memory.query_pool"), "8MiB", "an engine setting is shared");
    runtime.block_on(first.run_script("let answer = 42; SET memory.query_limit = '64KiB'")).unwrap();
    let third = Session::new(&engine);
    let error = runtime.block_on(second.run_script("SELECT $answer")).unwrap_err();
    assert!(error.message.contains("answer"), "variables are the session's own: {}", error.message);
    assert_eq!(shown(&runtime, &first, "memory.query_limit"), "64KiB");
    assert_eq!(shown(&runtime, &second, "memory.query_limit"), "none", "a statement limit is the session's own");
    // Prepared statements are the session's own too; EXECUTE runs as a governed query.
    let executed = runtime.block_on(second.run_script("PREPARE above(BIGINT) AS SELECT count(*) FROM t WHERE x > $1; EXECUTE above(0)")).unwrap();
    assert_eq!(strings(executed.last().unwrap()), ["1"]);
    let error = runtime.block_on(third.run_script("EXECUTE above(0)")).unwrap_err();
    assert!(error.message.contains("above"), "{}", error.message);

    // The first session's statement keeps most of the query pool past its end, as a faulty
    // operator would: the pool is under critical pressure for everyone.
    runtime.block_on(third.run_script("SET memory.fault_leak = '8000KiB'; SELECT 1")).unwrap();
    let memory = Arc::clone(engine.memory());
    assert!(memory.pool(PoolKind::Query).reserved() >= 8000 << 10);
    for statement in ["SELECT 42 AS answer", "INSERT INTO t VALUES (2)"] {
        let waiting = runtime.spawn({
            let second = Arc::clone(&second);
            async move { second.run_script(statement).await }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while memory.admission_waiters() == 0 {
            assert!(Instant::now() < deadline && !waiting.is_finished(), "{statement} should wait for admission");
            std::thread::yield_now();
        }
        assert!(!waiting.is_finished(), "{statement} waits while the pool is critical");
        let released = runtime.block_on(engine.cleanup());
        assert!(released.freed[0].1 >= 1, "cleanup gave back the ended statement's memory: {:?}", released.freed);
        runtime.block_on(waiting).unwrap().unwrap_or_else(|e| panic!("{statement} runs once the memory is back: {}", e.message));
        runtime.block_on(third.run_script("SET memory.fault_leak = '8000KiB'; SELECT 1")).unwrap();
    }
    runtime.block_on(engine.cleanup());
    let count = runtime.block_on(first.run_script("SELECT count(*) FROM t")).unwrap();
    assert_eq!(strings(&count[0]), ["2"], "the second session's INSERT landed");
    for kind in [PoolKind::Query, PoolKind::Temp] {
        assert_eq!(memory.pool(kind).reserved(), 0, "{kind} pool back to 0");
    }
}

/// The query log's rows for statements that start with `prefix`: (status, peak reserved, rows).
fn logged(lh: &Lakehouse, prefix: &str) -> Vec<(String, u64, u64)> {
    let sql = format!("SELECT status, peak_reserved_bytes, rows FROM gobi_query_log() WHERE starts_with(text, '{prefix}') ORDER BY started_at");
    lh.values(&sql).into_iter().map(|r| (r[0].as_str().unwrap().to_string(), r[1].as_u64().unwrap(), r[2].as_u64().unwrap())).collect()
}

/// Writes go through the same governed path as queries: a table several times the query pool
/// written by CREATE TABLE AS, INSERT … SELECT and UPDATE under a small budget is logged under
/// its own statement with reserved bytes; `memory.query_limit` stops a write too, and the table
/// stays as it was.
#[test]
fn writes_are_governed_statements() {
    let lh = Lakehouse::new();
    // 16 MiB to reserve, of which delta-rs's Parquet writer takes 7 (`writes::WriterMemory`).
    let budget = ["--memory-query", "16MiB", "--memory-cache", "0B", "--memory-temp", "64MiB"];
    let run = |sql: &str| {
        let mut args = budget.to_vec();
        args.extend(["query", sql]);
        gobi(&args, lh.path())
    };
    run("CREATE TABLE big AS SELECT value AS id, md5(CAST(value AS STRING)) AS s FROM generate_series(1, 1000000) ORDER BY s").ok();
    run("INSERT INTO big SELECT id + 1000000, s FROM big ORDER BY s DESC").ok();
    run("UPDATE big SET s = upper(s) WHERE id % 2 = 0").ok();
    for (prefix, rows) in [("CREATE TABLE big", 1_000_000), ("INSERT INTO big", 1_000_000), ("UPDATE big", 1_000_000)] {
        let rows_logged = logged(&lh, prefix);
        assert_eq!(rows_logged.len(), 1, "{prefix}: one log row: {rows_logged:?}");
        let (status, peak_reserved, changed) = &rows_logged[0];
        assert_eq!(status, "ok", "{prefix}");
        assert!(*peak_reserved > 0, "{prefix} reserved through its statement");
        if !prefix.starts_with("CREATE") {
            assert_eq!(*changed, rows, "{prefix}: rows changed");
        }
    }
    // Past the statement's limit the write fails: here its Parquet writer does not fit.
    let refused = run("SET memory.query_limit = '64KiB'; INSERT INTO big SELECT 0, string_agg(s, ',') FROM big").fails_with(crate::support::exit::MEMORY);
    assert!(refused.stderr.contains("memory.query_limit") && refused.stderr.contains("DeltaWriter"), "{}", refused.stderr);
    assert_eq!(lh.values("SELECT count(*) FROM big"), crate::rows![[2000000]], "the refused write changed nothing");
    let failed = logged(&lh, "INSERT INTO big SELECT 0");
    assert_eq!(failed.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(), ["error"]);
}

/// A CREATE TABLE AS of ten million rows (over thirty times the query pool) finishes under a
/// 50 MiB budget: delta-rs's Parquet writer is sized from the statement's pool and reserved
/// from it (`writes::WriterMemory`), so the process's anonymous memory stays within a generous
/// 1.25 × the budget (bench/RESULTS.md holds the measured figure).
#[test]
fn a_ten_million_row_create_table_as_stays_within_its_budget() {
    let budget: u64 = 50 << 20;
    let lh = Lakehouse::new();
    let sql = "CREATE TABLE t AS SELECT value AS id, value * 7 % 1000 AS k, md5(CAST(value AS STRING)) AS s FROM range(0, 10000000)";
    let mut child = gobi_piped(&["--memory-limit", "50MiB", "query", sql], &lh);
    let (status, peak) = wait_sampling_anonymous(&mut child);
    assert!(status.success());
    assert_eq!(lh.values("SELECT count(*), sum(k), min(id), max(id) FROM t"), crate::rows![[10000000, 4995000000u64, 0, 9999999]]);
    let rows_logged = logged(&lh, "CREATE TABLE t");
    assert_eq!(rows_logged.len(), 1, "{rows_logged:?}");
    let (status, peak_reserved, _) = &rows_logged[0];
    assert_eq!(status, "ok");
    assert!(*peak_reserved >= 5 << 20, "the writer's buffers were reserved: {peak_reserved}");
    assert!(peak <= budget * 5 / 4, "peak anonymous memory {} MiB within 1.25 × the {} MiB budget", peak >> 20, budget >> 20);
}

/// A result ten times the memory budget streams: `--format csv` writes rows as they come, so
/// the process's anonymous memory stays within 1.25 × the budget.
#[test]
fn a_result_ten_times_the_budget_streams_within_it() {
    let budget: u64 = 64 << 20;
    let lh = Lakehouse::new();
    let mut child =
        gobi_piped(&["--memory-limit", "64MiB", "query", "--format", "csv", "SELECT value, repeat('x', 1000) AS payload FROM range(0, 700000)"], &lh);
    let reader = std::thread::spawn({
        let stdout = child.stdout.take().unwrap();
        move || {
            let mut bytes = 0u64;
            for line in BufReader::new(stdout).lines() {
                bytes += line.unwrap().len() as u64 + 1;
            }
            bytes
        }
    });
    let (status, peak) = wait_sampling_anonymous(&mut child);
    assert!(status.success());
    let written = reader.join().unwrap();
    assert!(written > 10 * budget, "the result ({written} bytes) is ten times the budget");
    assert!(peak > 0 && peak <= budget * 5 / 4, "peak anonymous memory {} MiB within 1.25 × the {} MiB budget", peak >> 20, budget >> 20);
}

/// A reader that stops early (`| head`) ends the statement at once: the process exits long
/// before the query could have finished.
#[test]
fn a_reader_that_stops_ends_the_statement() {
    let lh = Lakehouse::new();
    let mut child = gobi_piped(&["query", "--format", "csv", "SELECT value FROM range(0, 100000000000)"], &lh);
    let lines: Vec<String> = BufReader::new(child.stdout.take().unwrap()).lines().take(5).map(Result::unwrap).collect();
    assert_eq!(lines, ["value", "0", "1", "2", "3"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "gobi goes on after its reader stopped");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "a reader going away is not an error");
}

/// An engine-level cancel (what a server does on a client's cancel request) stops a
/// statement whose operators never yield: the statement fails as cancelled, its memory goes
/// back to the pool, and the session runs the next statement.
#[test]
fn a_cancelled_statement_stops_and_gives_its_memory_back() {
    let runtime = runtime();
    let session = Arc::new(Session::in_memory());
    let running = {
        let session = Arc::clone(&session);
        runtime.spawn(async move { session.run_script("SELECT count(*) FROM range(0, 100000000) a, range(0, 100000000) b").await })
    };
    // Cancelled once its scans have read rows (its operators are busy), not before it starts.
    let progress = session.progress();
    let deadline = Instant::now() + Duration::from_secs(30);
    while progress.scanned().is_none_or(|(rows, _)| rows == 0) {
        assert!(Instant::now() < deadline, "the statement never started");
        std::thread::yield_now();
    }
    assert!(session.cancel(), "the session knows its running statement");
    let stopped = Instant::now();
    let error = runtime.block_on(running).unwrap().expect_err("a cancelled statement fails");
    assert_eq!(error.kind, gobi_engine::ErrorKind::Cancelled, "{error:?}");
    assert!(stopped.elapsed() < Duration::from_secs(10), "the cancel took {:?}", stopped.elapsed());
    assert_eq!(session.engine().memory().pool(PoolKind::Query).reserved(), 0);
    let answer = runtime.block_on(session.run_script("SELECT 20 * 2")).unwrap();
    assert_eq!(strings(&answer[0]), ["40"]);
}

/// Without a lakehouse, CREATE TABLE holds its rows from the temp pool, like a `let` table, and
/// gives them back when dropped.
#[test]
fn tables_without_a_lakehouse_are_held_in_the_temp_pool() {
    let runtime = runtime();
    let session = Session::in_memory();
    let temp = || session.engine().memory().pool(PoolKind::Temp).reserved();
    runtime.block_on(session.run_script("CREATE TABLE t AS SELECT value AS v FROM range(0, 100000)")).unwrap();
    let held = temp();
    assert!(held >= 800_000, "100000 Int64 values reserved: {held}");
    runtime.block_on(session.run_script("INSERT INTO t VALUES (1), (2)")).unwrap();
    assert_eq!(strings(&runtime.block_on(session.run_script("SELECT count(*) FROM t")).unwrap()[0]), ["100002"]);
    assert!(temp() >= held);
    let consumers = runtime.block_on(session.run_script("SELECT consumer FROM gobi_memory_consumers() WHERE pool = 'temp'")).unwrap();
    assert_eq!(strings(&consumers[0]), ["table t"]);
    runtime.block_on(session.run_script("SET memory.temp_pool = '64KiB'")).unwrap();
    let error = runtime.block_on(session.run_script("CREATE TABLE u AS SELECT value FROM range(0, 100000)")).unwrap_err();
    assert!(error.message.contains("the temp pool is full"), "{}", error.message);
    runtime.block_on(session.run_script("DROP TABLE t")).unwrap();
    assert_eq!(temp(), 0);
}

/// `SET`, `SHOW SETTINGS`, "did you mean" and docs/settings.md all list the same settings.
#[test]
fn settings_are_declared_once() {
    let declared: Vec<String> = SETTINGS.iter().map(|s| s.full_name()).collect();
    let runtime = runtime();
    let session = Session::in_memory();
    let shown = runtime.block_on(session.run_script("SHOW SETTINGS")).unwrap();
    assert_eq!(strings(&shown[0]), declared, "SHOW SETTINGS");
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/settings.md")).unwrap();
    let documented: Vec<String> = docs.lines().filter_map(|l| l.strip_prefix("| `")?.split('`').next().map(str::to_string)).collect();
    assert_eq!(documented, declared, "docs/settings.md");
    for setting in SETTINGS {
        let value = if setting.name == "query_limit" { "1MiB" } else { setting.default };
        let done = runtime
            .block_on(session.run_script(&format!("SET {} = '{value}'", setting.full_name())))
            .unwrap_or_else(|e| panic!("{}: {}", setting.name, e.message));
        let Collected::Done(message) = &done[0] else { panic!() };
        let whose = match setting.owner {
            gobi_engine::Owner::Engine => "(for every session of this engine)",
            gobi_engine::Owner::Session => "(for this session)",
        };
        assert!(message.starts_with(&setting.full_name()) && message.ends_with(whose), "{message}");
    }
    let error = runtime.block_on(session.run_script("SET memory.query_pol = '1MiB'")).unwrap_err();
    assert_eq!(error.hint.as_deref(), Some("did you mean memory.query_pool?"));
}

/// A statement that measures a run (EXPLAIN ANALYZE) runs every time; a plain query over an
/// unchanged table is answered from the result cache the second time.
#[test]
fn only_plain_queries_are_answered_from_the_result_cache() {
    let lh = Lakehouse::new();
    lh.run("CREATE TABLE t AS SELECT 1 AS x").ok();
    lh.run("EXPLAIN ANALYZE SELECT * FROM t; SELECT * FROM t; EXPLAIN ANALYZE SELECT * FROM t; SELECT * FROM t").ok();
    let log = lh.values("SELECT substr(text, 1, 7), from_cache FROM gobi_query_log() WHERE text NOT LIKE 'CREATE%' ORDER BY query_id");
    assert_eq!(log, crate::rows![["EXPLAIN", false], ["SELECT ", false], ["EXPLAIN", false], ["SELECT ", true]]);
}
