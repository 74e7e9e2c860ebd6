"""No feedback loop: a bounded log volume when every export fails for a minute.

An app logs 20 records/s for 60 s through an OpenTelemetry ``LoggingHandler`` on the root logger (as
the logging instrumentation of ``opentelemetry-instrument`` installs it), next to a stderr handler,
to an endpoint that refuses every token. Our package's and the stock exporter's diagnostics must
stay a small constant on stderr, none of them may enter the pipeline, and the IdP must not be
hammered. The 60 s is the issue's figure; this is the only long test.
"""

from __future__ import annotations

import logging
import sys
import time

from opentelemetry.instrumentation.logging.handler import LoggingHandler
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

from helpers import numbers
from otel_token_exporter import TokenOTLPLogExporter

RATE, SECONDS = 20, 60
OURS = ("otel_token_exporter", "opentelemetry.exporter")


def test_a_minute_of_failing_exports_logs_a_bounded_amount(idp, make_http_receiver, capfd):
    rx = make_http_receiver("static", static_token="a-token-the-idp-never-issues")
    exporter = TokenOTLPLogExporter(endpoint=rx.endpoint, token_url=idp.token_url, client_id=idp.client_id,
                                    client_secret=idp.client_secret, timeout=5, env={})
    provider = LoggerProvider()
    provider.add_log_record_processor(BatchLogRecordProcessor(exporter, max_queue_size=4096))
    otel_handler = LoggingHandler(logger_provider=provider)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(logging.Formatter("LOG %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(otel_handler)
    root.addHandler(stderr)
    root.setLevel(logging.INFO)
    app = logging.getLogger("app")
    count = RATE * SECONDS
    started = time.monotonic()
    try:
        for i in range(count):
            app.info("app record %d", i)
            pause = started + (i + 1) / RATE - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        # everything the app logged has reached the exporter (kept there: nothing is accepted)
        provider.force_flush(10_000)
        stats = exporter.sending_queue.stats()
        idp_requests = idp.token_requests()
        endpoint_requests = len(rx.requests)
        rejected = sum(1 for r in rx.requests if r.status == 401)

        # the endpoint starts accepting anything: what was kept is delivered, and it is exactly
        # the app's records (no diagnostics of ours or of the stock exporter entered the pipeline)
        rx.validator.mode = "none"
        assert exporter.force_flush(30_000)
        bodies = rx.received_bodies()
    finally:
        root.removeHandler(otel_handler)
        root.removeHandler(stderr)
        root.setLevel(old_level)
        provider.shutdown()
    elapsed = time.monotonic() - started
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("LOG ")]
    ours = [line for line in lines if line.split()[1].startswith(OURS)]
    print(f"\nfeedback: {count} app records over {elapsed:.0f}s; {len(ours)} log lines from "
          f"otel_token_exporter*/opentelemetry.exporter* on stderr; {idp_requests} IdP token requests; "
          f"{endpoint_requests} endpoint requests ({rejected} rejected); buffered {stats.queued_records} "
          f"records in {stats.queued_requests} batches, dropped {stats.dropped_records}")
    for line in ours:
        print("   ", line[:160])

    # (a) a small constant, not one per batch (the processor exported ~60 batches)
    assert 1 <= len(ours) <= 12, len(ours)
    # (b) only app records were kept and delivered, each once, none lost
    assert stats.dropped_records == 0
    assert stats.queued_records == count, stats
    assert all(b.startswith("app record ") for b in bodies), [b[:60] for b in bodies if not b.startswith("app")]
    assert sorted(numbers(bodies, prefix="app record")) == list(range(count))
    # (c) the IdP and the endpoint were not hammered: forced refreshes are rate-limited and the
    # sender probes one at a time with backoff (growing to 2.5-5 s) while every token is refused:
    # at most ~24 probes of 2 requests (a send and its re-send) in the minute, each probe at most
    # one forced refresh
    assert rejected >= 2
    assert idp_requests <= 30, idp_requests
    assert endpoint_requests <= 56, endpoint_requests
