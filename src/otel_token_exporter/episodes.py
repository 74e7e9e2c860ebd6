"""An outage, as the exporter tells it: each kind of failure said once, and whether anything can succeed.

The sending queue reports every attempt here. :class:`Episode` turns that stream into a few lines
a person can act on (the endpoint is down, it refuses fresh tokens, it rejects bad data, a partial
success), each said once until delivery works again, the package's metrics, and the two facts the
drains need: whether the sender is waiting for a token (a new token should wake it), and whether
the endpoint keeps refusing even freshly fetched tokens (a shutdown should not wait for it).
"""

from __future__ import annotations

import logging
from typing import Any

from .manager import TokenManager
from .metrics import ExporterMetrics
from .transports import Attempt
from .verdicts import Verdict

__all__ = ["Episode"]

_logger = logging.getLogger("otel_token_exporter")

#: Attempts refused in a row (one of them even with a freshly fetched token) after which the
#: endpoint is taken to refuse this client's tokens for now.
REFUSED_STREAK = 3


class Episode:
    """The state of one exporter's current outage (reset by the first delivered request)."""

    def __init__(self, *, endpoint: str, item: str, max_records: int, manager: TokenManager,
                 metrics: ExporterMetrics) -> None:
        self.endpoint = endpoint
        self.item = item
        self.max_records = max_records
        self.manager = manager
        self.metrics = metrics
        self._said: set[str] = set()  # what this outage has said already ("keep", "refused", "drop"...)
        self._partial_said = False
        self._rejected_streak = 0  # attempts in a row whose token the endpoint refused
        self._refused_fresh = False  # ... one of them even after a freshly fetched token
        #: The last attempt was kept for want of a token: a new token should wake the sender. A
        #: request that was refused already got a freshly forced token inside its attempt, so later
        #: refreshes must not cut its backoff short.
        self.waiting_for_token = False

    @property
    def refusing_fresh_tokens(self) -> bool:
        return self._refused_fresh and self._rejected_streak >= REFUSED_STREAK

    def after(self, attempt: Attempt, verdict: Verdict, items: int, was_kept: bool) -> None:
        """Account for one attempt (called by the sender after each)."""
        self.waiting_for_token = verdict is Verdict.KEEP and attempt.no_token
        if verdict is Verdict.SENT:
            self._delivered(attempt, was_kept)
        elif verdict is Verdict.DROP:
            self._say_once(
                "drop", logging.WARNING,
                "the OTLP endpoint %s refused %d %s(s) (%s); retrying cannot help, so they are "
                "dropped (said once per episode)",
                self.endpoint, items, self.item, attempt.detail or attempt.status,
            )
        else:
            self._kept(attempt, items)

    def _delivered(self, attempt: Attempt, was_kept: bool) -> None:
        if was_kept:
            self.metrics.on_redelivered()
        if self._said & {"keep", "refused"}:
            _logger.info("the OTLP endpoint %s accepts %ss again; delivering what was kept", self.endpoint, self.item)
        self._said.clear()
        self._rejected_streak = 0
        self._refused_fresh = False
        if not attempt.partial_rejected:
            self._partial_said = False
            return
        self.metrics.on_partial(attempt.partial_rejected)
        if not self._partial_said:
            self._partial_said = True
            _logger.warning(
                "the OTLP endpoint %s accepted a request but rejected %d %s(s) in it: %s "
                "(partial success; said once until a request is fully accepted)",
                self.endpoint, attempt.partial_rejected, self.item, attempt.partial_message or "no reason given",
            )

    def _kept(self, attempt: Attempt, items: int) -> None:
        if attempt.rejected:
            self._rejected_streak += 1
        if attempt.rejected and attempt.resent:
            self._refused_fresh = True
            hint = _refusal_hint(self.manager)
            self._say_once(
                "refused", logging.WARNING,
                "the OTLP endpoint %s refused a freshly fetched token too (%s): %s; %ss are kept and "
                "re-sent with backoff",
                self.endpoint, attempt.status, hint, self.item,
            )
        elif attempt.no_token:
            # The token source's own error was logged once already: do not repeat it here.
            self._say_once(
                "keep", logging.WARNING,
                "could not deliver %d %s(s) to %s: no valid token from %s (its error is logged "
                "above); they are kept (up to %d) and sent once a token can be had",
                items, self.item, self.endpoint, self.manager.name, self.max_records,
            )
        else:
            self._say_once(
                "keep", logging.WARNING,
                "could not deliver %d %s(s) to %s: %s; they are kept (up to %d) and re-sent with "
                "backoff (said once per outage)",
                items, self.item, self.endpoint, attempt.detail or f"answered {attempt.status}", self.max_records,
            )

    def _say_once(self, kind: str, level: int, message: str, *args: Any) -> None:
        if kind in self._said:
            return
        self._said.add(kind)
        _logger.log(level, message, *args)


def _refusal_hint(manager: TokenManager) -> str:
    """What to check when the endpoint refuses a fresh token: the source's own hint if it has one."""
    hint = getattr(manager.source, "refusal_hint", None)
    if callable(hint):
        try:
            text = hint()
            if text:
                return str(text)
        except Exception:  # noqa: BLE001 - a hint must never break reporting
            pass
    return "check the token's audience, scope and the endpoint's issuer settings"
