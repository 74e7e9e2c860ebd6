"""What every public exporter class is made of: the constructor, and export/flush/shutdown plumbing.

:class:`TokenExporterMixin` takes the keyword arguments (each mirrors a setting), builds the
:class:`~otel_token_exporter.exporter.ExporterCore` through :func:`build_core` (settings, then the
shared token manager, then the core; one clear error), and forwards the SDK's calls. A signal
module only adds which SDK base class, which encoder and which result type.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..config import ConfigurationError, Env
from ..exporter import ExporterCore
from ..manager import TokenManager
from ..metrics import TokenMetrics
from ..registry import acquire
from ..schedule import RefreshPolicy
from ..security import check_token_url
from ..sending import SendingQueue
from ..settings import OTLP_SETTINGS, OWN_SETTINGS, ExporterSettings, resolve
from ..sources import SOURCE_OPTIONS, as_source
from . import Signal

__all__ = ["TokenExporterMixin", "build_core", "ARGUMENTS"]

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
        from ..config import refresh_policy as policy_from_env

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
