"""OTLP/gRPC: the token as ``authorization`` metadata on every RPC, and a re-send after rejection.

The stock gRPC exporter has no public hook that sees a call's status, so this module (and only this
module) relies on one private method, ``_initialize_channel_and_stub()`` (present in
opentelemetry-exporter-otlp-proto-grpc 1.40 and later; it runs at construction and on every
reconnect after UNAVAILABLE). Our subclass wraps each new channel with an interceptor that adds the
current token as metadata (works on TLS and plaintext channels alike, unlike call credentials) and,
on a server-sent UNAUTHENTICATED or PERMISSION_DENIED, forces one generation-aware refresh and re-sends
the same request within the call's deadline. If the hook is missing, construction fails loudly:
exporting without auth is never an option.
"""

from __future__ import annotations

import collections
import logging
import time
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter

from .auth import Authenticator
from .config import COMPRESSION_SETTINGS, ConfigurationError, resolve_choice
from .token import NoTokenAvailable

if TYPE_CHECKING:
    from .exporter import TokenOTLPLogExporter

__all__ = ["TokenAuthInterceptor", "build_grpc_exporter"]

_logger = logging.getLogger("otel_token_exporter")

REJECTED = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})
_HOOK = "_initialize_channel_and_stub"


class _CallDetails(
    collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,
):
    pass


class _LocalAuthError(grpc.RpcError, grpc.Call):
    """Raised instead of sending when no token can be had: reads like a failed call to the exporter."""

    def __init__(self, details: str) -> None:
        super().__init__(details)
        self._details = details

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAUTHENTICATED

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple:
        return ()

    def initial_metadata(self) -> tuple:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float:
        return 0.0

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback) -> bool:
        return False


def _is_client_side_security_error(call: Any) -> bool:
    """gRPC's own UNAUTHENTICATED when call credentials meet a plaintext channel: no refresh fixes it."""
    try:
        return "security level" in (call.details() or "").lower()
    except Exception:  # noqa: BLE001
        return False


class TokenAuthInterceptor(grpc.UnaryUnaryClientInterceptor):
    """Adds the current token as metadata to each unary call and re-sends after a rejection."""

    def __init__(self, authenticator: Authenticator, default_timeout: float = 10.0) -> None:
        self.auth = authenticator
        self._key = authenticator.header_name.lower()  # gRPC metadata keys must be lower case
        self.default_timeout = default_timeout
        self._warned_security = False

    def intercept_unary_unary(self, continuation, client_call_details, request):
        auth = self.auth
        outcome = auth.new_outcome(attempted=True)
        budget = client_call_details.timeout
        deadline = time.monotonic() + (budget if budget is not None else self.default_timeout)
        base = [(k, v) for k, v in (client_call_details.metadata or ()) if k.lower() != self._key]
        try:
            held = auth.current(deadline - time.monotonic(), outcome)
            while True:
                details = _CallDetails(
                    client_call_details.method,
                    max(deadline - time.monotonic(), 0.001),
                    tuple(base) + ((self._key, auth.header_value(held)),),
                    client_call_details.credentials,
                    getattr(client_call_details, "wait_for_ready", None),
                    getattr(client_call_details, "compression", None),
                )
                call = continuation(details, request)
                code = call.code()
                outcome.status = code.name if code is not None else None
                if code not in REJECTED:
                    outcome.rejected = False
                    return call
                if _is_client_side_security_error(call):
                    outcome.rejected = outcome.config_error = True
                    if not self._warned_security:
                        self._warned_security = True
                        _logger.error(
                            "gRPC refused to attach credentials to this channel (%s): this is a "
                            "channel configuration problem that refreshing the token cannot fix",
                            call.details(),
                        )
                    return call
                newer = auth.token_for_resend(held, outcome, deadline - time.monotonic())
                if newer is None:
                    return call
                held = newer
        except NoTokenAvailable as exc:
            raise _LocalAuthError(str(exc)) from None


class _TokenGRPCLogExporter(OTLPLogExporter):
    """The stock gRPC log exporter with every channel it makes wrapped by our interceptor."""

    def __init__(self, *, interceptor: TokenAuthInterceptor, **kwargs: Any) -> None:
        self._token_interceptor = interceptor
        self._token_hook_calls = 0
        super().__init__(**kwargs)
        if self._token_hook_calls == 0:
            raise ConfigurationError(_missing_hook_message())

    def reconnect(self) -> None:
        """Open a new (intercepted) channel: a forked child must not use its parent's."""
        self._initialize_channel_and_stub()

    def _initialize_channel_and_stub(self) -> None:  # the private hook; see module docstring
        super()._initialize_channel_and_stub()  # type: ignore[misc]
        self._channel = grpc.intercept_channel(self._channel, self._token_interceptor)
        self._client = self._stub(self._channel)  # type: ignore[call-arg]
        self._token_hook_calls += 1


def _missing_hook_message() -> str:
    from importlib.metadata import version

    try:
        found = version("opentelemetry-exporter-otlp-proto-grpc")
    except Exception:  # noqa: BLE001
        found = "unknown"
    return (
        f"opentelemetry-exporter-otlp-proto-grpc {found} lacks the channel hook token_otlp needs "
        "for gRPC (supported: 1.40 and later); upgrade it, or use OTEL_EXPORTER_OTLP_LOGS_PROTOCOL="
        "http/protobuf"
    )


_GRPC_COMPRESSION = {
    "none": grpc.Compression.NoCompression,
    "gzip": grpc.Compression.Gzip,
    "deflate": grpc.Compression.Deflate,
}




def _read(path: str | None, what: str) -> bytes | None:
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigurationError(f"cannot read the {what} {path}: {exc.strerror}") from None


def build_grpc_exporter(
    owner: TokenOTLPLogExporter,
    *,
    endpoint: str | None,
    insecure: bool | None,
    headers: Any,
    timeout: float | None,
    compression: Any,
    certificate_file: str | None,
    client_key_file: str | None,
    client_certificate_file: str | None,
    meter_provider: Any,
) -> OTLPLogExporter:
    if not hasattr(OTLPLogExporter, _HOOK):
        raise ConfigurationError(_missing_hook_message())
    authenticator = Authenticator(
        owner.token_manager,
        header_name=owner.header_name,
        scheme=owner.scheme,
        max_auth_retries=owner.max_auth_retries,
    )
    owner.authenticator = authenticator
    credentials = None
    if certificate_file or client_key_file or client_certificate_file:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(certificate_file, "CA certificate file"),
            private_key=_read(client_key_file, "client key file"),
            certificate_chain=_read(client_certificate_file, "client certificate file"),
        )
    if isinstance(headers, dict):
        headers = {k.lower(): v for k, v in headers.items()}
    kwargs: dict[str, Any] = {}
    if meter_provider is not None:
        kwargs["meter_provider"] = meter_provider
    return _TokenGRPCLogExporter(
        interceptor=TokenAuthInterceptor(authenticator, default_timeout=timeout or 10.0),
        endpoint=endpoint,
        insecure=insecure,
        credentials=credentials,
        headers=headers,
        timeout=timeout,
        compression=resolve_choice(
            # Resolved here: the stock constructor raises on OTEL_EXPORTER_OTLP_COMPRESSION=none.
            "compression", compression, owner._env, COMPRESSION_SETTINGS, _GRPC_COMPRESSION, grpc.Compression.NoCompression
        ),
        **kwargs,
    )
