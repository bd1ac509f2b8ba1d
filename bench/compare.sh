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
# (produce,replay,latency,rf3). The rf3 workload also starts a 3-node Strata
# cluster and a 3-node NATS cluster (JetStream, R3 streams) on loopback.
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

cargo build --release --quiet -p strata-broker -p strata-cli -p strata-bench --bins
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

target/release/strata-broker --data-dir "$work/strata" --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 --kafka-addr 127.0.0.1:0 \
  >"$work/strata.out" 2>"$work/strata.err" &
pids+=($!)
for _ in $(seq 1 300); do grep -q "strata-broker ready" "$work/strata.out" 2>/dev/null && break; sleep 0.1; done
strata=$(grep -m1 "strata-broker ready" "$work/strata.out" | sed 's/.*grpc=\([^ ]*\).*/\1/')
wait_port "$redis_port"
wait_port "$nats_port"

workloads=${WORKLOADS:-produce,replay,latency,rf3}
cluster_args=()
if [[ ",$workloads," == *",rf3,"* ]]; then
  # Strata: three nodes on 127.0.0.1, forming the cluster with --peers.
  declare -a sr sg sh
  for i in 1 2 3; do sr[$i]=$(free_port); sg[$i]=$(free_port); sh[$i]=$(free_port); done
  peers="1=127.0.0.1:${sr[1]},2=127.0.0.1:${sr[2]},3=127.0.0.1:${sr[3]}"
  for i in 1 2 3; do
    target/release/strata-broker --data-dir "$work/strata-c$i" --node-id "$i" --raft-addr "127.0.0.1:${sr[$i]}" \
      --grpc-addr "127.0.0.1:${sg[$i]}" --http-addr "127.0.0.1:${sh[$i]}" --kafka-addr 127.0.0.1:0 --peers "$peers" \
      >"$work/strata-c$i.out" 2>"$work/strata-c$i.err" &
    pids+=($!)
  done
  # NATS: three servers routed to each other, JetStream on each.
  declare -a nc nr
  for i in 1 2 3; do nc[$i]=$(free_port); nr[$i]=$(free_port); done
  routes="nats://127.0.0.1:${nr[1]},nats://127.0.0.1:${nr[2]},nats://127.0.0.1:${nr[3]}"
  for i in 1 2 3; do
    nats-server -a 127.0.0.1 -p "${nc[$i]}" -n "bench-n$i" -js -sd "$work/nats-c$i" \
      --cluster_name strata-bench --cluster "nats://127.0.0.1:${nr[$i]}" --routes "$routes" \
      >"$work/nats-c$i.log" 2>&1 &
    pids+=($!)
  done
  for i in 1 2 3; do wait_port "${sg[$i]}"; wait_port "${nc[$i]}"; done
  for _ in $(seq 1 300); do
    up=$(target/release/strata -b "127.0.0.1:${sg[1]}" --json cluster status 2>/dev/null \
      | python3 -c 'import json,sys; print(sum(1 for n in json.load(sys.stdin)["nodes"] if n["up"]))' 2>/dev/null || echo 0)
    [ "$up" = 3 ] && break
    sleep 0.1
  done
  [ "$up" = 3 ] || { echo "the Strata cluster did not form; see $work/strata-c*.err" >&2; exit 1; }
  echo "Strata cluster 127.0.0.1:${sg[1]},${sg[2]},${sg[3]}; NATS cluster 127.0.0.1:${nc[1]},${nc[2]},${nc[3]}"
  cluster_args=(--strata-cluster "127.0.0.1:${sg[1]}" --nats-cluster "127.0.0.1:${nc[1]}")
fi
echo "Strata $strata, Redis 127.0.0.1:$redis_port ($(redis-server --version | awk '{print $3}')), NATS 127.0.0.1:$nats_port ($(nats-server --version))"

target/release/strata-compare --strata "$strata" --redis "127.0.0.1:$redis_port" --nats "127.0.0.1:$nats_port" \
  --data-dir "$work" --records "${RECORDS:-1000000}" --replay-records "${REPLAY_RECORDS:-10000000}" \
  --rate "${RATE:-10000}" --latency-seconds "${LATENCY_SECONDS:-10}" --max-seconds "${MAX_SECONDS:-60}" \
  --workloads "$workloads" --json "${RESULTS_JSON:-target/compare-results.json}" "${cluster_args[@]}"
