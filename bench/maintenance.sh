#!/usr/bin/env bash
# Table maintenance, measured with the release binary (issue 17):
#   1. 1,000 single-row appends, then a scan: scan time and file count before and after OPTIMIZE.
#   2. Opening a table after 2,099 commits: time to its first row with gobi's checkpoint every
#      10 commits, and with one every 100 (Delta's default elsewhere; set with Python deltalake).
#      2,099 is each interval's worst case: its last checkpoint is 9 (99) commits back.
#   3. OPTIMIZE of a table ten times the budget (10 M rows, 20 appends, 390 MiB of Parquet)
#      under 50 MiB and 32 MiB, compaction and Z-order: time and the process's peak anonymous
#      memory (RssAnon sampled every 5 ms).
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

open_after_commits() { # INTERVAL COMMITS_SETTING_IT -> seconds to the first row of a fresh process
  local dir="$work/commits-$1"
  "$GOBI" init "$dir" > /dev/null 2>&1
  "$GOBI" --lakehouse "$dir" query "CREATE TABLE c (id BIGINT, name STRING)" > /dev/null 2>&1
  if [ "$1" != 10 ]; then
    python3 -c "import deltalake,sys; deltalake.DeltaTable(sys.argv[1]).alter.set_table_properties({'delta.checkpointInterval': sys.argv[2]})" "$dir/tables/c" "$1"
  fi
  # The property's own commit counts: both tables end at version 2,098.
  appends c $((2098 - $2)) 1 > "$work/commits.sql"
  "$GOBI" --lakehouse "$dir" run "$work/commits.sql" > /dev/null 2>&1
  read -r first _ <<< "$(timed "$dir" "SELECT * FROM c LIMIT 1")"
  echo "$first $(find "$dir/tables/c/_delta_log" -name '*.json' -newer "$dir/tables/c/_delta_log/_last_checkpoint" | wc -l)"
}
read -r open10 json10 <<< "$(open_after_commits 10 0)"
read -r open100 json100 <<< "$(open_after_commits 100 1)"

sampled() { # COMMAND... -> "seconds peak_anon_MiB exit_status"
  python3 - "$@" <<'PY'
import subprocess, sys, time
start = time.time()
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
peak = 0
while child.poll() is None:
    try:
        with open(f"/proc/{child.pid}/status") as status:
            peak = max([peak] + [int(l.split()[1]) * 1024 for l in status if l.startswith("RssAnon:")])
    except OSError:
        pass
    time.sleep(0.005)
print(f"{time.time() - start:.2f} {peak / 2**20:.1f} {child.returncode}")
PY
}
big="$work/big"
"$GOBI" init "$big" > /dev/null 2>&1
{
  echo "CREATE TABLE t (id BIGINT, k BIGINT, s STRING);"
  for i in $(seq 0 19); do
    echo "INSERT INTO t SELECT value, value * 7 % 1000, md5(CAST(value AS STRING)) FROM range($((i * 500000)), $(((i + 1) * 500000)));"
  done
} > "$work/big.sql"
"$GOBI" --lakehouse "$big" --memory-limit 64MiB run "$work/big.sql" > /dev/null 2>&1
big_files=$(files "$big" t)
big_size=$(du -sm "$big/tables/t" | cut -f1)
optimize_rows=()
for how in "OPTIMIZE t" "OPTIMIZE t ZORDER BY (k)"; do
  for limit in 50 32; do
    rm -rf "$work/copy" && cp -r "$big" "$work/copy"
    read -r took anon status <<< "$(sampled "$GOBI" --lakehouse "$work/copy" --memory-limit "${limit}MiB" query "$how")"
    optimize_rows+=("| \`$how\` | $limit MiB | $status | $took | $anon | $(echo "scale=2; $anon / $limit" | bc) |")
  done
done

echo "- Date: $(date -Iseconds); machine: $(uname -m), $(nproc) CPUs, $(free -g | awk '/Mem:/ {print $2}') GiB RAM; gobi $(git rev-parse --short HEAD) (release)."
echo
echo "| 1,000 single-row appends | files | scan s (best of 3) |"
echo "|---|---:|---:|"
echo "| before OPTIMIZE | $before_files | $before_s |"
echo "| after OPTIMIZE (took ${optimize_s} s) and VACUUM | $after_files | $after_s |"
echo
echo "| 2,099 commits, checkpoint every | first row s (fresh process) | JSON commits after the checkpoint |"
echo "|---|---:|---:|"
echo "| 10 (gobi's tables) | $open10 | $json10 |"
echo "| 100 (Delta's default) | $open100 | $json100 |"
echo
echo "A table of $big_files files ($big_size MiB of Parquet, 10 M rows) optimized under a budget:"
echo
echo "| statement | budget | exit | s | peak anon MiB | ÷ budget |"
echo "|---|---:|---:|---:|---:|---:|"
printf '%s\n' "${optimize_rows[@]}"
