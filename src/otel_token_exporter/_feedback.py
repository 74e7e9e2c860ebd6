"""Keeping export-path diagnostics out of the log pipeline they are about.

With an OpenTelemetry logging handler on the root logger (``opentelemetry-instrument`` with the
logging instrumentation, or a ``LoggingHandler`` added in code), a warning logged while exporting
would itself be exported: when exports fail, every failure could feed the pipeline another record.
This filter, added to those OpenTelemetry handlers only, drops records that our package or the stock
OTLP exporters log *from inside an export* (the SDK marks that context with the
suppress-instrumentation key; our re-send thread does too). Other handlers (stderr, files) still
get them, and logs from outside the export path (start-up errors, refresher warnings) still flow.
"""

from __future__ import annotations

import logging

from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY, get_value

__all__ = ["install_feedback_guard"]

# Ours, the stock exporters', and the HTTP/gRPC libraries they log through while exporting.
_OWN_LOGGERS = (
    "otel_token_exporter",
    "opentelemetry.exporter.otlp",
    "opentelemetry.sdk._logs",
    "urllib3",
    "requests",
    "grpc",
)


class _ExportPathFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(_OWN_LOGGERS):
            return True
        return not get_value(_SUPPRESS_INSTRUMENTATION_KEY)


_FILTER = _ExportPathFilter()


def _is_otel_handler(handler: logging.Handler) -> bool:
    module = type(handler).__module__ or ""
    return module.startswith("opentelemetry.") and type(handler).__name__ == "LoggingHandler"


def install_feedback_guard() -> None:
    """Add the filter to every OpenTelemetry logging handler on the root logger (idempotent)."""
    for handler in logging.getLogger().handlers:
        if _is_otel_handler(handler) and _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
