"""Transitional: the check of ``files=``, until every argument check moves to one module.

Data files are saved by :mod:`cloudflow.capture.files` and found at load by
:mod:`cloudflow.runtime.files`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from cloudflow.exceptions import BundleArgumentError
from cloudflow.runtime.files import bundle_file  # noqa: F401  # transitional: cloudflow.runtime.files
from cloudflow.runtime.files import path_text as _fspath

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


# --- checking the argument (before anything is written) ----------------------------------------


def check_files(files: object) -> dict[str, Path]:
    """``files=`` as name -> absolute path of an existing file or folder.

    A list of paths is accepted too: each is named after its last part.

    Raises:
        BundleArgumentError: Not a dict of names to paths, a bad name, or a path that is missing.
    """
    if files is None:
        return {}
    if isinstance(files, str | os.PathLike):
        raise BundleArgumentError(
            f"files must be a dict of name -> path, got the single path {os.fspath(files)!r}. "
            f"Pass e.g. files={{'labels': {os.fspath(files)!r}}}."
        )
    if not isinstance(files, Mapping):
        try:
            items = list(files)  # type: ignore[call-overload]
        except TypeError:
            raise BundleArgumentError(
                f"files must be a dict of name -> path, got {type(files).__name__}. Pass e.g. "
                "files={'labels': 'data/labels.json'}."
            ) from None
        files = {Path(os.fspath(p)).name: p for p in items if isinstance(p, str | os.PathLike)}
        if len(files) != len(items):
            raise BundleArgumentError(
                "files must be a dict of name -> path (or a list of paths); it holds a value that "
                "is not a path. Pass e.g. files={'labels': 'data/labels.json'}."
            )
    out: dict[str, Path] = {}
    for name, value in files.items():
        if not isinstance(name, str) or not name or not set(name) <= _NAME_CHARS or name[0] == ".":
            raise BundleArgumentError(
                f"files: {name!r} is not a valid name. Use letters, digits, '_', '-' and '.' "
                "(not first), such as 'labels' or 'vocab.txt'."
            )
        text = _fspath(value)
        if text is None:
            raise BundleArgumentError(
                f"files[{name!r}] must be a path (str or pathlib.Path), got "
                f"{type(value).__name__}. Pass e.g. files={{{name!r}: 'data/{name}.json'}}."
            )
        path = Path(os.path.abspath(os.path.expanduser(text)))
        try:
            mode = path.stat().st_mode
        except OSError as e:
            raise BundleArgumentError(
                f"files[{name!r}] is {text!r}, which cannot be read here ({e.strerror}; resolved "
                f"from the working directory {os.getcwd()!r}). Give the path of an existing file "
                "or folder."
            ) from None
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise BundleArgumentError(
                f"files[{name!r}] is {text!r}, which is neither a file nor a folder. Give a "
                "regular file or a folder."
            )
        out[name] = path
    return out
