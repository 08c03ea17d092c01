"""The capture policy of one save: which modules travel by value, and which of their globals.

A module is *captured* (travels by value) when saved code reaches it and it is the user's (see
:mod:`cloudflow.capture.scan`); of a captured module, only the globals that saved code reaches
travel. :class:`CapturePolicy` decides and records; the pickler (:mod:`cloudflow.capture.pickler`)
asks it about every module, class and function it meets, and tells it what it wrote.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import types
from collections.abc import Iterable, Mapping
from typing import Any

from cloudpickle import cloudpickle as _cp

from cloudflow import _packages
from cloudflow.capture import portable, scan
from cloudflow.exceptions import CaptureError
from cloudflow.runtime.unpickler import LeftOut, ModuleTable

_logger = logging.getLogger("cloudflow")

_ATOMIC_TYPES = (int, float, complex, str, bytes, bool, type(None), tuple, frozenset)
# Module attributes that describe where the module came from on the saving machine.
_MODULE_SKIP = frozenset({"__builtins__", "__loader__", "__spec__", "__cached__"})


class CapturePolicy:
    """Decides what travels by value in one save, and records what was reached and written.

    A module is *captured* (travels by value) when saved code reaches it and it is the user's;
    of a captured module, only the globals that saved code reaches travel: the names its
    functions, class bodies and nested code use (globals, attributes read off modules, names
    imported from them), and what those reach in turn. A module the code reads by computed
    names (``globals()``, ``vars(mod)``, ``getattr(mod, name)``, ``sys.modules[...]``) or that
    ``include_modules`` names travels whole. See :meth:`.CodeWriter.capture_report`.
    """

    def __init__(
        self,
        *,
        include: Iterable[str] = (),
        exclude: Iterable[str] = (),
        models: Mapping[str, object] | None = None,
        strip_docstrings: bool = False,
        python_versions: Mapping[str, str] | None = None,
    ) -> None:
        self.include = frozenset(include)
        self.code_tables = (
            portable.CodeTables(dict(python_versions), strip_docstrings)
            if python_versions is not None and len(python_versions) > 1
            else None
        )
        self.exclude = frozenset(exclude)
        self.strip_docstrings = strip_docstrings
        # The data files of the save (cloudflow._files.SavedFiles): path values leading to them
        # are written as references to the copies.
        self.files: Any = None
        self.captured: dict[str, types.ModuleType] = {}
        self._rejected: set[str] = set()
        self.third_party: set[str] = set()  # top-level import names of libraries reached
        # Attribute names saved code reads: a module reached as an object carries those.
        self.attributes: set[str] = set()
        # Modules reached as objects (a global or closure value, an import), not only as the
        # globals of their functions.
        self.as_objects: set[str] = set()
        # Module -> names it must carry: the globals its saved functions use, and the names the
        # models' pickles refer to (reference mode).
        self.forced: dict[str, set[str]] = {}
        self._tables: list[ModuleTable] = []
        # Module -> why it travels whole.
        self.whole: dict[str, str] = {}
        self.reached_functions: list[types.FunctionType] = []
        self._computed_imports: set[str] = set()
        # Strings and pathlib paths (True) of the code pickle no files= entry covers, in order:
        # those that name a file or folder here are reported (see _files.unbundled_paths).
        self.path_values: dict[str, bool] = {}
        # Module -> the error importing it raised: a body import whose module fails to import
        # here is left out (see scan.import_reached); the report and the load name it.
        self.not_imported: dict[str, str] = {}
        # Scalars are interned: a model that is the int 7 must not stand for every 7 in the code.
        self._models_by_id = {
            id(obj): name
            for name, obj in (models or {}).items()
            if not isinstance(obj, _ATOMIC_TYPES)
        }
        # Held while one of the save's pickles is written: they all record into this policy.
        self.lock = threading.Lock()
        for name in sorted(self.include):
            module = _import_included(name)
            self.wants(module)
            # Asked for by name: plugins loaded by computed names must be there too.
            for sub in scan.walk_submodules(module):
                self.wants(sub)

    # deciding -----------------------------------------------------------------------------------

    def _excluded(self, name: str) -> bool:
        return any(name == e or name.startswith(e + ".") for e in self.exclude)

    def _included(self, name: str) -> bool:
        return any(name == i or name.startswith(i + ".") for i in self.include)

    def wants(self, module: types.ModuleType) -> bool:
        """Whether a module travels by value; adds it (and its user parents) when it should."""
        name = module.__name__
        if name in self.captured:
            return True
        if name in self._rejected:
            return False
        if not self._excluded(name) and (
            self._included(name) or scan.is_user_module(module) or _in_table(module)
        ):
            self.captured[name] = module
            if self._included(name):
                self.whole.setdefault(name, "include_modules names it")
            parent = name.rpartition(".")[0]
            while parent:
                parent_module = self._lookup(parent)
                if parent_module is not None:
                    self.wants(parent_module)
                parent = parent.rpartition(".")[0]
            return True
        self._rejected.add(name)
        top = name.partition(".")[0]
        if top not in sys.stdlib_module_names and top not in scan.NEVER_CAPTURED:
            self.third_party.add(top)
        return False

    def _lookup(self, name: str) -> types.ModuleType | None:
        """A module by name: one already captured (a loaded bundle's, say), else sys.modules."""
        return self.captured.get(name) or sys.modules.get(name)

    def wants_name(self, module_name: object) -> bool:
        if not isinstance(module_name, str):
            return False
        if module_name in self.captured:
            return True
        if module_name in self._rejected:
            return False
        module = sys.modules.get(module_name)
        return module is not None and self.wants(module)

    def adopt_globals(self, namespace: Mapping[str, Any]) -> types.ModuleType | None:
        """The captured module whose ``__dict__`` is ``namespace``, if it is one.

        A loaded bundle's functions have its modules' dicts as globals: saving such a function
        again (promoting a loaded bundle into another store) captures the bundle's modules,
        which ``sys.modules`` does not hold.
        """
        name = namespace.get("__name__")
        if not isinstance(name, str):
            return None
        table = _table_of(namespace)
        if table is not None:
            self.adopt_table(table)
        module = self.captured.get(name)
        if module is None:
            module = sys.modules.get(name)
            if module is None or module.__dict__ is not namespace or not self.wants(module):
                return None
        return module if module.__dict__ is namespace else None

    def adopt_table(self, table: ModuleTable) -> None:
        """Capture the modules of a loaded bundle whose code or classes are being saved again.

        They take their names before modules of the same names in ``sys.modules`` (the saving
        process's own): what is saved is the bundle's code, bound to the bundle's modules.
        """
        if any(t is table for t in self._tables):
            return
        self._tables.append(table)
        for name, module in table.modules.items():
            if not self._excluded(name):
                self.captured.setdefault(name, module)
                self._rejected.discard(name)

    def scan_code(self, code: types.CodeType, namespace: Mapping[str, Any]) -> None:
        """Capture the user modules imported inside a function body at call time."""
        package = _packages.package_of(dict(namespace)) if namespace else None
        for name, level, fromlist in scan.imports_in_code(code):
            absname = _packages.resolve_import(name, level, package)
            if absname is not None:
                self._reach_import(absname, fromlist)

    def _reach_import(self, absname: str, fromlist: Iterable[str] = ()) -> None:
        if self._excluded(absname) and absname not in sys.modules:
            return  # excluded: referred to by name, so never imported by the capture
        module = self.captured.get(absname) or scan.import_reached(absname, self.not_imported)
        if module is None:
            top = absname.partition(".")[0]
            if top not in sys.stdlib_module_names and not scan.spec_is_user(absname):
                self.third_party.add(top)
            return
        if not self.wants(module):
            return
        # `import a.b.c` binds `a`: every package on the way must be in the table too.
        parts = absname.split(".")
        self.reached_as_object(module)
        for i in range(1, len(parts)):
            parent = self._lookup(".".join(parts[:i]))
            if parent is not None and self.wants(parent):
                self.reached_as_object(parent)
                self.forced.setdefault(parent.__name__, set()).add(parts[i])
        for item in fromlist:
            if item == "*":
                self.whole.setdefault(absname, "a function imports * from it")
                continue
            if self._excluded(f"{absname}.{item}") and f"{absname}.{item}" not in sys.modules:
                continue
            sub = scan.submodule(module, item, self.not_imported)
            if sub is not None and self.wants(sub):
                self.reached_as_object(sub)

    def reached_as_object(self, module: types.ModuleType) -> None:
        if self.wants(module):
            self.as_objects.add(module.__name__)

    def note_function(self, func: types.FunctionType) -> None:
        """Record what a function pickled by value reads (see the class docstring)."""
        self.reached_functions.append(func)
        access = scan.code_access(func.__code__)
        namespace = func.__globals__
        self.attributes.update(access.attributes)
        self.attributes.update(s for s in access.strings if "." not in s)
        own = self.captured.get(str(namespace.get("__name__")))
        if own is not None and own.__dict__ is not namespace:
            own = None
        used = _cp._extract_code_globals(func.__code__)
        if own is not None:
            self.forced.setdefault(own.__name__, set()).update(used)
            self.travels_home(own, func)
        values = [namespace[k] for k in used if k in namespace]
        for cell in func.__closure__ or ():
            with contextlib.suppress(ValueError):
                values.append(cell.cell_contents)
        for value in values:
            if isinstance(value, types.ModuleType):
                self.reached_as_object(value)
        where = f"{func.__module__}.{func.__qualname__}"
        if own is not None and access.calls_globals and "globals" not in namespace:
            self.capture_whole(own.__name__, f"{where} calls globals()")
        if own is not None and any(namespace.get(n) is sys for n in access.sys_modules):
            self.capture_whole(own.__name__, f"{where} reads sys.modules")
        for name, how in access.reflected.items():
            value = namespace.get(name)
            if isinstance(value, types.ModuleType) and self.wants(value):
                self.capture_whole(value.__name__, f"{where} reads {how}")
        if scan.IMPORTERS & access.names:
            for text in sorted(access.strings):
                if text in sys.modules or scan.spec_is_user(text):
                    self._reach_import(text)
            followed = [
                p for p in sorted(scan.import_prefixes(func.__code__)) if self._follow(p, where)
            ]
            if access.computed_import and where not in self._computed_imports:
                self._computed_imports.add(where)
                _warn_computed_import(where, followed)

    def _follow(self, package: str, where: str) -> bool:
        """Capture the submodules of ``package`` this process has imported, whole.

        Code that imports ``f"{package}.{name}"`` may import any of them; each travels whole
        (its functions are found by names the bytecode does not show). Returns whether
        ``package`` is a module of the user's.
        """
        module = self._lookup(package) or scan.import_reached(package)
        if module is None or not self.wants(module):
            return False
        self.reached_as_object(module)
        why = f"{where} imports {package + '.'!r} + a name computed at run time"
        for name in sorted(n for n in list(sys.modules) if n.startswith(package + ".")):
            sub = sys.modules.get(name)
            if sub is not None and self.wants(sub):
                self.reached_as_object(sub)
                self.capture_whole(name, why)
        return True

    def own_names(self) -> tuple[list[str], list[str]]:
        """The top-level names of the user's modules in this process, and the excluded names.

        Written into the code pickle: at load, importing a module under one of those names that
        the bundle does not hold fails, instead of finding the loading program's module.
        """
        tops = {name.partition(".")[0] for name in self.captured}
        for table in self._tables:
            tops.update(table.claimed)
        # Only code that imports by computed names can reach a module the capture did not see;
        # other pickles depend on what they hold only (the same bytes for the same objects).
        for name, module in list(sys.modules.items()) if self._computed_imports else ():
            if "." in name or module is None or name in tops:
                continue
            try:
                if scan.is_user_module(module):
                    tops.add(name)
            except Exception:  # a module whose attributes raise must not break the save
                continue
        return sorted(t for t in tops if t not in self.exclude), sorted(self.exclude)

    def travels_home(self, module: types.ModuleType, obj: Any) -> None:
        """A function or class that travels is also its module's global of that name."""
        name = getattr(obj, "__name__", None)
        if isinstance(name, str) and module.__dict__.get(name) is obj:
            self.forced.setdefault(module.__name__, set()).add(name)

    def capture_whole(self, name: str, why: str) -> None:
        if name not in self.whole:
            self.whole[name] = why
            _logger.info("Capturing module %s whole: %s", name, why)

    def model_name(self, obj: object) -> str | None:
        return self._models_by_id.get(id(obj))


# Module globals every captured module carries when it has them: Python reads them itself.
ALWAYS_CARRIED = frozenset({"__all__", "__getattr__", "__dir__"})
# Module attributes that describe where the module came from on the saving machine, or that
# the skeleton sets itself.
_NOT_CARRIED = _MODULE_SKIP | {"__name__", "__file__", "__path__", "__package__", "__doc__"}


def carried_names(module: types.ModuleType) -> set[str]:
    """The globals of a module that can travel (all but the import system's own)."""
    return {
        k for k, v in vars(module).items() if k not in _NOT_CARRIED and not isinstance(v, LeftOut)
    }


def _table_of(namespace: Mapping[str, Any]) -> ModuleTable | None:
    """The loaded bundle a globals dict belongs to (its builtins' ``__import__`` says)."""
    builtins_ = namespace.get("__builtins__")
    importer = builtins_.get("__import__") if isinstance(builtins_, dict) else None
    owner = getattr(importer, "__self__", None)
    return owner if isinstance(owner, ModuleTable) else None


def _in_table(module: types.ModuleType) -> bool:
    return _table_of(module.__dict__) is not None


def _import_included(name: str) -> types.ModuleType:
    """The module ``include_modules`` names, imported if it is not yet."""
    module = sys.modules.get(name) or scan.import_reached(name)
    if module is None:
        with contextlib.suppress(ImportError):
            module = __import__(name, fromlist=["_"])
    if module is None:
        raise CaptureError(
            f"include_modules names {name!r}, which cannot be imported. Check the name, "
            "or make the module importable (sys.path) before saving."
        )
    return module


def _warn_computed_import(where: str, followed: list[str]) -> None:
    """Say once per function that it imports by a computed name, and what travels for it."""
    if followed:
        _logger.warning(
            "%s imports a module by a name computed at run time, starting with %s: "
            "the submodules of %s imported so far travel. To bundle every one of "
            "them, name the package in include_modules.",
            where,
            ", ".join(f"{p!r}." for p in followed),
            ", ".join(followed),
        )
    else:
        _logger.warning(
            "%s imports a module by a name computed at run time; cloudflow cannot "
            "see which. If it is one of your modules, name its package in "
            "include_modules.",
            where,
        )
