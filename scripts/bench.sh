#!/usr/bin/env bash
# Runs the benchmarks: sets up .venv (scripts/setup.sh), adds the [bench] extra, runs
# benchmarks/run.py with the given arguments (e.g. --quick), which rewrites BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
VENV="$VENV" bash scripts/setup.sh
"$VENV/bin/python" -m pip install -q -e '.[bench]'
exec "$VENV/bin/python" benchmarks/run.py "$@"
