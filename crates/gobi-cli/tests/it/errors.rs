//! Every user mistake: one clear message, exit code 1, no panic, nothing half-written.

use crate::rows;
use crate::support::{gobi, Lakehouse};

#[test]
fn syntax_error_shows_line_column_and_caret_and_runs_nothing() {
    let lh = Lakehouse::new();
    let run = lh.run("CREATE TABLE t (a INT);\nINSERT INTO t VALUES (1);\nSELECT a FROM t WHERE a = = 1").user_error();
    assert_eq!(
        run.stderr,
        "error: Expected: an expression, found: =\n --> 3:27\n  |\n3 | SELECT a FROM t WHERE a = = 1\n  |                           ^\n"
    );
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

#[test]
fn a_folder_that_is_not_a_lakehouse_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let run = gobi(&["query", "SELECT 1"], dir.path()).user_error();
    assert!(run.stderr.contains("is not a gobi lakehouse"), "{}", run.stderr);
    assert!(run.stderr.contains("hint: run `gobi init"), "{}", run.stderr);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing may be created");
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
