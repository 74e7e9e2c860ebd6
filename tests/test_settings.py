"""Settings (settings.py): every standard OTLP setting resolves exactly as the stock exporters resolve it.

Each case builds the stock exporter of the same signal and protocol with the same process
environment and compares what it resolved (read from its private attributes: this file is the
only place that does, and only to check parity) with our frozen settings. Then the settings the
stock exporters accept silently but we refuse, each with one error naming the setting.
"""

from __future__ import annotations

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogs
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetrics
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpans
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogs
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetrics
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpans

from otel_token_exporter.config import ConfigurationError, Env
from otel_token_exporter.settings import resolve
from otel_token_exporter.signals.logs import LOGS
from otel_token_exporter.signals.metrics import METRICS
from otel_token_exporter.signals.traces import TRACES

pytestmark = pytest.mark.usefixtures("no_otel_env")

SIGNALS = {"logs": (LOGS, HttpLogs, GrpcLogs), "traces": (TRACES, HttpSpans, GrpcSpans),
           "metrics": (METRICS, HttpMetrics, GrpcMetrics)}
HTTP_ENVS = [
    {},
    {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector.example:4318"},
    {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector.example:4318/"},
    {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://generic:4318", "OTEL_EXPORTER_OTLP_{S}_ENDPOINT": "https://specific:443/custom"},
    {"OTEL_EXPORTER_OTLP_HEADERS": "x-a=1,x-b=2", "OTEL_EXPORTER_OTLP_{S}_HEADERS": "x-c=3"},
    {"OTEL_EXPORTER_OTLP_HEADERS": "X-Upper=v%20w"},
    {"OTEL_EXPORTER_OTLP_TIMEOUT": "7", "OTEL_EXPORTER_OTLP_{S}_TIMEOUT": "3.5"},
    {"OTEL_EXPORTER_OTLP_TIMEOUT": "7"},
    {"OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"},
    {"OTEL_EXPORTER_OTLP_COMPRESSION": "gzip", "OTEL_EXPORTER_OTLP_{S}_COMPRESSION": "deflate"},
    {"OTEL_EXPORTER_OTLP_CERTIFICATE": "/ca.pem", "OTEL_EXPORTER_OTLP_{S}_CLIENT_KEY": "/k.pem",
     "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": "/c.pem"},
]
GRPC_ENVS = [
    {},
    {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector.example:4317"},
    {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://generic:4317", "OTEL_EXPORTER_OTLP_{S}_ENDPOINT": "https://specific:443"},
    {"OTEL_EXPORTER_OTLP_ENDPOINT": "collector.example:4317"},
    {"OTEL_EXPORTER_OTLP_ENDPOINT": "collector.example:4317", "OTEL_EXPORTER_OTLP_INSECURE": "true"},
    {"OTEL_EXPORTER_OTLP_ENDPOINT": "collector.example:4317", "OTEL_EXPORTER_OTLP_{S}_INSECURE": "true"},
    {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://c:4317", "OTEL_EXPORTER_OTLP_INSECURE": "true"},
    {"OTEL_EXPORTER_OTLP_HEADERS": "x-a=1", "OTEL_EXPORTER_OTLP_{S}_HEADERS": "x-c=3"},
    {"OTEL_EXPORTER_OTLP_HEADERS": "x-a=1"},
    {"OTEL_EXPORTER_OTLP_TIMEOUT": "7", "OTEL_EXPORTER_OTLP_{S}_TIMEOUT": "3.5"},
    {"OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"},
]


def _env(template: dict, signal) -> dict:
    return {k.replace("{S}", signal.env): v for k, v in template.items()}


def _set(monkeypatch, env: dict) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)


def _stock_http(cls):
    exp = cls()
    client = exp._client
    headers = {k: v for k, v in client._headers.items() if k not in ("content-type", "user-agent", "Content-Encoding")}
    session = client._transport._session
    resolved = (exp._endpoint, headers, float(client._timeout), client._compression.value, session.verify, session.cert)
    exp.shutdown()
    return resolved


def _ours_http(signal, env):
    s = resolve(signal, {}, Env(env), protocol="http/protobuf")
    cert = ((s.client_certificate_file, s.client_key_file)
            if s.client_certificate_file and s.client_key_file else s.client_certificate_file)
    return (s.endpoint, dict(s.headers), s.timeout, s.compression, s.certificate_file or True, cert)


@pytest.mark.parametrize("name", SIGNALS)
@pytest.mark.parametrize("template", HTTP_ENVS, ids=lambda t: ",".join(t) or "defaults")
def test_http_settings_resolve_as_the_stock_exporter_does(monkeypatch, name, template):
    signal, stock, _ = SIGNALS[name]
    env = _env(template, signal)
    _set(monkeypatch, env)
    assert _ours_http(signal, env) == _stock_http(stock)


def _stock_grpc(cls):
    exp = cls()
    compression = {grpc.Compression.NoCompression: "none", grpc.Compression.Gzip: "gzip"}[exp._compression]
    resolved = (exp._endpoint, bool(exp._insecure), dict(exp._headers), float(exp._timeout), compression)
    exp.shutdown()
    return resolved


def _ours_grpc(signal, env):
    s = resolve(signal, {}, Env(env), protocol="grpc")
    return (s.endpoint, s.plaintext, dict(s.headers), s.timeout, s.compression)


@pytest.mark.parametrize("name", SIGNALS)
@pytest.mark.parametrize("template", GRPC_ENVS, ids=lambda t: ",".join(t) or "defaults")
def test_grpc_settings_resolve_as_the_stock_exporter_does(monkeypatch, name, template):
    signal, _, stock = SIGNALS[name]
    env = _env(template, signal)
    env.setdefault("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4317")  # no plaintext check trip
    _set(monkeypatch, env)
    ours = _ours_grpc(signal, {**env, "OTEL_TOKEN_EXPORTER_ALLOW_PLAINTEXT": "true"})
    assert ours == _stock_grpc(stock)


def test_arguments_beat_the_signal_variable_which_beats_the_generic_one():
    env = Env({"OTEL_EXPORTER_OTLP_TIMEOUT": "7", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "3"})
    assert resolve(TRACES, {}, env).timeout == 3
    assert resolve(TRACES, {"timeout": 2}, env).timeout == 2
    assert resolve(LOGS, {}, env).timeout == 7  # another signal's variable is not ours


@pytest.mark.parametrize("value", ["0", "-1", "abc", "nan", "inf"])
@pytest.mark.parametrize("variable", ["OTEL_EXPORTER_OTLP_TIMEOUT", "OTEL_EXPORTER_OTLP_LOGS_TIMEOUT"])
def test_a_timeout_that_is_not_a_positive_number_is_refused_naming_the_variable(variable, value):
    with pytest.raises(ConfigurationError) as info:
        resolve(LOGS, {}, Env({variable: value}))
    assert variable in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("value", [0, -1.5, "abc"])
def test_a_timeout_argument_that_is_not_a_positive_number_is_refused_naming_it(value):
    with pytest.raises(ConfigurationError, match=r"^timeout="):
        resolve(LOGS, {"timeout": value}, Env({}))


@pytest.mark.parametrize("variable,value", [
    ("OTEL_TOKEN_EXPORTER_BUFFER_MAX_RECORDS", "0"),
    ("OTEL_TOKEN_EXPORTER_BUFFER_MAX_RECORDS", "-5"),
    ("OTEL_TOKEN_EXPORTER_BUFFER_MAX_RECORDS", "many"),
    ("OTEL_TOKEN_EXPORTER_BUFFER_MAX_BYTES", "10"),
    ("OTEL_TOKEN_EXPORTER_MAX_AUTH_RETRIES", "-1"),
    ("OTEL_EXPORTER_OTLP_COMPRESSION", "brotli"),
    ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/json"),
    ("OTEL_EXPORTER_OTLP_INSECURE", "maybe"),
])
def test_bad_values_are_refused_with_one_line_naming_the_setting(variable, value):
    signal = METRICS if "METRICS" in variable else LOGS
    with pytest.raises(ConfigurationError) as info:
        resolve(signal, {}, Env({variable: value, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
                                if "INSECURE" in variable else {variable: value}))
    assert variable in str(info.value) and "\n" not in str(info.value)


def test_settings_are_frozen_and_hold_the_signal_defaults():
    s = resolve(METRICS, {}, Env({}))
    assert s.endpoint == "http://localhost:4318/v1/metrics" and s.timeout == 10 and s.compression == "none"
    with pytest.raises(AttributeError):
        s.timeout = 1  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# Metrics: temporality and histogram aggregation, from env= like every other setting
# --------------------------------------------------------------------------------------------


def test_temporality_preference_names_work_as_arguments_too():
    from opentelemetry.sdk.metrics import Counter, UpDownCounter
    from opentelemetry.sdk.metrics.export import AggregationTemporality as T

    from otel_token_exporter.signals.metrics import temporality

    assert temporality(None, Env({}))[Counter] is T.CUMULATIVE
    assert temporality(None, Env({"OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "DELTA"}))[Counter] is T.DELTA
    assert temporality("delta", Env({}))[UpDownCounter] is T.CUMULATIVE  # as the stock table says
    assert temporality({"counter": "delta"}, Env({}))[Counter] is T.DELTA  # a config file's mapping
    assert temporality({Counter: T.DELTA}, Env({}))[Counter] is T.DELTA


@pytest.mark.parametrize("argument,env,named", [
    ("sometimes", {}, "preferred_temporality="),
    ({"counter": "weekly"}, {}, "preferred_temporality:"),
    (None, {"OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "hourly"},
     "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"),
])
def test_a_bad_temporality_is_refused_naming_it(argument, env, named):
    from otel_token_exporter.signals.metrics import temporality

    with pytest.raises(ConfigurationError, match=named):
        temporality(argument, Env(env))


def test_a_bad_histogram_aggregation_is_refused_naming_the_variable():
    from otel_token_exporter.signals.metrics import aggregation

    name = "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION"
    with pytest.raises(ConfigurationError, match=name):
        aggregation(None, Env({name: "linear"}))
    assert type(aggregation(None, Env({name: "base2_exponential_bucket_histogram"})).popitem()[1]).__name__ == (
        "ExponentialBucketHistogramAggregation")


# --------------------------------------------------------------------------------------------
# A protocol that does not fit the endpoint: one warning naming both settings
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("env,named", [
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "https://o.example/v1/logs"},
     ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL")),
    ({"OTEL_EXPORTER_OTLP_LOGS_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "https://o.example:4318"},
     ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL")),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "https://o.example:4317"},
     ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL")),
])
def test_a_protocol_that_does_not_fit_the_endpoint_is_one_warning_naming_both(caplog, env, named):
    caplog.set_level("WARNING", logger="otel_token_exporter")
    resolve(LOGS, {}, Env(env))
    resolve(LOGS, {}, Env(env))  # said once
    lines = [r.getMessage() for r in caplog.records if r.name == "otel_token_exporter"]
    assert len(lines) == 1 and all(name in lines[0] for name in named), lines


@pytest.mark.parametrize("env", [
    {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "https://o.example:4317"},
    {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://o.example:4318"},
    {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://o.example/v1/traces"},
])
def test_a_fitting_protocol_says_nothing(caplog, env):
    caplog.set_level("WARNING", logger="otel_token_exporter")
    resolve(TRACES, {}, Env(env))
    assert not [r for r in caplog.records if r.name == "otel_token_exporter"]
