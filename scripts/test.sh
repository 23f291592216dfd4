#!/usr/bin/env bash
# The test command: install, start the real services, run every test (slow ones included).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/bootstrap.sh
# docker-compose validates docker-compose.yml (no Docker engine needed); chromium loads the dashboard
if [ "$(id -u)" = 0 ] && { ! command -v docker-compose >/dev/null || ! command -v chromium >/dev/null; }; then
  echo "[test] installing docker-compose and chromium with apt-get" >&2
  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-compose chromium >/dev/null
fi
# promtool checks the alert rules and the real /metrics; tests/test_prometheus.py runs a prometheus server
if [ "$(id -u)" = 0 ] && { ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; }; then
  echo "[test] installing prometheus (promtool) with apt-get" >&2
  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    prometheus >/dev/null
fi
echo "[test] ruff check, ruff format --check, mypy (config in pyproject.toml)" >&2
.venv/bin/ruff check --no-cache .
.venv/bin/ruff format --check --no-cache .
.venv/bin/mypy
scripts/services.sh up
export STREAMFLOW_NO_PROGRESS=1
status=0
.venv/bin/python -m pytest "$@" || status=$?
# the whole suite (no arguments): then the unit tests and a small demo on every other supported
# Python the machine has (scripts/other_pythons.sh)
if [ $# -eq 0 ]; then
  echo "[test] the other supported Pythons: unit tests and a 200-user demo each" >&2
  scripts/other_pythons.sh || status=1
fi
exit "$status"
