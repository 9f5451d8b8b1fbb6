#!/usr/bin/env bash
# Sets up a virtual environment with the test dependencies (idempotent) and runs the test suite.
#   bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements-dev.txt
.venv/bin/python -m pip install -q --no-deps -e .
log=$(mktemp)
set +e
.venv/bin/python -m pytest -q "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
# orbax's background threads can print after pytest's summary at interpreter exit; repeat the
# summary so that it is the last line.
summary=$(grep -E '^[0-9]+ (passed|failed)|^(no tests ran|[0-9]+ error)' "$log" | tail -n 1 || true)
rm -f "$log"
[ -n "$summary" ] && echo "$summary"
exit "$rc"
