#!/usr/bin/env bash
# Sets up everything the tests need (scripts/setup.sh) and runs the whole suite against real peers
# on loopback. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${VENV:-.venv}"
"$VENV/bin/python" -m pytest -q --durations=25 "$@"
