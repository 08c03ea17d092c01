"""The bundle pickler: cloudpickle's, extended for bundles.

- a captured module is pickled by value as a *module object* (its ``__dict__``), and the functions
  defined in it get that very dict as their ``__globals__`` at load, so module state stays shared;
- a module is added to the captured set the moment the pickler meets it (a global, a class's
  ``__module__``, a submodule) or finds it in an ``import`` executed inside a function body (the
  :class:`~cloudflow.capture.policy.CapturePolicy` decides);
- code objects lose the saving machine's paths (``co_filename`` becomes ``pkg/mod.py``);
- model objects the code refers to (a model kept in a module global, say) are written as references
  to the bundle's models, never pickled a second time;
- in *reference mode* (the pickles flavors write for models, through :class:`SaveContext`), classes
  and functions of captured modules are written as references into the bundle's module table, so a
  model and the predict function share one copy of each user class;
- for a portable bundle, dataclasses and namedtuples are written so that the loading Python makes
  their generated methods again.

Every reconstructor the pickles name lives in :mod:`cloudflow.runtime.unpickler`.
"""

from __future__ import annotations

import copyreg
import dataclasses
import functools
import io
import os
import sys
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path, PurePath
from typing import Any, BinaryIO

import cloudpickle
from cloudpickle import cloudpickle as _cp

from cloudflow import _packages
from cloudflow import _pickler as on_disk  # the reconstructors, by the names pickles carry
from cloudflow.capture import scan
from cloudflow.capture.policy import CapturePolicy
from cloudflow.exceptions import CaptureError
from cloudflow.flavors._base import SharedFiles
from cloudflow.integrity import digests as _digests
from cloudflow.runtime.unpickler import FILE_PID, MODEL_PID, PROTOCOL, table_of_class

_NEWOBJ: Any = copyreg.__newobj__  # type: ignore[attr-defined]  # pickle's NEWOBJ opcode


class _ModuleNamespaceRef:
    """Pickles as the ``__dict__`` of a captured module (the globals of its functions)."""

    def __init__(self, module: types.ModuleType, pickler: BundlePickler) -> None:
        self.module = module
        self.pickler = pickler

    def __reduce__(self) -> tuple[Any, ...]:
        # The module is pickled next as the globals of a function, not as an object.
        self.pickler.own_mention = self.module
        return (on_disk._module_namespace, (self.module,))


class _FreshNamespaceRef:
    """Pickles as a new globals dict (functions of ``__main__`` and other dynamic code)."""

    def __init__(self, items: dict[str, Any]) -> None:
        self.items = items

    def __reduce__(self) -> tuple[Any, ...]:
        return (on_disk._fresh_namespace, (self.items,))


class OwnNames:
    """Pickles as the names the bundle owns at load (see :meth:`CapturePolicy.own_names`)."""

    def __init__(self, tops: list[str], excluded: list[str]) -> None:
        self.tops = tops
        self.excluded = excluded

    def __reduce__(self) -> tuple[Any, ...]:
        # Each list as one new string: a name that is also an object seen earlier in the pickle
        # would be written as a reference to it or not, by identity, so differently from one
        # process to the next (same objects, other bytes).
        return (
            on_disk._own_names,
            ("".join(f"{t}\n" for t in self.tops), "\n".join(self.excluded)),
        )


class ModuleState:
    """Pickles as globals set into a captured module (one round of ``write_code``)."""

    def __init__(self, module: types.ModuleType, state: dict[str, Any]) -> None:
        self.module = module
        self.state = state

    def __reduce__(self) -> tuple[Any, ...]:
        return (on_disk._set_module_state, (self.module, self.state))


_OWN_SKELETONS = {
    _cp._make_skeleton_class: on_disk._skeleton_class,
    _cp._make_skeleton_enum: on_disk._skeleton_enum,
}


class BundlePickler(cloudpickle.Pickler):
    def __init__(
        self,
        file: BinaryIO,
        policy: CapturePolicy,
        *,
        owner: bool,
        persistent_id: Callable[[object], object | None] | None = None,
    ) -> None:
        self.policy = policy
        self.owner = owner
        self.pickled: set[str] = set()
        self.flavor_persistent_id = persistent_id
        # The C pickler calls persistent_id for every object if it exists: set it only when needed.
        if owner or persistent_id is not None:
            self.persistent_id = self._persistent_id
        super().__init__(file, protocol=PROTOCOL)
        self._namespaces: dict[int, _FreshNamespaceRef] = {}
        self._keep: list[object] = []  # keeps rewritten code objects alive while ids are in use
        # The module the pickle writes next as part of its own structure (the globals of a
        # function, the module a state is set into, the argument of a module's state setter),
        # not as an object saved code reached: such a module carries only the names its code
        # uses, one reached as an object the attributes saved code reads too.
        self.own_mention: types.ModuleType | None = None
        self.written_modules: set[int] = set()  # ids of the captured modules written so far
        self._owners: dict[int, str] = {}  # code id -> the function's dotted name, for messages

    def _persistent_id(self, obj: object) -> object | None:
        if self.flavor_persistent_id is not None:
            pid = self.flavor_persistent_id(obj)
            if pid is not None:
                return pid
        if self.owner:
            if type(obj) is types.ModuleType and id(obj) in self.written_modules:
                self._met_again(obj)
            name = self.policy.model_name(obj)
            if name is not None:
                return (MODEL_PID, name)
            files = self.policy.files
            if files:
                found = files.bundled(obj)
                if found is not None:
                    return (FILE_PID, *found)
            if type(obj) is str:
                if "/" in obj or "." in obj:
                    self.policy.path_values.setdefault(obj, False)
            elif isinstance(obj, PurePath):
                self.policy.path_values[str(obj)] = True
        return None

    def _met_again(self, module: types.ModuleType) -> None:
        """A captured module the pickle writes again, as a reference to its memo.

        ``reducer_override`` sees a module the first time only; ``persistent_id`` sees every
        time. A module first written as the globals of its functions may be reached as an object
        later (an attribute of an object pickled by value): it must then carry the attributes
        saved code reads as well.
        """
        if self.own_mention is module:
            self.own_mention = None
        else:
            self.policy.as_objects.add(module.__name__)

    def reducer_override(self, obj: Any) -> Any:
        """How to write ``obj``: a reducer of :data:`_REDUCERS` by its exact type, else the
        class reducer for any class (any metaclass), else, last, an object of a captured class
        with its own ``__reduce__``; NotImplemented leaves it to cloudpickle and pickle."""
        t = type(obj)
        reduce = _REDUCERS.get(t)
        if reduce is not None:
            return reduce(self, obj)
        if isinstance(obj, type):
            return self._reduce_class(obj)
        return self._reduce_other(obj)

    def _reduce_other(self, obj: Any) -> Any:
        t = type(obj)
        if t.__reduce__ is not object.__reduce__ or t.__reduce_ex__ is not object.__reduce_ex__:
            return self._reduce_custom(obj)
        return NotImplemented

    def _reduce_module_state(self, state: ModuleState) -> Any:
        # The module is written next as the one whose globals these are, not as an object. A
        # module first written here counts as reached as an object, as it does wherever else
        # the pickle meets it first. (Here, not in ModuleState: a state holding the pickler
        # would keep it, and every object in its memo, alive until the next garbage collection.)
        if id(state.module) in self.written_modules:
            self.own_mention = state.module
        return state.__reduce__()

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
            found: Any = self.policy.captured.get(module)
            for part in qualname.split("."):
                found = getattr(found, part, None)
            if found is obj:
                self.policy.forced.setdefault(module, set()).add(qualname.partition(".")[0])
                return (on_disk._bundle_global, (module, qualname))
            return None
        captured = self.policy.captured[module]
        if "." not in qualname and captured.__dict__.get(qualname) is obj:
            self.policy.forced.setdefault(module, set()).add(qualname)
        return None

    def _reduce_lru_cache(self, wrapper: Any) -> Any:
        module = getattr(wrapper, "__module__", None)
        func = getattr(wrapper, "__wrapped__", None)
        if not self.policy.wants_name(module) or not isinstance(func, types.FunctionType):
            return NotImplemented
        reference = self._named_reference(wrapper, module, wrapper.__qualname__)
        if reference is not None:
            return reference
        params = wrapper.cache_parameters()
        # What update_wrapper copies from the function is copied again at load (a docstring
        # stripped from the function stays stripped); what the user set on the wrapper stays.
        copied = {*functools.WRAPPER_ASSIGNMENTS, "__wrapped__", *vars(func)}
        state = {k: v for k, v in vars(wrapper).items() if k not in copied}
        return (on_disk._lru_cache, (func, params["maxsize"], params["typed"]), state or None)

    def _reduce_newtype(self, new_type: Any) -> Any:
        module = getattr(new_type, "__module__", None)
        if not self.policy.wants_name(module):
            return NotImplemented
        reference = self._named_reference(new_type, module, new_type.__qualname__)
        if reference is not None:
            return reference
        return (on_disk._new_type, (new_type.__qualname__, new_type.__supertype__, module))

    def _reduce_custom(self, obj: Any) -> Any:
        """An instance of a captured class with its own ``__reduce__``: by value if it is a name."""
        cls = type(obj)
        if not self.policy.wants_name(getattr(cls, "__module__", None)):
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
        if not self.policy.wants(module):
            return NotImplemented
        name = module.__name__
        if self.own_mention is module:
            self.own_mention = None
        else:
            self.policy.as_objects.add(name)
        if not self.owner:
            return (on_disk._bundle_module, (name,))
        self.pickled.add(name)
        self.written_modules.add(id(module))
        # Pickle writes the module once more, as the first argument of its state setter.
        self.own_mention = module
        is_package = hasattr(module, "__path__")
        # The skeleton only: the globals follow, as far as saved code reaches them.
        state: dict[str, Any] = {
            "__file__": _packages.relative_filename(name, is_package),
            "__package__": module.__dict__.get("__package__"),
            "__doc__": None if self.policy.strip_docstrings else module.__dict__.get("__doc__"),
        }
        if is_package:
            state["__path__"] = []
        return (
            on_disk._rebuild_module,
            (name, is_package),
            state,
            None,
            None,
            on_disk._set_module_state,
        )

    def _by_reference(self, obj: Any) -> Any:
        """A class or function of a captured module, written as a reference into the table."""
        module_name, qualname = obj.__module__, obj.__qualname__
        if "<locals>" in qualname:
            return None
        try:
            found: Any = self.policy.captured[module_name]
            for part in qualname.split("."):
                found = getattr(found, part)
        except (AttributeError, KeyError):
            return None
        if found is not obj:
            return None
        # The code pickle must then carry that global of the module.
        self.policy.forced.setdefault(module_name, set()).add(qualname.partition(".")[0])
        return (on_disk._bundle_global, (module_name, qualname))

    def _reduce_class(self, cls: type) -> Any:
        table = table_of_class(cls)
        if table is not None:
            self.policy.adopt_table(table)
        if self.policy.wants_name(getattr(cls, "__module__", None)):
            if not self.owner:
                reference = self._by_reference(cls)
                if reference is not None:
                    return reference
            self.policy.travels_home(self.policy.captured[cls.__module__], cls)
            return _own_class(self.policy, cls, _cp._dynamic_class_reduce(cls))
        module = getattr(cls, "__module__", None)
        if isinstance(module, str):
            self.policy.wants_name(module)  # records the library for requirements
        return _own_class(self.policy, cls, _cp._class_reduce(cls))

    def _reduce_typevar(self, tv: Any) -> Any:
        found = _cp._lookup_module_and_qualname(tv, name=tv.__name__)
        if found is None or self.policy.wants(found[0]):
            # By value even when its module is captured: that module's globals are set after
            # the code that uses the TypeVar is rebuilt.
            return (on_disk._typevar, _cp._decompose_typevar(tv))
        return NotImplemented

    def _reduce_function(self, func: types.FunctionType) -> Any:
        module = getattr(func, "__module__", None)
        own = self.policy.adopt_globals(func.__globals__)
        if own is not None or self.policy.wants_name(module):
            if not self.owner:
                reference = self._by_reference(func)
                if reference is not None:
                    return reference
        elif _cp._should_pickle_by_reference(func):
            # By reference, unless the reference would name a captured module: a function made
            # by exec without __name__ (__module__ None) is found there, and the bundle's copy
            # of that module has no globals yet when the reference is resolved.
            found = _cp._lookup_module_and_qualname(func)
            if found is None or not self.policy.wants(found[0]):
                return NotImplemented
            module = found[0].__name__
        self._owners[id(func.__code__)] = f"{module}.{func.__qualname__}"
        self.policy.scan_code(func.__code__, func.__globals__)
        self.policy.note_function(func)
        reduced = self._dynamic_function_reduce(func)
        slots = reduced[2][1]
        if self.policy.strip_docstrings:
            slots["__doc__"] = None  # cloudpickle's slot state sets func.__doc__
        used = slots.get("__globals__")
        if used and ("__file__" in used or "__path__" in used):
            # The globals the code uses are set into its namespace at load: a function that reads
            # __file__ would bring the saving machine's path and overwrite the module's own.
            slots["__globals__"] = _without_saving_paths(used, drop=own is not None)
        return (on_disk._make_function, *reduced[1:5], on_disk._function_setstate)

    def _function_getnewargs(self, func: types.FunctionType) -> Any:
        code, base_globals, _, _, closure = super()._function_getnewargs(func)
        module = self.policy.adopt_globals(func.__globals__) if self.owner else None
        if module is not None:
            return code, _ModuleNamespaceRef(module, self), None, None, closure
        ref = self._namespaces.get(id(func.__globals__))
        if ref is None:
            items = _without_saving_paths(base_globals)
            ref = self._namespaces[id(func.__globals__)] = _FreshNamespaceRef(items)
        return code, ref, None, None, closure

    def _reduce_code(self, code: types.CodeType) -> Any:
        filename = _relative_code_path(code.co_filename, self.policy)
        tables = self.policy.code_tables
        if tables is not None:
            # A portable bundle: a reference into the code table of the loading version. Its
            # constants are not in the pickle: their paths are noted here.
            if self.owner:
                for sub in scan.code_objects(code):
                    for const in sub.co_consts:
                        if type(const) is str and ("/" in const or "." in const):
                            self.policy.path_values.setdefault(const, False)
            rewritten = _rewrite_tree(code, filename, self.policy.strip_docstrings)
            where = self._owners.get(id(code), code.co_name)
            key = tables.key_for(code, filename, rewritten, where)
            return (on_disk._bundle_code, (key, code.co_freevars))
        consts = code.co_consts
        if self.policy.strip_docstrings:
            consts = _strip_docstring(code)
        if filename != code.co_filename or consts is not code.co_consts:
            code = code.replace(co_filename=filename, co_consts=consts)
            self._keep.append(code)
        return _cp._code_reduce(code)


class SaveContext:
    """The :class:`~cloudflow.flavors._base.SaveContext` flavors are given at save time.

    Its pickles are written in reference mode (user classes and functions as references into the
    bundle's module table). ``shared_files`` is the save's shared-weights store (see
    :mod:`cloudflow.store.blobs`), or None: a flavor writing a large file asks it for a link first.
    """

    def __init__(self, policy: CapturePolicy, shared_files: SharedFiles | None = None) -> None:
        self.policy = policy
        self.shared_files = shared_files

    def dump(
        self,
        obj: object,
        path: Path,
        *,
        persistent_id: Callable[[object], object | None] | None = None,
    ) -> None:
        """Reference-mode pickle of (part of) a model, for a flavor."""
        with self.policy.lock, _digests.open_hashed(path) as f:  # digested as written
            pickler = BundlePickler(f, self.policy, owner=False, persistent_id=persistent_id)
            try:
                pickler.dump(obj)
            except CaptureError:
                raise
            except Exception as e:
                culprit = self._find_unpicklable_part(obj, pickler)
                where = f" The cause is {culprit}." if culprit else ""
                raise CaptureError(
                    f"Cannot serialize model file {path.name}: {type(e).__name__}: {e}.{where} "
                    "Make the model picklable: drop what cannot be pickled (locks, open files, "
                    "connections, generators) or give its class __getstate__ and __setstate__."
                ) from e

    def _find_unpicklable_part(self, obj: object, pickler: BundlePickler) -> str | None:
        """Name the attribute or item of a model that cannot be pickled (error path only)."""
        if isinstance(obj, Mapping):
            parts = [(f"[{k!r}]", v) for k, v in obj.items()]
        elif isinstance(obj, list | tuple):
            parts = [(f"[{i}]", v) for i, v in enumerate(obj)]
        else:
            parts = [(f".{k}", v) for k, v in getattr(obj, "__dict__", {}).items()]
        for label, value in parts:
            try:
                BundlePickler(
                    io.BytesIO(),
                    self.policy,
                    owner=False,
                    persistent_id=pickler.flavor_persistent_id,
                ).dump(value)
            except Exception as e:
                return f"the model's {label} ({type(value).__name__}: {e})"
        return None


def _reduce_property(pickler: BundlePickler, prop: property) -> Any:
    if pickler.policy.strip_docstrings and prop.__doc__ is not None:
        return (property, (prop.fget, prop.fset, prop.fdel, None))
    return pickler._reduce_other(prop)


def _reduce_forward_ref(pickler: BundlePickler, ref: Any) -> Any:
    if pickler.policy.code_tables is not None:
        # A string annotation (typing.NamedTuple fields under `from __future__ import
        # annotations`) holds the code compiled from it: made again from the string.
        return (on_disk._forward_ref, (ref.__forward_arg__, *_forward_ref_options(ref)))
    return pickler._reduce_other(ref)


def _reduce_cached_property(pickler: BundlePickler, prop: Any) -> Any:
    # Python 3.10 and 3.11 keep an RLock in the descriptor: a new one is made at load.
    state = {
        k: v
        for k, v in vars(prop).items()
        if k not in ("lock", "func", "__module__")
        and not (k == "__doc__" and (pickler.policy.strip_docstrings or v is prop.func.__doc__))
    }
    return (functools.cached_property, (prop.func,), state)


#: The reducers by the exact type of the object (a subclass is not matched: its own reduction,
#: or the fallbacks of ``reducer_override``, apply). Classes are not here: any metaclass makes
#: one, so ``reducer_override`` asks ``isinstance`` after this table, and objects with a
#: ``__reduce__`` of their own come last, after both.
_REDUCERS: dict[type, Callable[[BundlePickler, Any], Any]] = {
    types.FunctionType: BundlePickler._reduce_function,
    types.ModuleType: BundlePickler._reduce_module,
    types.CodeType: BundlePickler._reduce_code,
    ModuleState: BundlePickler._reduce_module_state,
    typing.TypeVar: BundlePickler._reduce_typevar,
    property: _reduce_property,
    typing.ForwardRef: _reduce_forward_ref,
    functools.cached_property: _reduce_cached_property,
    functools._lru_cache_wrapper: BundlePickler._reduce_lru_cache,
    typing.NewType: BundlePickler._reduce_newtype,
}


def _own_class(policy: CapturePolicy, cls: type, reduced: Any) -> Any:
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
    if policy.strip_docstrings and isinstance(clsdict.get("__doc__"), str):
        clsdict = {**clsdict, "__doc__": None}
    if policy.code_tables is not None and dataclasses.is_dataclass(cls):
        regenerated = _dataclass_regeneration(cls, clsdict)
        if regenerated is not None:
            clsdict, slotstate = regenerated
            rest = [rest[0], rest[1], on_disk._class_setstate, *rest[3:]]
    if policy.code_tables is not None and maker is _cp._make_skeleton_class:
        namedtuple = _namedtuple_regeneration(cls, clsdict)
        if namedtuple is not None:
            spec, clsdict = namedtuple
            return (on_disk._skeleton_namedtuple, (spec, args[4]), (clsdict, slotstate), *rest)
    return (_OWN_SKELETONS[maker], args, (clsdict, slotstate), *rest)


def _without_saving_paths(items: Mapping[str, Any], *, drop: bool = False) -> dict[str, Any]:
    """Globals without the saving machine's paths: ``__file__`` as its base name and ``__path__``
    empty, or both left out (``drop``: a captured module's own are set at load)."""
    items = dict(items)
    if drop:
        items.pop("__file__", None)
        items.pop("__path__", None)
        return items
    if "__file__" in items:
        items["__file__"] = Path(str(items["__file__"])).name
    if "__path__" in items:
        items["__path__"] = []
    return items


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
            or not scan.is_user_file(value.__code__.co_filename)
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


def _generated(value: Any) -> bool:
    """Whether a function (or static or class method) has code of exec or of a library."""
    code = getattr(getattr(value, "__func__", value), "__code__", None)
    return code is not None and (
        code.co_filename.startswith("<") or not scan.is_user_file(code.co_filename)
    )


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


def _relative_code_path(filename: str, policy: CapturePolicy) -> str:
    """The saving machine's path of a code object, made relative (no home or project folder)."""
    if not filename or filename.startswith("<") or not os.path.isabs(filename):
        return filename  # relative already: code of a loaded bundle, saved again
    for name, module in policy.captured.items():
        file = getattr(module, "__file__", None)
        if file and file == filename:
            return _packages.relative_filename(name, hasattr(module, "__path__"))
    for folder in scan.library_dirs():
        if filename.startswith(folder):
            return filename[len(folder) :]
    return Path(filename).name
