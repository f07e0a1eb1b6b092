//! `gobi plan`: the plan that runs, with estimates, each join's algorithm and why, and after
//! `--analyze` what each operator did.

use serde_json::Value;

use crate::rows;
use crate::support::{gobi, Lakehouse};

const JOIN: &str = "SELECT s.name, count(*) AS n FROM big b JOIN small s ON b.id = s.k GROUP BY s.name";

fn tables() -> Lakehouse {
    let lh = Lakehouse::new();
    lh.run("CREATE TABLE big AS SELECT value AS id FROM generate_series(1, 200000); CREATE TABLE small AS SELECT value AS k, 'n' || value AS name FROM generate_series(1, 1000)").ok();
    lh
}

/// The plan's operators, depth first, as `gobi plan --format json` printed them.
fn operators(plan: &Value) -> Vec<&Value> {
    let mut all = vec![plan];
    for child in plan["children"].as_array().unwrap() {
        all.extend(operators(child));
    }
    all
}

fn plan(lh: &Lakehouse, query_pool: &str, analyze: bool) -> Value {
    let mut args = vec!["--memory-query", query_pool, "plan", "--format", "json", JOIN];
    if analyze {
        args.insert(3, "--analyze");
    }
    serde_json::from_str(&gobi(&args, lh.path()).ok().stdout).unwrap()
}

fn join_of(plan: &Value) -> &Value {
    let joins: Vec<&Value> = operators(plan).into_iter().filter(|op| !op["join"].is_null()).collect();
    assert_eq!(joins.len(), 1, "{plan:#}");
    joins[0]
}

#[test]
fn the_join_algorithm_follows_the_memory_and_is_the_one_that_runs() {
    let lh = tables();
    for (pool, algorithm, operator, comparison) in
        [("4MiB", "spilling hash join", "SpillingHashJoinExec", ">"), ("1GiB", "in-memory hash join", "HashJoinExec", "≤")]
    {
        let planned = plan(&lh, pool, false);
        let join = join_of(&planned);
        assert_eq!(join["join"]["algorithm"], algorithm, "{pool}: {join:#}");
        assert_eq!(join["operator"], operator);
        let reason = join["join"]["reason"].as_str().unwrap();
        assert!(reason.contains(&format!(" {comparison} share ")), "{pool}: {reason}");
        assert!(join["actual"].is_null(), "a plan not run has no actuals");
        // What --analyze ran is what the plan showed, and it counted the rows that came out.
        let analyzed = plan(&lh, pool, true);
        let ran = join_of(&analyzed);
        assert_eq!((&ran["operator"], &ran["join"]), (&join["operator"], &join["join"]), "{pool}");
        assert_eq!(ran["actual"]["rows"], 1000, "{pool}: {ran:#}");
        for op in operators(&analyzed) {
            let reserved = op["actual"]["peak_reserved_bytes"].as_u64();
            assert!(reserved.is_none_or(|peak| peak <= if pool == "4MiB" { 4 << 20 } else { 1 << 30 }), "{op:#}");
        }
    }
    // The estimates are the Delta log's: exact rows at the scans.
    let planned = plan(&lh, "1GiB", false);
    let scans: Vec<&Value> = operators(&planned).into_iter().filter(|op| op["operator"] == "DataSourceExec").collect();
    let mut rows: Vec<u64> = scans.iter().map(|scan| scan["estimated_rows"]["value"].as_u64().unwrap()).collect();
    rows.sort();
    assert_eq!(rows, [1000, 200000]);
}

#[test]
fn the_text_plan_is_a_tree_within_80_columns_and_statements_before_the_query_run_first() {
    let lh = tables();
    let run = gobi(&["--memory-query", "4MiB", "plan", "--analyze", &format!("SET memory.result_cache = off; {JOIN}")], lh.path()).ok();
    let text = run.stdout;
    assert!(text.starts_with("ProjectionExec  rows "), "{text}");
    assert!(text.contains("└─ "), "{text}");
    assert!(text.contains("spilling hash join: build ≈"), "{text}");
    assert!(text.contains("ran: rows 1000"), "{text}");
    for line in text.lines() {
        assert!(line.chars().count() <= 80, "over 80 columns: {line:?}");
    }
    // A plan of a statement that is not a query says so.
    let run = gobi(&["plan", "INSERT INTO small VALUES (1, 'x')"], lh.path()).user_error();
    assert!(run.stderr.contains("gobi plan shows queries"), "{}", run.stderr);
    assert_eq!(lh.values("SELECT count(*) FROM small"), rows![[1000]]);
}
