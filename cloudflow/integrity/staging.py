"""Private staging folders: where a save writes a bundle before it publishes it.

A team store is a shared folder (a setgid group, umask 002): every member can rename, replace or
write into what the others leave group-writable there. A save writes its bundle into a staging
folder, hashes its files, signs the digests and publishes the folder with one rename. If another
member could swap that folder (rename it aside and put an open one of the same name in its
place) or write into it, the save would hash, sign and publish the other member's files.

So a staging folder is private and reached only through its descriptor:

- It is made by ``mkdtemp`` (mode 700), opened with ``O_NOFOLLOW | O_DIRECTORY``, and checked by
  descriptor: a folder, owned by this user, mode 700, and the very folder the name led to just
  after it was made. Nobody else can create, replace or change anything inside it.
- Every path of the save goes through the descriptor, ``/proc/<pid>/fd/<n>/...`` on Linux: the
  kernel resolves it to the folder the descriptor holds, whatever was renamed or put in place of
  it or of any of its parents since. Libraries that write by path (``save_pretrained``,
  safetensors, Keras, XGBoost, MLflow's own files) write there too, so every byte a save hashes
  is a byte only this process could have written.
- The bundle is a folder inside it, published by a rename from the descriptor's path: what gets
  published is the folder this save made, never one put in its place. The published folder has
  the store's usual mode (umask): only the staging folder around it was private.

Where ``/proc/<pid>/fd`` does not exist (macOS) the folder is still private (mode 700) and
checked, but reached by its name; on Windows it is made by ``mkdtemp`` and used by its name. A
parent folder other users can write to is then not covered (see the README's threat table).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import sys
import tempfile
import time
from pathlib import Path

from cloudflow.exceptions import StoreError
from cloudflow.integrity import digests as _digests

#: The name of the bundle inside a staging folder, renamed to its final place to publish it.
BUNDLE = "bundle"
#: A staging folder this old belongs to a save that died: the next save there removes it.
STALE_STAGING_S = 24 * 3600
#: How often :func:`inside` tries while concurrent saves remove the parent it creates.
_TRIES = 200


def _through_descriptor(fd: int) -> Path | None:
    if not sys.platform.startswith("linux"):
        return None
    path = Path(f"/proc/{os.getpid()}/fd/{fd}")
    try:
        return path if os.path.samestat(os.stat(path), os.fstat(fd)) else None
    except OSError:
        return None


class PrivateFolder:
    """A staging folder of this process's own (see the module docstring).

    Attributes:
        path: The folder, reached through its descriptor where the system allows it.
        name: The folder's name in its parent (what other processes see).
    """

    def __init__(self, parent: Path, prefix: str = "tmp", suffix: str = "") -> None:
        try:
            made = tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent)
        except (FileNotFoundError, FileExistsError):  # the caller retries (see inside())
            raise
        except OSError as e:
            raise StoreError(f"Cannot write to {str(parent)!r}: {e.strerror}.") from e
        self.name = Path(made)
        self.path = self.name
        self._fd = -1
        self._closed = False
        #: Remove the parent at close if it is then empty (see :func:`inside`).
        self.remove_empty_parent = False
        if os.name == "nt":  # folders cannot be opened as descriptors there: by name only
            return
        flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
        try:
            self._fd = os.open(made, flags)
        except OSError as e:
            raise self._swapped(f"it cannot be opened ({e.strerror})") from e
        try:
            self._check(made)
        except BaseException:
            os.close(self._fd)
            raise
        self.path = _through_descriptor(self._fd) or self.name

    def _check(self, made: str) -> None:
        info = os.fstat(self._fd)
        if not stat.S_ISDIR(info.st_mode):
            raise self._swapped("it is not a folder")
        if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
            raise self._swapped(f"it belongs to uid {info.st_uid}")
        if os.name != "nt" and stat.S_IMODE(info.st_mode) & 0o077:
            raise self._swapped(f"its mode is {stat.filemode(info.st_mode)}")
        try:
            named = os.lstat(made)
        except OSError as e:
            raise self._swapped("its name leads nowhere") from e
        if not os.path.samestat(named, info):
            raise self._swapped("its name leads to another folder")

    def _swapped(self, why: str) -> StoreError:
        return StoreError(
            f"The staging folder {str(self.name)!r} that this save just made is not its own: "
            f"{why}. Another user of the store can rename or replace what it writes there; "
            "nothing was saved. Save into a folder only you can write to, or ask the store's "
            "owner to check who changes it."
        )

    def is_named(self, path: Path) -> bool:
        """Whether ``path`` (looked up by name, links not followed) is this very folder."""
        if self._fd < 0:
            return path == self.name
        try:
            return os.path.samestat(os.lstat(path), os.fstat(self._fd))
        except OSError:
            return False

    def publish(self, inner: Path, destination: Path) -> None:
        """Publish ``inner`` (a folder inside this one) as ``destination``: every byte of it
        on the disk first, then one rename, then the rename itself on the disk.

        A power loss at any point leaves either no bundle at ``destination`` or a whole one,
        never one with unwritten files. After the rename the folder at ``destination`` is
        checked to be the one this save made.

        Raises:
            StoreError: Something else is at ``destination`` right after the rename.
            OSError: The rename failed (``destination`` exists, say); nothing was published.
        """
        _digests.make_durable(inner)
        self._rename(inner, destination)
        _digests.sync_folder(destination.parent)

    def _rename(self, inner: Path, destination: Path) -> None:
        if self._fd < 0:
            os.rename(inner, destination)
            return
        flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(inner, flags)
        try:
            os.rename(inner, destination)
            try:
                ours = os.path.samestat(os.lstat(destination), os.fstat(fd))
            except OSError:
                ours = False
            if not ours:
                raise StoreError(
                    f"The folder at {str(destination)!r} is not the bundle this save wrote: it "
                    "was replaced right after it was published. Another user of the store "
                    "changes it; a signed load refuses what they put there. Check who can "
                    "write to the store, and save again."
                )
        finally:
            os.close(fd)

    def close(self) -> None:
        """Delete what the folder holds, and the folder itself if its name still leads to it."""
        if self._closed:
            return
        self._closed = True
        try:
            self._remove()
        finally:
            if self.remove_empty_parent:
                with contextlib.suppress(OSError):  # other saves may be staging there right now
                    self.name.parent.rmdir()

    def _remove(self) -> None:
        if self._fd < 0:
            shutil.rmtree(self.name, ignore_errors=True)
            return
        if self.path != self.name:
            with contextlib.suppress(OSError):
                for entry in os.listdir(self.path):
                    inside = self.path / entry
                    if os.path.isdir(inside) and not os.path.islink(inside):
                        shutil.rmtree(inside, ignore_errors=True)
                    else:
                        os.unlink(inside)
            if self.is_named(self.name):
                with contextlib.suppress(OSError):
                    os.rmdir(self.name)
        elif self.is_named(self.name):
            shutil.rmtree(self.name, ignore_errors=True)
        os.close(self._fd)
        self._fd = -1

    def __enter__(self) -> PrivateFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- making one: beside a bundle's folder, inside a store's shared folder, or temporary ---------


def remove_stale(folder: Path, pattern: str) -> None:
    """Delete staging folders a killed save left behind, once they are a day old.

    A save in progress touches its staging folder continuously, and none takes a day; what is
    older belongs to a process that died (SIGKILL, power loss) and was never published.
    """
    now = time.time()
    try:
        candidates = list(folder.glob(pattern))
    except OSError:
        return
    for candidate in candidates:
        try:
            if candidate.is_dir() and now - candidate.stat().st_mtime > STALE_STAGING_S:
                shutil.rmtree(candidate, ignore_errors=True)
        except OSError:
            continue


def beside(path: Path) -> PrivateFolder:
    """A private staging folder beside ``path`` (same file system: publishing is one rename).

    The bundle is written into its :data:`BUNDLE` folder, reached through the staging folder's
    descriptor. Stale ones of ``path`` are removed first.
    """
    return _make(path.parent, prefix=f".{path.name}.cloudflow-", suffix=".tmp")


def inside(parent: Path) -> PrivateFolder:
    """A private staging folder inside ``parent``, in a store other processes write to as well.

    Another save that just finished may remove ``parent`` when it is empty: between this save's
    ``mkdir`` and ``mkdtemp`` (FileNotFoundError), or inside ``mkdir`` itself, after it found the
    folder present and before it checked that it is a folder (pathlib then raises
    FileExistsError). Either way: create it again and retry; each try takes microseconds, and
    under load five in a row were seen to lose that race, so it tries many times. Other users of
    a team store can rename ``parent``'s entries: the folder is reached through its descriptor.
    At close, ``parent`` is removed too if nothing else is in it.
    """
    refuse_link(parent, "staging folder")
    for attempt in range(_TRIES):
        try:
            parent.mkdir(parents=True, exist_ok=True)
            return _make(parent, shared=True, clean=attempt == 0)
        except (FileNotFoundError, FileExistsError):
            continue
        except StoreError:
            raise
        except OSError as e:
            raise StoreError(
                f"Cannot write to the artifact folder {str(parent.parent)!r}: {e.strerror}."
            ) from e
    raise StoreError(f"Cannot create a staging folder in {str(parent)!r}; try the save again.")


def temporary() -> PrivateFolder:
    """A private staging folder in the system's temporary folder (a bundle to upload)."""
    return _make(Path(tempfile.gettempdir()), prefix="cloudflow-", clean=False)


def _make(
    parent: Path, prefix: str = "tmp", suffix: str = "", *, shared: bool = False, clean: bool = True
) -> PrivateFolder:
    """The one way a staging folder is made: stale ones of the same name removed, then made."""
    if clean:
        remove_stale(parent, f"{prefix}*{suffix}")
    folder = PrivateFolder(parent, prefix=prefix, suffix=suffix)
    folder.remove_empty_parent = shared
    return folder


def refuse_link(folder: Path, what: str) -> None:
    """Refuse a store folder that is a symbolic link: never follow a link out of the store.

    Raises:
        StoreError: ``folder`` is a link.
    """
    if folder.is_symlink():
        raise StoreError(
            f"The store's {what} {str(folder)!r} is a symbolic link (to "
            f"{os.readlink(folder)!r}): cloudflow never follows a link out of a store, where it "
            "deletes files. Remove the link (rm, not rm -r) and save again; cloudflow makes the "
            "folder itself."
        )
