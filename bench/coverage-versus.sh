#!/usr/bin/env bash
# Coverage — each TPC-H query's peak reserved ÷ peak allocator bytes, from the query log — of
# this build beside an earlier one, at scale 1 on the Delta tables, ROUNDS runs of each query
# per build, the builds alternating query by query. One run's coverage moves by up to 0.3 on
# some queries (which operators overlap when), so the table gives each build's median and range.
#
#   bench/coverage-versus.sh c006623             # at 175 MiB, 5 rounds
#   LIMIT=50MiB ROUNDS=3 bench/coverage-versus.sh c006623
#
# The earlier build is bench/versus.sh's (~/.cache/gobi/versus/<commit>/gobi): run that once
# first. Results: bench/results/coverage-versus-<commit>-<limit>.{csv,md}.
set -euo pipefail
cd "$(dirname "$0")/.."

COMMIT="${1:?usage: bench/coverage-versus.sh COMMIT}"
LIMIT="${LIMIT:-175MiB}"
ROUNDS="${ROUNDS:-5}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gobi/target}"
QUERIES="../shared/bench/tpch/queries"
OUT="bench/results"
earlier="$HOME/.cache/gobi/versus/$COMMIT/gobi"
[ -x "$earlier" ] || { echo "no build of $COMMIT at $earlier: run bench/versus.sh $COMMIT first" >&2; exit 1; }

SCALE=1 bench/tpch-data.sh
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$CARGO_TARGET_DIR/release/gobi" "$work/this"
cp "$earlier" "$work/$COMMIT"
for build in "$COMMIT" this; do
  cp -r bench/data/tpch-sf1-delta "$work/lh-$build"
  rm -rf "$work/lh-$build/_gobi/query_log"
done
for _ in $(seq 1 "$ROUNDS"); do
  for n in $(seq 1 22); do
    for build in "$COMMIT" this; do
      "$work/$build" --memory-limit "$LIMIT" --lakehouse "$work/lh-$build" --format csv query --file "$QUERIES/q$n.sql" > /dev/null 2>&1 ||
        echo "$build q$n failed" >&2
    done
  done
done
csv="$OUT/coverage-versus-$COMMIT-$LIMIT.csv"
echo "build,query,run,status,peak_reserved_bytes,peak_actual_bytes" > "$csv"
for build in "$COMMIT" this; do
  # One logged statement per run (q15's view is created and dropped unlogged), in run order.
  "$work/$build" --lakehouse "$work/lh-$build" --format csv query \
    "SELECT '$build', 'q' || CAST(1 + (rn - 1) % 22 AS STRING), 1 + (rn - 1) / 22, status, peak_reserved_bytes, peak_actual_bytes
       FROM (SELECT *, row_number() OVER (ORDER BY started_at) AS rn FROM gobi_query_log()) ORDER BY rn" | tail -n +2 >> "$csv"
done
python3 - "$csv" "$COMMIT" > "$OUT/coverage-versus-$COMMIT-$LIMIT.md" <<'EOF'
import csv, statistics, sys
path, commit = sys.argv[1], sys.argv[2]
cov = {}
for row in csv.DictReader(open(path)):
    if row["status"] != "ok":
        continue
    cov.setdefault((row["build"], row["query"]), []).append(int(row["peak_reserved_bytes"]) / int(row["peak_actual_bytes"]))
inside = lambda c: 0.90 <= c <= 1.5
print(f"| query | {commit}: median (min–max) | this build: median (min–max) |\n|---|---:|---:|")
count = {commit: 0, "this": 0}
for n in range(1, 23):
    cells = []
    for build in (commit, "this"):
        runs = cov.get((build, f"q{n}"), [])
        if not runs:
            cells.append("failed")
            continue
        median = statistics.median(runs)
        count[build] += inside(median)
        shown = f"{median:.2f}" if inside(median) else f"**{median:.2f}**"
        cells.append(f"{shown} ({min(runs):.2f}–{max(runs):.2f})")
    print(f"| q{n} | " + " | ".join(cells) + " |")
print(f"\nMedians inside 0.90–1.5: {commit} {count[commit]}/22, this build {count['this']}/22.")
EOF
cat "$OUT/coverage-versus-$COMMIT-$LIMIT.md"
