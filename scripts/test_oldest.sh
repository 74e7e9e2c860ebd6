#!/usr/bin/env bash
# Runs the transport tests against the OLDEST supported dependency set (the floor in pyproject.toml):
# opentelemetry-* 1.40.0 (1.39 lacks the gRPC channel hook), grpcio 1.63.2, requests 2.28.0.
# Creates the venv from scratch every time ($VENV_OLDEST, default .venv-oldest) so nothing newer can
# leak in, installs the package itself without dependencies, and the test tools.
# Needs python3 (>= 3.10), node (>= 20) and npm (for the test IdP). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV_OLDEST:-.venv-oldest}"
PY="${PYTHON:-python3}"

rm -rf "$VENV"
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q \
  "opentelemetry-api==1.40.0" \
  "opentelemetry-sdk==1.40.0" \
  "opentelemetry-proto==1.40.0" \
  "opentelemetry-exporter-otlp-proto-common==1.40.0" \
  "opentelemetry-exporter-otlp-proto-http==1.40.0" \
  "opentelemetry-exporter-otlp-proto-grpc==1.40.0" \
  "grpcio==1.63.2" \
  "requests==2.28.0" \
  pytest "pyjwt[crypto]" cryptography
"$VENV/bin/python" -m pip install -q --no-deps -e .
# Fail here, not in a test, if the resolver pulled in anything newer than the floor.
"$VENV/bin/python" - <<'PY'
from importlib.metadata import version
want = {"opentelemetry-sdk": "1.40.0", "opentelemetry-exporter-otlp-proto-grpc": "1.40.0",
        "opentelemetry-exporter-otlp-proto-http": "1.40.0", "grpcio": "1.63.2", "requests": "2.28.0"}
got = {name: version(name) for name in want}
print("oldest set:", got)
assert got == want, f"not the oldest set: {got}"
PY

if [ ! -d tests/peers/idp/node_modules/oauth2-mock-server ]; then
  (cd tests/peers/idp && npm ci --no-audit --no-fund --loglevel=error)
fi

tests=(tests/test_grpc_exporter.py)
if [ -f tests/test_http_exporter.py ]; then
  tests+=(tests/test_http_exporter.py)
fi
"$VENV/bin/python" -m pytest -q "${tests[@]}" "$@"
