"""Zero-code (examples/zero_code_app.py under ``opentelemetry-instrument``, ``OTEL_LOGS_EXPORTER=
token_otlp``) with every client authentication method against oidc-provider (tests/peers/oidc), which
checks each credential itself and issues 3-second JWT access tokens for ``OTEL_TOKEN_EXPORTER_RESOURCE``;
the receiver verifies them against its JWKS, audience included.

Delivery: every record, over HTTP for each method (basic, post, private_key_jwt, a client assertion
file rotated every 1.5 s, tls_client_auth) and token exchange, over gRPC for private_key_jwt; no
credential or token in the app's output with every logger at DEBUG.
Errors: invalid_client (for each credential kind), invalid_scope and invalid_target each give one log
line naming the source (``oauth2``) and the setting to fix, and nothing secret. These runs are
independent and mostly wait (the exporter's shutdown drain), so they run concurrently.

Found on the way: the first token fetch starts while ``opentelemetry-instrument`` builds the
exporter, before the app configures logging. A fatal error reported then is printed by Python's
last-resort handler (no ``ERROR:name:`` prefix) or, once the logging instrumentation has put its
handler on the root logger, goes only into the OTLP pipeline that has no token to send it; the
manager reports each error once, so it never shows. The error tests therefore delay the server's
answers by 2 s; the early-report gap itself is the manager's/exporter's to close.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from helpers import ZERO_CODE_APP, REPO_ROOT, instrument_command, leaked, numbers, run_instrumented, zero_code_env
from peers.common import TokenValidator
from peers.idp_process import IdPNotInstalled
from peers.oidc_process import OIDCProvider
from peers.oidc_realm import RESOURCE, make_realm, write_atomically
from peers.otlp_grpc import OTLPGrpcReceiver
from peers.otlp_http import OTLPHttpReceiver
from peers.tls import make_tls_files

pytestmark = pytest.mark.slow

P = "OTEL_TOKEN_EXPORTER_"
LIFETIME = 3  # JWT exp is whole seconds: each token really lives 2-3 s
RECORDS, SECONDS = 300, 5


@pytest.fixture(scope="module")
def realm(tmp_path_factory, tls_files):
    return make_realm(str(tmp_path_factory.mktemp("realm")), tls_files, lifetime=LIFETIME)


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


@pytest.fixture
def receivers(op):
    """Factory for receivers that verify the oidc-provider's JWTs for RESOURCE; stopped at teardown.
    The server's record of earlier token requests is cleared first (it serves the whole module)."""
    op.clear_stats()
    made = []

    def make(kind="http"):
        validator = TokenValidator("jwt", jwks_url=op.jwks_url, audience=RESOURCE)
        rx = (OTLPGrpcReceiver if kind == "grpc" else OTLPHttpReceiver)(validator)
        made.append(rx)
        return rx

    yield make
    for rx in made:
        rx.stop()


def debug_env(rx, settings: dict, **extra) -> dict:
    return zero_code_env(
        rx, None, APP_RECORDS=RECORDS, APP_SECONDS=SECONDS, APP_LOG_LEVEL="DEBUG",
        OTEL_LOG_LEVEL="debug", OTEL_BLRP_SCHEDULE_DELAY="200", **settings, **extra,
    )


def key_lines(*pems: bytes) -> list[str]:
    return [ln for pem in pems for ln in pem.decode().splitlines() if ln and not ln.startswith("-----")]


class AssertionRotator:
    """Someone else's helper (kubelet, spiffe-helper) renewing the client assertion every ``period``
    s, alternately by atomic replace and by rewriting in place (the file is briefly empty)."""

    def __init__(self, realm, op, path: str, period: float = 1.5):
        self.realm, self.op, self.path, self.period = realm, op, path, period
        self.written: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)

    def _run(self):
        n = 0
        while not self._stop.wait(self.period):
            value = self.realm.client_assertion("assertion-client", self.op.token_url, lifetime=20)
            self.written.append(value)
            n += 1
            if n % 2:
                write_atomically(self.path, value)
            else:
                with open(self.path, "w") as f:
                    f.flush()
                    os.fsync(f.fileno())
                    time.sleep(0.05)  # empty for a moment
                    f.write(value)


def check_delivery(proc, rx, op, client_id, secrets, *, grpc_transport=False):
    got = numbers(rx.received_bodies(), prefix="app record")
    delivered = len(set(got))
    tokens = {r.token_id for r in rx.requests if r.accepted}
    ok = grpc.StatusCode.OK if grpc_transport else 200
    refused = sum(1 for s in rx.statuses() if s != ok)
    requests = [r for r in op.requests() if r["client_id"] == client_id]
    print(f"\n{client_id}: {delivered}/{RECORDS} delivered, {len(tokens)} tokens, {len(requests)} token "
          f"requests, {len(rx.requests)} OTLP requests ({refused} refused)")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "app done" in proc.stderr and "DEBUG:urllib3" in proc.stderr  # every logger at DEBUG
    assert delivered == RECORDS, f"{RECORDS - delivered} records lost"
    assert len(tokens) >= 2  # the run outlived a token: a refresh with the same method worked
    assert requests and all(r["status"] == 200 for r in requests), [r["error"] for r in requests]
    assert leaked(proc.stdout + proc.stderr, [*secrets, *(r.token for r in rx.requests if r.token)]) == 0
    return requests


DELIVERY = ["basic", "post", "private_key_jwt", "assertion_file", "tls_client_auth"]
CLIENT_OF = {"basic": "basic-client", "post": "post-client", "private_key_jwt": "jwt-client",
             "assertion_file": "assertion-client", "tls_client_auth": "mtls-client"}


@pytest.mark.parametrize("method", DELIVERY)
def test_zero_code_http_delivers_every_record(method, realm, op, receivers, tls_files, tmp_path):
    rx = receivers("http")
    settings = realm.client_env(method, op, tls_files, tmp_path)
    secrets = [*realm.secrets(), *key_lines(tls_files.read("client_key"))]
    if method == "assertion_file":
        with open(settings[P + "CLIENT_ASSERTION_FILE"]) as f:
            secrets.append(f.read())
        with AssertionRotator(realm, op, settings[P + "CLIENT_ASSERTION_FILE"]) as rotator:
            proc = run_instrumented(debug_env(rx, settings), timeout=90)
        secrets += rotator.written
    else:
        proc = run_instrumented(debug_env(rx, settings), timeout=90)
    requests = check_delivery(proc, rx, op, CLIENT_OF[method], secrets)
    assert all(r["resource"] == RESOURCE for r in requests)
    if method == "assertion_file":
        assert len(rotator.written) >= 2
        used = {r["assertion"]["claims"]["jti"] for r in requests}
        assert len(used) >= 2, "the rotated assertion was never picked up"
    if method == "private_key_jwt":
        jtis = [r["assertion"]["claims"]["jti"] for r in requests]
        assert len(set(jtis)) == len(jtis)


def test_zero_code_grpc_private_key_jwt_delivers_every_record(realm, op, receivers, tls_files, tmp_path):
    rx = receivers("grpc")
    settings = realm.client_env("private_key_jwt", op, tls_files, tmp_path)
    env = debug_env(None, settings, OTEL_EXPORTER_OTLP_PROTOCOL="grpc", OTEL_EXPORTER_OTLP_LOGS_ENDPOINT=rx.url)
    proc = run_instrumented(env, timeout=90)
    check_delivery(proc, rx, op, "jwt-client", realm.secrets(), grpc_transport=True)


def test_zero_code_token_exchange_delivers_every_record(realm, op, receivers, tls_files, tmp_path):
    rx = receivers("http")
    subject = realm.subject_token(sub="system:serviceaccount:apps:shipper", lifetime=120)
    settings = realm.client_env("private_key_jwt", op, tls_files, tmp_path)
    settings[P + "SUBJECT_TOKEN_FILE"] = write_atomically(tmp_path / "subject", subject)
    proc = run_instrumented(debug_env(rx, settings), timeout=90)
    requests = check_delivery(proc, rx, op, "jwt-client", [*realm.secrets(), subject])
    assert all(r["grant_type"] == "urn:ietf:params:oauth:grant-type:token-exchange" for r in requests)
    exchanged = {jwt.decode(r.token, options={"verify_signature": False})["subject_sub"]
                 for r in rx.requests if r.accepted}
    assert exchanged == {"system:serviceaccount:apps:shipper"}


# -- errors: one line naming the setting ---------------------------------------------------------


def _error_cases(realm, op, tls_files, directory):
    """name -> (settings, error code, texts the error line must contain, extra secrets)."""
    os.makedirs(directory, exist_ok=True)
    env = realm.client_env
    wrong_secret = "wrong-Secret/value+9%"
    secret_file = os.path.join(directory, "secret")
    with open(secret_file, "w") as f:
        f.write(wrong_secret + "\n")
    stranger_key = os.path.join(directory, "stranger.pem")
    shutil.copy(realm.stranger_key_file, stranger_key)
    forged = realm.workload_jwt(sub="assertion-client", aud=op.token_url, iss="assertion-client",
                                key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    assertion_file = write_atomically(os.path.join(directory, "forged-assertion"), forged)
    other_ca = make_tls_files(os.path.join(directory, "other-ca"))
    cid = "OTEL_TOKEN_EXPORTER_CLIENT_ID="

    def d(method, **changes):
        settings = env(method, op, tls_files, directory)
        settings.update(changes)
        return {k: v for k, v in settings.items() if v is not None}

    return {
        "invalid_client-CLIENT_SECRET": (
            d("basic", **{P + "CLIENT_SECRET": wrong_secret}), "invalid_client",
            [cid + "'basic-client'", P + "CLIENT_SECRET"], [wrong_secret]),
        "invalid_client-CLIENT_SECRET_FILE": (
            d("post", **{P + "CLIENT_SECRET": None, P + "CLIENT_SECRET_FILE": secret_file}), "invalid_client",
            [cid + "'post-client'", P + "CLIENT_SECRET_FILE"], [wrong_secret]),
        "invalid_client-CLIENT_KEY_FILE": (
            d("private_key_jwt", **{P + "CLIENT_KEY_FILE": stranger_key}), "invalid_client",
            [cid + "'jwt-client'", P + "CLIENT_KEY_FILE"], []),
        "invalid_client-CLIENT_ASSERTION_FILE": (
            d("assertion_file", **{P + "CLIENT_ASSERTION_FILE": assertion_file}), "invalid_client",
            [P + "CLIENT_ID (not set", P + "CLIENT_ASSERTION_FILE"], [forged]),
        "invalid_client-TOKEN_CLIENT_CERTIFICATE": (
            d("tls_client_auth", **{P + "TOKEN_CLIENT_CERTIFICATE": other_ca.client_cert,
                                    P + "TOKEN_CLIENT_KEY": other_ca.client_key}), "invalid_client",
            [cid + "'mtls-client'", P + "TOKEN_CLIENT_CERTIFICATE"], key_lines(other_ca.read("client_key"))),
        "invalid_scope-SCOPE": (
            d("basic", **{P + "SCOPE": "admin"}), "invalid_scope", [P + "SCOPE='admin'"], []),
        "invalid_target-RESOURCE": (
            d("basic", **{P + "RESOURCE": "https://unknown.test/logs"}), "invalid_target",
            [P + "RESOURCE='https://unknown.test/logs'"], []),
    }


ERRORS = ["invalid_client-CLIENT_SECRET", "invalid_client-CLIENT_SECRET_FILE", "invalid_client-CLIENT_KEY_FILE",
          "invalid_client-CLIENT_ASSERTION_FILE", "invalid_client-TOKEN_CLIENT_CERTIFICATE",
          "invalid_scope-SCOPE", "invalid_target-RESOURCE"]


@pytest.fixture(scope="module")
def error_runs(realm, op, tls_files, tmp_path_factory):
    """Every error case run once, concurrently: name -> (completed process, case)."""
    cases = _error_cases(realm, op, tls_files, str(tmp_path_factory.mktemp("errors")))
    assert sorted(cases) == sorted(ERRORS)
    procs = {}
    # The first fetch starts with the exporter, before the app has configured logging: a report
    # logged then reaches no stream (see the module docstring). The server answers 2 s late so the
    # report comes once the app's logging is in place; a short fatal cool-down makes later attempts
    # (logged at DEBUG) run within the app's lifetime too.
    op.delay_tokens(2.0)
    try:
        for name, (settings, *_rest) in cases.items():
            env = zero_code_env(None, None, OTEL_EXPORTER_OTLP_LOGS_ENDPOINT="http://127.0.0.1:9/v1/logs",
                                APP_RECORDS=5, APP_SECONDS=4, APP_LOG_LEVEL="DEBUG", OTEL_LOG_LEVEL="debug",
                                OTEL_TOKEN_EXPORTER_FATAL_COOLDOWN="0.3", **settings)
            procs[name] = subprocess.Popen([instrument_command(), sys.executable, ZERO_CODE_APP], env=env,
                                           cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                           text=True)
        results = {}
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=90)
            results[name] = (subprocess.CompletedProcess(proc.args, proc.returncode, out, err), cases[name])
        return results
    finally:
        op.delay_tokens(0)
        for proc in procs.values():  # only after a failure: our own children, by their pid
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


@pytest.mark.parametrize("case", ERRORS)
def test_zero_code_error_is_one_line_naming_the_setting(case, error_runs, realm, tls_files):
    proc, (settings, error, named, extra_secrets) = error_runs[case]
    assert proc.returncode == 0 and "app done" in proc.stderr  # the app itself runs on
    stderr = proc.stderr.splitlines()
    token_path = "/token"
    assert any(ln.startswith("DEBUG:urllib3") and f"POST {token_path}" in ln for ln in stderr), \
        "no token request was logged at DEBUG"  # so the leak check below covers that level
    # Logged before the app configured logging, the report has no "ERROR:name:" prefix.
    report = "token refresh (initial) from oauth2 failed: "
    lines = [ln for ln in stderr if ln.removeprefix("ERROR:otel_token_exporter:").startswith(report)]
    assert len(lines) == 1, '\n'.join(ln for ln in stderr if 'urllib3' not in ln)  # reported once, not once per attempt
    assert sum("otel_token_exporter" in ln and error in ln for ln in stderr) <= 1
    line = lines[0]
    assert error in line and "next try in" in line  # the whole report on one line
    for text in named:
        assert text in line
    assert "Traceback" not in proc.stderr
    secrets = [*realm.secrets(), *key_lines(tls_files.read("client_key")), *extra_secrets]
    assert leaked(proc.stdout + proc.stderr, secrets) == 0
