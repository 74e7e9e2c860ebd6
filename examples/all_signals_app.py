"""A plain app that emits spans, a counter and stdlib log records, and knows nothing of exporters.

Run it under ``opentelemetry-instrument`` with ``token_otlp`` for all three signals, either with
environment variables::

    OTEL_TRACES_EXPORTER=token_otlp OTEL_METRICS_EXPORTER=token_otlp OTEL_LOGS_EXPORTER=token_otlp \\
    OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf OTEL_EXPORTER_OTLP_ENDPOINT=https://collector:4318 \\
    OTEL_TOKEN_EXPORTER_TOKEN_URL=... OTEL_TOKEN_EXPORTER_CLIENT_ID=... OTEL_TOKEN_EXPORTER_CLIENT_SECRET=... \\
    opentelemetry-instrument python examples/all_signals_app.py

or with a declarative configuration file (see examples/otel-config.yaml)::

    OTEL_CONFIG_FILE=examples/otel-config.yaml opentelemetry-instrument python examples/all_signals_app.py

For APP_SECONDS seconds it emits APP_RATE items per second: a span "app span N", a log record
"app record N" (INFO, inside the span) and counter ``app.items`` += 1. It then prints what it
emitted and exits normally (the SDK flushes every signal at exit).

APP_LOG_LEVEL sets the root logger's level (default INFO): the root logger defaults to WARNING,
which would keep INFO records away from the OpenTelemetry logging handler.
"""

import logging
import os
import sys
import time

from opentelemetry import metrics, trace

level = os.environ.get("APP_LOG_LEVEL", "INFO").upper()
logging.getLogger().setLevel(level)  # also when instrumentation already gave root a handler
# our own console output, on stderr (the OTel handler on root replaces Python's last resort)
console = logging.StreamHandler(sys.stderr)
console.setLevel(logging.WARNING)
logging.getLogger().addHandler(console)

log = logging.getLogger("all_signals_app")
tracer = trace.get_tracer("all_signals_app")
meter = metrics.get_meter("all_signals_app")
items = meter.create_counter("app.items", unit="1", description="items the app emitted")

seconds = float(os.environ.get("APP_SECONDS", "5"))
rate = float(os.environ.get("APP_RATE", "50"))
total = max(int(seconds * rate), 1)

counted = 0
start = time.monotonic()
for i in range(total):
    with tracer.start_as_current_span(f"app span {i}", attributes={"app.index": i}):
        log.info("app record %d", i)
        items.add(1, {"app.kind": "item"})
        counted += 1
    pause = start + (i + 1) / rate - time.monotonic()
    if pause > 0:
        time.sleep(pause)

print(f"app done: spans={total} logs={total} counter={counted} "
      f"providers={type(trace.get_tracer_provider()).__name__},"
      f"{type(metrics.get_meter_provider()).__name__}", flush=True)
