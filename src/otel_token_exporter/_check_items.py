"""The test items ``otel-token-exporter check`` sends: one log record, one span, one data point,
each encoded as one ``Export*ServiceRequest`` by the stock OTLP encoders."""

from __future__ import annotations

__all__ = ["encoded_item"]


def _resource():
    from opentelemetry.sdk.resources import Resource

    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "otel-token-exporter-check"}))
    return resource


def encoded_item(signal: str) -> bytes:
    """One encoded Export*ServiceRequest: a log record, a span or a counter's data point."""
    if signal == "logs":
        from opentelemetry._logs import SeverityNumber
        from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

        sink = InMemoryLogRecordExporter()
        provider = LoggerProvider(resource=_resource(), shutdown_on_exit=False)
        provider.add_log_record_processor(SimpleLogRecordProcessor(sink))
        provider.get_logger("otel_token_exporter.check").emit(
            body="otel-token-exporter check: test log record", severity_number=SeverityNumber.INFO,
            severity_text="INFO")
        provider.shutdown()
        return encode_logs(sink.get_finished_logs()).SerializeToString()
    if signal == "traces":
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        sink = InMemorySpanExporter()
        provider = TracerProvider(resource=_resource(), shutdown_on_exit=False)
        provider.add_span_processor(SimpleSpanProcessor(sink))
        with provider.get_tracer("otel_token_exporter.check").start_as_current_span("otel-token-exporter check"):
            pass
        provider.shutdown()
        return encode_spans(sink.get_finished_spans()).SerializeToString()
    from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], resource=_resource(), shutdown_on_exit=False)
    provider.get_meter("otel_token_exporter.check").create_counter("otel_token_exporter.check").add(1)
    data = reader.get_metrics_data()
    provider.shutdown()
    return encode_metrics(data).SerializeToString()
