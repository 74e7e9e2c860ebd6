#!/usr/bin/env bash
# Creates .venv with the package and its test dependencies, and installs the node modules of the two
# test authorization servers (tests/peers/idp: oauth2-mock-server; tests/peers/oidc: oidc-provider).
# Idempotent; safe on a fresh machine with python3 (>= 3.10), node (>= 20) and npm.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e '.[test]'
(cd tests/peers/idp && npm ci --no-audit --no-fund --loglevel=error)
(cd tests/peers/oidc && npm ci --no-audit --no-fund --loglevel=error)
