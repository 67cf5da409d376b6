#!/usr/bin/env bash
# The project's test command: installs what is needed into .venv, checks lint and format (ruff), then runs the
# whole test suite. Extra arguments go to pytest, e.g. `bash scripts/test.sh -k random_image`, or
# `bash scripts/test.sh -m "not slow"` for the fast loop (no end-to-end script runs).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
echo "ruff: lint and format check"
ruff check --quiet .
ruff format --check --quiet .
# On every core when pytest-xdist is installed (requirements-dev.txt; `-n 0` runs in one process): the tests of a
# module that share its expensive fixtures run on one worker (tests/conftest.py groups them), the others one by one.
parallel=()
if python -c 'import xdist' 2>/dev/null; then
    parallel=(-n auto --dist loadgroup)
fi
# pytest exits 5 when it collects no test: that is a failure here, as any other non-zero status.
exec python -m pytest -q -p no:cacheprovider --durations=15 ${parallel[@]+"${parallel[@]}"} tests "$@"
