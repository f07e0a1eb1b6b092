//! PL-GRIZZLY on real Delta tables: every addition is compared value by value with the plain
//! SQL that means the same, and pipes are checked to plan exactly like their SQL twins.

use serde_json::Value;

use crate::rows;
use crate::support::{exit, gobi, Lakehouse};

const ORDERS: &str = "
CREATE TABLE users (id BIGINT NOT NULL, name STRING, active BOOLEAN);
INSERT INTO users VALUES (1, 'Ann', true), (2, 'Bo', false), (3, 'Cy', true), (4, 'Di', NULL);
CREATE TABLE orders (id BIGINT NOT NULL, user_id BIGINT, status STRING, total DOUBLE);
INSERT INTO orders VALUES
  (1, 1, 'open', 50.0), (2, 1, 'open', 1500.0), (3, 2, 'closed', 200.0), (4, 3, 'open', 120.0),
  (5, 3, 'closed', NULL), (6, 4, 'open', 999.5), (7, 2, NULL, 1000.0), (8, 1, 'open', 100.0);
";

fn orders() -> Lakehouse {
    let lh = Lakehouse::new();
    lh.run(ORDERS).ok();
    lh
}

/// Runs `script` (PL-GRIZZLY) and `sql` (its plain SQL twin) and checks their last results agree.
#[track_caller]
fn same_result(lh: &Lakehouse, script: &str, sql: &str) -> Vec<Vec<Value>> {
    let ours = lh.values(script);
    let theirs = lh.values(sql);
    assert_eq!(ours, theirs, "\n{script}\nvs\n{sql}");
    assert!(!ours.is_empty(), "the comparison must see rows: {sql}");
    ours
}

#[test]
fn from_first_and_pipes_give_the_results_of_their_sql_twins() {
    let lh = orders();
    let pairs = [
        ("FROM orders ORDER BY id", "SELECT * FROM orders ORDER BY id"),
        ("FROM orders WHERE total > 100 ORDER BY id", "SELECT * FROM orders WHERE total > 100 ORDER BY id"),
        ("FROM users SELECT name WHERE active ORDER BY name", "SELECT name FROM users WHERE active ORDER BY name"),
        (
            "FROM orders o JOIN users u ON o.user_id = u.id SELECT u.name, sum(o.total) AS s GROUP BY u.name ORDER BY u.name",
            "SELECT u.name, sum(o.total) AS s FROM orders o JOIN users u ON o.user_id = u.id GROUP BY u.name ORDER BY u.name",
        ),
        (
            "FROM orders
             |> WHERE status = 'open'
             |> EXTEND total * 1.2 AS gross
             |> AGGREGATE sum(gross) AS open_gross GROUP BY user_id
             |> ORDER BY open_gross DESC
             |> LIMIT 2",
            "SELECT user_id, sum(total * 1.2) AS open_gross FROM orders WHERE status = 'open'
             GROUP BY user_id ORDER BY open_gross DESC LIMIT 2",
        ),
        (
            "FROM orders |> AS o |> JOIN users u ON o.user_id = u.id |> SELECT o.id, u.name |> ORDER BY o.id",
            "SELECT o.id, u.name FROM orders o JOIN users u ON o.user_id = u.id ORDER BY o.id",
        ),
        ("FROM orders |> AGGREGATE count(*) AS n, max(total) AS top", "SELECT count(*) AS n, max(total) AS top FROM orders"),
        (
            "CREATE TABLE open_orders AS FROM orders WHERE status = 'open'; FROM open_orders |> SELECT id |> ORDER BY id",
            "SELECT id FROM orders WHERE status = 'open' ORDER BY id",
        ),
        ("WITH big AS (FROM orders WHERE total >= 1000) FROM big SELECT id ORDER BY id", "SELECT id FROM orders WHERE total >= 1000 ORDER BY id"),
    ];
    for (script, sql) in pairs {
        same_result(&lh, script, sql);
    }
}

/// The optimized plans (logical and physical) of a pipe query and of its SQL twin.
#[test]
fn pipes_plan_exactly_like_their_sql_twins() {
    let lh = orders();
    let pairs = [
        (
            "FROM orders |> WHERE status = 'open' |> SELECT user_id, total |> ORDER BY total DESC |> LIMIT 3",
            "SELECT user_id, total FROM orders WHERE status = 'open' ORDER BY total DESC LIMIT 3",
        ),
        (
            "FROM orders |> WHERE total > 100 |> AGGREGATE sum(total) GROUP BY user_id",
            "SELECT user_id, sum(total) FROM orders WHERE total > 100 GROUP BY user_id",
        ),
        (
            "FROM orders o JOIN users u ON o.user_id = u.id SELECT u.name, o.total WHERE u.active",
            "SELECT u.name, o.total FROM orders o JOIN users u ON o.user_id = u.id WHERE u.active",
        ),
    ];
    for (pipe, sql) in pairs {
        let ours = lh.values(&format!("EXPLAIN {pipe}"));
        let theirs = lh.values(&format!("EXPLAIN {sql}"));
        assert_eq!(ours.len(), 2, "a logical and a physical plan: {ours:?}");
        assert_eq!(ours, theirs, "\n{pipe}\nvs\n{sql}");
    }
}

#[test]
fn let_binds_scalars_and_tables_for_the_session() {
    let lh = orders();
    same_result(
        &lh,
        "let threshold = 100; let big = FROM orders WHERE total > $threshold; FROM big SELECT count(*) AS n, sum(total) AS s",
        "SELECT count(*) AS n, sum(total) AS s FROM orders WHERE total > 100",
    );
    // `let` again replaces, and a table variable is read like a table in joins.
    same_result(
        &lh,
        "let t = FROM orders WHERE id < 3; let t = FROM orders WHERE id > 6; let label = 'x' || 'y';
         FROM t JOIN users u ON t.user_id = u.id SELECT t.id, u.name, $label AS label ORDER BY t.id",
        "SELECT o.id, u.name, 'xy' AS label FROM orders o JOIN users u ON o.user_id = u.id WHERE o.id > 6 ORDER BY o.id",
    );
    // A scalar variable is a literal to the planner: it folds like one.
    let plan = lh.values("let limit_total = 500; EXPLAIN FROM orders WHERE total > $limit_total * 2");
    let logical = plan[0][1].as_str().unwrap();
    assert!(logical.contains("orders.total > Float64(1000)") || logical.contains("orders.total > Int64(1000)"), "{logical}");
    assert_eq!(
        lh.values("let n = (SELECT count(*) FROM orders); let d = DATE '2026-01-02'; SELECT $n AS n, $d + INTERVAL '1 day' AS next"),
        rows![[8, "2026-01-03"]]
    );
}

#[test]
fn typeof_names_the_type_of_expressions_variables_and_tables() {
    let lh = orders();
    assert_eq!(
        lh.values("let threshold = 100; let big = FROM orders SELECT id, total; SELECT @TypeOf($threshold), @TypeOf(big), @TypeOf(1.5), @TypeOf('a')"),
        rows![["Int64", "table(id Int64, total Float64)", "Float64", "Utf8"]]
    );
}

#[test]
fn expression_functions_are_inlined() {
    let lh = orders();
    same_result(
        &lh,
        "FUNCTION gross(net, rate) => net * (1 + rate); FUNCTION double_gross(x) => 2 * gross(x, 0.5);
         FROM orders SELECT id, gross(total, 0.2) AS g, double_gross(total) AS d ORDER BY id",
        "SELECT id, total * (1 + 0.2) AS g, 2 * (total * (1 + 0.5)) AS d FROM orders ORDER BY id",
    );
    // Inlined means invisible to the optimizer: the filter is pushed into the scan as if the
    // expression had been written out.
    let ours = lh.values("EXPLAIN FROM orders WHERE gross(total, 0.2) > 1000");
    let theirs = lh.values("EXPLAIN FROM orders WHERE total * (1 + 0.2) > 1000");
    assert_eq!(ours, theirs);
    assert!(ours[0][1].as_str().unwrap().contains("partial_filters"), "{ours:?}");
    // The output column is named after the call.
    let run = lh.run("FROM orders SELECT gross(total, 0.2) LIMIT 1").ok();
    assert!(run.stdout.contains("gross(total, 0.2)"), "{}", run.stdout);
}

const TIER: &str = "FUNCTION tier(total DOUBLE) RETURNS STRING {
    if total > 1000 then return 'gold';
    elif total > 100 then return 'silver';
    else return 'bronze';
    end
}";

#[test]
fn block_functions_give_the_results_of_case_expressions() {
    let lh = orders();
    lh.run("CREATE TABLE numbers AS SELECT value AS n, CASE WHEN value % 7 = 0 THEN NULL ELSE value * 1.5 END AS x FROM generate_series(1, 20000)").ok();
    same_result(
        &lh,
        &format!("{TIER}\nFROM orders SELECT id, tier(total) ORDER BY id"),
        "SELECT id, CASE WHEN total > 1000 THEN 'gold' WHEN total > 100 THEN 'silver' ELSE 'bronze' END FROM orders ORDER BY id",
    );
    // let (new and reassigned), nested if, a branch that falls through, match, and rows that
    // reach the end without return (NULL) — over many batches.
    let script = "FUNCTION shape(x DOUBLE, n BIGINT) RETURNS STRING {
        let scaled = x / 3;
        if x IS NULL then return 'none'; end
        if n % 2 = 0 then
            let scaled = scaled * 2;
            if scaled > 10000 then return 'big even'; end
        elif n % 5 = 0 then
            return match n % 3 { 0 -> 'five-three', 1 -> 'five-one' };
        end
        if scaled > 5000 then return 'large ' || CAST(n % 4 AS STRING); end
    }
    FROM numbers SELECT n, shape(x, n) AS s ORDER BY n";
    let sql = "SELECT n, CASE
        WHEN x IS NULL THEN 'none'
        WHEN n % 2 = 0 AND x / 3 * 2 > 10000 THEN 'big even'
        WHEN n % 2 <> 0 AND n % 5 = 0 THEN CASE n % 3 WHEN 0 THEN 'five-three' WHEN 1 THEN 'five-one' END
        WHEN (CASE WHEN n % 2 = 0 THEN x / 3 * 2 ELSE x / 3 END) > 5000 THEN 'large ' || CAST(n % 4 AS STRING)
        END AS s FROM numbers ORDER BY n";
    let values = same_result(&lh, script, sql);
    assert_eq!(values.len(), 20000);
    let nulls = values.iter().filter(|r| r[1].is_null()).count();
    assert!(nulls > 0 && nulls < 20000, "some rows return nothing and read NULL: {nulls}");
}

#[test]
fn functions_persist_and_can_be_listed_and_dropped() {
    let lh = orders();
    lh.run(&format!("FUNCTION gross(net, rate) => net * (1 + rate);\n{TIER}")).ok();
    // A new process (a new session) calls both.
    same_result(
        &lh,
        "FROM orders SELECT id, gross(total, 0.5), tier(total) WHERE id <= 3 ORDER BY id",
        "SELECT id, total * 1.5, CASE WHEN total > 1000 THEN 'gold' WHEN total > 100 THEN 'silver' ELSE 'bronze' END FROM orders WHERE id <= 3 ORDER BY id",
    );
    let listed: Vec<Vec<Value>> = lh.values("SHOW FUNCTIONS").into_iter().map(|r| r[..3].to_vec()).collect();
    assert_eq!(listed, rows![["gross", "expression", "gross(net, rate)"], ["tier", "block", "tier(total DOUBLE) RETURNS STRING"]]);
    lh.run("DROP FUNCTION tier").ok();
    let run = lh.run("SELECT tier(1.0)").user_error();
    assert!(run.stderr.contains("tier"), "{}", run.stderr);
    assert_eq!(lh.values("SHOW FUNCTIONS").len(), 1);
    lh.run("DROP FUNCTION IF EXISTS tier").ok();
    let run = lh.run("DROP FUNCTION grosss").user_error();
    assert!(run.stderr.contains("did you mean gross?"), "{}", run.stderr);
}

#[test]
fn block_function_results_are_memoized_when_arguments_repeat() {
    let lh = orders();
    lh.run("CREATE TABLE repeats AS SELECT value % 10 AS k FROM generate_series(1, 50000)").ok();
    let values = lh.values(
        "FUNCTION label(k BIGINT) RETURNS STRING { if k < 5 then return 'low'; end return 'high'; }
         FROM repeats SELECT label(k) AS l, count(*) AS n GROUP BY l ORDER BY l;
         SHOW FUNCTIONS",
    );
    let (hits, misses, bytes) = (values[0][4].as_u64().unwrap(), values[0][5].as_u64().unwrap(), values[0][3].as_u64().unwrap());
    assert_eq!(misses, 10, "each distinct argument is computed once");
    assert!(hits > 0 && bytes > 0, "hits {hits}, bytes {bytes}");
    same_result(
        &lh,
        "FUNCTION label(k BIGINT) RETURNS STRING { if k < 5 then return 'low'; end return 'high'; }
         FROM repeats SELECT label(k) AS l, count(*) AS n GROUP BY l ORDER BY l",
        "SELECT CASE WHEN k < 5 THEN 'low' ELSE 'high' END AS l, count(*) AS n FROM repeats GROUP BY l ORDER BY l",
    );
}

#[test]
fn match_is_a_case_expression_and_null_without_a_default() {
    let lh = orders();
    same_result(
        &lh,
        "FROM orders SELECT id, match status { 'open' -> 'O', 'closed' -> 'C', _ -> '?' } AS a,
         match user_id { 1 -> 'one', 2 -> 'two' } AS b ORDER BY id",
        "SELECT id, CASE status WHEN 'open' THEN 'O' WHEN 'closed' THEN 'C' ELSE '?' END AS a,
         CASE user_id WHEN 1 THEN 'one' WHEN 2 THEN 'two' END AS b FROM orders ORDER BY id",
    );
    // `match` stays usable as a column name.
    assert_eq!(lh.values("SELECT match FROM (SELECT 1 AS match)"), rows![[1]]);
}

#[test]
fn copy_exports_tables_and_queries_and_imports_files_in_one_commit() {
    let lh = orders();
    for format in ["parquet", "csv", "json"] {
        lh.run(&format!("COPY orders TO 'orders.{format}'")).ok();
        same_result(&lh, &format!("FROM 'orders.{format}' SELECT id, status ORDER BY id"), "SELECT id, status FROM orders ORDER BY id");
    }
    lh.run("COPY (FROM orders WHERE total > 500) TO 'big.parquet'").ok();
    same_result(&lh, "FROM 'big.parquet' SELECT id ORDER BY id", "SELECT id FROM orders WHERE total > 500 ORDER BY id");

    std::fs::write(lh.path().join("more.csv"), "id,total,status\n20,5.5,open\n21,,closed\n").unwrap();
    let before = lh.commits("orders");
    let run = lh.run("COPY 'more.csv' TO orders").ok();
    assert!(run.stderr.contains("copied 2 rows"), "{}", run.stderr);
    assert_eq!(lh.commits("orders"), before + 1, "one Delta commit");
    assert_eq!(
        lh.values("FROM orders SELECT id, user_id, status, total WHERE id >= 20 ORDER BY id"),
        rows![[20, null, "open", 5.5], [21, null, "closed", null]]
    );
    let imported = lh.values("COPY 'orders.parquet' TO orders; SELECT count(*) FROM orders");
    assert_eq!(imported, rows![[18]]);

    std::fs::write(lh.path().join("bad.csv"), "id,total\n30,1.0\n31,2.0\n32,lots\n").unwrap();
    let before = lh.commits("orders");
    let run = lh.run("COPY 'bad.csv' TO orders").user_error();
    assert!(run.stderr.contains("row 3 of bad.csv, column total: \"lots\" is not a valid Float64"), "{}", run.stderr);
    std::fs::write(lh.path().join("null_id.csv"), "id,total\n40,1.0\n,2.0\n").unwrap();
    let run = lh.run("COPY 'null_id.csv' TO orders").user_error();
    assert!(run.stderr.contains("row 2 of null_id.csv, column id: NULL in a NOT NULL column"), "{}", run.stderr);
    std::fs::write(lh.path().join("extra.csv"), "id,totl\n50,1.0\n").unwrap();
    let run = lh.run("COPY 'extra.csv' TO orders").user_error();
    assert!(run.stderr.contains("column totl") && run.stderr.contains("did you mean total?"), "{}", run.stderr);
    assert_eq!(lh.commits("orders"), before, "nothing written by a failed COPY");
}

/// Hand-written mistakes, each with the message and the position it must report.
#[test]
fn mistakes_are_reported_with_position_and_a_useful_message() {
    let lh = orders();
    lh.run(&format!("FUNCTION gross(net, rate) => net * (1 + rate);\n{TIER}")).ok();
    let cases: &[(&str, &str, &str)] = &[
        ("let threshold = 1;\nSELECT $thresold", "unknown variable $thresold; did you mean $threshold?", "2:8"),
        ("SELECT $nothing", "unknown variable $nothing", "1:8"),
        ("SELECT gross(1)", "function gross takes 2 arguments, got 1: gross(net, rate)", "1:8"),
        ("SELECT tier(1, 2)", "function tier takes 1 argument, got 2", "1:8"),
        ("SELECT tier('x')", "function tier: argument 1 (total) must be Float64, got Utf8", "1:1"),
        ("SELECT tiir(1.0)", "Did you mean 'tier'?", "1:8"),
        ("FROM ordrs", "table ordrs not found", "1:6"),
        ("FROM orders SELECT totl", "Did you mean 'orders.total'?", "1:20"),
        ("FROM orders |> WHERE totl > 1", "totl", "1:22"),
        ("FROM orders SELECT match status { 'a' -> 1, 2 }", "Expected: ->, found: }", "1:47"),
        ("FROM orders SELECT match status { _ -> 1, 'a' -> 2 }", "`}` after the `_` arm", "1:43"),
        ("FUNCTION f(x) RETURNS INT { return 1; }", "parameter x of f needs a type", "1:1"),
        ("FUNCTION f(x INT) { return x; }", "f needs a return type", "1:1"),
        ("FUNCTION f(x INT) RETURNS INT {\n  if x then return 1; end\n}", "in f: an if condition must be BOOLEAN", "1:1"),
        ("FUNCTION f(x INT) RETURNS INT {\n  if x > 1 then return 1;\n}", "Expected: elif, else or end, found: }", "3:1"),
        ("FUNCTION f(x INT, x INT) => x", "parameter x appears twice", "1:19"),
        ("FUNCTION f(x) => x +", "Expected: an expression", "1:21"),
        ("FUNCTION upper(x) => x", "upper is a built-in function", "1:1"),
        ("FUNCTION loop1(x) => 1 + loop1(x)", "function loop1 calls itself", "1:26"),
        ("FUNCTION ping(x) => pong(x);\nFUNCTION pong(x) => ping(x)", "function ping calls itself", "2:21"),
        ("FUNCTION f(x INT) RETURNS INT { return $v; }", "unknown variable $v", "1:40"),
        ("let = 1", "Expected: identifier, found: =", "1:5"),
        ("let x 1", "Expected: =, found: 1", "1:7"),
        ("SELECT @TypeOf(1, 2)", "@TypeOf takes one expression or table", "1:8"),
        ("COPY 'missing.csv' TO orders", "file missing.csv not found", "1:1"),
        ("COPY 'x.csv' TO nope", "table nope not found", "1:1"),
        ("let orders = FROM users", "already exists", "1:1"),
        ("DROP FUNCTION nope", "function nope not found", "1:1"),
    ];
    // These do not parse (exit code 3: nothing of the script ran); the others fail as they run.
    let do_not_parse = [
        "FROM orders SELECT match status { 'a' -> 1, 2 }",
        "FROM orders SELECT match status { _ -> 1, 'a' -> 2 }",
        "FUNCTION f(x INT) RETURNS INT {\n  if x > 1 then return 1;\n}",
        "FUNCTION f(x INT, x INT) => x",
        "FUNCTION f(x) => x +",
        "let = 1",
        "let x 1",
    ];
    for (script, message, position) in cases {
        let run = lh.run(script).fails_with(if do_not_parse.contains(script) { exit::SYNTAX } else { exit::FAILED });
        assert!(run.stderr.contains(message), "{script}\nwanted: {message}\ngot:\n{}", run.stderr);
        assert!(run.stderr.contains(&format!("--> {position}\n")), "{script}\nwanted at {position}, got:\n{}", run.stderr);
    }
    // Only the statements that succeeded defined something (ping, before pong failed).
    let names: Vec<Value> = lh.values("SHOW FUNCTIONS").into_iter().map(|r| r[0].clone()).collect();
    assert_eq!(names, rows![["gross"], ["ping"], ["tier"]].concat());
    assert!(gobi(&["query", "SELECT gross(1, 1) AS g", "--format", "csv"], lh.path()).ok().stdout.contains("g\n2"));
}
