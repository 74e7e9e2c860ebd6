"""A newcomer's first mistakes under `opentelemetry-instrument`: one clear line each, and no waiting.

- A wrong client secret: one line naming the setting and the source by its user-facing name, no
  stock "Failed to export" line (the stock export loop is not used), and the app exits within 1 s
  of a clean run of the same app (nothing kept can succeed, so shutdown does not drain).
- A forgotten protocol (the distro defaults it to grpc) with an OTLP/HTTP endpoint: one warning
  naming OTEL_EXPORTER_OTLP_PROTOCOL at start.
"""

from __future__ import annotations

import time

import pytest

from helpers import leaked, run_instrumented, zero_code_env

pytestmark = pytest.mark.usefixtures("no_otel_env")


def _run(env):
    started = time.monotonic()
    proc = run_instrumented(env, timeout=60)
    return proc, time.monotonic() - started


def test_wrong_secret_is_one_line_naming_the_setting_and_the_app_exits_at_once(idp, otlp_http_receiver):
    rx = otlp_http_receiver
    common = dict(APP_RECORDS="50", APP_SECONDS="1")
    clean, clean_seconds = _run(zero_code_env(rx, idp, **common))
    assert clean.returncode == 0, clean.stderr[-2000:]
    env = zero_code_env(rx, idp, **common)
    env["OTEL_TOKEN_EXPORTER_CLIENT_SECRET"] = "not-the-secret"
    wrong, wrong_seconds = _run(env)
    out = wrong.stdout + wrong.stderr
    print(f"\nclean run {clean_seconds:.2f}s, wrong secret {wrong_seconds:.2f}s")
    assert wrong.returncode == 0, wrong.stderr[-2000:]
    ours = [line for line in out.splitlines() if "invalid_client" in line or "401" in line and "token endpoint" in line]
    assert len(ours) == 1, out[-3000:]
    assert "OTEL_TOKEN_EXPORTER_CLIENT_SECRET" in ours[0] and "oauth2" in ours[0], ours[0]
    assert "ClientCredentialsSource" not in out
    assert "Failed to export" not in out
    assert leaked(out, ["not-the-secret", idp.client_secret]) == 0
    assert wrong_seconds <= clean_seconds + 1.0, (wrong_seconds, clean_seconds)


def test_a_forgotten_protocol_is_one_warning_at_start(idp, otlp_http_receiver):
    env = zero_code_env(otlp_http_receiver, idp, APP_RECORDS="5", APP_SECONDS="0.2")
    del env["OTEL_EXPORTER_OTLP_PROTOCOL"]  # the distro then sets grpc: the endpoint is .../v1/logs
    proc = run_instrumented(env, timeout=60)
    warnings = [line for line in (proc.stdout + proc.stderr).splitlines()
                if "OTEL_EXPORTER_OTLP_PROTOCOL" in line and "looks like an OTLP/HTTP endpoint" in line]
    assert len(warnings) == 1, (proc.stdout + proc.stderr)[-3000:]
    assert "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT" in warnings[0]
