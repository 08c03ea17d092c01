"""Which modules a predict function reaches, and which of them are the user's own.

A *user module* is Python source that is neither part of the standard library nor of an installed
distribution: the user's project files. Those are captured by value; everything else travels by
reference and is listed in the bundle's requirements.

Imports are found in two ways. Objects reached while pickling (globals, closures, classes,
modules, models' classes) are seen by the pickler itself. Imports executed inside function bodies
at call time (``from plugins import scoring`` in a function) are only names in the bytecode, so
the code objects of every function pickled by value are scanned for ``IMPORT_NAME`` (and the
submodules named in its ``fromlist``), recursively through nested code objects, and resolved
against the function's package.
"""

from __future__ import annotations

import contextlib
import dis
import importlib
import importlib.machinery
import importlib.util
import json
import logging
import os
import pkgutil
import re
import site
import sys
import sysconfig
import types
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

_logger = logging.getLogger("cloudflow")

# Never captured: cloudflow loads bundles, so it must be installed where they load.
NEVER_CAPTURED = frozenset({"cloudflow", "__main__", "__mp_main__"})
_SOURCE_SUFFIXES = tuple(importlib.machinery.SOURCE_SUFFIXES) + tuple(
    importlib.machinery.BYTECODE_SUFFIXES
)


@lru_cache(maxsize=1)
def library_dirs() -> tuple[str, ...]:
    """Folders whose modules are installed (site-packages) or the standard library."""
    dirs: set[str] = set()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        with contextlib.suppress(Exception):
            dirs.add(sysconfig.get_paths()[key])
    with contextlib.suppress(Exception):
        dirs.update(site.getsitepackages())
    with contextlib.suppress(Exception):
        dirs.add(site.getusersitepackages())
    for entry in sys.path:
        if entry and os.path.basename(entry.rstrip("/\\")) in ("site-packages", "dist-packages"):
            dirs.add(entry)
    for prefix in {sys.prefix, sys.base_prefix, sys.exec_prefix}:
        dirs.add(os.path.join(prefix, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}"))
    return tuple(sorted(os.path.realpath(d) + os.sep for d in dirs if d))


@lru_cache(maxsize=1)
def editable_distributions() -> dict[str, str]:
    """Distribution name -> source folder of every editable install (``pip install -e``).

    Read from ``direct_url.json`` (PEP 610), which pip, uv and poetry write for editable installs.
    """
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        try:
            text = dist.read_text("direct_url.json")
            info = json.loads(text) if text else {}
            name = dist.metadata["Name"]
        except Exception:  # a broken distribution must not break saving
            continue
        url = info.get("url", "") if isinstance(info, dict) else ""
        if info.get("dir_info", {}).get("editable") and url.startswith("file://") and name:
            found[str(name)] = os.path.realpath(url[len("file://") :])
    return found


def user_roots(module_names: Iterable[str]) -> list[str]:
    """Folders of the user's source: those of the captured modules, and of editable installs."""
    roots = set(editable_distributions().values())
    for name in module_names:
        module = sys.modules.get(name)
        root = import_root(module) if module is not None else None
        if root is not None:
            roots.add(root)
    return sorted(roots)


def import_root(module: types.ModuleType) -> str | None:
    """The folder a module is imported from: ``/proj/src`` for ``/proj/src/pkg/sub.py``."""
    file = getattr(module, "__file__", None)
    name = getattr(module, "__name__", "")
    if not file or not isinstance(name, str):
        return None
    depth = name.count(".") + 1 + (1 if hasattr(module, "__path__") else 0)
    path = Path(os.path.realpath(file))
    parents = path.parents
    return str(parents[depth - 1]) if depth - 1 < len(parents) else None


def under(path: str, folders: tuple[str, ...]) -> bool:
    real = os.path.realpath(path)
    return any(real.startswith(folder) for folder in folders)


def module_locations(module: types.ModuleType) -> list[str]:
    """Files or folders a module was loaded from (``__file__``, or a namespace's ``__path__``)."""
    file = getattr(module, "__file__", None)
    if file:
        return [file]
    return [p for p in (getattr(module, "__path__", None) or []) if isinstance(p, str)]


def is_user_module(module: types.ModuleType) -> bool:
    """Whether a module is the user's own source, to be captured by value."""
    name = getattr(module, "__name__", None)
    if not isinstance(name, str):
        return False
    top = name.partition(".")[0]
    if top in NEVER_CAPTURED or top in sys.stdlib_module_names or top in sys.builtin_module_names:
        return False
    locations = module_locations(module)
    if not locations:  # built-in, frozen or created at run time
        return False
    file = getattr(module, "__file__", None)
    if file and not file.endswith(_SOURCE_SUFFIXES):  # compiled extension: cannot travel by value
        return False
    # The user's own project installed with ``pip install -e`` (or a poetry / uv / hatch path
    # entry) has its source outside site-packages, so it counts as user code like any other.
    return not any(under(loc, library_dirs()) for loc in locations)


def is_user_file(path: str) -> bool:
    """Whether a source file is the user's (not in the standard library or site-packages)."""
    return bool(path) and not under(path, library_dirs())


def spec_is_user(name: str) -> bool:
    """Like :func:`is_user_module` for a module that is not imported yet (imports nothing)."""
    top = name.partition(".")[0]
    if top in NEVER_CAPTURED or top in sys.stdlib_module_names or top in sys.builtin_module_names:
        return False
    if top in sys.modules:
        return is_user_module(sys.modules[top])
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return False
    if spec is None:
        return False
    locations = [spec.origin] if spec.origin and spec.has_location else []
    locations += list(spec.submodule_search_locations or [])
    if not locations:
        return False
    return not any(under(loc, library_dirs()) for loc in locations)


# --- imports executed inside function bodies -------------------------------------------------

_IMPORTS_CACHE: dict[types.CodeType, tuple[tuple[str, int, tuple[str, ...]], ...]] = {}


def code_objects(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from code_objects(const)


def imports_in_code(code: types.CodeType) -> tuple[tuple[str, int, tuple[str, ...]], ...]:
    """Every ``import`` statement in a code object and its nested ones: (name, level, fromlist)."""
    cached = _IMPORTS_CACHE.get(code)
    if cached is not None:
        return cached
    found: list[tuple[str, int, tuple[str, ...]]] = []
    for sub in code_objects(code):
        instructions = list(dis.get_instructions(sub))
        for i, ins in enumerate(instructions):
            if ins.opname != "IMPORT_NAME":
                continue
            # CPython emits LOAD_CONST level; LOAD_CONST fromlist; IMPORT_NAME name.
            level, fromlist = 0, ()
            if i >= 2 and instructions[i - 1].opname == "LOAD_CONST":
                fromlist = tuple(instructions[i - 1].argval or ())
                if instructions[i - 2].opname == "LOAD_CONST":
                    level = int(instructions[i - 2].argval or 0)
            found.append((str(ins.argval), level, fromlist))
    result = tuple(found)
    if len(_IMPORTS_CACHE) > 10_000:
        _IMPORTS_CACHE.clear()
    _IMPORTS_CACHE[code] = result
    return result


def import_reached(name: str, failed: dict[str, str] | None = None) -> types.ModuleType | None:
    """Import a user module that a function's code imports at call time, at save time instead.

    Only user modules are imported here (third-party ones are named in requirements without being
    imported). A module that fails to import, with any exception, is left out and reported (into
    ``failed``, module -> the error, when given): the import statement may sit behind a condition
    that never holds (``if cuda: from .gpu import kernel``, where ``gpu`` raises without its
    optional library), and then it must not fail the save.
    """
    module = sys.modules.get(name)
    if module is not None:
        return module
    if not spec_is_user(name):
        return None
    try:
        return importlib.import_module(name)
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
        _logger.warning(
            "A function imports %r at call time, but importing it here raised %s; it is left "
            "out of the bundle (where that import runs, it fails again).",
            name,
            error,
        )
        if failed is not None:
            failed.setdefault(name, error)
        return None


def submodule(
    package: types.ModuleType, item: str, failed: dict[str, str] | None = None
) -> types.ModuleType | None:
    """``package.item`` if it is a module (imported if it is a user submodule not loaded yet)."""
    value = getattr(package, item, None)
    if isinstance(value, types.ModuleType):
        return value
    if value is not None or not hasattr(package, "__path__"):
        return None
    return import_reached(f"{package.__name__}.{item}", failed)


# --- what code reads: names, and access that static reading cannot follow ----------------------

_IDENTIFIER_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
_SKIPPED_OPS = frozenset({"PUSH_NULL", "CACHE", "EXTENDED_ARG", "NOP", "PRECALL"})
_GLOBAL_LOADS = frozenset({"LOAD_GLOBAL", "LOAD_NAME"})
_ATTR_LOADS = frozenset({"LOAD_ATTR", "LOAD_METHOD"})
_ATTRIBUTE_OPS = _ATTR_LOADS | {"STORE_ATTR", "DELETE_ATTR", "IMPORT_FROM", "LOAD_SUPER_ATTR"}
_REFLECTION = frozenset({"getattr", "hasattr", "setattr", "delattr", "vars"})
_NAMED_BY_STRING = frozenset(
    {"getattr", "hasattr", "import_module", "__import__", "attrgetter", "methodcaller"}
)
IMPORTERS = frozenset({"import_module", "__import__"})


@dataclass(frozen=True)
class CodeAccess:
    """What one code object (with its nested ones) reads, as far as its bytecode tells.

    Attributes:
        names: Every name the code uses: globals, attributes, names imported from modules.
        attributes: The names it reads or writes as attributes (``obj.name``) or imports from
            a module (``from mod import name``): of a module reached as an object, those travel.
        strings: Dotted-identifier string constants, kept only when the code also calls
            ``getattr``, ``import_module`` or the like, whose targets they may name.
        calls_globals: The code calls ``globals()``: its module is read by computed names.
        sys_modules: Global names the code reads ``.modules`` from (``sys.modules[...]``).
        reflected: Global name -> how the code reads the object it names by computed names
            (``vars(mod)``, ``getattr(mod, name)``, ``mod.__dict__``).
        computed_import: The code imports a module whose name is computed at run time.
    """

    names: frozenset[str]
    attributes: frozenset[str]
    strings: frozenset[str]
    calls_globals: bool
    sys_modules: frozenset[str]
    reflected: Mapping[str, str]
    computed_import: bool


_ACCESS_CACHE: dict[types.CodeType, CodeAccess] = {}


def code_access(code: types.CodeType) -> CodeAccess:
    """Read what ``code`` and its nested code objects access (cached per code object)."""
    cached = _ACCESS_CACHE.get(code)
    if cached is not None:
        return cached
    names: set[str] = set()
    attributes: set[str] = set()
    strings: set[str] = set()
    sys_modules: set[str] = set()
    reflected: dict[str, str] = {}
    calls_globals = computed_import = False
    for sub in code_objects(code):
        names.update(sub.co_names)
        ops = [i for i in dis.get_instructions(sub) if i.opname not in _SKIPPED_OPS]
        for i, ins in enumerate(ops):
            nxt = ops[i + 1] if i + 1 < len(ops) else None
            prev = ops[i - 1] if i else None
            name = ins.argval
            if ins.opname in _ATTRIBUTE_OPS and isinstance(name, str):
                attributes.add(name)
            if ins.opname in _GLOBAL_LOADS and isinstance(name, str):
                if name == "globals":
                    calls_globals = True
                if nxt is not None and nxt.opname in _ATTR_LOADS:
                    if nxt.argval == "__dict__":
                        reflected[name] = f"{name}.__dict__"
                    elif nxt.argval == "modules":
                        sys_modules.add(name)
                if (
                    prev is not None
                    and prev.opname in _GLOBAL_LOADS
                    and prev.argval in (_REFLECTION)
                ):
                    static = (
                        prev.argval != "vars"
                        and nxt is not None
                        and nxt.opname == "LOAD_CONST"
                        and isinstance(nxt.argval, str)
                    )
                    if not static:
                        reflected[name] = f"{prev.argval}({name}, ...)"
            named = nxt is not None and nxt.opname == "LOAD_CONST" and isinstance(nxt.argval, str)
            if name in IMPORTERS and ins.opname in _GLOBAL_LOADS | _ATTR_LOADS and not named:
                computed_import = True
        if _NAMED_BY_STRING & set(sub.co_names):
            strings.update(
                c for c in sub.co_consts if isinstance(c, str) and _IDENTIFIER_PATH.match(c)
            )
    access = CodeAccess(
        names=frozenset(names),
        attributes=frozenset(attributes),
        strings=frozenset(strings),
        calls_globals=calls_globals,
        sys_modules=frozenset(sys_modules),
        reflected=reflected,
        computed_import=computed_import,
    )
    if len(_ACCESS_CACHE) > 10_000:
        _ACCESS_CACHE.clear()
    _ACCESS_CACHE[code] = access
    return access


# A string constant that starts a computed module name: "plugins." (f"plugins.{name}",
# "plugins." + name), "plugins.{}" (.format) or "plugins.%s".
_IMPORT_PREFIX = re.compile(r"([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\.(?:\{|%s|\Z)")


def import_prefixes(code: types.CodeType) -> frozenset[str]:
    """Packages whose submodules code imports by computed names: ``plugins`` of
    ``importlib.import_module(f"plugins.{name}")`` (the constant start of the name)."""
    found: set[str] = set()
    for sub in code_objects(code):
        if IMPORTERS & set(sub.co_names):
            for const in sub.co_consts:
                match = _IMPORT_PREFIX.match(const) if isinstance(const, str) else None
                if match:
                    found.add(match.group(1))
    return frozenset(found)


def walk_submodules(package: types.ModuleType) -> list[types.ModuleType]:
    """Every submodule of a user package, imported (for ``include_modules``, which asks it)."""
    found: list[types.ModuleType] = []
    paths = [p for p in getattr(package, "__path__", None) or [] if isinstance(p, str)]
    for info in pkgutil.walk_packages(paths, prefix=package.__name__ + "."):
        try:
            found.append(importlib.import_module(info.name))
        except Exception as e:  # one broken plugin must not hide the others
            _logger.warning("include_modules: cannot import %s: %s", info.name, e)
    return found


def module_path(module: types.ModuleType) -> Path | None:
    file = getattr(module, "__file__", None)
    return Path(file) if file else None
