"""Self-observability through the OpenTelemetry metrics API (no-op without a MeterProvider).

Token refreshes and their duration and granted lifetimes (:class:`TokenMetrics`, one per token
manager, however many exporters share it), and per exporter (:class:`ExporterMetrics`, with
``signal`` and ``transport`` on every point): the lifetime left when a token is used, auth
rejections and re-sends, the sending queue, drops, partial rejections and redeliveries. Instrument
names follow the OpenTelemetry naming guidelines (dot-namespaced, UCUM units, no ``_total``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation, get_meter_provider

__all__ = ["ExporterMetrics", "TokenMetrics", "INSTRUMENTS"]

PREFIX = "otel_token_exporter."

#: name -> (kind, unit, description); the README's metrics table is this.
INSTRUMENTS = {
    "token.refreshes": ("counter", "{refresh}", "Token fetches, by trigger and outcome"),
    "token.refresh.duration": ("histogram", "s", "Time a token fetch took, by trigger and outcome"),
    "token.lifetime": ("histogram", "s", "Lifetime of each token granted"),
    "token.remaining": ("histogram", "s", "Lifetime a token had left when a request used it"),
    "auth.rejections": ("counter", "{response}", "Responses refusing a token (401/403, UNAUTHENTICATED/PERMISSION_DENIED)"),
    "auth.resends": ("counter", "{request}", "Requests re-sent with a newer token after a rejection"),
    "buffer.records": ("observable_gauge", "{record}", "Items (log records, spans, data points) queued for sending or kept"),
    "records.dropped": ("counter", "{record}", "Items given up, by reason"),
    "records.rejected": ("counter", "{record}", "Items the endpoint accepted a request for but rejected (OTLP partial_success)"),
    "batches.redelivered": ("counter", "{batch}", "Kept requests delivered later"),
}

_LIFETIME_BUCKETS = (1, 2, 5, 10, 30, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400)
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def _meter(meter_provider: MeterProvider | None):
    from . import __version__

    provider = meter_provider or get_meter_provider()
    return provider.get_meter("otel_token_exporter", __version__)


def _describe(name: str) -> dict[str, Any]:
    _, unit, description = INSTRUMENTS[name]
    return {"name": PREFIX + name, "unit": unit, "description": description}


def _histogram(meter, name: str, buckets: tuple[float, ...]):
    spec = _describe(name)
    try:  # explicit bucket advice needs opentelemetry-api >= 1.23
        return meter.create_histogram(explicit_bucket_boundaries_advisory=list(buckets), **spec)
    except TypeError:
        return meter.create_histogram(**spec)


class TokenMetrics:
    """The instruments of one token manager: counted once per fetch, whoever shares the token."""

    def __init__(self, meter_provider: MeterProvider | None = None) -> None:
        meter = _meter(meter_provider)
        self.refreshes = meter.create_counter(**_describe("token.refreshes"))
        self.refresh_duration = _histogram(meter, "token.refresh.duration", _DURATION_BUCKETS)
        self.lifetime = _histogram(meter, "token.lifetime", _LIFETIME_BUCKETS)

    def on_refresh(self, trigger: str, outcome: str, duration: float, held: Any, error: Any) -> None:
        attrs: dict[str, Any] = {"trigger": trigger, "outcome": outcome}
        if error is not None:
            attrs["error.type"] = type(error).__name__
        self.refreshes.add(1, attrs)
        self.refresh_duration.record(max(duration, 0.0), attrs)
        if held is not None:
            self.lifetime.record(max(held.lifetime, 0.0))


class ExporterMetrics:
    """The instruments of one exporter. ``attributes`` (signal, transport) go on every point."""

    def __init__(
        self,
        meter_provider: MeterProvider | None = None,
        *,
        attributes: dict[str, str] | None = None,
        buffered_records: Callable[[], int] | None = None,
    ) -> None:
        meter = _meter(meter_provider)
        self._base = dict(attributes or {})
        self._buffered = buffered_records
        self.remaining = _histogram(meter, "token.remaining", _LIFETIME_BUCKETS)
        self.rejections = meter.create_counter(**_describe("auth.rejections"))
        self.resends = meter.create_counter(**_describe("auth.resends"))
        self.dropped = meter.create_counter(**_describe("records.dropped"))
        self.rejected = meter.create_counter(**_describe("records.rejected"))
        self.redelivered = meter.create_counter(**_describe("batches.redelivered"))
        meter.create_observable_gauge(callbacks=[self._observe_buffer], **_describe("buffer.records"))

    def _attrs(self, **extra: Any) -> dict[str, Any]:
        merged = dict(self._base)
        merged.update({k: v for k, v in extra.items() if v is not None})
        return merged

    def _observe_buffer(self, options: CallbackOptions):
        if self._buffered is None:
            return []
        return [Observation(self._buffered(), self._attrs())]

    # -- events -------------------------------------------------------------------------------
    def on_token_used(self, remaining: float) -> None:
        self.remaining.record(max(remaining, 0.0), self._attrs())

    def on_rejected(self, status: int | str | None) -> None:
        self.rejections.add(1, self._attrs(status=str(status) if status is not None else None))

    def on_resend(self) -> None:
        self.resends.add(1, self._attrs())

    def on_dropped(self, count: int, reason: str) -> None:
        self.dropped.add(count, self._attrs(reason=reason))

    def on_partial(self, count: int) -> None:
        self.rejected.add(count, self._attrs())

    def on_redelivered(self) -> None:
        self.redelivered.add(1, self._attrs())
