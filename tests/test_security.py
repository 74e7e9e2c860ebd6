"""Security: TLS-only bearer tokens (RFC 6750 §5.3) and their opt-in, zero secrets in DEBUG output of
a failing run, and limits on hostile token endpoints (size cap, no redirects, timeout).

Secrets are never printed: leaks are counted (``helpers.leaked``), tokens compared by ``token_id``.
"""

from __future__ import annotations

import base64
import logging
import socket
import sys
import threading
import time
from urllib.parse import quote, quote_plus

import pytest
from opentelemetry.sdk._logs.export import LogRecordExportResult

from helpers import leaked, make_records
from otel_token_exporter import TokenOTLPLogExporter
from otel_token_exporter.config import ConfigurationError
from otel_token_exporter.sources.oauth2 import ClientCredentialsSource
from helpers import wait_until
from helpers import RecordingServer

FAILURE = LogRecordExportResult.FAILURE
OPT_IN = "OTEL_TOKEN_EXPORTER_ALLOW_PLAINTEXT"
STATIC = "not-a-real-token"  # a static source: no token endpoint, no I/O at construction



@pytest.fixture
def no_network(monkeypatch):
    """Records (and refuses) every name lookup and connection attempt made in this process."""
    attempts = []

    def refuse(what):
        def call(*args, **kwargs):
            attempts.append(what)
            raise OSError(f"test: no network I/O allowed ({what})")
        return call

    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
    return attempts


@pytest.fixture
def built():
    made = []
    yield made
    for exp in made:
        exp.shutdown(timeout_millis=2000)


def build(built, **kw):
    kw.setdefault("token", STATIC)
    exp = TokenOTLPLogExporter(**kw)
    built.append(exp)
    return exp


# --------------------------------------------------------------------------------------------
# Plaintext refusal and opt-in
# --------------------------------------------------------------------------------------------

REFUSED = [
    pytest.param({"endpoint": "http://collector.invalid:4318/v1/logs"}, id="http"),
    pytest.param({"endpoint": "http://collector.invalid:4317", "protocol": "grpc"}, id="grpc-http-url"),
    pytest.param({"endpoint": "collector.invalid:4317", "protocol": "grpc", "insecure": True}, id="grpc-insecure-arg"),
    pytest.param({"endpoint": "http://127.0.0.1@collector.invalid:4318/v1/logs"}, id="userinfo-trick"),
    pytest.param({"endpoint": "http://localhost.collector.invalid:4318/v1/logs"}, id="localhost-prefix"),
    pytest.param({"endpoint": "http://10.0.0.1:4318/v1/logs"}, id="private-ip"),
]


@pytest.mark.parametrize("kw", REFUSED)
def test_plaintext_endpoint_on_another_host_is_refused_naming_the_opt_in(kw, no_network, built):
    with pytest.raises(ConfigurationError) as ei:
        build(built, env={}, **kw)
    msg = str(ei.value)
    assert OPT_IN in msg and "allow_plaintext=True" in msg
    assert STATIC not in msg
    assert no_network == []


def test_bare_grpc_endpoint_made_insecure_by_env_is_refused(monkeypatch, no_network, built):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_INSECURE", "true")
    monkeypatch.delenv(OPT_IN, raising=False)
    with pytest.raises(ConfigurationError) as ei:
        build(built, endpoint="collector.invalid:4317", protocol="grpc")
    assert OPT_IN in str(ei.value)
    assert no_network == []


def test_plaintext_env_endpoint_is_refused(monkeypatch, no_network, built):
    # the stock exporter reads its endpoint from the process environment: so does the check
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://collector.invalid:4318/v1/logs")
    monkeypatch.delenv(OPT_IN, raising=False)
    with pytest.raises(ConfigurationError, match=OPT_IN):
        build(built)
    assert no_network == []


@pytest.mark.parametrize("kw", REFUSED[:3])
def test_opt_in_by_env_allows_plaintext(kw, no_network, built):
    exp = build(built, env={OPT_IN: "true"}, **kw)
    assert "collector.invalid" in exp.endpoint
    assert no_network == []


@pytest.mark.parametrize("kw", REFUSED[:3])
def test_opt_in_by_argument_allows_plaintext(kw, no_network, built):
    exp = build(built, env={}, allow_plaintext=True, **kw)
    assert "collector.invalid" in exp.endpoint
    assert no_network == []


def test_opt_in_from_process_env(monkeypatch, no_network, built):
    monkeypatch.setenv(OPT_IN, "true")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_LOGS_INSECURE", "true")
    exp = build(built, endpoint="collector.invalid:4317", protocol="grpc")
    assert exp.protocol == "grpc"
    assert no_network == []


def test_opt_in_set_to_false_still_refuses(no_network, built):
    with pytest.raises(ConfigurationError, match=OPT_IN):
        build(built, env={OPT_IN: "false"}, endpoint="http://collector.invalid:4318/v1/logs")


def test_argument_false_beats_env_opt_in(no_network, built):
    with pytest.raises(ConfigurationError, match=OPT_IN):
        build(built, env={OPT_IN: "true"}, allow_plaintext=False,
              endpoint="http://collector.invalid:4318/v1/logs")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "localhost", "[::1]"])
@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_loopback_plaintext_needs_no_opt_in(host, protocol, no_network, built):
    port = 4318 if protocol == "http/protobuf" else 4317
    endpoint = f"http://{host}:{port}" + ("/v1/logs" if protocol == "http/protobuf" else "")
    exp = build(built, env={}, endpoint=endpoint, protocol=protocol)
    assert exp.endpoint.startswith("http://") or host.strip("[]") in exp.endpoint
    assert no_network == []


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_tls_endpoint_on_another_host_is_allowed(protocol, no_network, built):
    exp = build(built, env={}, endpoint="https://collector.invalid:4318/v1/logs"
                if protocol == "http/protobuf" else "https://collector.invalid:4317", protocol=protocol)
    assert "collector.invalid" in exp.endpoint
    assert no_network == []


def test_bare_grpc_endpoint_is_tls_and_allowed(monkeypatch, no_network, built):
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_LOGS_INSECURE", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_INSECURE", raising=False)
    monkeypatch.delenv(OPT_IN, raising=False)
    exp = build(built, endpoint="collector.invalid:4317", protocol="grpc")
    assert exp.protocol == "grpc"
    assert no_network == []


def token_url_kw(url):
    return dict(token=None, token_url=url, client_id="c", client_secret="s3cret-value")


def test_plaintext_token_url_on_another_host_is_refused(no_network, built):
    with pytest.raises(ConfigurationError) as ei:
        build(built, env={}, endpoint="https://collector.invalid/v1/logs",
              **token_url_kw("http://idp.invalid/oauth2/token"))
    msg = str(ei.value)
    assert OPT_IN in msg and "token URL" in msg
    assert "s3cret-value" not in msg
    assert no_network == []


def test_plaintext_token_url_from_env_is_refused(no_network, built):
    env = {"OTEL_TOKEN_EXPORTER_TOKEN_URL": "http://idp.invalid/token",
           "OTEL_TOKEN_EXPORTER_CLIENT_ID": "c", "OTEL_TOKEN_EXPORTER_CLIENT_SECRET": "s3cret-value"}
    with pytest.raises(ConfigurationError, match=OPT_IN):
        build(built, env=env, token=None, endpoint="https://collector.invalid/v1/logs")
    assert no_network == []


def test_plaintext_token_url_allowed_with_opt_in_and_on_loopback(monkeypatch, built):
    # these build a real source whose first fetch starts in the background: let it fail offline
    exp = build(built, env={OPT_IN: "1"}, endpoint="https://collector.invalid/v1/logs",
                **token_url_kw("http://idp.invalid/token"))
    assert exp.token_manager is not None
    build(built, env={}, endpoint="https://collector.invalid/v1/logs",
          **token_url_kw("http://127.0.0.1:9/token"))
    build(built, env={}, endpoint="https://collector.invalid/v1/logs",
          **token_url_kw("https://idp.invalid/token"))


# --------------------------------------------------------------------------------------------
# Zero secrets in DEBUG output of a failing run
# --------------------------------------------------------------------------------------------


def secret_forms(idp) -> list:
    s = idp.client_secret
    pair = f"{quote(idp.client_id, safe='')}:{quote(s, safe='')}"
    return [s, quote(s, safe=""), quote_plus(s), base64.b64encode(pair.encode()).decode()]


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_debug_output_of_a_failing_run_has_no_secrets(protocol, idp, make_http_receiver, make_grpc_receiver,
                                                      caplog, capfd):
    # a token of the IdP's to echo back (the same issuer and key as the tokens the exporter gets)
    echoed_jwt = ClientCredentialsSource(idp.token_url, idp.client_id, idp.client_secret).fetch().value
    forms = secret_forms(idp)
    echo = f"bad request: Authorization: Basic {forms[3]}; client_secret={forms[1]}; secret={forms[0]}; " \
           f"token={echoed_jwt}"
    html = f"<html><body><h1>500</h1><pre>client_secret={forms[0]} {forms[2]}</pre></body></html>"
    idp.control(lifetime=5, faults=[
        {"status": 500, "body": html, "content_type": "text/html"},
        {"status": 400, "body": {"error": "invalid_request", "error_description": echo}},
        {"status": 401, "body": {"error": "invalid_client", "error_description": echo}},
    ])
    # every request is refused: the receiver only accepts a token nobody has
    make_rx = make_http_receiver if protocol == "http/protobuf" else make_grpc_receiver
    rx = make_rx("static", static_token="a-token-the-idp-never-issues")

    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(stderr)
    caplog.set_level(logging.DEBUG)  # the root logger: urllib3, requests, grpc, ours, the SDK's
    exp = None
    try:
        exp = TokenOTLPLogExporter(
            endpoint=rx.endpoint, protocol=protocol, insecure=True if protocol == "grpc" else None,
            token_url=idp.token_url, client_id=idp.client_id, client_secret=idp.client_secret, timeout=5,
            env={"OTEL_TOKEN_EXPORTER_FATAL_COOLDOWN": "0.5"},
        )
        print(repr(exp), repr(exp.token_manager), exp.token_manager.health())
        # the 500, the 400 and the 401 from the IdP, then a token
        assert wait_until(lambda: exp.token_manager.health().has_token, 20), exp.token_manager.health()
        for i in range(4):
            assert exp.export(make_records([f"r {i}"])) is FAILURE
            time.sleep(1.1)  # lets each rejection force a refresh (rate-limited to 1/s)
        exp.force_flush(2000)
    finally:
        if exp is not None:
            exp.shutdown(timeout_millis=2000)
        root.removeHandler(stderr)
    out, err = capfd.readouterr()
    text = "\n".join([caplog.text, out, err])

    issued = {r.token for r in rx.requests if r.token}
    assert len(issued) >= 2, "the run should have used several issued tokens"
    assert idp.token_requests() >= 5
    # the output is there (DEBUG from urllib3 or grpc, our warnings naming the IdP's errors)
    names = {r.name for r in caplog.records}
    assert any(n.startswith("otel_token_exporter") for n in names)
    assert any(n.startswith(("urllib3", "opentelemetry.exporter")) for n in names), names
    assert "invalid_request" in text and "invalid_client" in text
    assert leaked(text, [*forms, echoed_jwt, *issued]) == 0
    assert "eyJ" not in text  # no JWT-looking text at all


# --------------------------------------------------------------------------------------------
# Hostile token endpoints
# --------------------------------------------------------------------------------------------



def exporter_for(idp, rx, **kw):
    return TokenOTLPLogExporter(endpoint=rx.endpoint, token_url=idp.token_url, client_id=idp.client_id,
                                client_secret=idp.client_secret, timeout=5, **kw)


def test_oversized_token_response_is_refused(idp, otlp_http_receiver):
    big = "x" * (65 * 1024)
    idp.control(faults=[{"status": 200, "body": {"access_token": big, "token_type": "Bearer", "expires_in": 60}}])
    exp = exporter_for(idp, otlp_http_receiver, env={})
    try:
        assert wait_until(lambda: exp.token_manager.health().failure_count >= 1, 10)
        assert exp.token_manager.health().last_error == "TransientTokenError"
        # the next fetch gets a real token; the oversized one was never sent anywhere
        assert wait_until(lambda: exp.token_manager.health().has_token, 10)
        assert exp.export(make_records(["after"])) is LogRecordExportResult.SUCCESS
        assert all(r.token != big for r in otlp_http_receiver.requests)
    finally:
        exp.shutdown(timeout_millis=2000)


@pytest.mark.parametrize("status", [302, 307, 308])
def test_idp_redirect_is_not_followed(status, idp, otlp_http_receiver):
    target = RecordingServer()
    idp.control(faults=[{"status": status, "headers": {"Location": target.url}}])
    exp = exporter_for(idp, otlp_http_receiver, env={})
    try:
        assert wait_until(lambda: exp.token_manager.health().failure_count >= 1, 10)
        h = exp.token_manager.health()
        assert h.last_error == "FatalTokenError" and not h.has_token
        time.sleep(0.5)
        assert target.seen == []
    finally:
        exp.shutdown(timeout_millis=2000)
        target.stop()


def test_slow_idp_is_bounded_by_the_token_timeout(idp, otlp_http_receiver):
    idp.control(hang=True)  # every token request is held unanswered until the client leaves
    env = {"OTEL_TOKEN_EXPORTER_TOKEN_URL": idp.token_url, "OTEL_TOKEN_EXPORTER_CLIENT_ID": idp.client_id,
           "OTEL_TOKEN_EXPORTER_CLIENT_SECRET": idp.client_secret, "OTEL_TOKEN_EXPORTER_TOKEN_TIMEOUT": "1"}
    # construction returns although the IdP never answers: the first fetch runs in the background
    exp = TokenOTLPLogExporter(endpoint=otlp_http_receiver.endpoint, timeout=3, env=env)
    try:
        assert exp.token_manager.health().generation == 0
        result: list = []
        worker = threading.Thread(target=lambda: result.append(exp.export(make_records(["r"]))))
        worker.start()
        worker.join(30)  # generous: the export waits at most its own timeout for a token
        assert not worker.is_alive() and result == [FAILURE]
        assert wait_until(lambda: exp.token_manager.health().failure_count >= 1, 10)
        assert exp.token_manager.health().last_error == "TransientTokenError"
        # the client gave up on the held request (only a client leaving ends a hang)
        assert any(r["outcome"] == "client_gone" for r in idp.requests())
        assert otlp_http_receiver.requests == []
    finally:
        idp.control(hang=False)
        exp.shutdown(timeout_millis=2000)
