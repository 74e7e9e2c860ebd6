"""The signal-generic exporter core, and the mixin every public exporter class is made of.

:class:`ExporterCore` wires one exporter: settings (resolved once, :mod:`.settings`) -> a token
manager (shared per token configuration, :mod:`.registry`) -> an authenticator -> a transport
(:mod:`.transports`) -> the sending queue (:mod:`.sending`). It knows nothing of logs, spans or
metrics beyond the :class:`~otel_token_exporter.signals.Signal` it is given. What it says about
failures it says once per episode; what it logs from the export path never reaches the pipeline
it is about (:mod:`._feedback`).

:class:`TokenExporterMixin` is the constructor and the ``export``/``force_flush``/``shutdown``
plumbing the per-signal classes share: a signal module only says which SDK base class, which
encoder and which result type.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ._feedback import install_feedback_guard
from .auth import Authenticator
from .config import ConfigurationError, Env
from .manager import TokenManager
from .metrics import ExporterMetrics, TokenMetrics
from .registry import Lease, acquire
from .schedule import RefreshPolicy
from .security import check_token_url
from .sending import SENT, Request, SendingQueue
from .spool import Spool
from .settings import OTLP_SETTINGS, OWN_SETTINGS, ExporterSettings, resolve
from .signals import Signal
from .sources import SOURCE_OPTIONS, as_source
from .transports import Attempt, build_transport
from .verdicts import Verdict

__all__ = ["ExporterCore", "TokenExporterMixin", "ARGUMENTS"]

_logger = logging.getLogger("otel_token_exporter")

#: Keyword arguments every exporter takes besides the token source's (each mirrors a setting).
ARGUMENTS = frozenset(OTLP_SETTINGS) | frozenset(OWN_SETTINGS) | {
    "credentials",
    "channel_options",
    "token_source",
    "refresh_policy",
    "meter_provider",
    "env",
}
#: Longest shutdown drains what is kept, whatever timeout the SDK passes.
MAX_SHUTDOWN_DRAIN = 10.0


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
                          limits=settings.spool_limits, on_drop=self._on_drop)
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
        self._said: set[str] = set()  # what this outage has said already ("keep", "refused", "drop"...)
        self._partial_said = False
        self._rejected_streak = 0  # attempts in a row whose token the endpoint refused
        self._refused_fresh = False  # ... one of them even after a freshly fetched token
        self._waiting_for_token = False
        self._hooked = False  # the end-of-flush hook (added at the first kept request)
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

        Inside a provider's force_flush (this thread marked by the hook), wait for delivery up to
        the provider's deadline: the app may freeze or exit right after the flush."""
        deadline = getattr(self._flushing, "deadline", 0.0)
        flushing = deadline > time.monotonic()
        wait = 0.0 if flushing else self.settings.export_wait
        queued = [Request(body, items) for body, items in requests]
        delivered = True
        for request in queued:
            delivered = self.queue.submit(request, wait) == SENT and delivered
        if flushing and not delivered:
            self.flush(deadline - time.monotonic())
            delivered = all(r.state == SENT for r in queued)
        return delivered

    def _provider_flush_starts(self, timeout_millis: int) -> bool:
        """The hook added at construction: drain, and mark this thread for the flush that follows."""
        self._flushing.deadline = time.monotonic() + max(timeout_millis, 0) / 1000.0
        return self.flush(timeout_millis / 1000.0)

    def encode(self, encoder: Callable[[], Iterable[tuple[bytes, int]]], count: int) -> list[tuple[bytes, int]] | None:
        """Run the signal's encoder; a failure (bad data) is logged once and the data dropped."""
        try:
            return list(encoder())
        except Exception as exc:  # noqa: BLE001 - the stock exporters do the same: log, fail
            self._say_once(
                "encode",
                logging.ERROR,
                "could not encode %d %s(s) (%s: %s); they are dropped",
                count, self.signal.item, type(exc).__name__, exc,
            )
            self._on_drop(count, "undeliverable")
            return None

    def _send(self, body: bytes, timeout: float) -> Attempt:
        install_feedback_guard()
        return self.transport.send(body, timeout)

    # -- what attempts mean to the user -------------------------------------------------------
    def _after_attempt(self, attempt: Attempt, verdict: Verdict, items: int, was_kept: bool) -> None:
        item = self.signal.item
        # A new token helps only a request that had none: one that was refused already got a
        # freshly forced one inside its attempt, so later refreshes must not cut its backoff short.
        self._waiting_for_token = verdict is Verdict.KEEP and attempt.no_token
        if verdict is Verdict.SENT:
            if was_kept:
                self.metrics.on_redelivered()
            if self._said & {"keep", "refused"}:
                _logger.info("the OTLP endpoint %s accepts %ss again; delivering what was kept", self.endpoint, item)
            self._said.clear()
            self._rejected_streak = 0
            self._refused_fresh = False
            if attempt.partial_rejected:
                self.metrics.on_partial(attempt.partial_rejected)
                if not self._partial_said:
                    self._partial_said = True
                    _logger.warning(
                        "the OTLP endpoint %s accepted a request but rejected %d %s(s) in it: %s "
                        "(partial success; said once until a request is fully accepted)",
                        self.endpoint, attempt.partial_rejected, item, attempt.partial_message or "no reason given",
                    )
            else:
                self._partial_said = False
            return
        if verdict is Verdict.DROP:
            self._say_once(
                "drop",
                logging.WARNING,
                "the OTLP endpoint %s refused %d %s(s) (%s); retrying cannot help, so they are "
                "dropped (said once per episode)",
                self.endpoint, items, item, attempt.detail or attempt.status,
            )
            return
        self._ensure_flush_hook()
        if attempt.rejected:
            self._rejected_streak += 1
        if attempt.rejected and attempt.resent:
            self._refused_fresh = True
            self._say_once(
                "refused",
                logging.WARNING,
                "the OTLP endpoint %s refused a freshly fetched token too (%s): check the token's "
                "audience, scope and the endpoint's issuer settings; %ss are kept and re-sent with backoff",
                self.endpoint, attempt.status, item,
            )
            return
        if attempt.no_token:
            # The token source's own error was logged once already: do not repeat it here.
            self._say_once(
                "keep",
                logging.WARNING,
                "could not deliver %d %s(s) to %s: no valid token from %s (its error is logged "
                "above); they are kept (up to %d) and sent once a token can be had",
                items, item, self.endpoint, self.token_manager.name, self.settings.limits.max_records,
            )
            return
        self._say_once(
            "keep",
            logging.WARNING,
            "could not deliver %d %s(s) to %s: %s; they are kept (up to %d) and re-sent with "
            "backoff (said once per outage)",
            items, item, self.endpoint, attempt.detail or f"answered {attempt.status}",
            self.settings.limits.max_records,
        )

    def _say_once(self, episode: str, level: int, message: str, *args: Any) -> None:
        if episode in self._said:
            return
        self._said.add(episode)
        _logger.log(level, message, *args)

    def _on_drop(self, count: int, reason: str) -> None:
        self.metrics.on_dropped(count, reason)

    def _on_refresh(self, trigger, outcome, duration, held, error) -> None:
        if held is not None and self._waiting_for_token:
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
        return self.flush(timeout_millis / 1000.0)

    # -- draining -----------------------------------------------------------------------------
    #: Attempts refused in a row (one of them even with a freshly fetched token) after which
    #: the endpoint is taken to refuse this client's tokens for now: drains stop trying.
    REFUSED_STREAK = 3

    @property
    def hopeless(self) -> bool:
        """Nothing kept can succeed soon: no token and the IdP failed with an error retrying will
        not fix (credentials unchanged since), or the endpoint keeps refusing even fresh tokens."""
        if self.token_manager.failed_fatally:
            return True
        return self._refused_fresh and self._rejected_streak >= self.REFUSED_STREAK

    def flush(self, timeout: float) -> bool:
        """Deliver what is queued within ``timeout`` s, trying a fresh token first if none is valid.

        Gives up early only when the IdP failed fatally: a flush has its caller's own budget, and
        an endpoint refusing tokens for a while may take them again (shutdown is stricter)."""
        if not self.queue.stats().queued_requests:
            return True
        failed = lambda: self.token_manager.failed_fatally  # noqa: E731
        if failed():
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
        # With a spool, an outage is no reason to wait: what is kept goes to disk, for the next process.
        drain = not hopeless and not (spool and self.queue.failing)
        if drain and self.queue.stats().queued_requests:
            self.token_manager.retry_now()
        closed = self.queue.close(budget * 0.9, drain=drain, give_up=lambda: self.hopeless)
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


def unknown_arguments(owner: str, unknown: set[str], known: frozenset[str]) -> ConfigurationError:
    """One line naming each unknown argument, with the nearest known name when there is one."""
    import difflib

    named = []
    for name in sorted(unknown):
        near = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
        named.append(f"{name} (did you mean {near[0]}?)" if near else name)
    return ConfigurationError(
        f"{owner} got unknown argument(s): {', '.join(named)}; the settings are listed in the README's "
        "configuration tables"
    )


def build_core(signal: Signal, args: Mapping[str, Any], source_options: Mapping[str, Any], *,
               owner: str, protocol: str | None, extra_arguments: frozenset[str] = frozenset(),
               max_request_items: int | None = None) -> ExporterCore:
    """Resolve the settings, find or build the token manager, and make the core (one clear error)."""
    unknown = set(source_options) - SOURCE_OPTIONS
    if unknown:
        raise unknown_arguments(owner, unknown, ARGUMENTS | SOURCE_OPTIONS | extra_arguments)
    env_arg = args.get("env")
    env = Env(dict(env_arg)) if env_arg is not None else Env.current()
    settings = resolve(signal, args, env, protocol=protocol)
    token_source = args.get("token_source")
    policy: RefreshPolicy | None = args.get("refresh_policy")
    lease = None
    if isinstance(token_source, TokenManager):
        manager = token_source
    elif token_source is not None:
        source = as_source(token_source)
        check_token_url(source, settings.allow_plaintext)
        from .config import refresh_policy as policy_from_env

        manager = TokenManager(source, policy=policy or policy_from_env(env))
        manager.add_listener(TokenMetrics(args.get("meter_provider")).on_refresh)
        lease = _OwnManager(manager)
    else:
        lease = acquire(env, source_options, policy=policy, allow_plaintext=settings.allow_plaintext,
                        meter_provider=args.get("meter_provider"))
        manager = lease.manager
    try:
        return ExporterCore(signal, settings, manager, lease, args.get("meter_provider"),
                            max_request_items=max_request_items)
    except BaseException:
        if lease is not None:
            lease.release()
        raise


class _OwnManager:
    """A lease on a manager only this exporter uses (built from its ``token_source`` object)."""

    def __init__(self, manager: TokenManager) -> None:
        self.manager = manager

    def release(self, timeout: float = 5.0) -> None:
        self.manager.close(timeout=timeout)


class TokenExporterMixin:
    """Constructor, ``force_flush`` and ``shutdown`` of every public exporter class.

    A subclass sets ``_signal`` (and ``_fixed_protocol`` for the ``proto_http``/``proto_grpc``
    variants) and implements ``export`` with its encoder and result type.
    """

    _signal: Signal
    _fixed_protocol: str | None = None
    #: Arguments a subclass takes itself (named in the "did you mean" of an unknown one).
    _extra_arguments: frozenset[str] = frozenset()

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        headers: Any = None,
        timeout: float | None = None,
        compression: Any = None,
        certificate_file: str | None = None,
        client_key_file: str | None = None,
        client_certificate_file: str | None = None,
        insecure: bool | None = None,
        credentials: Any = None,
        channel_options: Any = None,
        protocol: str | None = None,
        token_source: Any = None,
        header_name: str | None = None,
        scheme: str | None = None,
        max_auth_retries: int | None = None,
        refresh_policy: RefreshPolicy | None = None,
        allow_plaintext: bool | None = None,
        buffer_max_records: int | None = None,
        buffer_max_bytes: int | None = None,
        spool_dir: str | None = None,
        spool_max_bytes: int | None = None,
        spool_max_age: float | None = None,
        meter_provider: Any = None,
        env: Mapping[str, str] | None = None,
        **source_options: Any,
    ) -> None:
        args = {k: v for k, v in locals().items() if k in ARGUMENTS}
        try:
            self._core = build_core(
                self._signal, args, source_options, owner=type(self).__name__, protocol=self._fixed_protocol,
                extra_arguments=self._extra_arguments, max_request_items=self._max_request_items(),
            )
        except ConfigurationError as exc:
            # One clear line naming the setting, not a walk through our internals (the SDK prints
            # its own traceback around it; this line comes first).
            message = str(exc)
            if not message.startswith(type(self).__name__):
                message = f"{type(self).__name__}: {message}"
            _logger.error("%s", message)
            raise ConfigurationError(message) from None

    def _max_request_items(self) -> int | None:
        """At most this many items per request, merges of kept requests included (None: no cap)."""
        return None

    # -- what users and tests read --------------------------------------------------------------
    @property
    def token_manager(self) -> TokenManager:
        return self._core.token_manager

    @property
    def protocol(self) -> str:
        return self._core.settings.protocol

    @property
    def endpoint(self) -> str:
        return self._core.endpoint

    @property
    def settings(self) -> ExporterSettings:
        return self._core.settings

    @property
    def sending_queue(self) -> SendingQueue:
        return self._core.queue

    def _export_requests(self, encoder: Callable[[], Iterable[tuple[bytes, int]]], count: int) -> bool:
        if self._core._shutdown:
            return False
        requests = self._core.encode(encoder, count)
        return requests is not None and self._core.export(requests)

    def force_flush(self, timeout_millis: float = 30_000) -> bool:
        """Deliver what is queued or kept within the timeout (a fresh token is tried if needed)."""
        return self._core.flush(timeout_millis / 1000.0)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Drain what is kept (within the timeout, at most 10 s; at once when nothing can
        succeed), then stop every thread this exporter owns."""
        self._core.shutdown(timeout_millis / 1000.0)

    def __repr__(self) -> str:
        core = self._core
        return f"<{type(self).__name__} {core.signal.name} {core.settings.protocol} {core.endpoint} manager={core.token_manager!r}>"
