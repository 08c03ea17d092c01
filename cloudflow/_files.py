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
import secrets
import sys
import tempfile
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudflow import _digests
from cloudflow.exceptions import BundleArgumentError, DataFileError

FILES_DIR = "files"
TREE_PREFIX = "tree-"
NAMED_DIR = "named"
#: The key of the bundle's builtins that leads :func:`bundle_file` to its bundle's files.
RESOLVER_KEY = "__cloudflow_files__"


def _normal(path: str) -> str:
    return os.path.normpath(path)


def _key(salt: str, kind: str, path: str) -> str:
    return hashlib.sha256(f"{salt}\0{kind}\0{path}".encode("utf-8", "surrogateescape")).hexdigest()


def _fspath(value: object) -> str | None:
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


# --- saving --------------------------------------------------------------------------------------


def _candidate_roots(paths: Iterable[str]) -> list[str]:
    """Folders your modules are imported from, above any of ``paths``: user folders of
    ``sys.path``, and the import roots of your modules (editable installs included)."""
    from cloudflow import _capture

    above: set[str] = set()
    for path in paths:
        parent = os.path.dirname(path)
        while parent not in above and parent != os.path.dirname(parent):
            above.add(parent)
            parent = os.path.dirname(parent)
    libraries = _capture._library_dirs()
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
            root = _capture.import_root(module) if _capture.is_user_module(module) else None
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
        rel = self._lookup(_normal(text))
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
        from cloudflow import _capture

        out = {}
        by_root = {root: rel for rel, root in self.trees.items()}
        for name, module in modules.items():
            root = _capture.import_root(module)
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
        for form in {_normal(str(given)), real}:
            saved.mounts[form] = rel
            saved.keys[_key(saved.salt, "abs", form)] = rel
            if is_dir:
                saved.folders.add(form)
            if form == cwd or form.startswith(cwd + os.sep):
                relative = os.path.relpath(form, cwd)
                saved.keys[_key(saved.salt, "rel", relative)] = rel
        if root is not None:
            saved.trees["/".join(rel.split("/")[:2])] = root
            # The folders of the project above the entry lead to the same place in the copy.
            folder, inside = real, rel
            while folder != root:
                folder, inside = os.path.dirname(folder), inside.rpartition("/")[0]
                saved.mounts.setdefault(folder, inside)
                saved.keys.setdefault(_key(saved.salt, "abs", folder), inside)
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
    from cloudflow import _capture

    not_data = {
        os.path.realpath(p) + os.sep for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)
    }
    not_data.update(_capture._library_dirs())
    own = os.path.realpath(bundle)
    code_folders: set[str] = set()
    for module in modules.values():
        root = _capture.import_root(module)
        for location in _capture.module_locations(module):
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
        text = _fspath(value)
        if text is None or not text:
            return None
        kind = "abs" if os.path.isabs(text) else "rel"
        path = _normal(text)
        rest = ""
        while True:
            rel = self.keys.get(_key(self.salt, kind, path))
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
    text = _fspath(name_or_path)
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
