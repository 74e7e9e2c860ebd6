"""Credential providers for the *stock* OTLP exporters (entry-point group
``opentelemetry_otlp_credential_provider``; experimental upstream).

* ``token_http`` returns a :class:`~otel_token_exporter.http.TokenAuthSession` (a
  ``requests.Session``) that puts the current token on every request and re-sends once after a
  401/403 with a newer token. Select it with
  ``OTEL_PYTHON_EXPORTER_OTLP_HTTP_LOGS_CREDENTIAL_PROVIDER=token_http`` (or the ``..._HTTP_...``
  variable for every signal).
* ``token_grpc`` returns ``grpc.ChannelCredentials``: TLS channel credentials (CA and client
  certificate from the standard ``OTEL_EXPORTER_OTLP[_LOGS]_CERTIFICATE``/``CLIENT_KEY``/
  ``CLIENT_CERTIFICATE`` variables) composed with call credentials that add the manager's current
  token as ``authorization`` metadata. Select it with
  ``OTEL_PYTHON_EXPORTER_OTLP_GRPC_CREDENTIAL_PROVIDER=token_grpc``. Limits: call credentials are only
  sent over TLS (or over loopback with ``OTEL_TOKEN_EXPORTER_GRPC_CHANNEL=local``); the stock gRPC
  exporter ignores credentials entirely for ``http://`` endpoints or ``..._INSECURE=true``; and a
  rejected call is **not** re-sent (the exporter drops the batch; the next call carries a refreshed
  token). The ``token_otlp`` exporter has none of these limits.

The token source comes from the same ``OTEL_TOKEN_EXPORTER_*`` variables as the exporter. One
:class:`~otel_token_exporter.manager.TokenManager` is shared per process and per configuration,
so traces, metrics and logs exporters built from the same settings share one token.
"""

from __future__ import annotations

import grpc

from .auth import Authenticator
from .config import ENV_PREFIX, ConfigurationError, Env, check_header, scheme_from_env
from .http import TokenAuthSession
from .manager import TokenManager
from .registry import acquire
from .security import ALLOW_PLAINTEXT_SETTING
from .token import NoTokenAvailable

__all__ = ["token_http", "token_grpc", "shared_manager", "TokenMetadataPlugin"]

def shared_manager(env: Env | None = None) -> TokenManager:
    """The process-wide, started token manager for the token settings in ``env`` (default: os.environ).

    The same one the exporters built from these settings use (:mod:`.registry`); a credential
    provider has no shutdown, so its lease is never released.
    """
    env = env or Env.current()
    lease = acquire(env, {}, allow_plaintext=env.bool(ALLOW_PLAINTEXT_SETTING, False))
    return lease.manager


def _header(env: Env) -> tuple[str, str]:
    name = env.str(ENV_PREFIX + "HEADER", "Authorization")
    scheme = scheme_from_env(env)
    check_header(name, scheme)
    return name, scheme


def _timeout(env: Env) -> float:
    for name in ("OTEL_EXPORTER_OTLP_LOGS_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"):
        if env.str(name):
            return env.float(name, 10.0)
    return 10.0


def token_http() -> TokenAuthSession:
    """Entry point ``token_http``: a requests session with a fresh bearer token on every request."""
    env = Env.current()
    name, scheme = _header(env)
    return TokenAuthSession(
        shared_manager(env),
        header_name=name,
        scheme=scheme,
        max_auth_retries=env.int(ENV_PREFIX + "MAX_AUTH_RETRIES", 1),
        default_timeout=_timeout(env),
    )


class TokenMetadataPlugin(grpc.AuthMetadataPlugin):
    """gRPC call credentials plugin: the manager's current token as request metadata.

    Runs on a gRPC thread for every call; it only waits (up to ``timeout`` s) when no valid token
    exists yet. Without a token the call fails with UNAUTHENTICATED naming the token source.
    """

    def __init__(self, manager: TokenManager, *, header_name: str = "authorization", scheme: str = "Bearer",
                 timeout: float = 10.0) -> None:
        self.manager = manager
        self.key = header_name.lower()  # gRPC metadata keys must be lower case
        self._auth = Authenticator(manager, header_name=self.key, scheme=scheme)
        self.timeout = timeout

    def __call__(self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback) -> None:
        try:
            held = self.manager.get(self.timeout)
        except NoTokenAvailable as exc:
            callback((), exc)
            return
        callback(((self.key, self._auth.header_value(held)),), None)


def _read(env: Env, *names: str) -> bytes | None:
    for name in names:
        path = env.str(name)
        if path:
            try:
                with open(path, "rb") as f:
                    return f.read()
            except OSError as exc:
                raise ConfigurationError(f"{name}={path!r} cannot be read: {exc.strerror}") from None
    return None


def token_grpc() -> grpc.ChannelCredentials:
    """Entry point ``token_grpc``: TLS (or local) channel credentials plus token call credentials."""
    env = Env.current()
    name, scheme = _header(env)
    plugin = TokenMetadataPlugin(shared_manager(env), header_name=name, scheme=scheme, timeout=_timeout(env))
    call = grpc.metadata_call_credentials(plugin, name="otel_token_exporter")
    channel_kind = env.choice(ENV_PREFIX + "GRPC_CHANNEL", "tls", ("tls", "local"))
    if channel_kind == "local":
        channel = grpc.local_channel_credentials(grpc.LocalConnectionType.LOCAL_TCP)
    else:
        channel = grpc.ssl_channel_credentials(
            root_certificates=_read(env, "OTEL_EXPORTER_OTLP_LOGS_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE"),
            private_key=_read(env, "OTEL_EXPORTER_OTLP_LOGS_CLIENT_KEY", "OTEL_EXPORTER_OTLP_CLIENT_KEY"),
            certificate_chain=_read(
                env, "OTEL_EXPORTER_OTLP_LOGS_CLIENT_CERTIFICATE", "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"
            ),
        )
    return grpc.composite_channel_credentials(channel, call)
