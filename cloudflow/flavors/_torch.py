"""torch ``nn.Module``: its tensors in one safetensors file, its skeleton pickled without them.

The module object (its class, possibly a user subclass, its submodules, hooks and plain attributes)
is pickled through the bundle's context with every tensor replaced by a persistent id, so
``module.pkl`` holds structure only and stays a few kilobytes whatever the model's size. The
tensors go to ``weights.safetensors``, each stored once however many attributes point at it (tied
embeddings), and at load every reference gets the very same restored object back, so weights that
were shared stay shared. The weights are memory-mapped, not copied, when the file is read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudflow.exceptions import BundleFormatError, EnvironmentMismatchError
from cloudflow.flavors import _aligned
from cloudflow.flavors._base import Flavor, class_name, loaded_module, require

if TYPE_CHECKING:
    from cloudflow.flavors._base import LoadContext, SaveContext, SharedFiles

FLAVOR_NAME = "torch"
EXTRA = "torch"
_WEIGHTS = "weights.safetensors"
_SKELETON = "module.pkl"
# First item of every persistent id written into module.pkl; anything else is not ours.
_PID_TAG = "cloudflow.torch.tensor"
# safetensors' dtype codes; a tensor of another dtype stays inside the pickle.
_DTYPE_CODES = _aligned.DTYPE_CODES
# Every tensor's data starts on a multiple of this many bytes in the file (see _aligned).
ALIGNMENT = _aligned.ALIGNMENT


def _matches(obj: object) -> bool:
    nn = loaded_module("torch.nn")
    return nn is not None and isinstance(obj, nn.Module)


def _storable(torch: Any, tensor: Any) -> bool:
    """Whether safetensors can hold this tensor's values (dense, real data, a known dtype)."""
    if type(tensor) not in (torch.Tensor, torch.nn.Parameter):
        return (
            False  # subclasses (UninitializedParameter, user tensor types) keep their own pickling
        )
    if tensor.layout != torch.strided or tensor.is_quantized or tensor.device.type == "meta":
        return False
    return str(tensor.dtype).removeprefix("torch.") in _DTYPE_CODES


def _tensor_names(module: Any) -> dict[int, str]:
    """State-dict style names by tensor identity; the first name of a tied tensor wins."""
    names: dict[int, str] = {}
    for name, tensor in module.named_parameters(remove_duplicate=False):
        names.setdefault(id(tensor), name)
    for name, tensor in module.named_buffers(remove_duplicate=False):
        names.setdefault(id(tensor), name)
    return names


def _save(obj: object, path: Path, ctx: SaveContext) -> dict[str, Any]:
    torch = require("torch", flavor=FLAVOR_NAME, extra=EXTRA)
    module: Any = obj
    names = _tensor_names(module)
    keys: dict[int, str] = {}  # id(tensor) -> key in the safetensors file
    tensors: dict[str, Any] = {}  # key -> tensor, which also keeps every id above alive

    def persistent_id(value: object) -> tuple[str, str, str, bool, str] | None:
        if not isinstance(value, torch.Tensor) or not _storable(torch, value):
            return None
        key = keys.get(id(value))
        if key is None:
            key = names.get(id(value)) or f"_tensors.{len(tensors)}"
            while key in tensors:
                key += "_"
            keys[id(value)] = key
            tensors[key] = value
        kind = "parameter" if isinstance(value, torch.nn.Parameter) else "tensor"
        return (_PID_TAG, key, kind, bool(value.requires_grad), str(value.device))

    ctx.dump(module, path / _SKELETON, persistent_id=persistent_id)
    write_safetensors(tensors, path / _WEIGHTS, {"format": "pt"}, shared=ctx.shared_files)
    return {
        "weights": _WEIGHTS,
        "module": _SKELETON,
        "tensors": len(tensors),
        "training": bool(module.training),
    }


def write_safetensors(
    tensors: Mapping[str, Any],
    filename: str | Path,
    metadata: Mapping[str, str] | None = None,
    *,
    pad: bool = True,
    shared: SharedFiles | None = None,
) -> None:
    """Write a safetensors file whose tensors start on :data:`ALIGNMENT`-byte boundaries.

    See :mod:`cloudflow.flavors._aligned` for why (bit-identical outputs from memory-mapped
    weights) and how (order and ``__cloudflow_padding__.N`` tensors, or without ``pad`` for a
    file another library reads, only the odd-sized tensors at the end may be unaligned).

    Args:
        tensors: Name to tensor; views, shared storage and non-contiguous tensors are fine.
        filename: The file to write.
        metadata: The header's ``__metadata__`` (strings only).
        pad: Whether to insert padding tensors.
        shared: The save's shared files (``SaveContext.shared_files``), to link a file they
            hold already instead of writing it.
    """
    import sys

    torch = require("torch", flavor=FLAVOR_NAME, extra=EXTRA)
    if sys.byteorder != "little":  # the format is little-endian: let safetensors convert
        safetensors_torch = require("safetensors.torch", flavor=FLAVOR_NAME, extra=EXTRA)
        safetensors_torch.save_file(
            {k: v.detach().contiguous() for k, v in tensors.items()}, filename, dict(metadata or {})
        )
        return

    def data_of(tensor: Any) -> Callable[[], memoryview]:
        def data() -> memoryview:
            flat = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
            return memoryview(flat.numpy())

        return data

    entries = {
        name: _aligned.Entry(
            dtype=_DTYPE_CODES[str(tensor.dtype).removeprefix("torch.")],
            shape=tuple(tensor.shape),
            nbytes=int(tensor.numel() * tensor.element_size()),
            data=data_of(tensor),
        )
        for name, tensor in tensors.items()
    }
    _aligned.write(entries, filename, metadata, pad=pad, shared=shared)


def device_or_cpu(torch: Any, name: str) -> str:
    """The saved device if this machine has it, else the CPU."""
    kind, _, index = name.partition(":")
    if kind == "cuda" and torch.cuda.is_available():
        return name if not index or int(index) < torch.cuda.device_count() else "cuda"
    if kind == "mps" and torch.backends.mps.is_available():
        return name
    return "cpu"


def requested_device(torch: Any, name: str | None) -> str | None:
    """The device asked for at load (``device=``), checked to exist on this machine.

    Raises:
        EnvironmentMismatchError: It is not there (no CUDA, fewer GPUs, no MPS).
    """
    if name is None:
        return None
    kind, _, index = name.partition(":")
    ok = kind == "cpu"
    if kind == "cuda":
        ok = torch.cuda.is_available() and (not index or int(index) < torch.cuda.device_count())
    elif kind == "mps":
        ok = bool(torch.backends.mps.is_available())
    if not ok:
        found = torch.cuda.device_count() if torch.cuda.is_available() else 0
        raise EnvironmentMismatchError(
            f"device={name!r} was asked for, and this machine has no such device (torch sees "
            f"{found} CUDA device(s)). Load with device='cpu', or on a machine that has it."
        )
    return name


def _load(path: Path, info: Mapping[str, Any], ctx: LoadContext) -> object:
    torch = require("torch", flavor=FLAVOR_NAME, extra=EXTRA)
    safetensors_torch = require("safetensors.torch", flavor=FLAVOR_NAME, extra=EXTRA)
    asked = requested_device(torch, info.get("load_device"))
    cast = getattr(torch, info["load_dtype"]) if info.get("load_dtype") else None
    # Memory-mapped on the CPU: the tensors read the file's pages, nothing is copied into the
    # heap. A device asked for at load gets the tensors straight from the file.
    stored = safetensors_torch.load_file(
        path / info.get("weights", _WEIGHTS), device=asked or "cpu"
    )
    restored: dict[str, Any] = {}

    def persistent_load(pid: object) -> object:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == _PID_TAG):
            raise BundleFormatError(
                f"{path / _SKELETON} refers to an unknown object {pid!r}; the bundle was written "
                "by another version of cloudflow's torch flavor."
            )
        _, key, kind, requires_grad, device = pid
        if key in restored:  # a tied tensor: hand out the same object again
            return restored[key]
        try:
            tensor = stored[key]
        except KeyError:
            raise BundleFormatError(
                f"Tensor {key!r} is missing from {path / _WEIGHTS}; the bundle is damaged."
            ) from None
        target = asked or device_or_cpu(torch, device)
        if str(tensor.device) != target and not (target == "cuda" and tensor.is_cuda):
            tensor = tensor.to(target)
        if cast is not None and tensor.is_floating_point() and tensor.dtype != cast:
            tensor = tensor.to(cast)
        if kind == "parameter":
            value = torch.nn.Parameter(tensor, requires_grad=requires_grad)
        else:
            value = tensor.requires_grad_(requires_grad) if requires_grad else tensor
        restored[key] = value
        return value

    return ctx.load(path / info.get("module", _SKELETON), persistent_load=persistent_load)


_SHAPES_SHOWN = 5  # tensor_shapes: the first few, a sample


def describe_module(module: Any) -> dict[str, Any]:
    """Parameter counts, dtypes, devices and layers of an ``nn.Module``, without copying.

    ``layers`` counts the leaf modules that hold weights (Linear, Conv, Norm...), not activations
    or dropout, and ``layer_types`` counts them by class; ``tensors`` counts the parameters and
    buffers, and ``tensor_shapes`` gives the first few by name. Also used by the transformers
    flavor for a pipeline's model.
    """
    params = list(module.parameters())  # each shared parameter once
    buffers = list(module.buffers())
    named = [*module.named_parameters(), *module.named_buffers()]
    trainable = sum(p.numel() for p in params if p.requires_grad)
    total = sum(p.numel() for p in params)
    # The parameters' dtype is the model's; buffers are often integer counters and positions.
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in params or buffers})
    devices = sorted({str(t.device) for t in params + buffers})
    weighted = [
        type(m).__name__
        for m in module.modules()
        if next(m.children(), None) is None
        and next(m.named_parameters(recurse=False), next(m.named_buffers(recurse=False), None))
        is not None
    ]
    layer_types: dict[str, int] = {}
    for kind in weighted:
        layer_types[kind] = layer_types.get(kind, 0) + 1
    return {
        "parameters": total,
        "trainable_parameters": trainable,
        "frozen_parameters": total - trainable,
        "buffers": sum(b.numel() for b in buffers),
        "dtype": dtypes[0] if len(dtypes) == 1 else dtypes,
        "device": devices[0] if len(devices) == 1 else devices,
        "layers": len(weighted),
        "layer_types": dict(sorted(layer_types.items(), key=lambda item: (-item[1], item[0]))),
        "tensors": len(named),
        "tensor_shapes": {name: list(t.shape) for name, t in named[:_SHAPES_SHOWN]},
        "weights_bytes": sum(t.numel() * t.element_size() for t in params + buffers),
        "training": bool(module.training),
    }


def _describe(obj: object) -> dict[str, Any]:
    return {
        "framework": "torch",
        "class": class_name(obj),
        **describe_module(obj),
    }


FLAVOR = Flavor(
    name=FLAVOR_NAME,
    matches=_matches,
    save=_save,
    load=_load,
    packages=("torch", "safetensors"),
    extra=EXTRA,
    describe=_describe,
)
