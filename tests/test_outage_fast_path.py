"""During an IdP outage the export path must not wait for the next token attempt.

Otherwise the SDK's batch processor, whose queue holds a few seconds of records, drops records while
export() sits waiting (the benchmark measured 2,872 records lost at 500/s before this rule). With no
valid token and the manager backing off, export() keeps the batch and returns at once; the kept batch
is delivered as soon as a token arrives.
"""

from __future__ import annotations

import time

from helpers import make_records

from otel_token_exporter import NoTokenAvailable, TokenOTLPLogExporter


def _outage(idp):
    idp.control(faults=[{"status": 503, "body": {"error": "temporarily_unavailable"}, "count": 100000}])


def test_get_without_waiting_through_backoff_fails_at_once(idp):
    _outage(idp)  # before construction: the first fetch already fails
    exporter = TokenOTLPLogExporter(
        endpoint="http://127.0.0.1:9/v1/logs", token_url=idp.token_url,
        client_id=idp.client_id, client_secret=idp.client_secret,
    )
    try:
        deadline = time.monotonic() + 10
        while exporter.token_manager.health().consecutive_failures == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert exporter.token_manager.health().consecutive_failures >= 1
        t0 = time.monotonic()
        try:
            exporter.token_manager.get(5.0, wait_through_backoff=False)
            raise AssertionError("a token appeared during the outage")
        except NoTokenAvailable:
            pass
        assert time.monotonic() - t0 < 1.0
    finally:
        exporter.shutdown(timeout_millis=500)


def test_export_during_an_outage_keeps_the_batch_and_returns_fast(idp, otlp_http_receiver):
    idp.control(lifetime=2)
    exporter = TokenOTLPLogExporter(
        endpoint=otlp_http_receiver.endpoint, timeout=10, token_url=idp.token_url,
        client_id=idp.client_id, client_secret=idp.client_secret,
    )
    try:
        exporter.export(make_records(["before"]))
        _outage(idp)
        time.sleep(2.5)  # the token expires while every refresh fails
        durations = []
        for i in range(5):
            t0 = time.monotonic()
            exporter.export(make_records([f"during {i}"]))
            durations.append(time.monotonic() - t0)
        assert max(durations) < 1.1, durations  # at most one short wait, never the 10 s export timeout
        assert exporter.sending_queue.stats().queued_records == 5
        idp.control(clear_faults=True)
        assert exporter.force_flush(15_000)
        assert otlp_http_receiver.received_bodies() == ["before"] + [f"during {i}" for i in range(5)]
    finally:
        exporter.shutdown(timeout_millis=1000)
