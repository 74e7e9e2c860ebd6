"""The signal-generic exporter core: one exporter's settings, token, transport and sending queue.

:class:`ExporterCore` wires one exporter: settings (resolved once, :mod:`.settings`) -> a token
manager (shared per token configuration, :mod:`.registry`) -> an authenticator -> a transport
(:mod:`.transports`) -> the sending queue (:mod:`.sending`, with its spool). It knows nothing of
logs, spans or metrics beyond the :class:`~otel_token_exporter.signals.Signal` it is given; what
attempts mean to a person is :mod:`.episodes`; the public classes are built on it in
:mod:`.signals`. What it logs from the export path never reaches the pipeline it is about
(:mod:`._feedback`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from ._feedback import install_feedback_guard
from .auth import Authenticator
from .episodes import Episode
from .manager import TokenManager
from .registry import Lease
from .metrics import ExporterMetrics
from .sending import SENT, Request, SendingQueue
from .spool import Spool
from .settings import ExporterSettings
from .signals import Signal
from .transports import Attempt, build_transport
from .verdicts import Verdict

__all__ = ["ExporterCore"]

_logger = logging.getLogger("otel_token_exporter")

#: Longest shutdown drains what is kept, whatever timeout the SDK passes.
MAX_SHUTDOWN_DRAIN = 10.0
#: With a spool holding what is queued, shutdown waits at most this long for an attempt's answer:
#: a first attempt that hangs is not known to be failing until its timeout (up to 10 s).
SPOOLED_SHUTDOWN_PATIENCE = 2.0
#: A provider flush's mark on a thread lapses when no export followed the last one for this long.
FLUSH_MARK_IDLE = 0.25


class ExporterCore:
    """One exporter's settings, token, transport and sending queue."""

    def __init__(self, signal: Signal, settings: ExporterSettings, manager: TokenManager,
                 lease: Lease | None, meter_provider: Any = None, *, max_request_items: int | None = None) -> None:
        self.signal = signal
        self.settings = settings
        self.token_manager = manager
        self._lease = lease
        self.authenticator = Authenticator(
            manager,
            header_name=settings.header_name,
            scheme=settings.scheme,
            max_auth_retries=settings.max_auth_retries,
        )
        self.transport = build_transport(settings, self.authenticator)
        self.endpoint = self.transport.endpoint
        self.metrics = ExporterMetrics(
            meter_provider,
            attributes={"signal": signal.name, "transport": self.transport.transport},
            buffered_records=lambda: self.queue.stats().queued_records,
        )
        spool = None
        if settings.spool_dir:
            spool = Spool(settings.spool_dir, signal=signal.name, endpoint=self.endpoint,
                          limits=settings.spool_limits)
        self.queue = SendingQueue(
            self._send,
            timeout=settings.timeout,
            limits=settings.limits,
            item=signal.item,
            on_attempt=self._after_attempt,
            on_drop=self._on_drop,
            name=f"otel-token-sender[{signal.name}]",
            spool=spool,
            max_merge_items=max_request_items,
        )
        self.authenticator.metrics = self.metrics
        self.episode = Episode(endpoint=self.endpoint, item=signal.item, max_records=settings.limits.max_records,
                               manager=manager, metrics=self.metrics)
        self._hooked = False  # the end-of-flush hook (added at the first kept request)
        self._encode_failed = False
        self._flushing = threading.local()  # a provider flush runs on this thread until .deadline
        self._shutdown = False
        self._lock = threading.Lock()
        manager.add_listener(self._on_refresh)
        manager.start()
        if signal.flush_hook is not None:
            try:
                signal.flush_hook(self._provider_flush_starts)
            except Exception:  # noqa: BLE001 - a provider we do not understand: flush() still works
                _logger.debug("could not add the flush hook", exc_info=True)

    # -- the export path ----------------------------------------------------------------------
    def export(self, requests: Iterable[tuple[bytes, int]]) -> bool:
        """Queue the encoded requests; True when all were delivered before returning.

        All of them share one wait (a metrics collection split in parts waits once, not per part).
        Inside a provider's force_flush (this thread marked by the hook), wait for delivery up to
        the provider's deadline instead: the app may freeze or exit right after the flush."""
        now = time.monotonic()
        mark = getattr(self._flushing, "mark", None)
        flushing = mark is not None and now < mark[0] and now - mark[1] < FLUSH_MARK_IDLE
        until = now + (0.0 if flushing else self.settings.export_wait)
        queued = [Request(body, items) for body, items in requests]
        delivered = True
        for request in queued:
            delivered = self.queue.submit(request, max(until - time.monotonic(), 0.0)) == SENT and delivered
        if flushing:
            if not delivered:
                self.flush(mark[0] - time.monotonic())
                delivered = all(r.state == SENT for r in queued)
            self._flushing.mark = (mark[0], time.monotonic())  # the flush's next batch follows at once
        return delivered

    def _provider_flush_starts(self, timeout_millis: int) -> bool:
        """The hook added at construction, run before the batch processor's flush: mark this
        thread, so that the exports that flush makes wait for delivery (until the provider's
        deadline, and only while they follow each other: the mark lapses once they stop)."""
        now = time.monotonic()
        self._flushing.mark = (now + max(timeout_millis, 0) / 1000.0, now)
        return True

    def encode(self, encoder: Callable[[], Iterable[tuple[bytes, int]]], count: int) -> list[tuple[bytes, int]] | None:
        """Run the signal's encoder; a failure (bad data) is logged once and the data dropped."""
        try:
            return list(encoder())
        except Exception as exc:  # noqa: BLE001 - the stock exporters do the same: log, fail
            if not self._encode_failed:
                self._encode_failed = True
                _logger.error("could not encode %d %s(s) (%s: %s); they are dropped (said once)",
                              count, self.signal.item, type(exc).__name__, exc)
            self._on_drop(count, "undeliverable")
            return None

    def _send(self, body: bytes, timeout: float) -> Attempt:
        install_feedback_guard()
        return self.transport.send(body, timeout)

    def _on_drop(self, count: int, reason: str) -> None:
        self.metrics.on_dropped(count, reason)

    def _after_attempt(self, attempt: Attempt, verdict: Verdict, items: int, was_kept: bool) -> None:
        if verdict is Verdict.KEEP:
            self._ensure_flush_hook()
        self.episode.after(attempt, verdict, items, was_kept)

    def _on_refresh(self, trigger, outcome, duration, held, error) -> None:
        if held is not None and self.episode.waiting_for_token:
            self.queue.wake()

    def _ensure_flush_hook(self) -> None:
        hook = self.signal.flush_hook
        if hook is None or self._hooked:
            return
        try:
            self._hooked = bool(hook(self._flush_millis))
        except Exception:  # noqa: BLE001 - a provider we do not understand: flush() still works
            self._hooked = True
            _logger.debug("could not add the flush hook", exc_info=True)

    def _flush_millis(self, timeout_millis: int) -> bool:
        """The hook added at the first kept request, run after the batch processor's flush."""
        self._flushing.mark = None
        return self.flush(timeout_millis / 1000.0)

    # -- draining -----------------------------------------------------------------------------
    @property
    def hopeless(self) -> bool:
        """Nothing kept can succeed soon: no token and the IdP failed with an error retrying will
        not fix (credentials unchanged since), or the endpoint keeps refusing even fresh tokens."""
        return self.token_manager.failed_fatally or self.episode.refusing_fresh_tokens

    def flush(self, timeout: float) -> bool:
        """Deliver what is queued within ``timeout`` s, trying a fresh token first if none is valid.

        Gives up early only when the IdP failed fatally: a flush has its caller's own budget, and
        an endpoint refusing tokens for a while may take them again (shutdown is stricter)."""
        if not self.queue.stats().queued_requests:
            return True
        spool = self.queue.spool is not None and self.queue.spool.usable
        # With a spool, what is kept is on disk: after a probe in this flush failed, waiting helps nobody.
        start = self.queue.attempts
        failed = lambda: self.token_manager.failed_fatally or (  # noqa: E731
            spool and self.queue.failing and self.queue.attempts > start)
        if self.token_manager.failed_fatally:
            return False
        self.token_manager.retry_now()  # no-op while a usable token exists
        return self.queue.flush(timeout, give_up=failed)

    def shutdown(self, timeout: float) -> None:
        with self._lock:
            if self._shutdown:
                return
            self._shutdown = True
        budget = min(max(timeout, 0.0), MAX_SHUTDOWN_DRAIN)
        deadline = time.monotonic() + budget
        hopeless = self.hopeless
        spool = self.queue.spool is not None and self.queue.spool.usable
        # With a spool, an outage is no reason to wait: what is kept goes to disk for the next
        # process. A healthy (even slow) endpoint is drained as without one.
        drain = not hopeless and not (spool and self.queue.failing)
        if drain and self.queue.stats().queued_requests:
            self.token_manager.retry_now()

        def give_up() -> bool:
            if self.hopeless:
                return True
            # With a spool, what is queued is on disk: an attempt that fails, or takes longer than
            # a healthy slow endpoint would, is no reason to keep the process from exiting.
            return spool and (self.queue.failing or self.queue.inflight_for > SPOOLED_SHUTDOWN_PATIENCE)

        closed = self.queue.close(budget * 0.9, drain=drain, give_up=give_up)
        why = " (nothing could succeed: " + self._why_hopeless() + ")" if self.hopeless else ""
        if closed.spooled:
            _logger.warning(
                "shutting down with %d %s(s) not yet delivered%s: they are in the spool directory %s "
                "and are sent by the next process that uses it", closed.spooled, self.signal.item, why,
                self.queue.spool.directory,
            )
        if closed.lost:
            _logger.warning(
                "shutting down with %d %s(s) that could not be delivered%s; they are lost",
                closed.lost, self.signal.item, why,
            )
        self.token_manager.remove_listener(self._on_refresh)
        self.transport.shutdown()
        if self._lease is not None:
            self._lease.release(timeout=max(deadline - time.monotonic(), 0.05))

    def _why_hopeless(self) -> str:
        if self.token_manager.failed_fatally:
            return f"the token source {self.token_manager.name} failed with an error retrying will not fix"
        return "the endpoint refuses even a freshly fetched token"


