#!/usr/bin/env bash
# The whole test suite: creates the environments (scripts/setup_envs.sh) and the services the tests talk to
# (scripts/install_test_services.sh), lints, then runs pytest in each environment of the engine registry with the
# tests that environment owns (`python -m serving_app.engines.registry pytest-marks NAME`: markers, not file lists).
# Extra arguments go to every pytest run (e.g. -x, -k name); TEST_MARKS narrows the selection in every environment
# (TEST_MARKS="not e2e" bash scripts/test.sh: the unit tests alone, no Ray, no model).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_envs.sh
if [[ -f scripts/install_test_services.sh ]]; then bash scripts/install_test_services.sh; fi
export PYTHONDONTWRITEBYTECODE=1
status=0
echo "=== ruff"
.venv/bin/python -m ruff check . || status=1
while read -r name venv _; do
  [[ -n $name ]] || continue
  marks=$("$venv/bin/python" -m serving_app.engines.registry pytest-marks "$name")
  [[ -z ${TEST_MARKS:-} ]] || marks="($marks) and ($TEST_MARKS)"
  echo "=== $name environment ($venv): -m \"$marks\""
  "$venv/bin/python" -m pytest -p no:cacheprovider -m "$marks" tests "$@" || status=1
done < requirements/environments.txt
exit $status
