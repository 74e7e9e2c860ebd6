"""Keeping secrets out of text: logs, exception messages and error bodies echoed by peers."""

from __future__ import annotations

import re
from collections.abc import Iterable

REDACTED = "[REDACTED]"

# Things that are secrets whatever their context: JWTs, bearer/basic credentials, and the values of
# form or JSON fields named like secrets (an IdP error page may echo the request back to us).
_PATTERNS = [
    re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"),
    re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"),
    re.compile(
        r"""(?ix)
        (["']?(?:access_token|refresh_token|id_token|client_secret|password|token|assertion)["']?
         \s*[:=]\s*["']?)
        ([^"'&\s,}]+)"""
    ),
]


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` with the given secrets and anything secret-shaped replaced by ``[REDACTED]``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    text = _PATTERNS[0].sub(REDACTED, text)
    text = _PATTERNS[1].sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _PATTERNS[2].sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    return text


def short(text: str, limit: int = 200) -> str:
    """One printable line of at most ``limit`` characters, for quoting a peer in a message."""
    text = "".join(c if c.isprintable() else " " for c in text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"
