"""A fixed token (``OTEL_TOKEN_EXPORTER_TOKEN``): for tests, sidecars and long-lived API keys."""

from __future__ import annotations

from ..jwt import jwt_expiry
from ..token import Token

__all__ = ["StaticTokenSource"]


class StaticTokenSource:
    """Always returns the same token. Its JWT ``exp``, if it has one, is its expiry."""

    def __init__(self, token: str) -> None:
        Token(token)  # validates without keeping a second copy around
        self._token = token

    def fetch(self) -> Token:
        return Token(self._token, expires_at=jwt_expiry(self._token))

    def __repr__(self) -> str:
        return "StaticTokenSource()"
