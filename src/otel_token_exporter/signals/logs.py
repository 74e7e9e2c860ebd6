"""Logs: ``TokenOTLPLogExporter`` (``OTEL_LOGS_EXPORTER=token_otlp``) and its fixed-protocol variants."""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult

from .._flush_hook import logs_hook
from ._base import TokenExporterMixin
from ..settings import GRPC, HTTP_PROTOBUF
from . import Signal, partial_success_reader

__all__ = ["LOGS", "TokenOTLPLogExporter", "TokenOTLPHTTPLogExporter", "TokenOTLPGRPCLogExporter"]

LOGS = Signal(
    name="logs",
    item="log record",
    grpc_method="/opentelemetry.proto.collector.logs.v1.LogsService/Export",
    partial_success=partial_success_reader(ExportLogsServiceResponse, "rejected_log_records"),
    flush_hook=logs_hook,
)


class TokenOTLPLogExporter(TokenExporterMixin, LogRecordExporter):
    """OTLP log exporter that authenticates every request with a fresh bearer token.

    Arguments mirror the stock ``OTLPLogExporter`` s (``endpoint``, ``headers``, ``timeout`` in
    seconds, ``compression``, ``certificate_file``, ``client_key_file``, ``client_certificate_file``;
    ``insecure``, ``credentials``, ``channel_options`` for gRPC), plus ``protocol``, the token source
    (``token_source=`` or its settings: ``token_url``, ``client_id``, ...) and this package's own
    settings; arguments beat the signal's variables, which beat the generic ones. ``export()``
    returns SUCCESS when the batch was delivered before it returned; a batch that could not be is
    kept and delivered later (the SDK ignores the result).
    """

    _signal = LOGS

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        if not batch:
            return LogRecordExportResult.SUCCESS
        encoded = lambda: [(encode_logs(batch).SerializeToString(), len(batch))]  # noqa: E731
        ok = self._export_requests(encoded, len(batch))
        return LogRecordExportResult.SUCCESS if ok else LogRecordExportResult.FAILURE


class TokenOTLPHTTPLogExporter(TokenOTLPLogExporter):
    """``token_otlp_proto_http``: always OTLP/HTTP with protobuf."""

    _fixed_protocol = HTTP_PROTOBUF


class TokenOTLPGRPCLogExporter(TokenOTLPLogExporter):
    """``token_otlp_proto_grpc``: always OTLP/gRPC."""

    _fixed_protocol = GRPC
