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
from pathlib import Path

from cloudflow.exceptions import StoreError

#: The name of the bundle inside a staging folder, renamed to its final place to publish it.
BUNDLE = "bundle"


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
        except (FileNotFoundError, FileExistsError):  # the caller retries (see _api)
            raise
        except OSError as e:
            raise StoreError(f"Cannot write to {str(parent)!r}: {e.strerror}.") from e
        self.name = Path(made)
        self.path = self.name
        self._fd = -1
        self._closed = False
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
        """Rename ``inner`` (a folder inside this one) to ``destination``, and check that the
        folder now there is the one this save made.

        Raises:
            StoreError: Something else is at ``destination`` right after the rename.
        """
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
