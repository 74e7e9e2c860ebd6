"""Transports: one attempt to deliver an encoded OTLP request, and what came of it.

A transport takes the settings it needs and an :class:`~otel_token_exporter.auth.Authenticator`
and offers ``send(body, timeout) -> Attempt`` (one attempt: the token on the request, and within
it at most ``max_auth_retries`` re-sends with a newer token after a rejection; never a retry loop
or a backoff sleep), ``reconnect()``, ``shutdown()`` and, for messages, ``endpoint`` and
``plaintext``. What an :class:`Attempt` means for the request (sent, keep, drop) is decided in one
table, :mod:`otel_token_exporter.verdicts`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..auth import Authenticator
    from ..settings import ExporterSettings

__all__ = ["Attempt", "Transport", "build_transport", "user_agent"]


@dataclass(frozen=True)
class Attempt:
    """What one attempt to send a request came to. Never holds a token."""

    transport: str  # "http" or "grpc"
    #: Final HTTP status or gRPC code name; None when there was no answer (refused, reset, timeout).
    status: int | str | None = None
    no_token: bool = False  # no valid token could be had: nothing was sent
    rejected: bool = False  # the endpoint refused the token of the final try (401/403, UNAUTHENTICATED...)
    resent: int = 0  # re-sends with a newer token within this attempt
    config_error: bool = False  # a failure no refresh and no waiting can fix (gRPC security level)
    redirect: bool = False  # an HTTP redirect (never followed with a token)
    #: Seconds the endpoint asked us to wait (``Retry-After``, gRPC ``RetryInfo``).
    retry_after: float | None = None
    partial_rejected: int = 0  # items the endpoint accepted the request but refused (partial_success)
    partial_message: str = ""
    detail: str = ""  # one line for messages: the error, the status text; redacted, short

    @property
    def ok(self) -> bool:
        if self.transport == "grpc":
            return self.status == "OK"
        return isinstance(self.status, int) and 200 <= self.status < 300


class Transport(Protocol):
    endpoint: str
    plaintext: bool

    def send(self, body: bytes, timeout: float) -> Attempt: ...

    def reconnect(self) -> None: ...

    def shutdown(self) -> None: ...


def user_agent(stock_distribution: str) -> str:
    """The stock exporter's user agent, with ours after it (what the endpoint's logs show)."""
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__

    try:
        stock = version(stock_distribution)
    except PackageNotFoundError:  # pragma: no cover - a dependency
        stock = "unknown"
    return f"OTel-OTLP-Exporter-Python/{stock} otel-token-exporter/{__version__}"


def build_transport(settings: ExporterSettings, authenticator: Authenticator) -> Transport:
    """The transport for ``settings.protocol``."""
    from ..settings import GRPC

    if settings.protocol == GRPC:
        from .grpc import GRPCTransport

        return GRPCTransport(settings, authenticator)
    from .http import HTTPTransport

    return HTTPTransport(settings, authenticator)
