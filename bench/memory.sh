#!/usr/bin/env bash
# Governed memory, measured (issue 5's benchmarks). One run each; results go to
# bench/results/memory-*.{json,md,txt}; copy the tables into bench/RESULTS.md.
#
#   bench/memory.sh              # everything (TPC-H scale 1 from bench/tpch-data.sh's data)
#   bench/memory.sh limits       # one part: pool | overhead | limits | sweep | sf10 | creep | coverage
#
# - pool:   criterion, reserve/release at 1 and 2 threads: gobi's QueryMemory beside
#           DataFusion's GreedyMemoryPool and FairSpillPool.
# - overhead: the 22 TPC-H queries with gobi's accounting (pools, counting jemalloc, scoped
#           operators) beside the same source built with `--features baseline` (system
#           allocator, DataFusion's UnboundedMemoryPool, plans unwrapped); both with a 64 GiB
#           query pool, so the same batch size and no spilling. Best of 5 runs, interleaved.
# - limits: peak RSS ÷ configured total on each TPC-H query at 175 MiB and 50 MiB, gobi beside
#           DuckDB and DataFusion (../shared/bench/peers.py, one process per query), plus every
#           engine without a limit (gobi's unlimited run: a 64 GiB query pool).
# - sweep:  gobi alone at 16, 25, 50, 100, 175 and 350 MiB (one process per query): a query
#           that finishes at one limit should finish at every larger one.
# - sf10:   scale 10 at 175 MiB, gobi beside DuckDB (status, time, peak anonymous, spill).
# - creep:  each TPC-H query 20 times in one gobi process on its Delta tables (result cache
#           off): RSS after run 20 ÷ after run 2; and coverage from the query log of run 1:
#           peak reserved ÷ peak actual (allocator) bytes per query.
# - coverage: each TPC-H query once on its Delta tables at LIMIT (default 175MiB): peak
#           reserved ÷ peak actual per query, from the query log.
set -euo pipefail
cd "$(dirname "$0")/.."

PART="${1:-all}"
SCALE="${SCALE:-1}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gobi/target}"
PEERS="../shared/bench/peers.py"
QUERIES="../shared/bench/tpch/queries"
DATA="bench/data"
OUT="bench/results"
mkdir -p "$OUT"

if [ "$PART" = all ] || [ "$PART" = pool ]; then
  # criterion's graph builds apart from the engine's (see crates/gobi-bench/Cargo.toml).
  CARGO_TARGET_DIR="${BENCH_TARGET_DIR:-$HOME/.cache/gobi/bench-target}" \
    cargo bench -p gobi-bench --bench memory_pool 2>&1 | grep -E "^reserve_release|time:" | tee "$OUT/memory-pool.txt"
fi

GOBI="$CARGO_TARGET_DIR/release/gobi"
if [ "$PART" = all ] || [ "$PART" = overhead ]; then
  cargo build --release --locked --bin gobi --features gobi-cli/baseline
  cp "$GOBI" "$CARGO_TARGET_DIR/release/gobi-baseline"
fi
cargo build --release --locked --bin gobi
parquet="$DATA/tpch-sf$SCALE"
lakehouse="$DATA/tpch-sf$SCALE-delta"
[ -d "$lakehouse/tables/lineitem" ] && [ -f "$parquet/lineitem.parquet" ] || SCALE="$SCALE" bench/tpch-data.sh

if [ "$PART" = all ] || [ "$PART" = overhead ]; then
  unlimited="--memory-query 64GiB query --file {query} --data {data} --summary json"
  python3 "$PEERS" run --data "$parquet" --repeat 5 --order interleaved --runs gobi-baseline gobi-governed \
    --engine-cmd gobi-baseline="$CARGO_TARGET_DIR/release/gobi-baseline $unlimited" \
    --engine-cmd gobi-governed="$GOBI $unlimited" \
    --json "$OUT/memory-overhead-sf$SCALE.json" --markdown "$OUT/memory-overhead-sf$SCALE.md"
fi

if [ "$PART" = all ] || [ "$PART" = limits ]; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore duckdb==2.0.0 datafusion==55.0.0
  python3 "$PEERS" run --data "$parquet" --repeat 1 \
    --runs gobi:175MiB duckdb:175MiB datafusion:175MiB gobi:50MiB duckdb:50MiB datafusion:50MiB gobi-unlimited duckdb datafusion \
    --engine-cmd gobi="$GOBI query --file {query} --data {data} --memory-limit {limit_bytes} --summary json" \
    --engine-cmd gobi-unlimited="$GOBI --memory-query 64GiB query --file {query} --data {data} --summary json" \
    --json "$OUT/memory-limits-sf$SCALE.json" --markdown "$OUT/memory-limits-sf$SCALE.md"
fi

coverage_of_runs() { # RUN: the query log's peak reserved ÷ peak actual of each query's RUN-th run
  "$GOBI" --lakehouse "$1" --format csv query \
    "SELECT substr(text, 1, 40) AS query, peak_reserved_bytes, peak_actual_bytes,
            round(CAST(peak_reserved_bytes AS DOUBLE) / peak_actual_bytes, 3) AS coverage
       FROM (SELECT *, row_number() OVER (PARTITION BY text ORDER BY started_at) AS run FROM gobi_query_log() WHERE status = 'ok')
      WHERE run = $2 ORDER BY started_at"
}

if [ "$PART" = all ] || [ "$PART" = coverage ]; then
  LIMIT="${LIMIT:-175MiB}"
  work=$(mktemp -d)
  cp -r "$lakehouse" "$work/lh"
  rm -rf "$work/lh/_gobi/query_log"
  for n in $(seq 1 22); do
    "$GOBI" --memory-limit "$LIMIT" --lakehouse "$work/lh" --format csv query --file "$QUERIES/q$n.sql" > /dev/null 2>> "$OUT/memory-coverage-$LIMIT-sf$SCALE.err" ||
      echo "q$n failed" >> "$OUT/memory-coverage-$LIMIT-sf$SCALE.err"
  done
  coverage_of_runs "$work/lh" 1 | tee "$OUT/memory-coverage-$LIMIT-sf$SCALE.csv"
  rm -rf "$work"
fi

if [ "$PART" = all ] || [ "$PART" = sweep ]; then
  python3 "$PEERS" run --data "$parquet" --repeat 1 \
    --runs gobi:16MiB gobi:25MiB gobi:50MiB gobi:100MiB gobi:175MiB gobi:350MiB \
    --engine-cmd gobi="$GOBI query --file {query} --data {data} --memory-limit {limit_bytes} --summary json" \
    --json "$OUT/memory-sweep-sf$SCALE.json" --markdown "$OUT/memory-sweep-sf$SCALE.md"
fi

if [ "$PART" = sf10 ]; then
  [ -f "$DATA/tpch-sf10/lineitem.parquet" ] || SCALE=10 bench/tpch-data.sh
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore duckdb==2.0.0
  python3 "$PEERS" run --data "$DATA/tpch-sf10" --repeat 1 --timeout 600 --single-run-over 1 \
    --runs gobi:175MiB duckdb:175MiB \
    --engine-cmd gobi="$GOBI query --file {query} --data {data} --memory-limit {limit_bytes} --summary json" \
    --json "$OUT/memory-limits-sf10.json" --markdown "$OUT/memory-limits-sf10.md"
fi

if [ "$PART" = all ] || [ "$PART" = creep ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  cp -r "$lakehouse" "$work/lh"
  rm -rf "$work/lh/_gobi/query_log"
  printf 'query,rss_after_2,rss_after_20,creep\n' > "$OUT/memory-creep-sf$SCALE.csv"
  for n in $(seq 1 22); do
    q=$(sed -e 's/;[[:space:]]*$/;/' "$QUERIES/q$n.sql")
    case "$q" in *\;) ;; *) q="$q;" ;; esac
    rss="SELECT rss_bytes FROM gobi_memory_process()"
    {
      echo "SET memory.result_cache = off;"
      for run in $(seq 1 20); do
        echo "$q"
        if [ "$run" = 2 ] || [ "$run" = 20 ]; then echo "$rss;"; fi
      done
    } > "$work/q$n.sql"
    "$GOBI" --memory-query 64GiB --lakehouse "$work/lh" --format csv run "$work/q$n.sql" 2>/dev/null |
      awk -v q="q$n" '/^rss_bytes$/ { getline; r[++i] = $1 } END { printf "%s,%d,%d,%.3f\n", q, r[1], r[2], r[2] / r[1] }' >> "$OUT/memory-creep-sf$SCALE.csv"
  done
  coverage_of_runs "$work/lh" 2 > "$OUT/memory-coverage-sf$SCALE.csv"
  cat "$OUT/memory-creep-sf$SCALE.csv" "$OUT/memory-coverage-sf$SCALE.csv"
fi
