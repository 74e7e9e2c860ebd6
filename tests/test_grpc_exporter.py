"""OTLP/gRPC: everything HTTP users get, against the real gRPC receiver and the real IdP.

The receiver (tests/peers/otlp_grpc.py) verifies the IdP's JWTs on every call; tokens are compared
by fingerprint (``token_id``), never printed.
"""

from __future__ import annotations

import functools
import logging
import threading
import time

import grpc
import pytest
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.exporter.otlp.proto.grpc import exporter as stock_grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExportResult
from opentelemetry.sdk.resources import Resource
from peers.common import token_id

from otel_token_exporter import grpc as token_grpc
from otel_token_exporter.config import ConfigurationError
from otel_token_exporter import TokenOTLPGRPCLogExporter, TokenOTLPLogExporter

pytestmark = pytest.mark.usefixtures("no_otel_env")

SUCCESS = LogRecordExportResult.SUCCESS
FAILURE = LogRecordExportResult.FAILURE
OK = grpc.StatusCode.OK
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE



@pytest.fixture
def exporters():
    made = []
    yield made
    for exp in made:
        exp.shutdown(timeout_millis=2000)  # do not spend 8 s draining batches kept after failures


@pytest.fixture
def make_exporter(idp, exporters):
    def make(endpoint, cls=TokenOTLPLogExporter, **kw):
        if cls is TokenOTLPLogExporter:
            kw.setdefault("protocol", "grpc")
        kw.setdefault("token_url", idp.token_url)
        kw.setdefault("client_id", idp.client_id)
        kw.setdefault("client_secret", idp.client_secret)
        exp = cls(endpoint=endpoint, **kw)
        exporters.append(exp)
        return exp

    return make


def batch(*bodies):
    resource = Resource.create({"service.name": "grpc-test"})
    return [ReadableLogRecord(log_record=LogRecord(body=b, severity_number=SeverityNumber.INFO),
                              resource=resource) for b in bodies]


def current_token_id(exp):
    return token_id(exp.token_manager.get(5).value)


def assert_no_secret(text, idp, *exporters_):
    assert idp.client_secret not in text
    for exp in exporters_:
        held = exp.token_manager._held
        if held is not None:
            assert held.value not in text


# --------------------------------------------------------------------------------------------
# Channels: plaintext, insecure by env, TLS, mTLS
# --------------------------------------------------------------------------------------------


def test_plaintext_http_endpoint_delivers_records_with_a_valid_token(idp, make_grpc_receiver,
                                                                     make_exporter):
    rx = make_grpc_receiver("jwt")
    exp = make_exporter(rx.url)
    assert exp.export(batch("a", "b")) is SUCCESS
    assert rx.received_bodies() == ["a", "b"]
    assert rx.statuses() == [OK]
    assert rx.token_ids() == [current_token_id(exp)]


def test_fixed_protocol_class_exports_over_grpc(make_grpc_receiver, make_exporter):
    rx = make_grpc_receiver("jwt")
    exp = make_exporter(rx.url, cls=TokenOTLPGRPCLogExporter)
    assert exp.export(batch("fixed")) is SUCCESS
    assert rx.received_bodies() == ["fixed"]


def test_insecure_env_with_bare_host_port_uses_plaintext(monkeypatch, make_grpc_receiver,
                                                         make_exporter):
    rx = make_grpc_receiver("jwt")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_INSECURE", "true")
    exp = make_exporter(rx.endpoint)  # "127.0.0.1:PORT", no scheme
    assert exp.export(batch("bare")) is SUCCESS
    assert rx.received_bodies() == ["bare"]
    assert rx.statuses() == [OK]


def test_tls_with_certificate_file_argument(make_grpc_receiver, make_exporter, tls_files):
    rx = make_grpc_receiver("jwt", tls=True)
    exp = make_exporter(rx.url, certificate_file=tls_files.ca_cert, timeout=5)
    assert exp.export(batch("tls-arg")) is SUCCESS
    assert rx.received_bodies() == ["tls-arg"]


def test_tls_with_certificate_from_logs_env(monkeypatch, make_grpc_receiver, make_exporter,
                                            tls_files):
    rx = make_grpc_receiver("jwt", tls=True)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_CERTIFICATE", tls_files.ca_cert)
    exp = make_exporter(rx.url, timeout=5)
    assert exp.export(batch("tls-env")) is SUCCESS
    assert rx.received_bodies() == ["tls-env"]


def test_mtls_sends_the_client_certificate(make_grpc_receiver, make_exporter, tls_files):
    rx = make_grpc_receiver("jwt", tls=True, client_auth=True)
    exp = make_exporter(rx.url, certificate_file=tls_files.ca_cert, timeout=5,
                        client_certificate_file=tls_files.client_cert,
                        client_key_file=tls_files.client_key)
    assert exp.export(batch("mtls")) is SUCCESS
    assert rx.received_bodies() == ["mtls"]


def test_unreadable_certificate_file_is_a_configuration_error(make_grpc_receiver, make_exporter,
                                                              tmp_path):
    rx = make_grpc_receiver("jwt", tls=True)
    missing = str(tmp_path / "no-such-ca.pem")
    with pytest.raises(ConfigurationError, match="CA certificate file"):
        make_exporter(rx.url, certificate_file=missing)


# --------------------------------------------------------------------------------------------
# Token lifetimes and rejections
# --------------------------------------------------------------------------------------------


def test_records_arrive_across_several_short_token_lifetimes(idp, make_grpc_receiver,
                                                             make_exporter):
    idp.control(lifetime=3)
    rx = make_grpc_receiver("jwt")
    exp = make_exporter(rx.url)
    provider = LoggerProvider()
    provider.add_log_record_processor(BatchLogRecordProcessor(exp, schedule_delay_millis=200))
    logger = provider.get_logger("lifetimes")
    n, seconds = 400, 8.0
    start = time.monotonic()
    for i in range(n):
        logger.emit(LogRecord(body=f"rec {i}", severity_number=SeverityNumber.INFO))
        time.sleep(seconds / n)
    provider.shutdown()  # flushes, then shuts the exporter down
    elapsed = time.monotonic() - start
    got = rx.received_bodies()
    assert sorted(int(b.split()[1]) for b in got) == list(range(n))  # every number, once
    assert all(s == OK for s in rx.statuses())
    tokens = {t for t in rx.token_ids()}
    assert len(tokens) >= 3  # several lifetimes were crossed
    # refresh no earlier than half a lifetime: at most one fetch per 1.5 s, plus slack
    assert idp.token_requests() <= elapsed / 1.5 + 3


@pytest.mark.parametrize("status,code", [(401, UNAUTHENTICATED), (403, PERMISSION_DENIED)])
def test_rejected_valid_token_forces_one_refresh_and_resends_once(idp, make_grpc_receiver,
                                                                  make_exporter, status, code):
    rx = make_grpc_receiver("jwt")
    exp = make_exporter(rx.url)
    first = current_token_id(exp)
    assert idp.token_requests() == 1
    rx.reject_next_valid(1, status)
    assert exp.export(batch("x1", "x2")) is SUCCESS
    assert rx.statuses() == [code, OK]
    assert rx.received_bodies() == ["x1", "x2"]  # delivered once
    assert idp.token_requests() == 2  # exactly one forced refresh
    assert exp.token_manager.health().generation == 2
    assert rx.token_ids()[0] == first


def test_persistent_unauthenticated_fails_with_bounded_attempts(idp, make_grpc_receiver,
                                                                make_exporter, caplog):
    rx = make_grpc_receiver("static", static_token="a-token-the-idp-never-issues")
    exp = make_exporter(rx.url, timeout=5)
    exp.token_manager.get(5)
    start = time.monotonic()
    results = [exp.export(batch(f"p{i}")) for i in range(3)]
    assert results == [FAILURE] * 3
    time.sleep(3.0)  # let any re-sending of kept batches (and a storm, if any) show
    elapsed = time.monotonic() - start
    idp_requests, attempts = idp.token_requests(), len(rx.requests)
    assert rx.received_bodies() == []
    assert all(s == UNAUTHENTICATED for s in rx.statuses())
    # forced refreshes at most once a second (RefreshPolicy.min_forced_interval), plus the first
    assert idp_requests <= 2 + elapsed
    # every send is the original call plus at most one re-send with a newer token
    assert attempts <= 2 * (3 + idp_requests)
    assert_no_secret(caplog.text, idp, exp)


def test_late_unauthenticated_for_an_old_generation_never_refreshes_again(idp, make_grpc_receiver,
                                                                          make_exporter):
    """Two calls on one intercepted channel (a real server): A's refusal of generation 1 arrives
    after B's refusal already forced generation 2; A re-sends with generation 2, no second refresh."""
    rx = make_grpc_receiver("jwt")
    exp = make_exporter(rx.url, timeout=10)
    gen1 = current_token_id(exp)
    interceptor = token_grpc.TokenAuthInterceptor(exp.authenticator)
    channel = grpc.intercept_channel(grpc.insecure_channel(rx.endpoint), interceptor)
    stub = logs_service_pb2_grpc.LogsServiceStub(channel)
    rx.delay_next(2.0, status=401)  # A (generation 1): held 2 s, then UNAUTHENTICATED
    rx.reject_next_valid(1, 401)  # B (generation 1): UNAUTHENTICATED at once
    errors = []

    def call(body):
        try:
            stub.Export(_export_request(body), timeout=10)
        except grpc.RpcError as exc:  # pragma: no cover - reported by the assert below
            errors.append((body, exc.code()))

    a = threading.Thread(target=call, args=("late-a",))
    try:
        a.start()
        time.sleep(0.5)  # A's call is at the receiver (held), B comes second
        call("b")
        a.join(15)
    finally:
        channel.close()
    assert errors == []
    assert sorted(rx.received_bodies()) == ["b", "late-a"]
    assert idp.token_requests() == 2  # B's forced refresh only; A's late rejection added none
    assert exp.token_manager.health().generation == 2
    # (the mock IdP may re-issue an identical JWT within the same second: compare generations)
    refused = [r for r in rx.requests if not r.accepted]
    assert [r.token_id for r in refused] == [gen1, gen1]  # both refusals were generation 1
    assert [r.token_id for r in rx.requests if r.accepted] == [current_token_id(exp)] * 2


def test_unavailable_reconnect_keeps_the_token_on_the_new_channel(idp, make_grpc_receiver,
                                                                  make_exporter):
    rx = make_grpc_receiver("jwt")
    exp = make_exporter(rx.url, timeout=10)
    assert exp._inner._token_hook_calls == 1
    rx.fail_next(1, "UNAVAILABLE")
    assert exp.export(batch("after-reconnect")) is SUCCESS
    assert exp._inner._token_hook_calls == 2  # the stock reconnect re-ran our hook
    assert rx.statuses() == [UNAVAILABLE, OK]
    assert rx.requests[1].accepted and rx.requests[1].token_id == current_token_id(exp)
    assert rx.received_bodies() == ["after-reconnect"]
    assert idp.token_requests() == 1


# --------------------------------------------------------------------------------------------
# Client-side security-level error: a configuration problem, not a token problem
# --------------------------------------------------------------------------------------------


def _export_request(*bodies):
    from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs

    return encode_logs(batch(*bodies))


def test_security_level_error_is_reported_once_and_never_refreshes(idp, make_grpc_receiver,
                                                                   make_exporter, caplog):
    """Call credentials on a plaintext channel: gRPC itself refuses the call (client-side)."""
    rx = make_grpc_receiver("jwt")
    exp = make_exporter(rx.url)
    exp.token_manager.get(5)
    interceptor = token_grpc.TokenAuthInterceptor(exp.authenticator)
    channel = grpc.intercept_channel(grpc.insecure_channel(rx.endpoint), interceptor)
    stub = logs_service_pb2_grpc.LogsServiceStub(channel)
    caplog.set_level(logging.DEBUG, logger="otel_token_exporter")
    codes, details = [], []
    try:
        for _ in range(2):
            with pytest.raises(grpc.RpcError) as info:
                stub.Export(_export_request("never-sent"), timeout=5,
                            credentials=grpc.access_token_call_credentials("call-cred"))
            codes.append(info.value.code())
            details.append(info.value.details())
            assert exp.authenticator.last_outcome.config_error
    finally:
        channel.close()
    assert codes == [UNAUTHENTICATED, UNAUTHENTICATED]
    assert all("security level" in d for d in details)  # it is gRPC's own error
    assert rx.requests == []  # nothing reached the receiver
    time.sleep(0.3)
    assert idp.token_requests() == 1  # no refresh
    assert exp.token_manager.health().generation == 1
    ours = [r for r in caplog.records
            if r.name == "otel_token_exporter" and r.levelno >= logging.ERROR]
    assert len(ours) == 1 and "configuration" in ours[0].getMessage()
    assert_no_secret(caplog.text, idp, exp)


# --------------------------------------------------------------------------------------------
# Settings from env: compression, timeout, headers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["OTEL_EXPORTER_OTLP_COMPRESSION", "OTEL_EXPORTER_OTLP_LOGS_COMPRESSION"])
@pytest.mark.parametrize("value,expected", [("gzip", grpc.Compression.Gzip),
                                            ("none", grpc.Compression.NoCompression)])
def test_compression_from_env(monkeypatch, make_grpc_receiver, make_exporter, name, value,
                              expected):
    rx = make_grpc_receiver("jwt")
    monkeypatch.setenv(name, value)
    exp = make_exporter(rx.url)  # the stock constructor alone raises on "none"
    assert exp._inner._compression == expected
    assert exp.export(batch(f"{value}-body")) is SUCCESS
    assert rx.received_bodies() == [f"{value}-body"]


def test_unknown_compression_names_the_setting(monkeypatch, make_grpc_receiver, make_exporter):
    rx = make_grpc_receiver("jwt")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_COMPRESSION", "brotli")
    with pytest.raises(ConfigurationError, match="OTEL_EXPORTER_OTLP_LOGS_COMPRESSION"):
        make_exporter(rx.url)


def test_timeout_from_env_bounds_the_call(monkeypatch, make_grpc_receiver, make_exporter):
    rx = make_grpc_receiver("jwt")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_TIMEOUT", "1")
    exp = make_exporter(rx.url)
    exp.token_manager.get(5)
    rx.delay_next(4.0)  # longer than the 1 s timeout, far shorter than the 10 s default
    assert exp.export(batch("slow")) is FAILURE


def test_headers_from_env_are_sent(monkeypatch, make_grpc_receiver, make_exporter):
    rx = make_grpc_receiver("jwt")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_HEADERS", "x-tenant=acme,x-team=logs")
    exp = make_exporter(rx.url)
    assert exp.export(batch("h")) is SUCCESS
    sent = rx.requests[0].headers
    assert sent["x-tenant"] == "acme" and sent["x-team"] == "logs"


def test_stale_authorization_in_env_headers_is_replaced(monkeypatch, make_grpc_receiver,
                                                        make_exporter):
    rx = make_grpc_receiver("jwt")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "Authorization=Bearer stale,x-tenant=acme")
    exp = make_exporter(rx.url)
    exp.token_manager.get(5)
    # What the stock exporter would send as metadata, seen below our interceptor on a real call.
    seen = []

    class Capture(grpc.UnaryUnaryClientInterceptor):
        def intercept_unary_unary(self, continuation, details, request):
            seen.append(list(details.metadata or ()))
            return continuation(details, request)

    interceptor = token_grpc.TokenAuthInterceptor(exp.authenticator)
    channel = grpc.intercept_channel(grpc.insecure_channel(rx.endpoint), interceptor, Capture())
    try:
        logs_service_pb2_grpc.LogsServiceStub(channel).Export(
            _export_request("direct"), metadata=exp._inner._headers, timeout=5)
    finally:
        channel.close()
    auth = [v for k, v in seen[0] if k.lower() == "authorization"]
    assert len(auth) == 1 and token_id(auth[0].split(" ", 1)[1]) == current_token_id(exp)
    assert ("x-tenant", "acme") in seen[0]
    # and through the exporter itself: accepted with the manager's token
    assert exp.export(batch("via-exporter")) is SUCCESS
    assert [r.accepted for r in rx.requests] == [True, True]
    assert rx.requests[1].token_id == current_token_id(exp)


def test_no_token_fails_the_export_without_sending(idp, make_grpc_receiver, make_exporter):
    idp.control(faults=[{"status": 400, "body": {"error": "invalid_client"}, "count": 100}])
    rx = make_grpc_receiver("jwt")
    exp = make_exporter(rx.url, timeout=2)
    assert exp.export(batch("nothing")) is FAILURE
    assert rx.requests == []
    assert exp.authenticator.last_outcome.no_token


# --------------------------------------------------------------------------------------------
# The private hook: never export without auth
# --------------------------------------------------------------------------------------------


def test_missing_hook_method_is_a_configuration_error(monkeypatch, make_grpc_receiver,
                                                      make_exporter):
    rx = make_grpc_receiver("jwt")
    monkeypatch.delattr(stock_grpc.OTLPExporterMixin, "_initialize_channel_and_stub")
    with pytest.raises(ConfigurationError) as info:
        make_exporter(rx.url)
    message = str(info.value)
    assert "opentelemetry-exporter-otlp-proto-grpc" in message and "1.40" in message
    assert "http/protobuf" in message
    assert rx.requests == []


def test_hook_never_called_is_a_configuration_error(monkeypatch, make_grpc_receiver,
                                                    make_exporter):
    """A stock version that still has the method but builds its channel without calling it."""
    rx = make_grpc_receiver("jwt")
    original_init = stock_grpc.OTLPExporterMixin.__init__
    stock_hook = stock_grpc.OTLPExporterMixin._initialize_channel_and_stub

    def init_bypassing_hook(self, *args, **kwargs):
        self._initialize_channel_and_stub = functools.partial(stock_hook, self)
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(stock_grpc.OTLPExporterMixin, "__init__", init_bypassing_hook)
    with pytest.raises(ConfigurationError, match="lacks the channel hook"):
        make_exporter(rx.url)
    assert rx.requests == []


def test_header_argument_keys_are_lower_cased_for_grpc(make_grpc_receiver, make_exporter):
    rx = make_grpc_receiver("jwt")
    exp = make_exporter(rx.url, headers={"X-Tenant": "acme"})  # "X-Tenant" as metadata: INTERNAL
    assert exp.export(batch("mixed-case")) is SUCCESS
    assert rx.requests[0].headers["x-tenant"] == "acme"


def test_batch_refused_after_the_resend_is_kept_and_delivered_later(idp, make_grpc_receiver,
                                                                    make_exporter):
    rx = make_grpc_receiver("jwt")
    exp = make_exporter(rx.url, timeout=5)
    exp.token_manager.get(5)
    rx.reject_next_valid(2, 401)  # the call and its re-send with a fresh token are both refused
    assert exp.export(batch("kept")) is FAILURE
    assert rx.received_bodies() == []
    assert exp.force_flush(15_000)  # the kept batch goes out again, with a token that works
    assert rx.received_bodies() == ["kept"]
    assert rx.statuses()[:2] == [UNAUTHENTICATED, UNAUTHENTICATED]
    assert rx.statuses()[-1] == OK
