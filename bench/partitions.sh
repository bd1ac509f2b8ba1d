#!/usr/bin/env bash
# Partition-scale benchmark (not part of CI): idle cost per partition and
# throughput spread over partitions, for the release binaries; see
# bench/partitions.py for what is measured and the knobs (PARTITIONS,
# SPREAD, SETUPS, IDLE_SECONDS, RECORDS, BIN_DIR, LABEL).
#
#   bench/partitions.sh                      # this checkout
#   BIN_DIR=/path/to/old/target/release LABEL=old bench/partitions.sh
#
# Nodes listen on 127.0.0.1-3 (ports 7070, 7071, 7080); every process it
# starts is killed on exit. Results: one JSON object per line on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${BIN_DIR:-}" ]; then
  cargo build --release --quiet -p strata-broker -p strata-cli --bins
fi
exec python3 bench/partitions.py
