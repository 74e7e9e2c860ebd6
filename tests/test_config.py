"""Configuration: every bad setting fails at construction with one clear message naming it; arguments
beat env, env beats defaults; the entry points work as ``opentelemetry-instrument`` uses them.

No network peer is needed: the constructor does no network I/O (token URLs below are never reached).
"""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest
from opentelemetry.sdk._logs.export import LogRecordExporter

from otel_token_exporter import ConfigurationError, TokenOTLPLogExporter
from otel_token_exporter import TokenOTLPGRPCLogExporter, TokenOTLPHTTPLogExporter

SECRET = "very-secret-value-42"
P = "OTEL_TOKEN_EXPORTER_"
BASE = {
    P + "TOKEN_URL": "http://127.0.0.1:9/token",
    P + "CLIENT_ID": "cid",
    P + "CLIENT_SECRET": SECRET,
    "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://127.0.0.1:9/v1/logs",
}


def env_with(**changes):
    env = dict(BASE)
    for k, v in changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def build(cls=TokenOTLPLogExporter, **kw):
    exporter = cls(**kw)
    exporter.shutdown()
    return exporter


def config_error(env=None, cls=TokenOTLPLogExporter, **kw) -> str:
    with pytest.raises(ConfigurationError) as info:
        build(cls, env=env if env is not None else dict(BASE), **kw)
    message = str(info.value)
    assert SECRET not in message
    assert "\n" not in message.strip()  # one line
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no chained internals
    return message


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    import os

    for k in list(os.environ):
        if k.startswith("OTEL_"):
            monkeypatch.delenv(k)


# --------------------------------------------------------------------------------------------
# Bad settings
# --------------------------------------------------------------------------------------------


def test_missing_client_id_names_the_variable():
    assert P + "CLIENT_ID" in config_error(env_with(**{P + "CLIENT_ID": None}))


def test_missing_secret_names_both_secret_variables():
    msg = config_error(env_with(**{P + "CLIENT_SECRET": None}))
    assert P + "CLIENT_SECRET" in msg and P + "CLIENT_SECRET_FILE" in msg


def test_secret_and_secret_file_together_is_an_error(tmp_path):
    f = tmp_path / "secret"
    f.write_text(SECRET)
    msg = config_error(env_with(**{P + "CLIENT_SECRET_FILE": str(f)}))
    assert P + "CLIENT_SECRET" in msg and P + "CLIENT_SECRET_FILE" in msg


def test_static_token_and_token_url_together_names_both():
    msg = config_error(env_with(**{P + "TOKEN": SECRET}))
    assert P + "TOKEN_URL" in msg and P + "TOKEN " in msg + " "
    assert P + "SOURCE" in msg  # says how to choose


def test_unknown_source_names_the_variable():
    msg = config_error(env_with(**{P + "SOURCE": "kerberos"}))
    assert P + "SOURCE" in msg and "kerberos" in msg


@pytest.mark.parametrize("var", ["OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"])
def test_unsupported_protocol_names_the_variable(var):
    msg = config_error(env_with(**{var: "http/json"}))
    assert var in msg and "http/json" in msg


@pytest.mark.parametrize(
    "var,value",
    [
        (P + "MAX_AUTH_RETRIES", "two"),
        (P + "MAX_AUTH_RETRIES", "-1"),
        (P + "TOKEN_TIMEOUT", "soon"),
        (P + "TOKEN_TIMEOUT", "0"),
        (P + "DEFAULT_LIFETIME", "nan"),
        (P + "FATAL_COOLDOWN", "-5"),
    ],
)
def test_bad_numeric_value_names_the_variable(var, value):
    msg = config_error(env_with(**{var: value}))
    assert var in msg


def test_bad_compression_argument_is_a_configuration_error():
    msg = config_error(compression="brotli")
    assert "compression" in msg and "brotli" in msg


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_bad_compression_env_names_the_variable(protocol, monkeypatch):
    # the stock exporters read OTEL_EXPORTER_OTLP_COMPRESSION from the process environment
    for k, v in BASE.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "brotli")
    with pytest.raises(ConfigurationError, match="OTEL_EXPORTER_OTLP_COMPRESSION"):
        build(protocol=protocol)


def test_unknown_keyword_argument_is_named():
    msg = config_error(client_sekret="x")
    assert "client_sekret" in msg


def test_secret_never_in_message_even_when_it_is_the_bad_value():
    # a secret that looks like a URL or number must not be echoed back either
    msg = config_error(env_with(**{P + "TOKEN_URL": None, P + "TOKEN": SECRET + "\n\nx"}))
    assert P + "TOKEN" in msg


# --------------------------------------------------------------------------------------------
# Precedence
# --------------------------------------------------------------------------------------------


def test_arguments_beat_env():
    env = env_with(**{P + "HEADER": "X-From-Env", P + "MAX_AUTH_RETRIES": "3",
                      "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    exporter = build(env=env, header_name="X-From-Arg", max_auth_retries=0,
                     protocol="http/protobuf", client_id="arg-client")
    assert exporter.settings.header_name == "X-From-Arg"
    assert exporter.settings.max_auth_retries == 0
    assert exporter.protocol == "http/protobuf"
    assert exporter.token_manager._source.client_id == "arg-client"


def test_env_beats_defaults():
    env = env_with(**{P + "HEADER": "X-From-Env", P + "SCHEME": "Token",
                      P + "MAX_AUTH_RETRIES": "3", "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL": "grpc",
                      "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://127.0.0.1:9"})
    exporter = build(env=env)
    assert (exporter.settings.header_name, exporter.settings.scheme, exporter.settings.max_auth_retries) == (
        "X-From-Env", "Token", 3)
    assert exporter.protocol == "grpc"


def test_defaults():
    exporter = build(env=dict(BASE))
    assert (exporter.settings.header_name, exporter.settings.scheme, exporter.settings.max_auth_retries) == (
        "Authorization", "Bearer", 1)
    assert exporter.protocol == "http/protobuf"


def test_signal_specific_protocol_beats_generic():
    env = env_with(OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
                   OTEL_EXPORTER_OTLP_LOGS_PROTOCOL="http/protobuf")
    assert build(env=env).protocol == "http/protobuf"


# --------------------------------------------------------------------------------------------
# Entry points (what opentelemetry-instrument loads)
# --------------------------------------------------------------------------------------------

EXPECTED = {
    "token_otlp": TokenOTLPLogExporter,
    "token_otlp_proto_http": TokenOTLPHTTPLogExporter,
    "token_otlp_proto_grpc": TokenOTLPGRPCLogExporter,
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_entry_point_is_a_log_exporter_class_constructible_from_env(name, monkeypatch):
    found = [ep for ep in entry_points(group="opentelemetry_logs_exporter") if ep.name == name]
    assert len(found) == 1
    cls = found[0].load()
    assert isinstance(cls, type) and issubclass(cls, LogRecordExporter)
    assert cls is EXPECTED[name]
    for k, v in BASE.items():
        monkeypatch.setenv(k, v)
    exporter = cls()  # no arguments, as the SDK's auto-configuration builds it
    try:
        expected = {"token_otlp_proto_grpc": "grpc"}.get(name, "http/protobuf")
        assert exporter.protocol == expected
    finally:
        exporter.shutdown()


def test_fixed_protocol_entry_points_ignore_protocol_env(monkeypatch):
    for k, v in BASE.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    assert build(TokenOTLPHTTPLogExporter).protocol == "http/protobuf"


def test_missing_client_id_from_real_environment(monkeypatch):
    for k, v in BASE.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv(P + "CLIENT_ID")
    with pytest.raises(ConfigurationError, match=P + "CLIENT_ID"):
        TokenOTLPLogExporter()


def test_scheme_none_in_env_sends_the_bare_token():
    from otel_token_exporter import TokenOTLPLogExporter

    exporter = TokenOTLPLogExporter(
        endpoint="http://127.0.0.1:9/v1/logs",
        env={"OTEL_TOKEN_EXPORTER_TOKEN": "abc123", "OTEL_TOKEN_EXPORTER_SCHEME": "none"},
    )
    try:
        held = exporter.token_manager.get(timeout=5)
        assert exporter._core.authenticator.header_value(held) == "abc123"
    finally:
        exporter.shutdown(timeout_millis=200)
