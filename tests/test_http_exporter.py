"""TokenOTLPLogExporter over OTLP/HTTP against a real IdP and a real OTLP/HTTP receiver (loopback).

Tokens are never printed: asserts compare fingerprints (``token_id``) or count leaks.
"""

from __future__ import annotations

import base64
import logging
import socket
import threading
import time
from urllib.parse import quote

import pytest
from opentelemetry.sdk._logs.export import LogRecordExportResult

from helpers import emit_numbered, leaked, make_records, numbers
from otel_token_exporter import TokenOTLPLogExporter
from peers.common import token_id

SUCCESS = LogRecordExportResult.SUCCESS
FAILURE = LogRecordExportResult.FAILURE


def make_exporter(idp, receiver, **kw):
    kw.setdefault("endpoint", receiver.endpoint)
    kw.setdefault("timeout", 10)
    return TokenOTLPLogExporter(
        token_url=kw.pop("token_url", idp.token_url),
        client_id=kw.pop("client_id", idp.client_id),
        client_secret=kw.pop("client_secret", idp.client_secret),
        env=kw.pop("env", {}),
        **kw,
    )


def closed_port_url(path="/token") -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return f"http://127.0.0.1:{port}{path}"


def secrets_of(idp, *receivers) -> list:
    """Every issued token the receivers saw, the client secret and its Basic-auth forms."""
    out = [idp.client_secret, quote(idp.client_secret, safe="")]
    pair = f"{quote(idp.client_id, safe='')}:{quote(idp.client_secret, safe='')}"
    out.append(base64.b64encode(pair.encode()).decode())
    for rx in receivers:
        out.extend(r.token for r in rx.requests if r.token)
    return out


# --------------------------------------------------------------------------------------------
# Token lifetimes
# --------------------------------------------------------------------------------------------


def test_all_records_delivered_across_several_lifetimes_of_short_tokens(idp, otlp_http_receiver):
    idp.control(lifetime=3)  # exp is whole seconds: each token really lives 2-3 s
    rx = otlp_http_receiver
    exporter = make_exporter(idp, rx)
    count, seconds = 2000, 10.0
    started = time.monotonic()
    tap = emit_numbered(exporter, count, seconds=seconds)
    duration = time.monotonic() - started

    got = numbers(rx.received_bodies())
    assert sorted(set(got)) == list(range(count)), f"missing {count - len(set(got))} records"
    assert all(r is SUCCESS for r in tap.results)
    # several distinct tokens were used: the run spanned several lifetimes
    distinct = {r.token_id for r in rx.requests if r.accepted}
    assert len(distinct) >= 3
    # at most about one token request per half lifetime, plus the initial one
    idp_requests = idp.token_requests()
    assert idp_requests <= duration / 1.5 + 2, (idp_requests, duration)
    print(f"\nshort tokens: {len(set(got))}/{count} records, {idp_requests} IdP requests, "
          f"{len(distinct)} tokens used, {duration:.1f}s")


# --------------------------------------------------------------------------------------------
# 401/403 from the endpoint
# --------------------------------------------------------------------------------------------


def _wait_first_token(exporter, timeout=10.0) -> None:
    exporter.token_manager.get(timeout)


@pytest.mark.parametrize("status", [401, 403])
def test_rejected_valid_token_is_refreshed_and_same_body_resent_once(idp, otlp_http_receiver, status):
    rx = otlp_http_receiver
    exporter = make_exporter(idp, rx)
    try:
        _wait_first_token(exporter)
        idp_before = idp.token_requests()
        rx.reject_next_valid(1, status)
        time.sleep(1.1)  # forced refreshes are rate limited to one per second per manager
        result = exporter.export(make_records([f"r{status} {i}" for i in range(5)]))
    finally:
        exporter.shutdown()
    assert result is SUCCESS
    assert rx.received_bodies() == [f"r{status} {i}" for i in range(5)]  # exactly once, in order
    assert rx.statuses() == [status, 200]
    first, second = rx.requests
    assert first.n_records == second.n_records == 5
    assert first.token_id != second.token_id
    assert idp.token_requests() == idp_before + 1


def test_401_on_every_attempt_fails_with_at_most_one_resend_per_attempt(idp, make_http_receiver):
    # the receiver wants a token the IdP never issues: every attempt is refused. export() returns
    # when its attempt (one send and at most one re-send with a newer token) was refused; the
    # background probes of the kept batch start a quarter second later at the earliest.
    rx = make_http_receiver("static", static_token="a-token-nobody-issues")
    exporter = make_exporter(idp, rx, max_auth_retries=1)
    try:
        _wait_first_token(exporter)
        result = exporter.export(make_records(["rej 0"]))
        posts = len(rx.requests)
        tokens_after_attempt = idp.token_requests()
    finally:
        exporter.shutdown(timeout_millis=1000)
    assert result is FAILURE
    assert posts == 2, posts  # one send + one re-send with the freshly forced token
    assert rx.received_bodies() == []
    assert all(s == 401 for s in rx.statuses())
    assert tokens_after_attempt == 2  # initial + one forced refresh


def test_401_on_every_attempt_backs_off_instead_of_hot_looping(idp, make_http_receiver):
    # with the outage buffer on, the refused batch is kept and re-sent in the background:
    # that must back off, both towards the endpoint and towards the IdP
    rx = make_http_receiver("static", static_token="a-token-nobody-issues")
    exporter = make_exporter(idp, rx, max_auth_retries=1)
    window = 4.0
    try:
        _wait_first_token(exporter)
        idp_before = idp.token_requests()
        assert exporter.export(make_records(["kept 0"])) is FAILURE
        time.sleep(window)
        posts = len(rx.requests)
        idp_during = idp.token_requests() - idp_before
    finally:
        exporter.shutdown(timeout_millis=1000)
    assert rx.received_bodies() == []
    # backoff 0.25-0.5, 0.5-1, 1-2, 2-4 s: at most ~6 sends in 4 s, each at most 2 POSTs
    assert posts <= 12, posts
    # forced refreshes are rate limited (1/s): no hot loop on the IdP either
    assert idp_during <= window / 1.0 + 1, idp_during


# --------------------------------------------------------------------------------------------
# Redirects
# --------------------------------------------------------------------------------------------


def test_redirect_is_a_failure_and_target_never_gets_the_token(idp, make_http_receiver):
    rx = make_http_receiver("jwt")
    target = make_http_receiver("none")
    exporter = make_exporter(idp, rx)
    try:
        _wait_first_token(exporter)
        rx.fail_next(1, 302, location=target.endpoint)
        result = exporter.export(make_records(["redirected 0"]))
        time.sleep(0.3)
    finally:
        exporter.shutdown()
    assert result is FAILURE  # the stock exporter counts a 3xx as success
    assert rx.statuses() == [302]
    assert target.requests == []
    assert rx.received_bodies() == []


# --------------------------------------------------------------------------------------------
# Headers
# --------------------------------------------------------------------------------------------


def test_stale_authorization_from_headers_argument_is_replaced(idp, otlp_http_receiver):
    rx = otlp_http_receiver
    exporter = make_exporter(idp, rx, headers={"Authorization": "Bearer old", "x-tenant": "t1"})
    try:
        result = exporter.export(make_records(["hdr 0"]))
    finally:
        exporter.shutdown()
    assert result is SUCCESS
    assert rx.statuses() == [200]
    assert rx.requests[0].token_id != token_id("old")
    assert rx.requests[0].headers.get("x-tenant") == "t1"


def test_stale_authorization_from_otlp_headers_env_is_replaced(idp, otlp_http_receiver):
    rx = otlp_http_receiver
    exporter = make_exporter(idp, rx, env={"OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer%20old,x-tenant=t2"})
    try:
        result = exporter.export(make_records(["hdr env 0"]))
    finally:
        exporter.shutdown()
    assert result is SUCCESS
    assert rx.statuses() == [200]
    assert rx.requests[0].token_id != token_id("old")
    assert rx.requests[0].headers.get("x-tenant") == "t2"


def test_custom_header_name_and_empty_scheme(idp, make_http_receiver):
    rx = make_http_receiver("jwt", header_name="X-Api-Token", scheme=None)
    exporter = make_exporter(idp, rx, header_name="X-Api-Token", scheme="")
    try:
        result = exporter.export(make_records(["custom 0"]))
    finally:
        exporter.shutdown()
    assert result is SUCCESS
    assert rx.received_bodies() == ["custom 0"]
    assert "authorization" not in rx.requests[0].headers


# --------------------------------------------------------------------------------------------
# TLS
# --------------------------------------------------------------------------------------------


def test_certificate_file_beats_ca_bundle_env(idp, make_http_receiver, tls_files, monkeypatch):
    # REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE point at the system store on this machine: plain requests
    # would let them override the exporter's CA file and fail verification. Keep them set.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    monkeypatch.setenv("CURL_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    rx = make_http_receiver("jwt", tls=True)
    assert rx.endpoint.startswith("https://")
    exporter = make_exporter(idp, rx, certificate_file=tls_files.ca_cert)
    try:
        result = exporter.export(make_records(["tls 0"]))
    finally:
        exporter.shutdown()
    assert result is SUCCESS
    assert rx.received_bodies() == ["tls 0"]


# --------------------------------------------------------------------------------------------
# IdP unreachable
# --------------------------------------------------------------------------------------------


def test_unreachable_idp_construction_is_instant_and_export_fails_cleanly(idp, otlp_http_receiver):
    rx = otlp_http_receiver
    started = time.monotonic()
    exporter = make_exporter(idp, rx, token_url=closed_port_url(), timeout=2)
    constructed_in = time.monotonic() - started
    try:
        assert constructed_in < 1.0  # generous: no network I/O happens in the constructor
        result = exporter.export(make_records(["no idp 0"]))  # must not raise
    finally:
        exporter.shutdown(timeout_millis=1000)
    assert result is FAILURE
    assert rx.requests == []  # nothing was sent without a token


class LateForwarder:
    """A TCP port that refuses connections until ``open(target_port)``, then forwards them there:
    an IdP that is unreachable at first and reachable later, at the same URL."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        self.port = self.sock.getsockname()[1]
        self._threads = []
        self._stop = threading.Event()

    def open(self, target_port: int) -> None:
        self.sock.listen(16)
        self.sock.settimeout(0.1)
        t = threading.Thread(target=self._accept, args=(target_port,), daemon=True)
        t.start()
        self._threads.append(t)

    def _accept(self, target_port):
        while not self._stop.is_set():
            try:
                client, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            upstream = socket.create_connection(("127.0.0.1", target_port))
            for a, b in ((client, upstream), (upstream, client)):
                t = threading.Thread(target=self._pipe, args=(a, b), daemon=True)
                t.start()
                self._threads.append(t)

    @staticmethod
    def _pipe(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self._stop.set()
        self.sock.close()
        for t in self._threads:
            t.join(2)


def test_records_flow_once_the_idp_becomes_reachable(idp, otlp_http_receiver):
    rx = otlp_http_receiver
    late = LateForwarder()
    try:
        exporter = make_exporter(idp, rx, token_url=f"http://127.0.0.1:{late.port}/token", timeout=1)
        try:
            assert exporter.export(make_records(["later 0"])) is FAILURE  # kept, not sent
            assert rx.requests == []
            late.open(int(idp.token_url.split(":")[2].split("/")[0]))
            # the refresher backs off meanwhile; the kept batch goes out once a token arrives
            assert rx.wait_for(1, timeout=30)
            assert exporter.export(make_records(["later 1"])) is SUCCESS
        finally:
            exporter.shutdown(timeout_millis=1000)
    finally:
        late.close()
    assert rx.received_bodies() == ["later 0", "later 1"]  # each exactly once, in order
    assert all(s == 200 for s in rx.statuses())


# --------------------------------------------------------------------------------------------
# Secrets never in output
# --------------------------------------------------------------------------------------------


@pytest.fixture
def debug_everything(caplog):
    caplog.set_level(logging.DEBUG)
    root = logging.getLogger()
    handler = logging.StreamHandler()  # to stderr, so capfd sees formatted records too
    handler.setLevel(logging.DEBUG)
    root.addHandler(handler)
    for name in ("urllib3", "requests", "otel_token_exporter", "opentelemetry"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield caplog
    finally:
        root.removeHandler(handler)


def _all_text(caplog, capfd) -> str:
    out, err = capfd.readouterr()
    records = "\n".join(
        f"{r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in caplog.records
    )
    return "\n".join([out, err, caplog.text, records])


def test_no_secret_in_debug_output_on_success_and_refresh(idp, otlp_http_receiver, debug_everything,
                                                          capfd):
    rx = otlp_http_receiver
    exporter = make_exporter(idp, rx)
    try:
        assert exporter.export(make_records(["dbg 0"])) is SUCCESS
        rx.reject_next_valid(1, 401)
        time.sleep(1.1)
        assert exporter.export(make_records(["dbg 1"])) is SUCCESS
    finally:
        exporter.shutdown()
    text = _all_text(debug_everything, capfd)
    secrets = secrets_of(idp, rx)
    assert len(secrets) >= 5
    assert "Starting new HTTP connection" in text  # urllib3 DEBUG output really was captured
    assert leaked(text, secrets) == 0
    assert "Bearer ey" not in text


def test_no_secret_in_debug_output_when_idp_fails(idp, otlp_http_receiver, debug_everything, capfd):
    rx = otlp_http_receiver
    idp.control(faults=[{"status": 401, "body": {"error": "invalid_client"}, "count": 1},
                        {"status": 500, "body": "oops", "count": 2}])
    exporter = make_exporter(idp, rx, timeout=1)
    try:
        exporter.export(make_records(["dbg fail 0"]))
        time.sleep(0.5)
    finally:
        exporter.shutdown(timeout_millis=1000)
    text = _all_text(debug_everything, capfd)
    assert "Starting new HTTP connection" in text
    assert "token refresh" in text  # the failure was reported
    assert leaked(text, secrets_of(idp, rx)) == 0
    assert idp.token_requests() >= 1  # the failing path really ran


# --------------------------------------------------------------------------------------------
# repr/str
# --------------------------------------------------------------------------------------------


def test_repr_and_str_hold_no_secret(idp, otlp_http_receiver):
    rx = otlp_http_receiver
    exporter = make_exporter(idp, rx)
    try:
        assert exporter.export(make_records(["repr 0"])) is SUCCESS
        manager = exporter.token_manager
        objects = [exporter, manager, manager._source, exporter._core.transport.session,
                   manager.get(5), manager.health()]
        text = "\n".join(f"{o!r} {o!s}" for o in objects)
    finally:
        exporter.shutdown()
    assert leaked(text, secrets_of(idp, rx)) == 0
