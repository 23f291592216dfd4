#!/usr/bin/env bash
# The other supported Pythons: for each of 3.11, 3.12 and 3.13 that this machine has (on the PATH,
# or built by pyenv) and that .venv does not run, a virtualenv of its own (.venv-3.X, from the same
# hashed lock), the unit tests (no PostgreSQL or Kafka) and a small demo (200 users, in a database,
# Feast project, topics and data folder of its own). `make test` runs it after the whole suite.
# Prints one line per version; exits 1 when one failed. A machine with none of them checks nothing
# here (and says so).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=scripts/unit_tests.sh
source "$ROOT/scripts/unit_tests.sh"
main_version=$(.venv/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')

find_python() {  # a working interpreter of version $1, or nothing
  local v=$1 cand
  for cand in "python$v" $(ls -d "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/"$v".*/bin/"python$v" 2>/dev/null | sort -V -r); do
    if "$cand" -c 'import sys' >/dev/null 2>&1; then command -v "$cand"; return; fi
  done
}

failed=0 checked=0
for v in 3.11 3.12 3.13; do
  [ "$v" = "$main_version" ] && continue
  py=$(find_python "$v")
  if [ -z "$py" ]; then echo "[other pythons] $v: not on this machine, not checked"; continue; fi
  checked=$((checked + 1))
  venv=".venv-$v" log="$ROOT/.services/python-$v.log" tag="py${v/./}"
  mkdir -p .services
  start=$(date +%s)
  if PYTHON="$py" STREAMFLOW_VENV="$venv" scripts/bootstrap.sh >"$log" 2>&1 &&
     "$venv/bin/python" -m pytest -q -p no:cacheprovider "${UNIT_TESTS[@]}" >>"$log" 2>&1 &&
     POSTGRES_DB="streamflow_$tag" "$venv/bin/python" -c 'from streamflow import warehouse; warehouse.ensure_database()' &&
     STREAMFLOW_VENV="$venv" USERS=200 POSTGRES_DB="streamflow_$tag" FEAST_PROJECT="streamflow_$tag" \
       STREAMFLOW_TOPIC_PREFIX="$tag" STREAMFLOW_CONSUMER_GROUP="streamflow-$tag" \
       STREAMFLOW_DATA_DIR="$ROOT/.services/data-$tag" STREAMFLOW_API_PORT=$((8100 + ${v#3.})) \
       scripts/demo.sh >>"$log" 2>&1; then
    echo "[other pythons] $v ($("$venv/bin/python" -c 'import platform; print(platform.python_version())')): unit tests and a 200-user demo passed, $(( $(date +%s) - start )) s"
  else
    failed=$((failed + 1))
    echo "[other pythons] $v: FAILED after $(( $(date +%s) - start )) s; the last lines of $log:"
    tail -n 30 "$log"
  fi
done
[ "$checked" -gt 0 ] || echo "[other pythons] no other supported Python on this machine: only $main_version was checked"
[ "$failed" = 0 ]
