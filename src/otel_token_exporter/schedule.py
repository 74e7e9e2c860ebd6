"""Refresh and backoff policy as pure functions of their inputs.

Time and randomness come in as arguments, so a fake clock tests every rule in microseconds and the
manager only applies the answers. All times are seconds on the monotonic clock.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["RefreshPolicy", "refresh_at", "backoff_delay", "probe_delay", "DEFAULT_POLICY"]


@dataclass(frozen=True)
class RefreshPolicy:
    """When to refresh a token and how long to wait after a failed fetch.

    A token is refreshed once ``refresh_fraction`` of its lifetime has passed, but never with less
    than ``min_margin`` seconds to spare (or 30 % of the lifetime, for very short tokens) nor
    more than ``max_margin`` seconds early (for very long tokens). Each token then gets its own
    random jitter of up to ``jitter_fraction`` of its lifetime (at most ``max_jitter`` s) earlier,
    so a fleet started together spreads its refreshes instead of marching on the IdP in step.
    """

    refresh_fraction: float = 0.8
    min_margin: float = 5.0
    max_margin: float = 3600.0
    jitter_fraction: float = 0.1
    max_jitter: float = 300.0
    #: Lifetime assumed when a source cannot tell (no ``expires_in``, no JWT ``exp``).
    default_lifetime: float = 300.0
    #: Exponential backoff after failed fetches: ``base * 2**n`` with full jitter, capped.
    backoff_base: float = 0.5
    backoff_cap: float = 60.0
    #: Wait after a fatal error (``invalid_client``...) before trying again.
    fatal_cooldown: float = 300.0
    #: Never honour a ``Retry-After`` longer than this.
    max_retry_after: float = 3600.0
    #: A forced refresh (after a 401/403) at most this often.
    min_forced_interval: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.refresh_fraction < 1.0:
            raise ValueError("refresh_fraction must be between 0 and 1")
        for name in (
            "min_margin",
            "max_margin",
            "default_lifetime",
            "backoff_base",
            "backoff_cap",
            "fatal_cooldown",  # zero would retry a fatal error in a hot loop
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        for name in ("jitter_fraction", "max_jitter", "max_retry_after", "min_forced_interval"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must not be negative")


DEFAULT_POLICY = RefreshPolicy()


def refresh_at(
    obtained_at: float, expires_at: float, policy: RefreshPolicy, rng: random.Random
) -> float:
    """The monotonic time at which a token obtained at ``obtained_at`` should be refreshed.

    Always strictly between ``obtained_at`` and ``expires_at`` for a positive lifetime: at least half
    the lifetime is used, so jitter can never turn into a refresh storm.
    """
    lifetime = expires_at - obtained_at
    if lifetime <= 0:
        return obtained_at
    margin = lifetime * (1.0 - policy.refresh_fraction)
    margin = max(margin, min(policy.min_margin, lifetime * 0.3))
    margin = min(margin, policy.max_margin)
    jitter = rng.uniform(0.0, min(lifetime * policy.jitter_fraction, policy.max_jitter))
    earliest = obtained_at + lifetime / 2
    return max(expires_at - margin - jitter, earliest)


def backoff_delay(
    failures: int,
    policy: RefreshPolicy,
    rng: random.Random,
    *,
    retry_after: float | None = None,
    fatal: bool = False,
    lifetime: float | None = None,
) -> float:
    """Seconds to wait before the next fetch after ``failures`` consecutive failures (1 = first).

    Full jitter (uniform between zero and the exponential bound), as AWS recommends, so many clients
    failing together do not retry together. The cap scales down with short tokens (a 3 s token
    should not wait a minute for its next try) but never below one second. ``Retry-After`` from the
    peer is a floor, bounded by ``max_retry_after``. Fatal errors wait ``fatal_cooldown``.
    """
    if fatal:
        delay = policy.fatal_cooldown
    else:
        cap = policy.backoff_cap
        if lifetime is not None and lifetime > 0:
            cap = max(1.0, min(cap, lifetime))
        # Clamp the exponent: 2**1024 does not fit a float (an outage of some hours would crash).
        bound = min(cap, policy.backoff_base * (2.0 ** min(max(failures - 1, 0), 60)))
        delay = rng.uniform(bound / 2, bound) if failures <= 1 else rng.uniform(0.0, bound)
        # A floor keeps full jitter from producing back-to-back hot retries.
        delay = max(delay, min(0.1, bound))
    if retry_after is not None and retry_after > 0:
        delay = max(delay, min(retry_after, policy.max_retry_after))
    return delay


def probe_delay(
    failures: int,
    rng: random.Random,
    *,
    base: float,
    cap: float,
    retry_after: float | None = None,
    max_retry_after: float = 300.0,
) -> float:
    """Seconds before the sending queue probes a failing endpoint again (``failures`` >= 1).

    Jittered exponential backoff (between half and all of ``min(cap, base * 2**(failures-1))``, so
    the first probe comes a quarter to half a second after the failure, never at once). A
    ``Retry-After`` / ``RetryInfo`` from the endpoint is a floor, bounded by ``max_retry_after``,
    and honoured even when it is longer than the export timeout.
    """
    bound = min(cap, base * (2.0 ** min(max(failures - 1, 0), 60)))
    delay = rng.uniform(bound / 2, bound)
    if retry_after is not None and retry_after > 0:
        delay = max(delay, min(retry_after, max_retry_after))
    return delay
