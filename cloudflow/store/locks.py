"""Locks between processes on a file (``fcntl.flock``): the store's and the download cache's.

Where there is no ``flock`` (Windows) nothing is locked: each caller stays correct without it
(sqlite locks its own data; a download may then be made twice, each checked).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def hold(f: IO[Any], *, shared: bool = False, wait: bool = True) -> bool:
    """Lock the open file ``f`` until it is closed or unlocked; False if ``wait`` is off and
    another process holds it. True, with no lock, where there is no ``flock``."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return True
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    try:
        fcntl.flock(f.fileno(), mode if wait else mode | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def flock(path: Path, *, shared: bool = False, wait: bool = True) -> Iterator[bool]:
    """Lock ``path`` (created if missing) for the block; yields whether it is held.

    It yields False, holding nothing, only when ``wait`` is off and another process holds it.
    """
    with open(path, "a+b") as f:
        if not hold(f, shared=shared, wait=wait):
            yield False
            return
        try:
            yield True
        finally:
            with contextlib.suppress(ImportError):
                import fcntl

                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
