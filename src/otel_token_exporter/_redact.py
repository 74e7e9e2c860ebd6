"""Keeping secrets out of text: logs, exception messages and error bodies echoed by peers."""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "[REDACTED]"

# Things that are secrets whatever their context: JWTs, bearer/basic credentials, and the values of
# form or JSON fields named like secrets (an IdP error page may echo the request back to us).
_CRED = r"[A-Za-z0-9._~+/=-]"
_PATTERNS = [
    # JWS (three parts) and JWE (five parts) compact serialisations.
    re.compile(r"eyJ[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*){2,4}"),
    # An Authorization credential: at least 8 characters with a digit, a symbol or mixed case, so
    # prose such as "Bearer expected" or "basic authentication" stays readable.
    re.compile(
        rf"\b((?i:bearer|basic))\s+(?={_CRED}{{8,}})(?={_CRED}*?(?:[0-9._~+/=-]|[a-z][A-Z])){_CRED}+"
    ),
    # The value of a form or JSON field named like a secret; a quoted value up to its closing quote.
    re.compile(
        r"""(?ix)
        (["']?(?:access_token|refresh_token|id_token|subject_token|actor_token|client_secret
             |client_assertion|password|passwd|token|assertion|secret|api[_-]?key)["']?
         \s*[:=]\s*)
        ("(?:[^"\\]|\\.)*"?|'(?:[^'\\]|\\.)*'?|[^"'&\s,}]+)"""
    ),
]


def _field(m: re.Match) -> str:
    value = m.group(2)
    quote = value[0] if value[:1] in ("'", '"') else ""
    return f"{m.group(1)}{quote}{REDACTED}{quote}"


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with the given secrets and anything secret-shaped replaced by ``[REDACTED]``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    text = _PATTERNS[0].sub(REDACTED, text)
    text = _PATTERNS[1].sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _PATTERNS[2].sub(_field, text)
    return text


def short(text: str, limit: int = 200) -> str:
    """One printable line of at most ``limit`` characters, for quoting a peer in a message."""
    text = "".join(c if c.isprintable() else " " for c in text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"
