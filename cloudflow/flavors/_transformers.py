"""Hugging Face transformers: pipelines, models, tokenizers and processors, in their own format.

Everything goes through ``save_pretrained`` (weights as safetensors, config with its labels,
tokenizer files), so the folder is one transformers itself reads: a pipeline comes back through
``transformers.pipeline(task, model=folder, ...)``, anything else through ``from_pretrained`` of its
own class. The weights are memory-mapped at load, so loading costs what transformers' own load does.

What ``save_pretrained`` does not keep is recorded next to it: the task, the pipeline class, the
settings the pipeline was built with (``top_k``, tokenizer arguments, batch size...), the dtype and
the device. A class that is not transformers' own (a user subclass) is pickled through the
bundle's context, as a reference into the bundle's captured modules.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudflow.exceptions import BundleFormatError
from cloudflow.flavors._base import Flavor, class_name, loaded_module, require
from cloudflow.flavors._torch import (
    describe_module,
    device_or_cpu,
    requested_device,
    write_safetensors,
)

if TYPE_CHECKING:
    from cloudflow.flavors._base import LoadContext, SaveContext, SharedFiles

FLAVOR_NAME = "transformers"
EXTRA = "transformers"
# (module, class, kind): the transformers base classes this flavor saves. Looked up in sys.modules
# only: an object of a class whose module was never imported cannot exist.
_KINDS = (
    ("transformers.pipelines.base", "Pipeline", "pipeline"),
    ("transformers.modeling_utils", "PreTrainedModel", "model"),
    ("transformers.tokenization_utils_base", "PreTrainedTokenizerBase", "pretrained"),
    ("transformers.processing_utils", "ProcessorMixin", "pretrained"),
    ("transformers.image_processing_base", "ImageProcessingMixin", "pretrained"),
    ("transformers.feature_extraction_utils", "FeatureExtractionMixin", "pretrained"),
    ("transformers.video_processing_utils", "BaseVideoProcessor", "pretrained"),
    ("transformers.configuration_utils", "PreTrainedConfig", "pretrained"),
    ("transformers.configuration_utils", "PretrainedConfig", "pretrained"),
)
# Pipeline components that save_pretrained writes into the same folder.
_COMPONENTS = ("tokenizer", "feature_extractor", "image_processor", "video_processor", "processor")
_SETTINGS_FILE = "pipeline_settings.pkl"
_WRITER_LOCK = threading.Lock()


def _kind(obj: object) -> str | None:
    if loaded_module("transformers") is None:
        return None
    for module_name, attr, kind in _KINDS:
        module = loaded_module(module_name)
        cls = getattr(module, attr, None) if module is not None else None
        if isinstance(cls, type) and isinstance(obj, cls):
            return kind
    return None


def _matches(obj: object) -> bool:
    return _kind(obj) is not None


@contextlib.contextmanager
def _quiet(transformers: Any) -> Iterator[None]:
    """No "Loading weights" progress bars from transformers itself: cloudflow reports progress."""
    logging = transformers.utils.logging
    enabled = logging.is_progress_bar_enabled()
    if enabled:
        logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            logging.enable_progress_bar()


@contextlib.contextmanager
def _aligned_weights(shared: SharedFiles | None) -> Iterator[None]:
    """Have ``save_pretrained`` write 64-byte aligned safetensors files (see write_safetensors).

    Without it the memory-mapped weights sit 8-byte aligned and the reloaded model's outputs can
    differ from the saved model's in their last bits. transformers writes through the name
    ``safe_save_file`` of its ``modeling_utils``; it is swapped for the duration of the save only
    when it is exactly safetensors' ``save_file``, so another transformers version, which may
    write differently, just gets files of its own (correct, merely 8-byte aligned).
    """
    modeling_utils = loaded_module("transformers.modeling_utils")
    safetensors_torch = loaded_module("safetensors.torch")
    original = getattr(modeling_utils, "safe_save_file", None)
    if original is None or original is not getattr(safetensors_torch, "save_file", None):
        yield
        return
    with _WRITER_LOCK:
        modeling_utils.safe_save_file = functools.partial(
            write_safetensors, pad=False, shared=shared
        )
        try:
            yield
        finally:
            modeling_utils.safe_save_file = original


def _dtype_kwarg(transformers: Any) -> str:
    """``dtype`` since transformers 4.56; ``torch_dtype`` before."""
    from packaging.version import Version

    return "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


def _save_class(cls: type, path: Path, name: str, ctx: SaveContext) -> dict[str, Any]:
    """How to find ``cls`` again: its name if transformers defines it, else pickled by ``ctx``."""
    if cls.__module__.partition(".")[0] == "transformers":
        return {"module": cls.__module__, "name": cls.__qualname__}
    ctx.dump(cls, path / f"{name}.pkl")
    return {"file": f"{name}.pkl"}


def _load_class(ref: Mapping[str, Any], path: Path, ctx: LoadContext, transformers: Any) -> Any:
    if "file" in ref:
        return ctx.load(path / ref["file"])
    # The top-level name survives transformers moving a class between its modules.
    cls = getattr(transformers, ref["name"], None)
    if cls is None:
        cls = importlib.import_module(ref["module"])
        for part in ref["name"].split("."):
            cls = getattr(cls, part)
    return cls


def _plain(value: object) -> bool:
    """Whether JSON keeps ``value`` exactly (an enum or a tuple would come back as another type)."""
    if value is None or type(value) in (str, int, float, bool):
        return True
    if type(value) is list:
        return all(_plain(v) for v in value)
    if type(value) is dict:
        return all(type(k) is str and _plain(v) for k, v in value.items())
    return False


def _settings(pipe: Any) -> dict[str, Any]:
    """What a pipeline was built with beyond its files: the processed call arguments."""
    settings = {
        "preprocess": getattr(pipe, "_preprocess_params", {}),
        "forward": getattr(pipe, "_forward_params", {}),
        "postprocess": getattr(pipe, "_postprocess_params", {}),
        "batch_size": getattr(pipe, "_batch_size", None),
        "num_workers": getattr(pipe, "_num_workers", None),
    }
    generate = getattr(pipe, "_generate_kwargs", None)
    if generate:
        settings["generate"] = generate
    return settings


def _save(obj: object, path: Path, ctx: SaveContext) -> dict[str, Any]:
    transformers = require("transformers", flavor=FLAVOR_NAME, extra=EXTRA)
    kind = _kind(obj)
    target: Any = obj
    with _quiet(transformers), _aligned_weights(ctx.shared_files):
        target.save_pretrained(str(path))
    info: dict[str, Any] = {"kind": kind, "class": _save_class(type(obj), path, "class", ctx)}
    if kind == "model":
        info["dtype"] = str(target.dtype).removeprefix("torch.")
        info["device"] = str(target.device)
        info["training"] = bool(target.training)
    elif kind == "pipeline":
        info["task"] = target.task
        info["model_class"] = _save_class(type(target.model), path, "model_class", ctx)
        info["components"] = [c for c in _COMPONENTS if getattr(target, c, None) is not None]
        info["dtype"] = str(target.model.dtype).removeprefix("torch.")
        info["device"] = str(target.device)
        info["binary_output"] = bool(getattr(target, "binary_output", False))
        settings = _settings(target)
        if _plain(settings):
            info["settings"] = settings
        else:  # enums (function_to_apply), generation configs...: kept as they are
            ctx.dump(settings, path / _SETTINGS_FILE)
            info["settings_file"] = _SETTINGS_FILE
    json.dumps(info)  # what goes to the manifest must be JSON: fail here, not when writing it
    return info


def _load(path: Path, info: Mapping[str, Any], ctx: LoadContext) -> object:
    transformers = require("transformers", flavor=FLAVOR_NAME, extra=EXTRA)
    kind = info.get("kind")
    cls = _load_class(info["class"], path, ctx, transformers)
    with _quiet(transformers):
        if kind == "pretrained":
            return cls.from_pretrained(str(path))
        torch = require("torch", flavor=FLAVOR_NAME, extra=EXTRA)
        dtype = {
            _dtype_kwarg(transformers): getattr(torch, info.get("load_dtype") or info["dtype"])
        }
        device = requested_device(torch, info.get("load_device")) or device_or_cpu(
            torch, info.get("device", "cpu")
        )
        if kind == "model":
            model = cls.from_pretrained(str(path), **dtype)
            if device != "cpu":
                model.to(device)
            return model.train(info.get("training", False))
        if kind == "pipeline":
            return _load_pipeline(path, info, ctx, transformers, cls, dtype, device)
    raise BundleFormatError(
        f"Unknown transformers object kind {kind!r} in the bundle; known kinds are 'pipeline', "
        "'model' and 'pretrained'. Upgrade cloudflow to load it."
    )


def _load_pipeline(
    path: Path,
    info: Mapping[str, Any],
    ctx: LoadContext,
    transformers: Any,
    pipeline_class: Any,
    dtype: dict[str, Any],
    device: str,
) -> Any:
    folder = str(path)
    model_class = _load_class(info["model_class"], path, ctx, transformers)
    # transformers' own model classes are found by pipeline() from config.json; a user subclass
    # is unknown to its Auto classes, so it is built here from its pickled class.
    model: Any = folder
    if "file" in info["model_class"]:
        model = model_class.from_pretrained(folder, **dtype)
    settings: Any = info.get("settings")
    if settings is None:
        settings = ctx.load(path / info["settings_file"])
    kwargs = {component: folder for component in info.get("components", ())}
    for key in ("batch_size", "num_workers"):
        if settings.get(key) is not None:
            kwargs[key] = settings[key]
    pipe = transformers.pipeline(
        info["task"],
        model=model,
        pipeline_class=pipeline_class,
        device=device,
        binary_output=info.get("binary_output", False),
        **dtype,
        **kwargs,
    )
    # The call arguments as the saved pipeline had them after its own checks, so the outputs match.
    pipe._preprocess_params = dict(settings["preprocess"])
    pipe._forward_params = dict(settings["forward"])
    pipe._postprocess_params = dict(settings["postprocess"])
    if "generate" in settings:
        pipe._generate_kwargs = dict(settings["generate"])
    return pipe


def _describe(obj: object) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "framework": "transformers",
        "class": class_name(obj),
    }
    kind = _kind(obj)
    target: Any = obj
    model = target.model if kind == "pipeline" else target if kind == "model" else None
    if kind == "pipeline":
        meta["task"] = target.task
        meta["model_class"] = class_name(model)
    if model is not None:
        meta.update(describe_module(model))
        config = getattr(model, "config", None)
        layers = getattr(config, "num_hidden_layers", None)
        if isinstance(layers, int):
            meta["layers"] = layers
        labels = getattr(config, "id2label", None)
        if isinstance(labels, dict) and labels:
            meta["labels"] = {str(k): v for k, v in labels.items()}
    return meta


FLAVOR = Flavor(
    name=FLAVOR_NAME,
    matches=_matches,
    save=_save,
    load=_load,
    packages=("transformers", "torch", "safetensors"),
    extra=EXTRA,
    describe=_describe,
)
