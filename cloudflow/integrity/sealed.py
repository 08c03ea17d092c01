"""Under a key, each model's files reach its library from what was checked, never by name.

Libraries open their files by path (``keras.saving.load_model``, ``onnx.load_model``,
``xgboost.Booster.load_model``, ``from_pretrained``, ``safetensors``), some after the check of
the bundle and, for a Keras model with a ``Lambda`` layer, with ``safe_mode=False``: whoever
can write the bundle's folder could put another file under the checked one's name in between.
So a signed load hands each flavor a private folder (``mkdtemp``: mode 700, this user's) that
holds, under the same names:

- a copy of each file, written as it is read from the descriptor it was opened with (no link
  followed, never a FIFO) and hashed on the way; the folder is used only if every copy matches
  its digest, so what the library reads is what was checked, whatever happens to the bundle;
- for weights in safetensors (parsed without running code, often gigabytes), a link to the
  open descriptor itself (``/proc/<pid>/fd/<n>``, Linux), hashed through that descriptor: the
  library maps the very file that was checked, with no copy. A change made *in place* to it
  by someone who can write the file stays out of reach, as the README says.

Files whose loading runs code through pickle (``.pkl``, ``.marshal``, ``.skops``) are not
placed here: flavors read them through the load context, from the bytes checked in memory.
Unsigned loads keep reading the bundle's own files (checked by digest against accidents).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cloudflow.exceptions import IntegrityError, StoreError
from cloudflow.integrity import digests as _digests
from cloudflow.integrity.manifest import (
    DEFERRABLE_SUFFIXES,
    READ_ONCE_SUFFIXES,
    Manifest,
    VerifiedBytes,
    file_digest,
)

_CHUNK = 4 * 1024 * 1024


def sealed_files(manifest: Manifest, model_path: str) -> list[str]:
    """The files of a model's folder that :func:`sealed_folder` checks (all but pickles)."""
    prefix = model_path.rstrip("/") + "/"
    return sorted(
        rel
        for rel in manifest.files
        if rel.startswith(prefix) and not rel.endswith(READ_ONCE_SUFFIXES)
    )


@contextlib.contextmanager
def sealed_folder(
    data_dir: Path, manifest: Manifest, model_path: str, verified: VerifiedBytes
) -> Iterator[Path]:
    """A private folder holding the checked files of the model at ``model_path``.

    ``verified`` learns that paths under it stand for the model's folder, so the flavor's
    reads through the load context still get the checked bytes. Removed (and its descriptors
    closed) when the block ends: a library that mapped a file keeps its mapping.

    Raises:
        IntegrityError: A file is not a regular file, or does not match its size or digest.
    """
    proc_fd = Path(f"/proc/{os.getpid()}/fd")  # this process's, even after a fork
    fds: list[int] = []
    try:
        root = Path(tempfile.mkdtemp(prefix="cloudflow-sealed-"))
    except OSError as e:
        raise _no_room(model_path, e) from e
    private = root / model_path
    try:
        private.mkdir(parents=True)
        for rel in sealed_files(manifest, model_path):
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = _digests.open_regular(data_dir / rel)
            except OSError as e:
                raise IntegrityError(
                    f"The file {rel!r} of the bundle at {str(data_dir.parent)!r} cannot be read "
                    f"({e.strerror}). Copy the bundle again or save it again."
                ) from e
            fds.append(fd)
            if rel.endswith(DEFERRABLE_SUFFIXES) and proc_fd.is_dir():
                _check_descriptor(fd, data_dir, rel, manifest)
                os.symlink(proc_fd / str(fd), target)
            else:
                try:
                    _copy_checked(fd, target, data_dir, rel, manifest)
                except OSError as e:
                    raise _no_room(model_path, e) from e
        with verified.aliased(private, data_dir / model_path):
            yield private
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(root, ignore_errors=True)


def _no_room(model_path: str, error: OSError) -> StoreError:
    return StoreError(
        f"A signed load copies the checked files of {model_path!r} into a private folder of "
        f"{tempfile.gettempdir()!r}, which failed ({error.strerror}). Give it room, or point "
        "TMPDIR at a folder of your own with room, and load again."
    )


def _refuse(data_dir: Path, rel: str, algorithm: str) -> IntegrityError:
    return IntegrityError(
        f"The file {rel!r} of the bundle at {str(data_dir.parent)!r} does not match the "
        f"{algorithm} digest in its manifest: it was changed after saving. Do not load it; save "
        "the bundle again from its source."
    )


def _check_descriptor(fd: int, data_dir: Path, rel: str, manifest: Manifest) -> None:
    """Hash an open file through its descriptor against the manifest."""
    entry = manifest.files[rel]
    algorithm, expected = file_digest(entry)
    if os.fstat(fd).st_size != entry["size"]:
        raise _refuse(data_dir, rel, algorithm)
    if _digests.digest_descriptor(fd, algorithm) != expected:
        raise _refuse(data_dir, rel, algorithm)


def _copy_checked(fd: int, target: Path, data_dir: Path, rel: str, manifest: Manifest) -> None:
    """Copy an open file into ``target`` (new, mode 600), hashing what is written."""
    entry = manifest.files[rel]
    algorithm, expected = file_digest(entry)
    hasher = _digests.new_hasher(algorithm)
    size = 0
    out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        while size <= entry["size"]:
            chunk = os.read(fd, _CHUNK)
            if not chunk:
                break
            hasher.update(chunk)
            size += len(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(out, view) :]
    finally:
        os.close(out)
    if size != entry["size"] or hasher.hexdigest() != expected:
        raise _refuse(data_dir, rel, algorithm)
