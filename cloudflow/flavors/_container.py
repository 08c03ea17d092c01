"""Containers of models: a list, tuple or dict of models, each saved with its own flavor.

An ensemble of torch nets, a dict of per-language scikit-learn pipelines, a tuple of a tokenizer
and a model: each element goes to its own sub-folder (``0``, ``1``, ... in order; a dict's keys
are kept in the manifest, never used as folder names), saved by the flavor that would save it on
its own, and the container is rebuilt at load. Nested containers work the same way.

The rule (:func:`holds_model`): an object of exactly ``list``, ``tuple`` or ``dict`` (``str``
keys only) is a container when at least one element, at any depth, is saved by a flavor other
than the pickle fallback. A dict of plain configuration values, a list of arrays, a
``namedtuple`` or an ``OrderedDict`` stay one pickle, as before. The elements that are plain
values inside a container of models (a threshold beside the nets) get a small pickle each.

Elements are saved one by one: the very same object met twice in the tree (an ensemble that
repeats a member) is saved once and loads as one object, but objects that two different
elements share inside them (a scaler that is also a step of a pipeline beside it) come back as
two copies.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudflow.exceptions import BundleFormatError, CaptureError
from cloudflow.flavors._base import Flavor

if TYPE_CHECKING:
    from cloudflow.flavors._base import LoadContext, SaveContext

FLAVOR_NAME = "container"
_KINDS: dict[type, str] = {list: "list", tuple: "tuple", dict: "dict"}
# Deeper than this, an object is not looked into (and a list that holds itself is no container).
MAX_DEPTH = 16
# Never models, and fast to rule out: most elements of a list of values are one of these.
_SCALARS = (int, float, complex, str, bytes, bool, type(None))


@dataclass
class Registry:
    """The flavor registry a container asks for its elements' flavors.

    Given by :mod:`cloudflow.flavors` when it is imported (:func:`use_registry`), so that this
    module, one of the registry's built-in flavors, does not import the registry back.
    """

    flavor_for: Callable[[object], Flavor]
    get_flavor: Callable[[str], Flavor]
    device_flavors: tuple[str, ...]


def _unbound(*_: object) -> Flavor:
    raise RuntimeError("the container flavor is used before cloudflow.flavors gave it a registry")


_REGISTRY = Registry(_unbound, _unbound, ())


def use_registry(registry: Registry) -> None:
    """Look elements' flavors up in ``registry`` (:mod:`cloudflow.flavors` calls it once)."""
    global _REGISTRY
    _REGISTRY = registry


def elements(obj: object) -> list[tuple[str | int, object]]:
    """A container's (key, element) pairs: indexes for a list or tuple, keys for a dict."""
    if isinstance(obj, dict):
        return list(obj.items())
    return list(enumerate(obj))  # type: ignore[arg-type]


def is_container_type(obj: object) -> bool:
    """Exactly a list, tuple or dict with str keys (subclasses keep their own pickling)."""
    if type(obj) not in _KINDS:
        return False
    return not isinstance(obj, dict) or all(isinstance(k, str) for k in obj)


def holds_model(obj: object, depth: int = 0) -> bool:
    """Whether ``obj`` is a container with a non-pickle-flavor model in it, at any depth."""
    flavor_for = _REGISTRY.flavor_for
    if depth >= MAX_DEPTH or not is_container_type(obj):
        return False
    for _, value in elements(obj):
        if isinstance(value, _SCALARS):
            continue
        if is_container_type(value):
            if holds_model(value, depth + 1):
                return True
        elif flavor_for(value).name != "pickle":
            return True
    return False


def _matches(obj: object) -> bool:
    return holds_model(obj)


def _save(obj: object, path: Path, ctx: SaveContext) -> dict[str, Any]:
    return _save_into(obj, path, ctx, (), {}, "")


def _save_into(
    obj: object,
    path: Path,
    ctx: SaveContext,
    outer: tuple[int, ...],
    seen: dict[int, tuple[str, str]],
    prefix: str,
) -> dict[str, Any]:
    """Save a container's elements under ``path``.

    ``outer`` are the ids of the containers around this one (one of them inside itself is an
    error); ``seen`` maps the id of every element saved so far, anywhere in the tree, to where
    it was saved and by which flavor, so the very same object met again is saved once and comes
    back as one object (``same_as``).
    """
    flavor_for = _REGISTRY.flavor_for
    inside = (*outer, id(obj))
    items: list[dict[str, Any]] = []
    for index, (key, value) in enumerate(elements(obj)):
        where = f"{prefix}{index}"
        item: dict[str, Any] = {"path": str(index)}
        if isinstance(obj, dict):
            item["key"] = key
        first = None if isinstance(value, _SCALARS) else seen.get(id(value))
        if first is not None:  # the same model twice (an ensemble that repeats a member)
            items.append({**item, "flavor": first[1], "info": {}, "same_as": first[0]})
            continue
        flavor = flavor_for(value)
        if flavor is FLAVOR and id(value) in inside:
            raise CaptureError(
                f"The {type(obj).__name__} holds itself (at index or key {key!r}); a "
                "container of models must be a tree. Save the models it holds instead."
            )
        folder = path / str(index)
        folder.mkdir()
        if flavor is FLAVOR:
            info = _save_into(value, folder, ctx, inside, seen, f"{where}/")
        else:
            info = flavor.save(value, folder, ctx)
        seen[id(value)] = (where, flavor.name)
        items.append({**item, "flavor": flavor.name, "info": info})
    return {"kind": _KINDS[type(obj)], "items": items}


#: Load options (``device=``, ``dtype=``) that a container hands on to its elements.
_FORWARDED = ("load_device", "load_dtype")


def _load(path: Path, info: Mapping[str, Any], ctx: LoadContext) -> object:
    return _load_into(path, info, ctx, {}, "")


def _load_into(
    path: Path, info: Mapping[str, Any], ctx: LoadContext, loaded: dict[str, object], prefix: str
) -> object:
    get_flavor, DEVICE_FLAVORS = _REGISTRY.get_flavor, _REGISTRY.device_flavors
    kind = info.get("kind")
    if kind not in _KINDS.values():
        raise BundleFormatError(
            f"Unknown container kind {kind!r} in the bundle; known kinds are 'list', 'tuple' "
            "and 'dict'. Upgrade cloudflow to load it."
        )
    forwarded = {k: info[k] for k in _FORWARDED if k in info}
    values: list[tuple[str | None, object]] = []
    for item in info.get("items", []):
        if not str(item.get("path")).isdigit():  # a sub-folder of this one, nothing else
            raise BundleFormatError(
                f"A container element of {path} has the path {item.get('path')!r}, not a "
                "sub-folder number: the bundle is damaged. Save it again."
            )
        where = f"{prefix}{item['path']}"
        same = item.get("same_as")
        if same is not None:
            if same not in loaded:
                raise BundleFormatError(
                    f"A container element of {path} is the same as {same!r}, which is not an "
                    "element loaded before it: the bundle is damaged. Save it again."
                )
            values.append((item.get("key"), loaded[same]))
            continue
        item_info = dict(item["info"])
        if item["flavor"] in (*DEVICE_FLAVORS, FLAVOR_NAME):  # nested containers hand it on
            item_info.update(forwarded)
        folder = path / item["path"]
        if item["flavor"] == FLAVOR_NAME:
            value = _load_into(folder, item_info, ctx, loaded, f"{where}/")
        else:
            value = get_flavor(item["flavor"]).load(folder, item_info, ctx)
        loaded[where] = value
        values.append((item.get("key"), value))
    if kind == "dict":
        return {key: value for key, value in values}
    rebuilt = [value for _, value in values]
    return tuple(rebuilt) if kind == "tuple" else rebuilt


def walk(name: str, info: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every (flavor name, info) a saved model uses: itself, then a container's elements."""
    yield name, info
    if name != FLAVOR_NAME:
        return
    items = info.get("items")
    if not isinstance(items, list) or not all(_well_formed(item) for item in items):
        raise BundleFormatError(
            "A container of models in the bundle's manifest has elements that are not each a "
            "flavor, a path and an info: the bundle is damaged. Save it again."
        )
    for item in items:
        if "same_as" not in item:  # a repeated element is walked where it was saved
            yield from walk(item["flavor"], item["info"])


def _well_formed(item: object) -> bool:
    return (
        isinstance(item, dict)
        and isinstance(item.get("flavor"), str)
        and isinstance(item.get("path"), str)
        and isinstance(item.get("info"), dict)
    )


def _describe(obj: object) -> dict[str, Any]:
    flavor_for = _REGISTRY.flavor_for
    described: dict[str, Any] = {}
    for key, value in elements(obj):
        flavor = flavor_for(value)
        meta: dict[str, Any] = {"flavor": flavor.name}
        if flavor.describe is not None:
            # Metadata is informative, as for top-level models: never fail a save for it.
            with contextlib.suppress(Exception):
                meta.update(flavor.describe(value))
        described[str(key)] = meta
    return {
        "framework": "builtins",
        "class": f"builtins.{type(obj).__qualname__}",
        "items": len(described),
        "elements": described,
    }


FLAVOR = Flavor(
    name=FLAVOR_NAME,
    matches=_matches,
    save=_save,
    load=_load,
    packages=(),  # each element's flavor names its own; see flavors.requirements_for
    extra=None,
    describe=_describe,
)
