#!/usr/bin/env bash
# Sets up .venv and the local token endpoint, then runs the demo (examples/demo.py, ~30 s): the
# example apps run zero-code twice, with our exporter and with the stock OTLP exporter given a
# static bearer token, against local OTLP receivers that demand valid tokens; it prints what each
# delivered through 3-second token expiry and through a 5-second endpoint outage (plus the
# programmatic example, ours only). Exit 0 when ours delivered everything (stock losses expected).
# Arguments go to the demo: --protocol http|grpc (default http), --outage 503|refused (default 503).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${VENV:-.venv}"
"$VENV/bin/python" examples/demo.py "$@"
