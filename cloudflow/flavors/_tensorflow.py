"""TensorFlow objects that are not Keras models (``tf.Module``...), as a SavedModel folder.

``tf.saved_model.save`` writes ``saved_model/``: the graphs of the object's ``tf.function``
methods (every trace made so far, each input signature given), its variables
(``variables/variables.data-*``, TensorFlow's checkpoint format), assets and the object graph
that ties them together. No pickle. ``tf.saved_model.load`` gives back the *restored* object:
the same tree of tracked attributes (submodules, variables, tables), and functions that run the
saved graphs, but not the user's class: its Python methods that are not ``tf.function``, and
attributes that are plain Python values, are not in a SavedModel (see the README).

Claimed: every trackable object that ``tf.saved_model.save`` takes whole (``tf.Module``,
``tf.train.Checkpoint``, an object restored from a SavedModel, a Keras 2 model). A Keras 3
model is the keras flavor's, asked first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudflow.flavors._base import Flavor, class_name, loaded_module, require

if TYPE_CHECKING:
    from cloudflow.flavors._base import LoadContext, SaveContext

FLAVOR_NAME = "tensorflow"
EXTRA = "tensorflow"
_DIR = "saved_model"
_SHAPES_SHOWN = 5  # tensor_shapes: the first few, a sample
# Where TensorFlow's trackable base class lives (2.13+, then older releases).
_TRACKABLE = (
    ("tensorflow.python.trackable.autotrackable", "AutoTrackable"),
    ("tensorflow.python.training.tracking.tracking", "AutoTrackable"),
)


def _trackable_class() -> type | None:
    for module_name, attr in _TRACKABLE:
        module = loaded_module(module_name)
        cls = getattr(module, attr, None) if module is not None else None
        if isinstance(cls, type):
            return cls
    return None


def _matches(obj: object) -> bool:
    if loaded_module("tensorflow") is None:
        return False
    cls = _trackable_class()
    return cls is not None and isinstance(obj, cls)


def _save(obj: object, path: Path, ctx: SaveContext) -> dict[str, Any]:
    tf = require("tensorflow", flavor=FLAVOR_NAME, extra=EXTRA)
    tf.saved_model.save(obj, str(path / _DIR))
    return {"saved_model": _DIR}


def _load(path: Path, info: Mapping[str, Any], ctx: LoadContext) -> object:
    tf = require("tensorflow", flavor=FLAVOR_NAME, extra=EXTRA)
    return tf.saved_model.load(str(path / str(info.get("saved_model", _DIR))))


def _variables(tf: Any, obj: Any) -> list[Any]:
    """The object's variables, each once: ``tf.Module.variables``, else its trackable tree."""
    found = getattr(obj, "variables", None)
    if isinstance(found, list | tuple):
        return list(found)
    seen: dict[int, Any] = {}
    for node in tf.train.TrackableView(obj).descendants():
        if isinstance(node, tf.Variable):
            seen.setdefault(id(node), node)
    return list(seen.values())


def _signature(fn: Any) -> list[str] | None:
    specs = getattr(fn, "input_signature", None)
    if specs is None:
        return None
    return [
        f"{spec.dtype.name}{list(spec.shape) if spec.shape.rank is not None else '[...]'}"
        for spec in specs
    ]


def _describe(obj: object) -> dict[str, Any]:
    tf = loaded_module("tensorflow")
    if tf is None:
        return {"framework": FLAVOR_NAME, "class": class_name(obj)}
    variables = _variables(tf, obj)
    sizes = [math.prod(int(d or 0) for d in v.shape) for v in variables]
    trainable = sum(s for s, v in zip(sizes, variables, strict=True) if v.trainable)
    functions: dict[str, Any] = {}
    function_type = getattr(getattr(tf, "types", None), "experimental", None)
    generic = getattr(function_type, "GenericFunction", None) or getattr(
        function_type, "PolymorphicFunction", None
    )
    for name in sorted(dir(obj)):
        if name.startswith("_"):
            continue
        try:
            value = getattr(obj, name)
        except Exception:  # noqa: BLE001 - a property may raise; metadata is informative
            continue
        if generic is not None and isinstance(value, generic):
            functions[name] = _signature(value)
    submodules = list(getattr(obj, "submodules", ()) or ())
    layer_types: dict[str, int] = {}
    for sub in submodules:
        kind = type(sub).__name__
        layer_types[kind] = layer_types.get(kind, 0) + 1
    dtypes = sorted({v.dtype.name for v in variables})
    return {
        "framework": FLAVOR_NAME,
        "class": class_name(obj),
        "parameters": sum(sizes),
        "trainable_parameters": trainable,
        "frozen_parameters": sum(sizes) - trainable,
        "dtype": dtypes[0] if len(dtypes) == 1 else dtypes,
        "layers": len(submodules),
        "layer_types": dict(sorted(layer_types.items(), key=lambda item: (-item[1], item[0]))),
        "tensors": len(variables),
        "tensor_shapes": {
            str(v.name): [int(d or 0) for d in v.shape] for v in variables[:_SHAPES_SHOWN]
        },
        "functions": functions,
    }


FLAVOR = Flavor(
    name=FLAVOR_NAME,
    matches=_matches,
    save=_save,
    load=_load,
    packages=(),
    modules=("tensorflow",),
    extra=EXTRA,
    describe=_describe,
)
