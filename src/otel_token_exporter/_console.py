"""Our diagnostics reach a person even when the only log handler is OpenTelemetry's.

Under ``opentelemetry-instrument`` with the logging instrumentation and no logging set up by the
app, the root logger's only handler is the OpenTelemetry ``LoggingHandler``: our warnings (a
refused client secret, an endpoint that is down) would then travel only through the pipeline they
are about, the one that cannot deliver, and nobody would see them. This handler, on the
``otel_token_exporter`` logger, writes a record to stderr only when no other handler would show it
(none at all: Python's last resort would; only OpenTelemetry ones: nobody would). Once the app
configures logging, it stays silent.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["install_console_fallback"]

_FORMAT = logging.Formatter("otel_token_exporter %(levelname)s: %(message)s")


def _is_otel_handler(handler: logging.Handler) -> bool:
    module = type(handler).__module__ or ""
    return module.startswith("opentelemetry.") and type(handler).__name__ == "LoggingHandler"


class _ConsoleFallback(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        logger = logging.getLogger(record.name)
        while logger is not None:
            for handler in logger.handlers:
                if handler is not self and not _is_otel_handler(handler) and record.levelno >= handler.level:
                    return  # someone else shows it
            if not logger.propagate:
                break
            logger = logger.parent  # type: ignore[assignment]
        try:
            sys.stderr.write(_FORMAT.format(record) + "\n")
        except Exception:  # noqa: BLE001 - a closed stderr must not break exporting
            pass


_FALLBACK = _ConsoleFallback(logging.WARNING)


def install_console_fallback() -> None:
    """Add the fallback to the package logger (idempotent)."""
    logger = logging.getLogger("otel_token_exporter")
    if _FALLBACK not in logger.handlers:
        logger.addHandler(_FALLBACK)
