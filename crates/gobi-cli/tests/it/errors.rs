//! Every user mistake: one clear message, the exit code of its kind, no panic, nothing
//! half-written.

use std::path::{Path, PathBuf};

use crate::rows;
use crate::support::{exit, gobi, gobi_stdin, Lakehouse, ReadOnly};

#[test]
fn syntax_error_shows_line_column_and_caret_and_runs_nothing() {
    let lh = Lakehouse::new();
    let run = lh.run("CREATE TABLE t (a INT);\nINSERT INTO t VALUES (1);\nSELECT a FROM t WHERE a = = 1").fails_with(exit::SYNTAX);
    assert_eq!(run.stderr, "error: Expected: an expression, found: =\n --> 3:27\n  |\n3 | SELECT a FROM t WHERE a = = 1\n  |                           ^\n");
    assert!(!lh.path().join("tables/t").exists(), "a script with a syntax error must not run at all");
}

#[test]
fn unknown_table_suggests_a_close_name() {
    let lh = Lakehouse::new();
    lh.run("CREATE TABLE users (id INT)").ok();
    let run = lh.run("SELECT * FROM usres").user_error();
    assert!(run.stderr.starts_with("error: table usres not found\n"), "{}", run.stderr);
    assert!(run.stderr.contains("hint: did you mean users?"), "{}", run.stderr);
}

#[test]
fn unknown_column_points_at_it() {
    let lh = Lakehouse::new();
    lh.run("CREATE TABLE users (id INT, name STRING)").ok();
    let run = lh.run("SELECT id,\n       nme FROM users").user_error();
    assert!(run.stderr.contains("nme"), "{}", run.stderr);
    assert!(run.stderr.contains(" --> 2:8\n"), "{}", run.stderr);
    assert!(run.stderr.contains("2 |        nme FROM users\n  |        ^^^\n"), "{}", run.stderr);
}

/// A value that does not convert is pointed at and named with its column; an unknown column
/// in a query without FROM hints at it.
#[test]
fn run_time_errors_point_at_the_value_and_name_the_column() {
    let lh = Lakehouse::new();
    lh.run("CREATE TABLE orders (id BIGINT, total BIGINT, note STRING)").ok();
    let run = lh.run("SELECT 1;\nINSERT INTO orders VALUES (1, 2, 'a'),\n  (99, 'abc', 'b')").user_error();
    assert_eq!(run.stderr, "error: cannot convert 'abc' to Int64 for column total\n --> 3:8\n  |\n3 |   (99, 'abc', 'b')\n  |        ^^^^^\n");
    let run = lh.run("INSERT INTO orders (note, total) VALUES ('x', '7z')").user_error();
    assert!(run.stderr.starts_with("error: cannot convert '7z' to Int64 for column total\n --> 1:47\n"), "{}", run.stderr);
    let run = lh.run("SELECT CAST('soon' AS DATE) AS d").user_error();
    assert!(run.stderr.starts_with("error: cannot convert 'soon' to Date32\n --> 1:13\n"), "{}", run.stderr);
    assert_eq!(lh.commits("orders"), 1);
    let run = lh.run("SELECT id WHERE total > 100").user_error();
    assert!(run.stderr.contains("hint: missing FROM?"), "{}", run.stderr);
    let run = lh.run("SELECT id FROM orders WHERE totl > 100").user_error();
    assert!(!run.stderr.contains("missing FROM"), "{}", run.stderr);
}

#[test]
fn type_mismatch_is_a_clean_error_and_writes_nothing() {
    let lh = Lakehouse::new();
    lh.run("CREATE TABLE t (a INT, d DATE)").ok();
    let run = lh.run("INSERT INTO t VALUES (1, 'not a date')").user_error();
    assert!(run.stderr.to_lowercase().contains("not a date"), "{}", run.stderr);
    let run = lh.run("SELECT a + 'x' FROM t").user_error();
    assert!(!run.stderr.is_empty());
    assert_eq!(lh.commits("t"), 1);
    assert_eq!(lh.values("SELECT count(*) FROM t"), rows![[0]]);
}

#[test]
fn not_null_violation_names_the_column_and_leaves_the_table_unchanged() {
    let lh = Lakehouse::new();
    lh.run("CREATE TABLE t (id BIGINT NOT NULL, name STRING); INSERT INTO t VALUES (1, 'a')").ok();
    let run = lh.run("INSERT INTO t VALUES (2, 'b'), (NULL, 'c')").user_error();
    assert!(run.stderr.contains("NOT NULL"), "{}", run.stderr);
    assert!(run.stderr.contains("id"), "{}", run.stderr);
    let run = lh.run("UPDATE t SET id = NULL").user_error();
    assert!(run.stderr.contains("NOT NULL"), "{}", run.stderr);
    assert_eq!(lh.commits("t"), 2);
    assert_eq!(lh.values("SELECT * FROM t"), rows![[1, "a"]]);
}

#[test]
fn bad_files_are_named() {
    let lh = Lakehouse::new();
    let run = lh.run("SELECT * FROM 'missing.parquet'").user_error();
    assert!(run.stderr.contains("no such file or folder: missing.parquet"), "{}", run.stderr);
    std::fs::write(lh.path().join("broken.parquet"), b"this is not parquet").unwrap();
    let run = lh.run("SELECT * FROM 'broken.parquet'").user_error();
    assert!(run.stderr.to_lowercase().contains("parquet"), "{}", run.stderr);
}

/// An upstream error that captured a backtrace (delta kernel's, with `RUST_BACKTRACE=1`, which
/// every run of the suite sets) shows only its message: here the kernel's for a log whose
/// schema names a type it does not know (a newer writer's).
#[test]
fn an_upstream_error_never_shows_its_backtrace() {
    let lh = Lakehouse::new();
    lh.run("CREATE TABLE t AS SELECT 1 AS a").ok();
    let log = lh.table_log("t").join("00000000000000000000.json");
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::write(&log, text.replace(r#"\"type\":\"long\""#, r#"\"type\":\"time\""#)).unwrap();
    let run = lh.run("SELECT * FROM t").user_error();
    assert!(run.stderr.contains("Unsupported Delta table type: 'time'"), "{}", run.stderr);
}

/// A table whose newest log file is cut short hides only itself: SHOW TABLES lists every
/// table, the others read, and its error names it and the file, and says what can be done
/// (which works: the version before reads, and DROP TABLE removes it).
#[test]
fn a_corrupt_log_hides_only_its_own_table() {
    let lh = Lakehouse::new();
    lh.run("CREATE TABLE a AS SELECT 1 AS x; CREATE TABLE b AS SELECT 2 AS y; INSERT INTO b VALUES (3)").ok();
    std::fs::write(lh.path().join("tables/b/_delta_log/00000000000000000001.json"), "{\"commitInfo\": {\"timestamp\": 1").unwrap();
    assert_eq!(lh.values("SHOW TABLES"), rows![["a", "table"], ["b", "table"]]);
    assert_eq!(lh.values("SELECT x FROM a"), rows![[1]]);
    let run = lh.run("SELECT y FROM b").user_error();
    assert!(run.stderr.contains("table b cannot be read: its log file _delta_log/00000000000000000001.json is not valid JSON"), "{}", run.stderr);
    assert!(run.stderr.contains("SELECT * FROM b AS OF VERSION 0") && run.stderr.contains("DROP TABLE b"), "{}", run.stderr);
    assert_eq!(lh.values("SELECT y FROM b AS OF VERSION 0"), rows![[2]]);
    lh.run("DROP TABLE b").ok();
    assert_eq!(lh.values("SHOW TABLES"), rows![["a", "table"]]);
}

/// A lakehouse its user may read and not write: reads work without a panic, every kind of
/// write says the folder is read-only, and nothing is left half-written.
#[test]
fn a_read_only_lakehouse_reads_and_refuses_writes_clearly() {
    let lh = Lakehouse::new();
    lh.run("CREATE TABLE t (a INT); INSERT INTO t VALUES (1), (2)").ok();
    let before = crate::support::files_under(lh.path());
    let read_only = ReadOnly::new(lh.path());
    let run = read_only.gobi(&["query", "--format", "csv", "SELECT sum(a) AS s FROM t; SELECT count(*) AS n FROM t AS OF VERSION 0"]).ok();
    assert_eq!(run.stdout, "s\n3\nn\n0\n");
    assert_eq!(run.stderr, "");
    for write in
        ["INSERT INTO t VALUES (3)", "CREATE TABLE u AS SELECT 1 AS b", "UPDATE t SET a = 5", "DELETE FROM t", "DROP TABLE t", "CREATE VIEW v AS SELECT 1"]
    {
        let run = read_only.gobi(&["query", write]).fails_with(exit::LAKEHOUSE);
        assert!(run.stderr.contains("is read-only"), "{write}: {}", run.stderr);
    }
    drop(read_only);
    assert_eq!(crate::support::files_under(lh.path()), before, "a refused write left files behind");
    assert_eq!(lh.values("SELECT a FROM t ORDER BY a"), rows![[1], [2]]);
}

#[test]
fn a_failing_statement_stops_the_script_after_the_ones_before_it() {
    let lh = Lakehouse::new();
    let run = lh.run("CREATE TABLE t (a INT);\nINSERT INTO t VALUES (1);\nINSERT INTO nope VALUES (2);\nINSERT INTO t VALUES (3)").user_error();
    assert!(run.stderr.contains("nope"), "{}", run.stderr);
    assert!(run.stderr.contains("3 | INSERT INTO nope"), "{}", run.stderr);
    assert_eq!(lh.values("SELECT * FROM t"), rows![[1]]);
}

#[test]
fn update_and_delete_refuse_what_they_cannot_do_exactly() {
    let lh = Lakehouse::new();
    lh.run("CREATE TABLE t (id INT, name STRING); INSERT INTO t VALUES (1, 'a'), (2, 'b')").ok();
    for (sql, message) in [
        ("DELETE FROM t LIMIT 1", "DELETE … LIMIT is not supported"),
        ("DELETE FROM t WHERE id IN (SELECT id FROM t)", "DELETE with a subquery is not supported"),
        ("UPDATE t SET name = (SELECT 'x')", "UPDATE with a subquery is not supported"),
        ("CREATE TABLE d (a INT DEFAULT 3)", "DEFAULT values are not supported"),
    ] {
        let run = lh.run(sql).user_error();
        assert!(run.stderr.contains(message), "{sql}: {}", run.stderr);
    }
    assert_eq!(lh.commits("t"), 2);
    // Names are resolved by DataFusion, so qualified and upper-case columns work.
    assert_eq!(lh.values("UPDATE t SET name = upper(t.name) WHERE ID = 2"), rows![[1]]);
    assert_eq!(lh.values("DELETE FROM t WHERE t.id = 1"), rows![[1]]);
    assert_eq!(lh.values("SELECT * FROM t"), rows![[2, "B"]]);
}

#[test]
fn views_cannot_refer_to_themselves() {
    let lh = Lakehouse::new();
    lh.run("CREATE TABLE t (a INT); CREATE VIEW v1 AS SELECT a FROM t; CREATE VIEW v2 AS SELECT a FROM v1").ok();
    for sql in ["CREATE OR REPLACE VIEW v1 AS SELECT a FROM v2", "CREATE OR REPLACE VIEW v1 AS SELECT a FROM v1"] {
        let run = lh.run(sql).user_error();
        assert!(run.stderr.contains("view v1 would refer to itself"), "{}", run.stderr);
    }
    assert_eq!(lh.values("SELECT count(*) FROM v2"), rows![[0]]);
}

#[test]
fn names_cannot_reach_outside_the_lakehouse() {
    let lh = Lakehouse::new();
    let other = Lakehouse::new();
    other.run("CREATE TABLE victim (a INT)").ok();
    std::fs::write(other.path().join("notes.sql"), "keep me").unwrap();
    let other_name = other.path().file_name().unwrap().to_str().unwrap();
    // Relative to tables/ and to _gobi/views/ of `lh`, these reach into `other`.
    lh.run(&format!("DROP TABLE \"../../{other_name}/tables/victim\"")).user_error();
    lh.run(&format!("DROP VIEW \"../../../{other_name}/notes\"")).user_error();
    assert!(other.table_log("victim").is_dir());
    assert!(other.path().join("notes.sql").exists());
}

/// Every file and folder under `dir` (if it exists), relative to it.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut found = vec![];
    let mut pending = vec![dir.to_path_buf()];
    while let Some(folder) = pending.pop() {
        for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
            found.push(entry.path().strip_prefix(dir).unwrap().to_path_buf());
            if entry.file_type().unwrap().is_dir() {
                pending.push(entry.path());
            }
        }
    }
    found
}

/// Tables, views and functions named `..`, with `/`, `\`, a control character, NUL, or too
/// long: each refused with a message that says what is wrong with the name, and nothing is
/// written outside the lakehouse, nor any table, view or function inside it. (DataFusion first
/// looks a table name with `/` up as a file: "no such file or folder", with the name's problem
/// as the hint.)
#[test]
fn names_that_are_not_one_file_name_are_refused_for_every_kind() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("lh");
    gobi(&["init", dir.to_str().unwrap()], parent.path()).ok();
    let long = "x".repeat(300);
    let names = ["..", "../x", "../../../escaped", "a/b", "/tmp/gobi-escaped", "a\\b", "..\\..\\x", "tab\there", long.as_str()];
    for name in names {
        for sql in [
            format!("CREATE TABLE \"{name}\" (a INT)"),
            format!("CREATE TABLE \"{name}\" AS SELECT 1 AS a"),
            format!("CREATE VIEW \"{name}\" AS SELECT 1"),
            format!("CREATE OR REPLACE VIEW \"{name}\" AS SELECT 1"),
            format!("FUNCTION \"{name}\"(a) => a"),
            format!("FUNCTION \"{name}\"(a INT) RETURNS INT {{ return a; }}"),
            format!("DROP VIEW \"{name}\""),
            format!("DROP FUNCTION \"{name}\""),
        ] {
            let run = gobi(&["query", &sql], &dir).user_error();
            let kind = if sql.contains("VIEW") {
                "view"
            } else if sql.contains("FUNCTION") {
                "function"
            } else {
                "table"
            };
            assert!(run.stderr.contains(&format!("cannot name a {kind}: ")), "{sql}: {}", run.stderr);
            assert!(run.stderr.contains("a name becomes a file name in the lakehouse"), "{sql}: {}", run.stderr);
        }
        // Such a table cannot exist.
        for sql in [format!("DROP TABLE \"{name}\""), format!("INSERT INTO \"{name}\" VALUES (1)")] {
            let run = gobi(&["query", &sql], &dir).user_error();
            assert!(run.stderr.contains("not found") || run.stderr.contains("cannot name a table"), "{sql}: {}", run.stderr);
        }
    }
    for sql in ["CREATE TABLE \"a\0b\" (a INT)", "CREATE VIEW \"a\0b\" AS SELECT 1", "FUNCTION \"a\0b\"(a) => a"] {
        let run = gobi_stdin(&["query", "-"], &dir, sql).user_error();
        assert!(run.stderr.contains("it contains NUL"), "{sql}: {}", run.stderr);
    }
    let outside: Vec<PathBuf> = tree(parent.path()).into_iter().filter(|p| !p.starts_with("lh")).collect();
    assert!(outside.is_empty(), "written outside the lakehouse: {outside:?}");
    for folder in ["tables", "_gobi/views", "_gobi/functions"] {
        let inside = tree(&dir.join(folder));
        assert!(inside.is_empty(), "written into {folder}: {inside:?}");
    }
    let mut top: Vec<String> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    top.sort();
    assert_eq!(top, ["_gobi", "gobi.toml", "tables"]);
}

/// Each kind of failure exits with its own code, and `gobi --help` lists them.
#[test]
fn exit_codes_follow_the_kind_of_error_and_help_lists_them() {
    let lh = Lakehouse::new();
    let help = gobi(&["--help"], lh.path()).ok().stdout;
    for line in [
        "Exit codes:",
        "  0    success",
        "  1    a statement failed",
        "  2    usage",
        "  3    syntax",
        "  4    memory",
        "  5    conflict",
        "  6    lakehouse",
        "  7    internal",
        "  130  cancelled",
    ] {
        assert!(help.contains(line), "{line:?} missing from --help:\n{help}");
    }

    let run = lh.run("CREATE TABLE t (a INT);\nSELEC * FROM t").fails_with(exit::SYNTAX);
    assert!(run.stderr.contains("2:1"), "{}", run.stderr);
    assert!(!lh.path().join("tables/t").exists(), "nothing of a script that does not parse runs");

    let run = lh.run("SELECT * FROM nope").fails_with(exit::FAILED);
    assert!(run.stderr.starts_with("error: table nope not found"), "{}", run.stderr);
    lh.run("SELECT $nope").fails_with(exit::FAILED);

    // An aggregate into one value cannot spill: with 1 MiB of query pool and no cache pool to
    // borrow from, it is refused.
    let gather = "SELECT cardinality(array_agg(md5(CAST(value AS STRING)))) FROM generate_series(1, 200000)";
    let run = gobi(&["--memory-query", "1MiB", "--memory-cache", "0B", "query", gather], lh.path()).fails_with(exit::MEMORY);
    assert!(run.stderr.contains("SET memory."), "{}", run.stderr);

    gobi(&["query", "SELECT 1", "--no-such-option"], lh.path()).fails_with(exit::USAGE);
    let run = gobi(&["query"], lh.path()).fails_with(exit::USAGE);
    assert!(run.stderr.contains("no statements given"), "{}", run.stderr);
    gobi(&["run", "missing.sql"], lh.path()).fails_with(exit::USAGE);
}
