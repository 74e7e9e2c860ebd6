"""A token cache shared by every process of one user on one host: one token per host, not per process.

Opt-in (``OTEL_TOKEN_EXPORTER_CACHE_DIR``, exporter keyword ``cache_dir=``). A service made of many
processes (gunicorn or uWSGI workers, Celery children, multiprocessing pools) otherwise asks the IdP
once per process per token lifetime. :class:`SharedCacheSource` wraps a token source so that all of
them share one token through a file:

* **One fetch at a time.** A process that finds no fresh token in the file takes an exclusive
  ``flock`` on a lock file next to it, looks again (another process may have just written one) and
  only then asks the wrapped source. The lock is held for that fetch only; a process killed while
  holding it releases it (the kernel does). The others poll the file meanwhile (10-100 ms), take the
  new token the moment it is written, and the manager keeps sending the current token all the
  while. The wait is bounded (the source's own timeout, plus one second; 30 s for a source without
  one): after that a process fetches anyway rather than go without a token. A fetch that fails is
  noted in the file, so the processes waiting for it back off too instead of each trying in turn.
* **The package's own schedule.** The process that fetched draws the refresh point (the same
  pre-refresh rule and jitter as the manager's, so the jitter is per host and per token, not per
  process) and writes it with the token. Every process gets it as the token's ``refresh_hint``: the
  manager refreshes at the earlier of its own point and the host's, and a process whose own point
  comes first just gets the cached token back, without an IdP request. A token is taken from the
  file only before that point (never later than this process's own policy would allow without
  jitter) and never after its expiry.
* **A refused token is refreshed once for everyone.** A refresh forced by a 401 comes in as
  ``fetch_rejecting(value)``: if the file still holds the refused token (the same value, written by
  the same fetch this process took it from) it is fetched again; if another process has replaced it
  already, the newer token is returned.
* **What is on disk.** The file holds the token itself (that is the point), with its times and a
  random write id; never a client secret or other credential. File names are derived from a SHA-256
  of the non-secret settings (source kind, token URL, client id, scope, audience, resource) and a
  salted PBKDF2 of everything else that identifies the credential (secrets included, in clear
  nowhere). The directory is created 0700 (an existing one of ours is tightened to 0700; one owned
  by someone else, or a shared sticky one such as ``/tmp``, is not used); files are 0600 and written
  atomically (temporary file in the same directory, fsync, rename). A cache file with other
  permissions or another owner, or a symlink, is ignored with one warning and never trusted; a
  corrupt or foreign one is ignored. Either is replaced by the next write. Times are stored on the
  wall clock and converted to this process's monotonic clock when read; an entry that claims to have
  been obtained in the future (the wall clock went back) is not used.

Nothing here holds a file descriptor or lock across ``fork()``: a child closes its copies (see
:mod:`._fork`), so a parent killed mid-fetch never leaves its lock held by a child.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import hmac
import json
import logging
import os
import random
import secrets
import stat
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._fork import reset_after_fork
from ._private_dir import prepare
from .config import ENV_PREFIX, ConfigurationError, Env
from .schedule import DEFAULT_POLICY, RefreshPolicy, refresh_at
from .token import FatalTokenError, Token, TokenError, TokenSource, TransientTokenError, unusable_reason

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = ["SharedCacheSource", "CACHE_DIR_SETTING", "shared_cache", "key_material"]

_logger = logging.getLogger("otel_token_exporter")

CACHE_DIR_SETTING = ENV_PREFIX + "CACHE_DIR"
FORMAT_VERSION = 1
#: An entry whose token was obtained more than this far in the future (wall clock) is not used.
CLOCK_SKEW = 5.0
#: Polling while another process holds the lock: from the first to the second, doubling.
POLL_MIN, POLL_MAX = 0.01, 0.1
#: Lock wait for a source that has no ``timeout`` of its own.
DEFAULT_LOCK_TIMEOUT = 30.0
MAX_FILE_BYTES = 256 * 1024
PBKDF2_ITERATIONS = 100_000
#: Settings that identify a token without being secret: (keyword argument, variable suffix).
PUBLIC_SETTINGS = (
    ("token_url", "TOKEN_URL"),
    ("client_id", "CLIENT_ID"),
    ("scope", "SCOPE"),
    ("audience", "AUDIENCE"),
    ("resource", "RESOURCE"),
    ("azure_scope", "AZURE_SCOPE"),
    ("azure_tenant_id", "AZURE_TENANT_ID"),
    ("google_scopes", "GOOGLE_SCOPES"),
)
#: Ambient variables the google and azure libraries read to pick an identity (hashed, as secrets).
_AMBIENT_PREFIXES = {
    "google": ("GOOGLE_", "CLOUDSDK_", "GCE_METADATA_"),
    "azure": ("AZURE_", "IDENTITY_", "MSI_", "IMDS_"),
}


@dataclass
class _Entry:
    """One parsed cache file. Times are wall-clock seconds; ``value`` None: only a failure note."""

    value: str | None = field(repr=False)
    obtained: float
    expires: float
    refresh: float
    write_id: str
    failure: dict | None = None


class SharedCacheSource:
    """Wraps ``inner`` so every process using the same ``cache_dir`` and key shares one token.

    ``key`` is the non-secret identity of the token (a JSON-able mapping: source kind, token URL,
    client id, scope...); ``secret_key_material`` anything else that tells credentials apart (a
    client secret, key and command paths...): it is only ever stored as a salted PBKDF2 digest.
    ``policy`` is the manager's refresh policy. ``lock_timeout`` bounds the wait for another
    process's fetch (default: the inner source's ``timeout`` + 1 s, else 30 s).
    """

    def __init__(
        self,
        inner: TokenSource,
        cache_dir: str | os.PathLike,
        *,
        key: Mapping[str, Any] | None = None,
        secret_key_material: Any = None,
        policy: RefreshPolicy = DEFAULT_POLICY,
        lock_timeout: float | None = None,
        setting: str = CACHE_DIR_SETTING,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        if fcntl is None:  # pragma: no cover - not POSIX
            raise ConfigurationError(f"{setting}: a shared token cache needs POSIX file locks (fcntl)")
        self.inner = inner
        self.directory = os.path.abspath(os.fspath(cache_dir))
        self._setting = setting
        self._policy = policy
        self._latest_policy = dataclasses.replace(policy, jitter_fraction=0.0)
        self._clock = clock
        self._wall = wall_clock
        self._rng = rng or random.Random()
        if lock_timeout is None:
            inner_timeout = getattr(inner, "timeout", None)
            if isinstance(inner_timeout, (int, float)) and not isinstance(inner_timeout, bool) and inner_timeout > 0:
                lock_timeout = float(inner_timeout) + 1.0
            else:
                lock_timeout = DEFAULT_LOCK_TIMEOUT
        self.lock_timeout = float(lock_timeout)
        named = getattr(inner, "name", None)
        self.name = named if isinstance(named, str) and named else type(inner).__name__
        public = _canonical({"format": FORMAT_VERSION, "uid": os.geteuid(), **dict(key or {})})
        public_digest = hashlib.sha256(public.encode("utf-8", "surrogateescape")).hexdigest()
        secret = _canonical(secret_key_material).encode("utf-8", "surrogateescape")
        secret_digest = hashlib.pbkdf2_hmac(
            "sha256", secret, f"otel-token-exporter/cache/{public_digest}".encode(), PBKDF2_ITERATIONS
        ).hex()
        stem = f"token-{public_digest[:16]}-{secret_digest[:16]}"
        self.path = os.path.join(self.directory, stem + ".json")
        self.lock_path = os.path.join(self.directory, stem + ".lock")
        self._temp_prefix = f".{stem}.tmp-"
        #: Stored in the file: a file whose check differs is someone else's (a truncated-name clash).
        self._check = hashlib.sha256(f"{public_digest}:{secret_digest}".encode()).hexdigest()
        self._warned: set[str] = set()
        #: (sha256 of the value, write id) of the token this process took last: tells "the refused
        #: token is still the cached one" from "another process replaced it (maybe by the same value)".
        self._served: tuple[str, str] | None = None
        self._fds: set[int] = set()
        self._aborted = threading.Event()
        reset_after_fork(self)

    def __repr__(self) -> str:
        return f"SharedCacheSource({self.inner!r}, directory={self.directory!r})"

    def __getattr__(self, name: str) -> Any:
        # token_url, refusal_hint(), timeout...: what the exporter and its checks read of a source.
        if name.startswith("_") or name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    # -- the token source protocol -------------------------------------------------------------
    def fetch(self) -> Token:
        return self._obtain(None)

    def fetch_rejecting(self, value: str) -> Token:
        """A refresh forced because the endpoint refused ``value``: a newer cached token if another
        process already replaced it, else a fetch (one for all the processes refused alike)."""
        return self._obtain(value)

    def fingerprint(self) -> object:
        method = getattr(self.inner, "fingerprint", None)
        return method() if callable(method) else None

    def abort(self) -> None:
        """Stop waiting for another process and interrupt the inner fetch (the manager is closing)."""
        self._aborted.set()
        method = getattr(self.inner, "abort", None)
        if callable(method):
            method()

    def _after_fork_in_child(self) -> None:
        # Descriptors the parent had open mid-fetch (its lock!) are closed in the child only: the
        # parent's lock stays the parent's, and dies with it.
        for fd in list(self._fds):
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = set()
        aborted = self._aborted.is_set()
        self._aborted = threading.Event()
        if aborted:
            self._aborted.set()
        self._rng.seed()

    # -- the flow ------------------------------------------------------------------------------
    def _obtain(self, rejected: str | None) -> Token:
        if not self._directory_ok():
            return self._fetch_inner(rejected)
        entry = self._read()
        token = self._usable(entry, rejected)
        if token is not None:
            return token
        seen_failure = _failure_id(entry)
        fd = self._open_lock()
        locked = False
        try:
            if fd is not None:
                locked, token = self._wait_for_lock(fd, rejected, seen_failure)
                if token is not None:
                    return token
            try:
                fresh = self._fetch_inner(rejected)
            except BaseException as exc:
                if locked and not self._aborted.is_set():  # an abort (our shutdown) is not the IdP's failure
                    self._note_failure(exc)
                raise
            return self._store(fresh)
        finally:
            if fd is not None:
                self._close_lock(fd, locked)

    def _fetch_inner(self, rejected: str | None) -> Token:
        method = getattr(self.inner, "fetch_rejecting", None)
        if rejected is not None and callable(method):
            return method(rejected)
        return self.inner.fetch()

    def _wait_for_lock(self, fd: int, rejected: str | None, seen_failure: str | None) -> tuple[bool, Token | None]:
        """(locked, token): the lock, or a token another process wrote while we waited, or
        neither after ``lock_timeout`` (the caller then fetches without the lock)."""
        deadline = self._clock() + self.lock_timeout
        delay = POLL_MIN
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
            except BlockingIOError:
                locked = False
            except OSError as exc:  # ENOLCK on some network file systems
                self._warn_once("flock", "the token cache %s (%s) cannot be locked (%s); each process fetches "
                                "its own token", self.directory, self._setting, exc.strerror or type(exc).__name__)
                return False, None
            entry = self._read()
            token = self._usable(entry, rejected)
            if token is not None:
                return locked, token
            failure = entry.failure if entry is not None else None
            if failure is not None and failure.get("id") != seen_failure:
                # The process we waited for failed just now: back off as it does, do not try in turn.
                if locked:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                raise _shared_failure(self.name, failure)
            if locked:
                return True, None
            if self._clock() >= deadline:
                self._warn_once("lock_timeout", "another process has held the token cache lock %s for more "
                                "than %.0fs; fetching without it", self.lock_path, self.lock_timeout)
                return False, None
            if self._aborted.wait(delay):
                raise TransientTokenError(
                    f"token source {self.name}: closed while waiting for another process's token fetch")
            delay = min(delay * 2, POLL_MAX)

    # -- reading -------------------------------------------------------------------------------
    def _usable(self, entry: _Entry | None, rejected: str | None) -> Token | None:
        """The cached token for the manager when it is fresh (and, after a refusal, not the one
        refused), with the host's refresh point as its hint; else None."""
        if entry is None or entry.value is None:
            return None
        now, wall = self._clock(), self._wall()
        if entry.obtained > wall + CLOCK_SKEW or entry.expires <= entry.obtained:
            return None
        obtained = now + (entry.obtained - wall)
        expires = now + (entry.expires - wall)
        due = min(now + (entry.refresh - wall), refresh_at(obtained, expires, self._latest_policy, self._rng))
        if now >= due or now >= expires:
            return None
        if rejected is not None and hmac.compare_digest(entry.value, rejected):
            served = self._served
            if served is None or served[0] != _digest(rejected) or served[1] == entry.write_id:
                return None  # the refused token is still the cached one: fetch
        try:
            token = Token(entry.value, expires_at=expires, refresh_hint=due, obtained_at=now)
        except ValueError:
            return None
        self._served = (_digest(entry.value), entry.write_id)
        return token

    def _read(self) -> _Entry | None:
        """The cache file, parsed; None when missing, untrusted, corrupt or foreign."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                self._warn_once("symlink", "the token cache file %s is a symlink: ignored (it is replaced at "
                                "the next fetch)", self.path)
            else:
                self._warn_once("read", "the token cache file %s cannot be read (%s): ignored", self.path,
                                exc.strerror or type(exc).__name__)
            return None
        self._fds.add(fd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                self._warn_once("not_regular", "the token cache file %s is not a regular file: ignored", self.path)
                return None
            if st.st_uid != os.geteuid():
                self._warn_once("owner", "the token cache file %s is owned by uid %d, not by this process's "
                                "user (%d): ignored, never trusted (it is replaced at the next fetch)",
                                self.path, st.st_uid, os.geteuid())
                return None
            if st.st_mode & 0o077:
                self._warn_once("mode", "the token cache file %s has permissions %04o, not 0600: ignored, never "
                                "trusted (it is replaced at the next fetch)", self.path, stat.S_IMODE(st.st_mode))
                return None
            raw = os.read(fd, MAX_FILE_BYTES + 1)
        except OSError:
            return None
        finally:
            self._fds.discard(fd)
            os.close(fd)
        entry = self._parse(raw) if len(raw) <= MAX_FILE_BYTES else None
        if entry is None:
            _logger.debug("the token cache file %s is corrupt or not ours: ignored", self.path)
        return entry

    def _parse(self, raw: bytes) -> _Entry | None:
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
            return None
        check = data.get("key")
        if not isinstance(check, str) or not hmac.compare_digest(check, self._check):
            return None
        failure = data.get("failure")
        if failure is not None and not (isinstance(failure, dict) and isinstance(failure.get("id"), str)):
            failure = None
        value = data.get("value")
        if value is None:
            return _Entry(None, 0.0, 0.0, 0.0, "", failure) if failure is not None else None
        times = [data.get(k) for k in ("obtained", "expires", "refresh")]
        write_id = data.get("id")
        if (not isinstance(value, str) or not value or unusable_reason(value) is not None
                or not isinstance(write_id, str)
                or not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in times)):
            return None
        return _Entry(value, float(times[0]), float(times[1]), float(times[2]), write_id, failure)

    # -- writing -------------------------------------------------------------------------------
    def _store(self, token: Token) -> Token:
        """Write a token just fetched (with the host's refresh point); return it with that hint."""
        now, wall = self._clock(), self._wall()
        obtained = min(token.obtained_at, now)
        expires = token.expires_at if token.expires_at is not None else obtained + self._policy.default_lifetime
        if expires <= now or unusable_reason(token.value) is not None:
            return token  # the manager refuses it; nothing worth sharing
        due = refresh_at(obtained, expires, self._policy, self._rng)
        if token.refresh_hint is not None:
            due = min(due, max(token.refresh_hint, obtained))
        write_id = secrets.token_hex(8)
        self._write({
            "format": FORMAT_VERSION,
            "key": self._check,
            "value": token.value,
            "obtained": wall + (obtained - now),
            "expires": wall + (expires - now),
            "refresh": wall + (due - now),
            "id": write_id,
            "pid": os.getpid(),
            "written": wall,
        })
        self._served = (_digest(token.value), write_id)
        return Token(token.value, expires_at=expires, refresh_hint=due, obtained_at=token.obtained_at)

    def _note_failure(self, exc: BaseException) -> None:
        """Tell the processes waiting for this fetch that it failed (the token, if any, is kept)."""
        if isinstance(exc, TokenError):
            message = str(exc)
        else:
            message = f"{type(exc).__name__} in token source (details at DEBUG in that process)"
        retry_after = getattr(exc, "retry_after", None)
        failure = {
            "id": secrets.token_hex(8),
            "message": message[:2000],
            "fatal": isinstance(exc, FatalTokenError),
            "retry_after": retry_after if isinstance(retry_after, (int, float)) else None,
            "pid": os.getpid(),
        }
        entry = self._read()
        record: dict[str, Any] = {"format": FORMAT_VERSION, "key": self._check, "value": None, "failure": failure}
        if entry is not None and entry.value is not None:
            record.update(value=entry.value, obtained=entry.obtained, expires=entry.expires,
                          refresh=entry.refresh, id=entry.write_id)
        self._write(record)

    def _write(self, record: dict) -> None:
        data = json.dumps(record, separators=(",", ":")).encode()
        temp = os.path.join(self.directory, f"{self._temp_prefix}{secrets.token_hex(6)}")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            self._warn_once("write", "the token cache %s (%s) cannot be written (%s); each process fetches "
                            "its own token", self.directory, self._setting, exc.strerror or type(exc).__name__)
            return
        self._fds.add(fd)
        try:
            try:
                os.fchmod(fd, 0o600)  # whatever the umask
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                self._fds.discard(fd)
                os.close(fd)
            os.replace(temp, self.path)
        except OSError as exc:
            try:
                os.unlink(temp)
            except OSError:
                pass
            self._warn_once("write", "the token cache %s (%s) cannot be written (%s); each process fetches "
                            "its own token", self.directory, self._setting, exc.strerror or type(exc).__name__)
            return
        self._warned.discard("write")
        self._sweep_temporaries()

    def _sweep_temporaries(self) -> None:
        """Remove our key's temporary files left by a process killed mid-write (older than a minute)."""
        try:
            names = [n for n in os.listdir(self.directory) if n.startswith(self._temp_prefix)]
        except OSError:
            return
        limit = self._wall() - 60.0
        for name in names:
            path = os.path.join(self.directory, name)
            try:
                if os.lstat(path).st_mtime < limit:
                    os.unlink(path)
            except OSError:
                pass

    # -- the directory and the lock ------------------------------------------------------------
    def _directory_ok(self) -> bool:
        checked = prepare(self.directory)
        if checked.why is not None:
            return self._unusable(checked.why)
        if checked.tightened_from is not None:
            self._warn_once("tightened", "the token cache directory %s (%s) had permissions %04o; now 0700",
                            self.directory, self._setting, checked.tightened_from)
        self._warned.discard("unusable")
        return True

    def _unusable(self, why: str, detail: str | None = None) -> bool:
        extra = f" ({detail})" if detail else ""
        self._warn_once("unusable", "the token cache directory %s (%s) is not used: %s%s; each process fetches "
                        "its own token", self.directory, self._setting, why, extra)
        return False

    def _open_lock(self) -> int | None:
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            self._warn_once("lock_open", "the token cache lock %s cannot be opened (%s); fetching without it",
                            self.lock_path, exc.strerror or type(exc).__name__)
            return None
        self._fds.add(fd)
        return fd

    def _close_lock(self, fd: int, locked: bool) -> None:
        self._fds.discard(fd)
        try:
            if locked:
                fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError:
            pass
        finally:
            os.close(fd)

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            _logger.warning(message, *args)


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()


def _failure_id(entry: _Entry | None) -> str | None:
    return entry.failure.get("id") if entry is not None and entry.failure is not None else None


def _shared_failure(name: str, failure: dict) -> TokenError:
    message = failure.get("message")
    text = (f"token source {name}: the fetch by another process (pid {failure.get('pid')}) failed just now: "
            f"{message if isinstance(message, str) else 'unknown error'}")
    retry_after = failure.get("retry_after")
    retry_after = float(retry_after) if isinstance(retry_after, (int, float)) and retry_after > 0 else None
    cls = FatalTokenError if failure.get("fatal") is True else TransientTokenError
    return cls(text, retry_after=retry_after)


def _canonical(value: Any) -> str:
    return json.dumps(_material(value), sort_keys=True, separators=(",", ":"))


def _material(value: Any) -> Any:
    """``value`` as JSON-able key material. A credential object counts by its ``cache_key()`` when
    it has one, else by its type (the same type in every process: see docs/sources.md)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(k): _material(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_material(v) for v in value]
    method = getattr(value, "cache_key", None)
    if callable(method):
        try:
            return ["cache_key", _material(method())]
        except Exception:  # noqa: BLE001 - a broken cache_key() only costs sharing
            _logger.debug("cache_key() of %s failed", type(value).__name__, exc_info=True)
    return ["object", f"{type(value).__module__}.{type(value).__qualname__}"]


def key_material(env: Env, options: Mapping[str, Any], source: TokenSource) -> tuple[dict, dict]:
    """(non-secret key, secret material) of the token ``source`` fetches with these settings.

    The key: the source's kind and class, and the settings in :data:`PUBLIC_SETTINGS`. The secret
    material: every other source setting (variables ``OTEL_TOKEN_EXPORTER_*`` except the exporter's
    own and the cache directory; keyword arguments), the ambient variables google-auth and
    azure-identity read, and the source's ``cache_key()`` if it has one (plug-ins).
    """
    from .settings import OWN_SETTINGS
    from .sources import SOURCE_SETTING

    kind = options.get("source") or env.str(SOURCE_SETTING) or ""
    cls = type(source)
    key: dict[str, Any] = {"source": str(kind).lower(), "class": f"{cls.__module__}.{cls.__qualname__}"}
    public_vars, public_args = set(), set()
    for arg, suffix in PUBLIC_SETTINGS:
        public_vars.add(ENV_PREFIX + suffix)
        public_args.add(arg)
        value = options.get(arg)
        if value is None:
            value = env.str(ENV_PREFIX + suffix)
        if value is not None:
            key[arg] = _material(value)
    skip_vars = public_vars | {CACHE_DIR_SETTING} | {ENV_PREFIX + s for s in OWN_SETTINGS.values()}
    secret: dict[str, Any] = {
        "env": {k: v for k, v in env.values.items() if k.startswith(ENV_PREFIX) and k not in skip_vars},
        "options": {k: _material(v) for k, v in options.items()
                    if v is not None and k not in public_args and k != "cache_dir"},
    }
    family = next((f for f in _AMBIENT_PREFIXES if f in key["source"] or f in cls.__module__.lower()), None)
    if family is not None:
        secret["ambient"] = {k: v for k, v in env.values.items() if k.startswith(_AMBIENT_PREFIXES[family])}
    method = getattr(source, "cache_key", None)
    if callable(method):
        secret["source"] = _material(method())
    return key, secret


def shared_cache(source: TokenSource, env: Env, options: Mapping[str, Any],
                 policy: RefreshPolicy = DEFAULT_POLICY) -> TokenSource:
    """``source`` wrapped in a :class:`SharedCacheSource` when ``cache_dir`` (argument) or
    ``OTEL_TOKEN_EXPORTER_CACHE_DIR`` is set; unchanged otherwise, and for the file and static
    sources (nothing to save: they read a file or a setting, not an IdP)."""
    from .sources.file import FileTokenSource
    from .sources.static import StaticTokenSource

    setting = CACHE_DIR_SETTING
    cache_dir = options.get("cache_dir")
    if cache_dir is not None:
        setting = "cache_dir"
        if not isinstance(cache_dir, (str, os.PathLike)) or not os.fspath(cache_dir):
            raise ConfigurationError(f"cache_dir={cache_dir!r} is not a directory path")
    else:
        cache_dir = env.str(CACHE_DIR_SETTING)
    if not cache_dir or isinstance(source, (FileTokenSource, StaticTokenSource)):
        return source
    if fcntl is None:  # pragma: no cover - not POSIX
        _logger.warning("%s is set but this platform has no fcntl file locks: not sharing tokens", setting)
        return source
    key, secret = key_material(env, options, source)
    return SharedCacheSource(source, cache_dir, key=key, secret_key_material=secret, policy=policy, setting=setting)
