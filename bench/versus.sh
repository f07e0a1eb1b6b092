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
#   ROUNDS=3 REPEAT=10 bench/versus.sh 8c4d0b7   # three rounds, the first engine alternating
#
# Results: bench/results/versus-<commit>-<limit>.{json,md}; bench/ratios.py prints the ratios.
# With ROUNDS: versus-<commit>-<limit>-round<N>.json each, and each engine's best over all
# rounds beside every round's ratio (bench/best_of_runs.py) in versus-<commit>-<limit>.md.
# peers.py runs one engine's repeats of a query together, and this machine's noise lasts
# minutes: a slow minute can fall on one engine's repeats, so a round alone decides nothing.
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
if [ -z "${ROUNDS:-}" ]; then
  python3 "$PEERS" run --data "$parquet" --repeat "${REPEAT:-3}" --runs "${runs[@]}" "${engines[@]}" \
    --json "bench/results/$name.json" --markdown "bench/results/$name.md"
  exit
fi
rounds=()
for round in $(seq "$ROUNDS"); do
  # Odd rounds run the earlier build first for each query, even rounds this one.
  order=("${runs[@]}")
  [ $((round % 2)) = 0 ] && order=("${runs[1]}" "${runs[0]}" "${runs[@]:2}")
  python3 "$PEERS" run --data "$parquet" --repeat "${REPEAT:-3}" --runs "${order[@]}" "${engines[@]}" \
    --json "bench/results/$name-round$round.json" > /dev/null
  rounds+=("bench/results/$name-round$round.json")
done
bench/best_of_runs.py "gobi-$COMMIT" gobi "${rounds[@]}" | tee "bench/results/$name.md"
