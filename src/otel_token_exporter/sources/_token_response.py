"""Reading a token endpoint's answer: a token (RFC 6749 §5.1) or a classified error (§5.2).

Fatal errors (a bad client, grant, scope or target) are reported once and cooled down; transient
ones (408/429/5xx, ``server_error``, ``temporarily_unavailable``) are retried with backoff,
honouring ``Retry-After``. An error message quotes the peer through ``clean`` (redacted, shortened)
and ends with ``hint(error)``: which setting to check.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

from .._redact import short
from .._session import parse_retry_after
from ..jwt import jwt_expiry
from ..token import MAX_LIFETIME, FatalTokenError, Token, TransientTokenError, lifetime_seconds

__all__ = ["parse_token_response", "FATAL_ERRORS", "TRANSIENT_ERRORS", "TRANSIENT_STATUS"]

FATAL_ERRORS = frozenset({
    "invalid_client", "invalid_grant", "unauthorized_client", "invalid_scope", "invalid_target",
    "unsupported_grant_type",
})
TRANSIENT_ERRORS = frozenset({"server_error", "temporarily_unavailable"})
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


def parse_token_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    sent_at: float,
    *,
    peer: str,
    clean: Callable[..., str],
    hint: Callable[[str], str | None],
) -> Token:
    """The token in a token endpoint's answer, or the TokenError it amounts to."""
    retry_after = parse_retry_after(headers.get("Retry-After"))
    if 300 <= status < 400:
        raise FatalTokenError(
            f"token endpoint {peer} answered {status} (a redirect); client credentials "
            "are never sent to a redirect target: set the token URL to the final address"
        )
    payload = _json_object(body)
    error = payload.get("error") if payload is not None else None
    if status == 200 and payload is not None and error is None:
        return _token_from(payload, sent_at, peer, clean)
    if isinstance(error, str) and error:
        text = f"token endpoint {peer} refused the request: {clean(error, 60)}"
        description = payload.get("error_description")  # type: ignore[union-attr]
        if isinstance(description, str) and description:
            text += f" ({clean(description)})"
        advice = hint(error)
        if advice:
            text += f": {advice}"
        if error in TRANSIENT_ERRORS or (status in TRANSIENT_STATUS and error not in FATAL_ERRORS):
            raise TransientTokenError(text, retry_after=retry_after)
        raise FatalTokenError(text, retry_after=retry_after)
    if status in TRANSIENT_STATUS:
        raise TransientTokenError(f"token endpoint {peer} answered {status}", retry_after=retry_after)
    if status == 401:
        advice = hint("invalid_client")
        raise FatalTokenError(
            f"token endpoint {peer} answered 401: the client credentials were refused"
            + (f": {advice}" if advice else "")
        )
    if status == 200:
        ctype = short(headers.get("Content-Type", "none"), 60)
        raise TransientTokenError(
            f"token endpoint {peer} answered 200 without a JSON token response "
            f"(content-type {ctype}, {len(body)} bytes)",
            retry_after=retry_after,
        )
    raise FatalTokenError(f"token endpoint {peer} answered {status}", retry_after=retry_after)


def _token_from(payload: dict, sent_at: float, peer: str, clean: Callable[..., str]) -> Token:
    value = payload.get("access_token")
    if not isinstance(value, str) or not value.strip():
        raise TransientTokenError(f"token endpoint {peer} answered 200 without an access_token")
    value = value.strip()
    token_type = payload.get("token_type")
    if isinstance(token_type, str) and token_type.lower() not in ("bearer", ""):
        raise FatalTokenError(
            f"token endpoint {peer} issued a {clean(token_type, 30)!r} token; "
            "only bearer tokens are supported"
        )
    try:
        Token(value)
    except ValueError as exc:
        raise TransientTokenError(f"token endpoint {peer} sent an unusable token: {exc}") from None
    expires_at = None
    lifetime = None
    if payload.get("expires_in") is not None:
        lifetime = lifetime_seconds(payload["expires_in"])
        if lifetime is None:
            # Zero, negative or not a number: the IdP says nothing usable about the token's
            # life; guessing a default would send a token the IdP may consider dead.
            raise TransientTokenError(
                f"token endpoint {peer} sent an invalid expires_in "
                f"({clean(json.dumps(payload['expires_in']), 40)}); expected positive seconds"
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


def _json_object(body: bytes) -> dict | None:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None

