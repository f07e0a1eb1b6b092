#!/usr/bin/env bash
# One TPC-H query run many times, each in its own process, at each memory limit: how many
# runs finished, failed, or hung (killed after 120 s). The check that a change removed a hang
# that shows only now and then (apache/datafusion#24883: q18 at 175 MiB hung in 6 of 40 runs).
#
#   bench/repeat.sh q18 200 175MiB 50MiB
set -euo pipefail
cd "$(dirname "$0")/.."

QUERY="${1:?usage: bench/repeat.sh QUERY RUNS LIMIT...}"
RUNS="${2:?usage: bench/repeat.sh QUERY RUNS LIMIT...}"
shift 2
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gobi/target}"
SCALE="${SCALE:-1}"
parquet="bench/data/tpch-sf$SCALE"
# Builds gobi (release) and makes the data if it is not there yet.
SCALE="$SCALE" bench/tpch-data.sh
gobi="$CARGO_TARGET_DIR/release/gobi"
file="../shared/bench/tpch/queries/$QUERY.sql"

echo "| query | limit | runs | finished | failed | hung | slowest s |"
echo "|---|---|---:|---:|---:|---:|---:|"
for limit in "$@"; do
  finished=0 failed=0 hung=0 slowest=0
  for _ in $(seq "$RUNS"); do
    start=$(date +%s.%N)
    status=0
    timeout 120 "$gobi" query --file "$file" --data "$parquet" --memory-limit "$limit" > /dev/null 2>&1 || status=$?
    took=$(echo "$(date +%s.%N) - $start" | bc)
    case $status in
      0) finished=$((finished + 1)) ;;
      124) hung=$((hung + 1)) ;;
      *) failed=$((failed + 1)) ;;
    esac
    slowest=$(echo "if ($took > $slowest) $took else $slowest" | bc)
  done
  printf '| %s | %s | %d | %d | %d | %d | %.2f |\n' "$QUERY" "$limit" "$RUNS" "$finished" "$failed" "$hung" "$slowest"
done
