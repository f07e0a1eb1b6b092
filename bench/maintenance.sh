#!/usr/bin/env bash
# Table maintenance, measured with the release binary (issue 17):
#   1. 1,000 single-row appends, then a scan: scan time and file count before and after OPTIMIZE.
#   2. Opening a table after 2,000 commits: time to its first row with gobi's checkpoint every
#      10 commits, and with one every 100 (Delta's default elsewhere; set with Python deltalake).
# Each timed query runs in a fresh process (`gobi query --repeat 3 --summary json`: a warm-up
# and the best of three in-process runs; opening is timed by the warm-up, the first run).
#
#   bench/maintenance.sh          # prints a Markdown table for bench/RESULTS.md
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gobi/target}"
cargo build --release --locked --bin gobi
GOBI="$CARGO_TARGET_DIR/release/gobi"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

appends() { # TABLE COUNT FIRST: a script of COUNT single-row INSERTs
  for i in $(seq "$3" $(($3 + $2 - 1))); do echo "INSERT INTO $1 VALUES ($i, 'row $i');"; done
}
timed() { # LAKEHOUSE SQL -> "first best" seconds
  "$GOBI" --lakehouse "$1" query "$2" --repeat 3 --summary json --format csv | tail -1 |
    python3 -c 'import json,sys; t=json.load(sys.stdin)["times"]; print(f"{t[0]:.4f} {min(t[1:]):.4f}")'
}
files() { find "$1/tables/$2" -maxdepth 1 -name '*.parquet' | wc -l; }

lh="$work/appends"
"$GOBI" init "$lh" > /dev/null 2>&1
{ echo "CREATE TABLE t (id BIGINT, name STRING);"; appends t 1000 1; } > "$work/appends.sql"
"$GOBI" --lakehouse "$lh" run "$work/appends.sql" > /dev/null 2>&1
scan="SELECT count(*), sum(id), max(name) FROM t"
read -r _ before_s <<< "$(timed "$lh" "$scan")"
before_files=$(files "$lh" t)
optimize_start=$(date +%s.%N)
"$GOBI" --lakehouse "$lh" query "OPTIMIZE t" > /dev/null 2>&1
optimize_s=$(printf '%.2f' "$(echo "$(date +%s.%N) - $optimize_start" | bc)")
"$GOBI" --lakehouse "$lh" query "SET maintenance.allow_short_retention = on; VACUUM t RETAIN 0 HOURS" > /dev/null 2>&1
read -r _ after_s <<< "$(timed "$lh" "$scan")"
after_files=$(files "$lh" t)

open_after_commits() { # INTERVAL -> seconds to the first row of a fresh process
  local dir="$work/commits-$1"
  "$GOBI" init "$dir" > /dev/null 2>&1
  "$GOBI" --lakehouse "$dir" query "CREATE TABLE c (id BIGINT, name STRING)" > /dev/null 2>&1
  if [ "$1" != 10 ]; then
    python3 -c "import deltalake,sys; deltalake.DeltaTable(sys.argv[1]).alter.set_table_properties({'delta.checkpointInterval': sys.argv[2]})" "$dir/tables/c" "$1"
  fi
  appends c 1999 1 > "$work/commits.sql"
  "$GOBI" --lakehouse "$dir" run "$work/commits.sql" > /dev/null 2>&1
  read -r first _ <<< "$(timed "$dir" "SELECT * FROM c LIMIT 1")"
  echo "$first $(find "$dir/tables/c/_delta_log" -name '*.json' -newer "$dir/tables/c/_delta_log/_last_checkpoint" | wc -l)"
}
read -r open10 json10 <<< "$(open_after_commits 10)"
read -r open100 json100 <<< "$(open_after_commits 100)"

echo "- Date: $(date -Iseconds); machine: $(uname -m), $(nproc) CPUs, $(free -g | awk '/Mem:/ {print $2}') GiB RAM; gobi $(git rev-parse --short HEAD) (release)."
echo
echo "| 1,000 single-row appends | files | scan s (best of 3) |"
echo "|---|---:|---:|"
echo "| before OPTIMIZE | $before_files | $before_s |"
echo "| after OPTIMIZE (took ${optimize_s} s) and VACUUM | $after_files | $after_s |"
echo
echo "| 2,000 commits, checkpoint every | first row s (fresh process) | JSON commits after the checkpoint |"
echo "|---|---:|---:|"
echo "| 10 (gobi's tables) | $open10 | $json10 |"
echo "| 100 (Delta's default) | $open100 | $json100 |"
