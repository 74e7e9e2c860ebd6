"""Token sources, and choosing one from settings.

Each source lives in its own module and registers a builder here that turns settings into a
source. ``OTEL_TOKEN_EXPORTER_SOURCE`` picks one by name; unset, the source is inferred from which of
the sources' variables are set, and two conflicting ones are an error naming both. Third-party
sources register a builder in the entry-point group ``otel_token_exporter_sources``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..config import ENV_PREFIX, ConfigurationError, Env
from ..token import Token, TokenSource
from .command import CommandTokenSource
from .file import FileTokenSource
from .oauth2 import ClientCredentialsSource
from .static import StaticTokenSource

__all__ = [
    "ClientCredentialsSource",
    "StaticTokenSource",
    "FileTokenSource",
    "CommandTokenSource",
    "CallableSource",
    "build_source",
    "as_source",
    "SOURCE_SETTING",
    "ENTRY_POINT_GROUP",
]

SOURCE_SETTING = ENV_PREFIX + "SOURCE"

#: Keyword arguments the exporters accept for configuring a source (each mirrors an env var).
SOURCE_OPTIONS = frozenset(
    {
        "source",
        "token",
        "token_url",
        "client_id",
        "client_secret",
        "client_secret_file",
        "scope",
        "audience",
        "extra_params",
        "client_auth",
        "client_private_key_file",
        "client_key_id",
        "client_key_alg",
        "client_assertion_file",
        "resource",
        "token_client_certificate_file",
        "token_client_key_file",
        "subject_token_file",
        "subject_token_type",
        "token_ca_file",
        "token_timeout",
        "token_file",
        "token_file_recheck",
        "token_command",
        "token_command_timeout",
        "google_credentials",
        "google_scopes",
        "azure_credential",
        "azure_scope",
        "azure_tenant_id",
        "cache_dir",  # OTEL_TOKEN_EXPORTER_CACHE_DIR: the shared token cache (cache.py), not a source
    }
)
ENTRY_POINT_GROUP = "otel_token_exporter_sources"


@dataclass(frozen=True)
class _Builder:
    """How to make one kind of source: the settings that select it and the function that builds it."""

    name: str
    selected_by: tuple[str, ...]  # env vars whose presence infers this source
    build: Callable[[Env, Mapping[str, Any]], TokenSource]


def _arg_or_env(options: Mapping[str, Any], env: Env, arg: str, var: str, *, secret: bool = False):
    if options.get(arg) is not None:
        return options[arg]
    return env.secret(var) if secret else env.str(var)


def _seconds(options: Mapping[str, Any], env: Env, arg: str, var: str, default: float) -> float:
    """A positive number of seconds: the argument when given (even 0, which is refused, not taken
    as unset), else the variable, else ``default``. Errors name the argument or the variable."""
    value = options.get(arg)
    if value is None:
        return env.float(var, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{arg}={value!r} is not a number (seconds)")
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(f"{arg}={value!r} is out of range (must be a positive number of seconds)")
    return float(value)


def _build_oauth2(env: Env, options: Mapping[str, Any]) -> TokenSource:
    e = ENV_PREFIX

    def get(arg: str, var: str, *, secret: bool = False):
        return _arg_or_env(options, env, arg, e + var, secret=secret)

    token_url = get("token_url", "TOKEN_URL")
    client_id = get("client_id", "CLIENT_ID")
    assertion_file = get("client_assertion_file", "CLIENT_ASSERTION_FILE")
    if not token_url:
        raise ConfigurationError(f"the OAuth2 source needs a token URL: set {e}TOKEN_URL")
    if not token_url.lower().startswith(("https://", "http://")):
        raise ConfigurationError(f"{e}TOKEN_URL must be an http(s) URL")
    if not client_id and not assertion_file:
        raise ConfigurationError(
            f"{e}TOKEN_URL is set but {e}CLIENT_ID is not: the token endpoint needs a client id"
        )
    # Keyword extra_params replace env ones of the same name; repeated keys are kept (RFC 8707).
    given = options.get("extra_params") or {}
    given = list(given.items()) if isinstance(given, Mapping) else list(given)
    names = {k for k, _ in given}
    extra = [(k, v) for k, v in env.param_pairs(e + "EXTRA_PARAMS") if k not in names] + given
    ca_file = get("token_ca_file", "TOKEN_CA_FILE")
    timeout = _seconds(options, env, "token_timeout", e + "TOKEN_TIMEOUT", 10.0)
    return ClientCredentialsSource(
        token_url,
        client_id,
        get("client_secret", "CLIENT_SECRET", secret=True),
        client_secret_file=get("client_secret_file", "CLIENT_SECRET_FILE"),
        scope=get("scope", "SCOPE"),
        audience=get("audience", "AUDIENCE"),
        resource=get("resource", "RESOURCE"),
        extra_params=extra,
        auth_method=get("client_auth", "CLIENT_AUTH"),
        private_key_file=get("client_private_key_file", "CLIENT_KEY_FILE"),
        key_id=get("client_key_id", "CLIENT_KEY_ID"),
        key_alg=get("client_key_alg", "CLIENT_KEY_ALG"),
        client_assertion_file=assertion_file,
        client_certificate_file=get("token_client_certificate_file", "TOKEN_CLIENT_CERTIFICATE"),
        client_key_file=get("token_client_key_file", "TOKEN_CLIENT_KEY"),
        subject_token_file=get("subject_token_file", "SUBJECT_TOKEN_FILE"),
        subject_token_type=get("subject_token_type", "SUBJECT_TOKEN_TYPE"),
        timeout=timeout,
        verify=ca_file or True,
        secret_file_setting=e + "CLIENT_SECRET_FILE",
    )


def _build_static(env: Env, options: Mapping[str, Any]) -> TokenSource:
    token = _arg_or_env(options, env, "token", ENV_PREFIX + "TOKEN", secret=True)
    if not token:
        raise ConfigurationError(f"the static source needs a token: set {ENV_PREFIX}TOKEN")
    try:
        return StaticTokenSource(token.strip())
    except ValueError as exc:
        raise ConfigurationError(f"{ENV_PREFIX}TOKEN is unusable: {exc}") from None


def _build_file(env: Env, options: Mapping[str, Any]) -> TokenSource:
    e = ENV_PREFIX
    path = _arg_or_env(options, env, "token_file", e + "TOKEN_FILE")
    if not path:
        raise ConfigurationError(f"the file source needs a path: set {e}TOKEN_FILE")
    recheck = _seconds(options, env, "token_file_recheck", e + "TOKEN_FILE_RECHECK", 60.0)
    return FileTokenSource(path, recheck=recheck, setting=e + "TOKEN_FILE")


def _build_command(env: Env, options: Mapping[str, Any]) -> TokenSource:
    e = ENV_PREFIX
    command = _arg_or_env(options, env, "token_command", e + "TOKEN_COMMAND")
    if not command:
        raise ConfigurationError(f"the command source needs a command: set {e}TOKEN_COMMAND")
    timeout = _seconds(options, env, "token_command_timeout", e + "TOKEN_COMMAND_TIMEOUT", 30.0)
    try:
        return CommandTokenSource(command, timeout=timeout, setting=e + "TOKEN_COMMAND")
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None


def _build_google(env: Env, options: Mapping[str, Any]) -> TokenSource:
    from .google import GoogleCredentialsSource

    raw = options.get("google_scopes") or env.str(ENV_PREFIX + "GOOGLE_SCOPES")
    if isinstance(raw, str):
        raw = [s for s in raw.replace(",", " ").split() if s]
    return GoogleCredentialsSource(options.get("google_credentials"), scopes=raw or None)


def _build_azure(env: Env, options: Mapping[str, Any]) -> TokenSource:
    from .azure import AzureCredentialSource

    e = ENV_PREFIX
    scope = _arg_or_env(options, env, "azure_scope", e + "AZURE_SCOPE")
    if not scope:
        raise ConfigurationError(
            f"the azure source needs a scope: set {e}AZURE_SCOPE (for example api://<app-id>/.default)"
        )
    return AzureCredentialSource(
        options.get("azure_credential"),
        scope,
        tenant_id=_arg_or_env(options, env, "azure_tenant_id", e + "AZURE_TENANT_ID"),
    )


BUILDERS: dict[str, _Builder] = {
    "oauth2": _Builder("oauth2", (ENV_PREFIX + "TOKEN_URL",), _build_oauth2),
    "static": _Builder("static", (ENV_PREFIX + "TOKEN",), _build_static),
    "file": _Builder("file", (ENV_PREFIX + "TOKEN_FILE",), _build_file),
    "command": _Builder("command", (ENV_PREFIX + "TOKEN_COMMAND",), _build_command),
    # google has no variable of its own to infer it from (GOOGLE_APPLICATION_CREDENTIALS is set
    # for many other reasons): choose it with OTEL_TOKEN_EXPORTER_SOURCE=google.
    "google": _Builder("google", (), _build_google),
    "azure": _Builder("azure", (ENV_PREFIX + "AZURE_SCOPE",), _build_azure),
}
_OPTION_FOR_SETTING = {
    ENV_PREFIX + "TOKEN_URL": "token_url",
    ENV_PREFIX + "TOKEN": "token",
    ENV_PREFIX + "TOKEN_FILE": "token_file",
    ENV_PREFIX + "TOKEN_COMMAND": "token_command",
    ENV_PREFIX + "AZURE_SCOPE": "azure_scope",
}


def register(name: str, selected_by: tuple[str, ...], build: Callable[[Env, Mapping[str, Any]], TokenSource]) -> None:
    """Add a built-in source (used by source modules that need optional dependencies)."""
    BUILDERS[name] = _Builder(name, selected_by, build)


def build_source(env: Env, options: Mapping[str, Any] | None = None) -> TokenSource:
    """The token source the settings ask for, or a :class:`ConfigurationError` saying what is missing."""
    options = options or {}
    name = options.get("source") or env.str(SOURCE_SETTING)
    if name:
        builder = BUILDERS.get(name.lower()) or _plugin(name)
        return builder.build(env, options)
    chosen = [
        (b, var)
        for b in BUILDERS.values()
        for var in b.selected_by
        if env.str(var) or options.get(_OPTION_FOR_SETTING.get(var, "")) is not None
    ]
    distinct = {b.name for b, _ in chosen}
    if len(distinct) > 1:
        names = sorted(var for _, var in chosen)
        listed = ", ".join(names[:-1]) + " and " + names[-1]
        raise ConfigurationError(
            f"{listed} are {'both ' if len(names) == 2 else ''}set and select different token "
            f"sources; unset all but one, or choose with {SOURCE_SETTING}"
        )
    if not chosen:
        raise ConfigurationError(
            "no token source configured: set OTEL_TOKEN_EXPORTER_TOKEN_URL (OAuth2 client "
            "credentials), OTEL_TOKEN_EXPORTER_TOKEN_FILE, OTEL_TOKEN_EXPORTER_TOKEN_COMMAND, "
            "OTEL_TOKEN_EXPORTER_AZURE_SCOPE or OTEL_TOKEN_EXPORTER_TOKEN, choose one (also "
            f"google, or a plug-in) with {SOURCE_SETTING}, or pass token_source="
        )
    return chosen[0][0].build(env, options)


def _plugin(name: str) -> _Builder:
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        known = ", ".join(sorted(BUILDERS))
        raise ConfigurationError(
            f"{SOURCE_SETTING}={name!r} is not a known token source (built in: {known}; "
            f"plug-ins register in the entry-point group {ENTRY_POINT_GROUP!r})"
        )
    try:
        factory = found[0].load()
    except Exception as exc:  # noqa: BLE001 - a broken plug-in is a configuration problem
        raise ConfigurationError(
            f"{SOURCE_SETTING}={name!r}: the plug-in could not be loaded ({type(exc).__name__}: {exc})"
        ) from None
    return _Builder(name, (), lambda env, options: as_source(factory(env, options)))


class CallableSource:
    """Adapts a zero-argument callable returning a ``Token`` or a token string."""

    def __init__(self, function: Callable[[], Token | str]) -> None:
        self._function = function
        self.__name__ = getattr(function, "__name__", type(function).__name__)

    def fetch(self) -> Token:
        value = self._function()
        if isinstance(value, Token):
            return value
        if isinstance(value, str):
            return StaticTokenSource(value).fetch()
        raise TypeError(f"token callable {self.__name__} returned {type(value).__name__}, not str or Token")

    def __repr__(self) -> str:
        return f"CallableSource({self.__name__})"


def as_source(obj: Any) -> TokenSource:
    """Any object with ``fetch()``, or a callable returning a token, as a :class:`TokenSource`."""
    if callable(getattr(obj, "fetch", None)):
        return obj
    if callable(obj):
        return CallableSource(obj)
    raise ConfigurationError(
        f"token_source must have a fetch() method or be a callable, not {type(obj).__name__}"
    )
