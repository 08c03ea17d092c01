"""Data files a predict function reads at call time, carried in the bundle (``files=``).

At save, each ``files`` entry (a file or a folder) is copied into ``cloudflow/files/``. An entry
inside your project (a folder on ``sys.path`` or an editable install that holds your modules) is
placed as it sits there, under ``files/tree-<n>/``, the same relative path as from that folder;
anything else under ``files/named/<name>/``. The manifest lists every copy with its digest, as
it lists models.

At load the saved paths lead to the copies, without the code knowing where the bundle lives:

- :func:`bundle_file` (public): the bundled copy of a path (or entry name) inside a loaded bundle,
  the path itself when the function runs unsaved;
- the builtin ``open`` of the bundle's code maps a saved path (absolute, relative to the saving
  working directory, or inside a bundled folder) to its copy, for reads;
- path values the code holds (module globals, closure cells, defaults, constants; ``str`` or
  :mod:`pathlib` paths) that name a bundled file or folder by absolute path or by a path
  relative to the saving working directory (a string only if shaped like a path:
  ``vocab.txt``, ``data/labels``), lie inside one, or are a folder of your project above one,
  are rewritten to the copies when the code is loaded, so any reader finds them (``os.path``,
  ``numpy.load``, a C library's own file loader);
- captured modules get a ``__file__`` inside their project's copy, so
  ``Path(__file__).parent / "labels.json"`` computed at call time finds the copy.

Paths are never written into the bundle: the manifest keeps salted hashes of the saved paths.
"""

from __future__ import annotations

import builtins
import hashlib
import os
import pathlib
import sys
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cloudflow.exceptions import BundleArgumentError, DataFileError

FILES_DIR = "files"
TREE_PREFIX = "tree-"
NAMED_DIR = "named"
#: The key of the bundle's builtins that leads :func:`bundle_file` to its bundle's files.
RESOLVER_KEY = "__cloudflow_files__"


def normal_path(path: str) -> str:
    """A saved path as the manifest's keys hash it."""
    return os.path.normpath(path)


def path_key(salt: str, kind: str, path: str) -> str:
    """The salted hash under which the manifest lists a saved path (``kind``: abs or rel)."""
    return hashlib.sha256(f"{salt}\0{kind}\0{path}".encode("utf-8", "surrogateescape")).hexdigest()


def path_text(value: object) -> str | None:
    """The text of a str, bytes or ``os.PathLike`` path value; None for anything else."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return os.fsdecode(value)
    if isinstance(value, os.PathLike):
        try:
            path = os.fspath(value)
        except Exception:
            return None
        return os.fsdecode(path) if isinstance(path, bytes) else path
    return None


def looks_like_path(text: str) -> bool:
    """Whether a relative string is shaped like a path (``vocab.txt``, ``data/labels``).

    A bare word (``"data"``) is too often a dict key or a name to be taken for the folder of
    the same name: only a string with a folder separator or a file suffix counts.
    """
    if not text or len(text) > 4096 or "\n" in text or "\0" in text:
        return False
    if "/" in text or os.sep in text:
        return True
    stem, suffix = os.path.splitext(text)
    return bool(stem) and len(suffix) > 1


# --- loading -------------------------------------------------------------------------------------


def _reads_only(mode: object) -> bool:
    if isinstance(mode, str):
        return not any(c in mode for c in "wax+")
    return True


class Resolver:
    """A loaded bundle's data files: saved paths -> the copies in ``data``."""

    def __init__(self, data: Path, section: Mapping[str, Any]) -> None:
        self.data = data
        self.salt = str(section.get("salt", ""))
        self.entries: dict[str, dict[str, Any]] = dict(section.get("entries") or {})
        self.keys: dict[str, str] = dict(section.get("keys") or {})
        self.module_trees: dict[str, str] = dict(section.get("module_trees") or {})
        self._files = {e["path"] for e in self.entries.values() if e.get("kind") == "file"}

    def __bool__(self) -> bool:
        return bool(self.entries)

    def copy_of(self, rel: str) -> Path:
        return self.data / rel

    def find(self, value: object) -> Path | None:
        """The bundled copy a saved path leads to, or None."""
        text = path_text(value)
        if text is None or not text:
            return None
        kind = "abs" if os.path.isabs(text) else "rel"
        path = normal_path(text)
        rest = ""
        while True:
            rel = self.keys.get(path_key(self.salt, kind, path))
            if rel is not None:
                if not rest:
                    return self.copy_of(rel)
                return None if rel in self._files else self.copy_of(f"{rel}/{rest}")
            head, tail = os.path.split(path)
            if not tail or head == path:
                return None
            rest = tail if not rest else f"{tail}/{rest}"
            path = head

    def path_value(self, kind: str, rel: str) -> Any:
        copy = self.copy_of(rel)
        if kind == "str":
            return str(copy)
        cls = getattr(pathlib, kind, None)
        if not (isinstance(cls, type) and issubclass(cls, pathlib.PurePath)):
            return str(copy)
        return cls(copy)

    def is_copy(self, text: str) -> bool:
        """Whether a path is one of the copies (or inside a copied folder) of this bundle."""
        if not os.path.isabs(text):
            return False
        files = os.path.normpath(self.data / FILES_DIR) + os.sep
        return os.path.normpath(text).startswith(files) and os.path.exists(text)

    def named(self, name: str) -> Path | None:
        entry = self.entries.get(name)
        return None if entry is None else self.copy_of(str(entry["path"]))

    def describe(self) -> str:
        return ", ".join(sorted(self.entries)) or "none"

    def make_open(self) -> Any:
        """The ``open`` of the bundle's code: reads of saved paths open the copies."""
        real_open = builtins.open
        find = self.find

        def open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:  # noqa: A001
            if not isinstance(file, int) and _reads_only(mode):
                copy = find(file)
                if copy is not None:
                    file = copy
            return real_open(file, mode, *args, **kwargs)

        open.__doc__ = real_open.__doc__
        return open

    def rewrite_code(self, code: types.CodeType) -> types.CodeType:
        """A code object whose path constants that lead into the bundle lead there.

        Absolute paths, and relative ones shaped like paths (see :meth:`SavedFiles.bundled`).
        """
        consts = []
        changed = False
        for const in code.co_consts:
            new = const
            if isinstance(const, types.CodeType):
                new = self.rewrite_code(const)
            elif isinstance(const, str) and (os.path.isabs(const) or looks_like_path(const)):
                copy = self.find(const)
                if copy is not None and (os.path.isabs(const) or copy.exists()):
                    new = str(copy)
            changed = changed or new is not const
            consts.append(new)
        return code.replace(co_consts=tuple(consts)) if changed else code


def install(table: Any, resolver: Resolver) -> None:
    """Give a module table's code the bundle's files (builtins ``open``, ``bundle_file``)."""
    table.files = resolver
    table.builtins[RESOLVER_KEY] = resolver
    table.builtins["open"] = resolver.make_open()


def place_modules(table: Any, resolver: Resolver, relative_filename: Any) -> None:
    """Give captured modules a ``__file__`` in their project's copy (see the module doc)."""
    for name, tree in resolver.module_trees.items():
        module = table.modules.get(name)
        if module is not None:
            is_package = hasattr(module, "__path__")
            module.__file__ = str(resolver.copy_of(f"{tree}/{relative_filename(name, is_package)}"))


def _resolver_of_caller() -> Resolver | None:
    frame = sys._getframe(2)
    while frame is not None:
        found = frame.f_globals.get("__builtins__")
        if isinstance(found, dict):
            resolver = found.get(RESOLVER_KEY)
            if isinstance(resolver, Resolver):
                return resolver
        frame = frame.f_back  # type: ignore[assignment]
    return None


def bundle_file(name_or_path: str | os.PathLike[str]) -> Path:
    """The bundled copy of a data file, or the path itself when the code runs unsaved.

    Inside a loaded bundle (called by its code, directly or through your helpers), a path given
    in ``files=`` when saving (as given, absolute, or inside a bundled folder) or an entry's name
    leads to the copy in the bundle. Outside a bundle the path is returned as it is, so the same
    code runs before and after saving.

    Raises:
        DataFileError: Inside a bundle, the path or name is not one of its files.

    Example:
        >>> path = cloudflow.bundle_file("data/labels.json")  # doctest: +SKIP
        >>> labels = json.loads(path.read_text())  # doctest: +SKIP
    """
    text = path_text(name_or_path)
    if text is None:
        raise BundleArgumentError(
            f"bundle_file takes a path or a files= name, got {type(name_or_path).__name__}. Pass "
            "e.g. bundle_file('data/labels.json')."
        )
    resolver = _resolver_of_caller()
    if resolver is None:
        return Path(text)
    found = resolver.find(text)
    if found is None:
        found = resolver.named(text)
    if found is None and resolver.is_copy(text):
        found = Path(text)  # a saved path the bundle already led to its copy
    if found is None:
        raise DataFileError(
            f"{text!r} is not a file of this bundle; its files are: {resolver.describe()}. Add it "
            f"when saving: files={{..., 'name': {text!r}}}."
        )
    return found
