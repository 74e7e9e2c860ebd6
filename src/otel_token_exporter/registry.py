"""One token manager per token-source configuration per process, shared by everything built from it.

Exporters of every signal and the ``token_http``/``token_grpc`` credential providers that are built
from the same settings (the ``OTEL_TOKEN_EXPORTER_*`` variables and the source's keyword arguments)
get the same started :class:`~otel_token_exporter.manager.TokenManager`: with traces, metrics and
logs on, the IdP sees the requests of one token. Each user holds a :class:`Lease`; the manager is
closed when the last lease is released, so shutting one exporter down never stops the others'
token. Keys are digests: the registry keeps no copy of a secret.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping
from typing import Any

from .cache import shared_cache
from .config import ENV_PREFIX, ConfigurationError, Env
from .config import refresh_policy as policy_from_env
from .manager import TokenManager
from .metrics import TokenMetrics
from .schedule import RefreshPolicy
from .security import check_token_url
from .sources import build_source

__all__ = ["Lease", "acquire", "config_key", "close_all"]

_lock = threading.Lock()
_entries: dict[str, _Entry] = {}


class _Entry:
    def __init__(self, manager: TokenManager) -> None:
        self.manager = manager
        self.users = 0


class Lease:
    """One user's hold on a shared manager; :meth:`release` once, when that user shuts down."""

    def __init__(self, key: str, manager: TokenManager) -> None:
        self._key = key
        self.manager = manager
        self._released = False

    def release(self, timeout: float = 5.0) -> None:
        with _lock:
            if self._released:
                return
            self._released = True
            entry = _entries.get(self._key)
            last = entry is not None and entry.manager is self.manager and entry.users <= 1
            if entry is not None and entry.manager is self.manager:
                entry.users -= 1
                if last:
                    del _entries[self._key]
        if last:
            self.manager.close(timeout=timeout)


def _value_key(value: Any) -> str:
    if value is None or isinstance(value, (str, int, float, bool)):
        return repr(value)
    if isinstance(value, Mapping):
        return repr(sorted((str(k), _value_key(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return repr([_value_key(v) for v in value])
    return f"<object {id(value)}>"  # a credential object: shared only with itself


def config_key(env: Env, options: Mapping[str, Any], policy: RefreshPolicy | None) -> str:
    """A digest of everything that decides which token a manager fetches."""
    items = sorted((k, v) for k, v in env.values.items() if k.startswith(ENV_PREFIX))
    opts = sorted((k, _value_key(v)) for k, v in options.items() if v is not None)
    text = repr((items, opts, repr(policy)))
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def acquire(
    env: Env,
    options: Mapping[str, Any] | None = None,
    *,
    policy: RefreshPolicy | None = None,
    allow_plaintext: bool = False,
    meter_provider: Any = None,
) -> Lease:
    """A lease on the started manager for these settings, building (and starting) it if needed."""
    options = dict(options or {})
    key = config_key(env, options, policy)
    with _lock:
        entry = _entries.get(key)
        if entry is None or entry.manager.closed:
            try:
                source = build_source(env, options)
            except ConfigurationError as exc:
                raise ConfigurationError(str(exc)) from None
            check_token_url(source, allow_plaintext)
            effective_policy = policy or policy_from_env(env)
            # OTEL_TOKEN_EXPORTER_CACHE_DIR / cache_dir=: one token per host, shared through a file.
            source = shared_cache(source, env, options, effective_policy)
            manager = TokenManager(source, policy=effective_policy)
            manager.add_listener(TokenMetrics(meter_provider).on_refresh)
            entry = _entries[key] = _Entry(manager)
            # Start once: start() while the first fetch is in flight would ask for a second one.
            manager.start()
        else:
            # The token URL's transport rule is this caller's, whoever built the manager.
            check_token_url(entry.manager.source, allow_plaintext)
        entry.users += 1
        return Lease(key, entry.manager)


def close_all(timeout: float = 5.0) -> None:
    """Close and forget every shared manager (for tests, and for an app that rebuilds its telemetry)."""
    with _lock:
        managers = [entry.manager for entry in _entries.values()]
        _entries.clear()
    for manager in managers:
        manager.close(timeout=timeout)
