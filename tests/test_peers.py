"""The test peers work, and can fail on purpose. Tokens are never printed: compare fingerprints."""

from __future__ import annotations

import gzip
import json as json_module
import socket
import threading
import time
import zlib
from urllib.parse import quote_plus

import grpc
import jwt
import pytest
import requests
from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration
from google.rpc.error_details_pb2 import RetryInfo
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
    OTLPMetricExporter as GrpcMetricExporter,
)
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HttpMetricExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import (
    LogRecordExporter,
    LogRecordExportResult,
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from peers.common import attributes_dict, token_id


def fetch_token(idp, secret=None, **form):
    """Client-credentials grant with RFC 6749 2.3.1 Basic auth (form-urlencoded id/secret)."""
    secret = idp.client_secret if secret is None else secret
    data = {"grant_type": "client_credentials", **form}
    return requests.post(idp.token_url, data=data, timeout=5,
                         auth=(quote_plus(idp.client_id), quote_plus(secret)))


def good_token(idp):
    r = fetch_token(idp)
    assert r.status_code == 200
    return r.json()["access_token"]


class ResultTap(LogRecordExporter):
    """Wraps a stock exporter so the test sees each export() result."""

    def __init__(self, inner):
        self.inner = inner
        self.results = []

    def export(self, batch):
        result = self.inner.export(batch)
        self.results.append(result)
        return result

    def shutdown(self):
        self.inner.shutdown()

    def force_flush(self, timeout_millis=30000):
        return True


def emit(exporter, *bodies):
    """Emit records through a LoggerProvider + SimpleLogRecordProcessor; return export results.
    Shuts the provider (and so the exporter) down: use a new exporter per call."""
    tap = ResultTap(exporter)
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(tap))
    logger = provider.get_logger("test-peers")
    for body in bodies:
        logger.emit(body=body, severity_number=SeverityNumber.INFO, severity_text="INFO")
    provider.shutdown()
    return tap.results


def jwks_client(idp):
    return jwt.PyJWKClient(idp.jwks_url, cache_keys=False)


# --------------------------------------------------------------------------------------------
# IdP
# --------------------------------------------------------------------------------------------


def test_idp_issues_jwt_with_configured_lifetime(idp):
    idp.control(lifetime=120)
    r = fetch_token(idp, scope="logs.write", audience="otlp")
    assert r.status_code == 200, r.text[:200]
    body = r.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 120
    token = body["access_token"]
    key = jwks_client(idp).get_signing_key_from_jwt(token)
    claims = jwt.decode(token, key.key, algorithms=["RS256"], options={"verify_aud": False})
    assert claims["exp"] - claims["iat"] == 120
    assert claims["iss"] == idp.issuer
    assert claims["aud"] == "otlp"
    assert claims["scope"] == "logs.write"

    (rec,) = idp.requests()
    assert rec["grant_type"] == "client_credentials"
    assert rec["auth_method"] == "basic"
    assert rec["client_auth_ok"] is True
    assert rec["scope"] == "logs.write" and rec["audience"] == "otlp"
    assert rec["outcome"] == "forwarded" and rec["status"] == 200


def test_idp_client_auth(idp):
    r = fetch_token(idp, secret="wrong")
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_client"
    # Basic without the RFC 6749 urlencoding: this secret decodes differently -> rejected
    r = requests.post(idp.token_url, data={"grant_type": "client_credentials"}, timeout=5,
                      auth=(idp.client_id, idp.client_secret))
    assert r.status_code == 401
    # credentials in the form body
    r = requests.post(idp.token_url, timeout=5, data={
        "grant_type": "client_credentials", "client_id": idp.client_id,
        "client_secret": idp.client_secret})
    assert r.status_code == 200
    methods = [(x["auth_method"], x["client_auth_ok"]) for x in idp.requests()]
    assert methods == [("basic", False), ("basic", False), ("body", True)]
    assert idp.requests()[2]["form"]["client_secret"] == "***"


def test_idp_fault_once_then_normal(idp):
    idp.control(faults=[{"status": 503, "retry_after": "2", "body": "busy",
                         "content_type": "text/plain", "count": 1}])
    r = fetch_token(idp)
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "2"
    assert r.text == "busy"
    assert fetch_token(idp).status_code == 200
    assert idp.token_requests() == 2

    idp.control(garbage="<html>login</html>")
    r = fetch_token(idp)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    assert fetch_token(idp).json()["access_token"]


def test_idp_hang_delay_reset(idp):
    idp.control(hang=True)
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(
            idp.token_url, data={"grant_type": "client_credentials"}, timeout=0.5,
            auth=(quote_plus(idp.client_id), quote_plus(idp.client_secret)))
    idp.control(hang=False, delay_ms=300)
    t0 = time.monotonic()
    assert fetch_token(idp).status_code == 200
    assert time.monotonic() - t0 >= 0.29
    idp.control(delay_ms=0, reset=True)
    with pytest.raises(requests.exceptions.ConnectionError):
        fetch_token(idp)
    assert fetch_token(idp).status_code == 200
    outcomes = [x["outcome"] for x in idp.requests()]
    assert outcomes == ["client_gone", "forwarded", "reset", "forwarded"]


def test_idp_short_lifetime_and_key_rotation(idp):
    idp.control(lifetime=1)
    token = good_token(idp)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 1
    old_kid = jwt.get_unverified_header(token)["kid"]
    idp.control(rotate_key=True)
    new_kid = jwt.get_unverified_header(good_token(idp))["kid"]
    assert new_kid != old_kid
    assert {k["kid"] for k in requests.get(idp.jwks_url, timeout=5).json()["keys"]} == {
        old_kid, new_kid}


# --------------------------------------------------------------------------------------------
# OTLP/HTTP receiver
# --------------------------------------------------------------------------------------------


def test_http_exporter_with_valid_jwt(idp, otlp_http_receiver):
    rx = otlp_http_receiver
    token = good_token(idp)
    exporter = HttpExporter(endpoint=rx.endpoint, headers={"authorization": f"Bearer {token}"},
                            timeout=5)
    assert emit(exporter, "hello", "world") == [LogRecordExportResult.SUCCESS] * 2
    assert rx.wait_for(2, timeout=2)
    assert rx.received_bodies() == ["hello", "world"]
    assert rx.statuses() == [200, 200]
    assert rx.token_ids() == [token_id(token)] * 2
    assert [r.n_records for r in rx.requests] == [1, 1]


def test_http_exporter_bad_token_rejected(idp, otlp_http_receiver):
    rx = otlp_http_receiver
    exporter = HttpExporter(endpoint=rx.endpoint, headers={"authorization": "Bearer nope"},
                            timeout=5)
    assert emit(exporter, "x") == [LogRecordExportResult.FAILURE]
    assert rx.statuses() == [401]
    assert rx.received_bodies() == []
    # no token at all
    r = requests.post(rx.endpoint, data=b"", headers={"Content-Type": "application/x-protobuf"},
                      timeout=5)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')


def test_http_receiver_expiry_and_clock_offset(idp, make_http_receiver):
    idp.control(lifetime=60)
    token = good_token(idp)
    ahead = make_http_receiver("jwt", clock_offset=120)
    on_time = make_http_receiver("jwt")
    for rx, expected in ((ahead, LogRecordExportResult.FAILURE),
                         (on_time, LogRecordExportResult.SUCCESS)):
        exp = HttpExporter(endpoint=rx.endpoint, headers={"authorization": f"Bearer {token}"},
                           timeout=5)
        assert emit(exp, "r") == [expected]
    assert ahead.requests[0].reason == "expired"


def test_http_receiver_refetches_jwks_on_unknown_kid(idp, otlp_http_receiver):
    rx = otlp_http_receiver
    assert rx.validator.jwks_fetches == 1
    idp.control(rotate_key=True)
    token = good_token(idp)
    exp = HttpExporter(endpoint=rx.endpoint, headers={"authorization": f"Bearer {token}"},
                       timeout=5)
    assert emit(exp, "new key") == [LogRecordExportResult.SUCCESS]
    assert rx.validator.jwks_fetches == 2


def test_http_receiver_faults_and_gzip(make_http_receiver):
    rx = make_http_receiver("static", static_token="static-token")
    hdr = {"authorization": "Bearer static-token"}
    # 503 with Retry-After: 0 -> the stock exporter retries and succeeds; gzip body
    rx.fail_next(1, 503, retry_after=0)
    exp = HttpExporter(endpoint=rx.endpoint, headers=hdr, timeout=5, compression=Compression.Gzip)
    assert emit(exp, "after-503") == [LogRecordExportResult.SUCCESS]
    assert rx.statuses() == [503, 200]
    assert rx.requests[1].headers.get("content-encoding") == "gzip"
    # valid token rejected once with 403
    rx.reject_next_valid(1, 403)
    exp = HttpExporter(endpoint=rx.endpoint, headers=hdr, timeout=5)
    assert emit(exp, "403", "ok") == [LogRecordExportResult.FAILURE, LogRecordExportResult.SUCCESS]
    # a 302 counts as success for the stock exporter (data silently lost)
    rx.fail_next(1, 302, location="http://127.0.0.1:9/elsewhere")
    exp = HttpExporter(endpoint=rx.endpoint, headers=hdr, timeout=5)
    assert emit(exp, "redirected") == [LogRecordExportResult.SUCCESS]
    assert rx.statuses()[-1] == 302
    assert rx.received_bodies() == ["after-503", "ok"]
    # reset: raw requests sees a connection error
    rx.reset_next()
    req = logs_service_pb2.ExportLogsServiceRequest()
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.post(rx.endpoint, data=req.SerializeToString(), timeout=5,
                      headers={"Authorization": "Bearer static-token",
                               "Content-Type": "application/x-protobuf"})
    # delay then success; deflate by hand
    rx.delay_next(0.3)
    t0 = time.monotonic()
    r = requests.post(rx.endpoint, data=gzip.compress(req.SerializeToString()), timeout=5,
                      headers={"Authorization": "bearer static-token", "Content-Encoding": "gzip",
                               "Content-Type": "application/x-protobuf"})
    assert r.status_code == 200 and time.monotonic() - t0 >= 0.29


def test_http_receiver_tls(make_http_receiver, tls_files, monkeypatch):
    # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override session.verify (the exporter's
    # certificate_file) when they are set, as they are on some machines: drop them here.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    rx = make_http_receiver("static", static_token="t", tls=True)
    exp = HttpExporter(endpoint=rx.endpoint, headers={"authorization": "Bearer t"}, timeout=5,
                       certificate_file=tls_files.ca_cert)
    assert emit(exp, "tls") == [LogRecordExportResult.SUCCESS]
    assert rx.received_bodies() == ["tls"]


# --------------------------------------------------------------------------------------------
# OTLP/gRPC receiver
# --------------------------------------------------------------------------------------------


def test_grpc_exporter_plaintext_valid_and_bad_token(idp, otlp_grpc_receiver):
    rx = otlp_grpc_receiver
    token = good_token(idp)
    good = GrpcExporter(endpoint=rx.url, headers={"authorization": f"Bearer {token}"}, timeout=5)
    assert emit(good, "g1", "g2") == [LogRecordExportResult.SUCCESS] * 2
    bad = GrpcExporter(endpoint=rx.url, headers={"authorization": "Bearer bad"}, timeout=5)
    assert emit(bad, "nope") == [LogRecordExportResult.FAILURE]
    assert rx.received_bodies() == ["g1", "g2"]
    assert rx.statuses() == [grpc.StatusCode.OK] * 2 + [grpc.StatusCode.UNAUTHENTICATED]
    assert rx.token_ids()[:2] == [token_id(token)] * 2
    good.shutdown()
    bad.shutdown()


def test_grpc_exporter_tls(idp, make_grpc_receiver, tls_files):
    rx = make_grpc_receiver("jwt", tls=True)
    token = good_token(idp)
    creds = grpc.ssl_channel_credentials(root_certificates=tls_files.read("ca_cert"))
    exp = GrpcExporter(endpoint=rx.url, credentials=creds, timeout=5,
                       headers={"authorization": f"Bearer {token}"})
    assert emit(exp, "secure") == [LogRecordExportResult.SUCCESS]
    assert rx.received_bodies() == ["secure"]


def test_grpc_mtls_and_faults(make_grpc_receiver, tls_files):
    rx = make_grpc_receiver("static", static_token="t", tls=True, client_auth=True)
    creds = grpc.ssl_channel_credentials(root_certificates=tls_files.read("ca_cert"),
                                         private_key=tls_files.read("client_key"),
                                         certificate_chain=tls_files.read("client_cert"))
    md = (("authorization", "Bearer t"),)
    req = logs_service_pb2.ExportLogsServiceRequest()
    with grpc.secure_channel(rx.endpoint, creds) as ch:
        stub = logs_service_pb2_grpc.LogsServiceStub(ch)
        rx.fail_next(1, "UNAVAILABLE")
        rx.reject_next_valid(1, 403)
        for expected in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.PERMISSION_DENIED):
            with pytest.raises(grpc.RpcError) as ei:
                stub.Export(req, metadata=md, timeout=5)
            assert ei.value.code() == expected
        stub.Export(req, metadata=md, timeout=5)
        rx.delay_next(0.3)
        t0 = time.monotonic()
        stub.Export(req, metadata=md, timeout=5)
        assert time.monotonic() - t0 >= 0.29
    # without a client certificate the handshake fails
    no_cert = grpc.ssl_channel_credentials(root_certificates=tls_files.read("ca_cert"))
    with grpc.secure_channel(rx.endpoint, no_cert) as ch:
        with pytest.raises(grpc.RpcError) as ei:
            logs_service_pb2_grpc.LogsServiceStub(ch).Export(req, metadata=md, timeout=3)
        assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
    assert rx.statuses() == [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.PERMISSION_DENIED,
                             grpc.StatusCode.OK, grpc.StatusCode.OK]


# --------------------------------------------------------------------------------------------
# All three signals, both transports: the stock exporters, faults per signal, partial success,
# retry delays, pause/resume, hangs
# --------------------------------------------------------------------------------------------

PEER_TOKEN = "peer-static-token"
AUTH = {"authorization": f"Bearer {PEER_TOKEN}"}
TRANSPORTS = ("http", "grpc")
# the partial_success field per signal, and the official request/response/stub per signal
REJECTED = {"logs": "rejected_log_records", "traces": "rejected_spans",
            "metrics": "rejected_data_points"}
PB = {
    "logs": (logs_service_pb2.ExportLogsServiceRequest, logs_service_pb2.ExportLogsServiceResponse,
             logs_service_pb2_grpc.LogsServiceStub),
    "traces": (trace_service_pb2.ExportTraceServiceRequest,
               trace_service_pb2.ExportTraceServiceResponse, trace_service_pb2_grpc.TraceServiceStub),
    "metrics": (metrics_service_pb2.ExportMetricsServiceRequest,
                metrics_service_pb2.ExportMetricsServiceResponse,
                metrics_service_pb2_grpc.MetricsServiceStub),
}
OK = {"http": 200, "grpc": grpc.StatusCode.OK}
UNAVAILABLE = {"http": 503, "grpc": grpc.StatusCode.UNAVAILABLE}
FORBIDDEN = {"http": 403, "grpc": grpc.StatusCode.PERMISSION_DENIED}
# a channel of its own, not one from grpc's process-wide subchannel pool: that pool would hand a
# new channel the subchannel another channel left in reconnect backoff (see OTLPGrpcReceiver.resume)
OWN_POOL = [("grpc.use_local_subchannel_pool", 1)]


@pytest.fixture
def make_rx(make_http_receiver, make_grpc_receiver):
    """make_rx(transport, **kw): a receiver accepting PEER_TOKEN, stopped at teardown."""
    def make(transport, **kw):
        factory = make_http_receiver if transport == "http" else make_grpc_receiver
        return factory("static", static_token=PEER_TOKEN, **kw)
    return make


def stock_exporter(transport, signal, rx, **kw):
    """The stock OTLP exporter for ``signal`` over ``transport``, with a static bearer header."""
    if transport == "http":
        cls = {"logs": HttpExporter, "traces": HttpSpanExporter,
               "metrics": HttpMetricExporter}[signal]
        return cls(endpoint=rx.endpoint_for(signal), headers=AUTH, timeout=5, **kw)
    cls = {"logs": GrpcExporter, "traces": GrpcSpanExporter, "metrics": GrpcMetricExporter}[signal]
    return cls(endpoint=rx.url, headers=AUTH, timeout=5, **kw)


class SpanTap(SpanExporter):
    """Wraps a stock span exporter so the test sees each export() result."""

    def __init__(self, inner):
        self.inner = inner
        self.results = []

    def export(self, spans):
        result = self.inner.export(spans)
        self.results.append(result)
        return result

    def shutdown(self):
        self.inner.shutdown()


def spans(exporter, *names):
    """Export one span per name (SimpleSpanProcessor: one request each); return the results."""
    tap = SpanTap(exporter)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(tap))
    tracer = provider.get_tracer("test-peers")
    for name in names:
        with tracer.start_as_current_span(name, attributes={"peer.test": True}):
            pass
    provider.shutdown()
    return tap.results


def meter_provider(exporter):
    """A MeterProvider whose reader (the stock exporter) exports only on force_flush/shutdown."""
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    return MeterProvider(metric_readers=[reader])


def raw_request(signal, name="raw"):
    """An official Export*ServiceRequest holding one log record / span / sum data point."""
    req = PB[signal][0]()
    if signal == "logs":
        req.resource_logs.add().scope_logs.add().log_records.add().body.string_value = name
    elif signal == "traces":
        span = req.resource_spans.add().scope_spans.add().spans.add()
        span.name, span.trace_id, span.span_id = name, bytes(range(1, 17)), bytes(range(1, 9))
    else:
        metric = req.resource_metrics.add().scope_metrics.add().metrics.add()
        metric.name = name
        metric.sum.is_monotonic = True
        metric.sum.aggregation_temporality = 2  # cumulative
        metric.sum.data_points.add().as_int = 41
    return req


def raw_post(rx, signal, req, json=False, session=None, timeout=5):
    """POST an Export*ServiceRequest (protobuf or JSON) with the token; the requests.Response."""
    if json:
        body, ctype = json_format.MessageToJson(req).encode(), "application/json"
    else:
        body, ctype = req.SerializeToString(), "application/x-protobuf"
    return (session or requests).post(rx.endpoint_for(signal), data=body, timeout=timeout,
                                      headers={**AUTH, "Content-Type": ctype})


def raw_grpc(rx, signal, req, timeout=5):
    """Export() through the official stub on a channel of its own; (response, None) or
    (None, RpcError)."""
    with grpc.insecure_channel(rx.endpoint, options=OWN_POOL) as ch:
        try:
            return PB[signal][2](ch).Export(req, metadata=tuple(AUTH.items()), timeout=timeout), None
        except grpc.RpcError as e:
            return None, e


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_stock_exporters_deliver_every_signal(make_rx, transport):
    rx = make_rx(transport)
    http = transport == "http"

    # traces (HTTP: gzip)
    kw = {"compression": Compression.Gzip} if http else {}
    assert spans(stock_exporter(transport, "traces", rx, **kw), "op-a", "op-b") == [
        SpanExportResult.SUCCESS] * 2
    assert rx.wait_for_spans(2, timeout=2)
    assert rx.received_span_names() == ["op-a", "op-b"]
    assert all(isinstance(s, trace_pb2.Span) and len(s.trace_id) == 16 for s in rx.spans)
    assert attributes_dict(rx.spans[0].attributes) == {"peer.test": True}

    # metrics: a counter (sum), a histogram, a gauge through a real MeterProvider (HTTP: deflate)
    kw = {"compression": Compression.Deflate} if http else {}
    provider = meter_provider(stock_exporter(transport, "metrics", rx, **kw))
    meter = provider.get_meter("test-peers")
    counter = meter.create_counter("peer.requests")
    histogram = meter.create_histogram("peer.latency", unit="ms")
    gauge = meter.create_gauge("peer.queue")
    counter.add(3, {"route": "a"})
    counter.add(4, {"route": "a"})
    histogram.record(10.0)
    histogram.record(30.0)
    gauge.set(5)
    assert provider.force_flush(5_000)
    assert rx.wait_for_points("peer.requests", 1, timeout=2)
    assert rx.last_sum_value("peer.requests") == 7
    assert rx.last_sum_value("peer.requests", {"route": "a"}) == 7
    (hist,) = rx.metric_points("peer.latency")
    assert (hist.count, hist.sum) == (2, 40.0)
    assert [p.as_int for p in rx.metric_points("peer.queue")] == [5]
    counter.add(5, {"route": "a"})
    assert provider.force_flush(5_000)
    assert rx.wait_for_points("peer.requests", 2, timeout=2)
    assert rx.last_sum_value("peer.requests") == 12  # cumulative: the total so far
    assert [p.as_int for p in rx.metric_points("peer.requests")] == [7, 12]
    provider.shutdown()
    assert set(rx.metric_names()) >= {"peer.requests", "peer.latency", "peer.queue"}
    assert len(rx.metric_requests) >= 2
    assert all(isinstance(r, metrics_service_pb2.ExportMetricsServiceRequest)
               for r in rx.metric_requests)

    # logs
    assert emit(stock_exporter(transport, "logs", rx), "log-1", "log-2") == [
        LogRecordExportResult.SUCCESS] * 2
    assert rx.wait_for(2, timeout=2)
    assert rx.received_bodies() == ["log-1", "log-2"]

    # one record per request, each knowing its signal and its size; one token throughout
    assert [r.signal for r in rx.requests[:2]] == ["traces", "traces"]
    assert [r.n_records for r in rx.requests[:2]] == [1, 1]
    metric_recs = rx.requests_for("metrics")
    assert metric_recs[0].n_records == 3  # one point each: counter, histogram, gauge
    assert [r.n_records for r in rx.requests_for("logs")] == [1, 1]
    assert set(rx.statuses()) == {OK[transport]}
    assert set(rx.token_ids()) == {token_id(PEER_TOKEN)}
    if http:
        assert rx.requests[0].headers.get("content-encoding") == "gzip"
        assert metric_recs[0].headers.get("content-encoding") == "deflate"
        assert rx.base_url == rx.url and rx.endpoint == rx.endpoint_for("logs")
        assert rx.endpoint_for("traces") == f"{rx.base_url}/v1/traces"
    else:
        assert rx.endpoint_for("metrics") == rx.url == rx.base_url


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_faults_per_signal_and_retry_delay(make_rx, transport):
    rx = make_rx(transport)
    # only a traces request takes this fault; the stock exporters honour the delay it asks for
    # (gRPC: RetryInfo in the trailers; HTTP: Retry-After), far below their own 1 s backoff
    rx.fail_next(1, 503, retry_delay=0.2, signal="traces")
    rx.reject_next_valid(1, 403, signal="metrics")
    assert emit(stock_exporter(transport, "logs", rx), "untouched") == [
        LogRecordExportResult.SUCCESS]
    assert len(rx.faults) == 1 and len(rx.auth_faults) == 1  # the logs request took neither

    t0 = time.monotonic()
    assert spans(stock_exporter(transport, "traces", rx), "retried") == [
        SpanExportResult.SUCCESS]
    waited = time.monotonic() - t0
    assert 0.2 <= waited < 0.75, waited
    assert rx.statuses("traces") == [UNAVAILABLE[transport], OK[transport]]
    assert rx.received_span_names() == ["retried"]

    provider = meter_provider(stock_exporter(transport, "metrics", rx))
    counter = provider.get_meter("t").create_counter("c")
    counter.add(1)
    provider.force_flush(5_000)  # 403 / PERMISSION_DENIED: not retried, not stored
    counter.add(1)
    provider.shutdown()
    assert rx.statuses("metrics") == [FORBIDDEN[transport], OK[transport]]
    assert rx.last_sum_value("c") == 2
    assert len(rx.faults) == 0 and len(rx.auth_faults) == 0
    assert rx.statuses("logs") == [OK[transport]]
    with pytest.raises(ValueError):
        rx.fail_next(1, signal="profiles")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_retry_delay_reaches_the_client(make_rx, transport):
    rx = make_rx(transport)
    req = raw_request("logs")
    if transport == "http":
        rx.fail_next(1, 503, retry_delay=2)
        rx.fail_next(1, 429, retry_delay=1.5, retry_after="7")  # an explicit header wins
        assert [raw_post(rx, "logs", req).headers["Retry-After"] for _ in "ab"] == ["2", "7"]
        return
    own = RetryInfo(retry_delay=Duration(seconds=3)).SerializeToString()
    rx.fail_next(1, "UNAVAILABLE", retry_delay=1.5)
    rx.fail_next(1, "UNAVAILABLE", trailing_metadata=(("google.rpc.retryinfo-bin", own),))
    delays = []
    for _ in "ab":
        _, err = raw_grpc(rx, "logs", req)
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        info = RetryInfo.FromString(dict(err.trailing_metadata())["google.rpc.retryinfo-bin"])
        delays.append(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
    assert delays == [1.5, 3.0]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_partial_success_visible_in_the_response(make_rx, transport):
    rx = make_rx(transport)
    encodings = (False, True) if transport == "http" else (None,)
    for signal in ("traces", "metrics", "logs"):
        _, response_cls, _ = PB[signal]
        for json in encodings:
            rx.partial_success_next(1, rejected=2, message=f"{signal}: 2 dropped", signal=signal)
            # a request of another signal neither takes it nor is changed by it
            other = "logs" if signal != "logs" else "traces"
            if transport == "http":
                r = raw_post(rx, other, raw_request(other))
                assert r.status_code == 200
                assert not PB[other][1].FromString(r.content).HasField("partial_success")
                r = raw_post(rx, signal, raw_request(signal, f"{signal}-partial"), json=json)
                assert r.status_code == 200
                if json:
                    assert r.headers["Content-Type"] == "application/json"
                    resp = json_format.Parse(r.text, response_cls())
                else:
                    resp = response_cls.FromString(r.content)
            else:
                resp, err = raw_grpc(rx, other, raw_request(other))
                assert err is None and not resp.HasField("partial_success")
                resp, err = raw_grpc(rx, signal, raw_request(signal, f"{signal}-partial"))
                assert err is None
            assert getattr(resp.partial_success, REJECTED[signal]) == 2
            assert resp.partial_success.error_message == f"{signal}: 2 dropped"
            rec = rx.requests[-1]
            assert (rec.signal, rec.accepted, rec.rejected, rec.n_records) == (signal, True, 2, 1)
    # accepted AND stored
    n = len(encodings)
    assert rx.received_span_names().count("traces-partial") == n
    assert [p.as_int for p in rx.metric_points("metrics-partial")] == [41] * n
    assert rx.received_bodies().count("logs-partial") == n
    # the stock exporter counts a partial success as a success
    rx.partial_success_next(1, rejected=1, message="one span dropped")
    assert spans(stock_exporter(transport, "traces", rx), "partial") == [SpanExportResult.SUCCESS]
    assert rx.requests[-1].rejected == 1


def test_http_otlp_json_with_hex_ids_and_deflate(make_rx):
    rx = make_rx("http")
    body = {"resourceSpans": [{"scopeSpans": [{"spans": [{
        "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
        "parentSpanId": "eee19b7ec3c1b173", "name": "json-span", "kind": 2,
        "startTimeUnixNano": "1544712660000000000", "endTimeUnixNano": "1544712661000000000",
        "links": [{"traceId": "00000000000000000000000000000001", "spanId": "0000000000000002"}],
    }]}]}]}
    r = requests.post(rx.endpoint_for("traces"), timeout=5,
                      data=zlib.compress(json_module.dumps(body).encode()),
                      headers={**AUTH, "Content-Type": "application/json",
                               "Content-Encoding": "deflate"})
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    assert not json_format.Parse(r.text, trace_service_pb2.ExportTraceServiceResponse()).HasField(
        "partial_success")
    (span,) = rx.spans
    assert span.name == "json-span" and span.kind == trace_pb2.Span.SPAN_KIND_SERVER
    assert span.trace_id.hex() == "5b8efff798038103d269b633813fc60c"
    assert (span.span_id.hex(), span.parent_span_id.hex()) == ("eee19b7ec3c1b174",
                                                               "eee19b7ec3c1b173")
    assert span.links[0].span_id == bytes(7) + b"\x02"
    r = requests.post(rx.endpoint_for("metrics"), data=b"{not json", timeout=5,
                      headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 400
    assert (rx.requests[-1].signal, rx.requests[-1].n_records) == ("metrics", 0)
    assert requests.post(rx.base_url + "/v1/profiles", data=b"", timeout=5).status_code == 404


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_pause_refuses_connections_and_resume_reopens_the_same_port(make_rx, transport):
    rx = make_rx(transport)
    port = rx.port
    session = requests.Session()  # HTTP: a pooled keep-alive connection must not slip through
    req = raw_request("traces", "before")

    def send(name):
        r = raw_request("traces", name)
        if transport == "http":
            return raw_post(rx, "traces", r, session=session).status_code
        resp, err = raw_grpc(rx, "traces", r)
        return OK["grpc"] if err is None else err.code()

    assert send("before") == OK[transport]
    rx.pause()
    assert rx.paused
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    if transport == "http":
        with pytest.raises(requests.exceptions.ConnectionError):
            raw_post(rx, "traces", req, session=session)
    else:
        assert send("refused") == grpc.StatusCode.UNAVAILABLE
    rx.resume()
    assert not rx.paused and rx.port == port
    assert send("after") == OK[transport]
    assert spans(stock_exporter(transport, "traces", rx), "stock-after") == [
        SpanExportResult.SUCCESS]
    assert rx.received_span_names() == ["before", "after", "stock-after"]  # kept across the pause
    assert len(rx.requests) == 3
    session.close()


def _call_in_thread(rx, transport, timeout):
    """Send one logs request from a thread; the dict gets "error" and "seconds" when it ends."""
    out = {}

    def run():
        t0 = time.monotonic()
        try:
            if transport == "http":
                raw_post(rx, "logs", raw_request("logs", "held"), timeout=timeout)
                out["error"] = None
            else:
                out["error"] = raw_grpc(rx, "logs", raw_request("logs", "held"), timeout)[1]
        except requests.exceptions.RequestException as e:
            out["error"] = e
        out["seconds"] = time.monotonic() - t0

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th, out


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("kind", ["hang_next", "delay_next"])
def test_no_answer_for_10s_is_ended_by_stop(make_rx, transport, kind):
    rx = make_rx(transport)
    if kind == "hang_next":
        rx.hang_next(1, seconds=10)
    else:
        rx.delay_next(10)
    th, out = _call_in_thread(rx, transport, timeout=15)
    assert rx.wait_until(lambda r: len(r.faults) == 0, 2)  # the request is being held
    th.join(0.3)
    assert th.is_alive()  # no answer
    t0 = time.monotonic()
    rx.stop()
    th.join(1.0)
    assert not th.is_alive(), "stop() did not end the held request within 1 s"
    assert time.monotonic() - t0 < 1.0
    assert out["error"] is not None  # dropped, not answered
    if transport == "grpc":
        assert out["error"].code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    assert rx.wait_for_requests(1, 1)
    assert rx.requests[0].status in ("reset", grpc.StatusCode.UNAVAILABLE)
    assert "stopped" in rx.requests[0].reason
    assert rx.received_bodies() == []


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_hang_ends_at_its_time_on_release_or_when_the_client_leaves(make_rx, transport):
    rx = make_rx(transport)
    for add in (lambda: rx.hang_next(1, seconds=0.3, signal="logs"),  # from the arrival
                lambda: rx.hang_next(1, until=time.time() + 0.3)):  # a wall-clock time
        add()
        th, out = _call_in_thread(rx, transport, timeout=5)
        th.join(3)
        assert out["error"] is not None and 0.28 <= out["seconds"] < 2, out
    rx.hang_next()
    th, out = _call_in_thread(rx, transport, timeout=5)
    assert rx.wait_until(lambda r: len(r.faults) == 0, 2)
    th.join(0.2)
    assert th.is_alive()
    rx.release_hangs()
    th.join(1)
    assert out["error"] is not None and not th.is_alive()
    rx.hang_next()
    th, out = _call_in_thread(rx, transport, timeout=0.3)  # the client gives up
    th.join(2)
    assert rx.wait_for_requests(4, 2)
    assert [r.reason.split("(")[1].rstrip(")") for r in rx.requests] == [
        "time up", "time up", "released", "client gone"]
    assert rx.received_bodies() == [] and len(rx.faults) == 0
