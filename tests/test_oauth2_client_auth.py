"""Client authentication, resource indicators and token exchange of the ``oauth2`` source, against
a standards-strict authorization server (npm oidc-provider, tests/peers/oidc: it checks every client
credential, assertion, certificate and resource itself), and against the front-layer IdP
(tests/peers/idp) where the wire format or a fault matters.

One oidc-provider serves the whole module. Zero-code runs of the same methods are in
tests/test_zero_code_client_auth.py.
"""

from __future__ import annotations

import base64
import datetime
import os
import shutil
import sys
import threading
import time

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from otel_token_exporter import ConfigurationError, TokenOTLPLogExporter
from otel_token_exporter.config import Env
from otel_token_exporter.manager import TokenManager
from otel_token_exporter.sources import build_source
from otel_token_exporter.sources.oauth2 import ClientCredentialsSource
from otel_token_exporter.token import FatalTokenError
from helpers import leaked
from peers.common import TokenValidator
from peers.idp_process import IdPNotInstalled
from peers.oidc_process import OIDCProvider
from peers.oidc_realm import RESOURCE, make_realm
from peers.oidc_realm import write_atomically as write
from peers.tls import make_tls_files

P = "OTEL_TOKEN_EXPORTER_"


@pytest.fixture(scope="module")
def realm(tmp_path_factory, tls_files):
    return make_realm(str(tmp_path_factory.mktemp("realm")), tls_files, lifetime=30)


@pytest.fixture(scope="module")
def op(realm):
    try:
        server = OIDCProvider.start(realm.config, realm.dir)
    except IdPNotInstalled as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def validator(op):
    return TokenValidator("jwt", jwks_url=op.jwks_url, audience=RESOURCE)


def source_from(env: dict):
    """The source exactly as the exporter builds it from env."""
    return build_source(Env({k: str(v) for k, v in env.items()}))


def last(op, n=1):
    reqs = op.requests()
    assert len(reqs) >= n, "the server saw too few token requests"
    return reqs[-n:] if n > 1 else reqs[-1]


def claims(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


def method_env(method, realm, op, tls_files, tmp_path) -> dict:
    return realm.client_env(method, op, tls_files, tmp_path)


# (method, the client the server authenticated, its registered method, form keys sent)
METHODS = [
    ("basic", "basic-client", "client_secret_basic", set()),
    ("post", "post-client", "client_secret_post", {"client_id", "client_secret"}),
    ("private_key_jwt", "jwt-client", "private_key_jwt", {"client_id", "client_assertion", "client_assertion_type"}),
    ("private_key_jwt-PS256", "jwt-client", "private_key_jwt", {"client_id", "client_assertion", "client_assertion_type"}),
    ("private_key_jwt-ES256", "jwt-client", "private_key_jwt", {"client_id", "client_assertion", "client_assertion_type"}),
    ("assertion_file", "assertion-client", "private_key_jwt", {"client_assertion", "client_assertion_type"}),
    ("assertion_file_with_client_id", "assertion-client", "private_key_jwt",
     {"client_id", "client_assertion", "client_assertion_type"}),
    ("tls_client_auth", "mtls-client", "tls_client_auth", {"client_id"}),
]


# -- every method, against a server that checks it -------------------------------------------------


@pytest.mark.parametrize("method,client,registered,auth_keys", METHODS, ids=[m[0] for m in METHODS])
def test_each_client_authentication_gets_a_jwt_for_the_resource(
    method, client, registered, auth_keys, realm, op, validator, tls_files, tmp_path
):
    source = source_from(method_env(method, realm, op, tls_files, tmp_path))
    token = source.fetch()
    assert validator.validate(token.value) == (True, "ok")  # signed by the server, aud = RESOURCE
    got = claims(token.value)
    assert got["client_id"] == client and got["scope"] == realm.scope
    rec = last(op)
    assert (rec["status"], rec["client_id"], rec["auth_method"]) == (200, client, registered)
    assert set(rec["form_keys"]) == {"grant_type", "resource", "scope"} | auth_keys
    assert rec["basic_auth"] is (method == "basic")
    assert rec["client_certificate"] is (method == "tls_client_auth")
    assert rec["listener"] == ("tls" if method == "tls_client_auth" else "http")


def test_private_key_jwt_signs_a_fresh_assertion_for_every_request(realm, op, tls_files, tmp_path):
    source = source_from(method_env("private_key_jwt", realm, op, tls_files, tmp_path))
    for _ in range(3):
        source.fetch()  # the server accepts each jti once: a reused assertion would fail here
    assertions = [r["assertion"] for r in last(op, 3)]
    assert len({a["claims"]["jti"] for a in assertions}) == 3
    for a in assertions:
        c = a["claims"]
        assert c["iss"] == c["sub"] == "jwt-client"
        assert c["aud"] == op.token_url
        assert 0 < c["exp"] - c["iat"] <= 60
        assert abs(c["iat"] - time.time()) < 30
        assert a["header"]["alg"] == "RS256" and a["header"]["kid"] == "rsa-1"


def _self_signed(key, cn="otel-client") -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize("alg,header,digest", [("RS256", "x5t", hashes.SHA1()), ("PS256", "x5t#S256", hashes.SHA256())])
def test_a_certificate_in_the_key_file_puts_its_thumbprint_in_the_header(
    alg, header, digest, realm, op, tmp_path
):
    # Entra ID identifies the key by the certificate's thumbprint (x5t with RS256, x5t#S256 with PS256).
    with open(realm.rsa_key_file, "rb") as f:
        key_pem = f.read()
    key = serialization.load_pem_private_key(key_pem, password=None)
    cert_pem = _self_signed(key)
    combined = tmp_path / "key-and-cert.pem"
    combined.write_bytes(key_pem + cert_pem)
    source = source_from({P + "TOKEN_URL": op.token_url, P + "CLIENT_ID": "jwt-client",
                          P + "CLIENT_KEY_FILE": combined, P + "CLIENT_KEY_ALG": alg, P + "RESOURCE": RESOURCE})
    source.fetch()  # accepted: the thumbprint header does not disturb a standard server
    cert = x509.load_pem_x509_certificate(cert_pem)
    expected = base64.urlsafe_b64encode(cert.fingerprint(digest)).rstrip(b"=").decode()
    sent = last(op)["assertion"]["header"]
    assert sent[header] == expected
    assert sent["alg"] == alg


def test_a_rotated_key_file_is_used_at_the_next_fetch(realm, op, tmp_path):
    path = tmp_path / "key.pem"
    shutil.copy(realm.rsa_key_file, path)
    source = source_from({P + "TOKEN_URL": op.token_url, P + "CLIENT_ID": "jwt-client",
                          P + "CLIENT_KEY_FILE": path, P + "RESOURCE": RESOURCE})
    source.fetch()
    shutil.copy(realm.ec_key_file, tmp_path / "ec.pem")
    # an EC key with ALG still RS256 is refused at once, naming the setting, and nothing is sent
    os.replace(tmp_path / "ec.pem", path)
    before = op.token_requests()
    with pytest.raises(FatalTokenError) as info:
        source.fetch()
    assert P + "CLIENT_KEY_ALG" in str(info.value) and op.token_requests() == before
    shutil.copy(realm.stranger_key_file, tmp_path / "new.pem")
    os.replace(tmp_path / "new.pem", path)
    with pytest.raises(FatalTokenError) as info:  # the new key is really used: the server refuses it
        source.fetch()
    assert "invalid_client" in str(info.value) and P + "CLIENT_KEY_FILE" in str(info.value)


def test_a_renewed_client_certificate_is_used_although_a_connection_is_kept_alive(realm, op, tls_files, tmp_path):
    cert, key = tmp_path / "client.pem", tmp_path / "client-key.pem"
    shutil.copy(tls_files.client_cert, cert)
    shutil.copy(tls_files.client_key, key)
    env = method_env("tls_client_auth", realm, op, tls_files, tmp_path)
    env.update({P + "TOKEN_CLIENT_CERTIFICATE": cert, P + "TOKEN_CLIENT_KEY": key})
    source = source_from(env)
    source.fetch()  # the session now holds a kept-alive TLS connection made with this certificate
    other = make_tls_files(str(tmp_path / "other"))  # a certificate the server's CA did not sign
    shutil.copy(other.client_cert, cert)
    shutil.copy(other.client_key, key)
    with pytest.raises(FatalTokenError) as info:
        source.fetch()
    assert "invalid_client" in str(info.value) and P + "TOKEN_CLIENT_CERTIFICATE" in str(info.value)
    assert [r["client_certificate"] for r in last(op, 2)] == [True, True]


# -- a client assertion written by someone else ---------------------------------------------------


def test_the_assertion_file_is_reread_and_a_briefly_empty_file_keeps_the_last_one(realm, op, tmp_path):
    path = tmp_path / "assertion"
    first = realm.client_assertion("assertion-client", op.token_url)
    write(path, first)
    source = source_from({P + "TOKEN_URL": op.token_url, P + "CLIENT_ASSERTION_FILE": path,
                          P + "RESOURCE": RESOURCE})
    source.fetch()
    second = realm.client_assertion("assertion-client", op.token_url)
    write(path, second)
    source.fetch()  # the new one at once
    with open(path, "w"):
        pass  # truncated: a writer that rewrites in place is mid-write
    source.fetch()  # the last good one, not an error
    third = realm.client_assertion("assertion-client", op.token_url)
    write(path, third)
    source.fetch()  # never the stale one once a new one exists
    jtis = [r["assertion"]["claims"]["jti"] for r in last(op, 4)]
    expected = [claims(a)["jti"] for a in (first, second, second, third)]
    assert jtis == expected
    assert all(r["status"] == 200 for r in last(op, 4))


def test_an_expired_assertion_is_not_sent(realm, op, tmp_path):
    path = write(tmp_path / "assertion", realm.client_assertion("assertion-client", op.token_url, lifetime=-5))
    source = source_from({P + "TOKEN_URL": op.token_url, P + "CLIENT_ASSERTION_FILE": path,
                          P + "RESOURCE": RESOURCE})
    before = op.token_requests()
    with pytest.raises(Exception) as info:
        source.fetch()
    assert "expired" in str(info.value) and P + "CLIENT_ASSERTION_FILE" in str(info.value)
    assert op.token_requests() == before


# -- resource indicators and extra parameters ------------------------------------------------------


def test_several_resources_are_each_their_own_parameter(realm, op):
    other = "https://otlp.test/other"
    source = source_from({P + "TOKEN_URL": op.token_url, P + "CLIENT_ID": "basic-client",
                          P + "CLIENT_SECRET": realm.basic_secret, P + "RESOURCE": f"{RESOURCE} {other}"})
    with pytest.raises(FatalTokenError) as info:
        source.fetch()
    assert last(op)["resource"] == [RESOURCE, other]  # the server parsed two values
    # ... and this server refuses an unknown one, which the message says where to fix
    assert "invalid_target" in str(info.value) and P + "RESOURCE" in str(info.value)


def test_extra_params_keep_repeated_keys(idp):
    source = source_from({P + "TOKEN_URL": idp.token_url, P + "CLIENT_ID": idp.client_id,
                          P + "CLIENT_SECRET": idp.client_secret, P + "RESOURCE": "urn:a",
                          P + "EXTRA_PARAMS": "resource=urn:b&resource=urn:c&team=x"})
    source.fetch()
    form = idp.requests()[-1]["form"]
    assert form["resource"] == ["urn:a", "urn:b", "urn:c"]
    assert form["team"] == "x"


def test_keyword_arguments_take_pairs_and_lists_and_beat_env(idp):
    exporter = TokenOTLPLogExporter(
        endpoint="http://127.0.0.1:9/v1/logs",
        env={P + "TOKEN_URL": idp.token_url, P + "CLIENT_ID": idp.client_id,
             P + "CLIENT_SECRET": idp.client_secret, P + "EXTRA_PARAMS": "a=env&b=env",
             P + "RESOURCE": "urn:from-env"},
        extra_params=[("a", "1"), ("a", "2")],
        resource=["urn:x", "urn:y"],
    )
    try:
        exporter.token_manager.get(timeout=10)
    finally:
        exporter.shutdown(timeout_millis=1000)
    form = idp.requests()[-1]["form"]
    assert form["a"] == ["1", "2"] and form["b"] == "env"
    assert form["resource"] == ["urn:x", "urn:y"]


# -- token exchange (RFC 8693) ---------------------------------------------------------------------


@pytest.mark.parametrize("method", ["basic", "private_key_jwt", "tls_client_auth"])
def test_token_exchange_issues_a_token_for_the_subject(method, realm, op, validator, tls_files, tmp_path):
    subject = write(tmp_path / "subject", realm.subject_token(sub="system:serviceaccount:apps:shipper"))
    env = method_env(method, realm, op, tls_files, tmp_path)
    env[P + "SUBJECT_TOKEN_FILE"] = subject
    token = source_from(env).fetch()
    assert validator.validate(token.value) == (True, "ok")
    got = claims(token.value)
    assert got["subject_sub"] == "system:serviceaccount:apps:shipper"
    assert got["act"] == {"sub": env[P + "CLIENT_ID"]}
    rec = last(op)
    assert rec["grant_type"] == "urn:ietf:params:oauth:grant-type:token-exchange"
    assert rec["subject_token_type"] == "urn:ietf:params:oauth:token-type:jwt"


def test_an_untrusted_subject_token_names_the_subject_settings(realm, op, tmp_path):
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject_value = realm.subject_token(key=stranger)
    subject = write(tmp_path / "subject", subject_value)
    source = source_from({P + "TOKEN_URL": op.token_url, P + "CLIENT_ID": "basic-client",
                          P + "CLIENT_SECRET": realm.basic_secret, P + "RESOURCE": RESOURCE,
                          P + "SUBJECT_TOKEN_FILE": subject})
    with pytest.raises(FatalTokenError) as info:
        source.fetch()
    text = str(info.value)
    assert "invalid_grant" in text and P + "SUBJECT_TOKEN_FILE" in text
    assert leaked(text, [subject_value, realm.basic_secret]) == 0


def test_an_echoed_opaque_subject_token_is_redacted(idp, tmp_path):
    opaque = "opaque-subject-value-0123456789"
    path = write(tmp_path / "subject", opaque)
    idp.control(faults=[{"status": 400, "body": {"error": "invalid_grant",
                                                 "error_description": f"bad subject_token {opaque}"}}])
    source = source_from({P + "TOKEN_URL": idp.token_url, P + "CLIENT_ID": idp.client_id,
                          P + "CLIENT_SECRET": idp.client_secret, P + "SUBJECT_TOKEN_FILE": path,
                          P + "SUBJECT_TOKEN_TYPE": "urn:ietf:params:oauth:token-type:access_token"})
    with pytest.raises(FatalTokenError) as info:
        source.fetch()
    assert opaque not in str(info.value) and "[REDACTED]" in str(info.value)
    assert idp.requests()[-1]["form"]["subject_token_type"] == "urn:ietf:params:oauth:token-type:access_token"


# -- what the source tells the manager and the exporter --------------------------------------------


def test_the_source_is_named_oauth2_in_the_manager():
    source = ClientCredentialsSource("https://idp.example/token", "cid", "secret-value-1")
    manager = TokenManager(source)
    assert manager.name == "oauth2"
    assert TokenManager(source, name="custom").name == "custom"


@pytest.mark.parametrize("settings,expected", [
    ({}, None),
    ({"audience": "https://api"}, "check OTEL_TOKEN_EXPORTER_AUDIENCE"),
    ({"scope": "s", "resource": "https://r"}, "check OTEL_TOKEN_EXPORTER_RESOURCE / OTEL_TOKEN_EXPORTER_SCOPE"),
], ids=["none", "audience", "resource-and-scope"])
def test_refusal_hint_names_the_settings_in_use(settings, expected):
    hint = ClientCredentialsSource("https://idp.example/token", "cid", "secret-value-1", **settings).refusal_hint()
    if expected is None:
        assert all(P + name in hint for name in ("AUDIENCE", "RESOURCE", "SCOPE")) and "none" in hint
    else:
        assert hint == expected


def test_fingerprint_follows_every_credential_file_and_holds_no_secret(realm, tls_files, tmp_path):
    files = {name: tmp_path / name for name in ("secret", "assertion", "subject")}
    files["secret"].write_text("first-secret-value")
    files["assertion"].write_text("eyJhbGciOiJub25lIn0.e30.x")
    files["subject"].write_text("subject-token-value-1")
    by_secret = ClientCredentialsSource("https://idp.example/token", "cid", client_secret_file=str(files["secret"]),
                                        subject_token_file=str(files["subject"]),
                                        client_certificate_file=tls_files.client_cert,
                                        client_key_file=tls_files.client_key)
    by_assertion = ClientCredentialsSource("https://idp.example/token", client_assertion_file=str(files["assertion"]))
    by_key = ClientCredentialsSource("https://idp.example/token", "cid", private_key_file=realm.rsa_key_file)
    inline = ClientCredentialsSource("https://idp.example/token", "cid", "inline-secret-value")
    assert inline.fingerprint() is None  # nothing that can change: the manager need not poll
    for source, path in ((by_secret, files["secret"]), (by_secret, files["subject"]),
                         (by_assertion, files["assertion"])):
        before = source.fingerprint()
        assert before == source.fingerprint()  # stable while nothing changes
        path.write_text(path.read_text()[::-1])  # same size: the content hash tells if mtime does not
        assert source.fingerprint() != before
    assert by_key.fingerprint() is not None and by_secret.fingerprint() is not None
    assert leaked(repr(by_secret.fingerprint()), ["first-secret-value"[::-1], "subject-token-value-1"[::-1]]) == 0
    assert leaked(repr(by_key.fingerprint()), realm.secrets()) == 0


# -- a fixed credential is used at once ------------------------------------------------------------


def _watch(manager):
    failed, succeeded, triggers = threading.Event(), threading.Event(), []

    def listener(trigger, outcome, duration, held, error):
        triggers.append(trigger)
        (succeeded if outcome == "success" else failed).set()

    manager.add_listener(listener)
    return failed, succeeded, triggers


def _fixed_within(manager, fix, limit: float = 2.0):
    failed, succeeded, triggers = _watch(manager)
    manager.start()
    try:
        assert failed.wait(15), "the first fetch did not fail"
        assert manager.failed_fatally and manager.health().consecutive_failures == 1
        fixed_at = time.monotonic()
        fix()
        assert succeeded.wait(limit + 3), "the corrected credential was not used"
        elapsed = time.monotonic() - fixed_at
        assert elapsed < limit, f"corrected credential used after {elapsed:.2f}s"
        assert triggers == ["initial", "credential_change"]
    finally:
        manager.close()


def test_a_corrected_secret_file_is_used_within_2s_after_invalid_client(idp, tmp_path):
    path = tmp_path / "secret"
    path.write_text("wrong-secret-value\n")
    source = source_from({P + "TOKEN_URL": idp.token_url, P + "CLIENT_ID": idp.client_id,
                          P + "CLIENT_SECRET_FILE": path})
    manager = TokenManager(source)  # default policy: a fatal error would wait 300 s
    assert manager._policy.fatal_cooldown >= 60  # noqa: SLF001 - what makes this test meaningful
    _fixed_within(manager, lambda: write(path, idp.client_secret + "\n"))
    assert [r["client_auth_ok"] for r in idp.requests()] == [False, True]


def test_a_corrected_key_file_is_used_within_2s_after_invalid_client(realm, op, tmp_path):
    path = tmp_path / "key.pem"
    shutil.copy(realm.stranger_key_file, path)
    source = source_from({P + "TOKEN_URL": op.token_url, P + "CLIENT_ID": "jwt-client",
                          P + "CLIENT_KEY_FILE": path, P + "RESOURCE": RESOURCE})

    def fix():
        shutil.copy(realm.rsa_key_file, tmp_path / "fixed.pem")
        os.replace(tmp_path / "fixed.pem", path)

    op.clear_stats()
    _fixed_within(TokenManager(source), fix)
    assert [(r["status"], r["error"]) for r in op.requests()] == [(401, "invalid_client"), (200, None)]


# -- bad settings: one ConfigurationError naming the setting -------------------------------------------


@pytest.fixture
def bad_files(tmp_path, realm):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nTm90QUtleUJ1dFNlY3JldExvb2tpbmdUZXh0\n-----END PRIVATE KEY-----\n")
    key = serialization.load_pem_private_key(open(realm.rsa_key_file, "rb").read(), password=None)
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"pw-123456")))
    unreadable = tmp_path / "a-directory.pem"  # unreadable as a file, even for root
    unreadable.mkdir()
    return {"garbage": str(garbage), "encrypted": str(encrypted), "unreadable": str(unreadable),
            "missing": str(tmp_path / "missing.pem")}


BAD = [
    ("private_key_jwt without a key", {"CLIENT_AUTH": "private_key_jwt"}, ["CLIENT_KEY_FILE"]),
    ("missing key file", {"CLIENT_KEY_FILE": "@missing"}, ["CLIENT_KEY_FILE"]),
    ("unreadable key file", {"CLIENT_KEY_FILE": "@unreadable"}, ["CLIENT_KEY_FILE", "cannot read"]),
    ("garbage key file", {"CLIENT_KEY_FILE": "@garbage"}, ["CLIENT_KEY_FILE"]),
    ("encrypted key file", {"CLIENT_KEY_FILE": "@encrypted"}, ["CLIENT_KEY_FILE", "encrypted"]),
    ("RSA key with ES256", {"CLIENT_KEY_FILE": "@rsa", "CLIENT_KEY_ALG": "ES256"}, ["CLIENT_KEY_ALG", "RS256"]),
    ("EC key with the default RS256", {"CLIENT_KEY_FILE": "@ec"}, ["CLIENT_KEY_ALG", "ES256"]),
    ("unsupported alg", {"CLIENT_KEY_FILE": "@rsa", "CLIENT_KEY_ALG": "HS256"}, ["CLIENT_KEY_ALG"]),
    ("secret and key file", {"CLIENT_SECRET": "s3cr3t-value", "CLIENT_KEY_FILE": "@rsa"},
     ["CLIENT_SECRET", "CLIENT_KEY_FILE"]),
    ("assertion file with basic", {"CLIENT_AUTH": "basic", "CLIENT_ASSERTION_FILE": "/a"},
     ["CLIENT_ASSERTION_FILE", "CLIENT_AUTH"]),
    ("tls_client_auth without a certificate", {"CLIENT_AUTH": "tls_client_auth"}, ["TOKEN_CLIENT_CERTIFICATE"]),
    ("client certificate over http", {"CLIENT_AUTH": "tls_client_auth", "TOKEN_CLIENT_CERTIFICATE": "@cert"},
     ["TOKEN_CLIENT_CERTIFICATE", "https"]),
    ("unknown client auth", {"CLIENT_AUTH": "kerberos", "CLIENT_SECRET": "s3cr3t-value"}, ["CLIENT_AUTH"]),
    ("key id without private_key_jwt", {"CLIENT_SECRET": "s3cr3t-value", "CLIENT_KEY_ID": "k"}, ["CLIENT_KEY_ID"]),
    ("relative resource", {"CLIENT_SECRET": "s3cr3t-value", "RESOURCE": "https://ok logs"}, ["RESOURCE"]),
    ("subject token type alone", {"CLIENT_SECRET": "s3cr3t-value",
                                  "SUBJECT_TOKEN_TYPE": "urn:ietf:params:oauth:token-type:jwt"},
     ["SUBJECT_TOKEN_TYPE", "SUBJECT_TOKEN_FILE"]),
]


@pytest.mark.parametrize("settings,named", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
@pytest.mark.usefixtures("no_otel_env")
def test_bad_settings_are_one_configuration_error_naming_the_setting(settings, named, bad_files, realm, tls_files):
    files = {**bad_files, "rsa": realm.rsa_key_file, "ec": realm.ec_key_file, "cert": tls_files.client_cert}
    env = {P + "TOKEN_URL": "http://127.0.0.1:9/token", P + "CLIENT_ID": "cid",
           "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://127.0.0.1:9/v1/logs"}
    env.update({P + k: files[v[1:]] if v.startswith("@") else v for k, v in settings.items()})
    with pytest.raises(ConfigurationError) as info:
        TokenOTLPLogExporter(env=env)
    message = str(info.value)
    assert "\n" not in message and info.value.__cause__ is None
    for name in named:
        assert name in message
    assert leaked(message, ["s3cr3t-value", "Tm90QUtleUJ1dFNlY3JldExvb2tpbmdUZXh0", *realm.secrets()]) == 0


def test_without_pyjwt_private_key_jwt_names_the_extra(monkeypatch, realm):
    monkeypatch.setitem(sys.modules, "jwt", None)  # "import jwt" now fails as if not installed
    with pytest.raises(ConfigurationError) as info:
        ClientCredentialsSource("https://idp.example/token", "cid", private_key_file=realm.rsa_key_file)
    assert "[jwt]" in str(info.value) and "private_key_jwt" in str(info.value)


def test_repr_shows_no_credential(realm, tls_files, tmp_path):
    source = ClientCredentialsSource("https://idp.example/token?k=v", "cid", private_key_file=realm.rsa_key_file,
                                     key_id="rsa-1", client_certificate_file=tls_files.client_cert,
                                     client_key_file=tls_files.client_key)
    form, _ = source._request()  # noqa: SLF001 - an assertion now exists in the source
    text = repr(source) + repr(source._auth)  # noqa: SLF001
    assert "private_key_jwt" in text and "k=v" not in text
    key_lines = tls_files.read("client_key").decode().splitlines()[1:-1]
    assert leaked(text, [dict(form)["client_assertion"], *realm.secrets(), *key_lines]) == 0
