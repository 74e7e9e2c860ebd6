"""Reading (never verifying) the ``exp`` claim of a JWT access token, as an expiry hint."""

from __future__ import annotations

import base64
import json
import math
import time

__all__ = ["jwt_expiry"]


def jwt_expiry(token: str, *, wall_clock=time.time, monotonic=time.monotonic) -> float | None:
    """The token's ``exp`` claim mapped onto the monotonic clock, or None.

    None when the token is not a JWT, has no numeric ``exp``, or ``exp`` is already past by our
    wall clock (a skewed clock must not make every token look expired and cause a refresh storm).
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = parts[1] + "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(payload.encode("ascii")))
    except (ValueError, UnicodeError, RecursionError):  # deep nesting recurses in json
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        return None
    try:
        exp = float(exp)  # an int beyond a float's range raises OverflowError
    except OverflowError:
        return None
    if not math.isfinite(exp):
        return None
    remaining = exp - wall_clock()
    if remaining <= 0:
        return None
    return monotonic() + remaining
