"""Reading a bundle's pickles: the module table, the unpickler and the reconstructors.

:class:`ModuleTable` holds the bundle's modules; they are never put in ``sys.modules``. Each
captured module's globals carry their own ``__builtins__`` whose ``__import__`` looks in the table
first, so an ``import utils`` executed at call time finds the bundle's ``utils`` while the loading
program's own ``utils`` (or an installed package of the same name) stays untouched, and two
bundles with modules of the same name live side by side.

The reconstructors (``_rebuild_module``, ``_skeleton_class``...) are what the pickles call. They
are named in every bundle as ``cloudflow._pickler.<name>`` (see :data:`FORMAT_MODULE`), whatever
module holds them: that name is part of the on-disk format.
"""

from __future__ import annotations

import builtins
import collections
import contextlib
import contextvars
import dataclasses
import functools
import importlib
import importlib.util
import io
import pickle
import sys
import threading
import types
import typing
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from cloudpickle import cloudpickle as _cp

from cloudflow import _packages
from cloudflow.exceptions import (
    CaptureError,
    EnvironmentMismatchError,
    LeftOutGlobalError,
    ModuleNotInBundleError,
)
from cloudflow.runtime.binder import ModelBinder, ModelRef

PROTOCOL = 5
# Persistent ids of the pickles: a model of the bundle, a path value leading to a data file of
# the bundle (files=).
MODEL_PID = "cloudflow-model"
FILE_PID = "cloudflow-file"
_real_import = builtins.__import__


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
        # A portable bundle's code objects for this Python (see cloudflow.runtime.codetables).
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
            package = _packages.package_of(dict(globals or {}))
            resolved = _packages.resolve_import(name, level, package)
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
        functions, and the objects its code pickle created (see
        :class:`~cloudflow.runtime.binder.ModelBinder`).
        Returns the first root, rebuilt if it was a tuple holding a placeholder.

        Raises:
            CaptureError: A placeholder is held where it cannot be replaced without changing
                a library's object (a library's ``functools.partial`` subclass, say).
        """
        roots = list(roots)
        made, self.made = self.made, []
        if not self.model_refs:
            return roots[0] if roots else None
        binder = ModelBinder(self, models, made)
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
        module.__dict__["__getattr__"] = LeftOut(module.__name__, frozenset(left_out))
    return module


class LeftOut:
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


def table_of_class(cls: Any) -> ModuleTable | None:
    """The loaded bundle whose pickle rebuilt ``cls`` by value, if one did."""
    try:
        return _TABLE_OF_CLASS.get(cls)
    except TypeError:  # not weakly referenceable: no bundle rebuilt it
        return None


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
        if isinstance(pid, tuple) and len(pid) == 2 and pid[0] == MODEL_PID:
            table = _table()
            known = table.known_models
            if known is not None and str(pid[1]) in known:
                # Known already (a lazy model's stand-in): in place at once, nothing to walk.
                return known[str(pid[1])]
            ref = ModelRef(str(pid[1]))
            table.model_refs.append(ref)
            return ref
        if isinstance(pid, tuple) and len(pid) == 3 and pid[0] == FILE_PID:
            files = _table().files
            if files is None:
                raise pickle.UnpicklingError("A data file path of a bundle without data files")
            return files.path_value(str(pid[1]), str(pid[2]))
        if self._persistent is None:
            raise pickle.UnpicklingError(f"Unknown persistent id {pid!r}")
        return self._persistent(pid)


class LoadContext:
    """The :class:`~cloudflow.flavors._base.LoadContext` flavors are given at load time."""

    def __init__(self, table: ModuleTable, read: Callable[[Path], bytes] | None = None) -> None:
        self.table = table
        # The bytes of a file as verified (read once, checked in memory): see VerifiedBytes.
        self.read_bytes: Callable[[Path], bytes] = read or (lambda path: Path(path).read_bytes())

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

    ``read`` gives the file's bytes as verified (see
    :class:`cloudflow.integrity.manifest.VerifiedBytes`).
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


def loads(data: bytes, table: ModuleTable | None = None) -> Any:
    """What :func:`dumps` wrote, loaded as ``load_bundle`` loads ``code.pkl`` (a fresh table)."""
    return read_code(io.BytesIO(data), table if table is not None else ModuleTable())


def _forward_ref(arg: str, module: Any, is_argument: bool, is_class: bool) -> Any:
    """``typing.ForwardRef(arg)`` compiled by the running version (keywords: 3.10 to 3.14)."""
    return typing.ForwardRef(arg, is_argument=is_argument, module=module, is_class=is_class)


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
    # there: show dataclass that very module under a name of its own, for the call only. Not a
    # copy of its globals: the generated methods would keep the copy as theirs, where the model
    # binder never looks, so a model kept in a module global would stay a placeholder in it.
    home = cls.__module__
    alias = f"__cloudflow_dataclass_{id(table):x}_{id(cls):x}__"
    sys.modules[alias] = module
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


#: The module the reconstructors are named by in every bundle's pickles (the on-disk format): a
#: frozen module that re-exports them, so that moving them here changed no byte of a bundle.
FORMAT_MODULE = "cloudflow._pickler"

#: The reconstructors, by the name bundles use. Never rename or remove one, only add.
RECONSTRUCTORS: dict[str, Callable[..., Any]] = {
    f.__name__: f
    for f in (
        _rebuild_module,
        _set_module_state,
        _module_namespace,
        _fresh_namespace,
        _skeleton_class,
        _skeleton_enum,
        _typevar,
        _lru_cache,
        _new_type,
        _own_names,
        _bundle_module,
        _bundle_global,
        _make_function,
        _function_setstate,
        _forward_ref,
        _skeleton_namedtuple,
        _class_setstate,
        _bundle_code,
    )
}
for _reconstructor in RECONSTRUCTORS.values():
    _reconstructor.__module__ = FORMAT_MODULE
