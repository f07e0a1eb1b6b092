//! Every table statement, on real Delta tables, checked value by value.

use serde_json::json;

use crate::rows;
use crate::support::Lakehouse;

const USERS: &str = "CREATE TABLE users (id BIGINT NOT NULL, name STRING, active BOOLEAN, joined DATE, score DOUBLE, balance DECIMAL(10,2));
INSERT INTO users VALUES (1, 'Ann', true, DATE '2026-01-05', 9.5, 10.25), (2, 'Bo', false, NULL, NULL, 0), (3, 'Cy', true, DATE '2026-03-01', 7.25, -3.5);";

#[test]
fn create_insert_select_round_trip_typed_values() {
    let lh = Lakehouse::new();
    lh.run(USERS).ok();
    assert_eq!(
        lh.values("SELECT id, name, active, joined, score, balance FROM users ORDER BY id"),
        rows![[1, "Ann", true, "2026-01-05", 9.5, 10.25], [2, "Bo", false, null, null, 0.0], [3, "Cy", true, "2026-03-01", 7.25, -3.5],]
    );
    assert_eq!(
        lh.values("DESCRIBE users"),
        rows![
            ["id", "Int64", "NO"],
            ["name", "Utf8", "YES"],
            ["active", "Boolean", "YES"],
            ["joined", "Date32", "YES"],
            ["score", "Float64", "YES"],
            ["balance", "Decimal128(10, 2)", "YES"],
        ]
    );
}

#[test]
fn each_write_is_exactly_one_delta_commit() {
    let lh = Lakehouse::new();
    lh.run("CREATE TABLE t (a INT, b STRING)").ok();
    assert_eq!(lh.commits("t"), 1);
    lh.run("INSERT INTO t VALUES (1, 'x'), (2, 'y'), (3, 'z')").ok();
    assert_eq!(lh.commits("t"), 2);
    lh.run("UPDATE t SET b = 'w' WHERE a >= 2").ok();
    assert_eq!(lh.commits("t"), 3);
    lh.run("DELETE FROM t WHERE a = 1").ok();
    assert_eq!(lh.commits("t"), 4);
    lh.run("ALTER TABLE t ADD COLUMN c DOUBLE").ok();
    assert_eq!(lh.commits("t"), 5);
    assert_eq!(lh.values("SELECT a, b, c FROM t ORDER BY a"), rows![[2, "w", null], [3, "w", null]]);
}

#[test]
fn dml_returns_counts_and_changes_exactly_the_matching_rows() {
    let lh = Lakehouse::new();
    lh.run(USERS).ok();
    assert_eq!(lh.values("UPDATE users SET score = score * 2, name = upper(name) WHERE active"), rows![[2]]);
    assert_eq!(lh.values("SELECT id, name, score FROM users ORDER BY id"), rows![[1, "ANN", 19.0], [2, "Bo", null], [3, "CY", 14.5]]);
    assert_eq!(lh.values("DELETE FROM users WHERE NOT active"), rows![[1]]);
    assert_eq!(lh.values("SELECT id FROM users ORDER BY id"), rows![[1], [3]]);
    assert_eq!(lh.values("INSERT INTO users (id, name) SELECT id + 10, name || '!' FROM users"), rows![[2]]);
    assert_eq!(lh.values("SELECT id, name, active FROM users ORDER BY id"), rows![[1, "ANN", true], [3, "CY", true], [11, "ANN!", null], [13, "CY!", null]]);
    assert_eq!(lh.values("DELETE FROM users"), rows![[4]]);
    assert_eq!(lh.values("SELECT count(*) FROM users"), rows![[0]]);
}

#[test]
fn create_table_variants() {
    let lh = Lakehouse::new();
    lh.run(USERS).ok();
    lh.run("CREATE TABLE IF NOT EXISTS users (x INT)").ok();
    assert_eq!(lh.values("SELECT count(*) FROM users"), rows![[3]]);
    let run = lh.run("CREATE TABLE users (x INT)").user_error();
    assert!(run.stderr.contains("table users already exists"), "{}", run.stderr);
    lh.run("CREATE TABLE active AS SELECT id, name FROM users WHERE active").ok();
    assert_eq!(lh.values("SELECT * FROM active ORDER BY id"), rows![[1, "Ann"], [3, "Cy"]]);
    assert_eq!(lh.commits("active"), 1);
    lh.run("CREATE OR REPLACE TABLE active AS SELECT id FROM users WHERE id = 2").ok();
    assert_eq!(lh.values("SELECT * FROM active"), rows![[2]]);
}

#[test]
fn alter_table_add_column_reads_old_rows_as_null() {
    let lh = Lakehouse::new();
    lh.run(USERS).ok();
    lh.run("ALTER TABLE users ADD COLUMN email STRING; INSERT INTO users (id, name, email) VALUES (4, 'Di', 'di@example.com')").ok();
    assert_eq!(lh.values("SELECT id, email FROM users ORDER BY id"), rows![[1, null], [2, null], [3, null], [4, "di@example.com"]]);
    lh.run("ALTER TABLE users ADD COLUMN email STRING").user_error();
}

#[test]
fn drop_table_and_if_exists() {
    let lh = Lakehouse::new();
    lh.run("CREATE TABLE t (a INT)").ok();
    lh.run("DROP TABLE t").ok();
    assert!(!lh.path().join("tables/t").exists());
    let run = lh.run("SELECT * FROM t").user_error();
    assert!(run.stderr.contains("not found"), "{}", run.stderr);
    lh.run("DROP TABLE t").user_error();
    lh.run("DROP TABLE IF EXISTS t").ok();
    lh.run("CREATE TABLE t (b STRING); INSERT INTO t VALUES ('again')").ok();
    assert_eq!(lh.values("SELECT * FROM t"), rows![["again"]]);
}

#[test]
fn views_persist_across_processes_and_follow_their_tables() {
    let lh = Lakehouse::new();
    lh.run(USERS).ok();
    lh.run("CREATE VIEW active_names AS SELECT name FROM users WHERE active").ok();
    assert_eq!(lh.values("SELECT * FROM active_names ORDER BY name"), rows![["Ann"], ["Cy"]]);
    lh.run("UPDATE users SET active = true WHERE id = 2").ok();
    assert_eq!(lh.values("SELECT count(*) FROM active_names"), rows![[3]]);
    assert_eq!(lh.values("SHOW TABLES"), rows![["active_names", "view"], ["users", "table"]]);
    lh.run("CREATE VIEW active_names AS SELECT 1").user_error();
    lh.run("CREATE OR REPLACE VIEW active_names AS SELECT id FROM users WHERE id > 2").ok();
    assert_eq!(lh.values("SELECT * FROM active_names"), rows![[3]]);
    lh.run("DROP VIEW active_names").ok();
    assert_eq!(lh.values("SHOW TABLES"), rows![["users", "table"]]);
    lh.run("DROP VIEW active_names").user_error();
    lh.run("DROP VIEW IF EXISTS active_names").ok();
}

#[test]
fn show_history_lists_every_commit_newest_first() {
    let lh = Lakehouse::new();
    lh.run(USERS).ok();
    lh.run("DELETE FROM users WHERE id = 2").ok();
    let history = lh.values("SHOW HISTORY users");
    let summary: Vec<(i64, String)> = history.iter().map(|row| (row[0].as_i64().unwrap(), row[2].as_str().unwrap().to_string())).collect();
    assert_eq!(summary, vec![(2, "DELETE".into()), (1, "WRITE".into()), (0, "CREATE TABLE".into())]);
}

/// Waits for the wall clock to enter its next second, and returns that second's start.
fn next_second() -> chrono::DateTime<chrono::Utc> {
    let now = chrono::Utc::now().timestamp();
    loop {
        let later = chrono::Utc::now();
        if later.timestamp() > now {
            return chrono::DateTime::from_timestamp(later.timestamp(), 0).expect("a time in range");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn time_travel_by_version_and_timestamp() {
    let lh = Lakehouse::new();
    lh.run("CREATE TABLE t (a INT); INSERT INTO t VALUES (1)").ok();
    // Commit times are what time travel reads, compared here at a second's resolution: version
    // 1 was committed in an earlier second than `between`, version 2 in a later one.
    let between = next_second();
    next_second();
    let between = between.format("%Y-%m-%d %H:%M:%S");
    lh.run("INSERT INTO t VALUES (2); UPDATE t SET a = a * 10").ok();
    assert_eq!(lh.values("SELECT * FROM t ORDER BY a"), rows![[10], [20]]);
    assert_eq!(lh.values("SELECT * FROM t AS OF VERSION 0"), rows![]);
    assert_eq!(lh.values("SELECT * FROM t AS OF VERSION 1"), rows![[1]]);
    assert_eq!(lh.values("SELECT t.a FROM t AS OF VERSION 2 ORDER BY t.a"), rows![[1], [2]]);
    assert_eq!(lh.values(&format!("SELECT count(*) FROM t AS OF TIMESTAMP '{between}'")), rows![[1]]);
    assert_eq!(lh.values("SELECT old.a, new.a FROM t AS OF VERSION 2 old JOIN t new ON new.a = old.a * 10 ORDER BY 1"), rows![[1, 10], [2, 20]]);
    let run = lh.run("SELECT * FROM t AS OF VERSION 9").user_error();
    assert!(run.stderr.contains("table t has no version 9 (the latest is 3)"), "{}", run.stderr);
}

#[test]
fn queries_cover_joins_windows_ctes_and_set_operations() {
    let lh = Lakehouse::new();
    lh.run(USERS).ok();
    lh.run("CREATE TABLE orders (id INT, user_id BIGINT, total DOUBLE); INSERT INTO orders VALUES (10, 1, 5.0), (11, 1, 7.0), (12, 3, 1.5), (13, 9, 2.0)").ok();
    assert_eq!(
        lh.values(
            "SELECT u.name, sum(o.total) AS spent FROM users u JOIN orders o ON o.user_id = u.id GROUP BY u.name HAVING sum(o.total) > 2 ORDER BY spent DESC"
        ),
        rows![["Ann", 12.0]]
    );
    assert_eq!(
        lh.values("SELECT o.id, u.name FROM orders o LEFT JOIN users u ON o.user_id = u.id ORDER BY o.id"),
        rows![[10, "Ann"], [11, "Ann"], [12, "Cy"], [13, null]]
    );
    assert_eq!(
        lh.values("SELECT id, row_number() OVER (PARTITION BY user_id ORDER BY total DESC) FROM orders ORDER BY id"),
        rows![[10, 2], [11, 1], [12, 1], [13, 1]]
    );
    assert_eq!(lh.values("WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 4) SELECT sum(x) FROM n"), rows![[10]]);
    assert_eq!(lh.values("SELECT user_id FROM orders EXCEPT SELECT id FROM users ORDER BY 1"), rows![[9]]);
    assert_eq!(lh.values("SELECT name FROM users WHERE id IN (SELECT user_id FROM orders WHERE total > 6) ORDER BY 1"), rows![["Ann"]]);
    let explain = lh.values("EXPLAIN SELECT count(*) FROM orders WHERE total > 1");
    assert_eq!(explain[0][0], json!("logical_plan"));
}

#[test]
fn sql_that_datafusion_alone_gets_wrong_or_refuses() {
    let lh = Lakehouse::new();
    lh.run("CREATE TABLE t (a INT, b INT, c INT); INSERT INTO t VALUES (1, 2, 3), (2, 3, 1), (3, 1, 2), (NULL, 1, NULL)").ok();
    // Correlated scalar subqueries with non-equality conditions, including a NULL outer value
    // and count over no rows.
    assert_eq!(
        lh.values(
            "SELECT a, (SELECT count(*) FROM t x WHERE x.c > t.c AND x.b < t.b), (SELECT sum(x.a) FROM t x WHERE x.b < t.b) FROM t ORDER BY a NULLS LAST"
        ),
        rows![[1, 0, 3], [2, 2, 4], [3, 0, null], [null, 0, null]]
    );
    // Repeated output names are valid SQL.
    assert_eq!(lh.values("SELECT a, -a a, a + 1 AS a FROM t WHERE a = 1"), rows![[1, -1, 2]]);
    // A predicate that is NULL for every row selects none (delta-rs claimed it, then skipped it).
    assert_eq!(lh.values("SELECT a FROM t WHERE a BETWEEN 0 AND NULL"), rows![]);
    assert_eq!(lh.values("SELECT count(*) FROM t WHERE NULL"), rows![[0]]);
    // Unary plus is the identity on any type, as in SQLite (DataFusion refuses it on text).
    assert_eq!(lh.values("SELECT +name, +a FROM (VALUES ('x', 1)) AS v(name, a)"), rows![["x", 1]]);
}

#[test]
fn join_planning_sees_the_delta_logs_statistics() {
    let lh = Lakehouse::new();
    lh.run("CREATE TABLE big AS SELECT value AS k, value * 2 AS v FROM generate_series(1, 5000); CREATE TABLE small (k BIGINT, name STRING); INSERT INTO small VALUES (1, 'a'), (2, 'b'), (3, 'c')").ok();
    let plan = lh.values("EXPLAIN SELECT big.v, small.name FROM big JOIN small ON big.k = small.k");
    let physical = plan.iter().find(|row| row[0] == json!("physical_plan")).unwrap()[1].as_str().unwrap().to_string();
    let scans: Vec<&str> = physical.lines().filter(|l| l.contains("DeltaStatisticsExec")).map(str::trim).collect();
    // Row counts come from the log, and the hash table is built on the small side (first input).
    assert_eq!(scans, ["DeltaStatisticsExec: rows=Inexact(3)", "DeltaStatisticsExec: rows=Inexact(5000)"], "{physical}");
    assert_eq!(lh.values("SELECT big.v, small.name FROM big JOIN small ON big.k = small.k ORDER BY 1"), rows![[2, "a"], [4, "b"], [6, "c"]]);
}

#[test]
fn declared_keys_are_kept_and_let_a_group_by_a_key_select_the_other_columns() {
    let lh = Lakehouse::new();
    lh.run("CREATE TABLE c (id BIGINT PRIMARY KEY, name STRING, city STRING, email STRING UNIQUE); INSERT INTO c VALUES (1, 'Ann', 'Oslo', 'a@x'), (2, 'Bo', 'Rome', 'b@x')").ok();
    let grouped = "SELECT id, name, city, count(*) AS n FROM c GROUP BY id ORDER BY id";
    assert_eq!(lh.values(grouped), rows![[1, "Ann", "Oslo", 1], [2, "Bo", "Rome", 1]]);
    assert_eq!(lh.values("SELECT email, name FROM c GROUP BY email ORDER BY email"), rows![["a@x", "Ann"], ["b@x", "Bo"]]);
    // The keys' column metadata stays out of query results, which DataFusion unites by it.
    assert_eq!(lh.values("SELECT id FROM c UNION ALL SELECT 3 ORDER BY id"), rows![[1], [2], [3]]);
    // Informational: a duplicate key is not refused.
    lh.run("INSERT INTO c VALUES (1, 'Ann again', 'Oslo', 'c@x')").ok();
    assert_eq!(lh.values("SELECT count(*) FROM c WHERE id = 1"), rows![[2]]);
    // Without a key, the same query is refused as in SQL.
    lh.run("CREATE TABLE plain (id BIGINT, name STRING)").ok();
    lh.run("SELECT id, name FROM plain GROUP BY id").user_error();
    // Other writers see column metadata they ignore.
    let log = std::fs::read_to_string(lh.table_log("c").join("00000000000000000000.json")).unwrap();
    assert!(log.contains(r#"\"gobi.keys\":\"[\\\"primary_key\\\"]\""#), "{log}");
    // A table made from a keyed one has only the keys it declares; CREATE … AS may declare them.
    lh.run("CREATE TABLE copy AS SELECT * FROM c").ok();
    lh.run("SELECT id, name FROM copy GROUP BY id").user_error();
    lh.run("CREATE TABLE k (id BIGINT PRIMARY KEY, v STRING) AS SELECT 1 AS id, 'x' AS v").ok();
    assert_eq!(lh.values("SELECT id, v FROM k GROUP BY id"), rows![[1, "x"]]);
    // A REPLACE replaces the keys.
    lh.run("CREATE OR REPLACE TABLE k (id BIGINT, v STRING PRIMARY KEY) AS SELECT 1 AS id, 'x' AS v").ok();
    assert_eq!(lh.values("SELECT v, id FROM k GROUP BY v"), rows![["x", 1]]);
    lh.run("SELECT id, v FROM k GROUP BY id").user_error();
    // Without a lakehouse the table is in memory and keeps its keys too.
    let elsewhere = tempfile::tempdir().unwrap();
    let script = "CREATE TABLE m (k INT PRIMARY KEY, v STRING); INSERT INTO m VALUES (1, 'x'); SELECT k, v FROM m GROUP BY k";
    let run = crate::support::gobi(&["query", "--format", "csv", script], elsewhere.path()).ok();
    assert!(run.stdout.ends_with("k,v\n1,x\n"), "{}", run.stdout);
}

/// Types Delta cannot hold as they are: stored losslessly, read back by gobi as declared
/// (filters and INSERT included), refused by name where Delta has no lossless form.
#[test]
fn types_delta_cannot_hold_are_stored_losslessly_and_read_back_as_declared() {
    let lh = Lakehouse::new();
    lh.run("CREATE TABLE u AS SELECT arrow_cast(18446744073709551615, 'UInt64') AS big, arrow_cast(200, 'UInt8') AS small, CAST('10:00:00.123456789' AS TIME) AS at_time").ok();
    let typed =
        "SELECT arrow_typeof(big) AS b, big, arrow_typeof(small) AS s, small, arrow_typeof(at_time) AS t, CAST(at_time AS STRING) AS at FROM u ORDER BY small";
    assert_eq!(lh.values(typed), rows![["UInt64", 18446744073709551615u64, "UInt8", 200, "Time64(ns)", "10:00:00.123456789"]]);
    lh.run("INSERT INTO u VALUES (5, 7, CAST('23:59:59' AS TIME))").ok();
    assert_eq!(lh.values("SELECT small FROM u WHERE big > 18446744073709551614 OR at_time > CAST('23:00:00' AS TIME) ORDER BY small"), rows![[7], [200]]);
    assert_eq!(lh.values("SELECT count(*) FROM u WHERE big = 5"), rows![[1]]);
    let run = lh.run("CREATE TABLE iv AS SELECT INTERVAL '1 day' AS gap").user_error();
    assert!(run.stderr.starts_with("error: column gap has type Interval(MonthDayNano), which a Delta table cannot hold\n"), "{}", run.stderr);
    assert!(run.stderr.contains("CAST the column"), "{}", run.stderr);
    assert!(!lh.path().join("tables/iv").exists(), "a refused table leaves no folder");
}
