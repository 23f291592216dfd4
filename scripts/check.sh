#!/usr/bin/env bash
# The fast loop (`make check`): lint, format, types, the docs build and the unit tests, with no
# PostgreSQL or Kafka. `make test` runs everything.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/unit_tests.sh
source scripts/unit_tests.sh
[ -x .venv/bin/python ] || scripts/bootstrap.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet --site-dir "$(mktemp -d)"
# the unit tests but the slow ones (make test runs those too)
.venv/bin/python -m pytest -q -p no:cacheprovider -n auto -m "unit and not slow" "${UNIT_TESTS[@]}" "$@"
