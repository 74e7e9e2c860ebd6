"""``otel-token-exporter check`` (``python -m otel_token_exporter check``) against the real peers:
the IdP and OTLP receivers (HTTP and gRPC) that verify its JWTs.

Each run is a subprocess with its own environment. A good configuration exits 0 with one OK line
per signal; a wrong client secret, a wrong audience, an unreachable endpoint and a protocol
mismatch each exit 1 with ONE ``FAIL`` line naming the setting to fix; no run prints a secret or
a token; every run ends well within 15 s (a hanging endpoint within its --timeout);
``--json`` is one JSON document; ``--no-send`` sends nothing; ``--config-file`` reads a YAML file
as opentelemetry-configuration does.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
from conftest import IDP_CLIENT_SECRET
from helpers import REPO_ROOT, leaked

from otel_token_exporter import _check_targets

SIGNALS = ("logs", "traces", "metrics")
WRONG_SECRET = "not-the-secret-9Zq/+"
AUDIENCE = "https://otlp.example.test"


def check_env(idp, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_") and k != "PYTHONPATH"}
    env.update({
        "OTEL_TOKEN_EXPORTER_TOKEN_URL": idp.token_url,
        "OTEL_TOKEN_EXPORTER_CLIENT_ID": idp.client_id,
        "OTEL_TOKEN_EXPORTER_CLIENT_SECRET": IDP_CLIENT_SECRET,
        "OTEL_LOGS_EXPORTER": "token_otlp",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
    })
    env.update(extra)
    return env


class Run:
    def __init__(self, proc: subprocess.CompletedProcess, seconds: float):
        self.rc, self.out, self.err, self.seconds = proc.returncode, proc.stdout, proc.stderr, seconds
        self.lines = self.out.splitlines()
        self.failures = [line for line in self.lines if line.startswith("FAIL")]
        self.oks = [line for line in self.lines if line.startswith("OK")]

    def ok_for(self, label: str) -> list[str]:
        return [line for line in self.oks if line.split()[1] == f"{label}:"]


def run_check(env: dict, *args: str, timeout: float = 30.0) -> Run:
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "otel_token_exporter", "check", *args], env=env, cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return Run(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), time.monotonic() - started)


def assert_clean(run: Run, *receivers, secrets=()) -> None:
    """Finished in time, no traceback, and no secret or token anywhere in its output."""
    assert run.seconds < 15, f"took {run.seconds:.1f}s"
    assert "Traceback" not in run.err, run.err[-2000:]
    tokens = [r.token for rx in receivers for r in rx.requests]
    text = run.out + run.err
    assert leaked(text, [IDP_CLIENT_SECRET, WRONG_SECRET, *secrets, *tokens]) == 0
    assert "eyJ" not in text  # no JWT (header or payload) in any form


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_failure(run: Run) -> str:
    assert run.rc == 1, run.out
    assert len(run.failures) == 1, run.out
    return run.failures[0]


# -- a good configuration ---------------------------------------------------------------------
@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_good_configuration_all_three_signals_exit_0_one_line_each(idp, make_http_receiver, make_grpc_receiver,
                                                                    protocol):
    rx = make_grpc_receiver("jwt") if protocol == "grpc" else make_http_receiver("jwt")
    env = check_env(idp, OTEL_EXPORTER_OTLP_PROTOCOL=protocol, OTEL_EXPORTER_OTLP_ENDPOINT=rx.url,
                    OTEL_TRACES_EXPORTER="token_otlp", OTEL_METRICS_EXPORTER="token_otlp")
    run = run_check(env)
    assert run.rc == 0, run.out + run.err
    assert not run.failures
    for signal in SIGNALS:
        assert len(run.ok_for(signal)) == 1, run.out
    assert any(line.startswith("OK") and "token from oauth2" in line and f"iss={idp.issuer}" in line
               for line in run.lines), run.out
    assert rx.wait_until(lambda r: len(r.requests) >= 3, timeout=2)
    assert sorted(r.signal for r in rx.requests) == sorted(SIGNALS)
    assert all(r.accepted for r in rx.requests)
    assert len({r.token_id for r in rx.requests}) == 1  # one token manager for the three signals
    assert "OTEL_TOKEN_EXPORTER_CLIENT_SECRET=***" in run.out
    assert_clean(run, rx)


# -- each failure is one line naming the setting ------------------------------------------------
def test_wrong_client_secret_names_the_secret_setting(idp, make_http_receiver):
    rx = make_http_receiver("jwt")
    run = run_check(check_env(idp, OTEL_EXPORTER_OTLP_LOGS_ENDPOINT=rx.endpoint,
                              OTEL_TOKEN_EXPORTER_CLIENT_SECRET=WRONG_SECRET))
    line = one_failure(run)
    assert "OTEL_TOKEN_EXPORTER_CLIENT_SECRET" in line and "invalid_client" in line, line
    assert not rx.requests  # no token: nothing was sent
    assert_clean(run, rx)


@pytest.mark.parametrize("transport, audience, named", [
    ("http", "https://someone-else.test", ["OTEL_TOKEN_EXPORTER_AUDIENCE"]),
    ("grpc", None, ["OTEL_TOKEN_EXPORTER_AUDIENCE", "OTEL_TOKEN_EXPORTER_RESOURCE", "OTEL_TOKEN_EXPORTER_SCOPE"]),
], ids=["http-wrong-audience", "grpc-no-audience"])
def test_endpoint_refusing_the_token_names_audience_resource_scope(idp, make_http_receiver, make_grpc_receiver,
                                                                   transport, audience, named):
    make = make_grpc_receiver if transport == "grpc" else make_http_receiver
    rx = make("jwt", validator_kw={"audience": AUDIENCE})
    extra = {"OTEL_EXPORTER_OTLP_ENDPOINT": rx.url}
    if transport == "grpc":
        extra["OTEL_EXPORTER_OTLP_PROTOCOL"] = "grpc"
    if audience:
        extra["OTEL_TOKEN_EXPORTER_AUDIENCE"] = audience
    run = run_check(check_env(idp, **extra))
    line = one_failure(run)
    assert "refused the token" in line and all(name in line for name in named), line
    assert [r.reason for r in rx.requests] == ["wrong audience"] * 2  # the token, then a fresh one
    if audience:
        assert f"aud={audience}" in run.out  # the token's claims are shown
    assert_clean(run, rx)


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_unreachable_endpoint_names_the_endpoint_setting_and_url(idp, protocol):
    url = f"http://127.0.0.1:{free_port()}" + ("/v1/logs" if protocol != "grpc" else "")
    run = run_check(check_env(idp, OTEL_EXPORTER_OTLP_PROTOCOL=protocol, OTEL_EXPORTER_OTLP_LOGS_ENDPOINT=url))
    line = one_failure(run)
    assert "cannot reach" in line and url in line and "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT" in line, line
    assert_clean(run)


def test_grpc_to_an_otlp_http_url_is_a_protocol_mismatch(idp, make_http_receiver):
    rx = make_http_receiver("jwt")
    run = run_check(check_env(idp, OTEL_EXPORTER_OTLP_PROTOCOL="grpc", OTEL_EXPORTER_OTLP_LOGS_ENDPOINT=rx.endpoint))
    line = one_failure(run)
    assert "protocol mismatch" in line and "OTEL_EXPORTER_OTLP_PROTOCOL" in line and "http/protobuf" in line, line
    assert_clean(run, rx)


def test_http_protobuf_to_a_grpc_port_is_a_protocol_mismatch(idp, make_grpc_receiver):
    rx = make_grpc_receiver("jwt")
    run = run_check(check_env(idp, OTEL_EXPORTER_OTLP_ENDPOINT=rx.url))
    line = one_failure(run)
    assert "protocol mismatch" in line and "OTEL_EXPORTER_OTLP_PROTOCOL" in line and "to grpc" in line, line
    assert not rx.requests  # nothing reached the gRPC service
    assert_clean(run, rx)


def test_a_hanging_endpoint_ends_within_the_timeout(idp, make_http_receiver):
    rx = make_http_receiver("jwt")
    rx.hang_next(5)
    run = run_check(check_env(idp, OTEL_EXPORTER_OTLP_LOGS_ENDPOINT=rx.endpoint), "--timeout", "3")
    line = one_failure(run)
    assert run.seconds < 5, f"took {run.seconds:.1f}s with --timeout 3"
    assert "did not answer" in line and "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT" in line and "--timeout" in line, line
    assert_clean(run, rx)


# -- output modes -------------------------------------------------------------------------------
def test_json_is_one_document(idp, make_http_receiver):
    rx = make_http_receiver("jwt")
    good = run_check(check_env(idp, OTEL_EXPORTER_OTLP_ENDPOINT=rx.url, OTEL_TRACES_EXPORTER="token_otlp"), "--json")
    doc = json.loads(good.out)
    assert good.rc == 0 and doc["ok"] is True and doc["failures"] == []
    assert [s["signal"] for s in doc["signals"]] == ["logs", "traces"]
    assert all(s["result"]["ok"] and s["result"]["status"] == 200 for s in doc["signals"])
    source = doc["token_sources"][0]
    assert source["name"] == "oauth2" and source["jwt"]["iss"] == idp.issuer and source["lifetime"] > 0
    assert source["settings"]["OTEL_TOKEN_EXPORTER_CLIENT_SECRET"] == "***"
    bad = run_check(check_env(idp, OTEL_EXPORTER_OTLP_ENDPOINT=rx.url, OTEL_TOKEN_EXPORTER_CLIENT_SECRET=WRONG_SECRET),
                    "--json")
    doc = json.loads(bad.out)
    assert bad.rc == 1 and doc["ok"] is False and len(doc["failures"]) == 1
    assert "OTEL_TOKEN_EXPORTER_CLIENT_SECRET" in doc["failures"][0]
    assert_clean(good, rx)
    assert_clean(bad, rx)


def test_no_send_fetches_the_token_and_sends_nothing(idp, make_http_receiver):
    rx = make_http_receiver("jwt")
    env = check_env(idp, OTEL_EXPORTER_OTLP_ENDPOINT=rx.url, OTEL_TRACES_EXPORTER="token_otlp",
                    OTEL_METRICS_EXPORTER="token_otlp")
    run = run_check(env, "--no-send")
    assert run.rc == 0, run.out
    assert any("token from oauth2" in line for line in run.oks), run.out
    assert len(run.oks) == 1 and not run.failures
    time.sleep(0.2)
    assert rx.requests == []
    assert idp.token_requests() == 1  # one manager for the three signals, one fetch
    assert_clean(run, rx)


# -- a configuration file -----------------------------------------------------------------------
CONFIG = """\
file_format: "1.0"
tracer_provider:
  processors:
    - batch:
        exporter:
          token_otlp:
            endpoint: ${CHECK_BASE}/v1/traces
            token_url: ${CHECK_TOKEN_URL}
            client_id: ${CHECK_CLIENT_ID:-test-client}
            client_secret: ${CHECK_SECRET}
            headers:
              x-api-key: ${CHECK_API_KEY}
meter_provider:
  readers:
    - periodic:
        interval: 1000
        exporter:
          token_otlp:
            endpoint: ${CHECK_BASE}/v1/metrics
            token_url: ${CHECK_TOKEN_URL}
            client_id: ${CHECK_CLIENT_ID:-test-client}
            client_secret: ${CHECK_SECRET}
            headers:
              x-api-key: ${CHECK_API_KEY}
logger_provider:
  processors:
    - batch:
        exporter:
          console: {}
    - simple:
        exporter:
          token_otlp:
            endpoint: ${CHECK_BASE}/v1/logs
            timeout: ${CHECK_TIMEOUT:-5}
            token_url: ${CHECK_TOKEN_URL}
            client_id: ${CHECK_CLIENT_ID:-test-client}
            client_secret: ${CHECK_SECRET}
            headers:
              x-api-key: ${CHECK_API_KEY}
"""
API_KEY = "api-key-Very-Secret-42"


def file_env(idp, rx, path, secret=IDP_CLIENT_SECRET) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_") and k != "PYTHONPATH"}
    env.update(CHECK_BASE=rx.url, CHECK_TOKEN_URL=idp.token_url, CHECK_SECRET=secret, CHECK_API_KEY=API_KEY,
               OTEL_CONFIG_FILE=str(path))  # the default for --config-file
    return env


def test_config_file_yaml_checks_each_token_otlp_block(idp, make_http_receiver, tmp_path):
    rx = make_http_receiver("jwt")
    path = tmp_path / "otel.yaml"
    path.write_text(CONFIG)
    run = run_check(file_env(idp, rx, path), "--config-file", str(path))
    assert run.rc == 0, run.out + run.err
    for signal in SIGNALS:
        assert len(run.ok_for(signal)) == 1, run.out
    assert "logger_provider.processors[1].simple.exporter.token_otlp" in run.out
    assert "timeout 5s" in run.out and "headers x-api-key=***" in run.out
    assert "token_otlp.client_secret=***" in run.out
    assert sorted(r.signal for r in rx.requests) == sorted(SIGNALS)
    assert all(r.headers.get("x-api-key") == API_KEY for r in rx.requests)
    assert_clean(run, rx, secrets=[API_KEY])

    wrong = run_check(file_env(idp, rx, path, secret=WRONG_SECRET))  # OTEL_CONFIG_FILE, no --config-file
    line = one_failure(wrong)
    assert "OTEL_TOKEN_EXPORTER_CLIENT_SECRET" in line, line
    # the file's keys in the order the message names their variables (never a set's order)
    assert f"{path}: client_id, client_secret at logger_provider." in line, line
    assert_clean(wrong, rx, secrets=[API_KEY])


def test_config_file_typo_is_one_line_naming_the_key(idp, make_http_receiver, tmp_path):
    rx = make_http_receiver("jwt")
    path = tmp_path / "typo.yaml"
    path.write_text(CONFIG.replace("client_secret:", "client_secrte:"))
    run = run_check(file_env(idp, rx, path), "--config-file", str(path))
    line = one_failure(run)
    assert "client_secrte" in line and line.startswith("FAIL    logs, traces, metrics: token_otlp got unknown"), line
    assert_clean(run, rx, secrets=[API_KEY])


def test_own_file_loader_reads_what_opentelemetry_configuration_reads(tmp_path, monkeypatch):
    """Without opentelemetry-configuration the check parses and substitutes the file itself: the
    same blocks, the same values and types (an unquoted ${VAR} is re-typed, a quoted one is not)."""
    pytest.importorskip("opentelemetry.configuration.file")
    yaml = pytest.importorskip("yaml")
    for name, value in (("CHECK_BASE", "http://127.0.0.1:4318"), ("CHECK_TOKEN_URL", "http://127.0.0.1:1/token"),
                        ("CHECK_SECRET", "s"), ("CHECK_API_KEY", "k"), ("CHECK_TIMEOUT", "7"), ("CHECK_EMPTY", "")):
        monkeypatch.setenv(name, value)
    text = CONFIG + 'extra:\n  quoted: "${CHECK_TIMEOUT}"\n  embedded: x${CHECK_TIMEOUT}\n  empty: ${CHECK_EMPTY:-d}\n'
    for suffix in (".yaml", ".json"):
        path = tmp_path / f"otel{suffix}"
        path.write_text(json.dumps(yaml.safe_load(text)) if suffix == ".json" else text)
        theirs = [(t.signal, t.origin, t.kwargs) for t in _check_targets.from_file(str(path))]
        with monkeypatch.context() as m:
            m.setattr(_check_targets, "_load", _check_targets._load_here)
            ours = [(t.signal, t.origin, t.kwargs) for t in _check_targets.from_file(str(path))]
        assert ours == theirs and len(ours) == 3
        logs = {signal: kwargs for signal, _origin, kwargs in ours}["logs"]
        assert logs["timeout"] == (7 if suffix == ".yaml" else "7")  # JSON values stay strings
        assert logs["client_id"] == "test-client" and logs["headers"] == {"x-api-key": "k"}
    data = _check_targets._load_here(str(tmp_path / "otel.yaml"))
    assert data["extra"] == {"quoted": "7", "embedded": "x7", "empty": None}  # set but empty: no default
