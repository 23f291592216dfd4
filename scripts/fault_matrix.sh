#!/usr/bin/env bash
# The Kafka fault matrix and the other fault scenarios, RUNS times in a row (default 5), each run
# on fresh private brokers; prints one line per run and the pass count. Longer variants:
#   STREAMFLOW_FAULT_RESTARTS=20 scripts/fault_matrix.sh 1    # 20 broker restarts instead of 5
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
runs="${1:-5}"
scripts/bootstrap.sh
scripts/services.sh up >/dev/null
export STREAMFLOW_NO_PROGRESS=1
tests=(tests/test_kafka_faults.py tests/test_reliability.py tests/test_lag_unreachable.py tests/test_cluster.py
       tests/test_kafka_clients.py tests/test_poison_batch.py tests/test_write_workers.py)
passed=0
for i in $(seq 1 "$runs"); do
  log="$ROOT/.services/fault_matrix_run_$i.log"
  start=$(date +%s)
  if .venv/bin/python -m pytest -q -p no:cacheprovider "${tests[@]}" >"$log" 2>&1; then
    passed=$((passed + 1)); verdict=passed
  else
    verdict="FAILED (see $log)"
  fi
  # each run's figures, for the ranges in docs/explanation/guarantees.md
  cp bench/results/reliability.json "$ROOT/.services/fault_matrix_run_$i.reliability.json" 2>/dev/null || true
  echo "run $i: $verdict, $(tail -n 1 "$log" | tr -d '=' | sed 's/^ *//'), $(( $(date +%s) - start )) s"
done
echo "$passed of $runs runs passed"
[ "$passed" = "$runs" ]
