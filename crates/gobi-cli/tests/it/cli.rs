//! The command line itself: init, input sources, formats, help.

use crate::rows;
use crate::support::{exit, gobi, gobi_stdin, Lakehouse, GOBI};

#[test]
fn init_writes_a_commented_config_with_the_default_pool_limits() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("lh");
    gobi(&["init", target.to_str().unwrap()], dir.path()).ok();
    let config = std::fs::read_to_string(target.join("gobi.toml")).unwrap();
    for line in ["query = \"50MiB\"", "cache = \"100MiB\"", "temp = \"25MiB\"", "# "] {
        assert!(config.contains(line), "{line} missing from:\n{config}");
    }
    assert!(target.join("tables").is_dir() && target.join("_gobi").is_dir());
    let run = gobi(&["init", target.to_str().unwrap()], dir.path()).fails_with(exit::LAKEHOUSE);
    assert!(run.stderr.contains("is already a gobi lakehouse"), "{}", run.stderr);
}

#[test]
fn lakehouse_from_flag_env_or_current_folder() {
    let lh = Lakehouse::new();
    lh.run("CREATE TABLE t (a INT); INSERT INTO t VALUES (5)").ok();
    let elsewhere = tempfile::tempdir().unwrap();
    let by_flag = gobi(&["--lakehouse", lh.path().to_str().unwrap(), "query", "SELECT * FROM t", "--format", "csv"], elsewhere.path()).ok();
    assert_eq!(by_flag.stdout, "a\n5\n");
    let by_env = std::process::Command::new(GOBI)
        .args(["query", "SELECT * FROM t", "--format", "csv"])
        .current_dir(elsewhere.path())
        .env("GOBI_LAKEHOUSE", lh.path())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&by_env.stdout), "a\n5\n");
}

#[test]
fn statements_from_stdin_files_and_run() {
    let lh = Lakehouse::new();
    gobi_stdin(&["query", "-"], lh.path(), "CREATE TABLE t (a INT);\nINSERT INTO t VALUES (1), (2);").ok();
    std::fs::write(lh.path().join("script.sql"), "INSERT INTO t VALUES (3);\n-- a comment\nDELETE FROM t WHERE a = 1;").unwrap();
    gobi(&["run", "script.sql"], lh.path()).ok();
    std::fs::write(lh.path().join("q.sql"), "SELECT sum(a) AS s FROM t").unwrap();
    let run = gobi(&["query", "--file", "q.sql", "--format", "csv"], lh.path()).ok();
    assert_eq!(run.stdout, "s\n5\n");
}

#[test]
fn formats_table_csv_and_json() {
    let lh = Lakehouse::new();
    lh.run("CREATE TABLE t (a INT, b STRING); INSERT INTO t VALUES (1, 'x'), (2, NULL)").ok();
    let csv = gobi(&["query", "SELECT * FROM t ORDER BY a", "--format", "csv"], lh.path()).ok();
    assert_eq!(csv.stdout, "a,b\n1,x\n2,\n");
    let json = gobi(&["query", "SELECT * FROM t ORDER BY a", "--format", "json"], lh.path()).ok();
    assert_eq!(json.stdout, "[{\"a\":1,\"b\":\"x\"},{\"a\":2,\"b\":null}]\n");
    let table = gobi(&["query", "SELECT * FROM t ORDER BY a", "--format", "table"], lh.path()).ok();
    assert!(table.stdout.contains("│ a ┆ b    │"), "{}", table.stdout);
    assert!(table.stdout.contains("│ 2 ┆ NULL │"), "{}", table.stdout);
    assert!(table.stdout.ends_with("2 rows\n"), "{}", table.stdout);
    let empty = gobi(&["query", "SELECT * FROM t WHERE a > 5", "--format", "csv"], lh.path()).ok();
    assert_eq!(empty.stdout, "a,b\n");
    assert_eq!(lh.values("SELECT count(*) FROM t"), rows![[2]]);
}

#[test]
fn every_command_explains_itself_with_an_example() {
    let dir = tempfile::tempdir().unwrap();
    for command in [&[][..], &["init"], &["query"], &["run"], &["repl"], &["demo"]] {
        let mut args = command.to_vec();
        args.push("--help");
        let run = gobi(&args, dir.path()).ok();
        assert!(run.stdout.contains("Example"), "gobi {command:?} --help has no example:\n{}", run.stdout);
    }
}

#[test]
fn repl_reads_multi_line_statements_and_dot_commands() {
    let lh = Lakehouse::new();
    let session =
        "CREATE TABLE t (a INT,\n  b STRING);\nINSERT INTO t\nVALUES (1, 'x');\nSELECT a, b\n  FROM t;\n.tables\n.schema t\nSELECT nope FROM t;\n.quit\n";
    let run = gobi_stdin(&["repl", "--format", "csv"], lh.path(), session).ok();
    assert!(run.stdout.contains("a,b\n1,x\n"), "{}", run.stdout);
    assert!(run.stdout.contains("name,kind\nt,table\n"), "{}", run.stdout);
    assert!(run.stdout.contains("column_name,data_type,is_nullable\na,Int32,YES\n"), "{}", run.stdout);
    assert!(run.stderr.contains("error: No field named nope"), "the REPL reports errors and goes on: {}", run.stderr);
    assert!(lh.path().join("_gobi/history").exists());
}
