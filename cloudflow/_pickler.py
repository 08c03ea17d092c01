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
import collections
import contextlib
import contextvars
import copyreg
import dataclasses
import functools
import importlib
import importlib.util
import io
import logging
import os
import pickle
import sys
import threading
import types
import typing
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from pathlib import Path, PurePath
from typing import Any, BinaryIO

import cloudpickle
from cloudpickle import cloudpickle as _cp

from cloudflow import _capture, _digests, _portable
from cloudflow.exceptions import (
    CaptureError,
    EnvironmentMismatchError,
    LeftOutGlobalError,
    ModuleNotInBundleError,
)

_logger = logging.getLogger("cloudflow")

PROTOCOL = 5
_MODEL_PID = "cloudflow-model"
_FILE_PID = "cloudflow-file"  # a path value that leads to a data file of the bundle (files=)
# Module attributes that describe where the module came from on the saving machine.
_MODULE_SKIP = frozenset({"__builtins__", "__loader__", "__spec__", "__cached__"})
_real_import = builtins.__import__
_NEWOBJ: Any = copyreg.__newobj__  # type: ignore[attr-defined]  # pickle's NEWOBJ opcode
_ATOMIC_TYPES = (int, float, complex, str, bytes, bool, type(None), tuple, frozenset)


# --- load side ---------------------------------------------------------------------------------


class ModuleTable:
    """The modules of one loaded bundle, and the ``__import__`` that finds them."""

    def __init__(self) -> None:
        self.modules: dict[str, types.ModuleType] = {}
        self.namespaces: list[dict[str, Any]] = []
        # Held while one of the bundle's pickles is read (models load in parallel threads).
        self.lock = threading.RLock()
        self.builtins: dict[str, Any] = dict(builtins.__dict__)
        self.builtins["__import__"] = self._import
        self.model_refs: list[ModelRef] = []
        # What the code pickle's unpickler created (its memo less what find_class found), kept
        # from the code's load to the models' binding when the code holds placeholders.
        self.made: list[Any] = []
        # Models known before the code is unpickled (lazy stand-ins): put in place at once.
        self.known_models: Mapping[str, object] | None = None
        # A portable bundle's code objects for this Python (see cloudflow._portable).
        self.code_table: dict[str, types.CodeType] | None = None
        # The bundle's data files (cloudflow._files.Resolver), when it has any.
        self.files: Any = None
        # Classes rebuilt by value, by the saving process's tracker id: one class per bundle,
        # shared by its pickles, never the class of another bundle or of the loading program
        # (cloudpickle's own tracker is process-wide, so a second bundle would get the first
        # one's class, and the saving process its live class, rewritten).
        self.classes: dict[str, Any] = {}
        # Dataclasses whose generated methods are made again once the pickle is loaded.
        self.pending_dataclasses: list[tuple[type, Mapping[str, Any]]] = []
        # Code that loads plugins by name (importlib.import_module("plugins.x")) must find the
        # bundle's modules too: captured code gets an importlib whose import_module asks the
        # table first. The real importlib (and sys.modules) stay untouched.
        self.importlib = types.ModuleType("importlib")
        self.importlib.__dict__.update(importlib.__dict__)
        self.importlib.import_module = self.import_module  # type: ignore[attr-defined]
        # sys.modules[__name__] (registries, dispatch by name) must find the bundle's modules.
        self.sys = _BundleSys(self)
        # Modules a function imports at call time that failed to import at save -> the error.
        self.not_imported: dict[str, str] = {}
        # Top-level names of the user's modules where the bundle was saved, and the modules
        # saved by reference (exclude_modules): see owns().
        self.claimed: frozenset[str] = frozenset()
        self.by_reference: tuple[str, ...] = ()

    def owns(self, name: str) -> bool:
        """Whether a module name belongs to the bundle: never to be found in the loading
        program (its top-level name was a module of the user's where the bundle was saved)."""
        top = name.partition(".")[0]
        if top not in self.modules and top not in self.claimed:
            return False
        return not any(name == e or name.startswith(e + ".") for e in self.by_reference)

    def not_in_bundle(self, name: str) -> ModuleNotInBundleError:
        top = name.partition(".")[0]
        return ModuleNotInBundleError(
            f"No module named {name!r} in this bundle. {top!r} was a module of yours where the "
            f"bundle was saved, so the bundle never uses a module {name!r} of the loading "
            f"program; {name!r} was not captured (imported by a name computed at run time, or "
            f"not imported when the bundle was saved). Save again with "
            f"include_modules=[{top!r}].",
            name=name,
        )

    def import_module(self, name: str, package: str | None = None) -> types.ModuleType:
        """``importlib.import_module`` that finds the bundle's modules first."""
        absname = importlib.util.resolve_name(name, package) if name.startswith(".") else name
        module = self.modules.get(absname)
        if module is not None:
            return module
        if self.owns(absname):
            raise self.not_in_bundle(absname)
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
        # importlib.import_module("plugins.x") inside captured code finds the bundle's.
        if level == 0 and name.partition(".")[0] == "importlib" and not fromlist:
            _real_import(name, globals, locals, fromlist or (), level)
            return self.importlib
        if level == 0 and name == "importlib":
            return self.importlib
        if level == 0 and name == "sys":
            return self.sys
        if level > 0:
            package = _capture.package_of(dict(globals or {}))
            resolved = _capture.resolve_import(name, level, package)
            if resolved is None or resolved.partition(".")[0] not in self.modules:
                return _real_import(name, globals, locals, fromlist or (), level)
            absname = resolved
        module = self.modules.get(absname)
        if module is None and absname in self.not_imported:
            raise _not_imported_error(absname, self.not_imported[absname])
        if module is None:
            if self.owns(absname):
                raise self.not_in_bundle(absname)
            return _real_import(name, globals, locals, fromlist or (), level)
        if fromlist:
            for item in fromlist:
                if item != "*" and not hasattr(module, item):
                    sub = self.modules.get(f"{absname}.{item}")
                    if sub is not None:
                        setattr(module, item, sub)
                    elif f"{absname}.{item}" in self.not_imported:
                        full = f"{absname}.{item}"
                        raise _not_imported_error(full, self.not_imported[full])
            return module
        return self.modules.get(absname.partition(".")[0], module)

    def regenerate_dataclasses(self) -> None:
        while self.pending_dataclasses:
            cls, regenerate = self.pending_dataclasses.pop(0)
            _regenerate_dataclass(self, cls, regenerate)

    def finish(self) -> None:
        """Attach submodules to their parents and give every namespace the bundle's builtins.

        cloudpickle resets ``__builtins__`` in the globals of every function it rebuilds; functions
        created later (closures, lambdas) take their builtins from the globals, so set them again.
        """
        self.regenerate_dataclasses()
        for name, module in self.modules.items():
            parent, _, child = name.rpartition(".")
            if parent in self.modules and not hasattr(self.modules[parent], child):
                setattr(self.modules[parent], child, module)
        for namespace in [*(m.__dict__ for m in self.modules.values()), *self.namespaces]:
            namespace["__builtins__"] = self.builtins
            for key, value in namespace.items():
                if value is importlib:
                    namespace[key] = self.importlib
                elif value is sys:
                    namespace[key] = self.sys
                elif value is importlib.import_module:
                    namespace[key] = self.import_module

    def mark_left_out(self, report: Mapping[str, Any]) -> None:
        """Give each module the names its save left out (the manifest's ``captured_globals``)."""
        for name, entry in report.items():
            if isinstance(entry, Mapping) and isinstance(entry.get("not_imported"), str):
                self.not_imported[name] = entry["not_imported"]
            module = self.modules.get(name)
            left_out = entry.get("left_out") if isinstance(entry, Mapping) else None
            if module is not None and isinstance(left_out, list):
                _finish_module(module, tuple(str(n) for n in left_out))

    def bind_models(self, models: Mapping[str, object], roots: Iterable[object]) -> Any:
        """Replace the placeholders of models the code referred to by the loaded models.

        Placeholders sit wherever the code kept a model: module globals, closures, defaults,
        partials, and containers of those (lists, dicts, sets, tuples, objects' and classes'
        attributes). Only what the bundle made is looked at: its modules, classes and
        functions, and the objects its code pickle created (see :class:`_ModelBinder`).
        Returns the first root, rebuilt if it was a tuple holding a placeholder.

        Raises:
            CaptureError: A placeholder is held where it cannot be replaced without changing
                a library's object (a library's ``functools.partial`` subclass, say).
        """
        roots = list(roots)
        made, self.made = self.made, []
        if not self.model_refs:
            return roots[0] if roots else None
        binder = _ModelBinder(self, models, made)
        first = binder.bind(roots)
        binder.check_all_bound()
        self.model_refs.clear()
        return first


def _not_imported_error(name: str, error: str) -> Exception:
    """The error importing ``name`` raised at save (left out of the bundle), raised again.

    A built-in exception comes back as itself (``RuntimeError: no CUDA``), so the code's own
    ``except`` around the import behaves as it did; anything else as a ModuleNotFoundError.
    """
    kind, _, message = error.partition(": ")
    cause = ModuleNotFoundError(
        f"{name!r} is not in this bundle: importing it when the bundle was saved raised {error}, "
        "so it was left out.",
        name=name,
    )
    found = getattr(builtins, kind, None)
    if isinstance(found, type) and issubclass(found, Exception) and found is not ImportError:
        try:
            raised = found(message)
        except Exception:
            return cause
        raised.__cause__ = cause
        return raised
    return cause


class _ModelBinder:
    """Puts each loaded model where its placeholder was, in what the bundle made, once.

    Walked: the bundle's modules and their namespaces, the classes it rebuilt, the functions
    whose globals are its namespaces, and the objects its code pickle created (the unpickler's
    memo, less what ``find_class`` found: library classes, functions and their named objects).
    Nothing else is entered: a library's module, class or object reached from there (``torch``,
    ``sys``, a data pipe) is neither read nor changed. A placeholder is replaced by writing into
    the container that holds it (a dict, a list, a set, an object's ``__dict__``, a function's
    cell or defaults), never through the holder's own methods; an immutable holder (a tuple, a
    frozenset) is made again and put in its own holder's place.
    """

    # Leaves: nothing inside them can be a placeholder the code kept.
    _LEAVES = (str, bytes, bytearray, int, float, complex, bool, type(None), range, memoryview)

    def __init__(self, table: ModuleTable, models: Mapping[str, object], made: list[Any]) -> None:
        self.table = table
        self.models = models
        self.done: dict[int, Any] = {}
        self.model_ids = {id(m) for m in models.values()}
        self.made = made
        self._made_ids = {id(obj) for obj in made}
        self._modules = {id(m) for m in table.modules.values()}
        self._namespaces = {id(m.__dict__) for m in table.modules.values()}
        self._namespaces.update(id(n) for n in table.namespaces)
        self._classes = {id(c) for c in table.classes.values()}
        self.bound: set[int] = set()  # ids of the placeholders replaced
        self.visited: list[Any] = []  # every object entered, in order (what tests count)

    def bind(self, roots: list[Any]) -> Any:
        fixed = [self.fix(root) for root in roots]
        for module in self.table.modules.values():
            self.fix(module)
        for namespace in self.table.namespaces:
            self.fix(namespace)
        if len(self.bound) < len(self.table.model_refs):
            # Some are held by what is not entered (a library's object that holds a list, say):
            # the containers the pickle made, whoever holds them.
            for obj in self.made:
                self.fix(obj)
        return fixed[0] if fixed else None

    def _own(self, obj: Any) -> bool:
        """Whether the bundle made ``obj`` (and so may look inside it)."""
        key = id(obj)
        if isinstance(obj, types.ModuleType):
            return key in self._modules
        if isinstance(obj, type):
            return key in self._classes
        if isinstance(obj, types.FunctionType):
            return id(obj.__globals__) in self._namespaces
        return key in self._made_ids or key in self._namespaces

    def fix(self, obj: Any) -> Any:
        """``obj`` with its placeholders replaced (a new object only for immutable ones)."""
        if type(obj) is ModelRef:
            self.bound.add(id(obj))
            return self.models[obj.name]
        key = id(obj)
        if key in self.done:
            return self.done[key]
        if isinstance(obj, self._LEAVES) or key in self.model_ids or not self._own(obj):
            return obj
        self.done[key] = obj  # breaks cycles; immutable containers are replaced below
        at = len(self.visited)
        self.visited.append(obj)
        if isinstance(obj, types.ModuleType):
            self._fix_dict(obj.__dict__)
        elif isinstance(obj, dict):
            self._fix_dict(obj)
        elif isinstance(obj, list):
            for i, value in enumerate(obj):
                new = self.fix(value)
                if new is not value:
                    list.__setitem__(obj, i, new)
        elif isinstance(obj, tuple | frozenset | set):
            items = [self.fix(v) for v in obj]
            if any(a is not b for a, b in zip(items, obj, strict=True)):
                if isinstance(obj, set):
                    set.clear(obj)
                    set.update(obj, items)
                else:
                    new_obj = type(obj)(items) if not hasattr(obj, "_make") else obj._make(items)
                    self.done[key] = self.visited[at] = new_obj  # the old one must not stay
                    return new_obj
        elif isinstance(obj, types.FunctionType):
            self._fix_function(obj)
        elif isinstance(obj, functools.partial):
            self._fix_partial(obj)
        elif isinstance(obj, type):
            for name, value in list(vars(obj).items()):
                if name.startswith("__") and name.endswith("__"):
                    continue
                new = self.fix(value)
                if new is not value:
                    with contextlib.suppress(AttributeError, TypeError):
                        setattr(obj, name, new)
        elif isinstance(obj, staticmethod | classmethod):
            self.fix(obj.__func__)
        elif isinstance(obj, property):
            for accessor in (obj.fget, obj.fset, obj.fdel):
                if accessor is not None:
                    self.fix(accessor)
        else:
            try:  # not getattr: a class's own __getattr__ must not run
                attributes = object.__getattribute__(obj, "__dict__")
            except AttributeError:
                return obj
            if type(attributes) is dict:
                self._fix_dict(attributes)
        return obj

    def _fix_partial(self, obj: functools.partial[Any]) -> None:
        func = self.fix(obj.func)
        args = tuple(self.fix(a) for a in obj.args)
        keywords = {k: self.fix(v) for k, v in obj.keywords.items()}
        changed = (
            func is not obj.func
            or any(a is not b for a, b in zip(args, obj.args, strict=True))
            or any(keywords[k] is not v for k, v in obj.keywords.items())
        )
        # Only the standard library's own partial is set again (its __setstate__ is known);
        # a subclass's placeholders stay, and the check after the walk names them.
        if changed and type(obj) is functools.partial:
            functools.partial.__setstate__(obj, (func, args, keywords, obj.__dict__ or None))  # type: ignore[attr-defined]

    def _fix_dict(self, mapping: dict[Any, Any]) -> None:
        for k, value in list(mapping.items()):
            new = self.fix(value)
            if new is not value:
                dict.__setitem__(mapping, k, new)

    def _fix_function(self, func: types.FunctionType) -> None:
        for cell in func.__closure__ or ():
            with contextlib.suppress(ValueError):
                new = self.fix(cell.cell_contents)
                if new is not cell.cell_contents:
                    cell.cell_contents = new
        if func.__defaults__:
            func.__defaults__ = self.fix(func.__defaults__)
        if func.__kwdefaults__:
            self._fix_dict(func.__kwdefaults__)
        self._fix_dict(func.__dict__)

    def check_all_bound(self) -> None:
        """Raise if a placeholder is still held where the walk could not replace it."""
        # Let go of the pickle's objects: a tuple that was made again, say, must not count as
        # a holder of its old items. What still holds a placeholder then is a real holder.
        self.made.clear()
        self.done.clear()
        left = _still_held(self.table.model_refs)
        if left:
            ref, holder = left[0]
            raise CaptureError(
                f"Model {ref.name!r} is kept inside {holder}, which cloudflow does not change "
                "when it loads a bundle (it is a library's object). Keep the model in a module "
                "global, a dict, list or tuple, or an object of a class of your own, or make "
                "that object inside the predict function, and save again."
            )


def _still_held(refs: list[ModelRef]) -> list[tuple[ModelRef, str]]:
    """The placeholders something besides ``refs`` still holds, each with its holder named."""
    probe = [ModelRef("")]
    alone = [sys.getrefcount(r) for r in probe][0]  # a placeholder held by its list alone
    suspects = [r for r in refs if sys.getrefcount(r) > alone]
    if not suspects:
        return []
    import gc  # error path only: asks the collector who holds them

    gc.collect()
    found = []
    for ref in suspects:
        holders = [
            h
            for h in gc.get_referrers(ref)
            if h is not refs and h is not suspects and not isinstance(h, types.FrameType)
        ]
        if holders:
            found.append((ref, _describe_holder(holders[0])))
    return found


def _describe_holder(holder: object) -> str:
    import gc

    owner = holder
    if type(holder) in (dict, tuple):  # an object's __dict__, a partial's args: name the object
        for candidate in gc.get_referrers(holder):
            if not isinstance(candidate, types.FrameType | types.CellType | list | dict):
                owner = candidate
                break
    kind = type(owner)
    return f"a {kind.__module__}.{kind.__qualname__} object"


class _ModulesView(MutableMapping[str, types.ModuleType]):
    """``sys.modules`` as a bundle's code sees it: the bundle's modules first."""

    def __init__(self, table: ModuleTable) -> None:
        self._table = table

    def __getitem__(self, name: str) -> types.ModuleType:
        module = self._table.modules.get(name)
        if module is None and self._table.owns(name):
            raise KeyError(name)  # never the loading program's module of a name of the bundle
        return module if module is not None else sys.modules[name]

    def __setitem__(self, name: str, module: types.ModuleType) -> None:
        sys.modules[name] = module

    def __delitem__(self, name: str) -> None:
        del sys.modules[name]

    def __iter__(self) -> Iterator[str]:
        yield from self._table.modules
        yield from (n for n in list(sys.modules) if n not in self._table.modules)

    def __len__(self) -> int:
        return len(set(sys.modules) | set(self._table.modules))


class _BundleSys(types.ModuleType):
    """The ``sys`` module of a bundle's code: the real one, but for ``modules`` (see above)."""

    def __init__(self, table: ModuleTable) -> None:
        super().__init__("sys", sys.__doc__)
        self.__dict__["modules"] = _ModulesView(table)

    def __getattr__(self, name: str) -> Any:
        return getattr(sys, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(sys, name, value)  # sys.stdout = ... changes the real one

    def __delattr__(self, name: str) -> None:
        delattr(sys, name)


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


def _finish_module(module: types.ModuleType, left_out: tuple[str, ...]) -> types.ModuleType:
    """Make a read of a global the save left out say so, instead of a bare AttributeError."""
    if left_out and "__getattr__" not in module.__dict__:
        module.__dict__["__getattr__"] = _LeftOut(module.__name__, frozenset(left_out))
    return module


class _LeftOut:
    """A captured module's ``__getattr__`` (PEP 562) for the globals the save left out."""

    def __init__(self, module: str, names: frozenset[str]) -> None:
        self.module = module
        self.names = names

    def __call__(self, name: str) -> Any:
        if name in self.names:
            raise LeftOutGlobalError(
                f"{self.module}.{name} is not in this bundle: no code the bundle saved read it "
                f"by name, so it was left out when the bundle was saved. If your code reaches it "
                f"by a computed name, save again with include_modules=[{self.module!r}] (the "
                "whole module travels then)."
            )
        raise AttributeError(f"module {self.module!r} has no attribute {name!r}")


# Which loaded bundle a class rebuilt by value belongs to (saving it again adopts the bundle).
_TABLE_OF_CLASS: weakref.WeakKeyDictionary[Any, ModuleTable] = weakref.WeakKeyDictionary()


def _track(table: ModuleTable, class_tracker_id: str | None, cls: Any) -> Any:
    """Keep a rebuilt class as its bundle's, under the id it had when saved.

    cloudpickle learns the class -> id direction only, so that saving the class again writes the
    same id (deterministic re-saves), never id -> class, which would make every later load in
    this process return this bundle's class.
    """
    if class_tracker_id is not None:
        table.classes[class_tracker_id] = cls
        with _cp._DYNAMIC_CLASS_TRACKER_LOCK:
            _cp._DYNAMIC_CLASS_TRACKER_BY_CLASS[cls] = class_tracker_id
    with contextlib.suppress(TypeError):  # TypeVars cannot be weakly referenced before 3.12
        _TABLE_OF_CLASS[cls] = table
    return cls


def _skeleton_class(
    type_constructor: type,
    name: str,
    bases: tuple[type, ...],
    type_kwargs: dict[str, Any],
    class_tracker_id: str | None,
    extra: Any,
) -> type:
    """cloudpickle's ``_make_skeleton_class``, tracked per bundle (see ModuleTable.classes)."""
    table = _table()
    if class_tracker_id is not None and class_tracker_id in table.classes:
        return table.classes[class_tracker_id]
    namespace = {sys.intern(k): v for k, v in type_kwargs.items()}
    cls = types.new_class(
        name, bases, {"metaclass": type_constructor}, lambda ns: ns.update(namespace)
    )
    return _track(table, class_tracker_id, cls)


def _skeleton_enum(
    bases: tuple[type, ...],
    name: str,
    qualname: str,
    members: dict[str, Any],
    module: str,
    class_tracker_id: str | None,
    extra: Any,
) -> type:
    """cloudpickle's ``_make_skeleton_enum``, tracked per bundle."""
    table = _table()
    if class_tracker_id is not None and class_tracker_id in table.classes:
        return table.classes[class_tracker_id]
    metaclass = type(bases[-1])
    namespace: Any = metaclass.__prepare__(name, bases)
    for member, value in members.items():
        namespace[member] = value
    cls: Any = metaclass.__new__(metaclass, name, bases, namespace)
    cls.__module__ = module
    cls.__qualname__ = qualname
    return _track(table, class_tracker_id, cls)


def _typevar(
    name: str,
    bound: Any,
    constraints: tuple[Any, ...],
    covariant: bool,
    contravariant: bool,
    class_tracker_id: str | None,
) -> Any:
    """cloudpickle's ``_make_typevar``, tracked per bundle."""
    table = _table()
    if class_tracker_id is not None and class_tracker_id in table.classes:
        return table.classes[class_tracker_id]
    tv = typing.TypeVar(  # type: ignore[misc]
        name, *constraints, bound=bound, covariant=covariant, contravariant=contravariant
    )
    return _track(table, class_tracker_id, tv)


def _lru_cache(func: Callable[..., Any], maxsize: int | None, typed: bool) -> Any:
    """A cached function of a captured module, with a fresh empty cache."""
    return functools.lru_cache(maxsize=maxsize, typed=typed)(func)


def _new_type(qualname: str, supertype: Any, module: str) -> Any:
    """A ``typing.NewType`` of a captured module, the bundle's own."""
    make: Any = typing.NewType  # called with a computed name: mypy wants a literal
    made = make(qualname, supertype)
    made.__module__ = module
    return made


def _own_names(tops: str, excluded: str) -> str:
    table = _table()
    table.claimed = frozenset(tops.split())
    table.by_reference = tuple(excluded.split())
    return tops


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

    def __init__(self, module: types.ModuleType, pickler: _BundlePickler) -> None:
        self.module = module
        self.pickler = pickler

    def __reduce__(self) -> tuple[Any, ...]:
        # The module is pickled next as the globals of a function, not as an object.
        self.pickler.namespace_of = self.module
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
        # What find_class returned: objects the pickle names, not objects it made.
        self.found: dict[int, Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        # A global written by name (an object whose __reduce__ returns its name) of a captured
        # module is the bundle's, never the loading program's module of that name.
        table = _active_table.get()
        if table is not None and module in table.modules:
            found: Any = table.modules[module]
            for part in name.split("."):
                found = getattr(found, part)
        elif table is not None and table.owns(module):
            raise table.not_in_bundle(module)
        else:
            found = super().find_class(module, name)
        self.found[id(found)] = found
        return found

    def made(self) -> list[Any]:
        """The objects this unpickler created so far (its memo less what it found)."""
        return [obj for obj in self.memo.copy().values() if id(obj) not in self.found]

    def persistent_load(self, pid: object) -> object:
        if isinstance(pid, tuple) and len(pid) == 2 and pid[0] == _MODEL_PID:
            table = _table()
            known = table.known_models
            if known is not None and str(pid[1]) in known:
                # Known already (a lazy model's stand-in): in place at once, nothing to walk.
                return known[str(pid[1])]
            ref = ModelRef(str(pid[1]))
            table.model_refs.append(ref)
            return ref
        if isinstance(pid, tuple) and len(pid) == 3 and pid[0] == _FILE_PID:
            files = _table().files
            if files is None:
                raise pickle.UnpicklingError("A data file path of a bundle without data files")
            return files.path_value(str(pid[1]), str(pid[2]))
        if self._persistent is None:
            raise pickle.UnpicklingError(f"Unknown persistent id {pid!r}")
        return self._persistent(pid)


class LoadContext:
    """The :class:`~cloudflow.flavors._base.PickleContext` flavors use at load time."""

    def __init__(self, table: ModuleTable, read: Callable[[Path], bytes] | None = None) -> None:
        self.table = table
        # The bytes of a file as verified (read once, checked in memory): see VerifiedBytes.
        self.read_bytes: Callable[[Path], bytes] = read or (lambda path: Path(path).read_bytes())

    def dump(self, obj: object, path: Path, *, persistent_id: Any = None) -> None:
        raise CaptureError("A bundle is read-only once saved.")

    def load(
        self, path: Path, *, persistent_load: Callable[[object], object] | None = None
    ) -> object:
        data = self.read_bytes(path)
        # One pickle at a time per bundle (models load in parallel threads): unpickling does not
        # release the GIL anyway, and the table's classes and placeholders are made once.
        with self.table.lock, activate(self.table):
            obj = _Unpickler(io.BytesIO(data), persistent_load).load()
            self.table.regenerate_dataclasses()
        return obj


def load_code(
    path: Path, table: ModuleTable, read: Callable[[Path], bytes] | None = None
) -> Callable[..., Any]:
    """Read ``code.pkl``: the predict function, then the captured modules, until ``None``.

    ``read`` gives the file's bytes as verified (see :class:`cloudflow._manifest.VerifiedBytes`).
    """
    if read is not None:
        return read_code(io.BytesIO(read(path)), table)
    with open(path, "rb") as f:
        return read_code(f, table)


def read_code(file: BinaryIO, table: ModuleTable) -> Any:
    """Read a code pickle from an open file into ``table`` (what :func:`load_code` does)."""
    with activate(table):
        unpickler = _Unpickler(file)
        obj: Any = unpickler.load()
        while unpickler.load() is not None:
            pass
        if table.model_refs:  # kept for bind_models, which walks only what the pickle made
            table.made = unpickler.made()
    table.finish()
    return obj


def dumps(obj: object, **session_options: Any) -> bytes:
    """``obj`` pickled as ``save_bundle`` writes a predict function (a bundle's ``code.pkl``)."""
    buffer = io.BytesIO()
    CaptureSession(**session_options).write_code(obj, buffer)
    return buffer.getvalue()


def loads(data: bytes, table: ModuleTable | None = None) -> Any:
    """What :func:`dumps` wrote, loaded as ``load_bundle`` loads ``code.pkl`` (a fresh table)."""
    return read_code(io.BytesIO(data), table if table is not None else ModuleTable())


# --- save side ---------------------------------------------------------------------------------


class CaptureSession:
    """Decides what travels by value and writes the pickles of one bundle.

    A module is *captured* (travels by value) when saved code reaches it and it is the user's;
    of a captured module, only the globals that saved code reaches travel: the names its
    functions, class bodies and nested code use (globals, attributes read off modules, names
    imported from them), and what those reach in turn. A module the code reads by computed
    names (``globals()``, ``vars(mod)``, ``getattr(mod, name)``, ``sys.modules[...]``) or that
    ``include_modules`` names travels whole. See :meth:`capture_report`.
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
            _portable.CodeTables(dict(python_versions), strip_docstrings)
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
        # Module -> the globals written so far.
        self.written: dict[str, set[str]] = {}
        self._reached: list[types.FunctionType] = []
        self._computed_imports: set[str] = set()
        # Strings and pathlib paths (True) of the code pickle no files= entry covers, in order:
        # those that name a file or folder here are reported (see _files.unbundled_paths).
        self.path_values: dict[str, bool] = {}
        # Module -> the error importing it raised: a body import whose module fails to import
        # here is left out (see _capture.import_reached); the report and the load name it.
        self.not_imported: dict[str, str] = {}
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
            # Asked for by name: plugins loaded by computed names must be there too.
            for sub in _capture.walk_submodules(module):
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
            self._included(name) or _capture.is_user_module(module) or _in_table(module)
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
        if top not in sys.stdlib_module_names and top not in _capture._NEVER_CAPTURED:
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
        package = _capture.package_of(dict(namespace)) if namespace else None
        for name, level, fromlist in _capture.imports_in_code(code):
            absname = _capture.resolve_import(name, level, package)
            if absname is not None:
                self._reach_import(absname, fromlist)

    def _reach_import(self, absname: str, fromlist: Iterable[str] = ()) -> None:
        if self._excluded(absname) and absname not in sys.modules:
            return  # excluded: referred to by name, so never imported by the capture
        module = self.captured.get(absname) or _capture.import_reached(absname, self.not_imported)
        if module is None:
            top = absname.partition(".")[0]
            if top not in sys.stdlib_module_names and not _capture.spec_is_user(absname):
                self.third_party.add(top)
            return
        if not self.wants(module):
            return
        # `import a.b.c` binds `a`: every package on the way must be in the table too.
        parts = absname.split(".")
        self._reached_as_object(module)
        for i in range(1, len(parts)):
            parent = self._lookup(".".join(parts[:i]))
            if parent is not None and self.wants(parent):
                self._reached_as_object(parent)
                self.forced.setdefault(parent.__name__, set()).add(parts[i])
        for item in fromlist:
            if item == "*":
                self.whole.setdefault(absname, "a function imports * from it")
                continue
            if self._excluded(f"{absname}.{item}") and f"{absname}.{item}" not in sys.modules:
                continue
            sub = _capture.submodule(module, item, self.not_imported)
            if sub is not None and self.wants(sub):
                self._reached_as_object(sub)

    def _reached_as_object(self, module: types.ModuleType) -> None:
        if self.wants(module):
            self.as_objects.add(module.__name__)

    def note_function(self, func: types.FunctionType) -> None:
        """Record what a function pickled by value reads (see the class docstring)."""
        self._reached.append(func)
        access = _capture.code_access(func.__code__)
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
                self._reached_as_object(value)
        where = f"{func.__module__}.{func.__qualname__}"
        if own is not None and access.calls_globals and "globals" not in namespace:
            self.capture_whole(own.__name__, f"{where} calls globals()")
        if own is not None and any(namespace.get(n) is sys for n in access.sys_modules):
            self.capture_whole(own.__name__, f"{where} reads sys.modules")
        for name, how in access.reflected.items():
            value = namespace.get(name)
            if isinstance(value, types.ModuleType) and self.wants(value):
                self.capture_whole(value.__name__, f"{where} reads {how}")
        if _capture._IMPORTERS & access.names:
            for text in sorted(access.strings):
                if text in sys.modules or _capture.spec_is_user(text):
                    self._reach_import(text)
            followed = [
                p for p in sorted(_capture.import_prefixes(func.__code__)) if self._follow(p, where)
            ]
            if access.computed_import and where not in self._computed_imports:
                self._computed_imports.add(where)
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

    def _follow(self, package: str, where: str) -> bool:
        """Capture the submodules of ``package`` this process has imported, whole.

        Code that imports ``f"{package}.{name}"`` may import any of them; each travels whole
        (its functions are found by names the bytecode does not show). Returns whether
        ``package`` is a module of the user's.
        """
        module = self._lookup(package) or _capture.import_reached(package)
        if module is None or not self.wants(module):
            return False
        self._reached_as_object(module)
        why = f"{where} imports {package + '.'!r} + a name computed at run time"
        for name in sorted(n for n in list(sys.modules) if n.startswith(package + ".")):
            sub = sys.modules.get(name)
            if sub is not None and self.wants(sub):
                self._reached_as_object(sub)
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
                if _capture.is_user_module(module):
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

    def capture_report(self) -> dict[str, dict[str, Any]]:
        """Module -> the globals that travel, those left out, and why it travels whole if so.

        A module a function imports at call time that raised when imported at save is listed
        with the error instead (``not_imported``): it is not in the bundle.
        """
        report: dict[str, dict[str, Any]] = {}
        for name, module in sorted(self.captured.items()):
            entry: dict[str, Any] = {
                "globals": sorted(self.written.get(name, set())),
                "left_out": list(self._left_out(name, module)),
            }
            if name in self.whole:
                entry["whole"] = self.whole[name]
            report[name] = entry
        for name, error in sorted(self.not_imported.items()):
            if name not in self.captured:
                report[name] = {"not_imported": error}
        return report

    # writing ------------------------------------------------------------------------------------

    def dump_code(self, predict_fn: Callable[..., Any], path: Path) -> None:
        """Write ``code.pkl``: the predict function, then every captured module, then ``None``."""
        with _digests.open_hashed(path) as f:  # digested as written: the seal reads nothing back
            self.write_code(predict_fn, f)

    def write_code(self, predict_fn: object, f: BinaryIO) -> None:
        """Write what :meth:`dump_code` writes into an open file.

        The predict function comes first; then, round after round until nothing new is
        reached, the globals of captured modules that saved code reaches (each round may reach
        more code, and so more names); then ``None``. What was left out goes to the manifest
        (:meth:`capture_report`), so the pickle depends only on what travels.
        """
        with self._lock:
            pickler = _BundlePickler(f, self, owner=True)
            self._dump(pickler, predict_fn, "the predict function")
            while True:
                batch = self._pending_state(pickler)
                if not batch:
                    break
                for state in batch:
                    self._dump(pickler, state, f"module {state.module.__name__}", state)
            pickler.dump(_OwnNames(*self.own_names()))
            pickler.dump(None)

    def _left_out(self, name: str, module: types.ModuleType) -> tuple[str, ...]:
        """Globals of a captured module that do not travel (its captured submodules do)."""
        left = _carried_names(module) - self.written.get(name, set())
        return tuple(sorted(k for k in left if f"{name}.{k}" not in self.captured))

    def _pending_state(self, pickler: _BundlePickler) -> list[_ModuleState]:
        batch = []
        for name, module in sorted(self.captured.items()):
            written = self.written.setdefault(name, set())
            carried = _carried_names(module)
            if name in self.whole:
                wanted = carried
            else:
                reached = self.forced.get(name, set()) | _ALWAYS_CARRIED
                if name in self.as_objects:
                    reached = reached | self.attributes
                wanted = carried & reached
            new = sorted(wanted - written)
            if new or name not in pickler.pickled:
                written.update(new)
                state = {k: module.__dict__[k] for k in new}
                for value in state.values():
                    if isinstance(value, types.ModuleType):
                        self._reached_as_object(value)
                batch.append(_ModuleState(module, state))
        return batch

    def dump(
        self,
        obj: object,
        path: Path,
        *,
        persistent_id: Callable[[object], object | None] | None = None,
    ) -> None:
        """Reference-mode pickle of (part of) a model, for a flavor."""
        with self._lock, _digests.open_hashed(path) as f:  # digested as written
            pickler = _BundlePickler(f, self, owner=False, persistent_id=persistent_id)
            self._dump(pickler, obj, f"model file {path.name}")

    def load(self, path: Path, *, persistent_load: Any = None) -> object:
        raise CaptureError("Models are loaded through a LoadContext.")

    def read_bytes(self, path: Path) -> bytes:
        raise CaptureError("Models are loaded through a LoadContext.")

    def _dump(
        self, pickler: _BundlePickler, obj: object, what: str, state: _ModuleState | None = None
    ) -> None:
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
            found = self._find_unpicklable(state)
            if found is None:
                raise CaptureError(
                    f"Cannot serialize {what}: {type(e).__name__}: {e}. Make the object "
                    "picklable, or keep it out of what the function reaches."
                ) from e
            module, attr, value, error = found
            kind = type(value)
            why = self.whole.get(module)
            reached = (
                f"The module travels whole because {why}"
                if why
                else "Saved code reads it; create it inside the function that uses it (or at "
                "first use)"
            )
            if self.wants_name(kind.__module__):
                reached += f", or give {kind.__qualname__} __getstate__ and __setstate__"
            raise CaptureError(
                f"Cannot serialize {what}: the global {module}.{attr} "
                f"({kind.__module__}.{kind.__qualname__}) cannot be pickled: {error}. "
                f"{reached}; or keep {module!r} by reference with "
                f"exclude_modules=[{module!r}] if it is installed where the bundle loads."
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

    def _find_unpicklable(self, state: _ModuleState | None) -> tuple[str, str, object, str] | None:
        """The module global that cannot be pickled: (module, name, value, error); error path.

        Candidates are the globals being written when the dump failed: those of the module
        state, else the globals of the functions reached, the latest first (the failure is
        deepest in the graph, and plain values before functions, which would only repeat it).
        """
        candidates: list[tuple[str, str, object]] = []
        if state is not None:
            name = state.module.__name__
            candidates = [(name, k, v) for k, v in state.state.items()]
        else:
            for func in reversed(self._reached):
                module = str(func.__globals__.get("__name__"))
                for key in _cp._extract_code_globals(func.__code__):
                    if key in func.__globals__:
                        candidates.append((module, key, func.__globals__[key]))
        candidates.sort(key=lambda c: isinstance(c[2], types.FunctionType | type))
        seen: set[int] = set()
        for module, key, value in candidates:
            if id(value) in seen or self.model_name(value) is not None:
                continue
            seen.add(id(value))
            try:
                _BundlePickler(io.BytesIO(), self, owner=True).dump(value)
            except Exception as e:
                return module, key, value, f"{type(e).__name__}: {e}"
        return None


# Module globals every captured module carries when it has them: Python reads them itself.
_ALWAYS_CARRIED = frozenset({"__all__", "__getattr__", "__dir__"})
# Module attributes that describe where the module came from on the saving machine, or that
# the skeleton sets itself.
_NOT_CARRIED = _MODULE_SKIP | {"__name__", "__file__", "__path__", "__package__", "__doc__"}


def _carried_names(module: types.ModuleType) -> set[str]:
    """The globals of a module that can travel (all but the import system's own)."""
    return {
        k for k, v in vars(module).items() if k not in _NOT_CARRIED and not isinstance(v, _LeftOut)
    }


def _table_of(namespace: Mapping[str, Any]) -> ModuleTable | None:
    """The loaded bundle a globals dict belongs to (its builtins' ``__import__`` says)."""
    builtins_ = namespace.get("__builtins__")
    importer = builtins_.get("__import__") if isinstance(builtins_, dict) else None
    owner = getattr(importer, "__self__", None)
    return owner if isinstance(owner, ModuleTable) else None


def _in_table(module: types.ModuleType) -> bool:
    return _table_of(module.__dict__) is not None


class _OwnNames:
    """Pickles as the names the bundle owns at load (see :meth:`CaptureSession.own_names`)."""

    def __init__(self, tops: list[str], excluded: list[str]) -> None:
        self.tops = tops
        self.excluded = excluded

    def __reduce__(self) -> tuple[Any, ...]:
        # Each list as one new string: a name that is also an object seen earlier in the pickle
        # would be written as a reference to it or not, by identity, so differently from one
        # process to the next (same objects, other bytes).
        return (_own_names, ("".join(f"{t}\n" for t in self.tops), "\n".join(self.excluded)))


class _ModuleState:
    """Pickles as globals set into a captured module (one round of ``write_code``)."""

    def __init__(self, module: types.ModuleType, state: dict[str, Any]) -> None:
        self.module = module
        self.state = state

    def __reduce__(self) -> tuple[Any, ...]:
        return (_set_module_state, (self.module, self.state))


_OWN_SKELETONS = {
    _cp._make_skeleton_class: _skeleton_class,
    _cp._make_skeleton_enum: _skeleton_enum,
}


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
        self.namespace_of: types.ModuleType | None = None
        self._owners: dict[int, str] = {}  # code id -> the function's dotted name, for messages

    def _persistent_id(self, obj: object) -> object | None:
        if self._persistent is not None:
            pid = self._persistent(obj)
            if pid is not None:
                return pid
        if self.owner:
            name = self.session.model_name(obj)
            if name is not None:
                return (_MODEL_PID, name)
            files = self.session.files
            if files:
                found = files.bundled(obj)
                if found is not None:
                    return (_FILE_PID, *found)
            if type(obj) is str:
                if "/" in obj or "." in obj:
                    self.session.path_values.setdefault(obj, False)
            elif isinstance(obj, PurePath):
                self.session.path_values[str(obj)] = True
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
        if t is typing.TypeVar:
            return self._reduce_typevar(obj)
        if t is property and self.session.strip_docstrings and obj.__doc__ is not None:
            return (property, (obj.fget, obj.fset, obj.fdel, None))
        if t is typing.ForwardRef and self.session.code_tables is not None:
            # A string annotation (typing.NamedTuple fields under `from __future__ import
            # annotations`) holds the code compiled from it: made again from the string.
            return (_forward_ref, (obj.__forward_arg__, *_forward_ref_options(obj)))
        if t is functools.cached_property:
            return self._reduce_cached_property(obj)
        if t is functools._lru_cache_wrapper:
            return self._reduce_lru_cache(obj)
        if t is typing.NewType:
            return self._reduce_newtype(obj)
        if t.__reduce__ is not object.__reduce__ or t.__reduce_ex__ is not object.__reduce_ex__:
            return self._reduce_custom(obj)
        return NotImplemented

    # Objects whose ``__reduce__`` returns their name are written by pickle as a reference to
    # that global (``module.name``, looked up at load). In a captured module that lookup would
    # run before the module's globals are set, and the global may not travel at all: such an
    # object of a captured module is written by value instead, once per pickle (the memo makes
    # every reference in the bundle the same object).

    def _named_reference(self, obj: Any, module: Any, qualname: str) -> Any:
        """Where a named object of a captured module is written by reference; else None.

        Reference mode (a model's pickle) writes it as a name in the bundle's module table; the
        code pickle then carries that global. The code pickle itself notes that the module's
        global of that name travels with the object.
        """
        if not self.owner:
            found: Any = self.session.captured.get(module)
            for part in qualname.split("."):
                found = getattr(found, part, None)
            if found is obj:
                self.session.forced.setdefault(module, set()).add(qualname.partition(".")[0])
                return (_bundle_global, (module, qualname))
            return None
        captured = self.session.captured[module]
        if "." not in qualname and captured.__dict__.get(qualname) is obj:
            self.session.forced.setdefault(module, set()).add(qualname)
        return None

    def _reduce_lru_cache(self, wrapper: Any) -> Any:
        module = getattr(wrapper, "__module__", None)
        func = getattr(wrapper, "__wrapped__", None)
        if not self.session.wants_name(module) or not isinstance(func, types.FunctionType):
            return NotImplemented
        reference = self._named_reference(wrapper, module, wrapper.__qualname__)
        if reference is not None:
            return reference
        params = wrapper.cache_parameters()
        # What update_wrapper copies from the function is copied again at load (a docstring
        # stripped from the function stays stripped); what the user set on the wrapper stays.
        copied = {*functools.WRAPPER_ASSIGNMENTS, "__wrapped__", *vars(func)}
        state = {k: v for k, v in vars(wrapper).items() if k not in copied}
        return (_lru_cache, (func, params["maxsize"], params["typed"]), state or None)

    def _reduce_cached_property(self, prop: Any) -> Any:
        # Python 3.10 and 3.11 keep an RLock in the descriptor: a new one is made at load.
        state = {
            k: v
            for k, v in vars(prop).items()
            if k not in ("lock", "func", "__module__")
            and not (k == "__doc__" and (self.session.strip_docstrings or v is prop.func.__doc__))
        }
        return (functools.cached_property, (prop.func,), state)

    def _reduce_newtype(self, new_type: Any) -> Any:
        module = getattr(new_type, "__module__", None)
        if not self.session.wants_name(module):
            return NotImplemented
        reference = self._named_reference(new_type, module, new_type.__qualname__)
        if reference is not None:
            return reference
        return (_new_type, (new_type.__qualname__, new_type.__supertype__, module))

    def _reduce_custom(self, obj: Any) -> Any:
        """An instance of a captured class with its own ``__reduce__``: by value if it is a name."""
        cls = type(obj)
        if not self.session.wants_name(getattr(cls, "__module__", None)):
            return NotImplemented
        reduced = obj.__reduce_ex__(PROTOCOL)
        if not isinstance(reduced, str):
            return reduced
        reference = self._named_reference(obj, cls.__module__, reduced)
        if reference is not None:
            return reference
        getstate = getattr(obj, "__getstate__", None)
        state = getstate() if getstate is not None else getattr(obj, "__dict__", None)
        return (_NEWOBJ, (cls,), state or None)

    def _reduce_module(self, module: types.ModuleType) -> Any:
        if not self.session.wants(module):
            return NotImplemented
        name = module.__name__
        if self.namespace_of is module:
            self.namespace_of = None
        else:
            self.session.as_objects.add(name)
        if not self.owner:
            return (_bundle_module, (name,))
        self.pickled.add(name)
        is_package = hasattr(module, "__path__")
        # The skeleton only: the globals follow, as far as saved code reaches them.
        state: dict[str, Any] = {
            "__file__": _capture.relative_filename(name, is_package),
            "__package__": module.__dict__.get("__package__"),
            "__doc__": None if self.session.strip_docstrings else module.__dict__.get("__doc__"),
        }
        if is_package:
            state["__path__"] = []
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
        # The code pickle must then carry that global of the module.
        self.session.forced.setdefault(module_name, set()).add(qualname.partition(".")[0])
        return (_bundle_global, (module_name, qualname))

    def _reduce_class(self, cls: type) -> Any:
        table = _TABLE_OF_CLASS.get(cls)
        if table is not None:
            self.session.adopt_table(table)
        if self.session.wants_name(getattr(cls, "__module__", None)):
            if not self.owner:
                reference = self._by_reference(cls)
                if reference is not None:
                    return reference
            self.session.travels_home(self.session.captured[cls.__module__], cls)
            return self._own_class(cls, _cp._dynamic_class_reduce(cls))
        module = getattr(cls, "__module__", None)
        if isinstance(module, str):
            self.session.wants_name(module)  # records the library for requirements
        return self._own_class(cls, _cp._class_reduce(cls))

    def _own_class(self, cls: type, reduced: Any) -> Any:
        """A class by value, rebuilt per bundle, with its ``__slots__``, docstring if asked."""
        if not isinstance(reduced, tuple) or reduced[0] not in _OWN_SKELETONS:
            return reduced
        maker, args, (clsdict, slotstate), *rest = reduced
        if (
            maker is _cp._make_skeleton_class
            and "__slots__" in cls.__dict__
            and typing.NamedTuple not in cls.__dict__.get("__orig_bases__", ())
        ):
            # cloudpickle sets __slots__ after creating the class, where it has no effect.
            args = (*args[:3], {**args[3], "__slots__": cls.__dict__["__slots__"]}, *args[4:])
            clsdict = {k: v for k, v in clsdict.items() if k != "__slots__"}
        if self.session.strip_docstrings and isinstance(clsdict.get("__doc__"), str):
            clsdict = {**clsdict, "__doc__": None}
        if self.session.code_tables is not None and dataclasses.is_dataclass(cls):
            regenerated = _dataclass_regeneration(cls, clsdict)
            if regenerated is not None:
                clsdict, slotstate = regenerated
                rest = [rest[0], rest[1], _class_setstate, *rest[3:]]
        if self.session.code_tables is not None and maker is _cp._make_skeleton_class:
            namedtuple = _namedtuple_regeneration(cls, clsdict)
            if namedtuple is not None:
                spec, clsdict = namedtuple
                return (_skeleton_namedtuple, (spec, args[4]), (clsdict, slotstate), *rest)
        return (_OWN_SKELETONS[maker], args, (clsdict, slotstate), *rest)

    def _reduce_typevar(self, tv: Any) -> Any:
        found = _cp._lookup_module_and_qualname(tv, name=tv.__name__)
        if found is None or self.session.wants(found[0]):
            # By value even when its module is captured: that module's globals are set after
            # the code that uses the TypeVar is rebuilt.
            return (_typevar, _cp._decompose_typevar(tv))
        return NotImplemented

    def _reduce_function(self, func: types.FunctionType) -> Any:
        module = getattr(func, "__module__", None)
        own = self.session.adopt_globals(func.__globals__)
        if own is not None or self.session.wants_name(module):
            if not self.owner:
                reference = self._by_reference(func)
                if reference is not None:
                    return reference
        elif _cp._should_pickle_by_reference(func):
            # By reference, unless the reference would name a captured module: a function made
            # by exec without __name__ (__module__ None) is found there, and the bundle's copy
            # of that module has no globals yet when the reference is resolved.
            found = _cp._lookup_module_and_qualname(func)
            if found is None or not self.session.wants(found[0]):
                return NotImplemented
            module = found[0].__name__
        self._owners[id(func.__code__)] = f"{module}.{func.__qualname__}"
        self.session.scan_code(func.__code__, func.__globals__)
        self.session.note_function(func)
        reduced = self._dynamic_function_reduce(func)
        slots = reduced[2][1]
        if self.session.strip_docstrings:
            slots["__doc__"] = None  # cloudpickle's slot state sets func.__doc__
        used = slots.get("__globals__")
        if used and ("__file__" in used or "__path__" in used):
            # The globals the code uses are set into its namespace at load: a function that reads
            # __file__ would bring the saving machine's path and overwrite the module's own.
            used = dict(used)
            if own is not None:
                used.pop("__file__", None)
                used.pop("__path__", None)
            else:
                if "__file__" in used:
                    used["__file__"] = Path(str(used["__file__"])).name
                if "__path__" in used:
                    used["__path__"] = []
            slots["__globals__"] = used
        return (_make_function, *reduced[1:5], _function_setstate)

    def _function_getnewargs(self, func: types.FunctionType) -> Any:
        code, base_globals, _, _, closure = super()._function_getnewargs(func)
        module = self.session.adopt_globals(func.__globals__) if self.owner else None
        if module is not None:
            return code, _ModuleNamespaceRef(module, self), None, None, closure
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
        tables = self.session.code_tables
        if tables is not None:
            # A portable bundle: a reference into the code table of the loading version. Its
            # constants are not in the pickle: their paths are noted here.
            if self.owner:
                for sub in _capture._code_objects(code):
                    for const in sub.co_consts:
                        if type(const) is str and ("/" in const or "." in const):
                            self.session.path_values.setdefault(const, False)
            rewritten = _rewrite_tree(code, filename, self.session.strip_docstrings)
            where = self._owners.get(id(code), code.co_name)
            key = tables.key_for(code, filename, rewritten, where)
            return (_bundle_code, (key, code.co_freevars))
        consts = code.co_consts
        if self.session.strip_docstrings:
            consts = _strip_docstring(code)
        if filename != code.co_filename or consts is not code.co_consts:
            code = code.replace(co_filename=filename, co_consts=consts)
            self._keep.append(code)
        return _cp._code_reduce(code)


def _rewrite_tree(code: types.CodeType, filename: str, strip: bool) -> types.CodeType:
    """``code`` and its nested code objects with the relative file name (and no docstrings)."""
    consts = tuple(
        _rewrite_tree(c, filename, strip) if isinstance(c, types.CodeType) else c
        for c in code.co_consts
    )
    rewritten = code.replace(co_filename=filename, co_consts=consts)
    if strip:
        rewritten = rewritten.replace(co_consts=_strip_docstring(rewritten))
    return rewritten


# Methods `dataclass` writes with exec: no source to recompile, so generated again at load.
_DATACLASS_MADE = frozenset(
    {
        "__init__",
        "__repr__",
        "__eq__",
        "__lt__",
        "__le__",
        "__gt__",
        "__ge__",
        "__hash__",
        "__setattr__",
        "__delattr__",
        "__replace__",
        "__match_args__",
        "__dataclass_fields__",
        "__dataclass_params__",
    }
)
_DATACLASS_OPTIONS = {
    "init": True,
    "repr": True,
    "eq": True,
    "order": False,
    "unsafe_hash": False,
    "frozen": False,
    "match_args": True,
    "kw_only": False,
}


def _dataclass_regeneration(
    cls: type, clsdict: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """A dataclass's dict without what ``dataclass`` generated, and how to generate it again.

    None when it cannot be regenerated (slots=True makes a new class): its methods then keep
    the saving version's bytecode.
    """
    params = cls.__dict__.get("__dataclass_params__")
    fields = cls.__dict__.get("__dataclass_fields__")
    if params is None or fields is None or getattr(params, "slots", False):
        return None
    options = {
        name: getattr(params, name)
        for name, default in _DATACLASS_OPTIONS.items()
        if getattr(params, name, default) != default
    }
    kept = {}
    for name, value in clsdict.items():
        made = name in _DATACLASS_MADE and (
            not isinstance(value, types.FunctionType)
            or value.__code__.co_filename.startswith("<")
            or not _capture.is_user_file(value.__code__.co_filename)
        )
        if name == "__hash__" and value is None:
            made = False
        if not made:
            kept[name] = value
    annotations = cls.__dict__.get("__annotations__", {})
    own = [_field_spec(f) for name, f in fields.items() if name in annotations]
    return kept, {"dataclass": {"options": options, "fields": own}}


# What ``collections.namedtuple`` writes into a class (``__new__`` by eval, the rest from the
# standard library's source of the saving version): made again at load by the running version.
_NAMEDTUPLE_MADE = frozenset(
    {
        "__doc__",
        "__slots__",
        "_fields",
        "_field_defaults",
        "__new__",
        "_make",
        "_replace",
        "__replace__",
        "__repr__",
        "_asdict",
        "__getnewargs__",
        "__match_args__",
        "__module__",
    }
)


def _namedtuple_regeneration(
    cls: type, clsdict: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """How to make a namedtuple class again at load, and what to set on it then.

    ``collections.namedtuple`` and ``typing.NamedTuple`` classes (a class whose only base is
    ``tuple`` and that has its own ``_fields``) are made by ``collections.namedtuple(typename,
    fields, defaults=..., module=...)`` on the loading version; what the user wrote (the methods,
    properties and docstring of a ``typing.NamedTuple``, its annotations) is set on the new class
    afterwards. Anything else (extra bases, generics) returns None: its code then keeps the saving
    version's bytecode, and the save says so.
    """
    fields = cls.__dict__.get("_fields")
    new = cls.__dict__.get("__new__")
    if (
        cls.__bases__ != (tuple,)
        or not isinstance(fields, tuple)
        or not all(isinstance(f, str) for f in fields)
        or not isinstance(new, staticmethod | types.FunctionType)
    ):
        return None
    if not _generated(new):
        return None  # a __new__ of the user's own: not what namedtuple made
    defaults: dict[str, Any] = dict(cls.__dict__.get("_field_defaults", {}))
    if list(defaults) != list(fields[len(fields) - len(defaults) :]):
        return None
    generated_doc = f"{cls.__name__}({', '.join(fields)})"
    kept: dict[str, Any] = {}
    for name, value in clsdict.items():
        if name in fields and type(value).__name__ == "_tuplegetter":
            continue
        if name == "__doc__" and value != generated_doc:
            kept[name] = value  # a typing.NamedTuple's docstring
            continue
        if name in _NAMEDTUPLE_MADE and (
            _generated(value) or not hasattr(getattr(value, "__func__", value), "__code__")
        ):
            continue
        kept[name] = value
    spec = {
        "typename": cls.__name__,
        "qualname": cls.__qualname__,
        "fields": list(fields),
        "defaults": list(defaults.values()),
        "module": cls.__module__,
    }
    return spec, kept


def _forward_ref_options(ref: Any) -> tuple[Any, bool, bool]:
    return (
        getattr(ref, "__forward_module__", None),
        bool(getattr(ref, "__forward_is_argument__", True)),
        bool(getattr(ref, "__forward_is_class__", False)),
    )


def _forward_ref(arg: str, module: Any, is_argument: bool, is_class: bool) -> Any:
    """``typing.ForwardRef(arg)`` compiled by the running version (keywords: 3.10 to 3.14)."""
    return typing.ForwardRef(arg, is_argument=is_argument, module=module, is_class=is_class)


def _generated(value: Any) -> bool:
    """Whether a function (or static or class method) has code of exec or of a library."""
    code = getattr(getattr(value, "__func__", value), "__code__", None)
    return code is not None and (
        code.co_filename.startswith("<") or not _capture.is_user_file(code.co_filename)
    )


def _skeleton_namedtuple(spec: Mapping[str, Any], class_tracker_id: str | None) -> type:
    """A namedtuple class made by the running version (see :func:`_namedtuple_regeneration`)."""
    table = _table()
    if class_tracker_id is not None and class_tracker_id in table.classes:
        return table.classes[class_tracker_id]
    # rename=True: the saved fields are valid names already, or what rename made of them
    # (``_2``), which it makes again. (Called through Any: mypy wants literal field lists.)
    make: Any = collections.namedtuple
    cls: type = make(
        spec["typename"],
        spec["fields"],
        defaults=spec["defaults"] or None,
        module=spec["module"],
        rename=True,
    )
    cls.__qualname__ = spec["qualname"]
    return _track(table, class_tracker_id, cls)


_FIELD_OPTIONS = ("default", "default_factory", "init", "repr", "hash", "compare", "kw_only")


def _field_spec(f: Any) -> dict[str, Any]:
    """The arguments of ``dataclasses.field`` that made ``f`` (MISSING ones left out).

    Field objects do not pickle faithfully: ``dataclasses.MISSING`` comes back as another
    object, so a field without a default would seem to have one.
    """
    classvar = f._field_type is getattr(dataclasses, "_FIELD_CLASSVAR", None)
    spec: dict[str, Any] = {"name": f.name, "classvar": classvar}
    for option in _FIELD_OPTIONS:
        value = getattr(f, option, dataclasses.MISSING)
        if value is not dataclasses.MISSING:
            spec[option] = value
    if f.metadata:
        spec["metadata"] = dict(f.metadata)
    return spec


def _class_setstate(obj: type, state: Any) -> type:
    """cloudpickle's class state, then ``dataclass`` applied again where it was left out."""
    clsdict, slotstate = state
    _cp._class_setstate(obj, (clsdict, {}))
    regenerate = slotstate.get("dataclass") if isinstance(slotstate, dict) else None
    if regenerate is not None:
        # Later: string annotations (`from __future__ import annotations`) are read in the
        # module's globals, which are complete only once the whole pickle is loaded.
        _table().pending_dataclasses.append((obj, regenerate))
    return obj


def _regenerate_dataclass(table: ModuleTable, cls: type, regenerate: Mapping[str, Any]) -> None:
    for spec in regenerate["fields"]:
        # A Field as the class attribute keeps default_factory, init=False, kw_only...
        options = {k: v for k, v in spec.items() if k not in ("name", "classvar")}
        if not spec["classvar"]:
            setattr(cls, spec["name"], dataclasses.field(**options))
    module = table.modules.get(cls.__module__)
    if module is None:
        dataclasses.dataclass(cls, **regenerate["options"])
        return
    # dataclass looks the class's module up in sys.modules (for ClassVar, InitVar, KW_ONLY in
    # string annotations, and as the generated methods' globals). The bundle's module is not
    # there: show dataclass a copy of its globals under a name of its own, for the call only.
    home = cls.__module__
    alias = f"__cloudflow_dataclass_{id(table):x}_{id(cls):x}__"
    stand_in = types.ModuleType(alias)
    stand_in.__dict__.update(module.__dict__)
    sys.modules[alias] = stand_in
    try:
        cls.__module__ = alias
        dataclasses.dataclass(cls, **regenerate["options"])
    finally:
        cls.__module__ = home
        sys.modules.pop(alias, None)


def _bundle_code(key: str, freevars: tuple[str, ...]) -> types.CodeType:
    """A function's code in a portable bundle, from the running version's code table."""
    table = _table().code_table
    code = table.get(key) if table is not None else None
    if code is None:
        raise EnvironmentMismatchError(
            "This bundle's code was not compiled for Python "
            f"{sys.version_info[0]}.{sys.version_info[1]} (code {key!r} missing). Load it under "
            "a Python its manifest lists (python_versions), or save it again for this one."
        )
    if code.co_freevars != freevars:
        raise EnvironmentMismatchError(
            f"Code {key!r} compiled for this Python has other free variables "
            f"({code.co_freevars}) than the saved function ({freevars}). Save the bundle again."
        )
    return code


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
    if not filename or filename.startswith("<") or not os.path.isabs(filename):
        return filename  # relative already: code of a loaded bundle, saved again
    for name, module in session.captured.items():
        file = getattr(module, "__file__", None)
        if file and file == filename:
            return _capture.relative_filename(name, hasattr(module, "__path__"))
    for folder in _capture._library_dirs():
        if filename.startswith(folder):
            return filename[len(folder) :]
    return Path(filename).name
