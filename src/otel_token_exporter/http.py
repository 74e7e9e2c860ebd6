"""A ``requests.Session`` that puts the current token on every attempt and re-sends after 401/403.

The stock OTLP/HTTP exporter sends every attempt through ``session.request`` (its public
``session=`` argument), so this class sees each one: it sets ``Authorization`` from the token
manager, and when the endpoint answers 401 or 403 it asks the manager for a newer token
(generation-aware: a late 401 never causes a second refresh) and re-sends the same, already encoded
body within the caller's timeout. Redirects are never followed with a token: a 3xx becomes an error
instead of the stock exporter's silent success.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import requests

from ._fork import reset_after_fork
from ._session import EnvProxySession
from .auth import AuthOutcome, Authenticator
from .manager import TokenManager
from .token import NoTokenAvailable

__all__ = ["TokenAuthSession", "RedirectRefused", "TokenUnavailable"]

AUTH_REJECTED_STATUS = frozenset({401, 403})


class RedirectRefused(requests.exceptions.RequestException):
    """The endpoint answered with a redirect, which is never followed with a bearer token."""


class TokenUnavailable(requests.exceptions.RequestException):
    """No valid token could be had in time; the request was not sent."""


class TokenAuthSession(EnvProxySession):
    """Session that authenticates every request with the manager's current token.

    ``header_name``/``scheme`` shape the header (``Authorization: Bearer <token>`` by default; an
    empty scheme sends the bare token). ``max_auth_retries`` bounds re-sends per request. Given an
    :class:`Authenticator` instead of a manager, it uses that one (and its header settings).
    """

    def __init__(
        self,
        manager: TokenManager | Authenticator,
        *,
        header_name: str = "Authorization",
        scheme: str = "Bearer",
        max_auth_retries: int = 1,
        default_timeout: float = 10.0,
    ) -> None:
        super().__init__()
        if isinstance(manager, Authenticator):
            self.auth_policy = manager
            header_name = manager.header_name
        else:
            self.auth_policy = Authenticator(
                manager, header_name=header_name, scheme=scheme, max_auth_retries=max_auth_retries
            )
        self._header_key = header_name.lower()
        self.default_timeout = default_timeout
        reset_after_fork(self)

    @property
    def manager(self) -> TokenManager:
        return self.auth_policy.manager

    @property
    def last_outcome(self) -> AuthOutcome:
        """The outcome of the last request made on the calling thread."""
        return self.auth_policy.last_outcome

    def __repr__(self) -> str:
        return f"<TokenAuthSession header={self.auth_policy.header_name!r} manager={self.manager.name}>"

    def request(self, method, url, *args, headers=None, timeout=None, **kwargs):  # type: ignore[override]
        auth = self.auth_policy
        outcome = auth.new_outcome(attempted=True)
        kwargs["allow_redirects"] = False
        deadline = time.monotonic() + _seconds(timeout, self.default_timeout)
        # Copy: the stock exporter passes (and reuses) its own dict. Drop any stale credential.
        base_headers = {k: v for k, v in (headers or {}).items() if k.lower() != self._header_key}
        try:
            held = auth.current(deadline - time.monotonic(), outcome)
            while True:
                send_headers = dict(base_headers)
                send_headers[auth.header_name] = auth.header_value(held)
                response = super().request(
                    method,
                    url,
                    *args,
                    headers=send_headers,
                    timeout=_remaining_timeout(timeout, deadline),
                    **kwargs,
                )
                status = outcome.status = response.status_code
                if status in AUTH_REJECTED_STATUS:
                    newer = auth.token_for_resend(held, outcome, deadline - time.monotonic())
                    if newer is None:
                        return response
                    response.close()
                    held = newer
                    continue
                outcome.rejected = False
                if 300 <= status < 400:
                    outcome.redirect = True
                    response.close()
                    raise RedirectRefused(_redirect_message(response, url))
                return response
        except NoTokenAvailable as exc:
            raise TokenUnavailable(str(exc)) from None

    def _after_fork_in_child(self) -> None:
        # The parent's connections are the parent's: a child opens its own.
        self.forget_inherited()


def _redirect_message(response: requests.Response, url: str) -> str:
    target = urlsplit(response.headers.get("Location", ""))
    shown = f"{target.scheme}://{target.netloc}{target.path}" if target.netloc else target.path
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


def _remaining_timeout(original, deadline: float):
    remaining = max(deadline - time.monotonic(), 0.001)
    if isinstance(original, tuple):
        return tuple(None if t is None else min(t, remaining) for t in original)
    return remaining
