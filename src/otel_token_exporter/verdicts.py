"""The one table that decides what happens to a request after an attempt: sent, keep, or drop.

Read top to bottom; the first row that matches decides. A 401/403 (UNAUTHENTICATED /
PERMISSION_DENIED) has already been re-sent once with a newer token inside the attempt
(:meth:`~otel_token_exporter.auth.Authenticator.token_for_resend`); what reaches this table is the
final answer.

==========================================  =======  ==============================================
attempt                                     verdict  why
==========================================  =======  ==============================================
a client-side configuration error           DROP     no token and no waiting fixes it (checked
(gRPC "insufficient security level")                 before the auth rows: it reads as
                                                     UNAUTHENTICATED)
no valid token could be had                 KEEP     sent when the IdP answers again
token refused (after the re-send)           KEEP     an IdP or endpoint misconfiguration clears
a redirect (HTTP 3xx)                       DROP     never followed with a token
no answer (refused, reset, timeout)         KEEP     the endpoint is down or unreachable
HTTP 2xx / gRPC OK                          SENT
HTTP 408, 429, 5xx                          KEEP     the endpoint said "later"
gRPC UNAVAILABLE, DEADLINE_EXCEEDED,        KEEP     OTLP's retryable codes, plus INTERNAL and
ABORTED, CANCELLED, OUT_OF_RANGE,                    UNKNOWN (our HTTP rule keeps every 5xx)
DATA_LOSS, INTERNAL, UNKNOWN
gRPC RESOURCE_EXHAUSTED with RetryInfo      KEEP     OTLP: retryable only when the server says when
anything else (400, 413, INVALID_ARGUMENT,  DROP     the request itself is wrong: counted as
RESOURCE_EXHAUSTED without RetryInfo, ...)           undeliverable
==========================================  =======  ==============================================
"""

from __future__ import annotations

from enum import Enum

from .transports import Attempt

__all__ = ["Verdict", "decide"]


class Verdict(Enum):
    SENT = "sent"
    KEEP = "keep"  # failed, but time can fix it: keep the request and send it again later
    DROP = "drop"  # failed for good: the request or the configuration is wrong


_GRPC_KEEP = frozenset(
    {"UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED", "CANCELLED", "OUT_OF_RANGE", "DATA_LOSS", "INTERNAL", "UNKNOWN"}
)


def decide(attempt: Attempt) -> Verdict:
    """What to do with a request after ``attempt`` (see the module's table)."""
    if attempt.config_error:
        return Verdict.DROP
    if attempt.no_token or attempt.rejected:
        return Verdict.KEEP
    if attempt.redirect:
        return Verdict.DROP
    status = attempt.status
    if status is None:
        return Verdict.KEEP
    if attempt.ok:
        return Verdict.SENT
    if attempt.transport == "grpc":
        if status in _GRPC_KEEP:
            return Verdict.KEEP
        if status == "RESOURCE_EXHAUSTED" and attempt.retry_after is not None:
            return Verdict.KEEP
        return Verdict.DROP
    if isinstance(status, int) and (status in (408, 429) or status >= 500):
        return Verdict.KEEP
    return Verdict.DROP
