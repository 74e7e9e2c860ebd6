"""OTLP/gRPC: everything HTTP users get, against the real gRPC receiver and the real IdP.

The receiver (tests/peers/otlp_grpc.py) verifies the IdP's JWTs on every call; tokens are compared
by fingerprint (``token_id``), never printed.
"""

from __future__ import annotations

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

from otel_token_exporter.config import ConfigurationError
from otel_token_exporter import TokenOTLPGRPCLogExporter, TokenOTLPLogExporter
from otel_token_exporter.verdicts import Verdict, decide

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
    """Two calls on one channel (a real server): A's refusal of generation 1 arrives after B's
    refusal already forced generation 2; A re-sends with generation 2, no second refresh."""
    rx = make_grpc_receiver("jwt")
    exp = make_exporter(rx.url, timeout=10)
    gen1 = current_token_id(exp)
    transport = exp._core.transport
    rx.delay_next(2.0, status=401)  # A (generation 1): held 2 s, then UNAUTHENTICATED
    rx.reject_next_valid(1, 401)  # B (generation 1): UNAUTHENTICATED at once
    attempts = {}

    def call(body):
        attempts[body] = transport.send(_export_request(body).SerializeToString(), 10)

    a = threading.Thread(target=call, args=("late-a",))
    a.start()
    time.sleep(0.5)  # A's call is at the receiver (held), B comes second
    call("b")
    a.join(15)
    assert {body: (att.status, att.resent) for body, att in attempts.items()} == {
        "late-a": ("OK", 1), "b": ("OK", 1)}
    assert sorted(rx.received_bodies()) == ["b", "late-a"]
    assert idp.token_requests() == 2  # B's forced refresh only; A's late rejection added none
    assert exp.token_manager.health().generation == 2
    # (the mock IdP may re-issue an identical JWT within the same second: compare generations)
    refused = [r for r in rx.requests if not r.accepted]
    assert [r.token_id for r in refused] == [gen1, gen1]  # both refusals were generation 1
    assert [r.token_id for r in rx.requests if r.accepted] == [current_token_id(exp)] * 2


def test_unavailable_opens_a_new_channel_and_the_kept_batch_goes_out_on_it(idp, make_grpc_receiver,
                                                                         make_exporter):
    rx = make_grpc_receiver("jwt")
    exp = make_exporter(rx.url, timeout=10)
    channel = exp._core.transport._channel
    rx.fail_next(1, "UNAVAILABLE")
    assert exp.export(batch("after-reconnect")) is FAILURE  # one attempt; kept, not retried inline
    assert exp._core.transport._channel is not channel  # the stock exporter's rule: a new channel
    assert exp.force_flush(10_000)
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


def _security_level_error(rx):
    """gRPC's own client-side UNAUTHENTICATED: call credentials on a plaintext channel (real)."""
    channel = grpc.insecure_channel(rx.endpoint)
    try:
        logs_service_pb2_grpc.LogsServiceStub(channel).Export(
            _export_request("never-sent"), timeout=5,
            credentials=grpc.access_token_call_credentials("call-cred"))
    except grpc.RpcError as exc:
        return exc
    finally:
        channel.close()
    raise AssertionError("gRPC sent call credentials over a plaintext channel")


def test_security_level_error_is_a_configuration_error_said_once_never_refreshed(
        idp, make_grpc_receiver, make_exporter, caplog):
    rx = make_grpc_receiver("jwt")
    error = _security_level_error(rx)
    assert error.code() == UNAUTHENTICATED and "security level" in error.details()
    exp = make_exporter(rx.url)
    exp.token_manager.get(5)
    transport = exp._core.transport

    def refused(*args, **kwargs):
        raise error

    transport._call = refused  # the channel answers as gRPC does with such credentials
    caplog.set_level(logging.DEBUG, logger="otel_token_exporter")
    attempts = [transport.send(b"", 5) for _ in range(2)]
    assert all(a.config_error and a.status == "UNAUTHENTICATED" for a in attempts)
    assert [decide(a) for a in attempts] == [Verdict.DROP, Verdict.DROP]  # not kept, not re-sent
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
@pytest.mark.parametrize("value,expected", [("gzip", "gzip"), ("none", "none"), ("deflate", "deflate")])
def test_compression_from_env(monkeypatch, make_grpc_receiver, make_exporter, name, value,
                              expected):
    rx = make_grpc_receiver("jwt")
    monkeypatch.setenv(name, value)
    exp = make_exporter(rx.url)  # the stock constructor alone raises on "none"
    assert exp.settings.compression == expected
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
    assert exp.export(batch("via-exporter")) is SUCCESS
    assert [r.accepted for r in rx.requests] == [True]  # one authorization: the manager's token
    assert rx.requests[0].token_id == current_token_id(exp)
    assert rx.requests[0].headers["x-tenant"] == "acme"


def test_no_token_fails_the_export_without_sending(idp, make_grpc_receiver, make_exporter):
    idp.control(faults=[{"status": 400, "body": {"error": "invalid_client"}, "count": 100}])
    rx = make_grpc_receiver("jwt")
    exp = make_exporter(rx.url, timeout=2)
    assert exp.export(batch("nothing")) is FAILURE
    assert rx.requests == []
    assert exp.sending_queue.stats().queued_records == 1  # kept until a token can be had


# --------------------------------------------------------------------------------------------
# No private hook: the stock exporter's internals are not used
# --------------------------------------------------------------------------------------------


def test_no_private_hook_of_the_stock_grpc_exporter_is_needed(monkeypatch, make_grpc_receiver,
                                                              make_exporter):
    rx = make_grpc_receiver("jwt")
    monkeypatch.delattr(stock_grpc.OTLPExporterMixin, "_initialize_channel_and_stub")
    exp = make_exporter(rx.url)
    assert exp.export(batch("no-hook")) is SUCCESS
    assert rx.received_bodies() == ["no-hook"]


def test_the_config_error_row_comes_before_the_auth_rows():
    """An UNAUTHENTICATED that is gRPC's own security-level error is dropped, never kept."""
    from otel_token_exporter.transports import Attempt

    attempt = Attempt("grpc", status="UNAUTHENTICATED", rejected=True, config_error=True)
    assert decide(attempt) is Verdict.DROP
    assert decide(Attempt("grpc", status="UNAUTHENTICATED", rejected=True)) is Verdict.KEEP


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
