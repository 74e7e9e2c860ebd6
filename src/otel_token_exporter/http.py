"""A ``requests.Session`` that puts the current token on every attempt and re-sends after 401/403.

The stock OTLP/HTTP exporter sends every attempt through ``session.request`` (its public
``session=`` argument), so this class sees each one: it sets ``Authorization`` from the token
manager, and when the endpoint answers 401 or 403 it asks the manager for a newer token
(generation-aware: a late 401 never causes a second refresh) and re-sends the same, already encoded
body within the caller's timeout. Redirects are never followed with a token: a 3xx becomes an error
instead of the stock exporter's silent success.
"""

from __future__ import annotations

import logging
import threading
import time
from urllib.parse import urlsplit

import requests

from .manager import TokenManager
from .token import NoTokenAvailable

__all__ = ["TokenAuthSession", "RedirectRefused", "AuthOutcome"]

_logger = logging.getLogger("otel_token_exporter")

AUTH_REJECTED_STATUS = frozenset({401, 403})


class RedirectRefused(requests.exceptions.RequestException):
    """The endpoint answered with a redirect, which is never followed with a bearer token."""


class TokenUnavailable(requests.exceptions.RequestException):
    """No valid token could be had in time; the request was not sent."""


class AuthOutcome:
    """What happened to the last request on this thread, for the exporter's buffering decisions."""

    __slots__ = ("no_token", "rejected", "resent", "redirect")

    def __init__(self) -> None:
        self.no_token = False
        self.rejected = False
        self.resent = 0
        self.redirect = False


class TokenAuthSession(requests.Session):
    """Session that authenticates every request with the manager's current token.

    ``header_name``/``scheme`` shape the header (``Authorization: Bearer <token>`` by default; an
    empty scheme sends the bare token). ``max_auth_retries`` bounds re-sends per request.
    """

    def __init__(
        self,
        manager: TokenManager,
        *,
        header_name: str = "Authorization",
        scheme: str = "Bearer",
        max_auth_retries: int = 1,
        default_timeout: float = 10.0,
    ) -> None:
        super().__init__()
        self.manager = manager
        self.header_name = header_name
        self._header_key = header_name.lower()
        self.scheme = scheme
        self.max_auth_retries = max(0, int(max_auth_retries))
        self.default_timeout = default_timeout
        self.trust_env = False  # proxies/.netrc from the environment must not see the token
        self._local = threading.local()
        self._warned_redirect = False

    def __repr__(self) -> str:
        return f"<TokenAuthSession header={self.header_name!r} manager={self.manager.name}>"

    @property
    def last_outcome(self) -> AuthOutcome:
        """The outcome of the last request made on the calling thread."""
        outcome = getattr(self._local, "outcome", None)
        if outcome is None:
            outcome = self._local.outcome = AuthOutcome()
        return outcome

    def request(self, method, url, *args, headers=None, timeout=None, **kwargs):  # type: ignore[override]
        outcome = self._local.outcome = AuthOutcome()
        kwargs["allow_redirects"] = False
        budget = _seconds(timeout, self.default_timeout)
        deadline = time.monotonic() + budget
        base_headers = {k: v for k, v in (headers or {}).items() if k.lower() != self._header_key}
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            try:
                held = self.manager.get(max(remaining, 0.0))
            except NoTokenAvailable as exc:
                outcome.no_token = True
                raise TokenUnavailable(str(exc)) from None
            send_headers = dict(base_headers)
            send_headers[self.header_name] = f"{self.scheme} {held.value}" if self.scheme else held.value
            response = super().request(
                method,
                url,
                *args,
                headers=send_headers,
                timeout=_remaining_timeout(timeout, deadline, budget),
                **kwargs,
            )
            if response.status_code in AUTH_REJECTED_STATUS:
                outcome.rejected = True
                if (
                    attempt < self.max_auth_retries
                    and deadline - time.monotonic() > 0
                    and self.manager.reject(held.generation)
                ):
                    attempt += 1
                    outcome.resent += 1
                    response.close()
                    _logger.debug(
                        "endpoint answered %d for token generation %d; re-sending with a refreshed token",
                        response.status_code,
                        held.generation,
                    )
                    continue
                return response
            outcome.rejected = False
            if 300 <= response.status_code < 400:
                outcome.redirect = True
                response.close()
                raise RedirectRefused(self._redirect_message(response, url))
            return response

    def _redirect_message(self, response: requests.Response, url: str) -> str:
        target = response.headers.get("Location", "")
        where = urlsplit(target)
        shown = f"{where.scheme}://{where.netloc}{where.path}" if where.netloc else where.path
        return (
            f"endpoint {_peer(url)} answered {response.status_code} redirecting to {shown or '?'}; "
            "redirects are not followed with a bearer token: set the endpoint to the final URL"
        )


def _peer(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def _seconds(timeout, default: float) -> float:
    """Total budget of a requests-style timeout (a number, a (connect, read) pair, or None)."""
    if timeout is None:
        return default
    if isinstance(timeout, tuple):
        return float(sum(t for t in timeout if t is not None)) or default
    return float(timeout)


def _remaining_timeout(original, deadline: float, budget: float):
    remaining = max(deadline - time.monotonic(), 0.001)
    if isinstance(original, tuple):
        return tuple(None if t is None else min(t, remaining) for t in original)
    return remaining
