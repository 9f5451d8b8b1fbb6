#!/usr/bin/env bash
# Sets up a virtual environment with the test dependencies (idempotent) and runs the test suite.
#   bash scripts/test.sh [--fast] [pytest args...]
# --fast: the core tier only, without the end-to-end tests marked `slow` (tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements-dev.txt
.venv/bin/python -m pip install -q --no-deps -e .
# The browser test (tests/test_browser.py) drives Debian's chromium through its chromedriver; it
# skips without them, except under CI=true, where it fails. Installed once, as root or by sudo.
# The paths that the test starts (scripts/screenshot_report.py), not any chromium on PATH.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  apt=()
  if [ "$(id -u)" = 0 ]; then
    apt=(env DEBIAN_FRONTEND=noninteractive apt-get)
  elif command -v sudo >/dev/null; then
    apt=(sudo -n env DEBIAN_FRONTEND=noninteractive apt-get)  # -n: fail rather than ask
  fi
  if [ ${#apt[@]} -gt 0 ]; then
    aptlog=$(mktemp)
    install=("${apt[@]}" install -y -q --no-install-recommends chromium chromium-driver)
    # A fresh image has no package lists (and old ones name removed versions): update only then.
    if ! "${install[@]}" >"$aptlog" 2>&1 \
        && ! { "${apt[@]}" update -q && "${install[@]}"; } >"$aptlog" 2>&1; then
      echo "scripts/test.sh: could not install chromium and chromium-driver:" >&2
      tail -n 20 "$aptlog" >&2
    fi
    rm -f "$aptlog"
  else
    echo "scripts/test.sh: no chromium/chromedriver and no root or sudo to install them" >&2
  fi
fi
tier=()
if [ "${1:-}" = --fast ]; then
  tier=(-m "not slow")
  shift
fi
log=$(mktemp)
set +e
# JAXSKILL_TEST_WORKERS=0 runs in this process (no pytest-xdist workers). A module runs whole on
# one worker (--dist loadfile), so its module-scoped fixtures are built once.
workers=${JAXSKILL_TEST_WORKERS:-2}
xdist=()
# --no-loadscope-reorder: the modules in the order tests/conftest.py sorts them (the longest
# first), not by their number of tests.
[ "$workers" != 0 ] && xdist=(-n "$workers" --dist loadfile --no-loadscope-reorder)
.venv/bin/python -m pytest -q "${xdist[@]}" "${tier[@]}" --durations=60 "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
# orbax's background threads can print after pytest's summary at interpreter exit; repeat the
# summary so that it is the last line.
summary=$(grep -E '^[0-9]+ (passed|failed)|^(no tests ran|[0-9]+ error)' "$log" | tail -n 1 || true)
rm -f "$log"
[ -n "$summary" ] && echo "$summary"
exit "$rc"
