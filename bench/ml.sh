#!/usr/bin/env bash
# ML benchmark, in one run on this machine (not part of CI):
#   1. end-to-end training throughput: records read from a local broker ->
#      features -> learn (StandardScaler | LogisticRegression), samples/s;
#   2. the same learner over the same records in memory;
#   3. River's StandardScaler | LogisticRegression on the same data (River is
#      installed into a throw-away virtualenv here, never a test dependency);
#   4. prediction serving over HTTP, measured with wrk (installed from
#      Debian if missing), single-instance and 100-instance requests.
# Every process it starts is stopped by PID on exit, also on failure.
# Knobs: RECORDS (default 1000000), RIVER_RECORDS (200000), LOAD_SECONDS (10).
set -euo pipefail
cd "$(dirname "$0")/.."
RECORDS=${RECORDS:-1000000}
RIVER_RECORDS=${RIVER_RECORDS:-200000}
LOAD_SECONDS=${LOAD_SECONDS:-10}

cargo build --release --quiet -p strata-broker -p strata-cli -p strata-ml --bins
bin=target/release
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

wait_for_line() { # file pattern
  for _ in $(seq 1 300); do
    if grep -q "$2" "$1" 2>/dev/null; then grep -m1 "$2" "$1"; return 0; fi
    sleep 0.1
  done
  echo "timed out waiting for '$2' in $1" >&2; return 1
}

"$bin/strata-broker" --data-dir "$work/data" --grpc-addr 127.0.0.1:0 --http-addr 127.0.0.1:0 --kafka-addr 127.0.0.1:0 >"$work/broker.out" 2>"$work/broker.err" &
pids+=($!)
ready=$(wait_for_line "$work/broker.out" "strata-broker ready")
grpc=$(echo "$ready" | sed 's/.*grpc=\([^ ]*\).*/\1/')
echo "broker on $grpc"

python3 - "$RECORDS" "$work/phish.jsonl" <<'PY'
import csv, json, sys
n, out = int(sys.argv[1]), sys.argv[2]
rows = list(csv.DictReader(open("ml-consumer/tests/data/phishing.csv")))
with open(out, "w") as f:
    for i in range(n):
        r = rows[i % len(rows)]
        f.write(json.dumps({k: (v == "True") if k == "is_phishing" else float(v) for k, v in r.items()}) + "\n")
PY
"$bin/strata" -b "$grpc" topic create phish >/dev/null
"$bin/strata" -b "$grpc" produce phish --file "$work/phish.jsonl" --quiet

echo "== Strata: end to end and in memory ($RECORDS records)"
"$bin/strata-ml" --broker "$grpc" bench --topic phish --label is_phishing 2>/dev/null | tee "$work/strata.json"

echo "== River 0.26.1 ($RIVER_RECORDS records, same data)"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check river==0.26.1
head -n "$RIVER_RECORDS" "$work/phish.jsonl" > "$work/river.jsonl"
"$work/venv/bin/python" - "$work/river.jsonl" <<'PY'
import json, sys, time
from river import compose, linear_model, preprocessing
rows = [json.loads(l) for l in open(sys.argv[1])]
data = [({k: v for k, v in r.items() if k != "is_phishing"}, r["is_phishing"]) for r in rows]
model = compose.Pipeline(preprocessing.StandardScaler(), linear_model.LogisticRegression())
correct = 0
t = time.perf_counter()
for x, y in data:
    correct += model.predict_one(x) == y
    model.learn_one(x, y)
dt = time.perf_counter() - t
print(json.dumps({"records": len(data), "samples_per_s": len(data) / dt, "accuracy": correct / len(data)}))
PY

echo "== Predictions over HTTP (wrk, $LOAD_SECONDS s, 64 connections)"
command -v wrk >/dev/null || (apt-get install -y -qq wrk >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq wrk >/dev/null))
"$bin/strata-ml" --broker "$grpc" --store "$work/ml" train --topic phish --model m --label is_phishing >/dev/null 2>&1
"$bin/strata-ml" --broker "$grpc" --store "$work/ml" serve --http-addr 127.0.0.1:0 >"$work/ml.out" 2>"$work/ml.err" &
pids+=($!)
addr=$(wait_for_line "$work/ml.out" "strata-ml ready" | sed 's/.*http=//')
one='{"features":{"empty_server_form_handler":0,"popup_window":0,"https":1,"request_from_other_domain":0.5,"anchor_from_other_domain":0,"is_popular":0.5,"long_url":1,"age_of_domain":1,"ip_in_url":0}}'
hundred=$(python3 -c "import json,sys; x=json.loads(sys.argv[1])['features']; print(json.dumps({'instances':[x]*100}))" "$one")
for body in "$one" "$hundred"; do
  printf 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = [[%s]]\n' "$body" > "$work/post.lua"
  wrk -t2 -c64 -d"${LOAD_SECONDS}s" -s "$work/post.lua" "http://$addr/v1/models/m/predict" | grep -E "Requests/sec|Latency|Non-2xx" || true
done
echo "(with 100 instances per request, predictions/s = 100 x Requests/sec)"
