//! `gobi plan`: the plan that runs, with estimates, each join's algorithm and why, and after
//! `--analyze` what each operator did.

use serde_json::Value;

use crate::rows;
use crate::support::{gobi, require, shared_dir, Lakehouse};

const JOIN: &str = "SELECT s.name, count(*) AS n FROM big b JOIN small s ON b.id = s.k GROUP BY s.name";

fn tables() -> Lakehouse {
    let lh = Lakehouse::new();
    lh.run("CREATE TABLE big AS SELECT value AS id FROM generate_series(1, 200000); CREATE TABLE small AS SELECT value AS k, 'n' || value AS name FROM generate_series(1, 1000)").ok();
    lh
}

/// The plan's operators, depth first, as `gobi plan --format json` printed them.
pub(crate) fn operators(plan: &Value) -> Vec<&Value> {
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

/// The spills `--analyze` shows per operator add up to the query log's figures for the same
/// statement, and a spilling join says how it ran; `--format dot` draws the same tree.
#[test]
fn analyzed_spills_match_the_query_log_and_dot_draws_the_plan() {
    let lh = tables();
    let queries = [("join", "SELECT count(*) FROM big a JOIN big b ON a.id = b.id"), ("sort", "SELECT id FROM big ORDER BY id DESC")];
    for (what, query) in queries {
        // A per-query limit is hard (a pool lets a query borrow the cache pool's room).
        let run = gobi(&["plan", "--analyze", "--format", "json", &format!("SET memory.query_limit = '1MiB'; {query}")], lh.path()).ok();
        let analyzed: Value = serde_json::from_str(&run.stdout).unwrap();
        let ops = operators(&analyzed);
        let spills: u64 = ops.iter().filter_map(|op| op["actual"]["spills"].as_u64()).sum();
        let spilled: u64 = ops.iter().filter_map(|op| op["actual"]["spilled_bytes"].as_u64()).sum();
        assert!(spills > 0, "the {what} spilled under 1 MiB: {analyzed:#}");
        let logged = lh.values(&format!(
            "SELECT spills, spilled_bytes FROM gobi_query_log() WHERE text = '{}' ORDER BY started_at DESC LIMIT 1",
            query.replace('\'', "''")
        ));
        assert_eq!(logged, rows![[spills, spilled]], "the {what}: the plan's spills against the query log's");
        // No operator's peak is above the statement's, and the one that spilled held memory.
        let logged_peak = lh
            .values(&format!("SELECT peak_reserved_bytes FROM gobi_query_log() WHERE text = '{}' ORDER BY started_at DESC LIMIT 1", query.replace('\'', "''")))
            [0][0]
            .as_u64()
            .unwrap();
        assert!(logged_peak <= 1 << 20, "the {what}'s peak {logged_peak} within its limit");
        for op in &ops {
            assert!(op["actual"]["peak_reserved_bytes"].as_u64().unwrap() <= logged_peak, "{op:#}");
        }
        let spiller = ops.iter().find(|op| op["actual"]["spills"].as_u64() > Some(0)).unwrap();
        assert!(spiller["actual"]["peak_reserved_bytes"].as_u64() > Some(0), "{spiller:#}");
        assert!(spiller["actual"]["peak_allocated_bytes"].as_u64() > Some(0), "the allocator's bytes are charged to it: {spiller:#}");
        if what == "join" {
            let join = ops.iter().find(|op| op["operator"] == "SpillingHashJoinExec").unwrap();
            assert!(join["actual"]["join"]["spilled_buckets"].as_u64().unwrap() > 0, "{join:#}");
        }
    }
    let dot = gobi(&["plan", "--format", "dot", JOIN], lh.path()).ok().stdout;
    assert!(dot.starts_with("digraph plan {\n"), "{dot}");
    assert!(dot.contains("in-memory hash join") && dot.contains(" -> n0;"), "{dot}");
    let run = gobi(&["query", "--format", "dot", "SELECT 1"], lh.path()).fails_with(crate::support::exit::USAGE);
    assert!(run.stderr.contains("--format dot draws plans"), "{}", run.stderr);
}

/// `.plan` in the REPL shows what `gobi plan` shows, and a mistake in it leaves the REPL going.
#[test]
fn the_repl_plans_with_dot_plan() {
    let lh = tables();
    let run =
        crate::support::gobi_stdin(&["repl"], lh.path(), &format!(".plan --analyze {JOIN}\n.plan SELECT nope FROM small\nSELECT 6 * 7 AS answer;\n")).ok();
    assert!(run.stdout.contains("in-memory hash join: build"), "{}", run.stdout);
    assert!(run.stdout.contains("ran: rows 1000"), "{}", run.stdout);
    assert!(run.stderr.contains("nope"), "{}", run.stderr);
    assert!(run.stdout.contains("42"), "{}", run.stdout);
}

/// TPC-H plans at scale 0.01, kept as insta snapshots (`cargo insta review` after a change):
/// each operator, its estimated rows, what it holds and from which pool, and each join's
/// algorithm — q3's joins change algorithm between a 4 MiB and a 1 GiB query pool. Estimated
/// bytes are left out: the demo's files differ by a few bytes from one generation to the next
/// on a loaded machine, and with them the byte estimates (rows and plans do not).
#[test]
fn tpch_plans_keep_their_snapshots() {
    let Some(shared) = shared_dir() else {
        require(false, "the TPC-H queries (../shared/bench/tpch/queries)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    gobi(&["demo", "tpch", "--scale", "0.01"], dir.path()).ok();
    let lakehouse = dir.path().join("tpch");
    for (query, pool) in [("q1", "1GiB"), ("q3", "4MiB"), ("q3", "1GiB"), ("q5", "1GiB"), ("q18", "1GiB")] {
        let sql = std::fs::read_to_string(shared.join(format!("bench/tpch/queries/{query}.sql"))).unwrap();
        // Plans depend on the partitions, which default to the machine's cores.
        let script = format!("SET datafusion.execution.target_partitions = 2; {sql}");
        let run = gobi(&["--lakehouse", lakehouse.to_str().unwrap(), "--memory-query", pool, "plan", "--format", "json", &script], dir.path()).ok();
        let mut shape = String::new();
        shape_of(&serde_json::from_str(&run.stdout).unwrap(), 0, &mut shape);
        insta::with_settings!({ snapshot_suffix => format!("{query}-{pool}") }, {
            insta::assert_snapshot!("tpch", shape);
        });
    }
}

/// One line per operator, indented by depth: name, estimated rows, what it holds (and from
/// which pool), a join's algorithm.
fn shape_of(node: &Value, depth: usize, out: &mut String) {
    let rows = match (node["estimated_rows"]["kind"].as_str(), &node["estimated_rows"]["value"]) {
        (Some("exact"), value) => value.to_string(),
        (Some("about"), value) => format!("≈{value}"),
        _ => "?".to_string(),
    };
    let holds = match node["pool"].as_str() {
        Some(pool) => format!("  {} ({pool})", node["memory"].as_str().unwrap()),
        None => String::new(),
    };
    let join = node["join"]["algorithm"].as_str().map_or_else(String::new, |algorithm| format!("  {algorithm}"));
    out.push_str(&format!("{}{}  rows {rows}{holds}{join}\n", "  ".repeat(depth), node["operator"].as_str().unwrap()));
    for child in node["children"].as_array().unwrap() {
        shape_of(child, depth + 1, out);
    }
}
