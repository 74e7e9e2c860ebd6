"""The sending queue: ``export()`` hands it encoded requests; one sender delivers them, in order.

Like the Collector's exporter helper (bounded queue -> sender -> retry), inside the process:

* :meth:`SendingQueue.submit` appends an encoded request to a bounded FIFO and wakes the sender.
  The caller waits for its own request at most ``wait`` seconds, and not at all while the endpoint
  is failing or an earlier request is overdue: the SDK's worker never waits on the network for more
  than one short attempt, never runs a retry loop, never sleeps a backoff.
* One sender thread takes the head of the queue (merged with what queued behind it, up to
  ``coalesce_bytes``: concatenated ``Export*ServiceRequest`` bytes are one valid request), makes one
  attempt and applies :func:`~otel_token_exporter.verdicts.decide`: SENT and DROP leave the queue,
  KEEP stays at the head while the sender backs off (jittered exponential, ``Retry-After`` /
  ``RetryInfo`` honoured even past the export timeout). While it backs off, nothing else talks to
  the endpoint: one probe at a time is the circuit breaker.
* Past ``max_records`` / ``max_bytes`` (real encoded bytes) the oldest requests not in flight are
  dropped, counted and said once.

Why one sender: order (a cumulative metric must never go backwards at the receiver, and logs read
best in order), one probe at a time during an outage, and no connection pool to size. Concurrent
callers (a simple processor on many threads) are served by merging what queued while the previous
request was in flight, not by more connections.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY, attach, set_value

from ._fork import reset_after_fork
from .schedule import probe_delay
from .settings import QueueLimits
from .transports import Attempt
from .verdicts import Verdict, decide

__all__ = ["SendingQueue", "Request", "QueueStats"]

_logger = logging.getLogger("otel_token_exporter")

QUEUED, SENDING, KEPT, SENT, DROPPED = "queued", "sending", "kept", "sent", "dropped"


class Request:
    """One encoded export request and where it stands."""

    __slots__ = ("body", "items", "state", "kept", "_event")

    def __init__(self, body: bytes, items: int) -> None:
        self.body = body
        self.items = items
        self.state = QUEUED
        self.kept = False  # an attempt failed and it was kept: delivering it is a redelivery
        self._event = threading.Event()

    def _settle(self, state: str) -> None:
        self.state = state
        self._event.set()  # the caller stops waiting: sent, dropped, or known to be kept

    def wait(self, timeout: float) -> str:
        if timeout > 0:
            self._event.wait(timeout)
        return self.state


@dataclass(frozen=True)
class QueueStats:
    queued_records: int  # waiting or in flight (kept ones included)
    queued_requests: int
    queued_bytes: int
    dropped_records: int  # dropped at the cap or as undeliverable
    redelivered_requests: int  # delivered after having been kept


#: Hook the exporter core gets after every attempt: (attempt, verdict, items, was_kept_before).
AttemptHook = Callable[[Attempt, Verdict, int, bool], None]


class SendingQueue:
    """Delivers encoded requests through ``send(body, timeout) -> Attempt``. Safe for concurrent use."""

    def __init__(
        self,
        send: Callable[[bytes, float], Attempt],
        *,
        timeout: float,
        limits: QueueLimits = QueueLimits(),
        item: str = "record",
        on_attempt: AttemptHook | None = None,
        on_drop: Callable[[int, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        name: str = "otel-token-sender",
    ) -> None:
        self._send = send
        self.timeout = timeout
        self.limits = limits
        self._item = item
        self._on_attempt = on_attempt
        self._on_drop = on_drop
        self._clock = clock
        self._rng = rng or random.Random()
        self._name = name
        self._dropped = 0
        self._redelivered = 0
        self._closed = False
        self._reset_runtime_state()
        reset_after_fork(self)

    def _reset_runtime_state(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._queue: deque[Request] = deque()
        self._records = 0
        self._bytes = 0
        self._thread: threading.Thread | None = None
        self._failures = 0
        self._backoff_until = float("-inf")
        self._inflight_since: float | None = None
        self._flushing = 0  # flushes waiting: probe at the shortest backoff
        self._single = 0  # this many next attempts send the head alone (a merged request was refused)
        self._warned_cap = False

    def _after_fork_in_child(self) -> None:
        # The parent still owns (and sends) what it queued; a child starts empty, with its own seed.
        self._reset_runtime_state()
        self._rng.seed()

    # -- public -------------------------------------------------------------------------------
    def submit(self, request: Request, wait: float) -> str:
        """Queue ``request``; wait up to ``wait`` s for it. Returns its state (``sent`` when delivered)."""
        evicted: list[Request] = []
        with self._cond:
            if self._closed:
                request._settle(DROPPED)
                closed = True
            else:
                closed = False
                self._queue.append(request)
                self._records += request.items
                self._bytes += len(request.body)
                evicted = self._enforce_limits()
                now = self._clock()
                overdue = self._inflight_since is not None and now - self._inflight_since > wait
                if self._failures or overdue:
                    wait = 0.0  # the endpoint is failing or slow: never hold the caller's thread
                self._ensure_thread()
                self._cond.notify_all()
        if closed:
            self._count_drop(request.items, "shutdown")
            return DROPPED
        if evicted:
            self._count_drop(sum(r.items for r in evicted), "buffer_full")
        return request.wait(wait)

    def wake(self) -> None:
        """Probe now (a new token arrived), cutting the current backoff short and restarting its
        growth (the condition that made it grow may be gone)."""
        with self._cond:
            self._failures = 0
            self._backoff_until = float("-inf")
            self._cond.notify_all()

    def flush(self, timeout: float, *, give_up: Callable[[], bool] | None = None) -> bool:
        """Try now, and wait up to ``timeout`` s for the queue to empty. True when it did.

        ``give_up`` is asked after every attempt: True ends the wait early (nothing can succeed).
        """
        deadline = self._clock() + max(timeout, 0.0)
        with self._cond:
            if not self._queue:
                return True
            # Probe now, and at the shortest backoff while the flush lasts (a Retry-After from
            # the endpoint still applies).
            self._flushing += 1
            self._backoff_until = float("-inf")
            self._ensure_thread()
            self._cond.notify_all()
            try:
                while self._queue:
                    remaining = deadline - self._clock()
                    if remaining <= 0 or (give_up is not None and give_up()):
                        return False
                    self._cond.wait(min(remaining, 0.25))
                return True
            finally:
                self._flushing -= 1

    def close(self, timeout: float, *, drain: bool = True, give_up: Callable[[], bool] | None = None) -> int:
        """Drain for up to ``timeout`` s (unless ``drain`` is False), then stop. Returns records left.

        Returns within ``timeout`` plus a few milliseconds: a send in flight is not waited for past
        it (the sender stops as soon as that send returns).
        """
        deadline = self._clock() + max(timeout, 0.0)
        if drain:
            self.flush(timeout, give_up=give_up)
        with self._cond:
            self._closed = True
            left = list(self._queue)
            self._queue.clear()
            self._records = self._bytes = 0
            thread = self._thread
            self._cond.notify_all()
        for request in left:
            request._settle(DROPPED)
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(deadline - self._clock(), 0.01))
        lost = sum(r.items for r in left)
        if lost:
            self._count_drop(lost, "shutdown", say=False)
        return lost

    def stats(self) -> QueueStats:
        with self._lock:
            return QueueStats(self._records, len(self._queue), self._bytes, self._dropped, self._redelivered)

    @property
    def failing(self) -> bool:
        """The last attempt failed and was kept (the sender is backing off)."""
        return self._failures > 0

    # -- internals ----------------------------------------------------------------------------
    def _enforce_limits(self) -> list[Request]:
        """Drop the oldest requests not in flight while over a cap (the newest always stays)."""
        evicted: list[Request] = []
        limits = self.limits
        while self._records > limits.max_records or self._bytes > limits.max_bytes:
            victim = next((r for r in self._queue if r.state != SENDING), None)
            if victim is None or victim is self._queue[-1]:
                break
            self._queue.remove(victim)
            self._records -= victim.items
            self._bytes -= len(victim.body)
            victim._settle(DROPPED)
            evicted.append(victim)
        return evicted

    def _count_drop(self, count: int, reason: str, *, say: bool = True) -> None:
        with self._lock:
            self._dropped += count
            total = self._dropped
            warn = say and not self._warned_cap
            if warn:
                self._warned_cap = True
        if self._on_drop is not None:
            self._on_drop(count, reason)
        if warn:
            why = {
                "buffer_full": "the sending queue is full (oldest first)",
                "undeliverable": "the endpoint refused them and retrying cannot help",
            }.get(reason, reason)
            _logger.warning(
                "dropping %d %s(s): %s; %d dropped so far (said once per episode)", count, self._item, why, total
            )

    def _ensure_thread(self) -> None:
        if self._closed or (self._thread is not None and self._thread.is_alive()):
            return
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def _next_batch(self) -> list[Request] | None:
        """Wait (lock held) until there is something to send and no backoff; None when closed."""
        while True:
            if self._closed:
                return None
            now = self._clock()
            if self._queue and now >= self._backoff_until:
                break
            wait = self._backoff_until - now if self._queue else 1.0
            self._cond.wait(min(max(wait, 0.001), 1.0))
        batch = [self._queue[0]]
        size = len(batch[0].body)
        if self._single:
            self._single -= 1
        else:
            for request in list(self._queue)[1:]:
                size += len(request.body)
                if size > self.limits.coalesce_bytes:
                    break
                batch.append(request)
        for request in batch:
            request.state = SENDING
        self._inflight_since = self._clock()
        return batch

    def _run(self) -> None:
        # Our own sends, and what we log from here, must not be traced or fed back into the pipeline.
        attach(set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
        while True:
            with self._cond:
                batch = self._next_batch()
            if batch is None:
                return
            body = batch[0].body if len(batch) == 1 else b"".join(r.body for r in batch)
            kept_before = any(r.kept for r in batch)
            try:
                attempt = self._send(body, self.timeout)
            except Exception as exc:  # noqa: BLE001 - the sender must never die
                _logger.debug("a send raised", exc_info=True)
                attempt = Attempt("?", detail=f"{type(exc).__name__} while sending")
            verdict = decide(attempt)
            self._settle(batch, attempt, verdict)
            if self._on_attempt is not None:
                try:
                    self._on_attempt(attempt, verdict, sum(r.items for r in batch), kept_before)
                except Exception:  # noqa: BLE001
                    _logger.debug("attempt hook failed", exc_info=True)

    def _settle(self, batch: list[Request], attempt: Attempt, verdict: Verdict) -> None:
        dropped = 0
        with self._cond:
            self._inflight_since = None
            if verdict is Verdict.DROP and len(batch) > 1:
                # A merged request was refused: it may be the merge (too large); try one at a time.
                for request in batch:
                    request.state = KEPT
                self._single = len(batch)
            elif verdict is Verdict.KEEP:
                self._failures += 1
                self._backoff_until = self._clock() + probe_delay(
                    1 if self._flushing else self._failures,
                    self._rng,
                    base=self.limits.backoff_base,
                    cap=self.limits.backoff_cap,
                    retry_after=attempt.retry_after,
                    max_retry_after=self.limits.max_retry_after,
                )
                for request in batch:
                    request.kept = True
                    request._settle(KEPT)
            else:
                self._failures = 0
                for request in batch:
                    if self._queue and self._queue[0] is request:
                        self._queue.popleft()
                    elif request in self._queue:  # pragma: no cover - only the head is ever sent
                        self._queue.remove(request)
                    self._records -= request.items
                    self._bytes -= len(request.body)
                    if verdict is Verdict.SENT and request.kept:
                        self._redelivered += 1
                    request._settle(SENT if verdict is Verdict.SENT else DROPPED)
                if verdict is Verdict.DROP:
                    dropped = sum(r.items for r in batch)
                if not self._queue:
                    self._warned_cap = False
            self._cond.notify_all()
        if dropped:
            self._count_drop(dropped, "undeliverable")
