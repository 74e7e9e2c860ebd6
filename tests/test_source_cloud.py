"""google and azure adapters with the real google-auth / azure-identity libraries against loopback
token endpoints (no mocks of the libraries)."""

from __future__ import annotations

import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from otel_token_exporter import FatalTokenError, TokenManager
from otel_token_exporter.config import Env
from otel_token_exporter.sources import build_source

google_sa = pytest.importorskip("google.oauth2.service_account")
azure_identity = pytest.importorskip("azure.identity")
from otel_token_exporter.sources.azure import AzureCredentialSource  # noqa: E402
from otel_token_exporter.sources.google import GoogleCredentialsSource  # noqa: E402


class TokenEndpoint:
    """A tiny OAuth token endpoint (optionally TLS) that also serves Entra-style OIDC metadata."""

    def __init__(self, *, tls=None, expires_in=3600, extra=None):
        self.expires_in = expires_in
        self.extra = extra or {}
        self.posts: list = []
        self.fail_with: int | None = None
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _json(self, status, obj):
                body = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):  # noqa: N802 - OIDC discovery for MSAL
                tenant = self.path.strip("/").split("/")[0]
                base = endpoint.url + "/" + tenant
                self._json(200, {
                    "token_endpoint": base + "/oauth2/v2.0/token",
                    "authorization_endpoint": base + "/oauth2/v2.0/authorize",
                    "issuer": base + "/v2.0",
                    "device_authorization_endpoint": base + "/oauth2/v2.0/devicecode",
                })

            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                endpoint.posts.append(form)
                if endpoint.fail_with:
                    self._json(endpoint.fail_with, {"error": "invalid_client", "error_description": "nope"})
                    return
                n = len(endpoint.posts)
                self._json(200, {"access_token": f"cloud-token-{n}", "token_type": "Bearer",
                                 "expires_in": endpoint.expires_in, **endpoint.extra})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(tls.server_cert, tls.server_key)
            self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def stop(self):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture
def endpoint():
    made = []

    def make(**kw):
        ep = TokenEndpoint(**kw)
        made.append(ep)
        return ep

    yield make
    for ep in made:
        ep.stop()


def service_account_credentials(token_uri):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    info = {"type": "service_account", "project_id": "test", "private_key_id": "k1", "private_key": pem,
            "client_email": "exporter@test.iam.gserviceaccount.com", "client_id": "1",
            "token_uri": token_uri}
    return google_sa.Credentials.from_service_account_info(
        info, scopes=["https://www.googleapis.com/auth/cloud-platform"])


# -- google --------------------------------------------------------------------------------------


def test_google_service_account_token_and_expiry(endpoint):
    ep = endpoint(expires_in=1200)
    source = GoogleCredentialsSource(service_account_credentials(ep.url + "/token"))
    token = source.fetch()
    assert token.value == "cloud-token-1"
    assert 1190 < token.expires_at - time.monotonic() <= 1200
    assert ep.posts[0]["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    assert ep.posts[0]["assertion"].count(".") == 2  # a signed JWT assertion from our generated key


def test_google_refreshes_on_every_fetch_through_the_manager(endpoint):
    ep = endpoint(expires_in=2)
    manager = TokenManager(GoogleCredentialsSource(service_account_credentials(ep.url + "/token")))
    try:
        manager.start()
        assert manager.get(10).value == "cloud-token-1"
        deadline = time.monotonic() + 10
        while manager.get(10).value == "cloud-token-1" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert manager.get(10).value == "cloud-token-2"
    finally:
        manager.close()


def test_google_refusal_is_fatal_and_names_the_credentials(endpoint):
    ep = endpoint()
    ep.fail_with = 400
    with pytest.raises(FatalTokenError, match="ServiceAccount|Credentials"):
        GoogleCredentialsSource(service_account_credentials(ep.url + "/token")).fetch()


def test_google_selected_by_name_with_scopes():
    source = build_source(Env({"OTEL_TOKEN_EXPORTER_SOURCE": "google",
                               "OTEL_TOKEN_EXPORTER_GOOGLE_SCOPES": "a b,c"}))
    assert isinstance(source, GoogleCredentialsSource) and source.scopes == ("a", "b", "c")


# -- azure ---------------------------------------------------------------------------------------


def azure_credential(ep, tls_files):
    return azure_identity.ClientSecretCredential(
        "tenant1", "client1", "azure-secret-value",
        authority=ep.url, disable_instance_discovery=True, connection_verify=tls_files.ca_cert,
    )


def test_azure_client_secret_credential_against_loopback_authority(endpoint, tls_files):
    ep = endpoint(tls=tls_files, expires_in=1800)
    source = AzureCredentialSource(azure_credential(ep, tls_files), "api://otel/.default")
    token = source.fetch()
    assert token.value == "cloud-token-1"
    assert 1790 < token.expires_at - time.monotonic() <= 1801
    assert ep.posts[0]["grant_type"] == "client_credentials"
    assert ep.posts[0]["scope"].split()[0] == "api://otel/.default"


def test_azure_refresh_on_becomes_the_refresh_hint(endpoint, tls_files):
    ep = endpoint(tls=tls_files, expires_in=7200, extra={"refresh_in": 600})
    token = AzureCredentialSource(azure_credential(ep, tls_files), "api://otel/.default").fetch()
    assert token.refresh_hint is not None
    assert 590 < token.refresh_hint - time.monotonic() <= 601


def test_azure_refusal_is_fatal_and_never_shows_the_secret(endpoint, tls_files):
    ep = endpoint(tls=tls_files)
    ep.fail_with = 401
    with pytest.raises(FatalTokenError) as err:
        AzureCredentialSource(azure_credential(ep, tls_files), "api://otel/.default").fetch()
    assert "ClientSecretCredential" in str(err.value) and "azure-secret-value" not in str(err.value)


def test_azure_inferred_from_scope_setting():
    source = build_source(Env({"OTEL_TOKEN_EXPORTER_AZURE_SCOPE": "api://x/.default"}))
    assert isinstance(source, AzureCredentialSource) and source.scope == "api://x/.default"
