#!/usr/bin/env bash
# Side-by-side benchmark: Strata vs Redis Streams (appendfsync always) vs
# NATS JetStream (file storage), single node, on this machine, in one run,
# plus the machine's physical limits. Installs redis-server and nats-server
# from Debian if missing, starts every server on loopback in a temporary
# directory, runs bench/src/main.rs (strata-compare), and stops every process
# it started, by PID, also on failure.
#
# Knobs (environment): RECORDS (1000000), REPLAY_RECORDS (10000000),
# RATE (10000), LATENCY_SECONDS (10), MAX_SECONDS (60), WORKLOADS
# (produce,replay,latency).
# RF=3 rows need Strata's replication (issue 5) and are not measured here.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v nats-server >/dev/null || need+=(nats-server)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} from Debian…"
  apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null; }
fi
# Debian's package may start its own service; ours run on their own ports.

cargo build --release --quiet -p strata-broker -p strata-bench --bins
work=$(mktemp -d -p "${BENCH_DIR:-$PWD/target}")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
wait_port() { # port
  for _ in $(seq 1 300); do
    (echo > /dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on port $1" >&2; return 1
}

redis_port=$(free_port)
mkdir -p "$work/redis"
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$work/redis" --appendonly yes --appendfsync always \
  --save '' --protected-mode no >"$work/redis.log" 2>&1 &
pids+=($!)

nats_port=$(free_port)
nats-server -a 127.0.0.1 -p "$nats_port" -js -sd "$work/nats" >"$work/nats.log" 2>&1 &
pids+=($!)

target/release/strata-broker --data-dir "$work/strata" --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
  >"$work/strata.out" 2>"$work/strata.err" &
pids+=($!)
for _ in $(seq 1 300); do grep -q "strata-broker ready" "$work/strata.out" 2>/dev/null && break; sleep 0.1; done
strata=$(grep -m1 "strata-broker ready" "$work/strata.out" | sed 's/.*grpc=\([^ ]*\).*/\1/')
wait_port "$redis_port"
wait_port "$nats_port"
echo "Strata $strata, Redis 127.0.0.1:$redis_port ($(redis-server --version | awk '{print $3}')), NATS 127.0.0.1:$nats_port ($(nats-server --version))"

target/release/strata-compare --strata "$strata" --redis "127.0.0.1:$redis_port" --nats "127.0.0.1:$nats_port" \
  --data-dir "$work" --records "${RECORDS:-1000000}" --replay-records "${REPLAY_RECORDS:-10000000}" \
  --rate "${RATE:-10000}" --latency-seconds "${LATENCY_SECONDS:-10}" --max-seconds "${MAX_SECONDS:-60}" \
  --workloads "${WORKLOADS:-produce,replay,latency}" --json "${RESULTS_JSON:-target/compare-results.json}"
