"""Traces: ``TokenOTLPSpanExporter`` (``OTEL_TRACES_EXPORTER=token_otlp``) and its fixed-protocol variants."""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from .._flush_hook import traces_hook
from ._base import TokenExporterMixin
from ..settings import GRPC, HTTP_PROTOBUF
from . import Signal, partial_success_reader

__all__ = ["TRACES", "TokenOTLPSpanExporter", "TokenOTLPHTTPSpanExporter", "TokenOTLPGRPCSpanExporter"]

TRACES = Signal(
    name="traces",
    item="span",
    grpc_method="/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    partial_success=partial_success_reader(ExportTraceServiceResponse, "rejected_spans"),
    flush_hook=traces_hook,
)


class TokenOTLPSpanExporter(TokenExporterMixin, SpanExporter):
    """OTLP span exporter with a fresh bearer token on every request (arguments as for logs:
    see :class:`~otel_token_exporter.TokenOTLPLogExporter`)."""

    _signal = TRACES

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not spans:
            return SpanExportResult.SUCCESS
        encoded = lambda: [(encode_spans(spans).SerializeToString(), len(spans))]  # noqa: E731
        ok = self._export_requests(encoded, len(spans))
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE


class TokenOTLPHTTPSpanExporter(TokenOTLPSpanExporter):
    """``token_otlp_proto_http`` for traces: always OTLP/HTTP with protobuf."""

    _fixed_protocol = HTTP_PROTOBUF


class TokenOTLPGRPCSpanExporter(TokenOTLPSpanExporter):
    """``token_otlp_proto_grpc`` for traces: always OTLP/gRPC."""

    _fixed_protocol = GRPC
