# The test files that need neither PostgreSQL nor Kafka, from tests/unit_tests.txt (sourced by
# scripts/check.sh and scripts/other_pythons.sh).
# shellcheck disable=SC2034 # used by the scripts that source it
mapfile -t UNIT_TESTS < <(grep -v '^#' "$(dirname "${BASH_SOURCE[0]}")/../tests/unit_tests.txt" | grep .)
