"""TokenManager: one cached token per source, refreshed in the background, one fetch at a time.

Safe for concurrent use by any number of threads and across ``os.fork()``. The export path reads the
cached token without waiting; it only waits when no unexpired token exists at all. A single
background thread is the only caller of ``source.fetch()``, so any number of threads asking at once
cause exactly one fetch (single flight by construction, not by a double-checked lock).
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from ._fork import reset_after_fork
from .schedule import DEFAULT_POLICY, RefreshPolicy, backoff_delay, refresh_at
from .token import FatalTokenError, NoTokenAvailable, Token, TokenError, TokenSource, unusable_reason

__all__ = ["TokenManager", "HeldToken", "Health"]

_logger = logging.getLogger("otel_token_exporter")


@dataclass(frozen=True)
class HeldToken:
    """A token as the manager hands it out: the value plus its generation and schedule."""

    value: str = field(repr=False)
    generation: int
    obtained_at: float
    expires_at: float
    refresh_at: float
    #: The refresh point is the source's own hint (re-read a file, azure's refresh_on).
    recheck: bool = False

    @property
    def lifetime(self) -> float:
        return self.expires_at - self.obtained_at


@dataclass(frozen=True)
class Health:
    """A snapshot an application can expose in its own health checks. Never holds the token."""

    generation: int
    has_token: bool
    seconds_until_expiry: float | None
    seconds_until_refresh: float | None
    refreshing: bool
    consecutive_failures: int
    last_error: str | None
    refresh_count: int
    failure_count: int


RefreshListener = Callable[[str, str, float, "HeldToken | None", "BaseException | None"], None]

#: How often the refresher looks at a source's ``fingerprint()`` while cooling down after a fatal
#: error (a corrected secret file is used within this long of being written).
CREDENTIAL_POLL = 0.5


class TokenManager:
    """Keeps a fresh token from ``source`` and hands out the current one.

    ``clock`` is the monotonic clock used for every schedule (a wall-clock jump changes nothing);
    ``rng`` drives jitter. ``policy`` says when to refresh and how to back off.
    """

    def __init__(
        self,
        source: TokenSource,
        *,
        policy: RefreshPolicy = DEFAULT_POLICY,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        name: str | None = None,
    ) -> None:
        self._source = source
        self._policy = policy
        self._clock = clock
        self._rng = rng or random.Random()
        named = getattr(source, "name", None)  # a source's user-facing name ("oauth2"), if it has one
        self.name = name or (named if isinstance(named, str) and named else type(source).__name__)
        self._listeners: list[RefreshListener] = []
        self._held: HeldToken | None = None
        self._generation = 0
        self._closed = False
        self._refresh_count = 0
        self._failure_count = 0
        self._reset_runtime_state()
        reset_after_fork(self)

    # -- state that must not survive a fork ---------------------------------------------------
    def _reset_runtime_state(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._refreshing = False
        self._wanted: str | None = None  # trigger name when someone asked for a refresh now
        self._rejected_generation = -1
        self._last_forced = float("-inf")
        self._backoff_until = float("-inf")
        self._failures = 0
        self._last_error: BaseException | None = None
        self._fatal_fingerprint: object = None  # the source's fingerprint() when it failed fatally
        self._last_retry_now = float("-inf")
        self._warned: set[str] = set()

    def _after_fork_in_child(self) -> None:
        # The parent's lock may have been held and its thread does not exist here: start afresh,
        # keeping the token (still valid) so the child need not ask the IdP at once, and the
        # backoff (N workers forked during an IdP outage or after a fatal error must not all ask
        # at once).
        kept = (self._backoff_until, self._failures, self._last_error, self._fatal_fingerprint)
        self._reset_runtime_state()
        self._backoff_until, self._failures, self._last_error, self._fatal_fingerprint = kept
        # Every child inherits the parent's random state and the held token's refresh point: without
        # a new seed and a new draw, N preforked workers would refresh within milliseconds of each
        # other at every rotation.
        self._rng.seed()
        held = self._held
        if held is not None and not held.recheck:
            self._held = replace(held, refresh_at=self._redraw_refresh_at(held))

    def _redraw_refresh_at(self, held: HeldToken) -> float:
        due = refresh_at(held.obtained_at, held.expires_at, self._policy, self._rng)
        now = self._clock()
        if due > now:
            return due
        # Already due in the parent: spread the children over the jitter range from now on.
        spread = min(held.lifetime * self._policy.jitter_fraction, self._policy.max_jitter,
                     max(held.expires_at - now, 0.0) / 2)
        return now + self._rng.uniform(0.0, spread)

    # -- public API ---------------------------------------------------------------------------
    @property
    def clock(self) -> Callable[[], float]:
        """The monotonic clock this manager schedules by."""
        return self._clock

    def add_listener(self, listener: RefreshListener) -> None:
        """Call ``listener(trigger, outcome, duration_s, held_or_None, error_or_None)`` after each fetch."""
        self._listeners.append(listener)

    def remove_listener(self, listener: RefreshListener) -> None:
        """Stop calling ``listener`` (an exporter sharing this manager shut down)."""
        try:
            self._listeners.remove(listener)
        except ValueError:
            pass

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def source(self) -> TokenSource:
        """The token source this manager fetches from (for diagnostics such as ``refusal_hint()``)."""
        return self._source

    def start(self) -> None:
        """Start the background refresher and its first fetch. Never blocks, never raises."""
        with self._cond:
            self._ensure_thread()
            if self._held is None and self._wanted is None and not self._refreshing:
                self._wanted = "initial"
                self._cond.notify_all()

    def get(self, timeout: float, *, wait_through_backoff: bool = True) -> HeldToken:
        """The current token; waits up to ``timeout`` s only when no unexpired token exists.

        With ``wait_through_backoff=False`` it waits only for a fetch running or about to start,
        not for a retry scheduled after a failure (the export path: it keeps its batch instead).
        Raises :class:`NoTokenAvailable` (naming the last error, never a secret) when none came.
        """
        held = self._held
        now = self._clock()
        if held is not None and now < held.expires_at and held.generation != self._rejected_generation:
            if now >= held.refresh_at and not self._refreshing and os.getpid() == self._pid:
                self._kick()
            return held
        return self._wait_for_token(now, timeout, wait_through_backoff)

    def reject(self, generation: int) -> bool:
        """A request sent with ``generation`` was refused (401/403, UNAUTHENTICATED...).

        Returns True when a retry can use a different token: a newer one exists already (a late
        rejection never discards it and never causes a second refresh) or a forced refresh was
        started. Returns False when retrying now would resend the same token.
        """
        with self._cond:
            self._ensure_thread()
            held = self._held
            if held is None or generation < held.generation:
                return True
            if generation != held.generation:
                return False
            if self._rejected_generation == generation:
                return True  # someone else already forced this refresh
            now = self._clock()
            if now - self._last_forced < self._policy.min_forced_interval or now < self._backoff_until:
                return False
            self._rejected_generation = generation
            self._last_forced = now
            self._wanted = "forced"
            self._cond.notify_all()
            return True

    def retry_now(self) -> bool:
        """Cut a backoff short for one fresh attempt (a flush or shutdown that could deliver).

        Returns True when a fetch is running or was started. Never after a fatal error whose
        credentials have not changed, and at most once per ``min_forced_interval``.
        """
        with self._cond:
            if self._closed:
                return False
            if self._refreshing:
                return True
            now = self._clock()
            held = self._held
            if held is not None and now < held.expires_at and held.generation != self._rejected_generation:
                return False  # a usable token exists: nothing to retry
            if isinstance(self._last_error, FatalTokenError) and self._backoff_until > now:
                return False
            if now - self._last_retry_now < self._policy.min_forced_interval:
                return self._backoff_until <= now
            self._last_retry_now = now
            self._backoff_until = float("-inf")
            self._wanted = self._wanted or "flush"  # one asked for during the backoff goes now
            self._ensure_thread()
            self._cond.notify_all()
            return True

    @property
    def failed_fatally(self) -> bool:
        """The last fetch failed with an error retrying will not fix soon, and none has worked since."""
        held = self._held
        valid = held is not None and self._clock() < held.expires_at
        return isinstance(self._last_error, FatalTokenError) and not valid

    def health(self) -> Health:
        held = self._held
        now = self._clock()
        err = self._last_error
        return Health(
            generation=held.generation if held else 0,
            has_token=held is not None and now < held.expires_at,
            seconds_until_expiry=(held.expires_at - now) if held else None,
            seconds_until_refresh=(held.refresh_at - now) if held else None,
            refreshing=self._refreshing,
            consecutive_failures=self._failures,
            last_error=type(err).__name__ if err is not None else None,
            refresh_count=self._refresh_count,
            failure_count=self._failure_count,
        )

    def close(self, timeout: float = 5.0) -> None:
        """Stop the refresher; a fetch in flight is aborted when the source has ``abort()``."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
            in_flight = self._refreshing
        if in_flight:
            # A hanging IdP must not keep our thread alive: sources that can, interrupt the fetch.
            abort = getattr(self._source, "abort", None)
            if callable(abort):
                try:
                    abort()
                except Exception:  # noqa: BLE001
                    _logger.debug("aborting the fetch of %s failed", self.name, exc_info=True)
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(timeout, 0.0))

    def __repr__(self) -> str:
        h = self.health()
        return f"<TokenManager {self.name} generation={h.generation} failures={h.consecutive_failures}>"

    # -- internals ----------------------------------------------------------------------------
    def _kick(self) -> None:
        """Wake the refresher to look at its schedule (it would wake by itself; this covers a
        refresher that died, and clocks that are not real time)."""
        with self._cond:
            self._ensure_thread()
            self._cond.notify_all()

    def _wait_for_token(self, now: float, timeout: float, wait_through_backoff: bool) -> HeldToken:
        deadline = now + max(timeout, 0.0)
        with self._cond:
            self._ensure_thread()
            while True:
                if self._closed:
                    raise NoTokenAvailable(f"token manager for {self.name} is closed")
                held = self._held
                now = self._clock()
                valid = held is not None and now < held.expires_at
                if valid and held.generation != self._rejected_generation:
                    return held
                if self._wanted is None and not self._refreshing:
                    self._wanted = "forced" if valid else ("initial" if held is None else "expired")
                    self._cond.notify_all()
                if not self._refreshing and self._backoff_until > now:
                    # The refresher is backing off: a rejected but unexpired token beats none.
                    if valid:
                        return held
                    if not wait_through_backoff or self._backoff_until >= deadline:
                        raise self._no_token()
                remaining = deadline - now
                if remaining <= 0:
                    if valid:
                        return held
                    raise self._no_token()
                self._cond.wait(remaining)

    def _no_token(self) -> NoTokenAvailable:
        err = self._last_error
        why = f": last error: {err}" if err is not None else ""
        return NoTokenAvailable(f"no valid token from {self.name}{why}")

    def _ensure_thread(self) -> None:
        """Start (or, after a fork, restart) the refresher. Call with the lock held."""
        if os.getpid() != self._pid:
            return  # the fork hook resets us; never reached in practice
        if self._closed or (self._thread is not None and self._thread.is_alive()):
            return
        self._thread = threading.Thread(
            target=self._run, name=f"otel-token-refresh[{self.name}]", daemon=True
        )
        self._thread.start()

    def _next_due(self, now: float) -> float:
        if self._backoff_until > now:
            return self._backoff_until
        if self._wanted is not None or self._held is None:
            return now
        return self._held.refresh_at

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    now = self._clock()
                    due = self._next_due(now)
                    if self._held is None and self._wanted is None and due <= now:
                        self._wanted = "initial"
                    if due <= now:
                        break
                    if self._fatal_fingerprint is not None:
                        if self._credentials_changed():
                            continue
                        self._cond.wait(min(due - now, CREDENTIAL_POLL))
                        continue
                    self._cond.wait(min(due - now, 30.0))
                held = self._held
                trigger = self._wanted or ("recheck" if held is not None and held.recheck else "scheduled")
                self._wanted = None
                self._refreshing = True
            self._fetch_once(trigger)

    def _credentials_changed(self) -> bool:
        """During a fatal cooldown: did the source's credentials change (a fixed secret file)?

        Called by the refresher with the lock held; releases it while asking the source."""
        expected = self._fatal_fingerprint
        self._cond.release()
        try:
            current = _fingerprint(self._source)
        finally:
            self._cond.acquire()
        if current is None or current == expected or self._fatal_fingerprint is None:
            return False
        self._fatal_fingerprint = None
        self._backoff_until = float("-inf")
        self._wanted = "credential_change"
        return True

    def _fetch_once(self, trigger: str) -> None:
        previous = self._held
        started = self._clock()
        token: Token | None = None
        error: BaseException | None = None
        try:
            token = self._call_source(trigger, previous)
            if not isinstance(token, Token):
                raise TypeError(f"token source {self.name} returned {type(token).__name__}, not Token")
        except BaseException as exc:  # noqa: BLE001 - any failure of a plug-in source is reported
            error = exc
        duration = self._clock() - started
        with self._cond:
            self._refreshing = False
            held = None
            if token is not None:
                held, error = self._accept(token, started)
            if held is not None:
                self._on_success(held)
                if trigger == "recheck" and previous is not None and previous.value != held.value:
                    trigger = "source_change"  # the re-read found a new token (a rotated file)
            else:
                assert error is not None
                self._on_failure(error, trigger)
            self._cond.notify_all()
        for listener in list(self._listeners):
            try:
                listener(trigger, "success" if held else "failure", duration, held, error)
            except Exception:  # noqa: BLE001 - a listener must never break refreshing
                _logger.debug("token refresh listener failed", exc_info=True)

    def _call_source(self, trigger: str, previous: HeldToken | None) -> Token:
        """``source.fetch()``; for a refresh forced by a rejection, ``source.fetch_rejecting(value)``
        when the source has it (a shared cache must know which token was refused: one that another
        process already replaced is not fetched again)."""
        fetch_rejecting = getattr(self._source, "fetch_rejecting", None)
        if trigger == "forced" and previous is not None and callable(fetch_rejecting):
            return fetch_rejecting(previous.value)
        return self._source.fetch()

    def _accept(self, token: Token, started: float) -> tuple[HeldToken | None, BaseException | None]:
        why = unusable_reason(token.value)
        if why is not None:
            return None, FatalTokenError(
                f"token source {self.name} returned an unusable token ({why}): it cannot be sent "
                "in an HTTP header or gRPC metadata"
            )
        # Count the lifetime from when the request left (the source's obtained_at, normally).
        obtained = min(token.obtained_at, self._clock())
        expires = token.expires_at
        if expires is None:
            expires = obtained + self._policy.default_lifetime
        if expires <= self._clock():
            return None, TokenError(f"token source {self.name} returned a token that has already expired")
        due = refresh_at(obtained, expires, self._policy, self._rng)
        recheck = token.refresh_hint is not None and token.refresh_hint < due
        if recheck:
            due = max(token.refresh_hint, obtained)
        self._generation += 1
        return HeldToken(token.value, self._generation, obtained, expires, due, recheck), None

    def _on_success(self, held: HeldToken) -> None:
        if self._failures:
            _logger.info(
                "token source %s recovered after %d failed attempt(s)", self.name, self._failures
            )
        self._held = held
        self._failures = 0
        self._last_error = None
        self._backoff_until = float("-inf")
        self._fatal_fingerprint = None
        self._refresh_count += 1
        self._warned.clear()

    def _on_failure(self, error: BaseException, trigger: str) -> None:
        self._failures += 1
        self._failure_count += 1
        self._last_error = error
        fatal = isinstance(error, FatalTokenError)
        lifetime = self._held.lifetime if self._held is not None else None
        delay = backoff_delay(
            self._failures,
            self._policy,
            self._rng,
            retry_after=getattr(error, "retry_after", None),
            fatal=fatal,
            lifetime=lifetime,
        )
        self._backoff_until = self._clock() + delay
        # A fatal error waits for its cooldown, or for the credentials to change (polled).
        self._fatal_fingerprint = _fingerprint(self._source) if fatal else None
        if not isinstance(error, TokenError):
            error_text = f"{type(error).__name__} in token source (details at DEBUG)"
            _logger.debug("token source %s raised", self.name, exc_info=error)
        else:
            error_text = str(error)
        # Warn once per condition, not once per attempt.
        key = f"{type(error).__name__}:{error_text}"
        if key not in self._warned:
            self._warned.add(key)
            level = logging.ERROR if fatal else logging.WARNING
            held_note = ""
            if self._held is not None:
                left = self._held.expires_at - self._clock()
                held_note = (
                    f"; keeping the current token ({left:.1f}s left)" if left > 0 else "; no valid token"
                )
            _logger.log(
                level,
                "token refresh (%s) from %s failed: %s; next try in %.1fs%s",
                trigger,
                self.name,
                error_text,
                delay,
                held_note,
            )


def _fingerprint(source: TokenSource) -> object:
    """``source.fingerprint()`` (a cheap, local summary of its credential inputs), or None."""
    method = getattr(source, "fingerprint", None)
    if not callable(method):
        return None
    try:
        return method()
    except Exception:  # noqa: BLE001 - a broken fingerprint must never break refreshing
        _logger.debug("fingerprint() of a token source failed", exc_info=True)
        return None
