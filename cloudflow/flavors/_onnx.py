"""ONNX: ``onnx.ModelProto`` and ``onnxruntime.InferenceSession``, as the model's own protobuf.

A ``ModelProto`` goes to ``model.onnx`` (``onnx.save_model``; weights past 2 GB, which protobuf
cannot hold in one message, to ``model.onnx.data`` beside it) and comes back with
``onnx.load_model``. An ``InferenceSession`` is its model bytes, ``model.onnx`` (the bytes or file
it was built from), plus what built it: the session options that can be read back (threads,
graph optimization level, execution mode, memory settings, deterministic compute) and the
execution providers with their options, in the manifest. At load the session is built again
from those; providers this machine lacks are left out, with a warning, and the CPU provider
always remains. No pickle either way.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudflow.exceptions import BundleFormatError, CaptureError
from cloudflow.flavors._base import Flavor, class_name, loaded_module, require
from cloudflow.integrity import digests as _digests

if TYPE_CHECKING:
    from cloudflow.flavors._base import LoadContext, SaveContext

FLAVOR_NAME = "onnx"
EXTRA = "onnx"
_MODEL = "model.onnx"
_DATA = "model.onnx.data"
# protobuf's limit for one message; larger models keep their weights in an external file.
_PROTOBUF_LIMIT = 2**31 - 1
# Session options read back from a live session and set again at load; enums by member name.
_OPTIONS = (
    "intra_op_num_threads",
    "inter_op_num_threads",
    "graph_optimization_level",
    "execution_mode",
    "execution_order",
    "enable_cpu_mem_arena",
    "enable_mem_pattern",
    "enable_mem_reuse",
    "use_deterministic_compute",
    "log_severity_level",
    "log_verbosity_level",
    "logid",
)
_CPU = "CPUExecutionProvider"
_logger = logging.getLogger("cloudflow")


def _matches(obj: object) -> bool:
    onnx = loaded_module("onnx")
    if onnx is not None and isinstance(obj, onnx.ModelProto):
        return True
    ort = loaded_module("onnxruntime")
    return ort is not None and isinstance(obj, ort.InferenceSession)


def _save(obj: object, path: Path, ctx: SaveContext) -> dict[str, Any]:
    onnx = loaded_module("onnx")
    if onnx is not None and isinstance(obj, onnx.ModelProto):
        external = obj.ByteSize() > _PROTOBUF_LIMIT
        onnx.save_model(
            obj,
            str(path / _MODEL),
            save_as_external_data=external,
            all_tensors_to_one_file=True,
            location=_DATA,
        )
        return {"kind": "model", "file": _MODEL, "external_data": external}
    session: Any = obj
    _digests.write_hashed(path / _MODEL, _session_bytes(session))  # digested as written
    options = session.get_session_options()
    saved_options: dict[str, Any] = {}
    for name in _OPTIONS:
        value = getattr(options, name, None)
        if value is None:
            continue
        saved_options[name] = value.name if hasattr(value, "name") else value
    return {
        "kind": "session",
        "file": _MODEL,
        "providers": list(session.get_providers()),
        "provider_options": {k: dict(v) for k, v in session.get_provider_options().items()},
        "session_options": saved_options,
    }


def _session_bytes(session: Any) -> bytes:
    """The model an InferenceSession was built from: its bytes, or the file it read."""
    data = getattr(session, "_model_bytes", None)
    if isinstance(data, bytes | bytearray):
        return bytes(data)
    model_path = getattr(session, "_model_path", None)
    if isinstance(model_path, str) and Path(model_path).is_file():
        return Path(model_path).read_bytes()
    raise CaptureError(
        "This onnxruntime.InferenceSession keeps neither its model's bytes nor the path of its "
        "file, so its model cannot be saved. Pass the onnx.ModelProto (onnx.load(path)) as the "
        "model instead, or build the session from a file or bytes."
    )


def _load(path: Path, info: Mapping[str, Any], ctx: LoadContext) -> object:
    kind = info.get("kind")
    file = path / info.get("file", _MODEL)
    if kind == "model":
        onnx = require("onnx", flavor=FLAVOR_NAME, extra=EXTRA)
        return onnx.load_model(str(file), load_external_data=bool(info.get("external_data")))
    if kind == "session":
        ort = require("onnxruntime", flavor=FLAVOR_NAME, extra=EXTRA)
        options = ort.SessionOptions()
        for name, value in (info.get("session_options") or {}).items():
            current = getattr(options, name, None)
            if hasattr(current, "name") and isinstance(value, str):  # an enum, by member name
                value = getattr(type(current), value)
            setattr(options, name, value)
        available = set(ort.get_available_providers())
        wanted = list(info.get("providers") or [_CPU])
        missing = [p for p in wanted if p not in available]
        if missing:
            _logger.warning(
                "The ONNX session was saved with %s, not available here; using %s.",
                ", ".join(missing),
                ", ".join(p for p in wanted if p in available) or _CPU,
            )
        providers = [p for p in wanted if p in available] or [_CPU]
        provider_options = info.get("provider_options") or {}
        return ort.InferenceSession(
            str(file),
            sess_options=options,
            providers=providers,
            provider_options=[dict(provider_options.get(p, {})) for p in providers],
        )
    raise BundleFormatError(
        f"Unknown ONNX model kind {kind!r} in the bundle; known kinds are 'model' and "
        "'session'. Upgrade cloudflow to load it."
    )


def _describe(obj: object) -> dict[str, Any]:
    meta: dict[str, Any] = {"framework": FLAVOR_NAME, "class": class_name(obj)}
    model: Any = obj
    if hasattr(model, "graph"):  # a ModelProto
        meta["opsets"] = {op.domain or "ai.onnx": int(op.version) for op in model.opset_import}
        meta["producer"] = model.producer_name or None
        meta["inputs"] = [i.name for i in model.graph.input]
        meta["outputs"] = [o.name for o in model.graph.output]
        meta["nodes"] = len(model.graph.node)
        sizes = [_elements(t.dims) for t in model.graph.initializer]
        meta["parameters"] = sum(sizes)
        return meta
    meta["inputs"] = [i.name for i in model.get_inputs()]
    meta["outputs"] = [o.name for o in model.get_outputs()]
    meta["providers"] = list(model.get_providers())
    return meta


def _elements(dims: Any) -> int:
    count = 1
    for dim in dims:
        count *= int(dim)
    return count


FLAVOR = Flavor(
    name=FLAVOR_NAME,
    matches=_matches,
    save=_save,
    load=_load,
    packages=(),
    modules=("onnx", "onnxruntime"),
    extra=EXTRA,
    describe=_describe,
)
