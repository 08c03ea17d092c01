"""Keras 3 models (Sequential, functional, subclassed), as a ``.keras`` archive, on any backend.

``model.save`` writes Keras's own format: ``model.keras``, a zip of the model's config (JSON),
its weights (HDF5) and metadata, which ``keras.saving.load_model`` reads on any backend. No
pickle holds a weight.

Keras finds a class or function of the user's own (a custom layer, a subclassed model, an
activation function) by the name the config gives it, and only among ``custom_objects`` and the
objects registered with ``keras.saving.register_keras_serializable``: it never imports the user's
module. So the save walks the config, finds each object that is not Keras's own in the saving
process (the registered one, else the module-level name in its module) and pickles them through
the bundle's context as ``custom_objects.pkl``: references into the bundle's captured modules,
which travel by value with the rest of the user's code. At load they are handed to
``load_model`` under the names the config uses (in a custom object scope, so that they win over
anything the loading program registered under the same name).

The backend the model was saved on (``torch``, ``tensorflow``, ``jax``, ``numpy``) is recorded,
and its library is a requirement of the bundle. Keras fixes its backend when it is first
imported, and the bundle's code may import keras as it is unpickled, so the check runs before
any of the bundle's code loads (:func:`_prepare`): in a process where nothing imported keras
yet and ``KERAS_BACKEND`` is not set, it is set to the saved backend; a process already bound to
another backend (imported, or ``KERAS_BACKEND`` set) is refused with a message naming both.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import math
import os
import sys
import types
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudflow.exceptions import (
    BundleFormatError,
    CaptureError,
    EnvironmentMismatchError,
    MissingDependencyError,
)
from cloudflow.flavors._base import Flavor, class_name, loaded_module, require

if TYPE_CHECKING:
    from cloudflow.flavors._base import LoadContext, SaveContext

FLAVOR_NAME = "keras"
EXTRA = "keras"
BACKEND_ENV = "KERAS_BACKEND"
_ARCHIVE = "model.keras"
_CUSTOM = "custom_objects.pkl"
# Keras's backends and the top-level module each needs (a requirement of the bundle).
_BACKEND_MODULES = {"tensorflow": "tensorflow", "torch": "torch", "jax": "jax", "numpy": "numpy"}
# Packages whose classes keras itself imports by module name at load (keras' own rule).
_KERAS_PACKAGES = frozenset({"keras", "keras_hub", "keras_cv", "keras_nlp"})
_SHAPES_SHOWN = 5  # tensor_shapes: the first few, a sample
_logger = logging.getLogger("cloudflow")


def _is_keras_3(keras: Any) -> bool:
    version = str(getattr(keras, "__version__", "0"))
    return version.partition(".")[0].isdigit() and int(version.partition(".")[0]) >= 3


def _matches(obj: object) -> bool:
    keras = loaded_module("keras")
    if keras is None:
        return False
    model = getattr(keras, "Model", None)
    # Keras 2 (keras 2.x, tf_keras) models are tf.Module objects: the tensorflow flavor's.
    return isinstance(model, type) and isinstance(obj, model) and _is_keras_3(keras)


def _save(obj: object, path: Path, ctx: SaveContext) -> dict[str, Any]:
    keras = require("keras", flavor=FLAVOR_NAME, extra=EXTRA)
    model: Any = obj
    archive = path / _ARCHIVE
    model.save(str(archive))
    with zipfile.ZipFile(archive) as zf:
        config = json.loads(zf.read("config.json"))
    custom = _custom_objects(keras, config, _functions_of(model))
    backend = str(keras.backend.backend())
    info: dict[str, Any] = {
        "archive": _ARCHIVE,
        "backend": backend,
        "modules": [_BACKEND_MODULES[backend]] if backend in _BACKEND_MODULES else [],
    }
    if custom:
        ctx.dump(custom, path / _CUSTOM)
        info["custom_objects"] = _CUSTOM
        info["custom_names"] = sorted(custom)
    if any(node.get("class_name") == "__lambda__" for node in _configs(config)):
        # Keras keeps a Lambda layer's Python lambda as marshalled bytecode, which it loads only
        # with safe_mode=False; the bundle's files are verified before they load.
        info["lambdas"] = True
    return info


def _configs(node: object) -> Iterator[dict[str, Any]]:
    """Every serialized object in a Keras config: the dicts that have a ``class_name``."""
    if isinstance(node, dict):
        if isinstance(node.get("class_name"), str):
            yield node
        for value in node.values():
            yield from _configs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _configs(value)


def _functions_of(model: Any) -> dict[str, Any]:
    """Functions not of Keras held by the model's layers (an activation), by their name.

    Keras writes an unregistered function of the user's as ``{"module": "builtins", "config":
    name}``: the name is all there is, so the function is found on the live layers.
    """
    flatten = getattr(model, "_flatten_layers", None)
    layers = [model, *(flatten(include_self=False) if callable(flatten) else model.layers)]
    found: dict[str, Any] = {}
    for layer in layers:
        for value in vars(layer).values():
            if isinstance(value, types.FunctionType):
                module = getattr(value, "__module__", None) or ""
                if module.partition(".")[0] not in _KERAS_PACKAGES:
                    found.setdefault(value.__name__, value)
    return found


def _custom_objects(
    keras: Any, config: Mapping[str, Any], functions: Mapping[str, Any]
) -> dict[str, Any]:
    """The user's classes and functions the config names, by the name Keras looks them up by."""
    found: dict[str, Any] = {}
    for node in _configs(config):
        module = node.get("module")
        if not isinstance(module, str):
            continue
        if module == "builtins":
            # A function of Keras's own (by name) or an unregistered one of the user's.
            name = node.get("config")
            if node["class_name"] == "function" and isinstance(name, str) and name in functions:
                found.setdefault(name, functions[name])
            continue
        if module.partition(".")[0] in _KERAS_PACKAGES:
            continue  # keras finds its own (and keras_hub's...) by module name
        kind = node["class_name"]
        registered = node.get("registered_name")
        if kind == "function":
            name, key = str(node.get("config")), str(node.get("config"))
        elif kind == "__typespec__":
            name = str(node.get("spec_name"))
            key = str(registered or name)
        else:
            name, key = kind, str(registered or kind)
        obj = _find(keras, module, name, key)
        if obj is None:
            raise CaptureError(
                f"The Keras model uses {module}.{name} (saved as {key!r}), and no module-level "
                f"object of that name is in {module!r}, nor is one registered with Keras: it "
                "could not be loaded back. Define it at the top level of a module, or decorate "
                "it with @keras.saving.register_keras_serializable()."
            )
        other = found.setdefault(key, obj)
        if other is not obj:
            raise CaptureError(
                f"The Keras model uses two different objects saved under the name {key!r} "
                f"({_dotted(other)} and {_dotted(obj)}); Keras finds custom objects by that name "
                "alone. Rename one, or register each with "
                "@keras.saving.register_keras_serializable(package=...)."
            )
    return found


def _find(keras: Any, module: str, name: str, key: str) -> Any:
    if ">" in key:  # registered: package>name
        obj = keras.saving.get_registered_object(key)
        if obj is not None:
            return obj
    found = sys.modules.get(module)
    return getattr(found, name.rpartition(">")[2], None) if found is not None else None


def _dotted(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _current_backend() -> tuple[str | None, str]:
    """The backend this process's Keras uses or will use, and how that was decided."""
    keras = loaded_module("keras")
    if keras is not None and hasattr(keras, "backend"):
        with contextlib.suppress(Exception):
            return str(keras.backend.backend()), "the keras already imported in this process"
    configured = os.environ.get(BACKEND_ENV)
    if configured:
        return configured.strip().lower(), f"{BACKEND_ENV}={configured}"
    return None, ""


def _prepare(info: Mapping[str, Any]) -> None:
    """Bind this process's Keras to the saved backend, before any of the bundle's code loads.

    Raises:
        EnvironmentMismatchError: Keras here already runs on, or is set to, another backend.
        MissingDependencyError: The saved backend's library is not installed.
    """
    saved = info.get("backend")
    if not isinstance(saved, str):
        return
    current, why = _current_backend()
    library = _BACKEND_MODULES.get(saved)
    if current in (None, saved) and library and importlib.util.find_spec(library) is None:
        raise MissingDependencyError(
            f"A Keras model of this bundle was saved on the {saved!r} backend, whose library "
            f"{library!r} is not installed here. Install it (the bundle's requirements.txt pins "
            f"its version), or save the model again from a process on a backend this "
            "environment has."
        )
    if current is None:
        os.environ[BACKEND_ENV] = saved
        _logger.info("Set %s=%s, the backend the Keras model was saved on", BACKEND_ENV, saved)
        return
    if current != saved:
        raise EnvironmentMismatchError(
            f"A Keras model of this bundle was saved on the {saved!r} backend, and Keras in this "
            f"process runs on the {current!r} backend ({why}). Set {BACKEND_ENV}={saved} before "
            f"anything imports keras (in the environment of the process, e.g. "
            f"`{BACKEND_ENV}={saved} python ...`), with the {saved!r} library installed; or save "
            f"the model again from a process on the {current!r} backend."
        )


def _load(path: Path, info: Mapping[str, Any], ctx: LoadContext) -> object:
    _prepare(info)
    keras = require("keras", flavor=FLAVOR_NAME, extra=EXTRA)
    _prepare(info)  # the import chose the backend: still the saved one?
    custom: Any = {}
    if info.get("custom_objects"):
        custom = ctx.load(path / str(info["custom_objects"]))
        if not isinstance(custom, dict):
            raise BundleFormatError(
                f"{path / str(info['custom_objects'])} holds a {type(custom).__name__}, not the "
                "dict of custom objects cloudflow writes: the bundle is damaged. Save it again."
            )
    archive = path / str(info.get("archive", _ARCHIVE))
    with keras.saving.CustomObjectScope(custom):
        return keras.saving.load_model(
            str(archive), custom_objects=custom, safe_mode=not info.get("lambdas")
        )


def _size(variable: Any) -> int:
    return math.prod(int(d) for d in variable.shape)


def _describe(obj: object) -> dict[str, Any]:
    keras = loaded_module("keras")
    model: Any = obj
    weights = list(model.weights)
    trainable = sum(_size(w) for w in model.trainable_weights)
    frozen = sum(_size(w) for w in model.non_trainable_weights)
    flatten = getattr(model, "_flatten_layers", None)
    layers = list(flatten(include_self=False)) if callable(flatten) else list(model.layers)
    leaves = [
        layer
        for layer in layers
        if not (callable(getattr(layer, "_flatten_layers", None)))
        or next(iter(layer._flatten_layers(include_self=False, recursive=False)), None) is None
    ]
    weighted = [type(layer).__name__ for layer in leaves if layer.weights]
    layer_types: dict[str, int] = {}
    for kind in weighted:
        layer_types[kind] = layer_types.get(kind, 0) + 1
    dtypes = sorted({str(w.dtype) for w in weights})
    policy = getattr(model, "dtype_policy", None)
    meta: dict[str, Any] = {
        "framework": FLAVOR_NAME,
        "class": class_name(obj),
        "backend": str(keras.backend.backend()) if keras is not None else None,
        "parameters": trainable + frozen,
        "trainable_parameters": trainable,
        "frozen_parameters": frozen,
        "dtype": dtypes[0] if len(dtypes) == 1 else dtypes,
        "dtype_policy": getattr(policy, "name", None),
        "layers": len(weighted),
        "layer_types": dict(sorted(layer_types.items(), key=lambda item: (-item[1], item[0]))),
        "tensors": len(weights),
        "tensor_shapes": {
            str(getattr(w, "path", w.name)): [int(d) for d in w.shape]
            for w in weights[:_SHAPES_SHOWN]
        },
        "built": bool(model.built),
    }
    return meta


FLAVOR = Flavor(
    name=FLAVOR_NAME,
    matches=_matches,
    save=_save,
    load=_load,
    packages=(),
    modules=("keras",),
    extra=EXTRA,
    describe=_describe,
    prepare=_prepare,
)
