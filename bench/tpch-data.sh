#!/usr/bin/env bash
# TPC-H data for the benchmarks, generated once by gobi itself: `gobi demo --scale N` writes
# the tables as Delta tables (tpchgen) into bench/data/tpch-sfN-delta, then each is copied to
# bench/data/tpch-sfN/NAME.parquet, so gobi on Delta and every engine on Parquet read the same
# rows. bench/data is git-ignored. Row groups stay small enough for a scan to reserve one under
# small budgets: the Delta tables are written under the default 50 MiB query pool (row groups
# of a sixteenth of it), the Parquet files with DuckDB's 122 880 rows per row group.
#
#   bench/tpch-data.sh            # scale 1
#   SCALE=0.1 bench/tpch-data.sh
set -euo pipefail
cd "$(dirname "$0")/.."

SCALE="${SCALE:-1}"
DATA="bench/data"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gobi/target}"
cargo build --release --locked --bin gobi
GOBI="$CARGO_TARGET_DIR/release/gobi"

lakehouse="$DATA/tpch-sf$SCALE-delta"
parquet="$DATA/tpch-sf$SCALE"
mkdir -p "$DATA" "$parquet"
[ -d "$lakehouse/tables/lineitem" ] || "$GOBI" --memory-query 50MiB demo "$lakehouse" --scale "$SCALE" > /dev/null
for table in region nation supplier customer part partsupp orders lineitem; do
  [ -f "$parquet/$table.parquet" ] ||
    "$GOBI" --memory-query 64GiB --lakehouse "$lakehouse" query "COPY (SELECT * FROM $table) TO '$(realpath "$parquet")/$table.parquet' STORED AS PARQUET OPTIONS ('format.max_row_group_size' '122880')" > /dev/null
done

