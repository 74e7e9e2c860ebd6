"""The sending queue: ``export()`` hands it encoded requests; one sender delivers them, in order.

Like the Collector's exporter helper (bounded queue -> sender -> retry), inside the process:

* :meth:`SendingQueue.submit` appends an encoded request to a bounded FIFO and wakes the sender.
  The caller waits for its own request at most ``wait`` seconds, and not at all while the endpoint
  is failing or an earlier request is overdue: the SDK's worker never waits on the network for more
  than one short attempt, never runs a retry loop, never sleeps a backoff.
* The direct path: when nothing is queued or in flight, nothing failed, and the endpoint's recent
  answers came well within ``wait``, the caller's thread makes that one short attempt itself
  (bounded by ``wait``), sparing two thread switches per request; a request it cannot deliver is
  kept at the head of the queue like any other. If the short bound cuts off an answer that was
  merely slow, the request may arrive twice (delivery is at-least-once anyway), and the direct path
  stays off until answers are fast again.
* One sender thread takes the head of the queue (merged with what queued behind it, up to
  ``coalesce_bytes``: concatenated ``Export*ServiceRequest`` bytes are one valid request), makes one
  attempt and applies :func:`~otel_token_exporter.verdicts.decide`: SENT and DROP leave the queue,
  KEEP stays at the head while the sender backs off (jittered exponential, ``Retry-After`` /
  ``RetryInfo`` honoured even past the export timeout). While it backs off, nothing else talks to
  the endpoint: one probe at a time is the circuit breaker, and a probe carries the head request
  alone (a fleet probing a recovering endpoint sends one batch each, not a megabyte each).
* Past ``max_records`` / ``max_bytes`` (real encoded bytes) the oldest requests not in flight are
  dropped, counted and said once.
* With a :class:`~otel_token_exporter.spool.Spool` (opt-in), the queue's storage extends to disk: a
  request not delivered when ``submit`` returns is written to a file first; past the memory caps a
  spooled request leaves memory but stays queued (read back when it reaches the head); files left
  by earlier processes are queued first, oldest first; a delivered or dropped request's file goes;
  and :meth:`SendingQueue.close` with ``drain=False`` leaves everything on disk for the next process.

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

from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY, attach, detach, set_value

from ._fork import reset_after_fork
from .schedule import probe_delay
from .settings import QueueLimits
from .spool import Spool, SpoolEntry
from .transports import Attempt
from .verdicts import Verdict, decide

__all__ = ["SendingQueue", "Request", "QueueStats", "Closed"]

_logger = logging.getLogger("otel_token_exporter")

QUEUED, SENDING, KEPT, SENT, DROPPED = "queued", "sending", "kept", "sent", "dropped"
SPOOLED = "spooled"  # left on disk at close, for the next process
#: While idle with a spool, look for files of processes that died meanwhile this often (seconds).
RESCAN = 30.0
#: The direct path is open while the slowest recent answer took at most this share of the wait.
DIRECT_SHARE = 0.25


class Request:
    """One encoded export request and where it stands (``body`` is None while it is on disk only)."""

    __slots__ = ("body", "items", "state", "kept", "spooled", "spooling", "_event")

    def __init__(self, body: bytes | None, items: int, *, spooled: SpoolEntry | None = None) -> None:
        self.body = body
        self.items = items
        self.state = QUEUED
        self.kept = spooled is not None  # an attempt failed and it was kept: delivering it is a redelivery
        self.spooled = spooled  # its file, once written
        self.spooling = False  # a thread is writing its file now
        self._event = threading.Event()

    @property
    def size(self) -> int:
        return len(self.body) if self.body is not None else (self.spooled.size if self.spooled else 0)

    def _settle(self, state: str) -> None:
        self.state = state
        self._event.set()  # the caller stops waiting: sent, dropped, or known to be kept

    def wait(self, timeout: float) -> str:
        if timeout > 0:
            self._event.wait(timeout)
        return self.state


@dataclass(frozen=True)
class QueueStats:
    queued_records: int  # waiting or in flight (kept ones included, in memory or on disk)
    queued_requests: int
    queued_bytes: int  # encoded bytes held in memory
    dropped_records: int  # dropped at the caps or as undeliverable
    redelivered_requests: int  # delivered after having been kept
    spooled_requests: int = 0  # files on disk this process owns
    spooled_bytes: int = 0


@dataclass(frozen=True)
class Closed:
    """What :meth:`SendingQueue.close` left: records lost, and records left on disk for later."""

    lost: int
    spooled: int


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
        spool: Spool | None = None,
        max_merge_items: int | None = None,
    ) -> None:
        self._send = send
        self.spool = spool
        if spool is not None:
            spool.on_drop = self._count_drop
        self._max_merge_items = max_merge_items
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
        self._attempts = 0
        self._closed = False
        self._reset_runtime_state()
        reset_after_fork(self)
        if spool is not None:
            with self._cond:
                self._ensure_thread()  # what earlier processes left is delivered without new data

    def _reset_runtime_state(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)  # the sender waits on it (work, backoff's end)
        self._changed = threading.Condition(self._lock)  # flushes wait on it (an attempt settled)
        self._queue: deque[Request] = deque()
        self._records = 0  # items of the requests held in memory
        self._bytes = 0  # their encoded bytes
        self._disk_records = 0  # items of queued requests held on disk only
        self._recovered_at = float("-inf")
        self._thread: threading.Thread | None = None
        self._failures = 0
        self._backoff_until = float("-inf")
        self._inflight_since: float | None = None
        self._flushing = 0  # flushes waiting: probe at the shortest backoff
        self._single = 0  # this many next attempts send the head alone (a merged request was refused)
        self._warned: set[str] = set()  # drop reasons said this episode (reset by a delivery)
        self._slowest_recent = float("inf")  # the slowest of the recent answers (s): gates the direct path

    def _after_fork_in_child(self) -> None:
        # The parent still owns (and sends) what it queued; a child starts empty, with its own seed.
        self._reset_runtime_state()
        self._rng.seed()

    # -- public -------------------------------------------------------------------------------
    def submit(self, request: Request, wait: float) -> str:
        """Queue ``request``; wait up to ``wait`` s for it. Returns its state (``sent`` when delivered)."""
        evicted: list[Request] = []
        direct = False
        with self._cond:
            if self._closed:
                request._settle(DROPPED)
                closed = True
            else:
                closed = False
                now = self._clock()
                direct = (
                    wait > 0 and not self._queue and self._inflight_since is None and not self._failures
                    and not self._flushing and self._slowest_recent <= wait * DIRECT_SHARE
                )
                self._queue.append(request)
                self._records += request.items
                self._bytes += request.size
                self._ensure_thread()  # the sender (on the direct path: there to retry, should it fail)
                if direct:
                    request.state = SENDING
                    self._inflight_since = now  # the caller is the sender of this one
                else:
                    evicted = self._enforce_limits()
                    overdue = self._inflight_since is not None and now - self._inflight_since > wait
                    if self._failures or overdue:
                        wait = 0.0  # the endpoint is failing or slow: never hold the caller's thread
                    self._cond.notify()
        if closed:
            self._count_drop(request.items, "shutdown")
            return DROPPED
        if direct:
            self._attempt([request], wait)
            state = request.state
        else:
            if evicted:
                self._count_drop(sum(r.items for r in evicted), "buffer_full")
            state = request.wait(wait)
        if state not in (SENT, DROPPED) and self.spool is not None:
            self._spool(request)
        return state

    def _spool(self, request: Request) -> None:
        """Write a request that was not delivered in time to disk (before ``export()`` returns)."""
        body = request.body
        with self._cond:
            if body is None or request.spooled is not None or request.spooling or request.state in (SENT, DROPPED):
                return
            request.spooling = True  # claimed: close() will not write it a second time
        if len(body) > self.spool.limits.max_bytes:
            self.spool.too_large(len(body))  # said once; it stays in memory, never wipes the spool
            entry = None
        else:
            entry = self.spool.write(body, request.items)
        with self._cond:
            request.spooling = False
            settled = request.state in (SENT, DROPPED)
            if entry is not None and not settled:
                request.spooled = entry
        if entry is None:
            return  # the spool cannot take it (said once): it stays in memory
        if settled:
            self.spool.remove(entry)  # delivered (or dropped) while we wrote it
            return
        self._enforce_spool_cap(keep=entry)

    def _enforce_spool_cap(self, keep: SpoolEntry) -> None:
        """Over the spool's byte cap: drop the oldest spooled requests, never the one in flight
        nor the one just written (so one large request cannot empty the spool)."""
        with self._cond:
            protected = {r.spooled.path for r in self._queue if r.state == SENDING and r.spooled}
        protected.add(keep.path)
        victims = self.spool.over_cap(protect=protected)
        if not victims:
            return
        paths = {v.path for v in victims}
        dropped = 0
        with self._cond:
            taken = [r for r in self._queue if r.spooled and r.spooled.path in paths]
            for request in taken:
                if request.state == SENDING:  # picked up since the snapshot: it stays
                    paths.discard(request.spooled.path)
                    continue
                self._forget(request)
                request._settle(DROPPED)
                dropped += request.items
        for victim in victims:
            if victim.path in paths:
                self.spool.remove(victim)
        if dropped:
            self._count_drop(dropped, "spool_full")

    def _forget(self, request: Request) -> None:
        """Take ``request`` out of the queue and its counts (lock held)."""
        try:
            self._queue.remove(request)
        except ValueError:
            return
        if request.body is None:
            self._disk_records -= request.items
        else:
            self._records -= request.items
            self._bytes -= len(request.body)

    def wake(self) -> None:
        """Probe now (a new token arrived), cutting the current backoff short and restarting its
        growth (the condition that made it grow may be gone)."""
        with self._cond:
            self._failures = 0
            self._backoff_until = float("-inf")
            self._cond.notify()

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
            self._cond.notify()
            try:
                while self._queue:
                    remaining = deadline - self._clock()
                    if remaining <= 0 or (give_up is not None and give_up()):
                        return False
                    self._changed.wait(min(remaining, 0.25))
                return True
            finally:
                self._flushing -= 1

    def close(self, timeout: float, *, drain: bool = True, give_up: Callable[[], bool] | None = None) -> Closed:
        """Drain for up to ``timeout`` s (unless ``drain`` is False), then stop.

        Returns within ``timeout`` plus a few milliseconds (plus the spool writes): a send in
        flight is not waited for past it. With a spool, what is left is written to disk for the
        next process instead of being lost.
        """
        deadline = self._clock() + max(timeout, 0.0)
        drained = self.flush(timeout, give_up=give_up) if drain else False
        with self._cond:
            self._closed = True
            left = list(self._queue)
            self._queue.clear()
            self._records = self._bytes = self._disk_records = 0
            thread = self._thread
            self._cond.notify_all()
            self._changed.notify_all()
        spooled = lost = 0
        for request in left:
            if self.spool is not None and request.spooled is None and request.body is not None and not request.spooling:
                request.spooled = self.spool.write(request.body, request.items)
            if request.spooled is not None or request.spooling:  # on disk, or being written there now
                spooled += request.items
                request._settle(SPOOLED)
            else:
                lost += request.items
                request._settle(DROPPED)
        if thread is not None and thread is not threading.current_thread():
            # Drained: the sender is idle and ends at once. Not drained (not asked to, or given up):
            # what was in flight is on disk already, or lost either way; do not wait for its answer.
            thread.join(max(deadline - self._clock(), 0.01) if drained else 0.05)
        if self.spool is not None:
            self.spool.close()
        if lost:
            self._count_drop(lost, "shutdown", say=False)
        return Closed(lost, spooled)

    def stats(self) -> QueueStats:
        files, size = self.spool.stats() if self.spool is not None else (0, 0)
        with self._lock:
            return QueueStats(self._records + self._disk_records, len(self._queue), self._bytes,
                              self._dropped, self._redelivered, files, size)

    @property
    def attempts(self) -> int:
        """Attempts settled so far (a drain compares it to know whether it probed)."""
        return self._attempts

    @property
    def inflight_for(self) -> float:
        """Seconds the attempt in flight has been waiting for its answer (0 when none is)."""
        since = self._inflight_since
        return 0.0 if since is None else max(self._clock() - since, 0.0)

    @property
    def failing(self) -> bool:
        """The last attempt failed and was kept (the sender is backing off)."""
        return self._failures > 0

    # -- internals ----------------------------------------------------------------------------
    def _enforce_limits(self) -> list[Request]:
        """While over a memory cap: a spooled request leaves memory (it stays queued, on disk);
        otherwise the oldest request not in flight is dropped. The newest always stays."""
        evicted: list[Request] = []
        limits = self.limits
        while self._records > limits.max_records or self._bytes > limits.max_bytes:
            victim = next((r for r in self._queue if r.state != SENDING and r.body is not None), None)
            if victim is None or victim is self._queue[-1]:
                break
            if victim.spooled is not None:
                self._records -= victim.items
                self._bytes -= len(victim.body)
                self._disk_records += victim.items
                victim.body = None
                continue
            self._forget(victim)
            victim._settle(DROPPED)
            evicted.append(victim)
        return evicted

    def _count_drop(self, count: int, reason: str, *, say: bool = True) -> None:
        """Count dropped items (and the metric); say each reason once per episode. Requests the
        endpoint refused are said by the exporter's episode, with the endpoint's answer."""
        with self._lock:
            self._dropped += count
            total = self._dropped
            warn = say and reason != "undeliverable" and reason not in self._warned
            if warn:
                self._warned.add(reason)
        if self._on_drop is not None:
            self._on_drop(count, reason)
        if warn:
            why = {
                "buffer_full": "the sending queue is full (oldest first)",
                "spool_full": "the spool directory is full (OTEL_TOKEN_EXPORTER_SPOOL_MAX_BYTES; oldest first)",
                "spool_corrupt": "their spool files could not be read (see the warning above)",
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
            if self._queue and now >= self._backoff_until and self._inflight_since is None:
                break
            if not self._queue and self.spool is not None and now - self._recovered_at > RESCAN:
                return []  # idle: look for files left by processes that died meanwhile
            # Idle, or a direct attempt in flight (its end notifies): sleep; else until the backoff ends.
            wait = self._backoff_until - now if self._queue and self._inflight_since is None else 1.0
            self._cond.wait(min(max(wait, 0.001), 1.0))
        batch = [self._queue[0]]
        size, items = batch[0].size, batch[0].items
        if self._single:
            self._single -= 1
        elif self._failures:
            pass  # a probe of a failing endpoint carries the head alone: merging resumes once it is taken
        else:
            for request in list(self._queue)[1:]:
                size += request.size
                items += request.items
                if size > self.limits.coalesce_bytes or (
                    self._max_merge_items is not None and items > self._max_merge_items
                ):
                    break
                batch.append(request)
        for request in batch:
            request.state = SENDING
        self._inflight_since = self._clock()
        return batch

    def _recover(self) -> None:
        """Queue the files earlier (or dead sibling) processes left, oldest first, ahead of new data."""
        entries = self.spool.recover()
        with self._cond:
            self._recovered_at = self._clock()
            requests = [Request(None, e.items, spooled=e) for e in entries]
            for request in reversed(requests):
                self._queue.appendleft(request)
                self._disk_records += request.items
            self._cond.notify()

    def _safe_recover(self) -> None:
        try:
            self._recover()
        except Exception:  # noqa: BLE001 - a strange directory must never stop the sender
            _logger.warning("looking for spool files left by other processes failed; new data is sent as usual",
                            exc_info=_logger.isEnabledFor(logging.DEBUG))
            with self._cond:
                self._recovered_at = self._clock()

    def _bodies(self, batch: list[Request]) -> list[Request]:
        """Read the requests of ``batch`` that are on disk only; unusable files are dropped, counted."""
        usable = []
        unreadable = 0
        for request in batch:
            if request.body is None:
                body = self.spool.load(request.spooled) if request.spooled is not None else None
                with self._cond:
                    if request not in self._queue:
                        continue  # taken away meanwhile (the spool's cap): not ours to count
                    if body is None:
                        self._forget(request)
                        request._settle(DROPPED)
                        unreadable += request.items
                        continue
                    self._disk_records -= request.items
                    self._records += request.items
                    self._bytes += len(body)
                    request.body = body
            usable.append(request)
        if unreadable:
            self._count_drop(unreadable, "spool_corrupt")
        return usable

    def _run(self) -> None:
        # Our own sends, and what we log from here, must not be traced or fed back into the pipeline.
        attach(set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
        if self.spool is not None:
            self._safe_recover()
        while True:
            with self._cond:
                batch = self._next_batch()
            if batch is None:
                return
            if self.spool is not None:
                if not batch:
                    self._safe_recover()
                    continue
                batch = self._bodies(batch)
                if not batch:
                    continue
            self._attempt(batch, self.timeout)

    def _attempt(self, batch: list[Request], timeout: float) -> None:
        """One attempt for ``batch`` (already marked in flight), then its verdict applied."""
        body = batch[0].body if len(batch) == 1 else b"".join(r.body for r in batch)
        kept_before = any(r.kept for r in batch)
        started = self._clock()
        # Our own requests must not be traced or logged back into the pipeline (the direct path
        # runs on the caller's thread, which a simple processor does not mark).
        token = attach(set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
        try:
            attempt = self._send(body, timeout)
        except Exception as exc:  # noqa: BLE001 - the sender must never die
            # An error of ours, not the endpoint's: it would repeat for ever, so the request is
            # dropped (counted, said) rather than kept at the head of the queue.
            _logger.error("sending a request failed inside this package (%s: %s); it is dropped",
                          type(exc).__name__, exc, exc_info=_logger.isEnabledFor(logging.DEBUG))
            attempt = Attempt("?", config_error=True, detail=f"{type(exc).__name__} while sending")
        finally:
            detach(token)
        verdict = decide(attempt)
        split = self._settle(batch, attempt, verdict, took=self._clock() - started)
        if self._on_attempt is not None and not split:
            try:
                self._on_attempt(attempt, verdict, sum(r.items for r in batch), kept_before)
            except Exception:  # noqa: BLE001
                _logger.debug("attempt hook failed", exc_info=True)

    def _settle(self, batch: list[Request], attempt: Attempt, verdict: Verdict, *, took: float) -> bool:
        """Apply ``verdict`` to ``batch`` (its attempt took ``took`` s). True when a refused merge is
        split for one-by-one retries (nothing was decided for its requests yet)."""
        dropped = 0
        done: list[SpoolEntry] = []
        split = False
        with self._cond:
            self._inflight_since = None
            self._attempts += 1
            # The direct path needs answers well within the caller's wait: track the slowest of
            # the recent ones (decaying, so one slow answer does not close it for good).
            if verdict is not Verdict.SENT:
                self._slowest_recent = float("inf")
            elif self._slowest_recent == float("inf"):
                self._slowest_recent = took
            else:
                self._slowest_recent = max(took, self._slowest_recent * 0.75)
            if verdict is Verdict.DROP and len(batch) > 1:
                # A merged request was refused: it may be the merge (too large); try one at a time.
                for request in batch:
                    request.state = KEPT
                self._single = len(batch)
                split = True
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
                    self._forget(request)
                    if request.spooled is not None:
                        done.append(request.spooled)
                    if verdict is Verdict.SENT and request.kept:
                        self._redelivered += 1
                    request._settle(SENT if verdict is Verdict.SENT else DROPPED)
                if verdict is Verdict.DROP:
                    dropped = sum(r.items for r in batch)
                if verdict is Verdict.SENT:
                    self._warned.clear()
            # flushers learn of every settled attempt; the sender only when there is more to send
            self._changed.notify_all()
            if self._queue:
                self._cond.notify()
        for entry in done:
            self.spool.remove(entry)
        if dropped:
            self._count_drop(dropped, "undeliverable")
        return split
