"""Making ``LoggerProvider.force_flush()`` / ``TracerProvider.force_flush()`` deliver what we keep.

The SDK's batch processors flush by exporting what is in *their* queue; they never call the
exporter's ``force_flush``, so a request our sending queue still holds would be left behind by an
app that flushes before a serverless freeze or ``os._exit``. Without patching the SDK, each
exporter adds two small processors to the global provider of its signal, which only flush:

* one when the exporter is built (before the batch processor wrapping it: providers flush their
  processors in the order they were added), which only marks the calling thread as flushing
  until the provider's deadline, so that the batch processor's own flush, which follows on the
  same thread and exports into us, waits for delivery instead of one short wait (the mark lapses
  as soon as those exports stop);
* one the first time the exporter keeps a request (after the batch processor), which drains our
  queue at the end of the flush (what was kept before it) and clears the mark.

Both do nothing else and hold the exporter weakly. With a provider that is not the global one (or
set as global only after the exporter was built): call ``exporter.force_flush()`` after the
provider's.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

__all__ = ["logs_hook", "traces_hook"]

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


def logs_hook(flush: Flush) -> bool:
    """Add a flush-only processor to the global logger provider; False when there is none (yet)."""
    from opentelemetry._logs import get_logger_provider
    from opentelemetry.sdk._logs import LogRecordProcessor

    class LogFlushHook(_Hook, LogRecordProcessor):
        pass

    provider = get_logger_provider()
    if not callable(getattr(provider, "add_log_record_processor", None)):
        return False
    provider.add_log_record_processor(LogFlushHook(flush))
    return True


def traces_hook(flush: Flush) -> bool:
    """Add a flush-only processor to the global tracer provider; False when there is none (yet)."""
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.trace import get_tracer_provider

    class SpanFlushHook(_Hook, SpanProcessor):
        pass

    provider = get_tracer_provider()
    if not callable(getattr(provider, "add_span_processor", None)):
        return False
    provider.add_span_processor(SpanFlushHook(flush))
    return True
