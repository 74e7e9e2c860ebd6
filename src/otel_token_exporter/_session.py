"""The ``requests.Session`` base both our HTTP clients use (OTLP endpoint and token endpoint),
and reading what such a peer answers (``Retry-After``)."""

from __future__ import annotations

import math
import socket
import time
import weakref
from email.utils import parsedate_to_datetime

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool


class EnvProxySession(requests.Session):
    """Honours proxy variables (``HTTPS_PROXY``, ``NO_PROXY``) like any requests client, but:

    * an explicit CA file on the session beats ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` (requests
      lets those silently override it),
    * ``~/.netrc`` never adds its own ``Authorization`` header over ours, and
    * :meth:`abort` can interrupt a request in flight from another thread (a hanging peer must not
      keep a thread alive past shutdown).
    """

    def __init__(self) -> None:
        super().__init__()
        self.auth = _leave_alone
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        adapter = _TrackingAdapter(self._sockets.add)
        self.mount("http://", adapter)
        self.mount("https://", adapter)

    def merge_environment_settings(self, url, proxies, stream, verify, cert):  # type: ignore[override]
        if verify is None and self.verify is not True:
            verify = self.verify
        return super().merge_environment_settings(url, proxies, stream, verify, cert)

    def forget_inherited(self) -> None:
        """In a forked child: the parent's connections, pooled or in flight, are not ours. Close our
        copies (never shut them down: that would cut the parent's) and stop tracking them."""
        self._sockets.clear()
        for adapter in self.adapters.values():
            adapter.close()

    def abort(self) -> None:
        """Shut down every connection this session opened, interrupting requests in flight."""
        for sock in list(self._sockets):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _leave_alone(request):
    return request


class _TrackingAdapter(HTTPAdapter):
    """An adapter whose direct (non-proxy) connections report their sockets to ``track``."""

    def __init__(self, track) -> None:
        self._track = track
        super().__init__()

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        track = self._track

        class Connection(HTTPConnection):
            def _new_conn(self):
                sock = super()._new_conn()
                track(sock)
                return sock

        class SecureConnection(HTTPSConnection):
            def _new_conn(self):
                sock = super()._new_conn()
                track(sock)
                return sock

        class Pool(HTTPConnectionPool):
            ConnectionCls = Connection

        class SecurePool(HTTPSConnectionPool):
            ConnectionCls = SecureConnection

        self.poolmanager.pool_classes_by_scheme = {"http": Pool, "https": SecurePool}

    def __getstate__(self):  # the tracking callback is not picklable; a copy need not track
        state = super().__getstate__()
        state.pop("_track", None)
        return state


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delay-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(seconds, 0.0) if math.isfinite(seconds) else None
