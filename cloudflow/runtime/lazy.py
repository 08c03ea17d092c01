"""Models that load on their first use (``load_bundle(uri, lazy=True)``).

A :class:`LazyModel` stands in for a model of a bundle until the predict function first uses
it: then the model's files are checked against the manifest and the model is loaded, once, under
a lock, and every later use goes straight to it. It behaves as the model for what code does with
one: calls, attribute reads and writes, ``isinstance`` (its ``__class__`` is the model's class),
``len``, iteration, indexing, ``with``, comparisons and arithmetic, ``repr`` once loaded, and
passing it on to Python code. What it cannot be is the model itself: ``type(m) is Model`` is
false, C code that demands the exact type (``nn.Module.forward(m, x)`` called unbound, say) and
pickling it refuse, and ``id`` differs. For those, call ``bundle.model(name)``, which returns the
loaded model itself.
"""

from __future__ import annotations

import operator
import pickle
import threading
from collections.abc import Callable
from typing import Any


class LazyModel:
    """A model of a bundle that is loaded on its first use (see the module doc)."""

    __slots__ = ("_cf_error", "_cf_load", "_cf_lock", "_cf_name", "_cf_target", "__weakref__")

    def __init__(self, name: str, load: Callable[[], object]) -> None:
        object.__setattr__(self, "_cf_name", name)
        object.__setattr__(self, "_cf_load", load)
        object.__setattr__(self, "_cf_lock", threading.Lock())
        object.__setattr__(self, "_cf_target", _UNSET)
        object.__setattr__(self, "_cf_error", None)

    # -- the model -------------------------------------------------------------------------------

    def _cf_get(self) -> Any:
        target = object.__getattribute__(self, "_cf_target")
        if target is not _UNSET:
            return target
        with object.__getattribute__(self, "_cf_lock"):
            target = object.__getattribute__(self, "_cf_target")
            if target is _UNSET:
                error = object.__getattribute__(self, "_cf_error")
                if error is not None:
                    raise error
                try:
                    target = object.__getattribute__(self, "_cf_load")()
                except BaseException as e:
                    object.__setattr__(self, "_cf_error", e)
                    raise
                object.__setattr__(self, "_cf_target", target)
        return target

    @property
    def _cf_loaded(self) -> bool:
        return object.__getattribute__(self, "_cf_target") is not _UNSET

    # -- behaving as the model ------------------------------------------------------------------

    @property  # type: ignore[misc]
    def __class__(self) -> type:  # isinstance(proxy, Model) holds
        return type(self._cf_get())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cf_get(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._cf_get(), name, value)

    def __delattr__(self, name: str) -> None:
        delattr(self._cf_get(), name)

    def __dir__(self) -> list[str]:
        return dir(self._cf_get())

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._cf_get()(*args, **kwargs)

    def __repr__(self) -> str:
        if not self._cf_loaded:
            name = object.__getattribute__(self, "_cf_name")
            return f"<cloudflow lazy model {name!r}, not loaded yet>"
        return repr(self._cf_get())

    def __str__(self) -> str:
        return str(self._cf_get()) if self._cf_loaded else repr(self)

    def __bool__(self) -> bool:
        return bool(self._cf_get())

    def __len__(self) -> int:
        return len(self._cf_get())

    def __iter__(self) -> Any:
        return iter(self._cf_get())

    def __contains__(self, item: object) -> bool:
        return item in self._cf_get()

    def __getitem__(self, key: Any) -> Any:
        return self._cf_get()[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._cf_get()[key] = value

    def __delitem__(self, key: Any) -> None:
        del self._cf_get()[key]

    def __enter__(self) -> Any:
        return self._cf_get().__enter__()

    def __exit__(self, *exc: Any) -> Any:
        return self._cf_get().__exit__(*exc)

    def __hash__(self) -> int:
        return hash(self._cf_get())

    def __reduce_ex__(self, protocol: Any) -> Any:
        name = object.__getattribute__(self, "_cf_name")
        raise pickle.PicklingError(
            f"The lazy model {name!r} cannot be pickled: pickle bundle.model({name!r}), the "
            "loaded model itself."
        )


_UNSET = object()


def _forward(op: Callable[..., Any]) -> Callable[..., Any]:
    def method(self: LazyModel, *args: Any) -> Any:
        return op(self._cf_get(), *args)

    return method


def _reflected(op: Callable[..., Any]) -> Callable[..., Any]:
    def method(self: LazyModel, other: Any) -> Any:
        return op(other, self._cf_get())

    return method


for _name, _op in {
    "eq": operator.eq,
    "ne": operator.ne,
    "lt": operator.lt,
    "le": operator.le,
    "gt": operator.gt,
    "ge": operator.ge,
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
    "matmul": operator.matmul,
    "truediv": operator.truediv,
    "floordiv": operator.floordiv,
    "mod": operator.mod,
    "pow": operator.pow,
    "and": operator.and_,
    "or": operator.or_,
    "xor": operator.xor,
}.items():
    setattr(LazyModel, f"__{_name}__", _forward(_op))
    if _name not in ("eq", "ne", "lt", "le", "gt", "ge"):
        setattr(LazyModel, f"__r{_name}__", _reflected(_op))
_UNARY: dict[str, Callable[[Any], Any]] = {
    "neg": operator.neg,
    "pos": operator.pos,
    "abs": abs,
    "invert": operator.invert,
}
for _name, _unary in _UNARY.items():
    setattr(LazyModel, f"__{_name}__", _forward(_unary))


def loaded(obj: object) -> object:
    """The model itself: a lazy model's target (loading it if needed), anything else as is."""
    if type(obj) is LazyModel:
        return obj._cf_get()
    return obj


def is_loaded(obj: object) -> bool:
    return type(obj) is not LazyModel or bool(obj._cf_loaded)
