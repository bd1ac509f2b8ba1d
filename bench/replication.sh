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
#   4. the same latencies for RF=1, and both at a low rate (LOW_RATE).
# Knobs: RECORDS (default 2000000), LATENCY_SECONDS (10), LOW_RATE (50000),
# LINGER_MS for the latency runs (1; the peak runs use the default 5),
# PRODUCERS (1).
set -euo pipefail
cd "$(dirname "$0")/.."
RECORDS=${RECORDS:-2000000}
LATENCY_SECONDS=${LATENCY_SECONDS:-10}
LOW_RATE=${LOW_RATE:-50000}
LINGER_MS=${LINGER_MS:-1}   # producer linger for the latency runs
PRODUCERS=${PRODUCERS:-1}

cargo build --release --quiet -p strata-broker -p strata-cli --bins
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

settle() { # until every replica of every partition has caught up
  for _ in $(seq 1 600); do
    if cli --json cluster status 2>/dev/null \
      | field 'all(all(v == 0 for v in p["lag"].values()) for p in d["partitions"])' | grep -q True; then
      return 0
    fi
    sleep 0.1
  done
  echo "replicas did not catch up within 60 s" >&2
  return 1
}

bench() { # topic rf extra-args...  (starts once the previous run settled)
  local topic=$1 rf=$2
  shift 2
  settle
  cli --json bench produce "$topic" --replication-factor "$rf" --producers "$PRODUCERS" "$@"
}

wire_bytes() { # batch bytes the leaders accepted for a topic (all nodes' /metrics)
  local t=0 v
  for i in 1 2 3; do
    v=$(curl -s "127.0.0.$i:7080/metrics" | awk -v t="$1" '$1 == "strata_produce_bytes_total{topic=\""t"\"}" {print $2}')
    t=$((t + ${v:-0}))
  done
  echo "$t"
}

echo "== RF=1 peak ($RECORDS records)"
rf1=$(bench rf1 1 --records "$RECORDS")
echo "$rf1"
echo "== RF=3 peak ($RECORDS records)"
before=$(written)
rf3=$(bench rf3 3 --records "$RECORDS")
after=$(written)
wire=$(wire_bytes rf3)
echo "$rf3"
peak=$(echo "$rf3" | field 'int(d["records_per_s"])')
half=$((peak / 2))
echo "== RF=3 and RF=1 at half the RF=3 peak: $half records/s for ${LATENCY_SECONDS} s"
lat3=$(bench rf3 3 --records $((half * LATENCY_SECONDS)) --rate "$half" --linger-ms "$LINGER_MS")
lat1=$(bench rf1 1 --records $((half * LATENCY_SECONDS)) --rate "$half" --linger-ms "$LINGER_MS")
echo "== RF=3 and RF=1 at $LOW_RATE records/s for ${LATENCY_SECONDS} s"
low3=$(bench rf3 3 --records $((LOW_RATE * LATENCY_SECONDS)) --rate "$LOW_RATE" --linger-ms "$LINGER_MS")
low1=$(bench rf1 1 --records $((LOW_RATE * LATENCY_SECONDS)) --rate "$LOW_RATE" --linger-ms "$LINGER_MS")

produced=$((RECORDS * 100))
python3 - "$rf1" "$rf3" "$lat1" "$lat3" "$low1" "$low3" "$before" "$after" "$produced" "$wire" <<'PY'
import json, sys
rf1, rf3, lat1, lat3, low1, low3 = (json.loads(a) for a in sys.argv[1:7])
before, after, produced, wire = (int(a) for a in sys.argv[7:11])
disk = (after - before) / 3
def l(d): return f"{d['latency_ms']['p50']:.2f} / {d['latency_ms']['p99']:.2f} / {d['latency_ms']['p999']:.2f}"
print()
print("| measure | RF=1 | RF=3 | RF=3 / RF=1 |")
print("|---|---:|---:|---:|")
print(f"| peak produce, 100 B records, acks=all, records/s | {rf1['records_per_s']:,.0f} | {rf3['records_per_s']:,.0f} | {rf3['records_per_s'] / rf1['records_per_s']:.2f} |")
print(f"| send-to-ack at peak, p50 / p99 / p99.9 ms | {l(rf1)} | {l(rf3)} | |")
print(f"| send-to-ack at half the RF=3 peak ({lat3['records_per_s']:,.0f} records/s), p50 / p99 / p99.9 ms | {l(lat1)} | {l(lat3)} | p99 {lat3['latency_ms']['p99'] / lat1['latency_ms']['p99']:.2f} |")
print(f"| send-to-ack at {low3['records_per_s']:,.0f} records/s, p50 / p99 / p99.9 ms | {l(low1)} | {l(low3)} | p99 {low3['latency_ms']['p99'] / low1['latency_ms']['p99']:.2f} |")
print(f"| bytes written to disk per replica / record value bytes (RF=3 peak run) | | {disk / produced:.3f} | |")
print(f"| bytes written to disk per replica / batch bytes produced (RF=3 peak run) | | {disk / wire:.3f} | |" if wire else "| batch bytes produced: not found in /metrics | | | |")
PY
