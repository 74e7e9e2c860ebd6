"""Making ``LoggerProvider.force_flush()`` / ``TracerProvider.force_flush()`` deliver what we keep.

The SDK's batch processors flush by exporting what is in *their* queue; they never call the
exporter's ``force_flush``, so a request our sending queue still holds would be left behind by an
app that flushes before a serverless freeze or ``os._exit``. Without patching the SDK: the first
time one of our exporters keeps a request, it adds a small processor to the global provider of its
signal (after the batch processor wrapping it, which was added when the exporter was built) whose
``force_flush`` waits for our queue within the time the provider has left. It does nothing else.
An exporter used with a provider that is not the global one: call ``exporter.force_flush()``.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable

__all__ = ["logs_hook", "traces_hook"]

_logger = logging.getLogger("otel_token_exporter")

Flush = Callable[[int], bool]


class _Hook:
    """A processor that only flushes an exporter (held weakly: it never keeps one alive)."""

    def __init__(self, flush: Flush) -> None:
        owner = getattr(flush, "__self__", None)
        if owner is not None:
            self._flush = weakref.WeakMethod(flush)  # type: ignore[arg-type]
        else:  # pragma: no cover - we always pass bound methods
            self._flush = lambda: flush

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        flush = self._flush()
        return True if flush is None else bool(flush(timeout_millis))

    def shutdown(self) -> None:  # the batch processor shuts the exporter down itself
        pass

    def on_emit(self, log_record) -> None:  # logs
        pass

    def emit(self, log_record) -> None:  # older logs SDKs
        pass

    def on_start(self, span, parent_context=None) -> None:  # traces
        pass

    def on_end(self, span) -> None:
        pass


def logs_hook(flush: Flush) -> None:
    from opentelemetry._logs import get_logger_provider
    from opentelemetry.sdk._logs import LogRecordProcessor

    class LogFlushHook(_Hook, LogRecordProcessor):
        pass

    provider = get_logger_provider()
    if callable(getattr(provider, "add_log_record_processor", None)):
        provider.add_log_record_processor(LogFlushHook(flush))


def traces_hook(flush: Flush) -> None:
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.trace import get_tracer_provider

    class SpanFlushHook(_Hook, SpanProcessor):
        pass

    provider = get_tracer_provider()
    if callable(getattr(provider, "add_span_processor", None)):
        provider.add_span_processor(SpanFlushHook(flush))
