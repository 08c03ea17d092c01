"""Binding loaded models into a bundle's loaded code.

While ``code.pkl`` is read, each model the code kept (in a module global, a closure, a default, a
container...) is a :class:`ModelRef` placeholder; once the models are loaded, :class:`ModelBinder`
puts each one where its placeholder was, looking only at what the bundle made.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import types
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cloudflow.exceptions import CaptureError

if TYPE_CHECKING:
    from cloudflow.runtime.unpickler import ModuleTable


class ModelBinder:
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


class ModelRef:
    """Stands for a bundle model while the code is unpickled, before the models are loaded."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<model {self.name!r} of this bundle, not loaded yet>"
