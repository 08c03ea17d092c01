"""Large bundle files shared by hard link between the bundles of a local store.

A store where every run logs the same base model would otherwise hold one copy of its weights
per run. Here each large file of a bundle logged into a local store is also entered, by hard
link, in the experiment's blob folder (``<artifact location>/.cloudflow-blobs/<digest>``). A
later save that would write a file with the same content links that blob into its bundle
instead of writing a second copy; the store grows by the size of the new manifest and code.

For weights the digest of the file is computed from the tensors in memory before anything is
written (see :func:`cloudflow.flavors._torch.write_safetensors`), so a repeated save of an
unchanged model neither serializes nor writes its weights. Other large files (pickles) are
written, hashed, and then replaced by a link when the store already has their content.

Why this is safe:

- Bundle files are never changed after a save, and shared files are made read-only, so that an
  edit in place does not reach every bundle that shares it by accident.
- Each bundle holds its own link to the file: deleting a run or a bundle (``mlflow gc``, or by
  hand) removes its links only, and every other bundle keeps its file. A blob that no bundle
  links any more (one link left, its own) is removed by the next save into that experiment.
- The blob's name is never trusted as its content: every load checks each file of a bundle
  against the digest in the bundle's manifest, so a damaged shared file shows, in every bundle
  that holds it.

Where hard links are not possible (another file system, a store on a network share that has
none), files are written as they were: sharing is an optimization, never a requirement.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cloudflow.integrity.staging import refuse_link

_logger = logging.getLogger("cloudflow")

BLOB_DIR = ".cloudflow-blobs"
#: Files smaller than this are always written into the bundle, never linked to the store's
#: shared copy: a link saves less than it costs. (Not the remote area's threshold,
#: :data:`cloudflow.store.remote.AREA_MIN_SIZE`, nor the digest cache's.)
LINK_MIN_SIZE = 1024 * 1024
_READ_ONLY = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH


@dataclass
class SharedFileLinks:
    """One save's links to the store's shared files: the files of the save whose digests are
    known, the blob folder they may share, and the blobs the save entered.

    Not :class:`cloudflow._files.SavedFiles` (the user's data files a bundle carries).
    """

    blobs: Path | None
    #: Absolute path of a file of the bundle -> its digest, computed while it was written.
    known: dict[Path, str] = field(default_factory=dict)
    #: Blobs this save entered, removed again if the save fails.
    created: list[Path] = field(default_factory=list)
    #: Bytes of the bundle that are links to files the store already held.
    linked_bytes: int = 0

    def _blob(self, digest: str) -> Path | None:
        if self.blobs is None or not digest.isalnum():
            return None
        return self.blobs / digest

    def link_existing(
        self, digest: str, size: int, target: Path, *, min_size: int = LINK_MIN_SIZE
    ) -> bool:
        """Make ``target`` (not yet existing) a link to the store's copy of this content.

        Returns False, with nothing done, when the store has no such file or cannot link.
        """
        blob = self._blob(digest)
        if blob is None or size < min_size:
            return False
        try:
            _link_blob(blob, size, target, digest)
        except OSError:
            return False
        self.known[Path(os.path.abspath(target))] = digest
        self.linked_bytes += size
        return True

    def adopt(self, path: Path, digest: str, size: int, *, min_size: int = LINK_MIN_SIZE) -> None:
        """Share a file this save wrote: enter it as a blob, or swap it for the existing one."""
        self.known[Path(os.path.abspath(path))] = digest
        blob = self._blob(digest)
        if blob is None or size < min_size:
            return
        try:
            blob.parent.mkdir(exist_ok=True)
            os.link(path, blob)
        except FileExistsError:
            self._swap_for(blob, path, size, digest)
            return
        except OSError as e:  # no hard links here: the bundle keeps its own file
            _logger.debug("Cannot share %s through %s: %s", path, blob, e)
            return
        self.created.append(blob)
        if os.name != "nt":  # on Windows a read-only file cannot be deleted
            with contextlib.suppress(OSError):
                os.chmod(path, _READ_ONLY)

    def _swap_for(self, blob: Path, path: Path, size: int, digest: str) -> None:
        """Replace a file just written by a link to the store's file of the same content.

        A store's file that is not that content (damaged since it was entered) is replaced by
        the file just written, so the next save shares a sound copy; this bundle keeps its own.
        """
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.link")
        try:
            _link_blob(blob, size, tmp, digest)
            os.replace(tmp, path)
        except DamagedBlobError:
            _logger.warning(
                "The store's shared copy %s does not match its name (damaged); it is replaced by "
                "the file this save wrote. Bundles that linked the damaged copy fail their "
                "integrity check: save them again.",
                blob,
            )
            with contextlib.suppress(OSError):
                os.link(path, tmp)
                os.replace(tmp, blob)
            return
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            _logger.debug("Cannot link %s to %s: %s", path, blob, e)
            return
        self.linked_bytes += size

    def discard_created(self) -> None:
        """After a failed save: remove the blobs it entered that no bundle links."""
        for blob in self.created:
            with contextlib.suppress(OSError):
                if os.stat(blob).st_nlink == 1:
                    os.unlink(blob)
        if self.blobs is not None:
            with contextlib.suppress(OSError):
                self.blobs.rmdir()  # only if empty


class DamagedBlobError(OSError):
    """A shared file whose content is not the digest it is named by."""


def _link_blob(blob: Path, size: int, target: Path, digest: str) -> None:
    """Hard-link ``blob`` as ``target`` (which must not exist) if it holds content ``digest``.

    The blob is hashed first (no cache: a save never publishes a file it has not proven; BLAKE3
    reads 400 MB in about 0.05 s on two cores). The link is made from the very file hashed.

    Raises:
        DamagedBlobError: The blob is not that content.
        OSError: The blob is missing, not a regular file of that size, or cannot be linked.
    """
    from cloudflow.integrity import digests as _digests

    info = os.lstat(blob)
    if not stat.S_ISREG(info.st_mode) or info.st_size != size:
        raise OSError(f"{blob} is not a file of {size} bytes")
    os.link(blob, target, follow_symlinks=False)
    try:
        if _digests.digest_files([target], use_cache=False)[0] != digest:
            raise DamagedBlobError(f"{blob} does not hold the content {digest}")
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(target)
        raise


_CURRENT: contextvars.ContextVar[SharedFileLinks | None] = contextvars.ContextVar(
    "cloudflow_save_files", default=None
)


def current() -> SharedFileLinks | None:
    """The files of the save in progress in this thread, if any."""
    return _CURRENT.get()


@contextlib.contextmanager
def saving(blobs: Path | None) -> Iterator[SharedFileLinks]:
    """Track the files of one save; share large ones through ``blobs`` (None: do not share)."""
    files = SharedFileLinks(blobs)
    token = _CURRENT.set(files)
    try:
        yield files
    except BaseException:
        files.discard_created()
        raise
    finally:
        _CURRENT.reset(token)


def blob_folder(artifact_location: Path) -> Path:
    """The blob folder of an experiment whose artifacts are in a local folder.

    Raises:
        StoreError: The folder is a symbolic link.
    """
    folder = artifact_location / BLOB_DIR
    refuse_link(folder, "shared-file folder")
    return folder


def remove_orphans(blobs: Path) -> tuple[int, int]:
    """Remove the blobs no bundle links any more (their only link is the blob itself).

    Returns the number of files removed and the bytes freed.
    """
    removed = freed = 0
    try:
        entries = list(os.scandir(blobs))
    except OSError:
        return 0, 0
    for entry in entries:
        with contextlib.suppress(OSError):
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(info.st_mode) and info.st_nlink == 1:
                os.unlink(entry.path)
                removed += 1
                freed += info.st_size
    return removed, freed
