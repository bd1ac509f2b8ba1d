#!/usr/bin/env bash
# Replication benchmark (not part of CI): a 3-node cluster on loopback
# (deploy/local-cluster.sh, release build), acks=all, 100-byte records, one
# partition, in one run:
#   1. peak produce throughput with replication factor 3, and 1 for the ratio;
#   2. send-to-ack latency p50/p99 at half the RF=3 peak rate (latency from
#      each record's scheduled send time: no coordinated omission);
#   3. bytes written to disk per byte produced, per replica, from each
#      node's /proc/PID/io write_bytes around the RF=3 peak run.
# Every node it starts is stopped by PID on exit, also on failure.
# Knobs: RECORDS (default 2000000), LATENCY_SECONDS (10), PRODUCERS (1).
set -euo pipefail
cd "$(dirname "$0")/.."
RECORDS=${RECORDS:-2000000}
LATENCY_SECONDS=${LATENCY_SECONDS:-10}
PRODUCERS=${PRODUCERS:-1}

cargo build --release --quiet -p strata-broker -p strata-client --bins
work=$(mktemp -d)
cleanup() {
  deploy/local-cluster.sh stop "$work" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
deploy/local-cluster.sh start "$work" >/dev/null
cli() { target/release/strata -b 127.0.0.1:7070 "$@"; }
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

for _ in $(seq 1 150); do
  up=$(cli --json cluster status 2>/dev/null | field 'sum(1 for n in d["nodes"] if n["up"])' || echo 0)
  [ "$up" = 3 ] && break
  sleep 0.2
done
[ "$up" = 3 ] || { echo "the cluster did not form" >&2; exit 1; }

written() { # total write_bytes of the three nodes
  local t=0 w
  for i in 1 2 3; do
    w=$(awk '/^write_bytes/ {print $2}' "/proc/$(cat "$work/n$i.pid")/io")
    t=$((t + w))
  done
  echo "$t"
}

bench() { # topic rf extra-args...
  local topic=$1 rf=$2
  shift 2
  cli --json bench produce "$topic" --replication-factor "$rf" --producers "$PRODUCERS" "$@"
}

echo "== RF=1 peak ($RECORDS records)"
rf1=$(bench rf1 1 --records "$RECORDS")
echo "$rf1"
echo "== RF=3 peak ($RECORDS records)"
before=$(written)
rf3=$(bench rf3 3 --records "$RECORDS")
after=$(written)
echo "$rf3"
peak=$(echo "$rf3" | field 'int(d["records_per_s"])')
half=$((peak / 2))
echo "== RF=3 at half the peak: $half records/s for ${LATENCY_SECONDS} s"
lat=$(bench rf3 3 --records $((half * LATENCY_SECONDS)) --rate "$half")
echo "$lat"

produced=$((RECORDS * 100))
python3 - "$rf1" "$rf3" "$lat" "$before" "$after" "$produced" <<'PY'
import json, sys
rf1, rf3, lat = (json.loads(a) for a in sys.argv[1:4])
before, after, produced = (int(a) for a in sys.argv[4:7])
per_replica = (after - before) / 3 / produced
print()
print("| measure | RF=1 | RF=3 | RF=3 / RF=1 |")
print("|---|---:|---:|---:|")
print(f"| peak produce, 100 B records, acks=all, records/s | {rf1['records_per_s']:,.0f} | {rf3['records_per_s']:,.0f} | {rf3['records_per_s'] / rf1['records_per_s']:.2f} |")
print(f"| send-to-ack at peak, p50 / p99 ms | {rf1['latency_ms']['p50']:.2f} / {rf1['latency_ms']['p99']:.2f} | {rf3['latency_ms']['p50']:.2f} / {rf3['latency_ms']['p99']:.2f} | |")
print(f"| send-to-ack at half the RF=3 peak ({lat['records_per_s']:,.0f} records/s), p50 / p99 / p99.9 ms | | {lat['latency_ms']['p50']:.2f} / {lat['latency_ms']['p99']:.2f} / {lat['latency_ms']['p999']:.2f} | |")
print(f"| bytes written to disk per byte produced, per replica (RF=3 peak run) | | {per_replica:.3f} | |")
PY
