"""Self-observability metrics (metrics.py) after scripted runs against the real IdP and receivers.

Every instrument in ``metrics.INSTRUMENTS`` must show up, with the attributes the README documents,
after a run that has an initial fetch, scheduled refreshes, a forced refresh (401/403 or
UNAUTHENTICATED/PERMISSION_DENIED on a valid token), a failed fetch, a buffered-then-redelivered
batch and dropped records. Without a MeterProvider everything still works (no-op).
"""

from __future__ import annotations

import time

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk._logs.export import LogRecordExportResult

from helpers import make_records
from otel_token_exporter import TokenOTLPLogExporter
from otel_token_exporter.metrics import INSTRUMENTS, PREFIX
from helpers import wait_until

SUCCESS = LogRecordExportResult.SUCCESS
FAILURE = LogRecordExportResult.FAILURE



def collect(reader) -> dict:
    """{instrument name without prefix: [data points]} for our meter's scope only."""
    out: dict = {}
    data = reader.get_metrics_data()
    if data is None:
        return out
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            if sm.scope.name != "otel_token_exporter":
                continue
            for metric in sm.metrics:
                assert metric.name.startswith(PREFIX)
                out.setdefault(metric.name[len(PREFIX):], []).extend(metric.data.data_points)
    return out


def attrs_of(points) -> list[dict]:
    return [dict(p.attributes) for p in points]


def value_for(points, **attributes):
    """Sum (counter) or count (histogram) of the points whose attributes are exactly ``attributes``."""
    total = 0
    for p in points:
        if dict(p.attributes) == attributes:
            total += getattr(p, "value", None) if hasattr(p, "value") else p.count
    return total


@pytest.fixture
def exporters():
    made = []
    yield made
    for exp in made:
        exp.shutdown(timeout_millis=3000)


def make(exporters, idp, endpoint, **kw):
    kw.setdefault("timeout", 10)
    exp = TokenOTLPLogExporter(
        endpoint=endpoint,
        token_url=idp.token_url,
        client_id=idp.client_id,
        client_secret=idp.client_secret,
        **kw,
    )
    exporters.append(exp)
    return exp


def test_every_instrument_is_recorded_with_its_attributes_over_http(idp, otlp_http_receiver, exporters):
    idp.control(lifetime=3)  # a token really lives 2-3 s: scheduled refreshes come quickly
    rx = otlp_http_receiver
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    exp = make(exporters, idp, rx.endpoint, meter_provider=provider,
               env={"OTEL_TOKEN_EXPORTER_BUFFER_MAX_RECORDS": "4"})
    health = exp.token_manager.health

    # initial fetch, then a delivered batch
    assert exp.export(make_records(["a 0", "a 1"])) is SUCCESS
    # scheduled refreshes (the refresher renews the 3 s token by itself)
    assert wait_until(lambda: health().generation >= 3, 15), health()

    # a forced refresh: the receiver refuses a valid token once; the batch is re-sent with a new one
    gen = health().generation
    rx.reject_next_valid(1, 401)
    assert exp.export(make_records(["b 0"])) is SUCCESS
    assert health().generation > gen

    # a failed fetch: the next token request gets a 503 (transient), then the IdP recovers
    failures = health().failure_count
    idp.control(faults=[{"status": 503, "count": 1}])
    assert wait_until(lambda: health().failure_count > failures, 15), health()
    assert wait_until(lambda: health().consecutive_failures == 0 and health().has_token, 15), health()

    # a batch kept and re-sent later: 500 answers keep it; the re-send thread delivers it
    rx.fail_next(3, 500)
    assert exp.export(make_records(["c 0", "c 1"])) is FAILURE
    during = collect(reader)  # the batch is in the buffer now (the third attempt waits a backoff)
    assert exp.force_flush(20_000)
    assert "c 0" in rx.received_bodies()

    # a partial success: the endpoint takes the request but rejects 2 of its records
    rx.partial_success_next(1, rejected=2, message="2 records too old")
    assert exp.export(make_records(["p 0", "p 1", "p 2"])) is SUCCESS

    # drops: a 400 can never be delivered; a kept batch is pushed out of the 4-record queue by
    # the next one (the oldest goes first; the newest request always stays)
    rx.fail_next(1, 400)
    assert exp.export(make_records(["d 0", "d 1", "d 2"])) is FAILURE
    rx.fail_next(1, 500)
    assert exp.export(make_records([f"e {i}" for i in range(3)])) is FAILURE
    assert exp.export(make_records([f"f {i}" for i in range(3)])) is FAILURE
    assert exp.force_flush(20_000)

    before = health()
    points = collect(reader)
    after = health()  # a scheduled refresh may land while collecting: bound counts by both
    assert set(points) == set(INSTRUMENTS), set(INSTRUMENTS) ^ set(points)
    http = {"signal": "logs", "transport": "http"}

    # token instruments belong to the (shared) token manager: no signal or transport on them
    refreshes = points["token.refreshes"]
    for trigger in ("initial", "scheduled", "forced"):
        assert value_for(refreshes, trigger=trigger, outcome="success") >= 1, (trigger, attrs_of(refreshes))
    failed = [a for a in attrs_of(refreshes) if a.get("outcome") == "failure"]
    assert failed and all(a["error.type"] == "TransientTokenError" and "transport" not in a for a in failed)
    assert all("error.type" not in a for a in attrs_of(refreshes) if a["outcome"] == "success")
    total_refreshes = sum(p.value for p in refreshes)
    assert (before.refresh_count + before.failure_count
            <= total_refreshes <= after.refresh_count + after.failure_count)

    durations = points["token.refresh.duration"]
    assert {frozenset(a.items()) for a in attrs_of(durations)} == {frozenset(a.items()) for a in attrs_of(refreshes)}
    assert sum(p.count for p in durations) == total_refreshes
    assert all(p.min >= 0 and p.max < 10 for p in durations)

    lifetime = points["token.lifetime"]
    assert attrs_of(lifetime) == [{}]
    assert before.refresh_count <= lifetime[0].count <= after.refresh_count
    assert 1.0 <= lifetime[0].min and lifetime[0].max <= 3.5  # 3 s tokens (exp in whole seconds)

    remaining = points["token.remaining"]
    assert attrs_of(remaining) == [http]
    accepted_or_rejected = sum(1 for r in rx.requests if r.token_id is not None)
    assert remaining[0].count >= accepted_or_rejected >= 1
    assert remaining[0].min >= 0 and remaining[0].max <= 3.5

    assert value_for(points["auth.rejections"], **http, status="401") == 1
    assert value_for(points["auth.resends"], **http) == 1

    buffered = [p for p in during.get("buffer.records", []) if p.value > 0]
    assert buffered and attrs_of(buffered) == [http] and buffered[0].value == 2

    dropped = points["records.dropped"]
    assert value_for(dropped, **http, reason="undeliverable") == 3
    assert value_for(dropped, **http, reason="buffer_full") == 3
    assert value_for(points["records.rejected"], **http) == 2
    assert "f 0" in rx.received_bodies() and "e 0" not in rx.received_bodies()

    assert value_for(points["batches.redelivered"], **http) >= 1


def test_grpc_rejections_are_counted_by_status_name(idp, otlp_grpc_receiver, exporters):
    rx = otlp_grpc_receiver
    reader = InMemoryMetricReader()
    exp = make(exporters, idp, rx.endpoint, protocol="grpc", insecure=True,
               meter_provider=MeterProvider(metric_readers=[reader]), env={})
    assert exp.export(make_records(["a"])) is SUCCESS
    rx.reject_next_valid(1, "UNAUTHENTICATED")
    assert exp.export(make_records(["b"])) is SUCCESS
    time.sleep(1.2)  # forced refreshes are rate-limited (1 per second)
    rx.reject_next_valid(1, "PERMISSION_DENIED")
    assert exp.export(make_records(["c"])) is SUCCESS

    points = collect(reader)
    grpc_attrs = {"signal": "logs", "transport": "grpc"}
    rejections = points["auth.rejections"]
    assert value_for(rejections, **grpc_attrs, status="UNAUTHENTICATED") == 1
    assert value_for(rejections, **grpc_attrs, status="PERMISSION_DENIED") == 1
    assert value_for(points["auth.resends"], **grpc_attrs) == 2
    refreshes = points["token.refreshes"]
    assert value_for(refreshes, trigger="initial", outcome="success") == 1
    assert value_for(refreshes, trigger="forced", outcome="success") == 2
    assert attrs_of(points["token.remaining"]) == [grpc_attrs]
    assert rx.received_bodies() == ["a", "b", "c"]


def test_without_a_meter_provider_everything_still_works(idp, otlp_http_receiver, exporters):
    """No MeterProvider configured: the global (proxy/no-op) one is used and nothing breaks."""
    rx = otlp_http_receiver
    exp = make(exporters, idp, rx.endpoint, env={})
    assert exp.export(make_records(["a"])) is SUCCESS
    rx.reject_next_valid(1, 401)
    assert exp.export(make_records(["b"])) is SUCCESS
    rx.fail_next(1, 400)
    assert exp.export(make_records(["c"])) is FAILURE
    rx.fail_next(1, 500)
    assert exp.export(make_records(["d"])) is FAILURE
    assert exp.force_flush(10_000)
    assert rx.received_bodies() == ["a", "b", "d"]
    assert exp.sending_queue.stats().dropped_records == 1
