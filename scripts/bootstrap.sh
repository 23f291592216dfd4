#!/usr/bin/env bash
# Creates .venv with a supported Python (3.11, 3.12 or 3.13: $PYTHON, else the first of python3.11,
# python3.12, python3.13, python3 that is one of them) and installs StreamFlow with the whole
# dependency tree from the hashed lock (requirements-test.lock, written by scripts/lock.sh).
# Idempotent: does nothing when neither pyproject.toml nor the lock changed since the last install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
supported() { "$1" -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))' 2>/dev/null; }
PY="${PYTHON:-}"
if [ -n "$PY" ]; then
  supported "$PY" || { echo "[bootstrap] error: $PY is not Python 3.11, 3.12 or 3.13" >&2; exit 1; }
else
  for cand in python3.11 python3.12 python3.13 python3; do
    if command -v "$cand" >/dev/null && supported "$cand"; then
      PY="$cand"; break
    fi
  done
fi
[ -n "$PY" ] || { echo "[bootstrap] error: Python 3.11, 3.12 or 3.13 is needed (set PYTHON=/path/to/python3)" >&2; exit 1; }
VENV="${STREAMFLOW_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[bootstrap] creating $VENV with $PY ($("$PY" -c 'import platform; print(platform.python_version())'))" >&2
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.streamflow-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ requirements-test.lock -nt "$stamp" ]; then
  echo "[bootstrap] installing dependencies (hashed, from requirements-test.lock)" >&2
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
  "$VENV/bin/python" -m pip install -q --require-hashes -r requirements-test.lock
  "$VENV/bin/python" -m pip install -q --no-deps -e .
  touch "$stamp"
fi
