"""A plain app that logs with the standard library and knows nothing of OpenTelemetry.

Run it under ``opentelemetry-instrument`` with ``OTEL_LOGS_EXPORTER=token_otlp`` (see README.md):
its log records are exported over OTLP with a fresh bearer token.
"""

import logging
import os
import time

log = logging.getLogger("zero_code_app")
level = os.environ.get("APP_LOG_LEVEL", "INFO").upper()
logging.basicConfig(level=level)
logging.getLogger().setLevel(level)  # also when instrumentation already gave root a handler

count = int(os.environ.get("APP_RECORDS", "100"))
seconds = float(os.environ.get("APP_SECONDS", "2"))
for i in range(count):
    log.info("app record %d", i)
    time.sleep(seconds / count)
log.info("app done")
