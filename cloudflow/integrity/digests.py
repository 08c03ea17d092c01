"""Digests of bundle files, with a cache of digests already computed on this machine.

New bundles list a BLAKE3 digest of every file; bundles of format 1 list sha256 digests, which
are still read. BLAKE3 is a cryptographic hash built for this job: on one core it runs at about
4 GB/s here against 1.7 GB/s for sha256 (with SHA-NI), and it splits a large file across cores,
so hashing 400 MB of weights takes about 50 ms on two cores instead of 240 ms. Files are mapped
into memory, not read through a buffer, and both hashes release the GIL while they run.

Verifying a bundle hashes every file before anything is unpickled, so a digest computed once
is remembered: the cache maps the identity of a file on disk, ``(host, device, inode, size,
mtime_ns, ctime_ns)`` and the algorithm, to its digest.

Why that is safe: bundle files are never modified after saving, and any write to a file, or a
change of its times with ``touch``/``utime``, moves its ``ctime`` to the current time, which no
unprivileged process can set back. A file whose content changed therefore has a new identity, and
is hashed again. File times have a coarse granularity (a kernel tick, a second on some file
systems): two writes within one tick can leave the same ``ctime``. So a digest is only remembered
for a file whose last change is old enough when it is read (:data:`SETTLED_FINE_S`, or
:data:`SETTLED_S` where timestamps are whole seconds): any later write then gets a later
``ctime``. A save remembers the digests of the large files it wrote (digested as they were written,
see :func:`written_digests`) that are settled and unchanged since by the time it signs (a write
within the same tick as the last byte would go unseen: the save's folder is private, see
:mod:`cloudflow.integrity.staging`); weights get their digest from memory before they are written
(see :mod:`cloudflow.store.blobs`), so the first load of a new bundle hashes them once, and later
loads find them here. Linking a file into another bundle changes its ``ctime`` too: it is hashed
once more at its next load. On Windows ``st_ctime`` is the creation time, which a write does not
change, so there is no cache there.

The cache lives in the user's own cache folder (``~/.cache/cloudflow/digests``, under
``$XDG_CACHE_HOME`` if set, or ``$CLOUDFLOW_CACHE_DIR/digests``); it is ignored if that folder is
writable by anyone else. ``CLOUDFLOW_DIGEST_CACHE=0`` turns it off. Files under
:data:`DIGEST_CACHE_MIN_SIZE` are always hashed: that is faster than a look-up.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import errno
import hashlib
import io
import mmap
import os
import random
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudflow.exceptions import IntegrityError

#: The digest of files in new bundles.
ALGORITHM = "blake3"
#: Every digest a manifest may list, newest first.
ALGORITHMS = ("blake3", "sha256")

CACHE_ENV = "CLOUDFLOW_DIGEST_CACHE"
CACHE_DIR_ENV = "CLOUDFLOW_CACHE_DIR"
#: Files smaller than this are always hashed, never looked up in the digest cache: hashing them
#: is faster than a look-up.
DIGEST_CACHE_MIN_SIZE = 4 * 1024 * 1024
SETTLED_S = 2.0
#: How old a change must be on a file system whose timestamps carry sub-second parts: well above
#: the kernel's timestamp tick (1-10 ms), so a later write gets a later ctime.
SETTLED_FINE_S = 0.1
_CHUNK = 8 * 1024 * 1024
_WINDOW = 32 * 1024 * 1024  # a multiple of mmap.ALLOCATIONGRANULARITY
_MAX_ENTRIES = 4096
_MAX_AGE_S = 30 * 24 * 3600
_HOST = socket.gethostname()


def cache_dir() -> Path | None:
    """The folder of the digest cache, created if needed; None when off or not private."""
    if _turned_off(CACHE_ENV):
        return None
    if sys.platform == "win32":
        return None
    base = os.environ.get(CACHE_DIR_ENV)
    if base:
        folder = Path(base) / "digests"
    else:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        folder = Path(xdg) / "cloudflow" / "digests"
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        info = folder.stat()
    except OSError:
        return None
    if hasattr(os, "getuid") and (info.st_uid != os.getuid() or info.st_mode & 0o022):
        return None  # another user could write entries: do not trust any
    return folder


def _identity(info: os.stat_result, algorithm: str) -> str:
    key = f"{_HOST}\0{info.st_dev}\0{info.st_ino}\0{info.st_size}\0{info.st_mtime_ns}"
    return hashlib.sha256(f"{key}\0{info.st_ctime_ns}\0{algorithm}".encode()).hexdigest()[:40]


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino, a.st_size, a.st_mtime_ns, a.st_ctime_ns) == (
        b.st_dev,
        b.st_ino,
        b.st_size,
        b.st_mtime_ns,
        b.st_ctime_ns,
    )


def _lookup(folder: Path, info: os.stat_result, algorithm: str) -> str | None:
    try:
        with open(folder / _identity(info, algorithm), encoding="ascii") as f:
            digest = f.read(65).strip()
    except (OSError, UnicodeDecodeError):
        return None
    if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest):
        return digest
    return None


def _remember(folder: Path, info: os.stat_result, algorithm: str, digest: str) -> None:
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(digest + "\n")
        os.replace(tmp, folder / _identity(info, algorithm))
    except OSError:
        with contextlib.suppress(OSError, UnboundLocalError):
            os.unlink(tmp)
        return
    if random.random() < 1 / 64:  # pruning now and then is enough
        _prune(folder)


def _prune(folder: Path) -> None:
    """Drop entries older than a month, and the oldest beyond :data:`_MAX_ENTRIES`."""
    now = time.time()
    entries = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            with contextlib.suppress(OSError):
                entries.append((entry.stat().st_mtime, entry.path))
    entries.sort(reverse=True)
    for rank, (mtime, path) in enumerate(entries):
        if rank >= _MAX_ENTRIES or now - mtime > _MAX_AGE_S:
            with contextlib.suppress(OSError):
                os.unlink(path)


#: The process whose BLAKE3 hashes on all cores (the first to hash); see :func:`new_hasher`.
_POOL_OWNER: int | None = None


def new_hasher(algorithm: str = ALGORITHM) -> Any:
    """A hash object with ``update`` and ``hexdigest``; BLAKE3 hashes large inputs on all cores."""
    if algorithm == "blake3":
        import blake3

        global _POOL_OWNER
        if _POOL_OWNER is None:
            _POOL_OWNER = os.getpid()
        # BLAKE3's worker threads (a pool started on first use) do not survive fork(): a child
        # forked after its parent hashed on them waits forever for them on its first large
        # input. There, hash on the calling thread.
        threads = blake3.blake3.AUTO if os.getpid() == _POOL_OWNER else 1
        return blake3.blake3(max_threads=threads)
    if algorithm == "sha256":
        return hashlib.sha256()
    raise ValueError(f"Unknown digest algorithm {algorithm!r}; known: {list(ALGORITHMS)}")


FSYNC_ENV = "CLOUDFLOW_FSYNC"


def _turned_off(variable: str) -> bool:
    """Whether an on-by-default switch is set to 0, false, no or off."""
    return os.environ.get(variable, "1").strip().lower() in {"0", "false", "no", "off"}


def _fsync_path(path: str, directory: bool) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def make_durable(root: Path) -> None:
    """Flush every file and folder under ``root`` to the disk, before it is published.

    Without it a power loss soon after a save can leave a published bundle with empty or short
    files (the rename that publishes reaches the disk before the data). ``CLOUDFLOW_FSYNC=0``
    turns it off (a scratch store on a RAM disk, say). Files are flushed in parallel threads.
    """
    if _turned_off(FSYNC_ENV):
        return
    files: list[str] = []
    folders: list[str] = []
    for dirpath, _dirs, names in os.walk(root):
        folders.append(dirpath)
        files.extend(os.path.join(dirpath, n) for n in names)
    workers = min(8, max(1, len(files)))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda p: _fsync_path(p, False), files))
    for folder in reversed(folders):
        _fsync_path(folder, True)


def sync_folder(folder: Path) -> None:
    """Flush a folder's entries (a rename into it) to the disk; see :func:`make_durable`."""
    if not _turned_off(FSYNC_ENV):
        _fsync_path(str(folder), True)


def digest_bytes(data: bytes | memoryview, algorithm: str = ALGORITHM) -> str:
    """Digest of bytes already in memory (BLAKE3 splits large inputs across cores)."""
    h = new_hasher(algorithm)
    h.update(data)
    return str(h.hexdigest())


#: Flags that open a bundle's file without waiting and without following a link: a FIFO, a
#: device or a link put where a file was is refused (by :func:`open_regular`), never waited on.
READ_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)


def open_regular(path: str | os.PathLike[str]) -> int:
    """An open descriptor of the regular file ``path`` (never a FIFO, a device or a link).

    Opened non-blocking (a FIFO opened for reading otherwise waits for a writer, forever) and
    checked with ``fstat`` on that very descriptor, so nothing can be swapped in between.

    Raises:
        IntegrityError: ``path`` is not a regular file (a FIFO, a device, a folder, a link).
        OSError: It cannot be opened (missing, no permission).
    """
    try:
        fd = os.open(path, READ_FLAGS)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise IntegrityError(
                f"{os.fspath(path)!r} is a symbolic link; a bundle holds only regular files."
            ) from e
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise IntegrityError(
                f"{os.fspath(path)!r} is not a regular file ({_kind(mode)}); a bundle holds only "
                "regular files. Refusing to read it: copy the bundle again or save it again."
            )
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a file"


def read_regular(path: str | os.PathLike[str], limit: int, what: str) -> bytes:
    """The content of the regular file ``path``, refused if larger than ``limit`` bytes.

    Its size is taken from the open descriptor before anything is read, so a file that claims
    to be small and is not (or a sparse file of gigabytes) is never read whole.

    Raises:
        IntegrityError: Not a regular file, or larger than ``limit``; named as ``what``.
        OSError: It cannot be opened or read.
    """
    fd = open_regular(path)
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(fd).st_size
        if size > limit:
            raise IntegrityError(
                f"{what} {os.fspath(path)!r} has {size} bytes, more than the {limit} such a file "
                "ever holds: refusing to read it. The bundle is damaged or not a bundle."
            )
        data = f.read(limit + 1)
    if len(data) > limit:
        raise IntegrityError(f"{what} {os.fspath(path)!r} grew past {limit} bytes as it was read.")
    return data


def _hash_descriptor(fd: int, size: int, h: Any) -> None:
    """Feed the first ``size`` bytes of the open file ``fd`` to ``h`` (mapped in windows)."""
    if size >= _CHUNK:
        # Mapped, not read: no copy through a buffer, and BLAKE3 splits each window across
        # cores. Windows, not one mapping, so the process's resident size grows by one window.
        offset = 0
        while offset < size:
            length = min(_WINDOW, size - offset)
            with mmap.mmap(fd, length, access=mmap.ACCESS_READ, offset=offset) as m:
                h.update(m)
            offset += length
    else:
        h.update(os.pread(fd, size, 0) if size else b"")


def digest_descriptor(fd: int, algorithm: str = ALGORITHM) -> str:
    """Digest of the regular file open as ``fd`` (its size as ``fstat`` says now)."""
    h = new_hasher(algorithm)
    _hash_descriptor(fd, os.fstat(fd).st_size, h)
    return str(h.hexdigest())


def _hash_open_file(
    path: Path, algorithm: str = ALGORITHM
) -> tuple[str, os.stat_result, os.stat_result]:
    """Digest of a regular file, with its identity before and after reading it."""
    h = new_hasher(algorithm)
    with os.fdopen(open_regular(path), "rb") as f:
        before = os.fstat(f.fileno())
        if before.st_size >= _CHUNK:
            # Mapped, not read: no copy through a buffer, and BLAKE3 splits each window across
            # cores. Windows, not one mapping, so the process's resident size grows by one window.
            offset = 0
            while offset < before.st_size:
                length = min(_WINDOW, before.st_size - offset)
                with mmap.mmap(f.fileno(), length, access=mmap.ACCESS_READ, offset=offset) as m:
                    h.update(m)
                offset += length
        else:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        after = os.fstat(f.fileno())
    return str(h.hexdigest()), before, after


def known_digest(path: Path, algorithm: str = ALGORITHM) -> str | None:
    """The digest the cache holds for a file as it is now (unchanged since it was hashed)."""
    folder = cache_dir()
    if folder is None:
        return None
    try:
        info = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode) or info.st_size < DIGEST_CACHE_MIN_SIZE:
        return None
    return _lookup(folder, info, algorithm)


def remember_proven(paths: Mapping[Path, str], algorithm: str = ALGORITHM) -> None:
    """Record the digests of files whose content the caller has just proven (hashed as it was
    downloaded, or found in the cache under its identity before a hard link changed its ctime).

    Waits until their last change is settled, as an entry the cache makes itself must be; where
    timestamps are whole seconds that would take seconds, and nothing is recorded.
    """
    folder = cache_dir()
    if folder is None or not paths:
        return
    infos = {}
    for path, digest in paths.items():
        with contextlib.suppress(OSError):
            info = os.stat(path)
            if stat.S_ISREG(info.st_mode) and info.st_size >= DIGEST_CACHE_MIN_SIZE:
                infos[path] = (info, digest)
    if not infos or any(i.st_ctime_ns % 1_000_000_000 == 0 for i, _ in infos.values()):
        return
    newest = max(i.st_ctime_ns for i, _ in infos.values())
    wait = SETTLED_FINE_S - (time.time_ns() - newest) / 1e9
    if wait > 0:
        time.sleep(wait + 0.005)
    for path, (before, digest) in infos.items():
        with contextlib.suppress(OSError):
            info = os.stat(path)
            if _same_file(before, info) and _settled(info.st_ctime_ns):
                _remember(folder, info, algorithm, digest)


def digest_file(path: Path, *, algorithm: str = ALGORITHM, folder: Path | None = None) -> str:
    """Digest of one file, from the cache when its identity is known (``folder``)."""
    if folder is not None:
        with contextlib.suppress(OSError):
            info = os.stat(path)
            if stat.S_ISREG(info.st_mode) and info.st_size >= DIGEST_CACHE_MIN_SIZE:
                cached = _lookup(folder, info, algorithm)
                if cached is not None:
                    return cached
    digest, before, after = _hash_open_file(path, algorithm)
    # Only a file that did not change while it was read, and had not changed for a while before,
    # gets an entry (see the module docstring).
    if (
        folder is not None
        and before.st_size >= DIGEST_CACHE_MIN_SIZE
        and _same_file(before, after)
        and _settled(after.st_ctime_ns)
    ):
        _remember(folder, after, algorithm, digest)
    return digest


def _settled(ctime_ns: int) -> bool:
    """Whether a file's last change is old enough that any new one gets a later ctime.

    Whole-second ctimes mean a file system with one-second timestamps: wait :data:`SETTLED_S`.
    Otherwise timestamps follow the kernel tick, and :data:`SETTLED_FINE_S` is plenty: a large
    file written early in a save is usually past that by the time the save hashes it.
    """
    age_s = (time.time_ns() - ctime_ns) / 1e9
    coarse = ctime_ns % 1_000_000_000 == 0
    return age_s > (SETTLED_S if coarse else SETTLED_FINE_S)


def digest_files(
    paths: Sequence[Path], *, algorithm: str = ALGORITHM, use_cache: bool = True
) -> list[str]:
    """Digests of several files, hashed in parallel threads (both hashes release the GIL)."""
    folder = cache_dir() if use_cache else None
    if len(paths) <= 1:
        return [digest_file(p, algorithm=algorithm, folder=folder) for p in paths]
    workers = min(4, len(paths), os.cpu_count() or 1) or 1
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: digest_file(p, algorithm=algorithm, folder=folder), paths))


# --- files a save writes itself, digested as they are written ---------------------------------
#
# A save signs the digests of its files. Those it writes itself (code.pkl, the pickles of its
# models, code tables, the runtime wheel, copied data files, the environment files) are hashed
# from the very bytes handed to the file as they go out, never read back from the staging folder
# before signing. Each is recorded with the identity of the file it went into; the seal takes the
# digest from this record (:func:`written_digests`). A file whose identity changed since it was
# written is hashed again, and if its content is no longer what this save wrote, the save fails.


@dataclass(frozen=True)
class Written:
    """A file this save wrote: the digest and size of the bytes written, and the file's identity
    (device, inode, size, mtime_ns) just after the last of them."""

    digest: str
    size: int
    identity: tuple[int, int, int, int]
    #: The file's ctime just after the last byte: a digest is cached only while it stays so.
    changed_ns: int


_RECORD: contextvars.ContextVar[dict[str, Written] | None] = contextvars.ContextVar(
    "cloudflow_written_files", default=None
)


def _file_identity(info: os.stat_result) -> tuple[int, int, int, int]:
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


@contextlib.contextmanager
def recording() -> Iterator[dict[str, Written]]:
    """Record the files written by :func:`open_hashed`, :func:`write_hashed` and
    :func:`copy_hashed` in this context (one save); a save inside another shares its record."""
    record = _RECORD.get()
    if record is not None:
        yield record
        return
    record = {}
    token = _RECORD.set(record)
    try:
        yield record
    finally:
        _RECORD.reset(token)


class HashedWriter(io.BufferedWriter):
    """A file open for writing that hashes every byte written, in order, as it is written.

    On close the digest, the byte count and the file's identity go to the current record (see
    :func:`recording`); outside a save nothing is recorded.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(io.FileIO(path, "wb"))
        self._path = os.path.abspath(path)
        self._hasher = new_hasher()
        self._size = 0
        self._failed = False

    def write(self, data: Any) -> int:
        written = super().write(data)
        view = memoryview(data).cast("B")
        self._hasher.update(view[:written] if written != len(view) else view)
        self._size += written
        return written

    def __exit__(self, *exc: Any) -> None:
        self._failed = exc[0] is not None
        super().__exit__(*exc)

    def close(self) -> None:
        if self.closed:
            return
        try:
            self.flush()
            info = os.fstat(self.fileno())
        finally:
            super().close()
        record = _RECORD.get()
        if record is not None and not self._failed:
            record[self._path] = Written(
                str(self._hasher.hexdigest()), self._size, _file_identity(info), info.st_ctime_ns
            )


def open_hashed(path: str | os.PathLike[str]) -> HashedWriter:
    """Open ``path`` for writing like ``open(path, "wb")``, hashing what is written (above)."""
    return HashedWriter(path)


def write_hashed(path: str | os.PathLike[str], data: bytes | memoryview) -> int:
    """Write ``data`` into ``path`` (created or truncated), digested as written; its size."""
    with open_hashed(path) as f:
        f.write(data)
    return len(data)


def copy_hashed(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> int:
    """Copy the file ``source`` to ``target``, hashing each chunk as it is written; its size.

    The digest is of the bytes written to ``target``, whatever ``source`` does meanwhile.
    """
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    size = 0
    with open(source, "rb") as src, open_hashed(target) as dst:
        while n := src.readinto(buffer):
            dst.write(view[:n])
            size += n
    return size


def written_digests(paths: Mapping[str, Path]) -> dict[str, str]:
    """Digests of the files among ``paths`` (relative name -> path) that this save wrote.

    A file still the one that was written (same device, inode, size and mtime) is not read: its
    digest is the one computed as it was written. One whose identity changed is hashed again (a
    save may replace a file it wrote by a link to the store's copy of the same bytes, see
    :mod:`cloudflow.store.blobs`); files this save did not write are left out.

    Raises:
        IntegrityError: A file this save wrote no longer holds what it wrote: something else
            wrote into the staging folder, which only this process should write.
    """
    record = _RECORD.get()
    out: dict[str, str] = {}
    if not record:
        return out
    cache: list[Path | None] = []
    for rel, path in paths.items():
        entry = record.get(os.path.abspath(path))
        if entry is None:
            continue
        try:
            info = os.lstat(path)
        except OSError:
            info = None
        if (
            info is not None
            and stat.S_ISREG(info.st_mode)
            and _file_identity(info) == entry.identity
            and info.st_size == entry.size
        ):
            out[rel] = entry.digest
            if (
                info.st_size >= DIGEST_CACHE_MIN_SIZE
                and info.st_ctime_ns == entry.changed_ns
                and _settled(info.st_ctime_ns)
            ):
                # Unchanged since it was written, and settled: as a file hashed once settled
                # would be, it is remembered for the loads that follow (see the module docstring).
                if not cache:
                    cache.append(cache_dir())
                if cache[0] is not None:
                    _remember(cache[0], info, ALGORITHM, entry.digest)
            continue
        try:
            now = digest_file(path)
        except (OSError, IntegrityError) as e:
            now = f"unreadable ({e})"
        if now != entry.digest:
            raise IntegrityError(
                f"The file {rel!r} was changed after this save wrote it (in {str(path)!r}): "
                "another process with this user's rights writes into the save's private "
                "staging folder. Nothing was saved. Find what writes there and save again."
            )
        out[rel] = entry.digest
    return out
