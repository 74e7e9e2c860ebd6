"""Metrics: ``TokenOTLPMetricExporter`` (``OTEL_METRICS_EXPORTER=token_otlp``) and its variants.

Temporality and histogram aggregation follow the stock exporters exactly (their own mixin reads
``OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`` and ``..._DEFAULT_HISTOGRAM_AGGREGATION``;
arguments ``preferred_temporality`` / ``preferred_aggregation`` win). ``max_export_batch_size``
splits a collection into requests of at most that many data points, in order. Requests are
delivered in order even after an outage, so a cumulative series never goes backwards at the
receiver; with delta temporality a kept request is a past interval delivered late (its own start
and end times), never merged into a later one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from opentelemetry.exporter.otlp.proto.common._internal.metrics_encoder import OTLPMetricExporterMixin
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData

from ..config import ConfigurationError
from ..exporter import TokenExporterMixin
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


class TokenOTLPMetricExporter(TokenExporterMixin, MetricExporter, OTLPMetricExporterMixin):
    """OTLP metric exporter with a fresh bearer token on every request (arguments as for logs,
    plus ``preferred_temporality``, ``preferred_aggregation`` and ``max_export_batch_size``)."""

    _signal = METRICS

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
        self._common_configuration(preferred_temporality, preferred_aggregation)
        self._max_export_batch_size = max_export_batch_size
        super().__init__(endpoint, **kwargs)

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        def encoded() -> list[tuple[bytes, int]]:
            request = encode_metrics(metrics_data)
            return [(part.SerializeToString(), points) for part, points in split(request, self._max_export_batch_size)]

        ok = self._export_requests(encoded, 0)
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
