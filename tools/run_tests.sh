#!/usr/bin/env bash
# Set up the environment (if needed) and run the test suite:  bash tools/run_tests.sh [pytest args]
# Fails when a test fails and also when no test ran (pytest exit code 5).
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
bash tools/setup_env.sh || exit 1
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "run_tests: no tests were collected; treating as failure" >&2
  exit 1
fi
exit "$rc"
