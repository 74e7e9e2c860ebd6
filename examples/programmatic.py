"""Programmatic setup: a LoggerProvider whose BatchLogRecordProcessor exports with a fresh token.

Reads the same settings as zero-code (OTEL_EXPORTER_OTLP_LOGS_ENDPOINT, OTEL_TOKEN_EXPORTER_TOKEN_URL,
OTEL_TOKEN_EXPORTER_CLIENT_ID, OTEL_TOKEN_EXPORTER_CLIENT_SECRET, ...); any of them can be passed as
arguments instead, e.g. TokenOTLPLogExporter(endpoint=..., token_url=..., client_id=..., client_secret=...).
"""

import logging
import os
import time

from opentelemetry._logs import set_logger_provider
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

from otel_token_exporter import TokenOTLPLogExporter


def main() -> None:
    exporter = TokenOTLPLogExporter()  # everything from env; arguments would win over env
    provider = LoggerProvider()
    provider.add_log_record_processor(BatchLogRecordProcessor(exporter))
    set_logger_provider(provider)

    # Bridge stdlib logging into OpenTelemetry with a handler on the root logger: the one from
    # opentelemetry-instrumentation-logging (the SDK's own is deprecated), else the SDK's.
    try:
        from opentelemetry.instrumentation.logging.handler import LoggingHandler
    except ImportError:
        from opentelemetry.sdk._logs import LoggingHandler

    logging.getLogger().addHandler(LoggingHandler(logger_provider=provider))
    logging.getLogger().setLevel(logging.INFO)
    log = logging.getLogger("programmatic_app")

    count = int(os.environ.get("APP_RECORDS", "100"))
    seconds = float(os.environ.get("APP_SECONDS", "2"))
    for i in range(count):
        log.info("app record %d", i)
        time.sleep(seconds / count)
    provider.shutdown()  # flushes what is queued, then stops the token refresher
    health = exporter.token_manager.health()
    print(f"programmatic: {count} records logged, token generation {health.generation}")


if __name__ == "__main__":
    main()
