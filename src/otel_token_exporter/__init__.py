"""otel-token-exporter: OpenTelemetry export to OTLP endpoints that demand short-lived bearer tokens.

Public API: the exporters for logs, traces and metrics (also registered as ``token_otlp``,
``token_otlp_proto_http`` and ``token_otlp_proto_grpc`` in the SDK's exporter entry-point groups),
the token manager and its policy, the token value and source protocol, and the built-in sources.
"""

from .config import ConfigurationError
from .http import TokenAuthSession
from .manager import Health, HeldToken, TokenManager
from .schedule import RefreshPolicy
from .signals.logs import TokenOTLPGRPCLogExporter, TokenOTLPHTTPLogExporter, TokenOTLPLogExporter
from .signals.metrics import TokenOTLPGRPCMetricExporter, TokenOTLPHTTPMetricExporter, TokenOTLPMetricExporter
from .signals.traces import TokenOTLPGRPCSpanExporter, TokenOTLPHTTPSpanExporter, TokenOTLPSpanExporter
from .sources import CallableSource, ClientCredentialsSource, StaticTokenSource
from .token import (
    FatalTokenError,
    NoTokenAvailable,
    Token,
    TokenError,
    TokenSource,
    TransientTokenError,
)

__all__ = [
    "TokenOTLPLogExporter",
    "TokenOTLPHTTPLogExporter",
    "TokenOTLPGRPCLogExporter",
    "TokenOTLPSpanExporter",
    "TokenOTLPHTTPSpanExporter",
    "TokenOTLPGRPCSpanExporter",
    "TokenOTLPMetricExporter",
    "TokenOTLPHTTPMetricExporter",
    "TokenOTLPGRPCMetricExporter",
    "TokenAuthSession",
    "TokenManager",
    "HeldToken",
    "Health",
    "RefreshPolicy",
    "Token",
    "TokenSource",
    "TokenError",
    "TransientTokenError",
    "FatalTokenError",
    "NoTokenAvailable",
    "ConfigurationError",
    "ClientCredentialsSource",
    "StaticTokenSource",
    "CallableSource",
]

__version__ = "0.1.0"

from ._console import install_console_fallback as _install_console_fallback  # noqa: E402

_install_console_fallback()
