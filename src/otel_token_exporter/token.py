"""The token value, the token-source protocol, and the errors a source may raise.

A token source has one job: fetch a fresh token when asked. Caching, scheduling, single flight and
backoff live in :mod:`otel_token_exporter.manager`; the transports only ask the manager for the
current header. Nothing here ever puts a token's value into ``repr``, ``str`` or an exception.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = [
    "Token",
    "TokenSource",
    "TokenError",
    "TransientTokenError",
    "FatalTokenError",
    "NoTokenAvailable",
    "MAX_LIFETIME",
    "lifetime_seconds",
    "unusable_reason",
]

#: No token is trusted to live longer than this (a year), whatever its issuer says.
MAX_LIFETIME = 366 * 24 * 3600.0


def lifetime_seconds(value: object) -> float | None:
    """An ``expires_in``-style value (number or numeric string) as positive seconds, capped; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return None
    return min(float(value), MAX_LIFETIME)


def unusable_reason(value: str) -> str | None:
    """Why ``value`` cannot travel as a bearer credential, or None when it can.

    A header value (RFC 7230) and gRPC ASCII metadata carry visible ASCII only; a space or TAB
    would also split ``Bearer <token>``. The reason never quotes the value.
    """
    for index, char in enumerate(value):
        if not "\x21" <= char <= "\x7e":
            if char in " \t":
                what = "a space or TAB"
            elif char == "\x7f" or char < " ":
                what = "a control character"
            else:
                what = "a non-ASCII character"
            return f"{what} at position {index + 1} of {len(value)}"
    return None


@dataclass(frozen=True)
class Token:
    """A bearer token and what is known of its life.

    ``expires_at`` and ``refresh_hint`` are on the monotonic clock (``time.monotonic()``), never the
    wall clock, so a jump of the system clock changes nothing. ``expires_at=None`` means the source
    could not tell; the manager then applies its default lifetime.
    ``refresh_hint`` lets a source ask to be asked again earlier (a file to re-read, azure's
    ``refresh_on``); the manager refreshes at the earlier of its own schedule and the hint.
    """

    value: str = field(repr=False)
    expires_at: float | None = None
    refresh_hint: float | None = None
    obtained_at: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if not isinstance(self.value, str) or not self.value:
            raise ValueError("a token value must be a non-empty string")
        if any(c in self.value for c in "\r\n\0"):
            # A header-splitting token is never sent: say so without echoing it.
            raise ValueError("a token value must not contain CR, LF or NUL")

    def __str__(self) -> str:  # pragma: no cover - trivial
        return repr(self)

    @property
    def lifetime(self) -> float | None:
        """Seconds between obtaining the token and its expiry, when known."""
        if self.expires_at is None:
            return None
        return self.expires_at - self.obtained_at


@runtime_checkable
class TokenSource(Protocol):
    """Anything that can fetch a fresh token.

    ``fetch`` is only ever called by one thread at a time (the manager's refresher) and may block
    (network, subprocess); it should bound its own time. It raises :class:`TokenError` subclasses
    for failures it understands; any other exception counts as transient.
    """

    def fetch(self) -> Token: ...


# Optional, on any source: ``fingerprint() -> Hashable`` (cheap and local: file stats or a hash of
# the credential inputs). While the manager cools down after a FatalTokenError it polls it and
# fetches at once when it changes, so a corrected secret or key file is used within a second.
# ``abort()`` interrupts a fetch in flight when the manager closes. ``fetch_rejecting(value)`` is
# called instead of ``fetch()`` for a refresh forced because the endpoint refused ``value``.


class TokenError(Exception):
    """A token could not be had. Messages name the peer or setting, never a secret."""

    #: Seconds the peer asked us to wait (``Retry-After``), if any.
    retry_after: float | None = None


class TransientTokenError(TokenError):
    """A failure worth retrying with backoff: timeouts, 408/429/5xx, ``temporarily_unavailable``."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class FatalTokenError(TokenError):
    """A failure retrying will not fix soon (``invalid_client``, a missing file, a bad command).

    The manager logs it once and cools down for a long time before trying again, so a fixed
    configuration (a rotated secret file) is still picked up without a restart.
    """

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NoTokenAvailable(TokenError):
    """Raised to a caller when no unexpired token exists and none arrived in time."""
