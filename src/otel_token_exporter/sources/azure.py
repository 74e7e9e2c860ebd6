"""Azure credentials (``[azure]`` extra): any azure-identity ``TokenCredential`` plus a scope.

Scheduling stays with the token manager; fetching is azure-identity's. :meth:`fetch` calls
``credential.get_token_info(scope)`` when the credential has it (azure-core >= 1.31) and passes its
``refresh_on`` to the manager as the refresh hint, else ``credential.get_token(scope)``. azure-identity
caches tokens itself and may hand back the cached one until its own refresh point; the manager then
simply asks again later. Without an explicit credential, ``DefaultAzureCredential()`` is created on the
first fetch.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from .._redact import redact, short
from ..token import FatalTokenError, Token, TransientTokenError

__all__ = ["AzureCredentialSource"]


def _require_azure():
    try:
        import azure.core.exceptions  # noqa: F401
    except ImportError:  # pragma: no cover - depends on the installed extras
        from ..config import ConfigurationError

        raise ConfigurationError(
            "the azure token source needs azure-identity: pip install 'otel-token-exporter[azure]'"
        ) from None


class AzureCredentialSource:
    """Tokens for ``scope`` (e.g. ``api://my-app/.default``) from an azure-core ``TokenCredential``."""

    def __init__(self, credential: Any = None, scope: str | None = None, *, tenant_id: str | None = None) -> None:
        if not scope:
            raise ValueError("an Azure scope is required (for example 'api://<app-id>/.default')")
        _require_azure()
        self._credential = credential
        self.scope = scope
        self.tenant_id = tenant_id
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        kind = type(self._credential).__name__ if self._credential is not None else "DefaultAzureCredential"
        return f"AzureCredentialSource({kind}, scope={self.scope!r})"

    @property
    def credential(self) -> Any:
        with self._lock:
            if self._credential is None:
                try:
                    from azure.identity import DefaultAzureCredential
                except ImportError:
                    raise FatalTokenError(
                        "no Azure credential given and azure-identity is not installed: "
                        "pip install 'otel-token-exporter[azure]'"
                    ) from None
                self._credential = DefaultAzureCredential()
            return self._credential

    def fetch(self) -> Token:
        from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError, ServiceResponseError

        credential = self.credential
        kind = type(credential).__name__
        wall_now = time.time()
        sent_at = time.monotonic()
        refresh_on = None
        try:
            if callable(getattr(credential, "get_token_info", None)):
                options = {"tenant_id": self.tenant_id} if self.tenant_id else None
                info = credential.get_token_info(self.scope, options=options) if options else credential.get_token_info(self.scope)
                value, expires_on = info.token, info.expires_on
                refresh_on = getattr(info, "refresh_on", None)
                token_type = getattr(info, "token_type", "Bearer")
            else:
                kwargs = {"tenant_id": self.tenant_id} if self.tenant_id else {}
                access = credential.get_token(self.scope, **kwargs)
                value, expires_on = access.token, access.expires_on
                token_type = "Bearer"
        except (ServiceRequestError, ServiceResponseError) as exc:
            raise TransientTokenError(
                f"Azure token endpoint unreachable ({kind}, scope {self.scope}): {short(redact(str(exc)))}"
            ) from None
        except ClientAuthenticationError as exc:
            text = f"Azure credential {kind} refused a token for scope {self.scope}: {short(redact(str(exc)))}"
            status = getattr(getattr(exc, "response", None), "status_code", None)
            if isinstance(status, int) and (status >= 500 or status in (408, 429)):
                raise TransientTokenError(text) from None
            raise FatalTokenError(text) from None
        if isinstance(token_type, str) and token_type.lower() not in ("bearer", ""):
            raise FatalTokenError(f"Azure credential {kind} issued a {token_type!r} token; only bearer tokens are supported")
        expires_at = None
        if isinstance(expires_on, (int, float)) and expires_on > wall_now:
            expires_at = sent_at + (expires_on - wall_now)
        hint = None
        if isinstance(refresh_on, (int, float)) and refresh_on > wall_now:
            # A refresh_on already past (azure-identity kept a cached token after a failed
            # refresh) is no hint: acting on it would ask again in a tight loop.
            hint = sent_at + (refresh_on - wall_now)
        try:
            return Token(value, expires_at=expires_at, refresh_hint=hint, obtained_at=sent_at)
        except ValueError as exc:
            raise TransientTokenError(f"Azure credential {kind} gave an unusable token: {exc}") from None
