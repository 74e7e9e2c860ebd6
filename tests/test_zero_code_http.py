"""Zero-code: examples/zero_code_app.py under ``opentelemetry-instrument`` with
``OTEL_LOGS_EXPORTER=token_otlp`` over OTLP/HTTP, against the real IdP and receiver.

The done criterion of the issue: "zero-code over HTTP with 3-second tokens delivers 100 % of 8,000
records logged over 20 s, with at most about one token request per half token lifetime; no issued
token or client secret appears in the app's output with every logger at DEBUG".
"""

from __future__ import annotations

import base64
import time
from urllib.parse import quote

import pytest

from helpers import leaked, numbers, run_instrumented, zero_code_env

pytestmark = pytest.mark.slow


def _secrets(idp, rx) -> list:
    pair = f"{quote(idp.client_id, safe='')}:{quote(idp.client_secret, safe='')}"
    return ([idp.client_secret, quote(idp.client_secret, safe=""),
             base64.b64encode(pair.encode()).decode()]
            + [r.token for r in rx.requests if r.token])


def test_zero_code_http_short_tokens_delivers_every_record_without_leaking(idp, otlp_http_receiver):
    rx = otlp_http_receiver
    lifetime = 3
    idp.control(lifetime=lifetime)  # exp is whole seconds: each token really lives 2-3 s
    count, seconds = 8000, 20
    env = zero_code_env(
        rx, idp,
        APP_RECORDS=count, APP_SECONDS=seconds,
        APP_LOG_LEVEL="DEBUG",  # the app sets the root logger (so urllib3 and ours) to DEBUG
        OTEL_LOG_LEVEL="debug",
        # The BatchLogRecordProcessor's default queue (2048) drops the OLDEST records when full;
        # a burst between two exports (or a slow export during a refresh) would then lose records
        # in the processor before our exporter ever sees them. Size the queue for the whole run
        # and export often, so any loss measured here is the exporter's.
        OTEL_BLRP_MAX_QUEUE_SIZE="20000",
        OTEL_BLRP_SCHEDULE_DELAY="200",
    )
    started = time.monotonic()
    proc = run_instrumented(env, timeout=180)
    duration = time.monotonic() - started

    got = numbers(rx.received_bodies(), prefix="app record")
    delivered = len(set(got))
    idp_requests = idp.token_requests()
    tokens_used = len({r.token_id for r in rx.requests if r.accepted})
    rejected = sum(1 for s in rx.statuses() if s != 200)
    print(f"\nzero-code HTTP, {lifetime}s tokens: {delivered}/{count} records delivered "
          f"({len(got) - delivered} duplicates), {idp_requests} IdP requests, {tokens_used} tokens, "
          f"{len(rx.requests)} OTLP requests ({rejected} not 200), run {duration:.1f}s")

    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "app done" in proc.stderr  # the app's own DEBUG-level output was really captured
    assert "DEBUG:urllib3" in proc.stderr  # ... with every logger at DEBUG
    assert delivered == count, f"{count - delivered} records lost"
    # at most about one token request per half (nominal) lifetime of the run, plus slack for the
    # initial fetch and start-up; the run takes longer than APP_SECONDS on a busy machine
    assert idp_requests <= max(seconds, duration) / (lifetime / 2) + 3, (idp_requests, duration)
    assert tokens_used >= 4  # really spanned several token lifetimes
    assert leaked(proc.stdout + proc.stderr, _secrets(idp, rx)) == 0


def test_zero_code_missing_client_id_is_reported_by_its_env_var(idp):
    env = zero_code_env(
        None, idp,
        OTEL_EXPORTER_OTLP_LOGS_ENDPOINT="http://127.0.0.1:9/v1/logs",
        APP_RECORDS=3, APP_SECONDS=0,
    )
    del env["OTEL_TOKEN_EXPORTER_CLIENT_ID"]
    proc = run_instrumented(env, timeout=60)
    assert "OTEL_TOKEN_EXPORTER_CLIENT_ID" in proc.stderr
    assert "ConfigurationError" in proc.stderr
    assert leaked(proc.stdout + proc.stderr, [idp.client_secret]) == 0
    assert "app done" in proc.stderr  # the app itself still runs
    assert idp.token_requests() == 0  # nothing was fetched with a broken configuration
