"""Credential files the OAuth2 source reads at every fetch, and a cheap summary of them.

:class:`CredentialFile` reads a value someone else keeps fresh (a client assertion from a projected
token or a SPIFFE helper, an RFC 8693 subject token) exactly as the file source reads a token: the
path is re-opened every time (a kubelet ``..data`` swap is seen), a briefly empty, half-written or
missing file keeps the last good value while it is unexpired, and a new value is used as soon as it
is complete, never the old one.

:func:`files_state` is what the source's ``fingerprint()`` returns: the token manager polls it
while it cools down after a fatal error, and a changed value ends the cool-down at once. It is each
file's identity and size from ``os.stat`` plus, for small files, a keyed SHA-256 of the content (an
editor may rewrite a file within the same timestamp tick at the same size). The key is random per
process, so the value says nothing about a secret; it is only ever compared, never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable

from .file import FileTokenSource

__all__ = ["CredentialFile", "files_state"]

#: Files up to this size are hashed as well as stat'ed (secrets, keys, assertions and certificates
#: are a few KiB; a bigger file is not a credential we read).
HASH_LIMIT = 64 * 1024

_KEY = secrets.token_bytes(32)


class CredentialFile(FileTokenSource):
    """A rotating file holding one credential; ``what`` names it in messages ("client assertion file")."""

    def __init__(self, path: str, *, what: str, setting: str) -> None:
        super().__init__(path, setting=setting)
        self.what = what

    def __repr__(self) -> str:
        return f"CredentialFile({self.what}, path={self.path!r})"

    def _where(self) -> str:
        return f"{self.what} {self.path} ({self._setting})"

    def read(self) -> str:
        """The current value (or the last good one while the file is being replaced)."""
        return self.fetch().value


def files_state(paths: Iterable[str | None]) -> tuple:
    """One hashable value over ``paths`` (None entries skipped); a missing file counts as a state."""
    return tuple(_state(path) for path in paths if path)


def _state(path: str) -> tuple:
    try:
        st = os.stat(path)
    except OSError as exc:
        return (path, type(exc).__name__)
    digest = None
    if st.st_size <= HASH_LIMIT:
        try:
            with open(path, "rb") as f:
                digest = hmac.new(_KEY, f.read(HASH_LIMIT + 1), hashlib.sha256).hexdigest()
        except OSError as exc:
            digest = type(exc).__name__
    return (path, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size, digest)
