"""Fixtures for real test peers: an OAuth2 IdP (node, oauth2-mock-server), OTLP/HTTP and
OTLP/gRPC receivers (logs, traces, metrics) that verify bearer tokens, and a throw-away PKI.

All peers listen on 127.0.0.1 with OS-chosen ports and are stopped at teardown.
"""

from __future__ import annotations

import os
import sys

import pytest

_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from peers.common import TokenValidator  # noqa: E402
from peers.idp_process import IdP, IdPNotInstalled  # noqa: E402
from peers.otlp_grpc import OTLPGrpcReceiver  # noqa: E402
from peers.otlp_http import OTLPHttpReceiver  # noqa: E402
from peers.tls import make_tls_files  # noqa: E402

IDP_CLIENT_ID = "test-client"
# contains characters that RFC 6749 2.3.1 Basic auth must form-urlencode
IDP_CLIENT_SECRET = "s3cret:with/odd+chars%"


@pytest.fixture
def idp():
    """A running IdP; lifetime 3600 s by default, change it with ``idp.control(lifetime=3)``."""
    try:
        server = IdP.start(client_id=IDP_CLIENT_ID, client_secret=IDP_CLIENT_SECRET)
    except IdPNotInstalled as e:
        pytest.fail(str(e), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def no_otel_env(monkeypatch):
    """No OTEL_* setting from the machine leaks into a test (use with pytest.mark.usefixtures)."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory):
    return make_tls_files(str(tmp_path_factory.mktemp("tls")))


def _validator(request, mode, static_token, clock_offset, **kw):
    if mode == "jwt":
        idp_server = request.getfixturevalue("idp")
        return TokenValidator("jwt", jwks_url=idp_server.jwks_url, clock_offset=clock_offset, **kw)
    return TokenValidator(mode, static_token=static_token, clock_offset=clock_offset, **kw)


def _receiver_factory(request, receiver_class):
    """make(mode="jwt"|"static"|"none", static_token=None, clock_offset=0.0, tls=False,
    client_auth=False, validator_kw=None, **receiver_kw) -> receiver; all stopped at teardown.
    mode "jwt" verifies tokens from the ``idp`` fixture; tls=True uses ``tls_files``;
    client_auth=True requires a client certificate signed by the test CA."""
    made = []

    def make(mode="jwt", static_token=None, clock_offset=0.0, tls=False, client_auth=False,
             validator_kw=None, **kw):
        v = _validator(request, mode, static_token, clock_offset, **(validator_kw or {}))
        if tls:
            files = request.getfixturevalue("tls_files")
            kw["tls"] = (files.server_cert, files.server_key)
            if client_auth:
                kw["client_ca"] = files.ca_cert
        rx = receiver_class(v, **kw)
        made.append(rx)
        return rx

    return make, made


@pytest.fixture
def make_http_receiver(request):
    """Factory for OTLPHttpReceiver (see ``_receiver_factory`` for the arguments)."""
    make, made = _receiver_factory(request, OTLPHttpReceiver)
    yield make
    for rx in made:
        rx.stop()


@pytest.fixture
def make_grpc_receiver(request):
    """Factory for OTLPGrpcReceiver (see ``_receiver_factory`` for the arguments)."""
    make, made = _receiver_factory(request, OTLPGrpcReceiver)
    yield make
    for rx in made:
        rx.stop()


@pytest.fixture
def otlp_http_receiver(make_http_receiver):
    """OTLP/HTTP receiver verifying JWTs issued by the ``idp`` fixture."""
    return make_http_receiver("jwt")


@pytest.fixture
def otlp_grpc_receiver(make_grpc_receiver):
    """OTLP/gRPC receiver (plaintext) verifying JWTs issued by the ``idp`` fixture."""
    return make_grpc_receiver("jwt")
