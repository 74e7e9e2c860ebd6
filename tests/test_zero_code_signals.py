"""Zero-code with all three signals: examples/all_signals_app.py under ``opentelemetry-instrument``
with ``token_otlp`` for traces, metrics and logs, against the real IdP (3-second tokens) and the
real OTLP receivers, over HTTP and over gRPC; configured either with the ``OTEL_*_EXPORTER``
variables or with a declarative configuration file (``OTEL_CONFIG_FILE``, examples/otel-config.yaml).

What must hold: 100 % of the spans and log records arrive, the counter's last exported value is
what the app counted, and the three exporters share one token: the IdP sees no more requests than
logs alone would need (about one per half token lifetime).
"""

from __future__ import annotations

import os
import re
import time

import grpc
import pytest
from peers.common import attributes_dict

from helpers import (
    ALL_SIGNALS_APP,
    OTEL_CONFIG_EXAMPLE,
    leaked,
    numbers,
    run_instrumented,
    zero_code_env,
)

pytestmark = pytest.mark.slow

LIFETIME = 3  # exp is whole seconds: each token really lives 2-3 s
SECONDS = 20
RATE = 100  # items per second: 2,000 spans, 2,000 log records, counter 2,000
DONE = re.compile(r"app done: spans=(\d+) logs=(\d+) counter=(\d+)")
PROTOCOLS = {"http": "http/protobuf", "grpc": "grpc"}
SECRET_ENV = ("OTEL_TOKEN_EXPORTER_TOKEN_URL", "OTEL_TOKEN_EXPORTER_CLIENT_ID",
              "OTEL_TOKEN_EXPORTER_CLIENT_SECRET")


@pytest.fixture(params=["http", "grpc"])
def protocol(request):
    return request.param


@pytest.fixture
def receiver(protocol, make_http_receiver, make_grpc_receiver):
    return (make_http_receiver if protocol == "http" else make_grpc_receiver)("jwt")


def env_var_mode(idp, rx, protocol, **extra) -> dict:
    """OTEL_{TRACES,METRICS,LOGS}_EXPORTER=token_otlp, the generic endpoint (HTTP: each signal's
    path is appended), the token settings in OTEL_TOKEN_EXPORTER_*."""
    return zero_code_env(
        None, idp,
        OTEL_TRACES_EXPORTER="token_otlp",
        OTEL_METRICS_EXPORTER="token_otlp",
        OTEL_LOGS_EXPORTER="token_otlp",
        OTEL_EXPORTER_OTLP_PROTOCOL=PROTOCOLS[protocol],
        OTEL_EXPORTER_OTLP_ENDPOINT=rx.url,
        OTEL_METRIC_EXPORT_INTERVAL="1000",
        # the processors' queues (default 2048) drop the OLDEST items when the app outruns an
        # export: size them for the whole run so any loss measured here is the exporter's
        OTEL_BSP_MAX_QUEUE_SIZE="20000",
        OTEL_BSP_SCHEDULE_DELAY="200",
        OTEL_BLRP_MAX_QUEUE_SIZE="20000",
        OTEL_BLRP_SCHEDULE_DELAY="200",
        **extra,
    )


def config_file_mode(idp, rx, protocol, tmp_path, config_file=OTEL_CONFIG_EXAMPLE, **extra) -> dict:
    """OTEL_CONFIG_FILE=examples/otel-config.yaml (or ``config_file``), its ${VAR}s set here; no
    OTEL_*_EXPORTER, no OTEL_TOKEN_EXPORTER_* variable: the file alone sets the SDK up."""
    secret_file = tmp_path / "client-secret"
    secret_file.write_text(idp.client_secret)
    os.chmod(secret_file, 0o600)
    env = zero_code_env(None, None, **extra)
    for name in ("OTEL_LOGS_EXPORTER", "OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER",
                 "OTEL_EXPORTER_OTLP_PROTOCOL",
                 # the trap (see the example's comment): with it, no logging handler at all
                 "OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED"):
        env.pop(name, None)
    env.update({
        "OTEL_CONFIG_FILE": str(config_file),
        "OTLP_PROTOCOL": PROTOCOLS[protocol],
        "OTLP_TRACES_ENDPOINT": rx.endpoint_for("traces"),
        "OTLP_METRICS_ENDPOINT": rx.endpoint_for("metrics"),
        "OTLP_LOGS_ENDPOINT": rx.endpoint_for("logs"),
        "TOKEN_URL": idp.token_url,
        "CLIENT_ID": idp.client_id,
        "CLIENT_SECRET_FILE": str(secret_file),
        "APP_SERVICE_NAME": "config-file-test",
    })
    assert not any(name in env for name in SECRET_ENV)
    return env


def run_and_check(label, idp, rx, protocol, env):
    idp.control(lifetime=LIFETIME)
    env = dict(env, APP_SECONDS=str(SECONDS), APP_RATE=str(RATE))
    started = time.monotonic()
    proc = run_instrumented(env, script=ALL_SIGNALS_APP, timeout=180)
    duration = time.monotonic() - started

    done = DONE.search(proc.stdout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert done, (proc.stdout[-2000:], proc.stderr[-3000:])
    spans_emitted, logs_emitted, counted = (int(g) for g in done.groups())
    assert spans_emitted == logs_emitted == counted == SECONDS * RATE

    span_numbers = numbers(rx.received_span_names(), prefix="app span")
    log_numbers = numbers(rx.received_bodies(), prefix="app record")
    last_count = rx.last_sum_value("app.items", {"app.kind": "item"})
    idp_requests = idp.token_requests()
    tokens_used = len({r.token_id for r in rx.requests if r.accepted})
    ok = (200, grpc.StatusCode.OK)
    not_ok = {s: sum(1 for r in rx.requests_for(s) if r.status not in ok)
              for s in ("traces", "metrics", "logs")}
    run_seconds = max(SECONDS, duration)
    print(f"\n{label} over {protocol}, {LIFETIME}s tokens: spans {len(set(span_numbers))}/"
          f"{spans_emitted} ({len(span_numbers) - len(set(span_numbers))} dup), logs "
          f"{len(set(log_numbers))}/{logs_emitted} ({len(log_numbers) - len(set(log_numbers))} dup), "
          f"counter last {last_count}/{counted}, metric points "
          f"{len(rx.metric_points('app.items'))}, IdP token requests {idp_requests} "
          f"(bound {run_seconds / 1.0 + 4:.0f}), tokens used {tokens_used}, OTLP requests "
          f"{len(rx.requests)} (not OK: {not_ok}), run {duration:.1f}s")

    missing_spans = sorted(set(range(spans_emitted)) - set(span_numbers))
    missing_logs = sorted(set(range(logs_emitted)) - set(log_numbers))
    assert not missing_spans, f"{len(missing_spans)} spans lost, first {missing_spans[:10]}"
    assert not missing_logs, f"{len(missing_logs)} log records lost, first {missing_logs[:10]}"
    assert last_count == counted
    # the counter is cumulative and its requests arrive in order: it never goes backwards
    values = [p.as_int for p in rx.metric_points("app.items", {"app.kind": "item"})]
    assert values == sorted(values)
    assert len(values) >= SECONDS // 2  # exported about once a second, not only at exit
    # one token for all three signals: no more IdP requests than logs alone need (about one per
    # half lifetime, plus the first fetch and start-up slack)
    assert idp_requests <= run_seconds / 1.0 + 4, (idp_requests, duration)
    assert tokens_used >= 4  # the run really spanned several token lifetimes
    assert leaked(proc.stdout + proc.stderr,
                  [idp.client_secret] + [r.token for r in rx.requests if r.token]) == 0
    return proc


def test_env_vars_all_three_signals_deliver_everything_with_one_token(idp, receiver, protocol):
    rx = receiver
    proc = run_and_check("zero-code (OTEL_*_EXPORTER=token_otlp)", idp, rx, protocol,
                         env_var_mode(idp, rx, protocol))
    assert "providers=TracerProvider,MeterProvider" in proc.stdout
    assert {r.signal for r in rx.requests if r.accepted} == {"traces", "metrics", "logs"}


def test_config_file_all_three_signals_deliver_everything_with_one_token(idp, receiver, protocol,
                                                                         tmp_path):
    rx = receiver
    proc = run_and_check("zero-code (OTEL_CONFIG_FILE)", idp, rx, protocol,
                         config_file_mode(idp, rx, protocol, tmp_path))
    assert "providers=TracerProvider,MeterProvider" in proc.stdout
    # the resource comes from the file (OTEL_SERVICE_NAME, set by zero_code_env, is ignored)
    for resource in ([rs.resource for rs in rx.resource_spans[:1]]
                     + [rl.resource for rl in rx.resource_logs[:1]]
                     + [rm.resource for req in rx.metric_requests[:1] for rm in req.resource_metrics]):
        assert attributes_dict(resource.attributes)["service.name"] == "config-file-test"


def test_config_file_unknown_key_is_named_in_one_clear_line(idp, receiver, protocol, tmp_path):
    """A typo in a token_otlp block (``tokn_url:``): the exporter says so in one line naming the
    key before it raises (the SDK then prints its own tracebacks, not asserted here)."""
    rx = receiver
    text = open(OTEL_CONFIG_EXAMPLE).read()
    assert text.count("token_url: ${TOKEN_URL}") == 3
    bad = tmp_path / "typo.yaml"
    bad.write_text(text.replace("token_url: ${TOKEN_URL}", "tokn_url: ${TOKEN_URL}", 1))  # traces
    env = config_file_mode(idp, rx, protocol, tmp_path, config_file=bad,
                           APP_SECONDS="0.2", APP_RATE="10")
    proc = run_instrumented(env, script=ALL_SIGNALS_APP, timeout=60)
    print(f"\n--- stderr of the app with `tokn_url:` ({protocol}) ---\n{proc.stderr}"
          f"--- stdout ---\n{proc.stdout}")

    ours = [line for line in proc.stderr.splitlines()
            if line.startswith("otel_token_exporter ERROR: TokenOTLPSpanExporter") and "unknown argument" in line]
    assert len(ours) == 1, proc.stderr[-3000:]
    assert "got unknown argument(s): tokn_url (did you mean token_url?)" in ours[0]
    assert leaked(proc.stdout + proc.stderr, [idp.client_secret]) == 0
    # the app itself still runs (the SDK swallows the failure), with nothing configured
    assert proc.returncode == 0
    assert "app done" in proc.stdout
    assert rx.requests == []
    assert idp.token_requests() == 0
