"""A directory only this user may use (the spool, the token cache): checked, created, tightened.

It must be a directory owned by this process's user; a shared one (world-writable or sticky, such
as ``/tmp``) is refused rather than chmod-ed, since other programs rely on its permissions. One of
ours that is more open than 0700 is tightened.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

__all__ = ["PrivateDirectory", "prepare"]


@dataclass(frozen=True)
class PrivateDirectory:
    """The outcome: ``why`` is None when usable; ``tightened_from`` the old mode when it was changed."""

    why: str | None = None
    tightened_from: int | None = None


def prepare(path: str) -> PrivateDirectory:
    """Create ``path`` (0700) if missing and check it; never raises for an OS error."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.stat(path)
    except OSError as exc:
        return PrivateDirectory(f"it cannot be created or read ({exc.strerror or type(exc).__name__})")
    if not stat.S_ISDIR(st.st_mode):
        return PrivateDirectory("it is not a directory")
    if st.st_uid != os.geteuid():
        return PrivateDirectory(f"it is owned by uid {st.st_uid}, not by this process's user ({os.geteuid()})")
    mode = stat.S_IMODE(st.st_mode)
    if not mode & 0o077:
        return PrivateDirectory()
    if mode & (stat.S_ISVTX | 0o002):
        return PrivateDirectory(f"it is a shared directory (permissions {mode:04o}); give it a directory of its own")
    try:
        os.chmod(path, 0o700)
    except OSError as exc:
        return PrivateDirectory(f"its permissions {mode:04o} cannot be tightened to 0700 ({exc.strerror})")
    return PrivateDirectory(tightened_from=mode)
