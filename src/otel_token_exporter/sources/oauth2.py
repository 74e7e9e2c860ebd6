"""OAuth2 client credentials grant (RFC 6749 §4.4) against a token endpoint.

Client authentication by HTTP Basic (RFC 6749 §2.3.1, the default) or in the form body. Errors are
classified per RFC 6749 §5.2: fatal ones (bad client, grant or scope) are reported once and cooled
down; transient ones (408/429/5xx, ``server_error``, ``temporarily_unavailable``, timeouts) are
retried with backoff, honouring ``Retry-After``. Redirects are never followed with credentials and
response bodies are capped in size.
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from urllib.parse import quote, quote_plus, urlsplit

import requests

from .._redact import redact, short
from .._fork import reset_after_fork
from .._session import EnvProxySession
from ..jwt import jwt_expiry
from ..token import MAX_LIFETIME, FatalTokenError, Token, TransientTokenError, lifetime_seconds

__all__ = ["ClientCredentialsSource"]

FATAL_ERRORS = frozenset({"invalid_client", "invalid_grant", "unauthorized_client", "invalid_scope"})
TRANSIENT_ERRORS = frozenset({"server_error", "temporarily_unavailable"})
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_RESPONSE_BYTES = 64 * 1024


class ClientCredentialsSource:
    """Fetches tokens with the client credentials grant. Safe to call from one thread at a time."""

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str | None = None,
        *,
        client_secret_file: str | None = None,
        scope: str | None = None,
        audience: str | None = None,
        extra_params: Mapping[str, str] | None = None,
        auth_method: str = "basic",
        timeout: float = 10.0,
        verify: bool | str = True,
        secret_file_setting: str = "client_secret_file",
    ) -> None:
        if (client_secret is None) == (client_secret_file is None):
            raise ValueError("give exactly one of client_secret and client_secret_file")
        if auth_method not in ("basic", "post"):
            raise ValueError("auth_method must be 'basic' or 'post'")
        self.token_url = token_url
        self.client_id = client_id
        self._client_secret = client_secret
        self._client_secret_file = client_secret_file
        self._secret_file_setting = secret_file_setting
        self.scope = scope
        self.audience = audience
        self.extra_params = dict(extra_params or {})
        self.auth_method = auth_method
        self.timeout = timeout
        self._session = EnvProxySession()
        self._session.verify = verify
        reset_after_fork(self)
        self._peer = _describe_url(token_url)
        self._last_secret: str | None = client_secret

    def __repr__(self) -> str:
        return f"ClientCredentialsSource(token_url={self._peer!r}, client_id={self.client_id!r})"

    # -- fetching -----------------------------------------------------------------------------
    def fetch(self) -> Token:
        secret = self._read_secret()
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        if self.audience:
            form["audience"] = self.audience
        form.update(self.extra_params)
        headers = {"Accept": "application/json"}
        if self.auth_method == "basic":
            pair = f"{quote(self.client_id, safe='')}:{quote(secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        else:
            form["client_id"] = self.client_id
            form["client_secret"] = secret

        sent_at = time.monotonic()
        try:
            response = self._session.post(
                self.token_url,
                data=form,
                headers=headers,
                timeout=self.timeout,
                allow_redirects=False,
                stream=True,
            )
        except requests.exceptions.Timeout:
            raise TransientTokenError(
                f"token endpoint {self._peer} did not answer within {self.timeout:g}s"
            ) from None
        except requests.exceptions.SSLError as exc:
            raise TransientTokenError(
                f"TLS error talking to token endpoint {self._peer}: {self._clean(str(exc))}"
            ) from None
        except requests.exceptions.RequestException as exc:
            raise TransientTokenError(
                f"could not reach token endpoint {self._peer}: {type(exc).__name__}"
            ) from None
        try:
            body = self._read_capped(response, sent_at + self.timeout)
        finally:
            response.close()
        return self._parse(response, body, sent_at)

    def _read_secret(self) -> str:
        if self._client_secret is not None:
            return self._client_secret
        path = self._client_secret_file
        try:
            with open(path, encoding="utf-8") as f:  # type: ignore[arg-type]
                secret = f.read().strip()
        except OSError as exc:
            raise FatalTokenError(
                f"cannot read the client secret file {path} ({self._secret_file_setting}): "
                f"{exc.strerror or type(exc).__name__}"
            ) from None
        if not secret:
            raise FatalTokenError(
                f"the client secret file {path} ({self._secret_file_setting}) is empty"
            )
        self._last_secret = secret
        return secret

    def _read_capped(self, response: requests.Response, deadline: float) -> bytes:
        """The body, at most MAX_RESPONSE_BYTES, read by ``deadline`` (a trickling peer is cut off)."""
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in response.iter_content(8192):
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_RESPONSE_BYTES:
                    raise TransientTokenError(
                        f"token endpoint {self._peer} sent more than {MAX_RESPONSE_BYTES} bytes; refused"
                    )
                if time.monotonic() > deadline:
                    raise TransientTokenError(
                        f"token endpoint {self._peer} did not finish its answer within {self.timeout:g}s"
                    )
        except TransientTokenError:
            raise
        except Exception as exc:  # noqa: BLE001 - urllib3 raises a zoo of types on bad bodies
            raise TransientTokenError(
                f"token endpoint {self._peer} sent a broken response body ({type(exc).__name__})"
            ) from None
        return b"".join(chunks)

    def abort(self) -> None:
        """Interrupt a fetch in flight (called by the manager when it closes)."""
        self._session.abort()

    def _after_fork_in_child(self) -> None:
        # Pooled keep-alive connections belong to the parent.
        for adapter in self._session.adapters.values():
            adapter.close()

    # -- parsing ------------------------------------------------------------------------------
    def _parse(self, response: requests.Response, body: bytes, sent_at: float) -> Token:
        status = response.status_code
        retry_after = _retry_after(response.headers.get("Retry-After"))
        if 300 <= status < 400:
            raise FatalTokenError(
                f"token endpoint {self._peer} answered {status} (a redirect); client credentials "
                "are never sent to a redirect target: set the token URL to the final address"
            )
        payload = _json_object(body)
        error = payload.get("error") if payload is not None else None
        if status == 200 and payload is not None and error is None:
            return self._token_from(payload, sent_at)
        if isinstance(error, str) and error:
            described = self._describe_error(error, payload)
            if error in TRANSIENT_ERRORS or (status in TRANSIENT_STATUS and error not in FATAL_ERRORS):
                raise TransientTokenError(described, retry_after=retry_after)
            raise FatalTokenError(described, retry_after=retry_after)
        if status in TRANSIENT_STATUS:
            raise TransientTokenError(
                f"token endpoint {self._peer} answered {status}", retry_after=retry_after
            )
        if status == 401:
            raise FatalTokenError(
                f"token endpoint {self._peer} answered 401: the client id or secret was refused"
            )
        if status == 200:
            ctype = short(response.headers.get("Content-Type", "none"), 60)
            raise TransientTokenError(
                f"token endpoint {self._peer} answered 200 without a JSON token response "
                f"(content-type {ctype}, {len(body)} bytes)",
                retry_after=retry_after,
            )
        raise FatalTokenError(f"token endpoint {self._peer} answered {status}", retry_after=retry_after)

    def _describe_error(self, error: str, payload: dict) -> str:
        text = f"token endpoint {self._peer} refused the request: {self._clean(error, 60)}"
        description = payload.get("error_description")
        if isinstance(description, str) and description:
            text += f" ({self._clean(description)})"
        return text

    def _token_from(self, payload: dict, sent_at: float) -> Token:
        value = payload.get("access_token")
        if not isinstance(value, str) or not value.strip():
            raise TransientTokenError(
                f"token endpoint {self._peer} answered 200 without an access_token"
            )
        value = value.strip()
        token_type = payload.get("token_type")
        if isinstance(token_type, str) and token_type.lower() not in ("bearer", ""):
            raise FatalTokenError(
                f"token endpoint {self._peer} issued a {self._clean(token_type, 30)!r} token; "
                "only bearer tokens are supported"
            )
        try:
            Token(value)
        except ValueError as exc:
            raise TransientTokenError(f"token endpoint {self._peer} sent an unusable token: {exc}") from None
        expires_at = None
        lifetime = None
        if payload.get("expires_in") is not None:
            lifetime = lifetime_seconds(payload["expires_in"])
            if lifetime is None:
                # Zero, negative or not a number: the IdP says nothing usable about the token's
                # life; guessing a default would send a token the IdP may consider dead.
                raise TransientTokenError(
                    f"token endpoint {self._peer} sent an invalid expires_in "
                    f"({self._clean(json.dumps(payload['expires_in']), 40)}); expected positive seconds"
                )
        jwt_at = jwt_expiry(value)
        if jwt_at is not None:
            jwt_at = min(jwt_at, sent_at + MAX_LIFETIME)
        if lifetime is not None:
            expires_at = sent_at + lifetime
            # A JWT exp a little earlier (whole seconds, a strict server) is the safer of the two;
            # one far earlier means our wall clock is off, and then expires_in is the truth.
            if jwt_at is not None and sent_at + lifetime / 2 <= jwt_at < expires_at:
                expires_at = jwt_at
        elif jwt_at is not None:
            expires_at = jwt_at
        return Token(value, expires_at=expires_at, obtained_at=sent_at)

    def _clean(self, text: str, limit: int = 200) -> str:
        return short(redact(text, self._secret_forms()), limit)

    def _secret_forms(self) -> list[str]:
        """The secret as a peer may echo it: raw, form-encoded, and inside the Basic header."""
        forms: list[str] = []
        for secret in {self._client_secret, self._last_secret}:
            if not secret:
                continue
            pair = f"{quote(self.client_id, safe='')}:{quote(secret, safe='')}"
            forms += [
                secret,
                quote(secret, safe=""),
                quote_plus(secret),
                base64.b64encode(pair.encode()).decode("ascii"),
            ]
        # longest first, so a secret's encoded form is not half replaced by a shorter one
        return sorted(set(forms), key=len, reverse=True)


def _describe_url(url: str) -> str:
    """Scheme, host and path only: a query string may carry secrets."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{':' + str(parts.port) if parts.port else ''}{parts.path}"


def _json_object(body: bytes) -> dict | None:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None



def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(seconds, 0.0) if math.isfinite(seconds) else None
