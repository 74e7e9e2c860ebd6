"""otel-token-exporter: OpenTelemetry log export to OTLP endpoints that demand short-lived tokens.

Public API: the exporters (also registered as ``token_otlp``, ``token_otlp_proto_http`` and
``token_otlp_proto_grpc`` in ``opentelemetry_logs_exporter``), the token manager and its policy, the
token value and source protocol, and the built-in sources.
"""

from .config import ConfigurationError
from .exporter import TokenOTLPGRPCLogExporter, TokenOTLPHTTPLogExporter, TokenOTLPLogExporter
from .http import TokenAuthSession
from .manager import Health, HeldToken, TokenManager
from .schedule import RefreshPolicy
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
