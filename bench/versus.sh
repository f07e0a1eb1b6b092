#!/usr/bin/env bash
# This build beside an earlier one (a commit), the 22 TPC-H queries at scale 1 under one
# memory limit, interleaved in one run (../shared/bench/peers.py): the check that a change
# made no query slower. The earlier commit is built in a worktree with its own target folder
# (a copy of this one's, so only gobi's crates build again).
#
#   bench/versus.sh 8c4d0b7            # at 175 MiB
#   LIMIT=50MiB bench/versus.sh 8c4d0b7
#
# Results: bench/results/versus-<commit>-<limit>.{json,md}; bench/ratios.py prints the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."

COMMIT="${1:?usage: bench/versus.sh COMMIT}"
LIMIT="${LIMIT:-175MiB}"
SCALE="${SCALE:-1}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gobi/target}"
PEERS="../shared/bench/peers.py"
parquet="bench/data/tpch-sf$SCALE"

cargo build --release --locked --bin gobi
[ -f "$parquet/lineitem.parquet" ] || SCALE="$SCALE" bench/tpch-data.sh

earlier="$HOME/.cache/gobi/versus/$COMMIT"
if [ ! -x "$earlier/gobi" ]; then
  tree=$(mktemp -d)
  git worktree add --detach "$tree" "$COMMIT" > /dev/null
  mkdir -p "$earlier/target"
  # The dependencies' builds are reused; gobi's own crates are cleaned so they build from the
  # worktree's sources (cargo would otherwise take this tree's builds of them as fresh).
  [ -d "$earlier/target/release" ] || cp -r "$CARGO_TARGET_DIR/release" "$earlier/target/release"
  (cd "$tree" && CARGO_TARGET_DIR="$earlier/target" cargo clean --release -p gobi-lang -p gobi-memory -p gobi-engine -p gobi-slt -p gobi-cli &&
    CARGO_TARGET_DIR="$earlier/target" cargo build --release --locked --bin gobi)
  cp "$earlier/target/release/gobi" "$earlier/gobi"
  git worktree remove --force "$tree"
fi

cmd="query --file {query} --data {data} --memory-limit {limit_bytes} --summary json"
mkdir -p bench/results
python3 "$PEERS" run --data "$parquet" --runs "gobi-$COMMIT:$LIMIT" "gobi:$LIMIT" \
  --engine-cmd "gobi-$COMMIT=$earlier/gobi $cmd" \
  --engine-cmd "gobi=$CARGO_TARGET_DIR/release/gobi $cmd" \
  --json "bench/results/versus-$COMMIT-$LIMIT.json" --markdown "bench/results/versus-$COMMIT-$LIMIT.md"
