#!/usr/bin/env bash
# Runs a gobi command with statements put before its `--file` script: how a benchmark run sets
# gobi's settings (peers.py gives the query file; gobi reads settings from SET statements).
#
#   bench/with-settings.sh "SET memory.spilling_join = off;" gobi query --file q1.sql --data DIR
set -euo pipefail
settings="$1"
shift
script=$(mktemp --suffix .sql)
trap 'rm -f "$script"' EXIT
args=()
previous=""
for arg in "$@"; do
  if [ "$previous" = "--file" ]; then
    { printf '%s\n' "$settings"; cat "$arg"; } > "$script"
    arg="$script"
  fi
  args+=("$arg")
  previous="$arg"
done
"${args[@]}"
