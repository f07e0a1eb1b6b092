#!/usr/bin/env bash
# TPC-H side by side: gobi on Parquet files, gobi on its own Delta tables, DataFusion (Python),
# DuckDB and Polars, one fresh process per query (../shared/bench/peers.py). Memory is
# unlimited in effect: gobi gets a 64 GiB query pool (its default 50 MiB would fail hash joins
# at scale 1).
#
#   bench/tpch.sh            # scale 1; data generated once into bench/data (git-ignored)
#   SCALE=0.1 bench/tpch.sh  # a quick run
#
# The data comes from gobi itself: `gobi demo --scale N` writes the TPC-H tables as Delta
# tables (tpchgen), then each table is copied to NAME.parquet, so both gobi runs read the same
# rows. Each gobi process runs its query as the Python engines do: a warm-up, then --repeat
# timed runs in the same process (`gobi query --repeat`).
# Results: bench/results/tpch-sf$SCALE.{json,md}; copy the table into bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."

SCALE="${SCALE:-1}"
DATA="bench/data"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gobi/target}"
PEERS="../shared/bench/peers.py"

cargo build --release --locked --bin gobi
GOBI="$CARGO_TARGET_DIR/release/gobi"
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore duckdb==2.0.0 datafusion==55.0.0 polars==2.1.0

lakehouse="$DATA/tpch-sf$SCALE-delta"
parquet="$DATA/tpch-sf$SCALE"
SCALE="$SCALE" bench/tpch-data.sh

python3 "$PEERS" run --data "$parquet" \
  --runs gobi gobi-delta datafusion duckdb polars \
  --engine-cmd gobi="$GOBI --memory-query 64GiB query --file {query} --data {data} --repeat {repeat} --summary json" \
  --engine-cmd gobi-delta="$GOBI --memory-query 64GiB --lakehouse $(realpath "$lakehouse") query --file {query} --repeat {repeat} --summary json" \
  --json "bench/results/tpch-sf$SCALE.json" --markdown "bench/results/tpch-sf$SCALE.md"
