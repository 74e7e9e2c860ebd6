"""Metrics: ``TokenOTLPMetricExporter`` (``OTEL_METRICS_EXPORTER=token_otlp``) and its variants.

Temporality and histogram aggregation follow the stock exporters' tables
(``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE``: cumulative, delta, lowmemory;
``..._DEFAULT_HISTOGRAM_AGGREGATION``: explicit_bucket_histogram, base2_exponential_bucket_histogram;
read from ``env=`` like every other setting, and a bad value is refused naming the variable);
arguments ``preferred_temporality`` / ``preferred_aggregation`` win (a preference name such as
``"delta"`` works too, as in a config file). ``max_export_batch_size`` splits a collection into
requests of at most that many data points, in order, and kept requests are never merged past it. Requests are
delivered in order even after an outage, so a cumulative series never goes backwards at the
receiver; with delta temporality a kept request is a past interval delivered late (its own start
and end times), never merged into a later one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import AggregationTemporality, MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, ExponentialBucketHistogramAggregation

from ..config import ConfigurationError, Env
from ._base import TokenExporterMixin
from ..settings import GRPC, HTTP_PROTOBUF
from . import Signal, partial_success_reader

__all__ = ["METRICS", "TokenOTLPMetricExporter", "TokenOTLPHTTPMetricExporter", "TokenOTLPGRPCMetricExporter"]

METRICS = Signal(
    name="metrics",
    item="data point",
    grpc_method="/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    partial_success=partial_success_reader(ExportMetricsServiceResponse, "rejected_data_points"),
    flush_hook=None,  # PeriodicExportingMetricReader.force_flush calls the exporter's own
)


TEMPORALITY_SETTING = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"
AGGREGATION_SETTING = "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION"
_KINDS = {
    "counter": Counter,
    "up_down_counter": UpDownCounter,
    "histogram": Histogram,
    "observable_counter": ObservableCounter,
    "observable_up_down_counter": ObservableUpDownCounter,
    "observable_gauge": ObservableGauge,
}
_D, _C = AggregationTemporality.DELTA, AggregationTemporality.CUMULATIVE
#: The stock exporters' temporality preferences, per instrument kind (in _KINDS order).
_PREFERENCES = {
    "cumulative": (_C, _C, _C, _C, _C, _C),
    "delta": (_D, _C, _D, _D, _C, _C),
    "lowmemory": (_D, _C, _D, _C, _C, _C),
}


def temporality(argument: Any, env: Env) -> dict:
    """Instrument class -> temporality: the preference variable's table, then the argument's."""
    name = (env.str(TEMPORALITY_SETTING) or "cumulative").lower()
    if name not in _PREFERENCES:
        raise ConfigurationError(f"{TEMPORALITY_SETTING}={name!r} is not one of: {', '.join(_PREFERENCES)}")
    table = dict(zip(_KINDS.values(), _PREFERENCES[name]))
    if isinstance(argument, str):
        if argument.strip().lower() not in _PREFERENCES:
            raise ConfigurationError(f"preferred_temporality={argument!r} is not one of: {', '.join(_PREFERENCES)}")
        return dict(zip(_KINDS.values(), _PREFERENCES[argument.strip().lower()]))
    for kind, value in (argument or {}).items():
        cls = _KINDS.get(kind.lower()) if isinstance(kind, str) else kind
        if isinstance(value, str) and value.strip().upper() in AggregationTemporality.__members__:
            value = AggregationTemporality[value.strip().upper()]
        if cls is None or not isinstance(value, AggregationTemporality):
            raise ConfigurationError(
                f"preferred_temporality: {kind!r}: {value!r} is not an instrument kind ({', '.join(_KINDS)}) "
                "mapped to delta or cumulative"
            )
        table[cls] = value
    return table


_AGGREGATIONS = {
    "explicit_bucket_histogram": ExplicitBucketHistogramAggregation,
    "base2_exponential_bucket_histogram": ExponentialBucketHistogramAggregation,
}


def aggregation(argument: Any, env: Env) -> dict:
    """Instrument class -> aggregation: the histogram variable's choice, then the argument's (an
    aggregation name for histograms, or a mapping of instrument kinds to aggregations or names)."""
    name = (env.str(AGGREGATION_SETTING) or "explicit_bucket_histogram").lower()
    if name not in _AGGREGATIONS:
        raise ConfigurationError(f"{AGGREGATION_SETTING}={name!r} is not one of: {', '.join(_AGGREGATIONS)}")
    table: dict = {Histogram: _AGGREGATIONS[name]()}
    if isinstance(argument, str):
        argument = {Histogram: argument}
    for kind, value in (argument or {}).items():
        cls = _KINDS.get(kind.lower()) if isinstance(kind, str) else kind
        if isinstance(value, str) and value.strip().lower() in _AGGREGATIONS:
            value = _AGGREGATIONS[value.strip().lower()]()
        if cls is None or isinstance(value, str):
            raise ConfigurationError(
                f"preferred_aggregation: {kind!r}: {value!r} is not an instrument kind ({', '.join(_KINDS)}) "
                f"mapped to an aggregation ({', '.join(_AGGREGATIONS)})"
            )
        table[cls] = value
    return table


class TokenOTLPMetricExporter(TokenExporterMixin, MetricExporter):
    """OTLP metric exporter with a fresh bearer token on every request (arguments as for logs,
    plus ``preferred_temporality``, ``preferred_aggregation`` and ``max_export_batch_size``)."""

    _signal = METRICS
    _extra_arguments = frozenset({"preferred_temporality", "preferred_aggregation", "max_export_batch_size"})

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        preferred_temporality: dict | None = None,
        preferred_aggregation: dict | None = None,
        max_export_batch_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        if max_export_batch_size is not None and (
            isinstance(max_export_batch_size, bool) or not isinstance(max_export_batch_size, int) or max_export_batch_size < 1
        ):
            raise ConfigurationError(f"max_export_batch_size={max_export_batch_size!r} must be a whole number >= 1")
        env = Env(dict(kwargs["env"])) if kwargs.get("env") is not None else Env.current()
        try:
            MetricExporter.__init__(
                self,
                preferred_temporality=temporality(preferred_temporality, env),
                preferred_aggregation=aggregation(preferred_aggregation, env),
            )
        except ConfigurationError as exc:
            raise ConfigurationError(f"{type(self).__name__}: {exc}") from None
        self._max_export_batch_size = max_export_batch_size
        super().__init__(endpoint, **kwargs)

    def _max_request_items(self) -> int | None:
        return self._max_export_batch_size

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        def encoded() -> list[tuple[bytes, int]]:
            request = encode_metrics(metrics_data)
            return [(part.SerializeToString(), points) for part, points in split(request, self._max_export_batch_size)]

        ok = self._export_requests(encoded, _count_points(metrics_data))
        return MetricExportResult.SUCCESS if ok else MetricExportResult.FAILURE

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return TokenExporterMixin.force_flush(self, timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        TokenExporterMixin.shutdown(self, timeout_millis)


class TokenOTLPHTTPMetricExporter(TokenOTLPMetricExporter):
    """``token_otlp_proto_http`` for metrics: always OTLP/HTTP with protobuf."""

    _fixed_protocol = HTTP_PROTOBUF


class TokenOTLPGRPCMetricExporter(TokenOTLPMetricExporter):
    """``token_otlp_proto_grpc`` for metrics: always OTLP/gRPC."""

    _fixed_protocol = GRPC


def _count_points(metrics_data: MetricsData) -> int:
    """Data points in an SDK collection (what an encoding failure drops)."""
    try:
        return sum(len(getattr(m.data, "data_points", ())) for rm in metrics_data.resource_metrics
                   for sm in rm.scope_metrics for m in sm.metrics)
    except Exception:  # noqa: BLE001 - a collection too broken to count
        return 0


def _points(metric: Any) -> Any:
    kind = metric.WhichOneof("data")
    return getattr(metric, kind).data_points if kind else ()


def split(request: ExportMetricsServiceRequest, limit: int | None) -> Iterator[tuple[ExportMetricsServiceRequest, int]]:
    """``request`` as requests of at most ``limit`` data points each (in order), with their counts."""
    total = sum(len(_points(m)) for rm in request.resource_metrics for sm in rm.scope_metrics for m in sm.metrics)
    if limit is None or total <= limit:
        yield request, total
        return
    part, count = ExportMetricsServiceRequest(), 0
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                points = list(_points(metric))
                kind = metric.WhichOneof("data")
                while points:
                    room = limit - count
                    chunk, points = points[:room], points[room:]
                    out_rm = _last_or_new(part.resource_metrics, rm, ("resource", "schema_url"))
                    out_sm = _last_or_new(out_rm.scope_metrics, sm, ("scope", "schema_url"))
                    out_metric = out_sm.metrics.add()
                    out_metric.CopyFrom(metric)
                    getattr(out_metric, kind).ClearField("data_points")
                    getattr(out_metric, kind).data_points.extend(chunk)
                    count += len(chunk)
                    if count >= limit:
                        yield part, count
                        part, count = ExportMetricsServiceRequest(), 0
    if count:
        yield part, count


def _last_or_new(container: Any, source: Any, fields: tuple[str, ...]) -> Any:
    """The last message in ``container`` if it came from ``source`` (same fields), else a new copy."""
    if len(container):
        last = container[-1]
        if all(getattr(last, f) == getattr(source, f) for f in fields):
            return last
    new = container.add()
    for f in fields:
        value = getattr(source, f)
        if isinstance(value, str):
            setattr(new, f, value)
        else:
            getattr(new, f).CopyFrom(value)
    return new
