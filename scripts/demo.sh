#!/usr/bin/env bash
# Sets up .venv and the local token endpoint, then runs the demo (examples/demo.py): the zero-code and
# programmatic examples export logs to a local OTLP receiver that demands 3-second bearer tokens.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${VENV:-.venv}"
"$VENV/bin/python" examples/demo.py
