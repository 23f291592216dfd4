#!/usr/bin/env bash
# The main job, end to end: services, data, Feast, batch path, streaming path, lookups, lag.
#   USERS=7043 scripts/demo.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
USERS="${USERS:-7043}"
step() { printf '\n==> %s\n' "$*"; }
sf() { .venv/bin/streamflow "$@"; }

step "install (venv + pinned dependencies)"; scripts/bootstrap.sh
step "start PostgreSQL and Kafka"; scripts/services.sh up
step "generate $USERS users x 2 monthly snapshots"; sf generate --users "$USERS"
step "create tables and register Feast definitions"; sf apply
step "batch: load month_000 (Jan) into the offline store"; sf load data/month_000
step "batch: training set for 2024-01-31 (point in time)"; sf training-set --as-of 2024-01-31
step "batch: materialize to the online store"; sf materialize
step "stream: replay month_000 and month_001 into Kafka"; sf produce --snapshots month_000 month_001
step "lag before consuming"; sf lag || true
step "stream: consume until drained (validate, push online+offline, commit)"; sf consume --until-drained
step "lag after consuming"; sf lag || true
step "training set for 2024-02-29 from what was streamed"; sf training-set --as-of 2024-02-29
users=$(sed -n '2p;3p;4p' data/month_001/users.csv | cut -d, -f1)
step "online lookups (newest values: month_001)"; sf lookup $users
echo; echo "done. Services keep running: scripts/services.sh status | down"
