"""A token read from a file another process keeps fresh (``OTEL_TOKEN_EXPORTER_TOKEN_FILE``).

Made for Kubernetes projected service-account tokens, Vault agent sinks and similar. The kubelet
rotates a projected token at 80 % of its lifetime by writing a new timestamped directory and
atomically swapping the ``..data`` symlink, so the path we are given (``token -> ..data/token``)
changes inode under us. Every :meth:`FileTokenSource.fetch` therefore re-opens the path (following
the symlinks) and reads it whole; there is no watcher thread and no kept file descriptor. Only a
regular file is read: a FIFO (whose open() would wait for a writer forever), socket, device or
directory at the path is a fatal error naming the setting.

When the manager asks again is decided by the token manager, with a hint from here: the token's
own refresh point (from the JWT ``exp``) or ``recheck`` seconds (``..._TOKEN_FILE_RECHECK``,
default 60 s), whichever comes first. A 401 from the endpoint makes the manager fetch at once, which
re-reads the file. A read that fails, or finds the file empty or half-written, keeps the last good
token (until it expires); only without one is it an error.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from typing import Callable

from ..jwt import jwt_expiry
from ..token import FatalTokenError, Token, TransientTokenError

__all__ = ["FileTokenSource", "DEFAULT_RECHECK"]

_logger = logging.getLogger("otel_token_exporter")

DEFAULT_RECHECK = 60.0
MAX_TOKEN_BYTES = 64 * 1024

_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_OPEN_FLAGS = os.O_RDONLY | _NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def jwt_exp_claim(token: str) -> float | None:
    """The raw ``exp`` claim (seconds since the epoch) of a JWT, past or not; None if it has none."""
    return jwt_expiry(token, wall_clock=lambda: 0.0, monotonic=lambda: 0.0)


class FileTokenSource:
    """Reads a bearer token from ``path`` on every fetch, keeping the last good one on trouble.

    ``recheck`` bounds how long the manager goes without re-reading the file (seconds).
    ``setting`` names the setting in error messages.
    """

    def __init__(
        self,
        path: str,
        *,
        recheck: float = DEFAULT_RECHECK,
        setting: str = "token_file",
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if recheck <= 0:
            raise ValueError("recheck must be positive")
        self.path = path
        self.recheck = float(recheck)
        self._setting = setting
        self._wall = wall_clock
        self._mono = monotonic
        self._last: Token | None = None
        self._last_signature: tuple | None = None
        self.reads = 0  # successful reads (for tests and health pages)
        self.changes = 0  # reads that found a different file or content

    def __repr__(self) -> str:
        return f"FileTokenSource(path={self.path!r})"

    def _where(self) -> str:
        return f"token file {self.path} ({self._setting})"

    def fetch(self) -> Token:
        now = self._mono()
        try:
            value, signature = self._read()
            if self._last is not None and value == self._last.value:
                # Unchanged content (a re-check, or a forced re-read after a 401): same expiry.
                expires_at, changed = self._last.expires_at, False
                if expires_at is not None and expires_at <= now:
                    raise TransientTokenError(
                        f"the token in {self._where()} has expired and the file has not been replaced"
                    )
            else:
                expires_at, changed = self._expiry(value, now), True
        except (TransientTokenError, FatalTokenError) as exc:
            return self._keep_last(now, str(exc), exc)
        self.reads += 1
        token = Token(value, expires_at=expires_at, refresh_hint=self._hint(now, expires_at), obtained_at=now)
        return self._remember(token, signature, changed=changed)

    # -- internals ----------------------------------------------------------------------------
    def _hint(self, now: float, expires_at: float | None) -> float:
        hint = now + self.recheck
        if expires_at is not None:
            # Never sit on a nearly expired token: look again at least at half its remaining life.
            hint = min(hint, now + max((expires_at - now) / 2, 0.0))
        return hint

    def _remember(self, token: Token, signature: tuple, *, changed: bool) -> Token:
        if changed:
            self.changes += 1
            if self._last is not None:
                _logger.debug("%s changed; using the new token", self._where())
        self._last = token
        self._last_signature = signature
        return token

    def _keep_last(self, now: float, why: str, exc: Exception) -> Token:
        last = self._last
        if last is None or (last.expires_at is not None and last.expires_at <= now):
            raise exc
        _logger.debug("%s; keeping the last good token", why)
        # Look again soon (the writer is probably mid-swap), but not in a tight loop.
        hint = now + min(self.recheck, 1.0)
        return Token(last.value, expires_at=last.expires_at, refresh_hint=hint, obtained_at=now)

    def _expiry(self, value: str, now: float) -> float | None:
        exp = jwt_exp_claim(value)
        if exp is None:
            return None  # an opaque token: the manager's default lifetime applies per read
        remaining = exp - self._wall()
        if remaining <= 0:
            raise TransientTokenError(
                f"the token in {self._where()} has already expired (its exp claim is "
                f"{-remaining:.0f}s in the past); waiting for the file to be replaced"
            )
        return now + remaining

    def _read_regular_file(self) -> tuple[os.stat_result, bytes]:
        """The path's stat and its first ``MAX_TOKEN_BYTES`` + 1 bytes, if it is a regular file.

        A FIFO without a writer would block open() (and so the refresher) forever, and a device
        reads endlessly: anything but a regular file is refused, first by stat (following the
        symlinks, as the kubelet's ``..data`` layout needs), then, in case the path was swapped in
        between, by fstat of what was opened, which O_NONBLOCK kept from blocking.
        """
        try:
            st = os.stat(self.path)
            if not stat.S_ISREG(st.st_mode):
                raise self._not_regular(st.st_mode)
            fd = os.open(self.path, _OPEN_FLAGS)
        except FileNotFoundError:
            raise TransientTokenError(f"{self._where()} does not exist (yet)") from None
        except IsADirectoryError:  # swapped to a directory after the stat
            raise self._not_regular(stat.S_IFDIR) from None
        except PermissionError:
            raise FatalTokenError(f"{self._where()} is not readable by this process (permission denied)") from None
        except OSError as exc:
            raise TransientTokenError(
                f"cannot read {self._where()}: {exc.strerror or type(exc).__name__}"
            ) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise self._not_regular(st.st_mode)
            if _NONBLOCK:
                os.set_blocking(fd, True)  # it only guarded the open; a regular file's reads never wait
            with os.fdopen(fd, "rb", closefd=True) as f:
                fd = -1
                return st, f.read(MAX_TOKEN_BYTES + 1)
        except OSError as exc:
            raise TransientTokenError(
                f"cannot read {self._where()}: {exc.strerror or type(exc).__name__}"
            ) from None
        finally:
            if fd >= 0:
                os.close(fd)

    def _not_regular(self, mode: int) -> FatalTokenError:
        kind = next((name for test, name in _FILE_KINDS if test(mode)), "of an unknown kind")
        return FatalTokenError(f"{self._where()} is not a regular file ({kind}); refused")

    def _read(self) -> tuple[str, tuple]:
        """The stripped token and the (device, inode, mtime, size) it was read from."""
        for _ in range(3):
            st, data = self._read_regular_file()
            if len(data) > MAX_TOKEN_BYTES:
                raise FatalTokenError(f"{self._where()} is larger than {MAX_TOKEN_BYTES} bytes; refused")
            signature = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
            if len(data) == st.st_size:
                break
            # The file grew or shrank while we read it: a writer is at work, read again.
        else:
            raise TransientTokenError(f"{self._where()} kept changing while being read")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise FatalTokenError(f"{self._where()} is not UTF-8 text") from None
        value = text.strip()
        if not value:
            raise TransientTokenError(f"{self._where()} is empty")
        if any(c.isspace() for c in value) or "\0" in value:
            raise TransientTokenError(
                f"{self._where()} holds more than one word: expected a single token "
                "(a file being written, or the wrong file)"
            )
        if value.startswith("eyJ") and value.count(".") != 2:
            raise TransientTokenError(f"{self._where()} holds a truncated JWT (being written?)")
        return value, signature
