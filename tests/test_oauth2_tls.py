"""The token endpoint over TLS: verification is on, a private CA is configurable, never silently off."""

from __future__ import annotations

import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from otel_token_exporter import ClientCredentialsSource, TransientTokenError


class _TokenHandler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.dumps({"access_token": "tls-issued-token", "token_type": "Bearer", "expires_in": 60}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def tls_token_endpoint(tls_files):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TokenHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls_files.server_cert, tls_files.server_key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/token"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_a_private_ca_file_verifies_the_token_endpoint(tls_token_endpoint, tls_files):
    source = ClientCredentialsSource(tls_token_endpoint, "client", "secret", verify=tls_files.ca_cert)
    assert source.fetch().value == "tls-issued-token"


def test_the_configured_ca_wins_over_a_ca_bundle_in_the_environment(
    tls_token_endpoint, tls_files, monkeypatch, tmp_path
):
    # requests lets REQUESTS_CA_BUNDLE override a session's CA file; ours must not: the endpoint's
    # CA is in the environment bundle, but the configured CA is another one, so this must fail.
    from peers.tls import make_tls_files

    other = make_tls_files(str(tmp_path / "other"))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", tls_files.ca_cert)
    source = ClientCredentialsSource(tls_token_endpoint, "client", "secret", verify=other.ca_cert)
    with pytest.raises(TransientTokenError) as failure:
        source.fetch()
    assert "TLS error talking to token endpoint https://127.0.0.1" in str(failure.value)


def test_system_roots_do_not_trust_a_private_ca(tls_token_endpoint, monkeypatch):
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    source = ClientCredentialsSource(tls_token_endpoint, "client", "secret")
    with pytest.raises(TransientTokenError) as failure:
        source.fetch()
    assert "TLS error" in str(failure.value)


def test_the_exporter_takes_the_ca_from_its_setting(tls_token_endpoint, tls_files):
    from otel_token_exporter import TokenOTLPLogExporter

    exporter = TokenOTLPLogExporter(
        endpoint="http://127.0.0.1:9/v1/logs",
        env={
            "OTEL_TOKEN_EXPORTER_TOKEN_URL": tls_token_endpoint,
            "OTEL_TOKEN_EXPORTER_CLIENT_ID": "client",
            "OTEL_TOKEN_EXPORTER_CLIENT_SECRET": "secret",
            "OTEL_TOKEN_EXPORTER_TOKEN_CA_FILE": tls_files.ca_cert,
        },
    )
    try:
        held = exporter.token_manager.get(timeout=10)
        assert held.value == "tls-issued-token"
    finally:
        exporter.shutdown(timeout_millis=1000)
