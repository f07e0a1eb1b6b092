//! What PL-GRIZZLY costs on top of DataFusion, in three side-by-side comparisons; each is a
//! criterion group of two functions, so the ratio of their means is the overhead.
//!
//! * `parse_plan_tpch` — parse and plan (unoptimized logical plan) the 22 TPC-H queries over
//!   empty tables with the real TPC-H schemas. `gobi`: `gobi_lang::parse_script` (tokenize,
//!   split statements, rewrite tokens, parse with DataFusion's parser) then
//!   `Session::logical_plan` (expansion pass, then DataFusion's SQL planner). `datafusion`: a
//!   plain `SessionContext::sql`. This is the per-statement latency every gobi query pays.
//! * `block_function_vs_case` — a block function (`tier`, a compiled `if … elif … else`) against
//!   the same logic as an inline `CASE`, both evaluated for each of 10 million rows through the
//!   same gobi session. This is the price of writing logic as a function rather than inline.
//! * `expression_function_vs_inline` — an expression function (`gross`) against its body
//!   written inline. gobi-lang inlines expression functions before planning, so the two should
//!   take the same time; any gap is planning overhead or a missed optimization.
//!
//! Run with `cargo bench -p gobi-bench --bench pl_grizzly`; `bench/pl_grizzly.sh` runs it and
//! prints the three ratios. The TPC-H queries are read from the shared benchmark folder next to
//! the workspace; without it the first group is skipped.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use datafusion::arrow::array::{Float64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use gobi_engine::{Collected, Session};
use tokio::runtime::Runtime;

const TPCH_QUERIES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/bench/tpch/queries");

/// Rows of `orders(total DOUBLE)` for the function groups; every 97th is NULL.
const ROWS: usize = 10_000_000;
const BATCH_ROWS: usize = 8192;

const TIER: &str = "FUNCTION tier(total DOUBLE) RETURNS STRING {
    if total > 1000 then return 'gold';
    elif total > 100 then return 'silver';
    else return 'bronze';
    end
}";
const TIER_QUERY: &str = "SELECT max(tier(total)), count(tier(total)) FROM orders";
const CASE_QUERY: &str = "SELECT max(CASE WHEN total > 1000 THEN 'gold' WHEN total > 100 THEN 'silver' ELSE 'bronze' END), \
     count(CASE WHEN total > 1000 THEN 'gold' WHEN total > 100 THEN 'silver' ELSE 'bronze' END) FROM orders";

const GROSS: &str = "FUNCTION gross(net, rate) => net * (1 + rate);";
const GROSS_QUERY: &str = "SELECT sum(gross(total, 0.2)) FROM orders";
const INLINE_QUERY: &str = "SELECT sum(total * (1 + 0.2)) FROM orders";

fn runtime() -> Runtime {
    Runtime::new().expect("a tokio runtime")
}

/// The eight TPC-H tables with their real schemas.
fn tpch_schemas() -> [(&'static str, SchemaRef); 8] {
    use tpchgen_arrow::*;
    [
        ("region", RegionArrow::schema_ref()),
        ("nation", NationArrow::schema_ref()),
        ("supplier", SupplierArrow::schema_ref()),
        ("customer", CustomerArrow::schema_ref()),
        ("part", PartArrow::schema_ref()),
        ("partsupp", PartSuppArrow::schema_ref()),
        ("orders", OrderArrow::schema_ref()),
        ("lineitem", LineItemArrow::schema_ref()),
    ]
}

fn register_empty_tpch(ctx: &SessionContext) {
    for (name, schema) in tpch_schemas() {
        let table = MemTable::try_new(schema, vec![vec![]]).expect("an empty table");
        ctx.register_table(name, Arc::new(table)).expect("registering a TPC-H table");
    }
}

/// The statements of one query file, split at `;` (the TPC-H texts have no `;` in literals).
fn statements(text: &str) -> Vec<String> {
    text.split(';')
        .map(|s| s.lines().filter(|l| !l.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n"))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The 22 queries to plan, and the statements to run once beforehand. q15 is
/// `create view revenue0 …; select …; drop view revenue0;`: the view is created in setup and
/// only the `select` is planned, on both sides.
fn tpch_queries(dir: &Path) -> std::io::Result<(Vec<String>, Vec<String>)> {
    let (mut queries, mut setup) = (vec![], vec![]);
    for n in 1..=22 {
        let text = std::fs::read_to_string(dir.join(format!("q{n}.sql")))?;
        let parts = statements(&text);
        if parts.len() == 1 {
            queries.push(text);
            continue;
        }
        for part in parts {
            let lower = part.to_ascii_lowercase();
            if lower.starts_with("select") {
                queries.push(part);
            } else if lower.starts_with("create") {
                setup.push(part);
            }
        }
    }
    assert_eq!(queries.len(), 22, "one select per TPC-H query");
    Ok((queries, setup))
}

async fn plan_gobi(session: &Session, queries: &[String]) {
    for text in queries {
        for statement in gobi_lang::parse_script(text).expect("gobi parses TPC-H") {
            black_box(session.logical_plan(&statement).await.expect("gobi plans TPC-H"));
        }
    }
}

async fn plan_datafusion(ctx: &SessionContext, queries: &[String]) {
    for text in queries {
        black_box(ctx.sql(text).await.expect("DataFusion plans TPC-H").into_unoptimized_plan());
    }
}

fn parse_plan_tpch(c: &mut Criterion) {
    let dir = Path::new(TPCH_QUERIES);
    let (queries, setup) = match tpch_queries(dir) {
        Ok(found) => found,
        Err(e) => {
            eprintln!("parse_plan_tpch skipped: no TPC-H queries in {} ({e})", dir.display());
            return;
        }
    };
    let rt = runtime();
    let session = Session::in_memory();
    register_empty_tpch(session.context());
    let ctx = SessionContext::new();
    register_empty_tpch(&ctx);
    rt.block_on(async {
        for statement in &setup {
            session.run_script(statement).await.expect("gobi runs the TPC-H setup");
            ctx.sql(statement).await.expect("DataFusion runs the TPC-H setup");
        }
        // Both sides must build the same plans, or the comparison is not like for like.
        for text in &queries {
            let statement = gobi_lang::parse_script(text).unwrap().remove(0);
            let gobi = session.logical_plan(&statement).await.expect("gobi plans TPC-H");
            let datafusion = ctx.sql(text).await.expect("DataFusion plans TPC-H").into_unoptimized_plan();
            if gobi.display_indent().to_string() != datafusion.display_indent().to_string() {
                eprintln!("note: gobi's plan differs from DataFusion's for\n{text}");
            }
        }
    });

    let mut group = c.benchmark_group("parse_plan_tpch");
    group.bench_function("gobi", |b| b.iter(|| rt.block_on(plan_gobi(&session, &queries))));
    group.bench_function("datafusion", |b| b.iter(|| rt.block_on(plan_datafusion(&ctx, &queries))));
    group.finish();
}

/// `orders(total DOUBLE)`: `ROWS` values spread over [0, 2000) with few repeats (so the block
/// function's memo cannot short-cut), every 97th NULL; batches dealt round-robin to one
/// partition per core so the scan is parallel.
fn orders_table() -> MemTable {
    let schema = Arc::new(Schema::new(vec![Field::new("total", DataType::Float64, true)]));
    let partitions = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut batches = vec![vec![]; partitions];
    for (i, start) in (0..ROWS).step_by(BATCH_ROWS).enumerate() {
        let values: Float64Array =
            (start..(start + BATCH_ROWS).min(ROWS)).map(|row| (row % 97 != 0).then(|| (row as u64 * 7919 % 1_000_003) as f64 * 0.002)).collect();
        let batch = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(values)]).expect("a batch");
        batches[i % partitions].push(batch);
    }
    MemTable::try_new(schema, batches).expect("the orders table")
}

/// A session with `orders` and the two functions defined.
fn function_session(rt: &Runtime) -> Session {
    let session = Session::in_memory();
    session.context().register_table("orders", Arc::new(orders_table())).expect("registering orders");
    rt.block_on(session.run_script(&format!("{TIER}\n{GROSS}"))).expect("defining the functions");
    session
}

/// The single row a query returns, each value rendered, so that a function and its inline
/// twin can be checked to agree before they are timed.
fn row(rt: &Runtime, session: &Session, query: &str) -> Vec<String> {
    let outputs = rt.block_on(session.run_script(query)).expect("the query runs");
    let Some(Collected::Rows { batches, .. }) = outputs.last() else { panic!("{query} returns no rows") };
    let batch = batches.iter().find(|b| b.num_rows() > 0).expect("a row");
    batch.columns().iter().map(|c| array_value_to_string(c, 0).expect("a printable value")).collect()
}

fn compare_queries(c: &mut Criterion, rt: &Runtime, session: &Session, group: &str, sides: [(&str, &str); 2]) {
    let [(name_a, query_a), (name_b, query_b)] = sides;
    // A parallel float sum may differ in its last digits between runs, so this only warns.
    let (a, b) = (row(rt, session, query_a), row(rt, session, query_b));
    if a != b {
        eprintln!("note: {group}: {name_a} gives {a:?}, {name_b} gives {b:?}");
    }
    let mut group = c.benchmark_group(group);
    group.sample_size(10);
    for (name, query) in [(name_a, query_a), (name_b, query_b)] {
        group.bench_function(name, |b| b.iter(|| black_box(rt.block_on(session.run_script(query)).expect("the query runs"))));
    }
    group.finish();
}

fn functions(c: &mut Criterion) {
    let rt = runtime();
    let session = function_session(&rt);
    let counts = row(&rt, &session, "SELECT count(*), count(total) FROM orders");
    assert_eq!(counts, [ROWS.to_string(), (ROWS - ROWS.div_ceil(97)).to_string()], "orders has its rows");
    compare_queries(c, &rt, &session, "block_function_vs_case", [("block", TIER_QUERY), ("case", CASE_QUERY)]);
    compare_queries(c, &rt, &session, "expression_function_vs_inline", [("expression", GROSS_QUERY), ("inline", INLINE_QUERY)]);
}

criterion_group!(benches, parse_plan_tpch, functions);
criterion_main!(benches);
