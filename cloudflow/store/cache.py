"""The per-machine cache of large bundle files downloaded from a tracking server.

A bundle logged to a tracking server keeps its large files in the experiment's shared area of the
artifact store (see :mod:`cloudflow.store.remote`). A load downloads each of them once per machine
into this cache, named by its BLAKE3 digest, and every later load of any bundle, run or process that
needs the same content takes it from here.

Layout, under ``$CLOUDFLOW_CACHE_DIR/files`` (default ``~/.cache/cloudflow/files``, beside the
digest cache):

- ``blobs/<digest>``: the files, read-only, each verified (size and digest) before it got its name;
- ``blobs/.partial-*``: downloads in progress, renamed to their digest only once verified, so a
  download cut short, altered or stopped by a full disk never leaves a file under a digest name;
- ``locks/<digest>.lock``: one download of a file at a time across processes (``fcntl.flock``):
  eight processes starting at once download it once, the others wait and then read it;
- ``bundles/<key>/``: a bundle put together from its download and the cache's files: its small
  files, and hard links to the large ones (a bundle is read from one folder). It is kept, named
  by its manifest, so a repeat load reads it as a local store's bundle is read: the same files,
  the digest cache warm. A process holds a shared lock on ``bundles/<key>.lock`` while a bundle
  read from it lives; pruning removes only folders nobody holds.

The cache keeps at most ``CLOUDFLOW_CACHE_MAX_SIZE`` bytes of files (default 50 GB; ``500MB``,
``20GB`` and plain byte counts are understood): before a download that would pass it, the files
used least recently go. Removing a file from the cache never breaks a bundle that is loaded: its
load folder holds its own hard link, and a memory map keeps its pages. ``cloudflow cache prune``
empties it down to a size, ``cloudflow cache info`` tells what it holds.

The cache is private: a folder that another user can write to is refused, since a file put there
under a digest's name would reach loads that were asked not to verify.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudflow import _units
from cloudflow.exceptions import CacheError, IntegrityError
from cloudflow.integrity import digests as _digests
from cloudflow.store import locks

_logger = logging.getLogger("cloudflow")

MAX_SIZE_ENV = "CLOUDFLOW_CACHE_MAX_SIZE"
DEFAULT_MAX_SIZE = 50 * 10**9
_PARTIAL = ".partial-"
_BUILDING = ".building-"
#: A put-together bundle nobody used for this long goes at the next prune.
_UNUSED_BUNDLE_S = 7 * 24 * 3600
#: A partial download older than this is left over from a process that died mid-download.
_STALE_PARTIAL_S = 6 * 3600


def parse_size(text: str, what: str = MAX_SIZE_ENV) -> int:
    """Bytes of a size written ``500MB``, ``20GB``, ``1.5GiB`` or ``1000000``.

    Raises:
        CacheError: Not such a size.
    """
    size = _units.parse_size(text)
    if size is None:
        raise CacheError(
            f"{what}={text!r} is not a size. Write a number of bytes, or one with a unit: "
            f"500MB, 20GB, 1.5GiB ({_units.SIZE_UNITS_TEXT})."
        )
    return size


def max_size() -> int:
    """The cache's size limit in bytes (``CLOUDFLOW_CACHE_MAX_SIZE``)."""
    text = os.environ.get(MAX_SIZE_ENV, "").strip()
    return parse_size(text) if text else DEFAULT_MAX_SIZE


def root() -> Path:
    """The cache folder, created private if needed.

    Raises:
        CacheError: It cannot be created, or another user can write to it.
    """
    base = os.environ.get(_digests.CACHE_DIR_ENV)
    if base:
        folder = Path(base).expanduser() / "files"
    else:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        folder = Path(xdg) / "cloudflow" / "files"
    try:
        for sub in ("blobs", "locks", "bundles"):
            (folder / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        info = folder.stat()
    except OSError as e:
        raise CacheError(
            f"Cannot create the download cache {str(folder)!r}: {e.strerror}. Set "
            f"{_digests.CACHE_DIR_ENV} to a folder you can write to."
        ) from e
    if hasattr(os, "getuid") and (info.st_uid != os.getuid() or info.st_mode & 0o022):
        raise CacheError(
            f"The download cache {str(folder)!r} can be written by another user (mode "
            f"{stat.filemode(info.st_mode)}, owner uid {info.st_uid}): a file put there would "
            f"reach your loads. Make it yours and private (chmod 700), or set "
            f"{_digests.CACHE_DIR_ENV} to a private folder."
        )
    return folder


def is_blob(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def touch(path: Path) -> None:
    """Mark a file used now: its access time (its mtime, part of its digest-cache key, stays)."""
    with contextlib.suppress(OSError):
        info = path.stat()
        os.utime(path, ns=(time.time_ns(), info.st_mtime_ns))


def present(path: Path, size: int) -> bool:
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_size == size


#: ``download(digest, path, size)`` writes a file's bytes to ``path`` and returns their BLAKE3
#: digest; it stops (an IntegrityError) once more than ``size`` bytes arrive.
Download = Callable[[str, Path, int], str]


def fetch(
    digest: str,
    size: int,
    download: Download,
    *,
    source: str,
    keep: Collection[str] = (),
    check: bool = False,
) -> tuple[Path, int]:
    """The cache's file of content ``digest``, downloaded first if the cache lacks it.

    Room is made for it only once it arrived and matched its digest, by the bytes that did: a
    size the manifest claims neither prunes the cache nor is written past. Making room never
    removes the files named in ``keep`` (those of the same load).
    With ``check``, a file the cache holds is hashed first, and downloaded again if it is not
    that content any more.

    Returns the path and the bytes downloaded (0: it was here, or another process fetched it
    while this one waited for the lock).

    Raises:
        IntegrityError: What was downloaded is not that content (nothing is kept).
        CacheError: The cache's disk is full, or the cache cannot be written.
    """
    if not is_blob(digest):
        raise IntegrityError(f"{digest!r} is not a BLAKE3 digest: the manifest is damaged.")
    folder = root()
    final = folder / "blobs" / digest
    if present(final, size) and not check:
        touch(final)
        return final, 0
    with locks.flock(folder / "locks" / f"{digest}.lock"):
        if (
            check
            and present(final, size)
            and _digests.digest_files([final], use_cache=False)[0] != digest
        ):
            _logger.warning("The cached file %s was changed; downloading it again", final)
            final.unlink()
        if present(final, size):  # another process downloaded it while this one waited
            touch(final)
            return final, 0
        partial = folder / "blobs" / f"{_PARTIAL}{digest[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            got = download(digest, partial, size)
            got_size = partial.stat().st_size
            if got_size != size or got != digest:
                raise IntegrityError(
                    f"The download of {digest[:16]}... from {source} is not the file the bundle's "
                    f"manifest names: {got_size} bytes with digest {got[:16]}..., expected {size} "
                    f"bytes with digest {digest[:16]}... Nothing was kept. The server's copy is "
                    "damaged or was cut short. Log the model again from its source: a save "
                    "reads the area's copy back and uploads its own in place of a damaged one, "
                    "which repairs every bundle that names it. If the connection dropped, load "
                    "it again."
                )
            make_room(size, folder, keep=keep)
            os.chmod(partial, stat.S_IRUSR)
            os.replace(partial, final)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise CacheError(
                    f"The download cache {str(folder)!r} ran out of disk space while downloading "
                    f"{size / 1e6:.1f} MB from {source}; nothing half-written was kept. Free space "
                    f"(`cloudflow cache prune --max-size 1GB`), lower {MAX_SIZE_ENV}, or set "
                    f"{_digests.CACHE_DIR_ENV} to a larger disk."
                ) from e
            raise
        finally:
            with contextlib.suppress(OSError):
                partial.unlink()
    touch(final)
    return final, size


@dataclass(frozen=True)
class Entry:
    path: Path
    size: int
    used: float


def entries(folder: Path | None = None) -> list[Entry]:
    """The cache's files, least recently used first."""
    blobs = (folder or root()) / "blobs"
    out = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(blobs):
            with contextlib.suppress(OSError):
                info = entry.stat(follow_symlinks=False)
                if is_blob(entry.name) and stat.S_ISREG(info.st_mode):
                    out.append(Entry(Path(entry.path), info.st_size, info.st_atime))
    return sorted(out, key=lambda e: e.used)


def prune(limit: int, folder: Path | None = None, keep: Collection[str] = ()) -> tuple[int, int]:
    """Remove the least recently used files until the cache holds at most ``limit`` bytes.

    Files named in ``keep`` stay (they count towards the total).

    Also removes partial downloads left by processes that died, and put-together bundles no
    process holds that were not used for a week (all of them when ``limit`` is 0). Returns the
    files removed and the bytes freed.
    """
    folder = folder or root()
    _remove_stale(folder, bundles_unused_for=0 if limit == 0 else _UNUSED_BUNDLE_S)
    files = entries(folder)
    total = sum(e.size for e in files)
    removed = freed = 0
    for entry in files:
        if total <= limit:
            break
        if entry.path.name in keep:
            continue
        with contextlib.suppress(OSError):
            entry.path.unlink()
            total -= entry.size
            removed += 1
            freed += entry.size
    return removed, freed


def make_room(size: int, folder: Path, keep: Collection[str] = ()) -> None:
    """Prune so that ``size`` more bytes fit under the limit (a larger file still fits)."""
    limit = max_size()
    if sum(e.size for e in entries(folder)) + size > limit:
        prune(max(limit - size, 0), folder, keep)


def _remove_stale(folder: Path, bundles_unused_for: float | None = None) -> None:
    """Remove partial downloads and put-together bundles left over (see :func:`prune`)."""
    now = time.time()
    stale = [folder / "blobs", folder / "bundles"]
    for place in stale:
        with contextlib.suppress(OSError):
            for entry in os.scandir(place):
                if entry.name.startswith((_PARTIAL, _BUILDING)):
                    with contextlib.suppress(OSError):
                        if now - entry.stat().st_mtime > _STALE_PARTIAL_S:
                            shutil.rmtree(entry.path) if entry.is_dir() else os.unlink(entry.path)
    if bundles_unused_for is None:
        return
    bundles = folder / "bundles"
    with contextlib.suppress(OSError):
        for entry in os.scandir(bundles):
            if not entry.name.endswith(".lock"):
                continue
            lock = Path(entry.path)
            with contextlib.suppress(OSError):
                if now - lock.stat().st_mtime < bundles_unused_for:
                    continue
            with locks.flock(lock, wait=False) as free:
                if free:
                    _remove_folder(bundles / lock.stem)
                    with contextlib.suppress(OSError):
                        lock.unlink()


def _remove_folder(path: Path) -> None:
    """Remove a folder at once for everyone (renamed first, then deleted)."""
    trash = path.with_name(f"{_BUILDING}trash-{uuid.uuid4().hex[:12]}")
    try:
        os.rename(path, trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)


class BundleFolder:
    """A bundle put together in the cache, held (shared lock) while a bundle read from it lives.

    ``key`` names its content (the digest of its manifest): two loads of the same bundle, in any
    processes, use one folder, built once.
    """

    def __init__(self, key: str) -> None:
        folder = root()
        self.path = folder / "bundles" / key
        self._lock_path = folder / "bundles" / f"{key}.lock"
        self._lock: Any = open(self._lock_path, "a+b")  # noqa: SIM115 - held while in use
        locks.hold(self._lock, shared=True)
        with contextlib.suppress(OSError):
            os.utime(self._lock_path)  # used now: pruning keeps it a week

    @property
    def ready(self) -> bool:
        return self.path.is_dir()

    def build(self, fill: Callable[[Path], None]) -> None:
        """Make the folder with ``fill(folder)``; it gets its name only once complete."""
        building = self.path.with_name(
            f"{_BUILDING}{self.path.name[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        )
        building.mkdir(mode=0o700)
        try:
            fill(building)
            try:
                os.rename(building, self.path)
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise
                # Another process built it meanwhile: the same content, use theirs.
        finally:
            shutil.rmtree(building, ignore_errors=True)

    def discard(self) -> None:
        """Remove the folder (found damaged), so that the next :meth:`build` makes it anew."""
        _remove_folder(self.path)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._lock.close()


@dataclass(frozen=True)
class Summary:
    """What the cache holds."""

    path: Path
    files: int
    bytes: int
    max_size: int
    bundles: int


def info() -> Summary:
    """Where the cache is, how many files it holds, their bytes, its limit, bundles put together."""
    folder = root()
    files = entries(folder)
    bundles = [p for p in (folder / "bundles").iterdir() if p.is_dir() and p.name[0] != "."]
    return Summary(folder, len(files), sum(e.size for e in files), max_size(), len(bundles))
