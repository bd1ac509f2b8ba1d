#!/usr/bin/env bash
# Starts (or stops) a 3-node Strata cluster on loopback, for users and tests.
#
#   deploy/local-cluster.sh start [DATA_DIR]   # default ./strata-cluster
#   deploy/local-cluster.sh stop  [DATA_DIR]
#
# Node i listens on 127.0.0.i: gRPC :7070, HTTP :7080, Raft :7071. Data and
# logs go under DATA_DIR/n<i>; PIDs in DATA_DIR/n<i>.pid (stop uses them).
# Builds the release binaries first if they are missing.
set -euo pipefail
cmd=${1:-}
dir=${2:-./strata-cluster}
root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/target/release/strata-broker"
peers="1=127.0.0.1:7071,2=127.0.0.2:7071,3=127.0.0.3:7071"

case "$cmd" in
start)
  [ -x "$bin" ] || (cd "$root" && cargo build --release --bin strata-broker --bin strata)
  mkdir -p "$dir"
  for i in 1 2 3; do
    if [ -f "$dir/n$i.pid" ] && kill -0 "$(cat "$dir/n$i.pid")" 2>/dev/null; then
      echo "node $i already running (pid $(cat "$dir/n$i.pid"))"; continue
    fi
    "$bin" --node-id "$i" --data-dir "$dir/n$i" \
      --grpc-addr "127.0.0.$i:7070" --http-addr "127.0.0.$i:7080" --kafka-addr "127.0.0.$i:9092" \
      --raft-addr "127.0.0.$i:7071" --peers "$peers" \
      >"$dir/n$i.out" 2>"$dir/n$i.log" &
    echo $! >"$dir/n$i.pid"
  done
  for i in 1 2 3; do
    for _ in $(seq 1 100); do
      grep -q "strata-broker ready" "$dir/n$i.out" 2>/dev/null && break
      sleep 0.1
    done
    grep -q "strata-broker ready" "$dir/n$i.out" || { echo "node $i did not start; see $dir/n$i.log" >&2; exit 1; }
    echo "node $i ready (pid $(cat "$dir/n$i.pid")): grpc 127.0.0.$i:7070"
  done
  echo "try: target/release/strata -b 127.0.0.1:7070 topic create demo --partitions 3 --replication-factor 3"
  ;;
stop)
  for i in 1 2 3; do
    f="$dir/n$i.pid"
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
      echo "node $i stopped"
    fi
    rm -f "$f"
  done
  ;;
*)
  echo "usage: $0 start|stop [DATA_DIR]" >&2; exit 2 ;;
esac
