"""Choosing a token source: by name, by inference from set variables, and third-party plug-ins
registered through a real entry point (a dist-info directory on sys.path)."""

from __future__ import annotations

import importlib
import sys
import textwrap

import pytest

from otel_token_exporter.config import ConfigurationError, Env
from otel_token_exporter.sources import (
    CallableSource,
    ClientCredentialsSource,
    CommandTokenSource,
    FileTokenSource,
    StaticTokenSource,
    build_source,
)

E = "OTEL_TOKEN_EXPORTER_"


@pytest.mark.parametrize("var, value, kind", [
    ("TOKEN_FILE", "/var/run/secrets/tokens/otel", FileTokenSource),
    ("TOKEN_COMMAND", "print-token --audience otel", CommandTokenSource),
    ("TOKEN", "static-value", StaticTokenSource),
])
def test_source_inferred_from_the_one_variable_set(var, value, kind):
    assert isinstance(build_source(Env({E + var: value})), kind)


def test_two_conflicting_variables_name_both():
    with pytest.raises(ConfigurationError) as err:
        build_source(Env({E + "TOKEN_FILE": "/t", E + "TOKEN_URL": "https://idp/token", E + "CLIENT_ID": "c"}))
    assert E + "TOKEN_FILE" in str(err.value) and E + "TOKEN_URL" in str(err.value)
    assert E + "SOURCE" in str(err.value)


def test_explicit_source_wins_over_inference():
    env = Env({E + "SOURCE": "file", E + "TOKEN_FILE": "/t", E + "TOKEN": "x"})
    assert isinstance(build_source(env), FileTokenSource)


def test_nothing_set_lists_the_choices():
    with pytest.raises(ConfigurationError, match="TOKEN_FILE.*TOKEN_COMMAND"):
        build_source(Env({}))


def test_unknown_name_lists_built_ins_and_the_entry_point_group():
    with pytest.raises(ConfigurationError) as err:
        build_source(Env({E + "SOURCE": "nonesuch"}))
    assert "otel_token_exporter_sources" in str(err.value) and "command" in str(err.value)


@pytest.fixture
def plugin_dist(tmp_path, monkeypatch):
    """Install a tiny plug-in distribution the way pip would lay it out (module + dist-info)."""
    (tmp_path / "vault_token_plugin.py").write_text(textwrap.dedent('''
        from otel_token_exporter import Token

        class VaultSource:
            def __init__(self, env, options):
                self.path = env.str("VAULT_PLUGIN_PATH")

            def fetch(self):
                return Token("plugin-token-from-" + self.path)

        def factory(env, options):
            return VaultSource(env, options)

        def as_function(env, options):
            return lambda: "plugin-callable-token"

        def broken(env, options):
            raise RuntimeError("boom")
    '''))
    info = tmp_path / "vault_token_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vault-token-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""
        [otel_token_exporter_sources]
        vault = vault_token_plugin:factory
        vault_fn = vault_token_plugin:as_function
        missing = vault_token_plugin:no_such_attribute
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield
    sys.modules.pop("vault_token_plugin", None)


def test_plugin_selected_by_name_gets_env_and_options(plugin_dist):
    source = build_source(Env({E + "SOURCE": "vault", "VAULT_PLUGIN_PATH": "secret/otel"}))
    assert source.fetch().value == "plugin-token-from-secret/otel"


def test_plugin_returning_a_callable_is_adapted(plugin_dist):
    source = build_source(Env({E + "SOURCE": "vault_fn"}))
    assert isinstance(source, CallableSource) and source.fetch().value == "plugin-callable-token"


def test_plugin_that_cannot_load_is_a_configuration_error_naming_it(plugin_dist):
    with pytest.raises(ConfigurationError, match="'missing'.*could not be loaded"):
        build_source(Env({E + "SOURCE": "missing"}))


def test_oauth2_still_inferred_from_token_url():
    env = Env({E + "TOKEN_URL": "https://idp/token", E + "CLIENT_ID": "c", E + "CLIENT_SECRET": "s"})
    assert isinstance(build_source(env), ClientCredentialsSource)


# -- the sources' numeric settings: bad values are one ConfigurationError naming the setting --------

_SOURCES_WITH_NUMBERS = {
    # variable: (the env that selects the source, the keyword argument, the attribute it sets)
    "TOKEN_COMMAND_TIMEOUT": ({E + "TOKEN_COMMAND": "print-token"}, "token_command_timeout", "timeout"),
    "TOKEN_FILE_RECHECK": ({E + "TOKEN_FILE": "/var/run/secrets/token"}, "token_file_recheck", "recheck"),
    "TOKEN_TIMEOUT": (
        {E + "TOKEN_URL": "https://idp.example/token", E + "CLIENT_ID": "c", E + "CLIENT_SECRET": "s"},
        "token_timeout",
        "timeout",
    ),
}


@pytest.mark.parametrize("var, value", [
    ("TOKEN_COMMAND_TIMEOUT", "0"),
    ("TOKEN_COMMAND_TIMEOUT", "-1"),
    ("TOKEN_COMMAND_TIMEOUT", "abc"),
    ("TOKEN_FILE_RECHECK", "0"),
    ("TOKEN_FILE_RECHECK", "abc"),
    ("TOKEN_TIMEOUT", "0"),
    ("TOKEN_TIMEOUT", "abc"),
    ("TOKEN_TIMEOUT", "inf"),
])
def test_a_bad_numeric_variable_is_a_configuration_error_naming_it(var, value):
    base, _, _ = _SOURCES_WITH_NUMBERS[var]
    with pytest.raises(ConfigurationError) as err:
        build_source(Env({**base, E + var: value}))
    assert str(err.value).count(E + var) == 1, str(err.value)


@pytest.mark.parametrize("var", sorted(_SOURCES_WITH_NUMBERS))
@pytest.mark.parametrize("value", [0, -1, 0.0, float("nan"), float("inf"), True, "5", None])
def test_a_bad_numeric_argument_is_a_configuration_error_naming_it_not_a_fallback_to_env(var, value):
    base, arg, attr = _SOURCES_WITH_NUMBERS[var]
    env = Env({**base, E + var: "7"})
    if value is None:  # not given: the variable applies
        assert getattr(build_source(env, {arg: value}), attr) == 7
        return
    with pytest.raises(ConfigurationError) as err:
        build_source(env, {arg: value})
    assert arg in str(err.value) and E + var not in str(err.value), str(err.value)


@pytest.mark.parametrize("var", sorted(_SOURCES_WITH_NUMBERS))
def test_a_good_numeric_argument_beats_the_variable(var):
    base, arg, attr = _SOURCES_WITH_NUMBERS[var]
    assert getattr(build_source(Env({**base, E + var: "7"}), {arg: 2.5}), attr) == 2.5
    assert getattr(build_source(Env({**base, E + var: "7"}), {arg: 3}), attr) == 3


@pytest.mark.parametrize("var", sorted(_SOURCES_WITH_NUMBERS))
def test_the_exporter_reports_a_bad_numeric_setting_once(var):
    from otel_token_exporter import TokenOTLPLogExporter

    base, arg, _ = _SOURCES_WITH_NUMBERS[var]
    env = {**base, "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://127.0.0.1:9/v1/logs", E + var: "0"}
    with pytest.raises(ConfigurationError) as err:
        TokenOTLPLogExporter(env=env)
    assert str(err.value).count(E + var) == 1, str(err.value)
    with pytest.raises(ConfigurationError) as err:
        TokenOTLPLogExporter(env={**env, E + var: "7"}, **{arg: 0})
    assert arg in str(err.value), str(err.value)
