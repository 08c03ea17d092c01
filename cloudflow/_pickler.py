"""Pickling a predict function by value, with the user modules it reaches, isolated per bundle.

Save side: :class:`CaptureSession` owns the set of captured modules. Its pickler extends
cloudpickle's so that

- a captured module is pickled by value as a *module object* (its ``__dict__``), and the functions
  defined in it get that very dict as their ``__globals__`` at load, so module state stays shared;
- a module is added to the captured set the moment the pickler meets it (a global, a class's
  ``__module__``, a submodule) or finds it in an ``import`` executed inside a function body;
- code objects lose the saving machine's paths (``co_filename`` becomes ``pkg/mod.py``);
- model objects the code refers to (a model kept in a module global, say) are written as references
  to the bundle's models, never pickled a second time;
- in *reference mode* (the pickles flavors write for models), classes and functions of captured
  modules are written as references into the bundle's module table, so a model and the predict
  function share one copy of each user class.

Load side: :class:`ModuleTable` holds the bundle's modules; they are never put in ``sys.modules``.
Each captured module's globals carry their own ``__builtins__`` whose ``__import__`` looks in the
table first, so an ``import utils`` executed at call time finds the bundle's ``utils`` while the
loading program's own ``utils`` (or an installed package of the same name) stays untouched, and two
bundles with modules of the same name live side by side.
"""

from __future__ import annotations

import builtins
import contextlib
import contextvars
import functools
import importlib
import importlib.util
import io
import logging
import pickle
import sys
import threading
import types
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import cloudpickle
from cloudpickle import cloudpickle as _cp

from cloudflow import _capture
from cloudflow.exceptions import CaptureError

_logger = logging.getLogger("cloudflow")

PROTOCOL = 5
_MODEL_PID = "cloudflow-model"
# Module attributes that describe where the module came from on the saving machine.
_MODULE_SKIP = frozenset({"__builtins__", "__loader__", "__spec__", "__cached__"})
_real_import = builtins.__import__
_ATOMIC_TYPES = (int, float, complex, str, bytes, bool, type(None), tuple, frozenset)


# --- load side ---------------------------------------------------------------------------------


class ModuleTable:
    """The modules of one loaded bundle, and the ``__import__`` that finds them."""

    def __init__(self) -> None:
        self.modules: dict[str, types.ModuleType] = {}
        self.namespaces: list[dict[str, Any]] = []
        self.builtins: dict[str, Any] = dict(builtins.__dict__)
        self.builtins["__import__"] = self._import
        self.model_refs: list[ModelRef] = []
        # Code that loads plugins by name (importlib.import_module("plugins.x")) must find the
        # bundle's modules too: captured code gets an importlib whose import_module asks the
        # table first. The real importlib (and sys.modules) stay untouched.
        self.importlib = types.ModuleType("importlib")
        self.importlib.__dict__.update(importlib.__dict__)
        self.importlib.import_module = self.import_module  # type: ignore[attr-defined]

    def import_module(self, name: str, package: str | None = None) -> types.ModuleType:
        """``importlib.import_module`` that finds the bundle's modules first."""
        absname = importlib.util.resolve_name(name, package) if name.startswith(".") else name
        module = self.modules.get(absname)
        if module is not None:
            return module
        return importlib.import_module(name, package)

    def _import(
        self,
        name: str,
        globals: Mapping[str, Any] | None = None,
        locals: Mapping[str, Any] | None = None,
        fromlist: Sequence[str] | None = (),
        level: int = 0,
    ) -> types.ModuleType:
        absname = name
        if level > 0:
            package = _capture.package_of(dict(globals or {}))
            resolved = _capture.resolve_import(name, level, package)
            if resolved is None or resolved.partition(".")[0] not in self.modules:
                return _real_import(name, globals, locals, fromlist or (), level)
            absname = resolved
        module = self.modules.get(absname)
        if module is None:
            if absname.partition(".")[0] in self.modules:
                raise ModuleNotFoundError(
                    f"No module named {absname!r} in this bundle: it was not imported when the "
                    "bundle was saved. Add it with include_modules=[...] when saving.",
                    name=absname,
                )
            return _real_import(name, globals, locals, fromlist or (), level)
        if fromlist:
            for item in fromlist:
                if item != "*" and not hasattr(module, item):
                    sub = self.modules.get(f"{absname}.{item}")
                    if sub is not None:
                        setattr(module, item, sub)
            return module
        return self.modules.get(absname.partition(".")[0], module)

    def finish(self) -> None:
        """Attach submodules to their parents and give every namespace the bundle's builtins.

        cloudpickle resets ``__builtins__`` in the globals of every function it rebuilds; functions
        created later (closures, lambdas) take their builtins from the globals, so set them again.
        """
        for name, module in self.modules.items():
            parent, _, child = name.rpartition(".")
            if parent in self.modules and not hasattr(self.modules[parent], child):
                setattr(self.modules[parent], child, module)
        for namespace in [*(m.__dict__ for m in self.modules.values()), *self.namespaces]:
            namespace["__builtins__"] = self.builtins
            for key, value in namespace.items():
                if value is importlib:
                    namespace[key] = self.importlib
                elif value is importlib.import_module:
                    namespace[key] = self.import_module

    def bind_models(self, models: Mapping[str, object], roots: Iterable[object]) -> None:
        """Replace the placeholders of models the code referred to by the loaded models."""
        if not self.model_refs:
            return
        seen: set[int] = set()
        stack: list[object] = [*roots, *self.modules.values(), *self.namespaces]
        while stack:
            obj = stack.pop()
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if isinstance(obj, types.ModuleType):
                stack.append(obj.__dict__)
            elif isinstance(obj, dict):
                for key, value in list(obj.items()):
                    if isinstance(value, ModelRef):
                        obj[key] = models[value.name]
                    elif isinstance(value, types.FunctionType | functools.partial | type | dict):
                        stack.append(value)
            elif isinstance(obj, types.FunctionType):
                for cell in obj.__closure__ or ():
                    with contextlib.suppress(ValueError):
                        if isinstance(cell.cell_contents, ModelRef):
                            cell.cell_contents = models[cell.cell_contents.name]
                        elif isinstance(cell.cell_contents, types.FunctionType | functools.partial):
                            stack.append(cell.cell_contents)
            elif isinstance(obj, functools.partial):
                args = tuple(models[a.name] if isinstance(a, ModelRef) else a for a in obj.args)
                keywords = {
                    k: models[v.name] if isinstance(v, ModelRef) else v
                    for k, v in obj.keywords.items()
                }
                obj.__setstate__((obj.func, args, keywords, obj.__dict__ or None))  # type: ignore[attr-defined]
                stack.append(obj.func)


class ModelRef:
    """Stands for a bundle model while the code is unpickled, before the models are loaded."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<model {self.name!r} of this bundle, not loaded yet>"


_active_table: contextvars.ContextVar[ModuleTable | None] = contextvars.ContextVar(
    "cloudflow_module_table", default=None
)


def _table() -> ModuleTable:
    table = _active_table.get()
    if table is None:
        raise CaptureError(
            "This pickle was written by cloudflow for a bundle; load it with cloudflow.load_bundle."
        )
    return table


@contextlib.contextmanager
def activate(table: ModuleTable) -> Iterator[ModuleTable]:
    token = _active_table.set(table)
    try:
        yield table
    finally:
        _active_table.reset(token)


# Reconstructors: referenced by name from every bundle's pickles. Part of the on-disk format:
# never rename or remove one, only add.


def _rebuild_module(name: str, is_package: bool) -> types.ModuleType:
    table = _table()
    module = types.ModuleType(name)
    module.__dict__["__builtins__"] = table.builtins
    if is_package:
        module.__path__ = []
    table.modules[name] = module
    return module


def _set_module_state(module: types.ModuleType, state: dict[str, Any]) -> types.ModuleType:
    module.__dict__.update(state)
    return module


def _module_namespace(module: types.ModuleType) -> dict[str, Any]:
    return module.__dict__


def _fresh_namespace(items: dict[str, Any]) -> dict[str, Any]:
    table = _table()
    namespace = {**items, "__builtins__": table.builtins}
    table.namespaces.append(namespace)
    return namespace


def _bundle_module(name: str) -> types.ModuleType:
    return _table().modules[name]


def _bundle_global(module: str, qualname: str) -> Any:
    obj: Any = _table().modules[module]
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _make_function(
    code: types.CodeType,
    namespace: dict[str, Any],
    name: str | None,
    argdefs: tuple[Any, ...] | None,
    closure: tuple[Any, ...] | None,
) -> types.FunctionType:
    # cloudpickle's own version puts the real builtins into the globals first; a function takes
    # its builtins (and so its __import__) from its globals when it is created.
    return types.FunctionType(code, namespace, name, argdefs, closure)


def _function_setstate(func: types.FunctionType, state: Any) -> None:
    # cloudpickle sets the globals' __builtins__ to the real builtins: keep the bundle's.
    kept = func.__globals__.get("__builtins__")
    _cp._function_setstate(func, state)
    if kept is not None:
        func.__globals__["__builtins__"] = kept


class _ModuleNamespaceRef:
    """Pickles as the ``__dict__`` of a captured module (the globals of its functions)."""

    def __init__(self, module: types.ModuleType) -> None:
        self.module = module

    def __reduce__(self) -> tuple[Any, ...]:
        return (_module_namespace, (self.module,))


class _FreshNamespaceRef:
    """Pickles as a new globals dict (functions of ``__main__`` and other dynamic code)."""

    def __init__(self, items: dict[str, Any]) -> None:
        self.items = items

    def __reduce__(self) -> tuple[Any, ...]:
        return (_fresh_namespace, (self.items,))


class _Unpickler(pickle.Unpickler):
    def __init__(
        self, file: BinaryIO, persistent_load: Callable[[object], object] | None = None
    ) -> None:
        super().__init__(file)
        self._persistent = persistent_load

    def persistent_load(self, pid: object) -> object:
        if isinstance(pid, tuple) and len(pid) == 2 and pid[0] == _MODEL_PID:
            ref = ModelRef(str(pid[1]))
            _table().model_refs.append(ref)
            return ref
        if self._persistent is None:
            raise pickle.UnpicklingError(f"Unknown persistent id {pid!r}")
        return self._persistent(pid)


class LoadContext:
    """The :class:`~cloudflow.flavors._base.PickleContext` flavors use at load time."""

    def __init__(self, table: ModuleTable) -> None:
        self.table = table

    def dump(self, obj: object, path: Path, *, persistent_id: Any = None) -> None:
        raise CaptureError("A bundle is read-only once saved.")

    def load(
        self, path: Path, *, persistent_load: Callable[[object], object] | None = None
    ) -> object:
        with activate(self.table), open(path, "rb") as f:
            return _Unpickler(f, persistent_load).load()


def load_code(path: Path, table: ModuleTable) -> Callable[..., Any]:
    """Read ``code.pkl``: the predict function, then the captured modules, until ``None``."""
    with activate(table), open(path, "rb") as f:
        unpickler = _Unpickler(f)
        predict_fn: Callable[..., Any] = unpickler.load()
        while unpickler.load() is not None:
            pass
    table.finish()
    return predict_fn


# --- save side ---------------------------------------------------------------------------------


class CaptureSession:
    """Decides which modules travel by value and writes the pickles of one bundle."""

    def __init__(
        self,
        *,
        include: Iterable[str] = (),
        exclude: Iterable[str] = (),
        models: Mapping[str, object] | None = None,
        strip_docstrings: bool = False,
    ) -> None:
        self.include = frozenset(include)
        self.exclude = frozenset(exclude)
        self.strip_docstrings = strip_docstrings
        self.captured: dict[str, types.ModuleType] = {}
        self._rejected: set[str] = set()
        self.third_party: set[str] = set()  # top-level import names of libraries reached
        # Scalars are interned: a model that is the int 7 must not stand for every 7 in the code.
        self._models_by_id = {
            id(obj): name
            for name, obj in (models or {}).items()
            if not isinstance(obj, _ATOMIC_TYPES)
        }
        self._lock = threading.Lock()
        for name in sorted(self.include):
            module = sys.modules.get(name) or _capture.import_reached(name)
            if module is None:
                with contextlib.suppress(ImportError):
                    module = __import__(name, fromlist=["_"])
            if module is None:
                raise CaptureError(
                    f"include_modules names {name!r}, which cannot be imported. Check the name, "
                    "or make the module importable (sys.path) before saving."
                )
            self.wants(module)

    # deciding -----------------------------------------------------------------------------------

    def _excluded(self, name: str) -> bool:
        return any(name == e or name.startswith(e + ".") for e in self.exclude)

    def wants(self, module: types.ModuleType) -> bool:
        """Whether a module travels by value; adds it (and its user parents) when it should."""
        name = module.__name__
        if name in self.captured:
            return True
        if name in self._rejected:
            return False
        if not self._excluded(name) and (name in self.include or _capture.is_user_module(module)):
            self.captured[name] = module
            parent = name.rpartition(".")[0]
            while parent:
                parent_module = sys.modules.get(parent)
                if parent_module is not None:
                    self.wants(parent_module)
                parent = parent.rpartition(".")[0]
            return True
        self._rejected.add(name)
        top = name.partition(".")[0]
        if top not in sys.stdlib_module_names and top not in _capture._NEVER_CAPTURED:
            self.third_party.add(top)
        return False

    def wants_name(self, module_name: object) -> bool:
        if not isinstance(module_name, str):
            return False
        if module_name in self.captured:
            return True
        if module_name in self._rejected:
            return False
        module = sys.modules.get(module_name)
        return module is not None and self.wants(module)

    def scan_code(self, code: types.CodeType, namespace: Mapping[str, Any]) -> None:
        """Capture the user modules imported inside a function body at call time."""
        package = _capture.package_of(dict(namespace)) if namespace else None
        for name, level, fromlist in _capture.imports_in_code(code):
            absname = _capture.resolve_import(name, level, package)
            if absname is None:
                continue
            module = _capture.import_reached(absname)
            if module is None:
                top = absname.partition(".")[0]
                if top not in sys.stdlib_module_names and not _capture.spec_is_user(absname):
                    self.third_party.add(top)
                continue
            if not self.wants(module):
                continue
            # `import a.b.c` binds `a`: every package on the way must be in the table too.
            parts = absname.split(".")
            for i in range(1, len(parts)):
                parent = sys.modules.get(".".join(parts[:i]))
                if parent is not None:
                    self.wants(parent)
            for item in fromlist:
                if item == "*":
                    continue
                sub = _capture.submodule(module, item)
                if sub is not None:
                    self.wants(sub)

    def model_name(self, obj: object) -> str | None:
        return self._models_by_id.get(id(obj))

    # writing ------------------------------------------------------------------------------------

    def dump_code(self, predict_fn: Callable[..., Any], path: Path) -> None:
        """Write ``code.pkl``: the predict function, then every captured module, then ``None``."""
        with self._lock, open(path, "wb") as f:
            pickler = _BundlePickler(f, self, owner=True)
            self._dump(pickler, predict_fn, "the predict function")
            while True:
                pending = [m for n, m in sorted(self.captured.items()) if n not in pickler.pickled]
                if not pending:
                    break
                self._dump(pickler, tuple(pending), "module " + pending[0].__name__)
            pickler.dump(None)

    def dump(
        self,
        obj: object,
        path: Path,
        *,
        persistent_id: Callable[[object], object | None] | None = None,
    ) -> None:
        """Reference-mode pickle of (part of) a model, for a flavor."""
        with self._lock, open(path, "wb") as f:
            pickler = _BundlePickler(f, self, owner=False, persistent_id=persistent_id)
            self._dump(pickler, obj, f"model file {path.name}")

    def load(self, path: Path, *, persistent_load: Any = None) -> object:
        raise CaptureError("Models are loaded through a LoadContext.")

    def _dump(self, pickler: _BundlePickler, obj: object, what: str) -> None:
        try:
            pickler.dump(obj)
        except CaptureError:
            raise
        except Exception as e:
            if not pickler.owner:  # a model's file
                culprit = self._find_unpicklable_part(obj, pickler)
                where = f" The cause is {culprit}." if culprit else ""
                raise CaptureError(
                    f"Cannot serialize {what}: {type(e).__name__}: {e}.{where} Make the model "
                    "picklable: drop what cannot be pickled (locks, open files, connections, "
                    "generators) or give its class __getstate__ and __setstate__."
                ) from e
            culprit = self._find_unpicklable()
            where = f" The cause is {culprit}." if culprit else ""
            raise CaptureError(
                f"Cannot serialize {what}: {type(e).__name__}: {e}.{where} Exclude the module with "
                "exclude_modules=[...] if the function does not need it, or make the object "
                "picklable."
            ) from e

    def _find_unpicklable_part(self, obj: object, pickler: _BundlePickler) -> str | None:
        """Name the attribute or item of a model that cannot be pickled (error path only)."""
        if isinstance(obj, Mapping):
            parts = [(f"[{k!r}]", v) for k, v in obj.items()]
        elif isinstance(obj, list | tuple):
            parts = [(f"[{i}]", v) for i, v in enumerate(obj)]
        else:
            parts = [(f".{k}", v) for k, v in getattr(obj, "__dict__", {}).items()]
        for label, value in parts:
            try:
                _BundlePickler(
                    io.BytesIO(), self, owner=False, persistent_id=pickler._persistent
                ).dump(value)
            except Exception as e:
                return f"the model's {label} ({type(value).__name__}: {e})"
        return None

    def _find_unpicklable(self) -> str | None:
        """Name the module attribute that cannot be pickled (only on the error path)."""
        for name, module in sorted(self.captured.items()):
            for attr, value in vars(module).items():
                if attr in _MODULE_SKIP or self.model_name(value) is not None:
                    continue
                try:
                    _BundlePickler(io.BytesIO(), self, owner=True).dump(value)
                except Exception as e:
                    return f"{name}.{attr} ({type(value).__name__}: {e})"
        return None


class _BundlePickler(cloudpickle.Pickler):
    def __init__(
        self,
        file: BinaryIO,
        session: CaptureSession,
        *,
        owner: bool,
        persistent_id: Callable[[object], object | None] | None = None,
    ) -> None:
        self.session = session
        self.owner = owner
        self.pickled: set[str] = set()
        self._persistent = persistent_id
        # The C pickler calls persistent_id for every object if it exists: set it only when needed.
        if owner or persistent_id is not None:
            self.persistent_id = self._persistent_id
        super().__init__(file, protocol=PROTOCOL)
        self._namespaces: dict[int, _FreshNamespaceRef] = {}
        self._keep: list[object] = []  # keeps rewritten code objects alive while ids are in use
        self._captured_dicts = {id(m.__dict__): m for m in session.captured.values()}

    def _persistent_id(self, obj: object) -> object | None:
        if self._persistent is not None:
            pid = self._persistent(obj)
            if pid is not None:
                return pid
        if self.owner:
            name = self.session.model_name(obj)
            if name is not None:
                return (_MODEL_PID, name)
        return None

    def reducer_override(self, obj: Any) -> Any:
        t = type(obj)
        if t is types.FunctionType:
            return self._reduce_function(obj)
        if isinstance(obj, type):
            return self._reduce_class(obj)
        if t is types.ModuleType:
            return self._reduce_module(obj)
        if t is types.CodeType:
            return self._reduce_code(obj)
        if t is property and self.session.strip_docstrings and obj.__doc__ is not None:
            return (property, (obj.fget, obj.fset, obj.fdel, None))
        return NotImplemented

    def _reduce_module(self, module: types.ModuleType) -> Any:
        if not self.session.wants(module):
            return NotImplemented
        name = module.__name__
        if not self.owner:
            return (_bundle_module, (name,))
        self.pickled.add(name)
        self._captured_dicts[id(module.__dict__)] = module
        is_package = hasattr(module, "__path__")
        state = {k: v for k, v in vars(module).items() if k not in _MODULE_SKIP}
        state["__file__"] = _capture.relative_filename(name, is_package)
        if is_package:
            state["__path__"] = []
        if self.session.strip_docstrings:
            state["__doc__"] = None
        return (_rebuild_module, (name, is_package), state, None, None, _set_module_state)

    def _by_reference(self, obj: Any) -> Any:
        """A class or function of a captured module, written as a reference into the table."""
        module_name, qualname = obj.__module__, obj.__qualname__
        if "<locals>" in qualname:
            return None
        try:
            found: Any = self.session.captured[module_name]
            for part in qualname.split("."):
                found = getattr(found, part)
        except (AttributeError, KeyError):
            return None
        if found is not obj:
            return None
        return (_bundle_global, (module_name, qualname))

    def _reduce_class(self, cls: type) -> Any:
        if self.session.wants_name(getattr(cls, "__module__", None)):
            if not self.owner:
                reference = self._by_reference(cls)
                if reference is not None:
                    return reference
            return self._strip_class_doc(_cp._dynamic_class_reduce(cls))
        module = getattr(cls, "__module__", None)
        if isinstance(module, str):
            self.session.wants_name(module)  # records the library for requirements
        return self._strip_class_doc(_cp._class_reduce(cls))

    def _strip_class_doc(self, reduced: Any) -> Any:
        """A class pickled by value keeps its docstring in its dict: drop it when asked."""
        if (
            self.session.strip_docstrings
            and isinstance(reduced, tuple)
            and len(reduced) > 2
            and reduced[0] in (_cp._make_skeleton_class, _cp._make_skeleton_enum)
            and isinstance(reduced[2][0].get("__doc__"), str)
        ):
            reduced[2][0]["__doc__"] = None
        return reduced

    def _reduce_function(self, func: types.FunctionType) -> Any:
        module = getattr(func, "__module__", None)
        if self.session.wants_name(module):
            if not self.owner:
                reference = self._by_reference(func)
                if reference is not None:
                    return reference
        elif _cp._should_pickle_by_reference(func):
            return NotImplemented
        self.session.scan_code(func.__code__, func.__globals__)
        reduced = self._dynamic_function_reduce(func)
        if self.session.strip_docstrings:
            reduced[2][1]["__doc__"] = None  # cloudpickle's slot state sets func.__doc__
        return (_make_function, *reduced[1:5], _function_setstate)

    def _function_getnewargs(self, func: types.FunctionType) -> Any:
        code, base_globals, _, _, closure = super()._function_getnewargs(func)
        module = self._captured_dicts.get(id(func.__globals__))
        if module is None and self.owner:
            module = self.session.captured.get(func.__globals__.get("__name__", ""))
            if module is not None and module.__dict__ is not func.__globals__:
                module = None
        if module is not None and self.owner:
            return code, _ModuleNamespaceRef(module), None, None, closure
        ref = self._namespaces.get(id(func.__globals__))
        if ref is None:
            items = dict(base_globals)
            if "__file__" in items:
                items["__file__"] = Path(str(items["__file__"])).name
            if "__path__" in items:
                items["__path__"] = []
            ref = self._namespaces[id(func.__globals__)] = _FreshNamespaceRef(items)
        return code, ref, None, None, closure

    def _reduce_code(self, code: types.CodeType) -> Any:
        filename = _relative_code_path(code.co_filename, self.session)
        consts = code.co_consts
        if self.session.strip_docstrings:
            consts = _strip_docstring(code)
        if filename != code.co_filename or consts is not code.co_consts:
            code = code.replace(co_filename=filename, co_consts=consts)
            self._keep.append(code)
        return _cp._code_reduce(code)


_CO_HAS_DOCSTRING = 0x4000000  # Python 3.14+


def _strip_docstring(code: types.CodeType) -> tuple[Any, ...]:
    # Up to Python 3.13 a function's first constant is its docstring, or None when it has none
    # (so a string returned by a function without docstring is never first); comprehensions and
    # lambdas (names in angle brackets) follow no such rule. 3.14 flags the docstring instead.
    consts = code.co_consts
    if not consts or not isinstance(consts[0], str) or code.co_name.startswith("<"):
        return consts
    if sys.version_info >= (3, 14) and not code.co_flags & _CO_HAS_DOCSTRING:
        return consts
    return (None, *consts[1:])


def _relative_code_path(filename: str, session: CaptureSession) -> str:
    """The saving machine's path of a code object, made relative (no home or project folder)."""
    if not filename or filename.startswith("<"):
        return filename
    for name, module in session.captured.items():
        file = getattr(module, "__file__", None)
        if file and file == filename:
            return _capture.relative_filename(name, hasattr(module, "__path__"))
    for folder in _capture._library_dirs():
        if filename.startswith(folder):
            return filename[len(folder) :]
    return Path(filename).name
