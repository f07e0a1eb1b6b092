//! The command line itself: init, input sources, formats, help.

use crate::rows;
use crate::support::{exit, gobi, gobi_stdin, gobi_with_env, Lakehouse, GOBI};

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

/// `-f` is a file, as DuckDB's users expect; a script can start with a `-- comment`; `gobi run -`
/// reads stdin.
#[test]
fn scripts_from_short_flags_comments_and_stdin() {
    let lh = Lakehouse::new();
    std::fs::write(lh.path().join("q.sql"), "SELECT 2 AS two").unwrap();
    assert_eq!(gobi(&["query", "-f", "q.sql", "--format", "csv"], lh.path()).ok().stdout, "two\n2\n");
    assert_eq!(gobi(&["query", "-- the answer\nSELECT 42 AS a", "--format", "csv"], lh.path()).ok().stdout, "a\n42\n");
    gobi_stdin(&["run", "-"], lh.path(), "CREATE TABLE t AS SELECT 7 AS x;").ok();
    assert_eq!(lh.values("SELECT x FROM t"), rows![[7]]);
}

/// Outside a lakehouse gobi runs in memory: files are read by path or with `read_*` (DuckDB's
/// options), COPY writes with DuckDB's options, a table lasts for the run, and nothing else is
/// written to the folder. A lakehouse named by flag or environment that is not
/// one is still refused, writing nothing.
#[test]
fn outside_a_lakehouse_gobi_reads_files_in_memory_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t.csv"), "a,b\n1,x\n2,y\n").unwrap();
    std::fs::write(dir.path().join("t.json"), "{\"a\": 3}\n{\"a\": 4}\n").unwrap();
    let csv = |sql: &str| gobi(&["query", "--format", "csv", sql], dir.path()).ok().stdout;
    assert_eq!(csv("COPY (SELECT * FROM 't.csv') TO 't.parquet'"), "count\n2\n");
    assert_eq!(csv("SELECT sum(a) AS s FROM 't.parquet'"), "s\n3\n");
    assert_eq!(csv("SELECT b FROM 't.csv' ORDER BY a DESC"), "b\ny\nx\n");
    assert_eq!(csv("SELECT sum(a) AS s FROM 't.json'"), "s\n7\n");
    assert_eq!(csv("SELECT sum(a) AS s FROM read_parquet('t.parquet')"), "s\n3\n");
    assert_eq!(csv("SELECT sum(a) AS s FROM read_json('t.json')"), "s\n7\n");
    csv("COPY (SELECT * FROM read_csv('t.csv')) TO 'pipes.txt' (FORMAT csv, HEADER false, DELIMITER '|')");
    assert_eq!(std::fs::read_to_string(dir.path().join("pipes.txt")).unwrap(), "1|x\n2|y\n");
    assert_eq!(csv("SELECT column_2 AS b FROM read_csv('pipes.txt', header = false, delim = '|') ORDER BY column_1"), "b\nx\ny\n");
    let wrong = gobi(&["query", "SELECT * FROM read_csv('t.csv', nope = 1)"], dir.path()).user_error();
    assert!(wrong.stderr.contains("read_csv() has no option nope; its options: header, delim"), "{}", wrong.stderr);
    let missing = gobi(&["query", "SELECT * FROM read_parquet('gone.parquet')"], dir.path()).user_error();
    assert!(missing.stderr.contains("no such file or folder: gone.parquet"), "{}", missing.stderr);
    assert_eq!(csv("SELECT 1 AS one"), "one\n1\n");
    assert_eq!(csv("CREATE TABLE m AS SELECT 5 AS x; SELECT x FROM m"), "x\n5\n");
    let gone = gobi(&["query", "SELECT x FROM m"], dir.path()).user_error();
    assert!(gone.stderr.contains("m"), "the table lasted only for its run: {}", gone.stderr);
    let repl = gobi_stdin(&["repl"], dir.path(), "SELECT 1 AS one;\n").ok();
    assert!(repl.stderr.contains("in memory (no lakehouse here)"), "{}", repl.stderr);
    let mut left: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    left.sort();
    assert_eq!(left, ["pipes.txt", "t.csv", "t.json", "t.parquet"], "only the files COPY wrote");

    let empty = tempfile::tempdir().unwrap();
    let named = empty.path().to_str().unwrap();
    let by_flag = gobi(&["--lakehouse", named, "query", "SELECT 1"], dir.path()).fails_with(exit::LAKEHOUSE);
    assert!(by_flag.stderr.contains("is not a gobi lakehouse") && by_flag.stderr.contains("hint: run `gobi init"), "{}", by_flag.stderr);
    let by_env = std::process::Command::new(GOBI).args(["query", "SELECT 1"]).current_dir(dir.path()).env("GOBI_LAKEHOUSE", named).output().unwrap();
    assert_eq!(by_env.status.code(), Some(exit::LAKEHOUSE));
    assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0, "nothing may be created");
}

/// Lists, structs and maps print in csv as DuckDB prints them; a null stays an empty field.
#[test]
fn csv_writes_nested_values_as_text() {
    let dir = tempfile::tempdir().unwrap();
    let sql = "SELECT array_agg(x ORDER BY x) AS l, named_struct('a', 1, 'b', 'x') AS s, map(['k'], [2]) AS m, CAST(NULL AS INT[]) AS n FROM (VALUES (2), (1)) AS v(x)";
    let run = gobi(&["query", "--format", "csv", sql], dir.path()).ok();
    assert_eq!(run.stdout, "l,s,m,n\n\"[1, 2]\",\"{'a': 1, 'b': x}\",{k=2},\n");
}

/// In 80 columns, a 16-column result keeps its first and last columns and marks the dropped
/// middle with `…`; long cells are cut with `…`; the footer says what was left out.
#[test]
fn a_wide_result_fits_eighty_columns() {
    let dir = tempfile::tempdir().unwrap();
    let columns: Vec<String> = (1..=16).map(|i| format!("{i} * 1000 AS column_{i:02}")).collect();
    let sql = format!("SELECT 'a long text that does not fit one narrow cell at all' AS note, {} FROM (VALUES (1), (2)) AS v(x)", columns[1..].join(", "));
    let run = gobi_with_env(&["query", "--format", "table", &sql], dir.path(), &[("COLUMNS", "80")]).ok();
    assert!(run.stdout.lines().all(|line| line.chars().count() <= 80), "{}", run.stdout);
    assert_eq!(
        run.stdout,
        "\
┌──────────────────────────────────┬───────────┬───┬───────────┬───────────┐
│ note                             ┆ column_02 ┆ … ┆ column_15 ┆ column_16 │
╞══════════════════════════════════╪═══════════╪═══╪═══════════╪═══════════╡
│ a long text that does not fit o… ┆      2000 ┆ … ┆     15000 ┆     16000 │
│ a long text that does not fit o… ┆      2000 ┆ … ┆     15000 ┆     16000 │
└──────────────────────────────────┴───────────┴───┴───────────┴───────────┘
2 rows; 16 columns, 4 shown (--format line for all)
"
    );
    let lines = gobi(&["query", "--format", "line", "SELECT 1 AS a, 'x' AS long_name UNION ALL SELECT 2, 'y' ORDER BY a"], dir.path()).ok();
    assert_eq!(lines.stdout, "        a = 1\nlong_name = x\n\n        a = 2\nlong_name = y\n");
    let markdown = gobi(&["query", "--format", "markdown", "SELECT 1 AS a, 'x|y' AS b"], dir.path()).ok();
    assert_eq!(markdown.stdout, "| a | b |\n|---|---|\n| 1 | x\\|y |\n");
}

/// A long result shows its first and last rows, a `·` row between, and a footer with the count;
/// `--max-rows 0` shows every row.
#[test]
fn a_long_result_shows_its_ends_and_counts_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let sql = "SELECT value AS n FROM generate_series(1, 100000) ORDER BY n";
    let run = gobi(&["query", "--format", "table", "--max-rows", "6", sql], dir.path()).ok();
    assert_eq!(
        run.stdout,
        "\
┌────────┐
│      n │
╞════════╡
│      1 │
│      2 │
│      3 │
│ ·      │
│  99998 │
│  99999 │
│ 100000 │
└────────┘
100000 rows, 6 shown (--max-rows 0 for all)
"
    );
    let default = gobi(&["query", "--format", "table", sql], dir.path()).ok().stdout;
    assert!(default.ends_with("100000 rows, 40 shown (--max-rows 0 for all)\n") && default.lines().count() == 46, "{default}");
    let all = gobi(&["query", "--format", "table", "--max-rows", "0", "SELECT value AS n FROM generate_series(1, 1000)"], dir.path()).ok().stdout;
    assert!(all.ends_with("│   1000 │\n└────────┘\n1000 rows\n") || all.ends_with("│ 1000 │\n└──────┘\n1000 rows\n"), "{all}");
}

/// The README's tour, as written, in a fresh folder: every command succeeds (the REPL reads
/// an empty stdin), and the last, outside the lakehouse, reads the file the tour wrote.
#[test]
fn the_readme_tour_runs_as_written() {
    let readme = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md")).unwrap();
    let tour = readme.split("## A short tour").nth(1).and_then(|t| t.split("```sh\n").nth(1)).and_then(|t| t.split("```").next()).unwrap();
    assert!(tour.starts_with("gobi init shop"), "{tour}");
    let dir = tempfile::tempdir().unwrap();
    let bin = std::path::Path::new(GOBI).parent().unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let run = std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-x", "-c", tour])
        .current_dir(dir.path())
        .env("PATH", path)
        .env_remove("GOBI_LAKEHOUSE")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success(), "the tour stopped:\n{stderr}\n{stdout}");
    assert!(stdout.contains("\"name\":\"Bob\""), "{stdout}");
    assert_eq!(std::fs::read_to_string(dir.path().join("shop/users.txt")).unwrap().lines().count(), 2, "{stdout}");
    assert!(stdout.trim_end().ends_with("2,Bob,"), "the file, read in memory: {stdout}");
}

/// Each statement in the query log has an id no other process gives (a UUIDv7), though each
/// process numbers its own statements from the same start.
#[test]
fn statement_ids_are_unique_across_processes() {
    let lh = Lakehouse::new();
    for _ in 0..2 {
        lh.run("SELECT 1").ok();
    }
    let log = gobi(&["query", "--format", "json", "SELECT statement_id, query_id FROM gobi_query_log() WHERE text = 'SELECT 1'"], lh.path()).ok();
    let rows: Vec<serde_json::Value> = serde_json::from_str(log.stdout.trim()).unwrap();
    let ids: std::collections::HashSet<&str> = rows.iter().map(|r| r["statement_id"].as_str().unwrap()).collect();
    assert_eq!((rows.len(), ids.len()), (2, 2), "{}", log.stdout);
    assert_eq!(rows[0]["query_id"], rows[1]["query_id"], "each process counts from the same start: {}", log.stdout);
    assert!(ids.iter().all(|id| id.len() == 36 && id.as_bytes()[14] == b'7'), "UUIDv7: {ids:?}");
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
    // Byte counts read as the pools' units in a table, as plain numbers in csv.
    let pools = gobi(&["query", "SHOW MEMORY", "--format", "table"], lh.path()).ok();
    assert!(pools.stdout.contains("│ query ┆       50MiB ┆"), "{}", pools.stdout);
    let pools = gobi(&["query", "SHOW MEMORY", "--format", "csv"], lh.path()).ok();
    assert!(pools.stdout.contains("\nquery,52428800,"), "{}", pools.stdout);
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
