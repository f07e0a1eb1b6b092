#!/usr/bin/env bash
# This build beside an earlier one (a commit), the 22 TPC-H queries at scale 1 under one
# memory limit, interleaved in one run (../shared/bench/peers.py): the check that a change
# made no query slower. The earlier commit is built once in a worktree (only gobi's own crates
# build again) and kept under ~/.cache/gobi/versus/.
#
#   bench/versus.sh 8c4d0b7            # at 175 MiB
#   LIMIT=50MiB bench/versus.sh 8c4d0b7
#   SETTINGS="SET memory.spilling_join = off;" bench/versus.sh 8c4d0b7   # and this build so
#   REPEAT=5 bench/versus.sh 8c4d0b7   # best of 5 timed runs per query (default 3)
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

# Builds this tree's gobi (release) and makes the data if it is not there yet.
SCALE="$SCALE" bench/tpch-data.sh

earlier="$HOME/.cache/gobi/versus/$COMMIT/gobi"
if [ ! -x "$earlier" ]; then
  # Built in a worktree with this target folder, so the dependencies' builds are reused (a
  # copied target folder rebuilds them: their build scripts' outputs name absolute paths).
  # Cargo would take this tree's builds of gobi's own crates as fresh for the worktree's, so
  # they are cleaned before and after.
  tree=$(mktemp -d)
  git worktree add --detach "$tree" "$COMMIT" > /dev/null
  ours="-p gobi-lang -p gobi-memory -p gobi-engine -p gobi-slt -p gobi-cli"
  cargo clean --release $ours
  # With this tree's release profile (an older Cargo.toml may lack `strip`), or every
  # dependency would build again (35 minutes on two cores); stripping changes no speed.
  (cd "$tree" && CARGO_PROFILE_RELEASE_STRIP=true cargo build --release --locked --bin gobi)
  mkdir -p "$(dirname "$earlier")"
  cp "$CARGO_TARGET_DIR/release/gobi" "$earlier"
  git worktree remove --force "$tree"
  cargo clean --release $ours
  cargo build --release --locked --bin gobi
fi

cmd="query --file {query} --data {data} --memory-limit {limit_bytes} --summary json"
runs=("gobi-$COMMIT:$LIMIT" "gobi:$LIMIT")
engines=(--engine-cmd "gobi-$COMMIT=$earlier $cmd" --engine-cmd "gobi=$CARGO_TARGET_DIR/release/gobi $cmd")
name="versus-$COMMIT-$LIMIT"
if [ -n "${SETTINGS:-}" ]; then
  # A third run: this build with SETTINGS before each query (e.g. a feature switched off).
  runs+=("gobi-set:$LIMIT")
  engines+=(--engine-cmd "gobi-set=bench/with-settings.sh '$SETTINGS' $CARGO_TARGET_DIR/release/gobi $cmd")
  name="$name-set"
fi
mkdir -p bench/results
python3 "$PEERS" run --data "$parquet" --repeat "${REPEAT:-3}" --runs "${runs[@]}" "${engines[@]}" \
  --json "bench/results/$name.json" --markdown "bench/results/$name.md"
