"""JAX: pytrees of arrays (the parameters of a hand-written model) as safetensors plus JSON.

A model can be plain JAX: ``params = {"layers": [{"w": w0, "b": b0}, ...], "scale": s}`` and a
function that applies it. Such a tree goes to ``arrays.safetensors`` (every array, named by its
path in the tree, ``layers.0.w``) and ``tree.json`` (the structure: which nodes are dicts, with
their keys in order, lists and tuples, and where each array sits). No pickle: a load parses JSON
and safetensors only, and the arrays come back on JAX's default device.

The rule (:func:`array_tree_leaves`): a ``jax.Array`` on its own, or an object of exactly
``dict`` (``str`` keys), ``list`` or ``tuple``, nested at most :data:`MAX_DEPTH` deep, whose
leaves are JAX arrays, numpy arrays, ``None``, bools, ints, finite floats or strings, with at
least one JAX array among them. Anything else is not claimed: a ``namedtuple``, an
``OrderedDict``, a registered custom pytree node, an array of a dtype safetensors cannot hold
(``int4``), an object leaf. Such a tree falls back cleanly on the built-ins after this flavor
(a dict holding JAX arrays beside another object is a container, whose JAX arrays are each
saved by this flavor; otherwise one pickle). A tree of numpy arrays alone stays one pickle, as
before this flavor existed: it is not a JAX model.

Typed PRNG keys (``jax.random.key``) are stored as their key data (``uint32``) with the name of
their implementation and wrapped again at load. The same array met twice is stored once and
comes back as one object. Arrays sharded over several devices are gathered into one host copy
(a process that cannot see every shard cannot save them) and load unsharded on the default
device: put them on a mesh again after the load.

The flax NNX flavor (:mod:`cloudflow.flavors._flax`) stores a module's arrays with the same
:class:`ArrayWriter` and :func:`read_arrays`.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudflow.exceptions import BundleFormatError, CaptureError
from cloudflow.flavors import _aligned
from cloudflow.flavors._base import Flavor, class_name, loaded_module, require
from cloudflow.integrity import digests as _digests

if TYPE_CHECKING:
    from cloudflow.flavors._base import LoadContext, SaveContext, SharedFiles

FLAVOR_NAME = "jax"
EXTRA = "jax"
ARRAYS = "arrays.safetensors"
_TREE = "tree.json"
_TREE_FORMAT = 1
#: Deeper than this, a tree is not looked into (and one that holds itself is no tree).
MAX_DEPTH = 16
_NODES: dict[type, str] = {dict: "dict", list: "list", tuple: "tuple"}
_VALUES = (bool, int, float, str, type(None))
_SHAPES_SHOWN = 5  # tensor_shapes in the metadata: the first few, a sample


# --- arrays: what can be stored, writing, reading -------------------------------------------


def is_jax_array(obj: object) -> bool:
    """A ``jax.Array`` (typed PRNG keys included); imports nothing."""
    jax = loaded_module("jax")
    return jax is not None and isinstance(obj, jax.Array)


def _is_key(jax: Any, array: Any) -> bool:
    return bool(jax.numpy.issubdtype(array.dtype, jax.dtypes.prng_key))


def storable(obj: Any) -> bool:
    """Whether safetensors can hold this array's values: a JAX or numpy array of a known dtype."""
    jax = loaded_module("jax")
    if jax is not None and isinstance(obj, jax.Array):
        return _is_key(jax, obj) or getattr(obj.dtype, "name", None) in _aligned.DTYPE_CODES
    np = loaded_module("numpy")
    return (
        np is not None
        and type(obj) is np.ndarray
        and obj.dtype.name in _aligned.DTYPE_CODES
        and not obj.dtype.hasobject
    )


def _host_copy(array: Any) -> Any:
    """A C-contiguous, little-endian numpy array of a JAX or numpy array's values."""
    import numpy as np

    jax = loaded_module("jax")
    if jax is not None and isinstance(array, jax.Array):
        if not array.is_fully_addressable:
            raise CaptureError(
                f"A JAX array of shape {tuple(array.shape)} is sharded over devices this process "
                "cannot address (a multi-host array), so its values cannot be saved from here. "
                "Gather it first (jax.experimental.multihost_utils.process_allgather) and save "
                "that."
            )
        if _is_key(jax, array):
            array = jax.random.key_data(array)
        array = jax.device_get(array)
    host = np.asarray(array)
    if not host.flags.c_contiguous:  # (np.ascontiguousarray would make a scalar 1-d)
        host = host.copy(order="C")
    if sys.byteorder == "big" and host.dtype.itemsize > 1:  # the format is little-endian
        host = host.byteswap()
    return host


class ArrayWriter:
    """Collects arrays under names, each stored once, then writes them as one file.

    :meth:`add` returns the record a load needs to give the array back (``key``: its name in
    the file; ``array``: ``"jax"`` or ``"numpy"``; ``prng_impl``: a PRNG key's implementation),
    JSON-able and picklable.
    """

    def __init__(self) -> None:
        self._keys: dict[int, str] = {}  # id(array) -> key in the file
        self._arrays: dict[str, Any] = {}  # key -> array, which also keeps every id above alive
        self._records: dict[str, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self._arrays)

    def add(self, array: Any, name: str | None = None) -> dict[str, Any]:
        key = self._keys.get(id(array))
        if key is None:
            key = name or f"_arrays.{len(self._arrays)}"
            while key in self._arrays or key.startswith(_aligned.PAD_PREFIX):
                key += "_"
            self._keys[id(array)] = key
            self._arrays[key] = array
            jax = loaded_module("jax")
            record: dict[str, Any] = {"key": key, "array": "numpy"}
            if jax is not None and isinstance(array, jax.Array):
                record["array"] = "jax"
                if _is_key(jax, array):
                    record["prng_impl"] = str(jax.random.key_impl(array))
            self._records[key] = record
        return dict(self._records[key])

    def write(self, path: Path, framework: str, shared: SharedFiles | None = None) -> None:
        entries = {}
        for key, array in self._arrays.items():
            host = _host_copy(array)
            entries[key] = _aligned.Entry(
                dtype=_aligned.DTYPE_CODES[host.dtype.name],
                shape=tuple(int(n) for n in host.shape),
                nbytes=int(host.nbytes),
                data=_bytes_of(host),
            )
        _aligned.write(entries, path, {"format": framework}, shared=shared)


def _bytes_of(host: Any) -> Callable[[], memoryview]:
    return lambda: memoryview(host.reshape(-1).view("uint8"))


def read_arrays(path: Path, flavor: str, extra: str) -> dict[str, Any]:
    """The arrays of a file :class:`ArrayWriter` wrote, as JAX arrays on the default device.

    Read through safetensors' own parser, as flax's (``framework="flax"``), which knows
    ``bfloat16`` in every release since it had JAX support.
    """
    safetensors = require("safetensors", flavor=flavor, extra=extra)
    try:
        with safetensors.safe_open(str(path), framework="flax") as f:
            return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 - not a dict
    except (OSError, ValueError) as e:
        raise BundleFormatError(f"{path} is not a readable safetensors file ({e}).") from e


def restore(stored: Mapping[str, Any], record: Mapping[str, Any], where: Path) -> Any:
    """The array :meth:`ArrayWriter.add` recorded, from :func:`read_arrays`' result.

    JAX arrays are on JAX's default device; numpy arrays come back as numpy arrays.
    """
    key = str(record.get("key"))
    try:
        array = stored[key]
    except (KeyError, TypeError):
        raise BundleFormatError(
            f"Array {key!r} is missing from {where}; the bundle is damaged. Save it again."
        ) from None
    kind = record.get("array")
    if kind == "numpy":
        import numpy as np

        return np.array(array)
    if kind != "jax":
        raise BundleFormatError(
            f"Array {key!r} of {where} is of the unknown kind {kind!r}; known kinds are 'jax' "
            "and 'numpy'. Upgrade cloudflow to load it."
        )
    jax = require("jax", flavor=FLAVOR_NAME, extra=EXTRA)
    impl = record.get("prng_impl")
    return jax.random.wrap_key_data(array, impl=impl) if impl else array


def describe_arrays(named: list[tuple[str, Any]]) -> dict[str, Any]:
    """Counts, dtypes, devices and a sample of shapes of (name, array) pairs, without copying."""
    jax = loaded_module("jax")
    dtypes: set[str] = set()
    devices: set[str] = set()
    elements = 0
    nbytes = 0
    for _, array in named:
        dtypes.add(str(array.dtype))
        elements += int(math.prod(array.shape))
        nbytes += int(getattr(array, "nbytes", 0) or 0)
        if jax is not None and isinstance(array, jax.Array):
            devices.update(str(d) for d in array.devices())
    return {
        "elements": elements,
        "dtype": sorted(dtypes)[0] if len(dtypes) == 1 else sorted(dtypes),
        "device": sorted(devices)[0] if len(devices) == 1 else sorted(devices),
        "tensors": len(named),
        "tensor_shapes": {name: list(a.shape) for name, a in named[:_SHAPES_SHOWN]},
        "weights_bytes": nbytes,
    }


# --- pytrees ---------------------------------------------------------------------------------


def _leaf_ok(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)  # JSON has no NaN or infinity
    return isinstance(value, _VALUES) or storable(value)


def array_tree_leaves(obj: Any, depth: int = 0) -> int | None:
    """The number of JAX arrays in ``obj`` if it is a tree this flavor saves, else None."""
    if is_jax_array(obj):
        return 1 if storable(obj) else None
    kind = _NODES.get(type(obj))
    if kind is None or depth >= MAX_DEPTH:
        return None
    if kind == "dict" and not all(isinstance(k, str) for k in obj):
        return None
    values = obj.values() if isinstance(obj, dict) else obj
    count = 0
    for value in values:
        if type(value) in _NODES or is_jax_array(value):
            inner = array_tree_leaves(value, depth + 1)
            if inner is None:
                return None
            count += inner
        elif not _leaf_ok(value):
            return None
    return count


def _matches(obj: object) -> bool:
    if loaded_module("jax") is None:  # no JAX array can exist
        return False
    return bool(array_tree_leaves(obj))


def _path_name(path: tuple[str, ...]) -> str:
    return ".".join(path) or "array"


def _encode(node: Any, path: tuple[str, ...], writer: ArrayWriter) -> dict[str, Any]:
    kind = _NODES.get(type(node))
    if kind == "dict":
        items = node.items()
        return {
            "kind": "dict",
            "keys": [k for k, _ in items],
            "items": [_encode(v, (*path, k), writer) for k, v in items],
        }
    if kind is not None:
        return {
            "kind": kind,
            "items": [_encode(v, (*path, str(i)), writer) for i, v in enumerate(node)],
        }
    if storable(node):
        return {"kind": "array", **writer.add(node, _path_name(path))}
    return {"kind": "value", "value": node}


def _save(obj: object, path: Path, ctx: SaveContext) -> dict[str, Any]:
    writer = ArrayWriter()
    tree = _encode(obj, (), writer)
    writer.write(path / ARRAYS, "jax", ctx.shared_files)
    document = {"format": _TREE_FORMAT, "tree": tree}
    text = json.dumps(document, allow_nan=False)
    _digests.write_hashed(path / _TREE, text.encode("utf-8"))  # digested as written
    return {"arrays": ARRAYS, "tree": _TREE, "tensors": len(writer)}


def _decode(node: object, stored: Mapping[str, Any], where: Path, done: dict[str, Any]) -> Any:
    if not isinstance(node, dict):
        raise BundleFormatError(f"{where} holds a tree node that is not an object: {node!r}.")
    kind = node.get("kind")
    if kind == "array":
        key = str(node.get("key"))
        if key not in done:  # the same array twice comes back as one object
            done[key] = restore(stored, node, where)
        return done[key]
    if kind == "value":
        return node.get("value")
    items = node.get("items")
    if kind not in _NODES.values() or not isinstance(items, list):
        raise BundleFormatError(
            f"{where} holds a tree node of the unknown kind {kind!r}; known kinds are dict, list, "
            "tuple, array and value. Upgrade cloudflow to load it."
        )
    values = [_decode(item, stored, where, done) for item in items]
    if kind == "dict":
        keys = node.get("keys")
        if not isinstance(keys, list) or len(keys) != len(values):
            raise BundleFormatError(f"{where} holds a dict node whose keys do not match its items.")
        return dict(zip(keys, values, strict=True))
    return tuple(values) if kind == "tuple" else values


def _load(path: Path, info: Mapping[str, Any], ctx: LoadContext) -> object:
    require("jax", flavor=FLAVOR_NAME, extra=EXTRA)
    where = path / info.get("tree", _TREE)
    try:
        document = json.loads(ctx.read_bytes(where).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise BundleFormatError(f"{where} is not valid JSON ({e}); the bundle is damaged.") from e
    if not isinstance(document, dict) or document.get("format") != _TREE_FORMAT:
        raise BundleFormatError(
            f"{where} is not a tree of format {_TREE_FORMAT}; the bundle was written by another "
            "cloudflow. Upgrade cloudflow to load it."
        )
    stored = read_arrays(path / info.get("arrays", ARRAYS), FLAVOR_NAME, EXTRA)
    return _decode(document.get("tree"), stored, where, {})


def _named_leaves(node: object, path: tuple[str, ...], out: list[tuple[str, Any]]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            _named_leaves(value, (*path, str(key)), out)
    elif isinstance(node, list | tuple):
        for index, value in enumerate(node):
            _named_leaves(value, (*path, str(index)), out)
    elif storable(node):
        out.append((_path_name(path), node))


def _describe(obj: object) -> dict[str, Any]:
    jax = require("jax", flavor=FLAVOR_NAME, extra=EXTRA)
    found: list[tuple[str, Any]] = []
    _named_leaves(obj, (), found)
    seen: set[int] = set()
    named = []
    for name, array in found:  # each array once, under its first name
        if id(array) not in seen:
            seen.add(id(array))
            named.append((name, array))
    keys = [(n, a) for n, a in named if isinstance(a, jax.Array) and _is_key(jax, a)]
    meta = describe_arrays([item for item in named if item not in keys] or named)
    return {
        "framework": "jax",
        "class": class_name(obj),
        "parameters": meta.pop("elements") if len(keys) < len(named) else 0,
        "prng_keys": len(keys),
        **meta,
        "tensors": len(named),
        "tensor_shapes": {name: list(a.shape) for name, a in named[:_SHAPES_SHOWN]},
    }


FLAVOR = Flavor(
    name=FLAVOR_NAME,
    matches=_matches,
    save=_save,
    load=_load,
    packages=("safetensors",),
    modules=("jax", "jaxlib"),
    extra=EXTRA,
    describe=_describe,
)
