"""Keeping batches that could not be sent, and sending them again, oldest first.

The SDK's batch processor drops every batch whose export fails. When a failure is one that time can
fix (no valid token while the IdP is down, an endpoint rejecting fresh tokens, 5xx, connection
errors), :class:`Delivery` keeps the batch in a bounded buffer (records and approximate bytes capped;
past the cap the oldest go first, counted, said once) and a single background sender re-sends them
with jittered exponential backoff (a circuit breaker: while the buffer holds anything, only that
sender talks to the endpoint, one probe at a time). A new token wakes it at once. Batches that can
never succeed (400, 413, a redirect) are dropped and counted.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ._fork import reset_after_fork

__all__ = ["Delivery", "SendResult", "BufferLimits", "DeliveryStats"]

_logger = logging.getLogger("otel_token_exporter")


class SendResult(Enum):
    SENT = "sent"
    RETRY = "retry"  # failed, but time can fix it: keep the batch
    DROP = "drop"  # failed for good (the data or the configuration is wrong)


@dataclass(frozen=True)
class BufferLimits:
    max_records: int = 20_000
    max_bytes: int = 32 * 1024 * 1024
    #: Backoff between re-send probes: full jitter between half and all of min(cap, base * 2**n).
    backoff_base: float = 0.5
    backoff_cap: float = 30.0


@dataclass(frozen=True)
class DeliveryStats:
    buffered_records: int
    buffered_batches: int
    buffered_bytes: int
    dropped_records: int  # dropped from the buffer (cap) or as undeliverable
    resent_batches: int  # batches delivered from the buffer


def estimate_bytes(batch: Sequence[Any]) -> int:
    """A cheap size estimate of a batch (no serialization on the hot path)."""
    total = 0
    for item in batch:
        record = getattr(item, "log_record", item)
        body = getattr(record, "body", None)
        total += 200 + (len(body) if isinstance(body, (str, bytes)) else 64)
        attributes = getattr(record, "attributes", None)
        if attributes:
            total += 48 * len(attributes)
    return total


class Delivery:
    """Sends batches through ``send``; keeps the ones worth retrying and re-sends them in order.

    ``send(batch) -> SendResult`` does one export attempt (the stock exporter's own retries
    included). Safe for concurrent ``submit`` calls; one background sender drains the buffer.
    """

    def __init__(
        self,
        send: Callable[[Sequence[Any]], SendResult],
        limits: BufferLimits = BufferLimits(),
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        metrics: Any = None,
    ) -> None:
        self._send = send
        self.metrics = metrics  # ExporterMetrics or None
        self.limits = limits
        self._clock = clock
        self._rng = rng or random.Random()
        self._dropped = 0
        self._resent = 0
        self._closed = False
        self._reset_runtime_state()
        reset_after_fork(self)

    def _reset_runtime_state(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._buffer: deque[tuple[Sequence[Any], int]] = deque()
        self._records = 0
        self._bytes = 0
        self._thread: threading.Thread | None = None
        self._failures = 0
        self._sending = False
        self._warned_cap = False
        self._drained = threading.Condition(self._lock)  # the buffer emptied
        self._has_work = threading.Condition(self._lock)  # something was buffered

    def _after_fork_in_child(self) -> None:
        # The parent still owns (and will send) what it buffered; a child starts empty.
        self._reset_runtime_state()

    # -- public -------------------------------------------------------------------------------
    def submit(self, batch: Sequence[Any]) -> bool:
        """Send ``batch`` now, or keep it behind earlier ones. True when it was delivered now."""
        with self._lock:
            direct = not self._buffer and not self._sending and not self._closed
            if direct:
                self._sending = True
        if not direct:
            self._keep(batch)
            return False
        result = SendResult.RETRY
        try:
            result = self._send(batch)
        finally:
            # Keep it before clearing _sending, so no newer batch can overtake it.
            if result is SendResult.RETRY:
                self._keep(batch)
            with self._lock:
                self._sending = False
                self._has_work.notify_all()
                self._drained.notify_all()
        if result is SendResult.SENT:
            return True
        if result is SendResult.DROP:
            self._count_drop(len(batch), "it can never be delivered (see the error above)", "undeliverable")
        return False

    def wake(self) -> None:
        """Try the buffer now (a new token arrived), cutting the current backoff short."""
        with self._lock:
            self._failures = 0
            self._wake.notify_all()
            self._has_work.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the buffer to drain. True when empty."""
        deadline = self._clock() + max(timeout, 0.0)
        with self._lock:
            if self._buffer:
                self._failures = 0
                self._wake.notify_all()
                self._has_work.notify_all()
            while self._buffer or self._sending:
                remaining = deadline - self._clock()
                if remaining <= 0:
                    return False
                self._drained.wait(min(remaining, 0.5))
            return True

    def close(self, timeout: float) -> int:
        """Drain for up to ``timeout`` s, then stop. Returns the number of records not delivered.

        Returns within ``timeout`` (plus a few milliseconds): a sender stuck in a send (waiting
        for a token, say) is not waited for; it stops as soon as that send returns.
        """
        deadline = self._clock() + max(timeout, 0.0)
        self.flush(timeout)
        with self._lock:
            self._closed = True
            left = self._records
            self._wake.notify_all()
            self._has_work.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(deadline - self._clock(), 0.01))
        if left:
            if self.metrics is not None:
                self.metrics.on_dropped(left, "shutdown")
            _logger.warning(
                "shutting down with %d log record(s) that could not be delivered; they are lost", left
            )
        return left

    def stats(self) -> DeliveryStats:
        with self._lock:
            return DeliveryStats(self._records, len(self._buffer), self._bytes, self._dropped, self._resent)

    # -- internals ----------------------------------------------------------------------------
    def _keep(self, batch: Sequence[Any]) -> None:
        size = estimate_bytes(batch)
        dropped = 0
        with self._lock:
            if self._closed:
                dropped = len(batch)
            else:
                self._buffer.append((batch, size))
                self._records += len(batch)
                self._bytes += size
                while self._buffer and (
                    self._records > self.limits.max_records or self._bytes > self.limits.max_bytes
                ):
                    old, old_size = self._buffer.popleft()
                    self._records -= len(old)
                    self._bytes -= old_size
                    dropped += len(old)
                self._ensure_thread()
                self._has_work.notify_all()
        if dropped:
            self._count_drop(dropped, "the outage buffer is full (oldest records go first)", "buffer_full")

    def _count_drop(self, count: int, why: str, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.on_dropped(count, reason)
        with self._lock:
            self._dropped += count
            warn = not self._warned_cap
            self._warned_cap = True
            total = self._dropped
        if warn:
            _logger.warning(
                "dropping log records: %s; %d dropped so far (this is said once per outage)", why, total
            )

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="otel-token-redeliver", daemon=True)
            self._thread.start()

    def _backoff(self) -> float:
        bound = min(self.limits.backoff_cap, self.limits.backoff_base * (2 ** max(self._failures - 1, 0)))
        return self._rng.uniform(bound / 2, bound)

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._buffer or self._sending:
                    if self._closed:
                        return
                    self._drained.notify_all()
                    self._has_work.wait(1.0)
                if self._closed:
                    return
                batch, size = self._buffer[0]
                self._sending = True
            result = SendResult.RETRY
            try:
                result = self._send(batch)
            except Exception:  # noqa: BLE001 - never let the sender die
                _logger.debug("re-send raised", exc_info=True)
            with self._lock:
                self._sending = False
                if result is not SendResult.RETRY:
                    if self._buffer and self._buffer[0][0] is batch:
                        self._buffer.popleft()
                        self._records -= len(batch)
                        self._bytes -= size
                    if result is SendResult.SENT:
                        self._resent += 1
                        if self.metrics is not None:
                            self.metrics.on_redelivered()
                        self._failures = 0
                    if not self._buffer:
                        _logger.debug("outage buffer drained")
                        self._warned_cap = False
                        self._drained.notify_all()
                    continue
                if self._closed:
                    return  # closed while that send was in flight: no backoff wait, stop now
                self._failures += 1
                delay = self._backoff()
                # Back off; only a new token, a flush or close cut it short (new batches do not).
                self._wake.wait(delay)
