"""Every argument of every entry point, checked once, in one order, before anything is written.

Each entry point hands what it was given to one function here (:func:`save_arguments`,
:func:`log_arguments`, :func:`seed_save_arguments`, :func:`load_arguments`,
:func:`export_arguments`, :func:`env_arguments`) and gets back a checked, normalised object that
the writing (or reading) code takes as it is: nothing is checked twice, and a bad argument fails
the call before a folder, a run or a logged model exists.

The order, the same for every entry point (the first bad argument raises):

1. what is saved: ``predict_fn`` and ``models``, then ``model_metadata`` (its keys name models),
   then ``input_example`` and ``signature``, against the function's inputs (the signature is
   resolved: inferred, none, or the caller's own marked and completed);
2. where it goes: ``path`` (:func:`~cloudflow.save_bundle`; a folder that does not exist yet),
   ``name`` and ``registered_model_name`` (:func:`~cloudflow.log_bundle`), ``tracking_uri`` (the
   seed API; ``prepare_env`` then ``experiment_id``); for a load ``model_uri``, for an export
   ``model_uri`` then ``destination``;
3. what is captured: ``include_modules``, ``exclude_modules``;
4. what the environment installs: ``pip_requirements``, ``extra_pip_requirements``,
   ``runtime_package``, then ``python_versions``, resolved to the interpreters found here;
5. what travels with it: ``metadata``, ``files``;
6. how the store keeps it: ``share_files``; how a load gives the models: ``lazy``, ``device``,
   ``dtype`` (their values; whether a name in a ``device``/``dtype`` dict is a torch or
   transformers model of the bundle only the reader can tell, from the manifest);
7. keys, last, because they read key files and the environment: the key a save signs with
   (``signing_key``, resolved by :func:`cloudflow.integrity.signing.resolve_key`), the keys a load
   trusts (``signing_key``, ``trusted_keys``, resolved by
   :func:`cloudflow.integrity.signing.resolve_trust`).

A save that another save races to the same ``path`` after these checks still fails when it
publishes, and keeps nothing.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

from cloudflow._model_metadata import HISTORY
from cloudflow.exceptions import BundleArgumentError, ModelKeyError
from cloudflow.integrity import signing as _signing
from cloudflow.runtime.files import path_text as _fspath

_Where = TypeVar("_Where")

#: The characters of a ``files=`` entry's name.
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


# --- 1. what is saved ------------------------------------------------------------------------


def _describe_fn(predict_fn: Callable[..., Any]) -> str:
    name = getattr(predict_fn, "__qualname__", None) or type(predict_fn).__name__
    try:
        return f"{name}{inspect.signature(predict_fn)}"
    except (TypeError, ValueError):
        return str(name)


#: The longest model name: each model is saved in a folder of that name, and file systems
#: refuse names over 255 bytes (cloudflow's staging adds to some).
MODEL_KEY_MAX = 200


def check_arguments(predict_fn: object, models: object) -> dict[str, object]:
    """Validate what a save was given; return the models as a plain dict."""
    if not callable(predict_fn):
        raise BundleArgumentError(
            f"predict_fn must be a function, got {type(predict_fn).__name__} {predict_fn!r}. Pass "
            "the function itself (predict_fn=my_predict), not the result of calling it."
        )
    if inspect.iscoroutinefunction(predict_fn) or inspect.isasyncgenfunction(predict_fn):
        raise BundleArgumentError(
            f"predict_fn {getattr(predict_fn, '__qualname__', predict_fn)!r} is an async "
            "function: MLflow, serving and Spark call predict synchronously, and would get an "
            "unawaited coroutine. Save a plain function that runs it: def predict(**kw): return "
            "asyncio.run(apredict(**kw))."
        )
    if inspect.isbuiltin(predict_fn) or isinstance(predict_fn, type):
        kind = "a builtin" if inspect.isbuiltin(predict_fn) else "a class"
        raise BundleArgumentError(
            f"predict_fn {predict_fn!r} is {kind}, not a Python function. Wrap it in a function "
            "of your own that takes the models and the inputs as parameters."
        )
    if models is None:
        models = {}
    if not isinstance(models, Mapping):
        raise BundleArgumentError(
            f"models must be a dict of name -> model, got {type(models).__name__}. Pass e.g. "
            "models={'sentiment_model': sentiment_model}, the keys being parameter names of "
            "predict_fn."
        )
    bad_keys = [k for k in models if not isinstance(k, str)]
    if bad_keys:
        raise BundleArgumentError(
            f"models keys must be str parameter names of predict_fn; {bad_keys[0]!r} is a "
            f"{type(bad_keys[0]).__name__}. Use the parameter names as keys."
        )
    from cloudflow.runtime.bundle import parameters_of as _parameters

    _, names, has_var_kw = _parameters(predict_fn)
    for key in models:
        if not key.isidentifier():
            raise ModelKeyError(
                f"Model name {key!r} is not a valid Python identifier, so it cannot be a parameter "
                f"of {_describe_fn(predict_fn)}. Rename the key."
            )
        if len(key.encode("utf-8")) > MODEL_KEY_MAX:
            raise ModelKeyError(
                f"Model name {key[:40] + '...'!r} is {len(key)} characters long; each model is "
                f"saved in a folder named after it, and names may have at most {MODEL_KEY_MAX} "
                "bytes. Use a shorter key (and parameter name)."
            )
        if key not in names and not has_var_kw:
            raise ModelKeyError(
                f"Model {key!r} is not a parameter of {_describe_fn(predict_fn)}. Its parameters "
                f"are {names}. Rename the key or the parameter."
            )
    return dict(models)


METADATA_DEPTH = 32


def _depth(value: Any, level: int = 0) -> None:
    if level > METADATA_DEPTH:
        raise RecursionError
    if isinstance(value, dict):
        for item in value.values():
            _depth(item, level + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            _depth(item, level + 1)


def check_json_value(value: Any, where: str) -> None:
    """A metadata value is plain JSON, nested at most :data:`METADATA_DEPTH` levels.

    ``where`` names it in the message (``metadata['owner']``).

    Raises:
        BundleArgumentError: It is not, named.
    """
    try:
        json.dumps(value, allow_nan=False)
        _depth(value)
    except RecursionError:
        raise BundleArgumentError(
            f"{where} is nested deeper than {METADATA_DEPTH} levels. Keep metadata flat: a few "
            "levels of dicts and lists of plain values."
        ) from None
    except (TypeError, ValueError) as e:
        raise BundleArgumentError(
            f"{where} is not JSON ({e}). Use str, numbers, bools, None, and lists and dicts of "
            "them."
        ) from None


def _check_history(model: str, history: object) -> dict[str, list[float | int]]:
    where = f"model_metadata[{model!r}][{HISTORY!r}]"
    example = "{'loss': [0.9, 0.5, 0.3], 'val_accuracy': [0.6, 0.7, 0.8]}"
    if not isinstance(history, Mapping):
        raise BundleArgumentError(
            f"{where} must map metric names to lists of numbers, one per epoch; got "
            f"{type(history).__name__}. Pass e.g. {example}."
        )
    out: dict[str, list[float | int]] = {}
    for metric, values in history.items():
        if not isinstance(metric, str) or not metric:
            raise BundleArgumentError(
                f"{where} has the metric name {metric!r}; metric names are non-empty str, such "
                "as 'loss'."
            )
        if isinstance(values, str | bytes) or not isinstance(values, Sequence):
            raise BundleArgumentError(
                f"{where}[{metric!r}] must be a list of numbers, one per epoch; got "
                f"{type(values).__name__}. Pass e.g. {example}."
            )
        for epoch, value in enumerate(values):
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not number or not math.isfinite(value):
                raise BundleArgumentError(
                    f"{where}[{metric!r}][{epoch}] is {value!r}; a training history holds "
                    "finite numbers only (int or float; no bool, None, NaN or infinity). Leave "
                    "out an epoch that has no value, or record it under another key."
                )
        out[metric] = list(values)
    return out


def check_signature(
    predict_fn: Callable[..., Any], models: Mapping[str, object], signature: Any, input_example: Any
) -> Any:
    """``input_example``, then ``signature``, against the function's inputs; the signature to
    write (see :func:`cloudflow.capture.signature.resolve_signature`)."""
    from cloudflow.capture import signature as _signature

    return _signature.resolve_signature(signature, predict_fn, models, input_example)


def check_model_metadata(
    model_metadata: Mapping[str, Any] | None, models: Mapping[str, object]
) -> dict[str, dict[str, Any]]:
    """``model_metadata=`` as plain JSON, each key a model of ``models``; nothing is written.

    Raises:
        BundleArgumentError: Not a dict of dicts, a name that is not a model of ``models``
            (named, with the valid ones), a value that is not JSON, or a ``training_history``
            that is not metric name -> list of finite numbers.
    """
    if model_metadata is None:
        return {}
    valid = ", ".join(repr(n) for n in models) or "(none)"
    if not isinstance(model_metadata, Mapping):
        raise BundleArgumentError(
            f"model_metadata must be a dict of model name -> dict of JSON values, got "
            f"{type(model_metadata).__name__}. Pass e.g. model_metadata={{'classifier': "
            "{'dataset': 'iris-v3'}}."
        )
    out: dict[str, dict[str, Any]] = {}
    for model, entry in model_metadata.items():
        if model not in models:
            raise BundleArgumentError(
                f"model_metadata names the model {model!r}, which is not in models; the models "
                f"are {valid}. Use one of those names, or add the model."
            )
        if not isinstance(entry, Mapping):
            raise BundleArgumentError(
                f"model_metadata[{model!r}] must be a dict of JSON values, got "
                f"{type(entry).__name__}. Pass e.g. {{'dataset': 'iris-v3', 'epochs': 3}}."
            )
        checked: dict[str, Any] = {}
        for key, value in entry.items():
            if not isinstance(key, str):
                raise BundleArgumentError(
                    f"model_metadata[{model!r}] keys must be str; {key!r} is a "
                    f"{type(key).__name__}. Use str keys."
                )
            if key == HISTORY:
                checked[key] = _check_history(model, value)
                continue
            check_json_value(value, f"model_metadata[{model!r}][{key!r}]")
            checked[key] = value
        out[model] = dict(json.loads(json.dumps(checked)))  # tuples become lists
    return out


# --- 2. where it goes -------------------------------------------------------------------------


def check_path(path: object, what: str = "path") -> Path:
    """A bundle folder to create: a str or path, whose parents are folders, names not too long.

    Raises:
        BundleArgumentError: Anything else, named.
    """
    if not isinstance(path, str | os.PathLike) or not os.fspath(path):
        raise BundleArgumentError(
            f"{what} must be the path of a folder to create (a non-empty str or pathlib.Path), "
            f"got {path!r}. Pass e.g. {what}='bundles/sentiment'."
        )
    target = Path(os.fspath(path)).expanduser().resolve()
    too_long = [p for p in target.parts if len(os.fsencode(p)) > 255]
    if too_long:
        raise BundleArgumentError(
            f"{what} has a folder name of {len(os.fsencode(too_long[0]))} bytes "
            f"({too_long[0][:40]!r}...); file systems allow 255. Give a shorter name."
        )
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise BundleArgumentError(
                    f"{what} {os.fspath(path)!r} is inside {str(parent)!r}, which is a file, not a "
                    "folder. Give a path whose parents are folders."
                )
            break
    return target


#: Characters MLflow refuses in a logged model's name (checked by MLflow only after the bundle
#: is written), and the longest name that still fits a file name with cloudflow's staging.
_NAME_FORBIDDEN = ("/", ":", ".", "%", '"', "'", "\\", "\0")
NAME_MAX = 200


def check_free_path(path: object) -> Path:
    """A bundle folder to create (:func:`check_path`) that does not exist yet.

    Raises:
        BundleArgumentError: Not such a path, or it exists.
    """
    target = check_path(path)
    if target.exists():
        raise BundleArgumentError(
            f"Path {str(target)!r} already exists. Give a new folder, or delete the old bundle "
            "first."
        )
    return target


def check_model_name(name: object) -> str:
    if (
        not isinstance(name, str)
        or not name
        or any(c in name for c in _NAME_FORBIDDEN)
        or len(name.encode("utf-8")) > NAME_MAX
    ):
        shown = name if not isinstance(name, str) or len(name) <= 60 else name[:57] + "..."
        raise BundleArgumentError(
            f"name must be a model name of 1 to {NAME_MAX} characters without any of "
            f"/ : . % \" ' (MLflow's rule), such as 'model' or 'model_v2'; got {shown!r}."
        )
    return name


def check_registered_name(name: object) -> str | None:
    if name is None:
        return None
    if not isinstance(name, str) or not name.strip() or "/" in name or ":" in name:
        raise BundleArgumentError(
            f"registered_model_name must be a non-empty name without '/' or ':' (MLflow's rule "
            f"for registered models), such as 'iris-classifier'; got {name!r}. Nothing was "
            "logged."
        )
    return name


def check_tracking_uri(tracking_uri: object, example: str) -> None:
    if not isinstance(tracking_uri, str | os.PathLike) or not str(os.fspath(tracking_uri)).strip():
        raise BundleArgumentError(
            f"tracking_uri must be a folder for an embedded store or a tracking server's URI (a "
            f"non-empty str or path), got {tracking_uri!r}. Pass e.g. {example}."
        )


# --- 3.-6. what is captured, installed, carried, and how it is stored --------------------------


def check_module_names(names: Iterable[str] | None, what: str) -> tuple[str, ...]:
    if names is None:
        return ()
    if isinstance(names, str):
        names = [names]
    out = tuple(names)
    bad = [
        n for n in out if not isinstance(n, str) or not all(p.isidentifier() for p in n.split("."))
    ]
    if bad:
        raise BundleArgumentError(
            f"{what} must list module names such as 'utils' or 'pkg.sub'; {bad[0]!r} is not one."
        )
    return out


def check_requirements(value: Iterable[str] | None, what: str) -> list[str] | None:
    """A list of requirement strings; a str is the path of a requirements file, as in MLflow."""
    if value is None:
        return None
    if isinstance(value, str | os.PathLike):
        file = Path(os.fspath(value)).expanduser()
        if file.is_file():
            return [f"-r {file.resolve()}"]
        raise BundleArgumentError(
            f"{what} is {os.fspath(value)!r}, which is not a requirements file. Pass a list of "
            f"requirement strings, such as [{os.fspath(value)!r}], or the path of an existing "
            "requirements file."
        )
    try:
        items = list(value)
    except TypeError:
        raise BundleArgumentError(
            f"{what} must be a list of requirement strings such as ['torch==2.3'], got "
            f"{type(value).__name__}."
        ) from None
    bad = [r for r in items if not isinstance(r, str)]
    if bad:
        raise BundleArgumentError(
            f"{what} must hold requirement strings; {bad[0]!r} is a {type(bad[0]).__name__}. "
            "Write each as a string, such as 'torch==2.3'."
        )
    return items


def check_python_versions(python_versions: object) -> dict[str, str]:
    """The Python versions a save targets -> their interpreters found here (the saving one
    always included; see :func:`cloudflow.capture.portable.resolve_versions`)."""
    from cloudflow.capture import portable as _portable

    return _portable.resolve_versions(cast("str | Iterable[str] | None", python_versions))


def check_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Metadata as plain JSON (it goes to MLmodel's YAML and the manifest's JSON)."""
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise BundleArgumentError(
            f"metadata must be a dict of JSON values, got {type(metadata).__name__}. Pass e.g. "
            "metadata={'owner': 'team-a', 'version': 3}."
        )
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise BundleArgumentError(
                f"metadata keys must be str; {key!r} is a {type(key).__name__}. Use str keys."
            )
        check_json_value(value, f"metadata[{key!r}]")
    return dict(json.loads(json.dumps(dict(metadata))))  # tuples become lists, for YAML


def check_files(files: object) -> dict[str, Path]:
    """``files=`` as name -> absolute path of an existing file or folder.

    A list of paths is accepted too: each is named after its last part.

    Raises:
        BundleArgumentError: Not a dict of names to paths, a bad name, or a path that is missing.
    """
    if files is None:
        return {}
    if isinstance(files, str | os.PathLike):
        raise BundleArgumentError(
            f"files must be a dict of name -> path, got the single path {os.fspath(files)!r}. "
            f"Pass e.g. files={{'labels': {os.fspath(files)!r}}}."
        )
    if not isinstance(files, Mapping):
        try:
            items = list(files)  # type: ignore[call-overload]
        except TypeError:
            raise BundleArgumentError(
                f"files must be a dict of name -> path, got {type(files).__name__}. Pass e.g. "
                "files={'labels': 'data/labels.json'}."
            ) from None
        files = {Path(os.fspath(p)).name: p for p in items if isinstance(p, str | os.PathLike)}
        if len(files) != len(items):
            raise BundleArgumentError(
                "files must be a dict of name -> path (or a list of paths); it holds a value that "
                "is not a path. Pass e.g. files={'labels': 'data/labels.json'}."
            )
    out: dict[str, Path] = {}
    for name, value in files.items():
        if not isinstance(name, str) or not name or not set(name) <= _NAME_CHARS or name[0] == ".":
            raise BundleArgumentError(
                f"files: {name!r} is not a valid name. Use letters, digits, '_', '-' and '.' "
                "(not first), such as 'labels' or 'vocab.txt'."
            )
        text = _fspath(value)
        if text is None:
            raise BundleArgumentError(
                f"files[{name!r}] must be a path (str or pathlib.Path), got "
                f"{type(value).__name__}. Pass e.g. files={{{name!r}: 'data/{name}.json'}}."
            )
        path = Path(os.path.abspath(os.path.expanduser(text)))
        try:
            mode = path.stat().st_mode
        except OSError as e:
            raise BundleArgumentError(
                f"files[{name!r}] is {text!r}, which cannot be read here ({e.strerror}; resolved "
                f"from the working directory {os.getcwd()!r}). Give the path of an existing file "
                "or folder."
            ) from None
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise BundleArgumentError(
                f"files[{name!r}] is {text!r}, which is neither a file nor a folder. Give a "
                "regular file or a folder."
            )
        out[name] = path
    return out


def check_share_files(share_files: object) -> bool:
    if not isinstance(share_files, bool):
        raise BundleArgumentError(
            f"share_files must be True or False, got {share_files!r}. True (the default) keeps "
            "large files once per experiment on a tracking server; False uploads them whole."
        )
    return share_files


# --- loading, exporting, the seed API's set-up ---------------------------------------------------

#: The dtypes a load may give torch and transformers models.
DTYPES = ("float32", "float16", "bfloat16", "float64")
_DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


def _check_device(value: object) -> str:
    if not isinstance(value, str) or not _DEVICE.match(value):
        raise BundleArgumentError(
            f"device {value!r} is not one of 'cpu', 'cuda', 'cuda:N', 'mps'. Pass e.g. "
            "device='cuda:1', or a dict of model name -> device."
        )
    return value


def _check_dtype(value: object) -> str:
    name = str(value).removeprefix("torch.") if value is not None else ""
    if name not in DTYPES:
        raise BundleArgumentError(
            f"dtype {value!r} is not one of {list(DTYPES)} (a name or a torch.dtype). Pass e.g. "
            "dtype='bfloat16', or a dict of model name -> dtype."
        )
    return name


@dataclasses.dataclass(frozen=True)
class LoadOptions:
    """How a load gives the models, checked: ``device`` and ``dtype`` are one name for every
    torch and transformers model, a dict of model name -> name, or None (as saved)."""

    device: str | dict[str, str] | None = None
    dtype: str | dict[str, str] | None = None
    lazy: bool | str = False


def check_load_options(device: object, dtype: object, lazy: object) -> LoadOptions:
    """``lazy``, ``device`` and ``dtype`` of a load (``dtype`` as its name: ``"float16"``).

    Raises:
        BundleArgumentError: A value that is not one of the valid ones, named with them.
    """
    if lazy not in (False, True, "background"):
        raise BundleArgumentError(
            f"lazy must be False, True or 'background', got {lazy!r}. True loads each model on "
            "its first use; 'background' also starts loading them all at once."
        )
    checked: list[str | dict[str, str] | None] = []
    for value, check in ((device, _check_device), (dtype, _check_dtype)):
        if value is None:
            checked.append(None)
        elif isinstance(value, Mapping):
            checked.append({name: check(item) for name, item in value.items()})
        else:
            checked.append(check(value))
    return LoadOptions(device=checked[0], dtype=checked[1], lazy=cast("bool | str", lazy))


def check_model_uri(model_uri: object) -> str | os.PathLike[str]:
    if not isinstance(model_uri, str | os.PathLike):
        raise BundleArgumentError(
            f"model_uri must be a str or path, got {type(model_uri).__name__}. Pass e.g. "
            "'runs:/<run_id>/model' or a local folder."
        )
    return model_uri


def check_new_folder(destination: object) -> Path:
    """``destination`` of an export: a folder to create, or an empty one."""
    target = check_path(destination, "destination")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        given = os.fspath(cast("str | os.PathLike[str]", destination))
        raise BundleArgumentError(
            f"destination {given!r} already exists and is not an empty folder. "
            "Give a new folder for the copy, or remove that one first."
        )
    return target


def check_experiment_name(experiment_id: object) -> str:
    if not isinstance(experiment_id, str) or not experiment_id:
        raise BundleArgumentError(
            f"experiment_id must be the experiment's name (a non-empty str), got {experiment_id!r}."
        )
    return experiment_id


_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG", "NOTSET")


def check_log_level(log_level: object) -> str:
    """The seed API's ``log_level``, upper-cased."""
    level = str(log_level).upper()
    if level not in _LEVELS:
        raise BundleArgumentError(
            f"log_level {log_level!r} is not a logging level. Use one of {list(_LEVELS)}."
        )
    return level


# --- the checked arguments of each entry point ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SaveArguments:
    """What a save was given, checked and normalised; the writer takes it as it is.

    ``signer`` is the resolved key the bundle is signed with (None: unsigned); ``signature``
    the one to write (None: none); ``interpreters`` the Python versions the bundle loads on ->
    their interpreters here. ``strip_docstrings`` and ``verify`` are passed on as given.
    """

    predict_fn: Callable[..., Any]
    models: dict[str, object]
    model_metadata: dict[str, dict[str, Any]]
    include_modules: tuple[str, ...]
    exclude_modules: tuple[str, ...]
    pip_requirements: list[str] | None
    extra_pip_requirements: list[str] | None
    runtime_package: str | None
    metadata: dict[str, Any] | None
    data_files: dict[str, Path]
    signer: _signing.Signer | None
    strip_docstrings: bool
    signature: Any
    input_example: Any
    verify: bool
    interpreters: dict[str, str]

    def writer_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`cloudflow.capture.write.write_bundle`."""
        return {
            "pip_requirements": self.pip_requirements,
            "extra_pip_requirements": self.extra_pip_requirements,
            "metadata": self.metadata,
            "include_modules": self.include_modules,
            "exclude_modules": self.exclude_modules,
            "strip_docstrings": self.strip_docstrings,
            "signature": self.signature,
            "input_example": self.input_example,
            "signing_key": self.signer,
            "verify": self.verify,
            "interpreters": self.interpreters,
            "data_files": self.data_files,
            "model_metadata": self.model_metadata,
            "runtime_package": self.runtime_package,
        }


@dataclasses.dataclass(frozen=True)
class LogArguments:
    """What :func:`~cloudflow.log_bundle` (or the seed API's save) was given, checked."""

    save: SaveArguments
    name: str
    registered_model_name: str | None
    tags: Mapping[str, Any] | None
    await_registration_for: int
    share_files: bool


@dataclasses.dataclass(frozen=True)
class LoadArguments:
    """What a load was given, checked: the ``trust`` is the resolved keys (None: no check)."""

    model_uri: str | os.PathLike[str]
    trust: _signing.Trust | None
    options: LoadOptions = LoadOptions()


def _save_arguments(
    predict_fn: object,
    models: object,
    where: Callable[[], _Where],
    *,
    pip_requirements: Any = None,
    extra_pip_requirements: Any = None,
    metadata: Any = None,
    include_modules: Any = None,
    exclude_modules: Any = None,
    strip_docstrings: bool = False,
    signature: Any = None,
    input_example: Any = None,
    signing_key: Any = None,
    verify: bool = False,
    python_versions: Any = None,
    files: Any = None,
    model_metadata: Any = None,
    runtime_package: Any = None,
    share_files: Any = True,
) -> tuple[SaveArguments, _Where]:
    """The order of the module docstring; ``where`` is step 2, the entry point's own."""
    from cloudflow.capture import wheel as _runtime  # the save side, imported by a save only

    checked_models = check_arguments(predict_fn, models)
    per_model = check_model_metadata(model_metadata, checked_models)
    fn = cast("Callable[..., Any]", predict_fn)  # callable: checked above
    resolved_signature = check_signature(fn, checked_models, signature, input_example)
    destination = where()
    include = check_module_names(include_modules, "include_modules")
    exclude = check_module_names(exclude_modules, "exclude_modules")
    pip = check_requirements(pip_requirements, "pip_requirements")
    extra = check_requirements(extra_pip_requirements, "extra_pip_requirements")
    runtime = _runtime.check_package(runtime_package)
    interpreters = check_python_versions(python_versions)
    plain_metadata = check_metadata(metadata)
    data_files = check_files(files)
    check_share_files(share_files)
    signer = _signing.resolve_key(signing_key)
    checked = SaveArguments(
        predict_fn=fn,
        models=checked_models,
        model_metadata=per_model,
        include_modules=include,
        exclude_modules=exclude,
        pip_requirements=pip,
        extra_pip_requirements=extra,
        runtime_package=runtime,
        metadata=plain_metadata,
        data_files=data_files,
        signer=signer,
        strip_docstrings=strip_docstrings,
        signature=resolved_signature,
        input_example=input_example,
        verify=verify,
        interpreters=interpreters,
    )
    return checked, destination


def save_arguments(
    predict_fn: object, models: object, path: object, **options: Any
) -> tuple[SaveArguments, Path]:
    """:func:`~cloudflow.save_bundle`'s arguments, and the folder to create.

    ``options`` are ``save_bundle``'s keyword arguments.
    """
    return _save_arguments(predict_fn, models, lambda: check_free_path(path), **options)


def log_arguments(
    predict_fn: object,
    models: object,
    name: object,
    *,
    registered_model_name: object = None,
    tags: Mapping[str, Any] | None = None,
    await_registration_for: int = 300,
    share_files: object = True,
    **options: Any,
) -> LogArguments:
    """:func:`~cloudflow.log_bundle`'s arguments (``options``: those it shares with a save)."""
    checked, (model_name, registered) = _save_arguments(
        predict_fn,
        models,
        lambda: (check_model_name(name), check_registered_name(registered_model_name)),
        share_files=share_files,
        **options,
    )
    return LogArguments(
        save=checked,
        name=model_name,
        registered_model_name=registered,
        tags=tags,
        await_registration_for=await_registration_for,
        share_files=bool(share_files),
    )


def seed_save_arguments(
    tracking_uri: object,
    predict_function: object,
    models: object,
    name: str,
    *,
    share_files: object = True,
    **options: Any,
) -> LogArguments:
    """The seed API's ``save``: ``tracking_uri`` is its step 2; the model is ``name``."""
    checked, _ = _save_arguments(
        predict_function,
        models,
        lambda: check_tracking_uri(tracking_uri, "the folder given to prepare_env"),
        share_files=share_files,
        **options,
    )
    return LogArguments(
        save=checked,
        name=name,
        registered_model_name=None,
        tags=None,
        await_registration_for=300,
        share_files=bool(share_files),
    )


def load_arguments(
    model_uri: object,
    signing_key: Any,
    trusted_keys: Any,
    *,
    device: object = None,
    dtype: object = None,
    lazy: object = False,
) -> LoadArguments:
    """:func:`~cloudflow.load_bundle`'s ``model_uri``, ``lazy``, ``device``, ``dtype`` and keys.

    Whether a model a ``device``/``dtype`` dict names is one of the bundle's torch or
    transformers models the reader checks, against the manifest.
    """
    uri = check_model_uri(model_uri)
    options = check_load_options(device, dtype, lazy)
    return LoadArguments(uri, _signing.resolve_trust(signing_key, trusted_keys), options)


def seed_load_arguments(
    tracking_uri: object,
    signing_key: Any,
    trusted_keys: Any,
    *,
    device: object = None,
    dtype: object = None,
    lazy: object = False,
) -> tuple[_signing.Trust | None, LoadOptions]:
    """The seed API's ``load_model``: ``tracking_uri``, the load options, then the keys."""
    check_tracking_uri(
        tracking_uri,
        "load_model('./cloudflow_store', 'my-experiment', run_id), the folder "
        "given to prepare_env when the model was saved",
    )
    options = check_load_options(device, dtype, lazy)
    return _signing.resolve_trust(signing_key, trusted_keys), options


def export_arguments(model_uri: object, destination: object) -> tuple[LoadArguments, Path]:
    """:func:`~cloudflow.export_bundle`'s: the bundle, the keys configured by the environment
    (a signed bundle's signature is checked before anything is fetched) and the new folder."""
    uri = check_model_uri(model_uri)
    target = check_new_folder(destination)
    return LoadArguments(uri, _signing.resolve_trust(None, None)), target


def env_arguments(tracking_uri: object, experiment_id: object) -> str:
    """The seed API's ``prepare_env``: ``tracking_uri``, then ``experiment_id``."""
    check_tracking_uri(tracking_uri, "prepare_env('./cloudflow_store', 'my-experiment')")
    return check_experiment_name(experiment_id)
