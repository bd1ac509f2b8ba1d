#!/usr/bin/env bash
# Checks of the broker's APIs by standard third-party tools, against a real
# strata-broker (debug build) on loopback, started and stopped here:
#   1. rich_status_check.py: a standard gRPC client (grpcio, grpcio-status)
#      reads the rich error status of failing RPCs;
#   2. kafka_clients.py: real Kafka clients (kcat from Debian,
#      confluent-kafka, kafka-python) against the broker's Kafka listener;
#   3. schemathesis: property-based requests generated from the OpenAPI
#      document the broker serves (/openapi.json, i.e. docs/openapi.json),
#      every check on; any failure fails the run.
# The Python packages (pinned in requirements.txt) go into a venv under
# target/python-venv, made or refreshed when requirements.txt changes.
# Bounded: SCHEMATHESIS_MAX_EXAMPLES cases per operation (default 400, a
# fixed seed unless SCHEMATHESIS_SEED is set), each run under `timeout`.
# Called by .ci/run; runs alone too (from any directory).
set -euo pipefail
cd "$(dirname "$0")/../.."
started=$SECONDS

venv=target/python-venv
stamp=$venv/requirements.sha256
want=$(sha256sum tests/python/requirements.txt | cut -d' ' -f1)
if [[ ! -x $venv/bin/python || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  echo "== python venv ($venv)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/python/requirements.txt
  echo "$want" >"$stamp"
fi

# The same build the end-to-end tests use (a no-op after them).
cargo build --quiet --locked -p strata-broker -p strata-cli -p strata-ml --bins

work=$(mktemp -d)
broker_pid=
cleanup() {
  if [[ -n $broker_pid ]]; then
    kill "$broker_pid" 2>/dev/null || true
    wait "$broker_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# The one rule the OpenAPI document cannot state as a schema: a record
# dated more than message_timestamp_after_max_ms ahead of the broker's
# clock is refused (400 INVALID_TIMESTAMP; its description says so, and
# tests/single_node.rs covers it). Schemathesis would call a far-future
# int64 a valid request refused, so this broker allows any timestamp.
mkdir -p "$work"
printf 'message_timestamp_after_max_ms = 9223372036854775807\n' >"$work/broker.toml"
target/debug/strata-broker --data-dir "$work/data" --config "$work/broker.toml" \
  --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 --kafka-addr 127.0.0.1:0 >"$work/stdout" 2>"$work/stderr" &
broker_pid=$!
for _ in $(seq 300); do # up to 30 s for the ready line
  grep -q '^strata-broker ready' "$work/stdout" && break
  kill -0 "$broker_pid" 2>/dev/null || { cat "$work/stderr"; echo "strata-broker exited" >&2; exit 1; }
  sleep 0.1
done
ready=$(grep '^strata-broker ready' "$work/stdout") || { cat "$work/stderr"; echo "strata-broker not ready in 30 s" >&2; exit 1; }
grpc=$(sed 's/.* grpc=\([^ ]*\).*/\1/' <<<"$ready")
http=$(sed 's/.* http=\([^ ]*\).*/\1/' <<<"$ready")
# "orders": the topic tests/python/schemathesis.toml points requests at;
# "empty": stays empty for the rich-status check.
target/debug/strata --broker "$grpc" topic create orders --partitions 2 >/dev/null
target/debug/strata --broker "$grpc" topic create empty >/dev/null

echo "== rich gRPC error status, read by grpcio-status"
timeout 120 "$venv/bin/python" tests/python/rich_status_check.py "$grpc" empty "$work/gen"

kafka=$(sed 's/.* kafka=\([^ ]*\).*/\1/' <<<"$ready")
echo "== Kafka clients (kcat, confluent-kafka, kafka-python) against $kafka"
command -v kcat >/dev/null || { echo "kcat is not installed (.ci/run installs it)" >&2; exit 1; }
timeout 300 "$venv/bin/python" tests/python/kafka_clients.py "$kafka" "$grpc" target/debug/strata

echo "== schemathesis against http://$http/openapi.json"
st_started=$SECONDS
# From the scratch directory: schemathesis keeps a cache (.schemathesis/)
# in its working directory.
root=$PWD
(cd "$work" && timeout 600 "$root/$venv/bin/schemathesis" --no-color \
  --config-file "$root/tests/python/schemathesis.toml" \
  run "http://$http/openapi.json" --url "http://$http" \
  --checks all --workers 2 --request-timeout 10 --generation-database none \
  --max-examples "${SCHEMATHESIS_MAX_EXAMPLES:-400}" --seed "${SCHEMATHESIS_SEED:-20261207}")
echo "schemathesis took $((SECONDS - st_started)) s; tests/python/run.sh $((SECONDS - started)) s"
if ! kill -0 "$broker_pid" 2>/dev/null; then
  cat "$work/stderr"
  echo "strata-broker died during the run" >&2
  exit 1
fi
