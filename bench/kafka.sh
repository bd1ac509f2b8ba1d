#!/usr/bin/env bash
# The Kafka front-end against the native path, with real clients, on one
# single-node release broker started here (DESIGN.md §8: the Kafka path
# should reach ≥ 0.7× the native path's produce and consume, same run).
#
#   bench/kafka.sh            # RECORDS=1000000 ROUNDS=3 RECORD_BYTES=100
#
# Per round, on fresh topics, alternating the two paths:
#   produce: `strata produce --file` (native gRPC client, acks=all) vs
#            `kcat -P -l` (librdkafka, acks=all, linger 5 ms, 256 KiB batches),
#            the same file of RECORDS lines, one partition; wall time of the
#            client process, which waits for every acknowledgement;
#   consume: `strata consume --from earliest` vs `kcat -C -o beginning -c RECORDS`
#            (exits on the last record; `-e` would add the fetch wait at the
#            tail, fetch.wait.max.ms = 500 ms, to every run),
#            the whole partition to /dev/null; wall time. kcat runs twice:
#            with librdkafka's defaults, and with fetch.wait.max.ms=10, which
#            shortens librdkafka 2.0.2's broker-thread sleep between a fetch
#            response and the next request (the broker answers each 1 MiB
#            fetch in under 4 ms either way: `kcat -d fetch,protocol`).
# Prints records/s per round and the Kafka/native ratios. Needs kcat
# (Debian's), a release build (`cargo build --release`), and free ports.
set -euo pipefail
cd "$(dirname "$0")/.."
RECORDS=${RECORDS:-1000000}
ROUNDS=${ROUNDS:-3}
RECORD_BYTES=${RECORD_BYTES:-100}
bin=target/release
command -v kcat >/dev/null || { echo "bench/kafka.sh needs kcat (apt-get install kcat)" >&2; exit 1; }
[[ -x $bin/strata-broker && -x $bin/strata ]] || { echo "run cargo build --release first" >&2; exit 1; }

work=$(mktemp -d)
pid=
cleanup() {
  [[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

"$bin/strata-broker" --data-dir "$work/d" --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 \
  --kafka-addr 127.0.0.1:0 >"$work/out" 2>"$work/err" &
pid=$!
for _ in $(seq 300); do grep -q '^strata-broker ready' "$work/out" && break; sleep 0.1; done
ready=$(grep '^strata-broker ready' "$work/out") || { cat "$work/err"; exit 1; }
grpc=$(sed 's/.* grpc=\([^ ]*\).*/\1/' <<<"$ready")
kafka=$(sed 's/.* kafka=\([^ ]*\).*/\1/' <<<"$ready")
python3 -c "
import sys
v = 'x' * $RECORD_BYTES
with open('$work/lines', 'w') as f:
    for i in range($RECORDS): f.write(v + '\n')
"
strata() { "$bin/strata" --broker "$grpc" "$@"; }
secs() { # runs "$@", prints its wall time in seconds
  local t0 t1
  t0=$(date +%s.%N)
  "$@" >/dev/null
  t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc -l
}
rate() { echo "scale=0; $RECORDS / $1" | bc -l; }

echo "records=$RECORDS bytes=$RECORD_BYTES rounds=$ROUNDS kafka=$kafka grpc=$grpc commit=$(git rev-parse --short HEAD)"
printf '%-6s %12s %12s %6s %12s %12s %6s %12s %6s\n' round native_prod kafka_prod ratio native_cons kafka_cons ratio kafka_tuned ratio
for r in $(seq "$ROUNDS"); do
  strata topic create "n$r" >/dev/null
  strata topic create "k$r" >/dev/null
  np=$(secs "$bin/strata" --broker "$grpc" produce "n$r" --file "$work/lines" --partition 0 --quiet)
  kp=$(secs kcat -b "$kafka" -P -t "k$r" -p 0 -l "$work/lines" -X linger.ms=5 -X batch.size=262144 -X acks=all)
  # Both topics hold RECORDS records; consume each through both paths.
  nc=$(secs "$bin/strata" --broker "$grpc" consume "k$r" --from earliest)
  kc=$(secs kcat -b "$kafka" -C -t "n$r" -p 0 -o beginning -c "$RECORDS" -q)
  kt=$(secs kcat -b "$kafka" -C -t "n$r" -p 0 -o beginning -c "$RECORDS" -q -X fetch.wait.max.ms=10)
  printf '%-6s %12s %12s %6.2f %12s %12s %6.2f %12s %6.2f\n' "$r" "$(rate "$np")" "$(rate "$kp")" \
    "$(echo "$np / $kp" | bc -l)" "$(rate "$nc")" "$(rate "$kc")" "$(echo "$nc / $kc" | bc -l)" \
    "$(rate "$kt")" "$(echo "$nc / $kt" | bc -l)"
done
echo "(records/s; ratio = Kafka/native; the consumes read the other path's topic: cross-protocol)"
