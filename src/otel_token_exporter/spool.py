"""The disk spool: encoded requests that could not be delivered yet, kept in files that outlive the process.

Opt-in (``OTEL_TOKEN_EXPORTER_SPOOL_DIR``). The sending queue writes a request here before
``export()`` returns whenever it was not delivered by then, deletes the file once the request is
delivered or dropped, and at start takes over the files earlier processes left for the same signal
and endpoint. What a file holds is one ``Export*ServiceRequest`` as encoded bytes (telemetry only:
never a header, token or secret) behind a small header with a checksum.

Several processes may share one directory (gunicorn workers, a restarted pod next to its
predecessor). Each process holds an exclusive ``flock`` on its own ``owner-<id>.lock`` for its
lifetime and names the files it owns ``<name>.<id>``; a file whose owner's lock can be taken belongs
to a dead process and is taken over by renaming it (one rename wins). Delivery is at-least-once: a
file delivered but not yet deleted when its process died is delivered again.

Writes are atomic (temporary file, fsync, rename; directory fsync), the directory is 0700 and files
0600. A corrupt, truncated, foreign or future-format file is moved aside once (``.bad``) with one
warning and never blocks the rest. A full disk or an unwritable directory makes the spool fall back
to memory with one warning naming the setting.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import secrets
import struct
import threading
import time
import zlib
from dataclasses import dataclass

from ._fork import reset_after_fork
from ._private_dir import prepare

__all__ = ["Spool", "SpoolLimits", "SpoolEntry", "SPOOL_SETTING", "FORMAT_VERSION"]

_logger = logging.getLogger("otel_token_exporter")

SPOOL_SETTING = "OTEL_TOKEN_EXPORTER_SPOOL_DIR"
MAGIC = b"OTSP"
FORMAT_VERSION = 1
_HEAD = struct.Struct(">4sBI")  # magic, format version, header length
SUFFIX = ".otlp"


@dataclass(frozen=True)
class SpoolLimits:
    max_bytes: int = 256 * 1024 * 1024
    max_age: float = 86_400.0


@dataclass
class SpoolEntry:
    """One file this process owns: where it is, what it holds, when it was made."""

    path: str
    items: int
    size: int
    created: float  # wall-clock seconds


class Spool:
    """The files of one signal and endpoint in ``directory``. Safe for concurrent use."""

    def __init__(self, directory: str, *, signal: str, endpoint: str, limits: SpoolLimits = SpoolLimits(),
                 setting: str = SPOOL_SETTING) -> None:
        self.directory = os.path.abspath(directory)
        self.limits = limits
        self._setting = setting
        #: ``on_drop(count, reason)`` for items the spool deletes by its age cap (set by the queue).
        self.on_drop = None
        digest = hashlib.sha256(f"{signal}\0{endpoint}".encode()).hexdigest()[:16]
        self._prefix = f"{signal}-{digest}-"
        self._signal = signal
        self._endpoint_digest = digest
        self._lock = threading.Lock()
        self._seq = 0
        self._warned: set[str] = set()
        self.usable = True
        self._start_instance()
        reset_after_fork(self)

    # -- ownership ------------------------------------------------------------------------------
    def _start_instance(self) -> None:
        self.instance = secrets.token_hex(6)
        self._lock_fd: int | None = None
        self._owned: dict[str, SpoolEntry] = {}
        checked = prepare(self.directory)
        if checked.why is not None:
            self.usable = False
            self._warn_once("unusable", "the spool directory %s (%s) cannot be used: %s; undelivered requests "
                            "are kept in memory only", self.directory, self._setting, checked.why)
            return
        try:
            # Locked before it is visible under its name: a lock file another process sees is
            # always held while its owner lives.
            temp = os.path.join(self.directory, f".lock-{self.instance}")
            fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(temp, os.path.join(self.directory, f"owner-{self.instance}.lock"))
            self._lock_fd = fd
        except OSError as exc:
            self._unusable("cannot use the directory", exc)

    def _after_fork_in_child(self) -> None:
        # The parent's files and lock stay the parent's: a child is a new owner with nothing yet.
        if self._lock_fd is not None:
            try:
                os.close(self._lock_fd)  # the child's copy only; the parent's lock is unaffected
            except OSError:
                pass
        self._lock = threading.Lock()
        self.usable = True
        self._start_instance()

    def _unusable(self, what: str, exc: OSError) -> None:
        self.usable = False
        self._warn_once(
            "unusable",
            "the spool directory %s (%s) cannot be used: %s (%s); undelivered requests are kept in memory only",
            self.directory, self._setting, what, exc.strerror or type(exc).__name__,
        )

    def _warn_once(self, key: str, message: str, *args) -> None:
        if key not in self._warned:
            self._warned.add(key)
            _logger.warning(message, *args)

    def close(self) -> None:
        """Stop owning: what is left stays on disk for the next process (which takes it over)."""
        with self._lock:
            fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            try:
                os.unlink(os.path.join(self.directory, f"owner-{self.instance}.lock"))
            except OSError:
                pass
            os.close(fd)

    # -- writing --------------------------------------------------------------------------------
    def write(self, body: bytes, items: int) -> SpoolEntry | None:
        """Put one request on disk (atomically). None when the spool cannot take it (full disk...)."""
        if not self.usable or self._lock_fd is None:
            return None
        created = time.time()
        with self._lock:
            self._seq += 1
            seq = self._seq
        name = f"{self._prefix}{int(created * 1e6):017d}-{seq:08d}{SUFFIX}"
        header = json.dumps({
            "signal": self._signal, "endpoint": self._endpoint_digest, "items": items,
            "created": created, "size": len(body), "crc32": zlib.crc32(body),
        }, separators=(",", ":")).encode()
        final = os.path.join(self.directory, f"{name}.{self.instance}")
        temp = os.path.join(self.directory, f".tmp-{self.instance}-{seq}")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, _HEAD.pack(MAGIC, FORMAT_VERSION, len(header)) + header)
                view = memoryview(body)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(temp, final)
            self._fsync_dir()
        except OSError as exc:
            try:
                os.unlink(temp)
            except OSError:
                pass
            what = "the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "a write failed"
            self._warn_once("write", "the spool directory %s (%s): %s (%s); undelivered requests are kept in memory",
                            self.directory, self._setting, what, exc.strerror or type(exc).__name__)
            return None
        entry = SpoolEntry(final, items, len(body) + _HEAD.size + len(header), created)
        with self._lock:
            self._owned[final] = entry
        self._warned.discard("write")
        return entry

    def _fsync_dir(self) -> None:
        try:
            fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    def remove(self, entry: SpoolEntry) -> None:
        """The request was delivered or dropped: its file goes."""
        with self._lock:
            self._owned.pop(entry.path, None)
        try:
            os.unlink(entry.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            self._warn_once("remove", "cannot delete the delivered spool file %s: %s", entry.path, exc.strerror)

    # -- reading --------------------------------------------------------------------------------
    def load(self, entry: SpoolEntry) -> bytes | None:
        """The request in ``entry``'s file, or None (moved aside, with one warning) if it is unusable."""
        try:
            with open(entry.path, "rb") as f:
                data = f.read()
        except OSError as exc:
            self._warn_once("load", "cannot read the spool file %s: %s; it is skipped", entry.path, exc.strerror)
            with self._lock:
                self._owned.pop(entry.path, None)
            return None
        body, why = _parse(data, self._signal, self._endpoint_digest)
        if body is None:
            self._set_aside(entry.path, why)
            return None
        return body

    def _set_aside(self, path: str, why: str) -> None:
        with self._lock:
            self._owned.pop(path, None)
        try:
            os.rename(path, path + ".bad")
        except OSError:
            pass
        self._warn_once("bad", "the spool file %s is %s; it was moved aside (.bad) and is not delivered", path, why)

    def recover(self) -> list[SpoolEntry]:
        """Take over the files of dead owners (and unowned ones) for this signal and endpoint, oldest first."""
        if not self.usable:
            return []
        try:
            names = os.listdir(self.directory)
        except OSError as exc:
            self._unusable("cannot list it", exc)
            return []
        live = {n[len("owner-"):-len(".lock")] for n in names if n.startswith("owner-") and n.endswith(".lock")}
        dead = {owner for owner in live if owner != self.instance and not _held(os.path.join(self.directory, f"owner-{owner}.lock"))}
        taken: list[SpoolEntry] = []
        now = time.time()
        for name in sorted(names):
            path = os.path.join(self.directory, name)
            if name.startswith(".lock-"):
                if name != f".lock-{self.instance}" and not _held(path):
                    _unlink(path)  # a process that died while starting
                continue
            if name.startswith(".tmp-"):
                owner = name[len(".tmp-"):].split("-", 1)[0]
                if owner != self.instance and (owner in dead or owner not in live):
                    _unlink(path)  # a write cut short by a crash
                continue
            if not name.startswith(self._prefix) or name.endswith(".bad"):
                continue
            base, _, owner = name.rpartition(".")
            if not base.endswith(SUFFIX):
                continue
            if owner == self.instance or (owner in live and owner not in dead):
                continue  # ours already, or a live process's
            target = os.path.join(self.directory, f"{base}.{self.instance}")
            try:
                os.rename(path, target)  # one rename wins: the file is ours now
            except OSError:
                continue
            entry = self._entry_of(target, base, now)
            if entry is not None:
                taken.append(entry)
        for owner in dead:
            _unlink(os.path.join(self.directory, f"owner-{owner}.lock"))
        with self._lock:
            for entry in taken:
                self._owned[entry.path] = entry
        if taken:
            _logger.info("took over %d spooled request(s) (%d items) left in %s by earlier processes",
                         len(taken), sum(e.items for e in taken), self.directory)
        return taken

    def _entry_of(self, path: str, base: str, now: float) -> SpoolEntry | None:
        try:
            with open(path, "rb") as f:
                head = f.read(_HEAD.size)
                magic, version, length = _HEAD.unpack(head) if len(head) == _HEAD.size else (b"", 0, 0)
                meta = json.loads(f.read(length)) if magic == MAGIC and version == FORMAT_VERSION and length < 4096 else None
            size = os.path.getsize(path)
        except (OSError, ValueError, struct.error):
            meta = None
            size = 0
        created = meta.get("created") if isinstance(meta, dict) else None
        if (not isinstance(meta, dict) or not isinstance(meta.get("items"), int) or isinstance(created, bool)
                or not isinstance(created, (int, float))):
            self._set_aside(path, "corrupt, truncated or of another format version")
            return None
        created = float(created)
        if now - created > self.limits.max_age:
            _unlink(path)
            if self.on_drop is not None:
                self.on_drop(meta["items"], "spool_expired")
            self._warn_once("age", "deleted spooled requests older than %gs (OTEL_TOKEN_EXPORTER_SPOOL_MAX_AGE)", self.limits.max_age)
            return None
        return SpoolEntry(path, meta["items"], size, created)

    def over_cap(self, protect: set[str] = frozenset()) -> list[SpoolEntry]:
        """The oldest owned files to drop so the spool fits ``max_bytes`` (the caller removes them),
        never one whose path is in ``protect``."""
        with self._lock:
            entries = sorted(self._owned.values(), key=lambda e: e.created)
        total = sum(e.size for e in entries)
        victims = []
        for entry in entries:
            if total <= self.limits.max_bytes:
                break
            if entry.path in protect:
                continue
            victims.append(entry)
            total -= entry.size
        return victims

    def too_large(self, size: int) -> None:
        """A request alone is larger than the spool may hold: it is kept in memory only."""
        self._warn_once(
            "large", "a request of %d bytes is larger than OTEL_TOKEN_EXPORTER_SPOOL_MAX_BYTES (%d): it is "
            "kept in memory only", size, self.limits.max_bytes,
        )

    def stats(self) -> tuple[int, int]:
        """(files, bytes) this process owns."""
        with self._lock:
            return len(self._owned), sum(e.size for e in self._owned.values())


def _parse(data: bytes, signal: str, endpoint: str) -> tuple[bytes | None, str]:
    if len(data) < _HEAD.size:
        return None, "truncated"
    magic, version, length = _HEAD.unpack_from(data)
    if magic != MAGIC:
        return None, "not a spool file"
    if version != FORMAT_VERSION:
        return None, f"of format version {version} (this version reads {FORMAT_VERSION})"
    try:
        meta = json.loads(data[_HEAD.size:_HEAD.size + length])
    except ValueError:
        return None, "corrupt (header)"
    body = data[_HEAD.size + length:]
    if not isinstance(meta, dict) or meta.get("signal") != signal or meta.get("endpoint") != endpoint:
        return None, "for another signal or endpoint"
    if len(body) != meta.get("size") or zlib.crc32(body) != meta.get("crc32"):
        return None, "truncated or corrupt (checksum)"
    return body, ""


def _held(lock_path: str) -> bool:
    """Whether a live process holds ``lock_path`` (its flock); a lock we can take is a dead owner's."""
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing releases the lock we may just have taken
    return False


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
