#!/usr/bin/env bash
# The main job, end to end: services, data, Feast, batch path, streaming path, lookups, lag.
#   USERS=7043 scripts/demo.sh
# STREAMFLOW_VENV names another virtualenv (scripts/other_pythons.sh runs the demo on each Python).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
mkdir -p out
USERS="${USERS:-7043}"
step() { printf '\n==> %s\n' "$*"; }
VENV="${STREAMFLOW_VENV:-.venv}"
sf() { "$VENV/bin/streamflow" "$@"; }

step "install (venv + pinned dependencies)"; scripts/bootstrap.sh
step "start PostgreSQL and Kafka"; scripts/services.sh up
DATA="${STREAMFLOW_DATA_DIR:-data}"
step "generate $USERS users x 2 monthly snapshots"; sf generate --users "$USERS" --out "$DATA"
step "create tables and register Feast definitions"; sf apply
step "batch: load month_000 (Jan) into the offline store"; sf load "$DATA/month_000"
step "batch: training set for 2024-01-31 (point in time)"; sf training-set --as-of 2024-01-31
step "batch: materialize to the online store"; sf materialize
users=$(sed -n '2p;3p;4p' "$DATA/month_001/users.csv" | cut -d, -f1)
first=$(echo "$users" | head -n 1)
# the users whose February brings the most new rebuffering: the ones to score before and after
moved=$("$VENV/bin/python" -c 'import sys, pandas as pd
jan, feb = (pd.read_csv(f"{sys.argv[1]}/{m}/usage_agg_30d.csv", index_col="user_id") for m in ("month_000", "month_001"))
print(" ".join((feb.rebuffer_events_7d - jan.rebuffer_events_7d).nlargest(3).index))' "$DATA")
step "churn model: train on January (2024-01-31), register in MLflow (PostgreSQL), promote"
sf train --as-of 2024-01-31
step "churn scores of $moved from January's online features"; sf predict $moved
step "stream: replay month_000 and month_001 into Kafka"; sf produce --snapshots month_000 month_001
step "lag before consuming (a group with no commits yet: status NEW)"; sf lag
step "stream: consume until drained (validate, push online+offline, commit)"; sf consume --until-drained
step "lag after consuming"; sf lag
step "parity: online = newest offline row = the month_001 snapshot, for every user and view"
sf verify --snapshot-dir "$DATA/month_001"
step "training set for 2024-02-29 from what was streamed"; sf training-set --as-of 2024-02-29
step "online lookups (newest values: month_001)"; sf lookup $users
step "the same users' scores now that their February events arrived (same model)"; sf predict $moved
step "retrain on January, now validated on February's labels too: promoted only if it beats the champion"
sf train --as-of 2024-01-31
step "training = serving: every user scored from the online and from the offline row"; sf verify --model champion
step "drift between the months (PSI, KS), per feature and for the score"; sf drift
step "the online feature API: GET /features/{user_id}"
port="${STREAMFLOW_API_PORT:-8000}"
"$VENV/bin/streamflow" api --port "$port" >out/api-demo.log 2>&1 &  # not through sf(): $! must be the API itself
api_pid=$!
trap 'kill $api_pid 2>/dev/null || true' EXIT
# (with STREAMFLOW_API_TOKEN set, the requests carry its first token)
get() { "$VENV/bin/python" -c '
import os, sys, urllib.request
token = os.environ.get("STREAMFLOW_API_TOKEN", "").split(",")[0].strip()
request = urllib.request.Request(sys.argv[1], headers={"Authorization": f"Bearer {token}"} if token else {})
print(urllib.request.urlopen(request, timeout=10).read().decode())' "http://127.0.0.1:$port$1"; }
for _ in $(seq 1 120); do get /health >/dev/null 2>&1 && break; sleep 0.5; done
get "/features/$first" | "$VENV/bin/python" -m json.tool | sed -n '1,30p'  # sed reads it all: no SIGPIPE
step "the API's churn score: GET /predict/{user_id} (the model loads in the background)"
for _ in $(seq 1 120); do get "/predict/$first" >/dev/null 2>&1 && break; sleep 0.5; done
get "/predict/$first" | "$VENV/bin/python" -c 'import json,sys; d=json.load(sys.stdin); print(d["user_id"], "churn probability", round(d["churn_probability"], 4), "model", d["model"]["name"], "version", d["model"]["version"])'
echo "lag (GET /lag): $(get /lag | "$VENV/bin/python" -c 'import json,sys; d=json.load(sys.stdin); s=d["sample"]; print(s["lag"], "messages,", s["lag_seconds"], "s,", (d["status"] or {}).get("status"))')"
kill $api_pid; wait $api_pid 2>/dev/null || true
echo; echo "try: .venv/bin/streamflow lookup $first  (or any id of data/month_001/users.csv)"
echo "done. Services keep running: scripts/services.sh status | down"
