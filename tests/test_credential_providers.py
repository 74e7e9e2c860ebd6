"""token_http / token_grpc credential providers, used by the STOCK OTLP log exporters via env."""

from __future__ import annotations

import time

import pytest
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as StockGrpcExporter
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as StockHttpExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import LogRecordExportResult, SimpleLogRecordProcessor

from otel_token_exporter import credentials, registry
from helpers import ResultTap

OK, FAIL = LogRecordExportResult.SUCCESS, LogRecordExportResult.FAILURE




def emit(exporter, *bodies):
    tap = ResultTap(exporter)
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(tap))
    logger = provider.get_logger("credential-provider-test")
    for body in bodies:
        logger.emit(body=body, severity_number=SeverityNumber.INFO)
    provider.shutdown()
    return tap.results


@pytest.fixture
def token_env(monkeypatch, idp):
    for name in ("OTEL_EXPORTER_OTLP_LOGS_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE",
                 "OTEL_EXPORTER_OTLP_INSECURE", "OTEL_EXPORTER_OTLP_LOGS_INSECURE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OTEL_TOKEN_EXPORTER_TOKEN_URL", idp.token_url)
    monkeypatch.setenv("OTEL_TOKEN_EXPORTER_CLIENT_ID", idp.client_id)
    monkeypatch.setenv("OTEL_TOKEN_EXPORTER_CLIENT_SECRET", idp.client_secret)
    yield monkeypatch
    # Stop the shared managers this test started: no refresher thread outlives it.
    registry.close_all()


def test_stock_http_exporter_gets_token_http_session_from_env(token_env, otlp_http_receiver):
    token_env.setenv("OTEL_PYTHON_EXPORTER_OTLP_HTTP_LOGS_CREDENTIAL_PROVIDER", "token_http")
    exporter = StockHttpExporter(endpoint=otlp_http_receiver.endpoint)
    assert emit(exporter, "one") == [OK]
    assert otlp_http_receiver.received_bodies() == ["one"]


def test_stock_http_exporter_with_token_http_resends_after_a_401(token_env, otlp_http_receiver):
    token_env.setenv("OTEL_PYTHON_EXPORTER_OTLP_HTTP_LOGS_CREDENTIAL_PROVIDER", "token_http")
    exporter = StockHttpExporter(endpoint=otlp_http_receiver.endpoint)
    time.sleep(1.1)  # the IdP issues identical JWTs within one second (exp/iat are whole seconds)
    otlp_http_receiver.reject_next_valid(1, 401)
    assert emit(exporter, "after-401") == [OK]
    assert otlp_http_receiver.statuses() == [401, 200]
    first, second = otlp_http_receiver.token_ids()
    assert first != second, "the re-send carried a newly fetched token"
    assert otlp_http_receiver.received_bodies() == ["after-401"]


def test_exporters_built_from_the_same_settings_share_one_manager(token_env, idp):
    a, b = credentials.token_http(), credentials.token_http()
    assert a.manager is b.manager
    a.manager.get(10)
    assert idp.token_requests() == 1, idp.requests()


def test_stock_grpc_exporter_with_token_grpc_over_tls(token_env, make_grpc_receiver, tls_files):
    rx = make_grpc_receiver("jwt", tls=True)
    token_env.setenv("OTEL_PYTHON_EXPORTER_OTLP_GRPC_CREDENTIAL_PROVIDER", "token_grpc")
    token_env.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", tls_files.ca_cert)
    exporter = StockGrpcExporter(endpoint=rx.endpoint)
    assert emit(exporter, "grpc-one", "grpc-two") == [OK, OK]
    assert rx.received_bodies() == ["grpc-one", "grpc-two"]
    assert len(set(rx.token_ids())) == 1 and rx.token_ids()[0] is not None


def test_token_grpc_cannot_resend_a_rejected_call(token_env, make_grpc_receiver, tls_files):
    """The documented limit: call credentials see no status, so a rejected batch is lost."""
    rx = make_grpc_receiver("jwt", tls=True)
    token_env.setenv("OTEL_PYTHON_EXPORTER_OTLP_GRPC_CREDENTIAL_PROVIDER", "token_grpc")
    token_env.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", tls_files.ca_cert)
    exporter = StockGrpcExporter(endpoint=rx.endpoint)
    rx.reject_next_valid(1, "UNAUTHENTICATED")
    assert emit(exporter, "lost") == [FAIL]
    assert rx.received_bodies() == []


def test_token_grpc_local_channel_over_plaintext_loopback(token_env, otlp_grpc_receiver):
    token_env.setenv("OTEL_PYTHON_EXPORTER_OTLP_GRPC_CREDENTIAL_PROVIDER", "token_grpc")
    token_env.setenv("OTEL_TOKEN_EXPORTER_GRPC_CHANNEL", "local")
    # No scheme: the stock exporter builds a "secure" channel from our local credentials.
    exporter = StockGrpcExporter(endpoint=otlp_grpc_receiver.endpoint, insecure=False)
    assert emit(exporter, "local") == [OK]
    assert otlp_grpc_receiver.received_bodies() == ["local"]


def test_no_secret_in_logs(token_env, otlp_http_receiver, caplog, idp):
    token_env.setenv("OTEL_PYTHON_EXPORTER_OTLP_HTTP_LOGS_CREDENTIAL_PROVIDER", "token_http")
    with caplog.at_level("DEBUG"):
        exporter = StockHttpExporter(endpoint=otlp_http_receiver.endpoint)
        otlp_http_receiver.reject_next_valid(2, 401)
        emit(exporter, "x")
    assert idp.client_secret not in caplog.text
    assert "eyJ" not in caplog.text
