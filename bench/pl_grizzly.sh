#!/usr/bin/env bash
# What PL-GRIZZLY costs on top of DataFusion: runs the criterion benchmark
# crates/gobi-bench/benches/pl_grizzly.rs, then prints each group's mean times and ratio.
#
#   bench/pl_grizzly.sh                    # all three groups
#   bench/pl_grizzly.sh parse_plan_tpch    # extra arguments go to criterion (a filter, …)
#
# Goals: parse+plan gobi/datafusion <= 1.10, block/case <= 3, expression/inline <= 1.02.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}"
CRITERION="$CARGO_TARGET_DIR/criterion"

cargo bench -p gobi-bench --bench pl_grizzly -- "$@"

# Mean of one benchmark in ns, from criterion's estimates of its latest run.
mean() {
  local file="$CRITERION/$1/$2/new/estimates.json"
  [ -f "$file" ] && jq '.mean.point_estimate' "$file"
}

echo
printf '%-30s %-11s %14s %-11s %14s %7s %6s\n' group a "a mean" b "b mean" "a/b" goal
while read -r group a b goal; do
  if ! ta=$(mean "$group" "$a") || ! tb=$(mean "$group" "$b"); then
    printf '%-30s (no results)\n' "$group"
    continue
  fi
  awk -v g="$group" -v a="$a" -v b="$b" -v ta="$ta" -v tb="$tb" -v goal="$goal" 'BEGIN {
    ms = 1e6
    printf "%-30s %-11s %11.3f ms %-11s %11.3f ms %7.3f %6s\n", g, a, ta / ms, b, tb / ms, ta / tb, "<=" goal
  }'
done <<'GROUPS'
parse_plan_tpch gobi datafusion 1.10
block_function_vs_case block case 3
expression_function_vs_inline expression inline 1.02
GROUPS
