#!/usr/bin/env bash
# The test command: install, start the real services, run every test (slow ones included).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/bootstrap.sh
# docker-compose validates docker-compose.yml in the tests (no Docker engine needed)
if ! command -v docker-compose >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "[test] installing docker-compose with apt-get" >&2
  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-compose >/dev/null
fi
scripts/services.sh up
export STREAMFLOW_NO_PROGRESS=1
exec .venv/bin/python -m pytest "$@"
