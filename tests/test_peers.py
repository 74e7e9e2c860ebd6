"""The test peers work, and can fail on purpose. Tokens are never printed: compare fingerprints."""

from __future__ import annotations

import gzip
import time
from urllib.parse import quote_plus

import grpc
import jwt
import pytest
import requests
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpExporter
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import (
    LogRecordExporter,
    LogRecordExportResult,
    SimpleLogRecordProcessor,
)
from peers.common import token_id


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
