#!/usr/bin/env bash
# A/B check of a change that must not change performance: runs
# `strata bench produce` and `strata bench consume` against a single-node
# broker built from two trees, alternating A and B round by round so both
# see the same machine (the machines here are shared and noisy: compare
# the medians of the rounds, not single figures).
#
#   bench/ab.sh A_BIN_DIR B_BIN_DIR [ROUNDS] [RECORDS]
#   PRODUCE_ARGS=--lz4 bench/ab.sh …    (extra flags for `bench produce`)
#
# A_BIN_DIR and B_BIN_DIR hold release builds of `strata-broker` and
# `strata` (e.g. a worktree of the old commit's target/release and this
# tree's). Every round starts a fresh broker on free loopback ports with
# its data under target/ab-data, and stops it by PID. Prints one line per
# run; exits non-zero if any run fails.
set -euo pipefail
cd "$(dirname "$0")/.."

a=${1:?usage: bench/ab.sh A_BIN_DIR B_BIN_DIR [ROUNDS] [RECORDS]}
b=${2:?usage: bench/ab.sh A_BIN_DIR B_BIN_DIR [ROUNDS] [RECORDS]}
rounds=${3:-3}
records=${4:-2000000}
for d in "$a" "$b"; do
  for bin in strata-broker strata; do
    [[ -x "$d/$bin" ]] || { echo "missing $d/$bin (build it with cargo build --release --bins)" >&2; exit 2; }
  done
done

data=target/ab-data
broker_pid=
stop() {
  if [[ -n "$broker_pid" ]]; then
    kill "$broker_pid" 2>/dev/null || true
    wait "$broker_pid" 2>/dev/null || true
    broker_pid=
  fi
}
trap stop EXIT

run() {
  local label=$1 dir=$2
  rm -rf "$data" && mkdir -p "$data"
  "$dir/strata-broker" --data-dir "$data/d" --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 --kafka-addr 127.0.0.1:0 \
    >"$data/broker.log" 2>&1 &
  broker_pid=$!
  local addr=
  for _ in $(seq 1 200); do
    addr=$(grep -o 'grpc=[0-9.:]*' "$data/broker.log" | head -1 | cut -d= -f2 || true)
    [[ -n "$addr" ]] && break
    sleep 0.05
  done
  [[ -n "$addr" ]] || { echo "$label: broker did not start" >&2; cat "$data/broker.log" >&2; exit 1; }
  local p c
  # shellcheck disable=SC2086 # PRODUCE_ARGS is a list of flags
  p=$("$dir/strata" -b "$addr" bench produce ab --records "$records" --json ${PRODUCE_ARGS:-})
  c=$("$dir/strata" -b "$addr" bench consume ab --json)
  echo "$label produce $p"
  echo "$label consume $c"
  stop
}

for r in $(seq 1 "$rounds"); do
  run "A round $r" "$a"
  run "B round $r" "$b"
done
