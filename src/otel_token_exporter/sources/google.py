"""Google credentials (``[google]`` extra): application default credentials or any google-auth
``Credentials`` object, refreshed when the token manager says so.

Scheduling stays with the token manager; fetching is google-auth's: every :meth:`fetch` calls
``credentials.refresh(Request())`` and reads ``credentials.token`` and ``credentials.expiry`` (a
naive UTC datetime). Without explicit credentials, ``google.auth.default()`` is resolved on the
first fetch, not at construction (it may probe the metadata server).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from .._redact import redact, short
from ..token import FatalTokenError, Token, TransientTokenError

__all__ = ["GoogleCredentialsSource", "DEFAULT_SCOPES"]

DEFAULT_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)


def _require_google_auth():
    try:
        import google.auth  # noqa: F401
        import google.auth.transport.requests  # noqa: F401
    except ImportError:  # pragma: no cover - depends on the installed extras
        from ..config import ConfigurationError

        raise ConfigurationError(
            "the google token source needs google-auth: pip install 'otel-token-exporter[google]'"
        ) from None


class GoogleCredentialsSource:
    """Tokens from google-auth ``credentials`` (default: ``google.auth.default(scopes=scopes)``).

    ``request`` is the google-auth transport request to refresh with (default: a fresh
    ``google.auth.transport.requests.Request()``).
    """

    def __init__(
        self,
        credentials: Any = None,
        *,
        scopes: Sequence[str] | None = None,
        request: Any = None,
    ) -> None:
        _require_google_auth()
        self._credentials = credentials
        self.scopes = tuple(scopes) if scopes else DEFAULT_SCOPES
        self._request = request
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        kind = type(self._credentials).__name__ if self._credentials is not None else "default"
        return f"GoogleCredentialsSource({kind})"

    @property
    def credentials(self) -> Any:
        with self._lock:
            if self._credentials is None:
                import google.auth
                import google.auth.exceptions

                try:
                    self._credentials, _ = google.auth.default(scopes=list(self.scopes))
                except google.auth.exceptions.DefaultCredentialsError as exc:
                    raise FatalTokenError(
                        "no Google application default credentials found "
                        f"(GOOGLE_APPLICATION_CREDENTIALS, gcloud, metadata server): {short(redact(str(exc)))}"
                    ) from None
            return self._credentials

    def fetch(self) -> Token:
        import google.auth.exceptions
        import google.auth.transport.requests

        credentials = self.credentials
        request = self._request or google.auth.transport.requests.Request()
        sent_at = time.monotonic()
        wall = datetime.now(timezone.utc).replace(tzinfo=None)
        try:
            credentials.refresh(request)
        except google.auth.exceptions.RefreshError as exc:
            text = f"Google credentials ({type(credentials).__name__}) could not be refreshed: {short(redact(str(exc)))}"
            if getattr(exc, "retryable", False):
                raise TransientTokenError(text) from None
            raise FatalTokenError(text) from None
        except google.auth.exceptions.TransportError as exc:
            raise TransientTokenError(
                f"Google token endpoint unreachable ({type(credentials).__name__}): {short(redact(str(exc)))}"
            ) from None
        value = getattr(credentials, "token", None)
        if not isinstance(value, str) or not value:
            raise TransientTokenError(f"Google credentials ({type(credentials).__name__}) gave no token")
        expires_at = None
        expiry = getattr(credentials, "expiry", None)
        if isinstance(expiry, datetime):
            if expiry.tzinfo is not None:  # google-auth uses naive UTC; accept aware too
                expiry = expiry.astimezone(timezone.utc).replace(tzinfo=None)
            remaining = (expiry - wall).total_seconds()
            if remaining > 0:
                expires_at = sent_at + remaining
        try:
            return Token(value, expires_at=expires_at, obtained_at=sent_at)
        except ValueError as exc:
            raise TransientTokenError(f"Google credentials gave an unusable token: {exc}") from None
