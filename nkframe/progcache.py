"""Loaded objects the engine keeps for shared programs (``ProgramSpec.shared``).

A shared program is loaded and verified once per engine and attached by every endpoint that
asks for it; each attachment (a pinned link or tc filter) holds its own reference in the
kernel, so dropping the cached copy never detaches anything.  Callers of ``Engine._load`` close
what it returns when they are done; for a cached object that close must not release the
engine's copy, so they get a :class:`SharedObject`, whose ``close`` does nothing.
"""

from __future__ import annotations

import os
from typing import Any

# Distinct (object file, globals, map pins) kept at once.  A plugin that marks a program shared
# but varies its globals per endpoint would otherwise grow the cache without bound.
CACHE_SIZE = 16


def file_id(path: str) -> tuple[int, int, int, int]:
    """Identity of an object file as loaded: a rebuilt or replaced file is another program."""
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size


class SharedObject:
    """A loaded :class:`nkframe.bpf.BpfObject` owned by the engine's cache."""

    def __init__(self, obj: Any):
        self._obj = obj

    def __getattr__(self, name: str) -> Any:
        return getattr(self._obj, name)

    def close(self) -> None:
        """Callers' close: the cache keeps the object."""

    def release(self) -> None:
        """The cache lets go of it (attached copies live on through their pins)."""
        self._obj.close()

    def __repr__(self) -> str:
        return f"<shared {self._obj!r}>"
