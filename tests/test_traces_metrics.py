"""Traces and metrics, in process: TokenOTLPSpanExporter behind a BatchSpanProcessor and
TokenOTLPMetricExporter behind a PeriodicExportingMetricReader, against the real IdP and the real
OTLP receivers (HTTP and gRPC; every request's JWT is verified against the IdP's keys).

Covered: delivery with correct names, attributes and values; a 401/403 (UNAUTHENTICATED /
PERMISSION_DENIED) on a valid token -> one forced refresh -> the same request re-sent; 503 with
Retry-After, connection resets and an IdP outage longer than a token lose nothing; metrics kept
during an endpoint outage arrive afterwards in order (a cumulative counter never goes backwards at
the receiver); ``max_export_batch_size``; temporality preference as the stock exporter reads it;
per-signal settings; one token manager for logs, traces and metrics.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import grpc
import pytest
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as StockHTTPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as StockHTTPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider, UpDownCounter
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    InMemoryMetricReader,
    MetricExportResult,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from peers.common import attributes_dict

from helpers import numbers
from otel_token_exporter import (
    ConfigurationError,
    TokenOTLPLogExporter,
    TokenOTLPMetricExporter,
    TokenOTLPSpanExporter,
)

pytestmark = pytest.mark.usefixtures("no_otel_env")

PROTOCOLS = {"http": "http/protobuf", "grpc": "grpc"}
CLASSES = {"logs": TokenOTLPLogExporter, "traces": TokenOTLPSpanExporter, "metrics": TokenOTLPMetricExporter}
RESOURCE = Resource.create({"service.name": "traces-metrics-test"})
COUNTER = "test.ops"
HISTOGRAM = "test.latency"
ATTRS = {"op.kind": "test"}
OK = (200, grpc.StatusCode.OK)
DEAD = "http://127.0.0.1:9"  # discard port: nothing listens


# --------------------------------------------------------------------------------------------
# Harness
# --------------------------------------------------------------------------------------------


@pytest.fixture(params=["http", "grpc"])
def protocol(request):
    return request.param


@pytest.fixture
def receiver(protocol, make_http_receiver, make_grpc_receiver):
    def make(**kw):
        return (make_http_receiver if protocol == "http" else make_grpc_receiver)("jwt", **kw)

    return make


@pytest.fixture
def exporters():
    made = []
    yield made
    for exp in made:
        exp.shutdown(timeout_millis=1000)


@pytest.fixture
def make_exporter(idp, protocol, exporters):
    """make(signal, rx, **kw): a token_otlp exporter of ``signal`` for ``rx`` with the IdP's
    client credentials, env={} unless given (nothing read from the machine)."""

    def make(signal, rx=None, **kw):
        if rx is not None:
            kw.setdefault("endpoint", rx.endpoint_for(signal))
        kw.setdefault("protocol", PROTOCOLS[protocol])
        kw.setdefault("timeout", 5)
        kw.setdefault("token_url", idp.token_url)
        kw.setdefault("client_id", idp.client_id)
        kw.setdefault("client_secret", idp.client_secret)
        kw.setdefault("env", {})
        if kw["env"] is None:
            del kw["env"]
        exp = CLASSES[signal](**kw)
        exporters.append(exp)
        return exp

    return make


def status_of(protocol, http_status):
    if protocol == "http":
        return http_status
    return {401: grpc.StatusCode.UNAUTHENTICATED, 403: grpc.StatusCode.PERMISSION_DENIED,
            503: grpc.StatusCode.UNAVAILABLE}[http_status]


@dataclass
class Run:
    """What a workload emitted: ``count`` spans "op N" and counter increments; ``exported``: the
    (time_unix_nano, value) of every counter point the reader handed the exporter, in order."""

    count: int = 0
    exported: list = field(default_factory=list)
    hist_sum: float = 0.0


def tap_metric_exports(exp, run: Run):
    """Record every counter point the reader hands ``exp`` (its export() stays the real one)."""
    real = exp.export

    def export(metrics_data, timeout_millis: float = 10_000, **kw):
        for rm in metrics_data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == COUNTER:
                        run.exported.extend((p.time_unix_nano, p.value) for p in metric.data.data_points)
        return real(metrics_data, timeout_millis=timeout_millis, **kw)

    exp.export = export


def workload(span_exp=None, metric_exp=None, *, seconds=4.0, rate=50, interval_ms=200,
             inject=None, drain=30.0) -> Run:
    """Emit ``rate`` spans (BatchSpanProcessor) and counter/histogram measurements
    (PeriodicExportingMetricReader every ``interval_ms``) per second for ``seconds`` while
    ``inject(stop_event)`` runs in a thread; then flush everything and drain the exporters."""
    run = Run()
    tracer_provider = meter_provider = None
    if span_exp is not None:
        tracer_provider = TracerProvider(resource=RESOURCE)
        tracer_provider.add_span_processor(BatchSpanProcessor(
            span_exp, max_queue_size=20_000, schedule_delay_millis=100, max_export_batch_size=256))
        tracer = tracer_provider.get_tracer("tests")
    if metric_exp is not None:
        tap_metric_exports(metric_exp, run)
        reader = PeriodicExportingMetricReader(metric_exp, export_interval_millis=interval_ms)
        meter_provider = MeterProvider(metric_readers=[reader], resource=RESOURCE)
        meter = meter_provider.get_meter("tests")
        counter = meter.create_counter(COUNTER)
        hist = meter.create_histogram(HISTOGRAM, unit="ms")
    stop = threading.Event()
    errors: list = []

    def injector():
        try:
            inject(stop)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    thread = threading.Thread(target=injector, name="test-injector", daemon=True) if inject else None
    total = int(seconds * rate)
    start = time.monotonic()
    if thread:
        thread.start()
    try:
        for i in range(total):
            if tracer_provider is not None:
                with tracer.start_as_current_span(f"op {i}", attributes={"op.index": i, "op.kind": "test"}):
                    pass
            if meter_provider is not None:
                counter.add(1, ATTRS)
                hist.record(float(i % 10), ATTRS)
                run.hist_sum += float(i % 10)
            run.count += 1
            pause = start + (i + 1) / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        stop.set()
        if thread:
            thread.join(30)
        if tracer_provider is not None:
            tracer_provider.force_flush(30_000)
            assert span_exp.force_flush(int(drain * 1000)), "the span exporter could not drain"
        if meter_provider is not None:
            meter_provider.force_flush(30_000)  # a last collection, exported
            assert metric_exp.force_flush(int(drain * 1000)), "the metric exporter could not drain"
    finally:
        stop.set()
        if tracer_provider is not None:
            tracer_provider.shutdown()
        if meter_provider is not None:
            meter_provider.shutdown()
    assert not errors, errors
    return run


def check_spans(rx, run: Run, label: str) -> int:
    got = numbers(rx.received_span_names(), "op")
    seen = set(got)
    missing = sorted(set(range(run.count)) - seen)
    print(f"\n{label}: spans {len(seen)}/{run.count} ({len(got) - len(seen)} duplicates), "
          f"trace requests {len(rx.requests_for('traces'))} "
          f"(statuses {sorted({str(s) for s in rx.statuses('traces')})})")
    assert not missing, f"{len(missing)} of {run.count} spans lost, first {missing[:10]}"
    return len(got) - len(seen)


def check_counter(rx, run: Run, label: str) -> list:
    """The counter's last value is what was counted, every point the reader exported arrived,
    and the series never goes backwards at the receiver. Returns the received (time, value)s."""
    points = rx.metric_points(COUNTER, ATTRS)
    received = [(p.time_unix_nano, p.as_int) for p in points]
    lost = [p for p in run.exported if p not in set(received)]
    print(f"{label}: counter points exported {len(run.exported)}, received {len(received)}, "
          f"last {rx.last_sum_value(COUNTER, ATTRS)}/{run.count}, metric requests "
          f"{len(rx.requests_for('metrics'))} (statuses {sorted({str(s) for s in rx.statuses('metrics')})})")
    assert rx.last_sum_value(COUNTER, ATTRS) == run.count
    assert not lost, f"{len(lost)} of {len(run.exported)} exported counter points never arrived"
    values = [v for _, v in received]
    times = [t for t, _ in received]
    assert values == sorted(values), "the cumulative counter went backwards at the receiver"
    assert times == sorted(times), "counter points arrived out of order"
    return received


# --------------------------------------------------------------------------------------------
# Delivery
# --------------------------------------------------------------------------------------------


def test_spans_and_metrics_arrive_with_verified_tokens(idp, protocol, receiver, make_exporter):
    rx = receiver()
    span_exp = make_exporter("traces", rx)
    metric_exp = make_exporter("metrics", rx)
    assert span_exp.protocol == metric_exp.protocol == PROTOCOLS[protocol]
    run = workload(span_exp, metric_exp, seconds=2.0, rate=50)

    check_spans(rx, run, f"delivery {protocol}")
    check_counter(rx, run, f"delivery {protocol}")
    # every request carried a JWT the receiver verified against the IdP's keys
    assert rx.requests and all(r.accepted and r.status in OK and r.token for r in rx.requests)
    assert {r.signal for r in rx.requests} == {"traces", "metrics"}
    # names, attributes, resource
    by_name = {s.name: s for s in rx.spans}
    assert attributes_dict(by_name["op 7"].attributes) == {"op.index": 7, "op.kind": "test"}
    assert all(len(s.trace_id) == 16 and len(s.span_id) == 8 for s in rx.spans)
    assert attributes_dict(rx.resource_spans[0].resource.attributes)["service.name"] == "traces-metrics-test"
    # the histogram: its last (cumulative) point counts every measurement
    hist = rx.metric_points(HISTOGRAM, ATTRS)[-1]
    assert hist.count == run.count
    assert hist.sum == pytest.approx(run.hist_sum)
    metric = next(m for req in rx.metric_requests for rm in req.resource_metrics
                  for sm in rm.scope_metrics for m in sm.metrics if m.name == COUNTER)
    assert metric.sum.is_monotonic
    assert metric.sum.aggregation_temporality == AggregationTemporality.CUMULATIVE.value
    # exported periodically (every 200 ms), not only at the end
    assert len(rx.metric_points(COUNTER, ATTRS)) >= 5


# --------------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------------


def finished_spans(*names):
    sink = InMemorySpanExporter()
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(SimpleSpanProcessor(sink))
    tracer = provider.get_tracer("tests")
    for name in names:
        with tracer.start_as_current_span(name, attributes={"op.kind": "test"}):
            pass
    provider.shutdown()
    return sink.get_finished_spans()


def collected_metrics(value=5):
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], resource=RESOURCE)
    provider.get_meter("tests").create_counter(COUNTER).add(value, ATTRS)
    data = reader.get_metrics_data()
    provider.shutdown()
    return data


@pytest.mark.parametrize("status", [401, 403])
@pytest.mark.parametrize("signal", ["traces", "metrics"])
def test_rejected_valid_token_forces_one_refresh_and_resends_the_same_request(
        idp, protocol, receiver, make_exporter, signal, status):
    rx = receiver()
    exp = make_exporter(signal, rx)
    first = exp.token_manager.get(5)
    # a JWT issued in the same second with the same claims is the same string: mark the next one
    idp.control(extra_claims={"issued": "after the rejection"})
    before = idp.token_requests()
    rx.reject_next_valid(1, status, signal=signal)

    if signal == "traces":
        result = exp.export(finished_spans("a", "b", "c"))
        assert result == SpanExportResult.SUCCESS
    else:
        result = exp.export(collected_metrics(5))
        assert result == MetricExportResult.SUCCESS

    assert idp.token_requests() == before + 1, "not exactly one forced refresh"
    assert exp.token_manager.get(5).generation == first.generation + 1
    reqs = rx.requests_for(signal)
    ok_status = 200 if protocol == "http" else grpc.StatusCode.OK
    assert [r.status for r in reqs] == [status_of(protocol, status), ok_status]
    rejected, resent = reqs
    assert rejected.n_records == resent.n_records == (3 if signal == "traces" else 1)
    assert rejected.token_id != resent.token_id and resent.accepted
    if signal == "traces":
        assert sorted(rx.received_span_names()) == ["a", "b", "c"]  # re-sent once, nothing else
    else:
        assert [p.as_int for p in rx.metric_points(COUNTER, ATTRS)] == [5]


def inject_503(rx):
    def inject(stop):
        stop.wait(0.7)
        rx.fail_next(3, 503, retry_after=1, signal="traces")
        rx.fail_next(3, 503, retry_after=1, signal="metrics")
    return inject


def inject_resets(rx):
    def inject(stop):
        stop.wait(0.7)
        rx.reset_next(2, signal="traces")
        rx.reset_next(2, signal="metrics")
        stop.wait(1.0)
        rx.reset_next(1, signal="traces")
        rx.reset_next(1, signal="metrics")
    return inject


def inject_idp_outage(idp, held):
    def inject(stop):
        stop.wait(1.0)
        idp.control(faults=[{"status": 503, "body": {"error": "temporarily_unavailable"}, "count": 100_000}])
        stop.wait(5.0)  # 2-s tokens: the exporters are without a valid token for 3 s or more
        held.append(sum(1 for r in idp.requests() if r.get("status") == 503))
        idp.control(clear_faults=True)
    return inject


@pytest.mark.faults
@pytest.mark.parametrize("fault", ["503 Retry-After", "resets", "IdP 503 for 5 s, 2-s tokens"])
def test_faults_lose_no_span_and_no_metric_point(idp, protocol, receiver, make_exporter, fault):
    rx = receiver()
    idp.control(lifetime=2 if fault.startswith("IdP") else 3)
    span_exp = make_exporter("traces", rx, timeout=3)
    metric_exp = make_exporter("metrics", rx, timeout=3)
    span_exp.token_manager.get(5)
    held: list = []
    if fault.startswith("503"):
        inject, seconds = inject_503(rx), 4.0
    elif fault == "resets":
        inject, seconds = inject_resets(rx), 4.0
    else:
        inject, seconds = inject_idp_outage(idp, held), 8.0
    run = workload(span_exp, metric_exp, seconds=seconds, rate=40, inject=inject)

    check_spans(rx, run, f"{fault} {protocol}")
    check_counter(rx, run, f"{fault} {protocol}")
    # the fault really happened
    if fault.startswith("503"):
        for signal in ("traces", "metrics"):
            assert rx.statuses(signal).count(status_of(protocol, 503)) == 3, signal
    elif fault == "resets":
        for signal in ("traces", "metrics"):
            assert sum(1 for r in rx.requests_for(signal) if r.reason == "fault: reset") == 3, signal
    else:
        assert held and held[0] >= 2, "the IdP outage was not seen by the exporters"
        # something was kept while there was no token, and delivered later
        assert span_exp.sending_queue.stats().redelivered_requests >= 1
        assert metric_exp.sending_queue.stats().redelivered_requests >= 1
    assert len(rx.faults) == 0


@pytest.mark.faults
def test_metrics_kept_during_an_outage_arrive_in_order(idp, protocol, receiver, make_exporter):
    """The endpoint refuses connections for 3 s while the reader exports every 200 ms: what was
    kept arrives afterwards, in order, before anything newer; the cumulative counter's values at
    the receiver never go backwards (checked over the whole series, after the outage too)."""
    rx = receiver()
    metric_exp = make_exporter("metrics", rx, timeout=3)
    metric_exp.token_manager.get(5)
    marks: dict = {}

    def inject(stop):
        stop.wait(1.0)
        rx.pause()
        marks["paused"] = time.time_ns()
        stop.wait(3.0)
        rx.resume()
        marks["resumed"] = time.time_ns()

    run = workload(None, metric_exp, seconds=6.0, rate=50, interval_ms=200, inject=inject)
    received = check_counter(rx, run, f"endpoint outage {protocol}")

    during = [t for t, _ in run.exported if marks["paused"] < t < marks["resumed"]]
    after = [t for t, _ in received if t > marks["resumed"]]
    print(f"outage {protocol}: {len(during)} points collected while paused, {len(after)} after")
    assert len(during) >= 8, "the outage did not cover several collections"
    assert set(during) <= {t for t, _ in received}
    assert after, "nothing was exported after the outage ended"
    assert metric_exp.sending_queue.stats().redelivered_requests >= 1
    # no duplicates either (nothing was stored without an answer)
    assert len({t for t, _ in received}) == len(received)


def many_points(series: int):
    """A collection with ``series`` counter points and ``series`` histogram points."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], resource=RESOURCE)
    meter = provider.get_meter("tests")
    counter = meter.create_counter(COUNTER)
    hist = meter.create_histogram(HISTOGRAM)
    for i in range(series):
        counter.add(i + 1, {"series": i})
        hist.record(float(i), {"series": i})
    data = reader.get_metrics_data()
    provider.shutdown()
    return data


def test_max_export_batch_size_splits_a_collection_by_data_points(idp, protocol, receiver, make_exporter):
    rx = receiver()
    exp = make_exporter("metrics", rx, max_export_batch_size=8)
    assert exp.export(many_points(15)) == MetricExportResult.SUCCESS  # 30 points
    sizes = [r.n_records for r in rx.requests_for("metrics")]
    assert sizes == [8, 8, 8, 6]
    assert all(r.accepted for r in rx.requests_for("metrics"))
    counter_values = {attributes_dict(p.attributes)["series"]: p.as_int for p in rx.metric_points(COUNTER)}
    assert counter_values == {i: i + 1 for i in range(15)}
    assert sorted(attributes_dict(p.attributes)["series"] for p in rx.metric_points(HISTOGRAM)) == list(range(15))

    # through a real reader: every request of every collection stays within the limit
    rx.clear()
    exp2 = make_exporter("metrics", rx, max_export_batch_size=3)
    reader = PeriodicExportingMetricReader(exp2, export_interval_millis=200)
    provider = MeterProvider(metric_readers=[reader], resource=RESOURCE)
    counter = provider.get_meter("tests").create_counter(COUNTER)
    for i in range(10):
        counter.add(1, {"series": i})
    assert rx.wait_for_points(COUNTER, 20, timeout=10)  # two collections or more
    provider.shutdown()
    sizes = [r.n_records for r in rx.requests_for("metrics")]
    assert sizes and max(sizes) <= 3, sizes
    assert sum(sizes) % 10 == 0


def test_max_export_batch_size_holds_for_requests_kept_after_a_failure(idp, protocol, receiver,
                                                                      make_exporter):
    rx = receiver()
    exp = make_exporter("metrics", rx, max_export_batch_size=8)
    exp.token_manager.get(5)
    rx.fail_next(1, 503, retry_delay=0.3, signal="metrics")
    exp.export(many_points(15))  # 4 requests: the first is refused, the rest queue behind it
    assert exp.force_flush(10_000)
    accepted = [r.n_records for r in rx.requests_for("metrics") if r.accepted]
    assert sum(accepted) == 30
    assert max(accepted) <= 8, accepted


# --------------------------------------------------------------------------------------------
# Temporality and aggregation, as the stock exporter reads them
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preference", ["delta", "cumulative", "lowmemory"])
def test_temporality_preference_from_os_environ_matches_the_stock_exporter(
        idp, monkeypatch, make_exporter, preference):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", preference)
    ours = make_exporter("metrics", endpoint=DEAD + "/v1/metrics", env=None)
    stock = StockHTTPMetricExporter(endpoint=DEAD + "/v1/metrics")
    try:
        assert ours._preferred_temporality == stock._preferred_temporality
    finally:
        stock.shutdown()


def test_delta_temporality_preference_reaches_the_receiver_and_the_argument_wins(
        idp, protocol, monkeypatch, receiver, make_exporter):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta")
    rx = receiver()
    delta_exp = make_exporter("metrics", rx, env=None)
    assert delta_exp._preferred_temporality[Counter] == AggregationTemporality.DELTA
    assert delta_exp._preferred_temporality[Histogram] == AggregationTemporality.DELTA
    assert delta_exp._preferred_temporality[UpDownCounter] == AggregationTemporality.CUMULATIVE
    run = workload(None, delta_exp, seconds=1.5, rate=40)
    points = rx.metric_points(COUNTER, ATTRS)
    metric = next(m for req in rx.metric_requests for rm in req.resource_metrics
                  for sm in rm.scope_metrics for m in sm.metrics if m.name == COUNTER)
    assert metric.sum.aggregation_temporality == AggregationTemporality.DELTA.value
    assert sum(p.as_int for p in points) == run.count  # each point is one interval's increments
    assert len(points) >= 3

    # the argument beats the variable
    rx.clear()
    cumulative_exp = make_exporter(
        "metrics", rx, env=None, preferred_temporality={Counter: AggregationTemporality.CUMULATIVE})
    assert cumulative_exp._preferred_temporality[Counter] == AggregationTemporality.CUMULATIVE
    run = workload(None, cumulative_exp, seconds=1.5, rate=40)
    metric = next(m for req in rx.metric_requests for rm in req.resource_metrics
                  for sm in rm.scope_metrics for m in sm.metrics if m.name == COUNTER)
    assert metric.sum.aggregation_temporality == AggregationTemporality.CUMULATIVE.value
    assert rx.last_sum_value(COUNTER, ATTRS) == run.count


def test_env_argument_covers_the_temporality_preference(idp, monkeypatch, make_exporter):
    ours = make_exporter("metrics", endpoint=DEAD + "/v1/metrics",
                         env={"OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "delta"})
    assert ours._preferred_temporality[Counter] == AggregationTemporality.DELTA
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta")
    isolated = make_exporter("metrics", endpoint=DEAD + "/v1/metrics", env={})
    assert isolated._preferred_temporality[Counter] == AggregationTemporality.CUMULATIVE


def test_unknown_metric_argument_message_suggests_the_metric_setting():
    with pytest.raises(ConfigurationError) as info:
        TokenOTLPMetricExporter(endpoint=DEAD + "/v1/metrics", token="t", env={}, max_export_batchsize=5)
    message = str(info.value)
    assert "max_export_batchsize (did you mean max_export_batch_size?)" in message
    assert "\n" not in message and len(message) < 300


# --------------------------------------------------------------------------------------------
# Per-signal settings (env= replaces os.environ)
# --------------------------------------------------------------------------------------------


def test_signal_endpoint_beats_the_generic_one(idp, protocol, receiver, make_exporter):
    rx = receiver()
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": rx.endpoint_for("traces"),
           "OTEL_EXPORTER_OTLP_ENDPOINT": DEAD,
           "OTEL_EXPORTER_OTLP_PROTOCOL": PROTOCOLS[protocol]}
    span_exp = make_exporter("traces", env=env, protocol=None)
    metric_exp = make_exporter("metrics", env=env, protocol=None, timeout=1)
    assert span_exp.protocol == metric_exp.protocol == PROTOCOLS[protocol]
    if protocol == "http":
        assert span_exp.endpoint == rx.endpoint_for("traces")
        assert metric_exp.endpoint == DEAD + "/v1/metrics"  # the generic one, with its path
    else:
        assert span_exp.endpoint == f"127.0.0.1:{rx.port}"
        assert metric_exp.endpoint == "127.0.0.1:9"
    assert span_exp.export(finished_spans("x", "y")) == SpanExportResult.SUCCESS
    assert sorted(rx.received_span_names()) == ["x", "y"]


def test_generic_endpoint_serves_every_signal(idp, protocol, receiver, make_exporter, monkeypatch):
    """OTLP/HTTP: the generic endpoint gets each signal's path (/v1/traces, /v1/metrics,
    /v1/logs), exactly as the stock exporters compute it; gRPC: one target for every signal."""
    rx = receiver()
    if protocol == "http":
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": rx.url + "/"}
    else:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": rx.url, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    span_exp = make_exporter("traces", env=env, protocol=None)
    metric_exp = make_exporter("metrics", env=env, protocol=None)
    log_exp = make_exporter("logs", env=env, protocol=None)
    assert span_exp.protocol == metric_exp.protocol == log_exp.protocol == PROTOCOLS[protocol]
    if protocol == "http":
        assert span_exp.endpoint == rx.url + "/v1/traces"
        assert metric_exp.endpoint == rx.url + "/v1/metrics"
        assert log_exp.endpoint == rx.url + "/v1/logs"
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.url + "/")
        stock_span, stock_metric = StockHTTPSpanExporter(), StockHTTPMetricExporter()
        try:
            assert span_exp.endpoint == stock_span._endpoint
            assert metric_exp.endpoint == stock_metric._endpoint
        finally:
            stock_span.shutdown()
            stock_metric.shutdown()
    else:
        assert span_exp.endpoint == metric_exp.endpoint == log_exp.endpoint == f"127.0.0.1:{rx.port}"
    assert span_exp.export(finished_spans("p")) == SpanExportResult.SUCCESS
    assert metric_exp.export(collected_metrics(3)) == MetricExportResult.SUCCESS
    assert rx.received_span_names() == ["p"]
    assert [p.as_int for p in rx.metric_points(COUNTER, ATTRS)] == [3]


def test_metrics_headers_are_sent_with_metrics_only(idp, protocol, receiver, make_exporter):
    """The stock rule: a signal's HEADERS variable, or else the generic one (not merged)."""
    rx = receiver()
    env = {"OTEL_EXPORTER_OTLP_HEADERS": "x-generic=g",
           "OTEL_EXPORTER_OTLP_METRICS_HEADERS": "x-tenant=acme,x-team=obs"}
    span_exp = make_exporter("traces", rx, env=env)
    metric_exp = make_exporter("metrics", rx, env=env)
    assert span_exp.export(finished_spans("h")) == SpanExportResult.SUCCESS
    assert metric_exp.export(collected_metrics(1)) == MetricExportResult.SUCCESS
    (metrics_req,) = rx.requests_for("metrics")
    (traces_req,) = rx.requests_for("traces")
    assert metrics_req.headers.get("x-tenant") == "acme"
    assert metrics_req.headers.get("x-team") == "obs"
    assert "x-generic" not in metrics_req.headers
    assert traces_req.headers.get("x-generic") == "g"
    assert "x-tenant" not in traces_req.headers
    assert metrics_req.accepted and traces_req.accepted  # our Authorization is still there


# --------------------------------------------------------------------------------------------
# One token for all signals
# --------------------------------------------------------------------------------------------


def drive(seconds, rate, logger=None, tracer=None, counter=None):
    start = time.monotonic()
    for i in range(int(seconds * rate)):
        if logger is not None:
            logger.emit(body=f"rec {i}", severity_number=SeverityNumber.INFO, severity_text="INFO")
        if tracer is not None:
            with tracer.start_as_current_span(f"op {i}"):
                pass
        if counter is not None:
            counter.add(1, ATTRS)
        pause = start + (i + 1) / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)


def log_pipeline(exp):
    provider = LoggerProvider(resource=RESOURCE)
    provider.add_log_record_processor(BatchLogRecordProcessor(exp, schedule_delay_millis=100))
    return provider, provider.get_logger("tests")


@pytest.mark.slow
def test_one_token_manager_for_logs_traces_and_metrics(idp, protocol, receiver, make_exporter):
    lifetime, seconds, rate = 3, 9.0, 20
    idp.control(lifetime=lifetime)
    rx = receiver()

    # 1. logs alone
    idp.clear_stats()
    log_alone = make_exporter("logs", rx)
    provider, logger = log_pipeline(log_alone)
    drive(seconds, rate, logger=logger)
    provider.shutdown()  # releases its lease: the manager closes
    assert log_alone.token_manager.closed
    alone = idp.token_requests()

    # 2. logs, traces and metrics from the same token settings
    rx.clear()
    idp.clear_stats()
    log_exp = make_exporter("logs", rx)
    span_exp = make_exporter("traces", rx)
    metric_exp = make_exporter("metrics", rx)
    assert log_exp.token_manager is span_exp.token_manager is metric_exp.token_manager
    assert log_exp.token_manager is not log_alone.token_manager
    log_provider, logger = log_pipeline(log_exp)
    tracer_provider = TracerProvider(resource=RESOURCE)
    tracer_provider.add_span_processor(BatchSpanProcessor(span_exp, schedule_delay_millis=100))
    meter_provider = MeterProvider(
        metric_readers=[PeriodicExportingMetricReader(metric_exp, export_interval_millis=200)],
        resource=RESOURCE)
    counter = meter_provider.get_meter("tests").create_counter(COUNTER)
    tracer = tracer_provider.get_tracer("tests")
    try:
        drive(seconds, rate, logger=logger, tracer=tracer, counter=counter)
        together = idp.token_requests()
        print(f"\nIdP token requests over {seconds:.0f} s with {lifetime}-s tokens ({protocol}): "
              f"logs alone {alone}, logs+traces+metrics {together}")
        # the same token for all three (jitter may move one refresh across the window's end)
        assert together <= alone + 1, (alone, together)
        assert alone >= seconds / lifetime  # the window really spanned several token lifetimes
        signals = {r.signal for r in rx.requests if r.accepted}
        assert signals == {"logs", "traces", "metrics"}

        # 3. shutting the log exporter down leaves the others' token alive
        log_provider.shutdown()
        manager = span_exp.token_manager
        assert not manager.closed
        cut = time.time()
        tokens_before = {r.token_id for r in rx.requests if r.time <= cut}
        drive(2 * lifetime, rate, tracer=tracer, counter=counter)
        tracer_provider.force_flush(10_000)
        meter_provider.force_flush(10_000)
        after = [r for r in rx.requests if r.time > cut]
        assert {r.signal for r in after} == {"traces", "metrics"}
        assert all(r.accepted for r in after), [r.status for r in after if not r.accepted]
        assert {r.token_id for r in after} - tokens_before, "no new token after the shutdown"
        assert not manager.closed
        assert rx.last_sum_value(COUNTER, ATTRS) == int(seconds * rate) + int(2 * lifetime * rate)
    finally:
        log_provider.shutdown()
        tracer_provider.shutdown()
        meter_provider.shutdown()
    assert span_exp.token_manager.closed  # the last lease released: now it closes
