"""Flax NNX modules: the state's arrays as safetensors, the graph definition pickled without them.

``nnx.split(module)`` gives a *graph definition* (the classes of the module and its submodules,
user classes included, their static attributes, which nodes are shared) and a *state* (every
``nnx.Variable``: parameters, batch statistics, RNG keys and counts, a user's own variable
types). Both go into ``module.pkl`` through the bundle's pickling context, with every array
replaced by a reference into ``weights.safetensors``: the pickle holds structure only (a few
kilobytes whatever the model's size), and a user's layer class is captured by value once,
shared with the predict function's copy. At load, ``nnx.merge(graphdef, state)`` builds the
module again, its arrays on JAX's default device.

Why the graph definition is pickled rather than rebuilt: flax's checkpointing guide restores a
state into an *abstract* module made with ``nnx.eval_shape(lambda: Model(...))``, which needs the
constructor and its arguments, which a bundle does not have (and the loading process has no
source to call). The graph definition is flax's own description of exactly that structure: an
immutable tree of node and variable definitions (it is the cache key of ``nnx.jit``) that
pickles cleanly, by reference for flax's classes and by value for the user's. The state is
pickled too, rather than flattened to a dict, so that each variable keeps its type and its
metadata (sharding names, a user's own fields) as flax made them.

Typed PRNG keys (a ``Dropout``'s ``RngKey``) are stored as their key data and wrapped again at
load, so a module in training mode draws the same dropout masks as the original. A module's
numpy arrays go to the safetensors file too and come back as numpy arrays; arrays of a dtype
safetensors cannot hold (``int4``) stay in the pickle. A module is saved as it is: call
``model.eval()`` before saving if it should load in evaluation mode.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudflow.exceptions import BundleFormatError
from cloudflow.flavors import _jax
from cloudflow.flavors._base import Flavor, class_name, loaded_module, require

if TYPE_CHECKING:
    from cloudflow.flavors._base import LoadContext, SaveContext

FLAVOR_NAME = "flax"
EXTRA = "flax"
_WEIGHTS = "weights.safetensors"
_SKELETON = "module.pkl"
# First item of every persistent id written into module.pkl; anything else is not ours.
_PID_TAG = "cloudflow.jax.array"


def _matches(obj: object) -> bool:
    nnx = loaded_module("flax.nnx")
    return nnx is not None and isinstance(obj, nnx.Module)


def _value_of(variable: Any) -> Any:
    getter = getattr(variable, "get_value", None)
    return getter() if callable(getter) else getattr(variable, "value", None)


def _flat(nnx: Any, state: Any) -> list[tuple[str, Any]]:
    """(dotted path, variable) of every variable of a state, in flax's order."""
    return [(".".join(map(str, path)), leaf) for path, leaf in nnx.to_flat_state(state)]


def _save(obj: object, path: Path, ctx: SaveContext) -> dict[str, Any]:
    nnx = require("flax.nnx", flavor=FLAVOR_NAME, extra=EXTRA)
    graphdef, state = nnx.split(obj)
    names = {id(_value_of(v)): name for name, v in reversed(_flat(nnx, state))}  # first wins
    writer = _jax.ArrayWriter()

    def persistent_id(value: object) -> tuple[str, str, str, str] | None:
        if not _jax.storable(value):
            return None
        record = writer.add(value, names.get(id(value)))
        return (_PID_TAG, record["key"], record["array"], record.get("prng_impl", ""))

    ctx.dump((graphdef, state), path / _SKELETON, persistent_id=persistent_id)
    writer.write(path / _WEIGHTS, "flax", ctx.shared_files)
    return {"weights": _WEIGHTS, "module": _SKELETON, "tensors": len(writer)}


def _load(path: Path, info: Mapping[str, Any], ctx: LoadContext) -> object:
    nnx = require("flax.nnx", flavor=FLAVOR_NAME, extra=EXTRA)
    weights = path / info.get("weights", _WEIGHTS)
    stored = _jax.read_arrays(weights, FLAVOR_NAME, EXTRA)
    restored: dict[str, Any] = {}

    def persistent_load(pid: object) -> object:
        if not (isinstance(pid, tuple) and len(pid) == 4 and pid[0] == _PID_TAG):
            raise BundleFormatError(
                f"{path / _SKELETON} refers to an unknown object {pid!r}; the bundle was written "
                "by another version of cloudflow's flax flavor."
            )
        _, key, kind, impl = pid
        if key not in restored:  # an array met twice: hand out the same object again
            record = {"key": key, "array": kind, **({"prng_impl": impl} if impl else {})}
            restored[key] = _jax.restore(stored, record, weights)
        return restored[key]

    loaded = ctx.load(path / info.get("module", _SKELETON), persistent_load=persistent_load)
    if not (isinstance(loaded, tuple) and len(loaded) == 2):
        raise BundleFormatError(
            f"{path / _SKELETON} does not hold a graph definition and a state; the bundle is "
            "damaged. Save it again."
        )
    graphdef, state = loaded
    return nnx.merge(graphdef, state)


def _describe(obj: object) -> dict[str, Any]:
    nnx = require("flax.nnx", flavor=FLAVOR_NAME, extra=EXTRA)
    _, state = nnx.split(obj)
    flat = _flat(nnx, state)
    arrays = [(name, _value_of(v)) for name, v in flat]
    arrays = [(name, a) for name, a in arrays if hasattr(a, "shape") and hasattr(a, "dtype")]
    by_id = {id(a) for _, a in arrays}
    param_ids = {id(_value_of(v)) for _, v in flat if isinstance(v, nnx.Param)}
    params = [a for _, a in arrays if id(a) in param_ids]
    others = [a for _, a in arrays if id(a) not in param_ids]
    variable_types: dict[str, int] = {}
    for _, variable in flat:
        kind = type(variable).__name__
        variable_types[kind] = variable_types.get(kind, 0) + 1
    # Layers: the modules that hold variables themselves (Linear, BatchNorm, a user's layer),
    # not containers of other modules, nor Dropout, whose RNG stream is a node of its own.
    layer_types: dict[str, int] = {}
    for _, node in nnx.iter_graph(obj):
        if isinstance(node, nnx.Module) and any(
            isinstance(v, nnx.Variable) for v in vars(node).values()
        ):
            kind = type(node).__name__
            layer_types[kind] = layer_types.get(kind, 0) + 1
    meta = _jax.describe_arrays(arrays)
    param_dtypes = sorted({str(a.dtype) for a in params})
    return {
        "framework": "flax",
        "class": class_name(obj),
        "parameters": sum(int(a.size) for a in params),
        "buffers": sum(int(a.size) for a in others),
        "dtype": param_dtypes[0] if len(param_dtypes) == 1 else (param_dtypes or meta["dtype"]),
        "device": meta["device"],
        "layers": sum(layer_types.values()),
        "layer_types": dict(sorted(layer_types.items(), key=lambda item: (-item[1], item[0]))),
        "variable_types": dict(sorted(variable_types.items())),
        "tensors": len(by_id),
        "tensor_shapes": meta["tensor_shapes"],
        "weights_bytes": meta["weights_bytes"],
    }


FLAVOR = Flavor(
    name=FLAVOR_NAME,
    matches=_matches,
    save=_save,
    load=_load,
    packages=("safetensors",),
    modules=("flax", "jax", "jaxlib"),
    extra=EXTRA,
    describe=_describe,
)
