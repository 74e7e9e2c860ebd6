"""What both transports share: the header they send and the rule for re-sending after a rejection.

The HTTP session and the gRPC interceptor each ask an :class:`Authenticator` for the header value and,
when the endpoint refuses a request, whether a re-send could use a different token. The rule lives
here once: at most ``max_auth_retries`` re-sends per request, only within the request's deadline, and
only when the manager has (or is fetching) a token of a newer generation than the one refused.
"""

from __future__ import annotations

import logging
import threading

from .manager import HeldToken, TokenManager
from .token import NoTokenAvailable

__all__ = ["Authenticator", "AuthOutcome"]

_logger = logging.getLogger("otel_token_exporter")


class AuthOutcome:
    """What happened to the last request made on one thread (read by the exporter)."""

    __slots__ = ("attempted", "status", "no_token", "rejected", "resent", "redirect", "config_error")

    def __init__(self) -> None:
        self.attempted = False  # a request was (about to be) made
        self.status: int | str | None = None  # final HTTP status or gRPC code name; None: no answer
        self.no_token = False  # no valid token could be had; nothing was sent
        self.rejected = False  # the endpoint refused the final attempt (401/403, UNAUTHENTICATED...)
        self.resent = 0  # re-sends after a rejection
        self.redirect = False  # the endpoint answered with a redirect (HTTP)
        self.config_error = False  # a rejection no refresh can fix (gRPC security level)


class Authenticator:
    """Formats the auth header from the manager's current token and decides re-sends.

    Safe for concurrent use; the per-request outcome is kept per thread.
    """

    def __init__(
        self,
        manager: TokenManager,
        *,
        header_name: str = "Authorization",
        scheme: str = "Bearer",
        max_auth_retries: int = 1,
        token_wait: float = 2.0,
    ) -> None:
        self.manager = manager
        #: Longest a request waits for a token when none is valid: past it the batch is kept and
        #: re-sent when the token arrives, so the SDK's queue never backs up behind a slow IdP.
        self.token_wait = token_wait
        self.header_name = header_name
        self.scheme = scheme
        self.max_auth_retries = max(0, int(max_auth_retries))
        self._local = threading.local()
        self.metrics = None  # an ExporterMetrics, when the exporter has one

    def current(self, seconds_left: float, outcome: AuthOutcome) -> HeldToken:
        """The token for one attempt; waits at most ``token_wait`` s, else marks the outcome
        ``no_token`` and raises NoTokenAvailable (the transport turns it into its own error)."""
        try:
            return self.manager.get(
                min(max(seconds_left, 0.0), self.token_wait), wait_through_backoff=False
            )
        except NoTokenAvailable:
            outcome.no_token = True
            raise

    def header_value(self, held: HeldToken) -> str:
        """The header value for one attempt (also counts how much life the token had left)."""
        if self.metrics is not None:
            self.metrics.on_token_used(held.expires_at - self.manager.clock())
        return f"{self.scheme} {held.value}" if self.scheme else held.value

    def new_outcome(self, *, attempted: bool = False) -> AuthOutcome:
        """Start the calling thread's outcome afresh (``attempted``: a request is being made)."""
        outcome = self._local.outcome = AuthOutcome()
        outcome.attempted = attempted
        return outcome

    @property
    def last_outcome(self) -> AuthOutcome:
        """The outcome of the last request made on the calling thread."""
        outcome = getattr(self._local, "outcome", None)
        return outcome if outcome is not None else self.new_outcome()

    def token_for_resend(self, held: HeldToken, outcome: AuthOutcome, seconds_left: float) -> HeldToken | None:
        """``held`` was refused: the newer token to re-send with, or None to give up.

        At most ``max_auth_retries`` re-sends, only within the deadline, only when the manager has
        (or fetches) a newer generation; a refresh that failed leaves the same token: no re-send.
        """
        outcome.rejected = True
        resend = (
            outcome.resent < self.max_auth_retries
            and seconds_left > 0
            and self.manager.reject(held.generation)
        )
        if self.metrics is not None:
            self.metrics.on_rejected(outcome.status)
            if resend:
                self.metrics.on_resend()
        if not resend:
            return None
        newer = self.current(seconds_left, outcome)
        if newer.generation == held.generation:
            return None
        _logger.debug(
            "endpoint answered %s for token generation %d; re-sending with generation %d",
            outcome.status,
            held.generation,
            newer.generation,
        )
        outcome.resent += 1
        return newer
