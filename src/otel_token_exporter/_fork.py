"""One ``os.register_at_fork`` hook for every object that must start afresh in a forked child.

A child of ``fork()`` (gunicorn ``--preload``, multiprocessing's fork start method) inherits locks that
may be held by threads that do not exist in it, and connections shared with its parent. Objects that
own such state register here and get ``_after_fork_in_child()`` called in the child.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol

__all__ = ["reset_after_fork"]


class _Resettable(Protocol):
    def _after_fork_in_child(self) -> None: ...


_OBJECTS: weakref.WeakSet = weakref.WeakSet()


def reset_after_fork(obj: _Resettable) -> None:
    """Call ``obj._after_fork_in_child()`` in every forked child while ``obj`` lives."""
    _OBJECTS.add(obj)


def _after_fork_in_child() -> None:
    for obj in list(_OBJECTS):
        obj._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
