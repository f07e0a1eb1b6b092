//! The spilling hash join: joins whose build is many times the query pool finish under it with
//! exactly the unlimited answer, whatever the join type; afterwards every pool reads 0 and no
//! spill file is left.

use crate::support::{files_under, gobi, gobi_stdin, pools_after, Lakehouse, WRITE_SMALL_ROW_GROUPS};

/// `big`: 200 000 rows, keys 0..50 000 four times each, a NULL key every 97th row, a 32-byte
/// string per row. `other`: 100 000 rows, keys -10 000..90 000 once each, a NULL key every 89th.
/// Their row groups are small enough for scans under 4 MiB.
fn two_tables() -> Lakehouse {
    let lh = Lakehouse::new();
    lh.run_with(
        &WRITE_SMALL_ROW_GROUPS,
        "CREATE TABLE big AS SELECT value AS id, CASE WHEN value % 97 = 0 THEN NULL ELSE value % 50000 END AS k, md5(CAST(value AS STRING)) AS s \
         FROM generate_series(1, 200000); \
         CREATE TABLE other AS SELECT value AS id, CASE WHEN value % 89 = 0 THEN NULL ELSE value - 10000 END AS k, value % 7 AS f, \
         md5(CAST(value * 3 AS STRING)) AS t FROM generate_series(1, 100000)",
    )
    .ok();
    lh
}

/// A few MiB for the query, nothing to borrow from the cache pool.
const SMALL: [&str; 4] = ["--memory-query", "6MiB", "--memory-cache", "0B"];
/// Smaller still: the builds of `EXISTS (SELECT 1 FROM other …)` (one key column) do not fit.
const SMALLER: [&str; 4] = ["--memory-query", "4MiB", "--memory-cache", "0B"];
const UNLIMITED: [&str; 4] = ["--memory-query", "2GiB", "--memory-cache", "0B"];

fn csv(lh: &Lakehouse, memory: &[&str], query: &str) -> String {
    let mut args = memory.to_vec();
    args.extend(["query", "--format", "csv", query]);
    gobi(&args, lh.path()).ok().stdout
}

/// The spilling join's metrics in `EXPLAIN ANALYZE`, summed over its lines: (name, value).
/// Values are as displayed: `4.29 K` reads 4.29, `118.9 MB` 118.9 (tests only compare to 0).
/// `script`'s last statement is the one analyzed.
fn join_metrics(lh: &Lakehouse, memory: &[&str], script: &str) -> Vec<(String, f64)> {
    let analyzed = match script.rsplit_once("; ") {
        Some((setup, query)) => csv(lh, memory, &format!("{setup}; EXPLAIN ANALYZE {query}")),
        None => csv(lh, memory, &format!("EXPLAIN ANALYZE {script}")),
    };
    let mut metrics: Vec<(String, f64)> = vec![];
    for line in analyzed.lines().filter(|l| l.contains("SpillingHashJoinExec")) {
        let Some(list) = line.split("metrics=[").nth(1) else { continue };
        for pair in list.split(", ") {
            let Some((name, value)) = pair.split_once('=') else { continue };
            let Some(Ok(value)) = value.split([' ', ']']).next().map(str::parse::<f64>) else { continue };
            match metrics.iter_mut().find(|(n, _)| n == name) {
                Some((_, total)) => *total += value,
                None => metrics.push((name.to_string(), value)),
            }
        }
    }
    assert!(!metrics.is_empty(), "no spilling join in the plan of {script}:\n{analyzed}");
    metrics
}

fn metric(metrics: &[(String, f64)], name: &str) -> f64 {
    metrics.iter().find(|(n, _)| n == name).map_or(0.0, |(_, v)| *v)
}

/// After `query` under `memory`, in the same process: every pool reads 0; and no spill file
/// is left in the lakehouse.
#[track_caller]
fn assert_released(lh: &Lakehouse, memory: &[&str], query: &str) {
    for (pool, _, reserved, _) in pools_after(lh, memory, &format!("{query}; SHOW MEMORY")) {
        assert_eq!(reserved, 0, "{query}: the {pool} pool reads 0 afterwards");
    }
    let left = files_under(&lh.path().join("_gobi/spill"));
    assert!(left.is_empty(), "{query}: spill files left behind: {left:?}");
}

/// Each join type, with and without a filter beside the keys: under the small pool the join
/// spills into buckets (its metrics say so) and the answer equals the unlimited run's.
#[test]
fn every_join_type_spills_under_a_small_pool_and_gives_the_unlimited_answer() {
    every_join_type_spills(&two_tables(), "");
}

/// DataFusion told to collect every build into one partition (its CollectLeft joins): every
/// join shares that one build among the probe's partitions, in memory or in buckets (the left,
/// full, semi and anti joins that output build rows join the buckets of every probe partition
/// once). The same answers as unlimited.
#[test]
fn with_one_build_for_every_probe_partition_every_join_type_spills_likewise() {
    let collect_left = "SET datafusion.optimizer.hash_join_single_partition_threshold = 1000000000; \
        SET datafusion.optimizer.hash_join_single_partition_threshold_rows = 1000000000; ";
    let lh = two_tables();
    for join in ["JOIN", "FULL JOIN"] {
        let plan = csv(&lh, &SMALL, &format!("{collect_left}EXPLAIN SELECT count(*) FROM big a {join} other b ON a.k = b.k"));
        assert!(plan.contains("SpillingHashJoinExec") && plan.contains("build=shared"), "{plan}");
    }
    every_join_type_spills(&lh, collect_left);
}

fn every_join_type_spills(lh: &Lakehouse, setup: &str) {
    let both = "count(*) AS n, count(a.id) AS a_rows, sum(a.id) AS a_ids, count(b.id) AS b_rows, sum(b.id) AS b_ids, max(a.s) AS a_s, max(b.t) AS b_t";
    let joined = |kind: &str, on: &str| format!("SELECT {both} FROM big a {kind} JOIN other b ON {on}");
    let filter = "a.k = b.k AND (a.id + b.f) % 3 <> 0";
    let mut queries = vec![];
    for kind in ["INNER", "LEFT", "RIGHT", "FULL"] {
        queries.push(joined(kind, "a.k = b.k"));
        queries.push(joined(kind, filter));
    }
    let exists = "SELECT count(*) AS n, sum(a.id) AS ids, max(a.s) AS s FROM big a WHERE";
    queries.extend([
        format!("{exists} EXISTS (SELECT 1 FROM other b WHERE b.k = a.k)"),
        format!("{exists} EXISTS (SELECT 1 FROM other b WHERE b.k = a.k AND b.f > a.id % 5)"),
        format!("{exists} NOT EXISTS (SELECT 1 FROM other b WHERE b.k = a.k)"),
        format!("{exists} NOT EXISTS (SELECT 1 FROM other b WHERE b.k = a.k AND b.f > a.id % 5)"),
        // A mark join: EXISTS under OR.
        format!("{exists} EXISTS (SELECT 1 FROM other b WHERE b.k = a.k) OR a.id % 10 = 0"),
        "SELECT count(*) AS n, sum(b.id) AS ids FROM other b WHERE EXISTS (SELECT 1 FROM big a WHERE a.k = b.k AND a.id % 2 = 0)".to_string(),
        // Semi and anti joins that output the build's rows (`other`, the smaller in bytes here).
        "SELECT count(*) AS n, sum(b.id) AS ids, max(b.t) AS t FROM other b WHERE EXISTS (SELECT 1 FROM big a WHERE a.k = b.k AND a.s > b.t)".to_string(),
        "SELECT count(*) AS n, sum(b.id) AS ids, max(b.t) AS t FROM other b WHERE NOT EXISTS (SELECT 1 FROM big a WHERE a.k = b.k AND a.s > b.t)".to_string(),
    ]);
    for query in queries.iter().map(|query| format!("{setup}{query}")) {
        let query = &query;
        let (unlimited, small) = (csv(lh, &UNLIMITED, query), csv(lh, &SMALLER, query));
        assert_eq!(small, unlimited, "{query}: the spilled answer differs from the unlimited one");
        let metrics = join_metrics(lh, &SMALLER, query);
        assert!(metric(&metrics, "spilled_buckets") > 0.0 && metric(&metrics, "spilled_bytes") > 0.0, "{query}: no bucket spilled: {metrics:?}");
        assert_released(lh, &SMALLER, query);
    }
}

/// `NOT IN` is the null-aware anti join: a NULL in the subquery's values means no row, a NULL
/// outer value never passes a non-empty subquery; spilled, as in memory.
#[test]
fn not_in_with_nulls_on_either_side_spills_and_gives_the_unlimited_answer() {
    let lh = two_tables();
    let queries = [
        // other.k has NULLs: no row at all.
        "SELECT count(*) AS n FROM big a WHERE a.k NOT IN (SELECT k FROM other)",
        // No NULL in the subquery; big.k has NULLs, which are not output.
        "SELECT count(*) AS n, sum(a.id) AS ids, max(a.s) AS s FROM big a WHERE a.k NOT IN (SELECT k FROM other WHERE k IS NOT NULL AND k % 3 = 0)",
        // An empty subquery: every row, NULL keys too.
        "SELECT count(*) AS n, sum(a.id) AS ids FROM big a WHERE a.k NOT IN (SELECT k FROM other WHERE k > 1000000)",
    ];
    let counts: Vec<String> = queries.iter().map(|q| csv(&lh, &UNLIMITED, q)).collect();
    assert_eq!(counts[0], "n\n0\n");
    assert!(counts[2].starts_with("n,ids\n200000,"), "{}", counts[2]);
    for (query, unlimited) in queries.iter().zip(&counts) {
        assert_eq!(&csv(&lh, &SMALL, query), unlimited, "{query}");
    }
    let metrics = join_metrics(&lh, &SMALL, queries[1]);
    assert!(metric(&metrics, "spilled_buckets") > 0.0, "{metrics:?}");
    for query in queries {
        assert_released(&lh, &SMALL, query);
    }
}

/// A build estimated at a hundredth of its size (a filter guessed to keep 1 % of the rows,
/// where it keeps 99.9 %): the join starts in memory, switches to buckets when its reservation
/// is refused, and finishes.
#[test]
fn a_build_a_hundred_times_its_estimate_switches_to_spilling_at_run_time() {
    let lh = two_tables();
    // A predicate DataFusion cannot bound from the statistics: it takes the default selectivity.
    let query = "SELECT count(*) AS n, sum(b.id) AS ids, max(a.s) AS s FROM big a JOIN other b ON a.k = b.k WHERE a.id % 1000 <> 1";
    let wrong = format!("SET datafusion.optimizer.default_filter_selectivity = 1; {query}");
    assert_eq!(csv(&lh, &SMALL, &wrong), csv(&lh, &UNLIMITED, query));
    let metrics = join_metrics(&lh, &SMALL, &wrong);
    assert!(metric(&metrics, "runtime_switches") > 0.0, "{metrics:?}");
    assert_released(&lh, &SMALL, &wrong);
}

/// One key in 90 % of the build's rows: no re-split separates them, so that bucket is joined
/// in chunks: for an inner and a left join the build is held in chunks; for a right join the
/// probe is, the join planned the other way round; a full join does both.
#[test]
fn a_skewed_key_is_joined_in_chunks() {
    let lh = Lakehouse::new();
    // `skewed` is the smaller table, so the build side.
    lh.run_with(
        &WRITE_SMALL_ROW_GROUPS,
        "CREATE TABLE skewed AS SELECT value AS id, CASE WHEN value % 10 = 0 THEN value ELSE 7 END AS k, md5(CAST(value AS STRING)) AS s \
         FROM generate_series(1, 60000); \
         CREATE TABLE keys AS SELECT value AS k, value % 5 AS f, md5(CAST(value AS STRING)) AS t FROM generate_series(1, 400000)",
    )
    .ok();
    for query in [
        "SELECT count(*) AS n, sum(s.id) AS ids, max(s.s) AS top FROM skewed s JOIN keys k ON s.k = k.k",
        "SELECT count(*) AS n, count(k.k) AS matched, sum(s.id) AS ids, max(s.s) AS s FROM skewed s LEFT JOIN keys k ON s.k = k.k AND k.f > 0",
        "SELECT count(*) AS n, count(s.id) AS matched, max(s.s) AS s, sum(k.k) AS keys, max(k.t) AS t FROM skewed s RIGHT JOIN keys k ON s.k = k.k",
        "SELECT count(*) AS n, count(s.id) AS a, count(k.k) AS b, max(s.s) AS s, max(k.t) AS t FROM skewed s FULL JOIN keys k ON s.k = k.k AND k.f <> 2",
    ] {
        assert_eq!(csv(&lh, &SMALL, query), csv(&lh, &UNLIMITED, query), "{query}");
        let metrics = join_metrics(&lh, &SMALL, query);
        assert!(metric(&metrics, "chunked_builds") > 0.0, "{query}: {metrics:?}");
        assert_released(&lh, &SMALL, query);
    }
}

/// Refused reservations on purpose: at 1 % a refusal to the spilling join only makes it spill
/// (the query fails only if an operator that cannot spill — a scan, an aggregate — is
/// refused); at 30 % the right answer or a clean memory error. Either way every pool reads 0
/// afterwards and no spill file is left.
#[test]
fn with_injected_faults_the_spilling_join_is_right_or_fails_cleanly() {
    let lh = two_tables();
    let query = "SELECT count(*) AS n, sum(a.id) AS a_ids, count(b.id) AS b_rows, max(b.t) AS t FROM big a LEFT JOIN other b ON a.k = b.k";
    let expected = csv(&lh, &UNLIMITED, query);
    for probability in ["0.01", "0.3"] {
        let session = format!("SET memory.fault_probability = {probability};\n{query};\nSET memory.fault_probability = 0;\nSHOW MEMORY;\n");
        let mut args = SMALL.to_vec();
        args.extend(["repl", "--format", "csv"]);
        let run = gobi_stdin(&args, lh.path(), &session).ok();
        for bad in ["panicked", "RUST_BACKTRACE"] {
            assert!(!run.stderr.contains(bad), "{}", run.stderr);
        }
        if !run.stderr.contains("error: ") {
            assert!(run.stdout.starts_with(&expected), "at {probability}: {}\nexpected\n{expected}\n{}", run.stdout, run.stderr);
        } else {
            assert!(run.stderr.contains("injected fault"), "{}", run.stderr);
            if probability == "0.01" {
                assert!(!run.stderr.contains("SpillingHashJoin"), "a refusal to the join makes it spill: {}", run.stderr);
            }
        }
        let memory = run.stdout.lines().skip_while(|l| !l.starts_with("pool,")).skip(1);
        for line in memory.filter(|l| !l.is_empty()) {
            assert_eq!(line.split(',').nth(2), Some("0"), "at {probability}: a pool holds memory afterwards: {line}");
        }
        assert!(files_under(&lh.path().join("_gobi/spill")).is_empty(), "at {probability}: spill files left behind");
    }
}

/// The plan: DataFusion's in-memory join where the build is small and known (a table's exact
/// row count from the Delta log), the spilling join where it is big, and nowhere with
/// `memory.spilling_join = off`.
#[test]
fn the_plan_keeps_the_in_memory_join_for_a_small_build_and_spills_a_big_one() {
    let lh = two_tables();
    lh.run("CREATE TABLE tiny AS SELECT value AS k FROM generate_series(1, 100)").ok();
    let plan = |query: &str| csv(&lh, &SMALL, &format!("EXPLAIN {query}"));
    let small = plan("SELECT count(*) FROM big a JOIN tiny t ON a.k = t.k");
    assert!(small.contains("HashJoinExec") && !small.contains("SpillingHashJoinExec"), "{small}");
    let big = plan("SELECT count(*) FROM big a JOIN other b ON a.k = b.k");
    assert!(big.contains("SpillingHashJoinExec"), "{big}");
    // Switched off, DataFusion's in-memory join is planned everywhere.
    let off = csv(&lh, &SMALL, "SET memory.spilling_join = off; EXPLAIN SELECT count(*) FROM big a JOIN other b ON a.k = b.k");
    assert!(off.contains("HashJoinExec") && !off.contains("SpillingHashJoinExec"), "{off}");
}
