#!/usr/bin/env bash
# Regenerates the hashed locks of the whole dependency tree from pyproject.toml, for every Python
# the project supports (uv's universal resolution): requirements.lock (what the image installs) and
# requirements-test.lock (with the test tools; what scripts/bootstrap.sh installs). Run it after
# changing a pin in pyproject.toml; tests/test_lock.py fails until the locks agree with it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
UV=.venv/bin/uv
[ -x "$UV" ] || { echo "[lock] error: $UV is missing (scripts/bootstrap.sh installs it)" >&2; exit 1; }
"$UV" pip compile pyproject.toml --universal --generate-hashes --quiet -o requirements.lock
"$UV" pip compile pyproject.toml --universal --generate-hashes --quiet --extra test -o requirements-test.lock
echo "[lock] requirements.lock and requirements-test.lock written" >&2
