"""Defects a review of the restructured core found, each pinned by a test that failed before its fix."""

from __future__ import annotations

import logging
import os
import stat
import threading
import time

import pytest
from opentelemetry.sdk._logs.export import LogRecordExportResult

from helpers import make_records
from otel_token_exporter import ConfigurationError, Token, TokenOTLPLogExporter
from otel_token_exporter.config import Env
from otel_token_exporter.manager import TokenManager
from otel_token_exporter.schedule import RefreshPolicy
from otel_token_exporter.settings import resolve
from otel_token_exporter.signals.logs import LOGS
from otel_token_exporter.spool import Spool
from otel_token_exporter.token import TransientTokenError

pytestmark = pytest.mark.usefixtures("no_otel_env")
SUCCESS = LogRecordExportResult.SUCCESS


def test_a_token_source_object_or_callable_can_be_given(otlp_http_receiver):
    for source in (lambda: "tok-callable", type("S", (), {"fetch": lambda self: Token("tok-object")})()):
        rx_endpoint = otlp_http_receiver.endpoint
        exporter = TokenOTLPLogExporter(endpoint=rx_endpoint, token_source=source, env={})
        try:
            assert exporter.token_manager.get(5).value.startswith("tok-")
        finally:
            exporter.shutdown()


class _Failing:
    def __init__(self):
        self.calls = 0
        self.ok = threading.Event()

    def fetch(self):
        self.calls += 1
        if not self.ok.is_set():
            raise TransientTokenError("IdP down")
        return Token("fresh", expires_at=time.monotonic() + 60)


def test_retry_now_cuts_a_backoff_short_although_the_export_path_asked_already():
    source = _Failing()
    manager = TokenManager(source, policy=RefreshPolicy(backoff_base=30.0, backoff_cap=60.0))
    try:
        manager.start()
        deadline = time.monotonic() + 5
        while manager.health().consecutive_failures == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(Exception):
            manager.get(0.05, wait_through_backoff=False)  # the export path asks: a refresh is "wanted"
        source.ok.set()
        assert manager.retry_now()
        assert manager.get(2.0).value == "fresh"  # not after a 15-30 s backoff
    finally:
        manager.close()


@pytest.mark.parametrize("headers", [{"x-tenant": "a\r\nb"}, {"bad key": "v"}, {"x-null": "a\0b"}])
def test_a_header_that_cannot_be_sent_is_refused_at_construction(headers):
    with pytest.raises(ConfigurationError, match="^headers:"):
        resolve(LOGS, {"headers": headers}, Env({}))


def test_an_encoding_failure_is_dropped_counted_and_said_once(otlp_http_receiver, caplog):
    exporter = TokenOTLPLogExporter(endpoint=otlp_http_receiver.endpoint, token="t", env={})
    try:
        def broken():
            raise ValueError("cannot encode this")

        with caplog.at_level(logging.ERROR, logger="otel_token_exporter"):
            assert exporter._export_requests(broken, 3) is False
            assert exporter._export_requests(broken, 3) is False
        said = [r for r in caplog.records if "could not encode" in r.getMessage()]
        assert len(said) == 1
    finally:
        exporter.shutdown()


def test_a_provider_flush_mark_lapses_once_its_exports_stop(otlp_http_receiver):
    rx = otlp_http_receiver
    exporter = TokenOTLPLogExporter(endpoint=rx.endpoint, token="t", env={}, timeout=5)
    try:
        core = exporter._core
        core._provider_flush_starts(30_000)  # a provider flush began on this thread ...
        time.sleep(0.4)  # ... and ended without exporting anything
        rx.fail_next(1000, 503)
        started = time.monotonic()
        exporter.export(make_records(["after the flush"]))
        assert time.monotonic() - started < 1.5  # one short wait, not the 30 s flush budget
    finally:
        rx.clear_faults()
        exporter.shutdown(timeout_millis=2000)


def test_a_histogram_aggregation_name_works_as_an_argument():
    from opentelemetry.sdk.metrics import Histogram

    from otel_token_exporter.signals.metrics import aggregation

    table = aggregation("base2_exponential_bucket_histogram", Env({}))
    assert type(table[Histogram]).__name__ == "ExponentialBucketHistogramAggregation"
    table = aggregation({"histogram": "explicit_bucket_histogram"}, Env({}))
    assert type(table[Histogram]).__name__ == "ExplicitBucketHistogramAggregation"
    with pytest.raises(ConfigurationError, match="preferred_aggregation"):
        aggregation({"histogram": "linear"}, Env({}))


def test_a_shared_directory_is_not_chmod_ed_into_a_spool(tmp_path, caplog):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # like /tmp
    with caplog.at_level(logging.WARNING, logger="otel_token_exporter"):
        spool = Spool(str(shared), signal="logs", endpoint="http://x")
    assert not spool.usable
    assert stat.S_IMODE(os.stat(shared).st_mode) == 0o1777
    assert any("shared directory" in r.getMessage() for r in caplog.records)


def test_a_stricter_exporter_does_not_inherit_another_ones_plaintext_opt_in():
    env = {"OTEL_TOKEN_EXPORTER_TOKEN_URL": "http://idp.example.com/token",
           "OTEL_TOKEN_EXPORTER_CLIENT_ID": "c", "OTEL_TOKEN_EXPORTER_CLIENT_SECRET": "s"}
    lax = TokenOTLPLogExporter(endpoint="https://otlp.example.com/v1/logs", env=env, allow_plaintext=True)
    try:
        with pytest.raises(ConfigurationError, match="plaintext"):
            TokenOTLPLogExporter(endpoint="https://otlp.example.com/v1/logs", env=env)
    finally:
        lax.shutdown(timeout_millis=500)
