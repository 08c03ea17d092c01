"""Data files at save (``files=``): copied into the bundle, and paths the code names but lacks.

Where the copies go and how a load leads the saved paths to them: :mod:`cloudflow.runtime.files`.
"""

from __future__ import annotations

import os
import pathlib
import secrets
import sys
import tempfile
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudflow.integrity import digests as _digests
from cloudflow.runtime.files import (
    FILES_DIR,
    NAMED_DIR,
    TREE_PREFIX,
    looks_like_path,
    normal_path,
    path_key,
)

# --- saving --------------------------------------------------------------------------------------


def _candidate_roots(paths: Iterable[str]) -> list[str]:
    """Folders your modules are imported from, above any of ``paths``: user folders of
    ``sys.path``, and the import roots of your modules (editable installs included)."""
    from cloudflow.capture import scan as _scan

    above: set[str] = set()
    for path in paths:
        parent = os.path.dirname(path)
        while parent not in above and parent != os.path.dirname(parent):
            above.add(parent)
            parent = os.path.dirname(parent)
    libraries = _scan.library_dirs()
    roots: set[str] = set()
    for entry in sys.path:
        folder = os.path.realpath(entry or os.getcwd())
        if folder in above and not (folder + os.sep).startswith(libraries):
            roots.add(folder)
    prefixes = tuple(p + os.sep for p in above)
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        # A cheap test first: only modules beside the data can have their root above it.
        if not isinstance(file, str) or not file.startswith(prefixes):
            continue
        try:
            root = _scan.import_root(module) if _scan.is_user_module(module) else None
        except Exception:
            continue
        if root is not None and root in above:
            roots.add(root)
    return sorted(roots, key=len, reverse=True)  # the deepest first


@dataclass
class SavedFiles:
    """The copies made for one save, and what the pickler needs to point code at them."""

    salt: str = ""
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Salted hash of a saved path -> the bundle-relative path it leads to.
    keys: dict[str, str] = field(default_factory=dict)
    #: Real saved path -> bundle-relative path: entries, their folders up to their tree's root.
    mounts: dict[str, str] = field(default_factory=dict)
    #: Bundle-relative path of a tree -> its saved root (not written: only for module_trees).
    trees: dict[str, str] = field(default_factory=dict)
    folders: set[str] = field(default_factory=set)  # mounts that are folders (entries only)
    #: The saving working directory: relative path values are read from there.
    cwd: str = ""
    #: Relative path value -> what :meth:`bundled` found (the pickler asks for every string).
    _relative: dict[str, str | None] = field(default_factory=dict, repr=False)

    def __bool__(self) -> bool:
        return bool(self.entries)

    def bundled(self, value: object) -> tuple[str, str] | None:
        """(kind, bundle-relative path) for a path value that leads into the bundle, else None.

        An absolute path, or a relative one (from the saving working directory) that names a
        file or folder of the bundle which exists here: a ``pathlib`` path, or a string shaped
        like a path (:func:`looks_like_path`; a bare word such as ``"data"`` is too often not
        one).
        """
        if not self.mounts or isinstance(value, bytes):
            return None
        if isinstance(value, str):
            kind = "str"
        elif isinstance(value, pathlib.PurePath):
            kind = type(value).__name__
            if getattr(pathlib, kind, None) is not type(value):
                return None
        else:
            return None
        text = str(value)
        if os.path.isabs(text):
            rel = self._find(text)
        elif not self.cwd or not (kind != "str" or looks_like_path(text)):
            return None
        elif text in self._relative:
            rel = self._relative[text]
        else:
            joined = os.path.join(self.cwd, text)
            rel = self._relative[text] = self._find(joined) if os.path.exists(joined) else None
        return None if rel is None else (kind, rel)

    def _find(self, text: str) -> str | None:
        rel = self._lookup(normal_path(text))
        if rel is None and os.path.exists(text):
            rel = self._lookup(os.path.realpath(text))
        return rel

    def _lookup(self, path: str) -> str | None:
        found = self.mounts.get(path)
        if found is not None:
            return found
        parent, rest = path, ""
        while True:
            head, tail = os.path.split(parent)
            if head == parent:
                return None
            rest = tail if not rest else f"{tail}/{rest}"
            parent = head
            if parent in self.folders:
                return f"{self.mounts[parent]}/{rest}"

    def module_trees(self, modules: Mapping[str, types.ModuleType]) -> dict[str, str]:
        """Captured module -> the tree its ``__file__`` goes into at load."""
        from cloudflow.capture import scan as _scan

        out = {}
        by_root = {root: rel for rel, root in self.trees.items()}
        for name, module in modules.items():
            root = _scan.import_root(module)
            if root is not None and root in by_root:
                out[name] = by_root[root]
        return out

    def manifest_entry(self, modules: Mapping[str, types.ModuleType]) -> dict[str, Any]:
        if not self.entries:
            return {}
        return {
            "salt": self.salt,
            "entries": self.entries,
            "keys": self.keys,
            "module_trees": self.module_trees(modules),
        }


def _copy(source: Path, target: Path) -> tuple[int, int]:
    """Copy a file or a folder (symlinks followed: the bundle holds content); (bytes, files)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        size = count = 0
        target.mkdir(parents=True, exist_ok=True)
        for dirpath, dirnames, filenames in os.walk(source, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            rel = os.path.relpath(dirpath, source)
            into = target if rel == "." else target / rel
            into.mkdir(parents=True, exist_ok=True)
            for filename in sorted(filenames):
                if filename.endswith((".py", ".pyc")):
                    continue  # the bundle holds no source
                size += _digests.copy_hashed(os.path.join(dirpath, filename), into / filename)
                count += 1
        return size, count
    return _digests.copy_hashed(source, target), 1  # digested as copied: never read back


def copy_files(data: Path, files: Mapping[str, Path]) -> SavedFiles:
    """Copy ``files`` (from :func:`check_files`) into the data folder ``data``."""
    saved = SavedFiles(salt=secrets.token_hex(16), cwd=os.getcwd())
    if not files:
        return saved
    roots = _candidate_roots([*map(os.path.realpath, files.values()), *map(str, files.values())])
    tree_of: dict[str, str] = {}  # saved root -> "files/tree-<n>"
    taken: set[str] = set()
    cwd = os.getcwd()
    for name, given in files.items():
        real = os.path.realpath(given)
        is_dir = given.is_dir()
        rel = None
        root = next((r for r in roots if real.startswith(r + os.sep)), None)
        if root is not None:
            tree = tree_of.setdefault(root, f"{FILES_DIR}/{TREE_PREFIX}{len(tree_of)}")
            rel = f"{tree}/{Path(os.path.relpath(real, root)).as_posix()}"
            if any(rel == t or rel.startswith(t + "/") or t.startswith(rel + "/") for t in taken):
                rel = None  # overlaps another entry: keep both, apart
        if rel is None:
            root = None
            rel = f"{FILES_DIR}/{NAMED_DIR}/{name}"
            if not is_dir:
                rel = f"{rel}/{given.name}"
        taken.add(rel)
        size, count = _copy(Path(real), data / rel)
        saved.entries[name] = {
            "path": rel,
            "kind": "folder" if is_dir else "file",
            "size": size,
            "files": count,
        }
        for form in {normal_path(str(given)), real}:
            saved.mounts[form] = rel
            saved.keys[path_key(saved.salt, "abs", form)] = rel
            if is_dir:
                saved.folders.add(form)
            if form == cwd or form.startswith(cwd + os.sep):
                relative = os.path.relpath(form, cwd)
                saved.keys[path_key(saved.salt, "rel", relative)] = rel
        if root is not None:
            saved.trees["/".join(rel.split("/")[:2])] = root
            # The folders of the project above the entry lead to the same place in the copy.
            folder, inside = real, rel
            while folder != root:
                folder, inside = os.path.dirname(folder), inside.rpartition("/")[0]
                saved.mounts.setdefault(folder, inside)
                saved.keys.setdefault(path_key(saved.salt, "abs", folder), inside)
    return saved


# --- paths the saved code names that the bundle does not carry ------------------------------------

#: Never data: devices, kernel and system folders (as the clean-process check rules them out).
_SYSTEM_PREFIXES = (
    "/dev/",
    "/proc/",
    "/sys/",
    "/etc/",
    "/run/",
    "/bin/",
    "/sbin/",
    "/lib/",
    "/lib64/",
    "/usr/bin/",
    "/usr/lib/",
    "/usr/share/",
)
_SOURCE_SUFFIXES = (".py", ".pyc", ".pyi", ".pth", ".so", ".pyd")


def unbundled_paths(
    values: Mapping[str, bool],
    *,
    cwd: str,
    bundle: Path,
    modules: Mapping[str, types.ModuleType],
) -> list[tuple[str, bool]]:
    """The path values saved code holds that name a file or folder here the bundle lacks.

    ``values`` are the strings of the code pickle that no ``files=`` entry covers, each with
    whether it was a ``pathlib`` path. Kept, once per real path and in order: an absolute path,
    or a relative one from ``cwd`` (a string only if shaped like a path: :func:`looks_like_path`)
    that exists, and is
    none of: the interpreter's or an installed library's, a system folder, the bundle or a
    folder holding it (its store), source code, a folder of the captured modules' source (a
    package folder, the folder the project is imported from), or inside another folder kept.
    Returns ``(as written, is_folder)``.
    """
    from cloudflow.capture import scan as _scan

    not_data = {
        os.path.realpath(p) + os.sep for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)
    }
    not_data.update(_scan.library_dirs())
    own = os.path.realpath(bundle)
    code_folders: set[str] = set()
    for module in modules.values():
        root = _scan.import_root(module)
        for location in _scan.module_locations(module):
            folder = os.path.realpath(location)
            folder = folder if os.path.isdir(folder) else os.path.dirname(folder)
            while root is not None and folder.startswith(root) and folder not in code_folders:
                code_folders.add(folder)
                folder = os.path.dirname(folder)
    special = {os.sep, os.path.realpath(os.path.expanduser("~")), os.path.realpath(cwd)}
    special.add(os.path.realpath(tempfile.gettempdir()))
    found: list[tuple[str, str]] = []
    seen: set[str] = set()
    for text, is_path in values.items():
        absolute = os.path.isabs(text)
        if not absolute and not is_path and not looks_like_path(text):
            continue
        if text.endswith(_SOURCE_SUFFIXES) or "://" in text:
            continue
        try:
            real = os.path.realpath(text if absolute else os.path.join(cwd, text))
            exists = os.path.exists(real)
        except (OSError, ValueError):
            continue
        if not exists or real in seen:
            continue
        seen.add(real)
        if (
            real in special
            or real in code_folders
            or (real + os.sep).startswith(tuple(not_data))
            or real.startswith(_SYSTEM_PREFIXES)
            or real == own
            or real.startswith(own + os.sep)
            or own.startswith(real + os.sep)
        ):
            continue
        found.append((text, real))
    # A path inside a folder that is named too: bundling the folder covers it.
    folders = tuple(real + os.sep for _, real in found if os.path.isdir(real))
    return [(text, os.path.isdir(real)) for text, real in found if not real.startswith(folders)]
