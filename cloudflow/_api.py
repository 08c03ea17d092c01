"""The public verbs: save_bundle, log_bundle, load_bundle (MLflow's names and arguments)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from cloudflow import (
    _blobs,
    _digests,
    _files,
    _inspect,
    _model_metadata,
    _names,
    _remote,
    _runtime,
    _staging,
    _store,
)
from cloudflow._bundle import (
    Bundle,
    check_arguments,
    read_bundle,
    remove_stale_staging,
    write_bundle,
)
from cloudflow._manifest import seal
from cloudflow._signing import resolve_key, resolve_trust
from cloudflow.exceptions import BundleArgumentError, StoreError

_logger = logging.getLogger("cloudflow")


def _check_names(names: Iterable[str] | None, what: str) -> tuple[str, ...]:
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


def _check_requirements(value: Iterable[str] | None, what: str) -> list[str] | None:
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


#: Characters MLflow refuses in a logged model's name (checked by MLflow only after the bundle
#: is written), and the longest name that still fits a file name with cloudflow's staging.
_NAME_FORBIDDEN = ("/", ":", ".", "%", '"', "'", "\\", "\0")
NAME_MAX = 200


def _check_model_name(name: object) -> str:
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


def _check_registered_name(name: object) -> str | None:
    if name is None:
        return None
    if not isinstance(name, str) or not name.strip() or "/" in name or ":" in name:
        raise BundleArgumentError(
            f"registered_model_name must be a non-empty name without '/' or ':' (MLflow's rule "
            f"for registered models), such as 'iris-classifier'; got {name!r}. Nothing was "
            "logged."
        )
    return name


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


def _check_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any] | None:
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


@_names.suggest_names("save_bundle", _names.SAVE_BUNDLE)
def save_bundle(
    predict_fn: Callable[..., Any],
    models: Mapping[str, object] | None,
    path: str | os.PathLike[str],
    *,
    pip_requirements: Iterable[str] | None = None,
    extra_pip_requirements: Iterable[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    include_modules: Iterable[str] | None = None,
    exclude_modules: Iterable[str] | None = None,
    strip_docstrings: bool = False,
    signature: Any = None,
    input_example: Any = None,
    signing_key: Any = None,
    verify: bool = False,
    python_versions: str | Iterable[str] | None = None,
    files: Mapping[str, str | os.PathLike[str]] | None = None,
    model_metadata: Mapping[str, Mapping[str, Any]] | None = None,
    runtime_package: str | None = None,
) -> None:
    """Save a predict function and its models as an MLflow pyfunc model in a local folder.

    The function is saved by value with every user module it reaches; each model in its own
    native format (safetensors, ``save_pretrained``, skops), anything else with cloudpickle.

    Args:
        predict_fn: The function to save. It receives each model as the keyword argument named
            by its key in ``models``, and the caller's inputs.
        models: Model name -> model. Every name must be a parameter of ``predict_fn``.
        path: A folder that does not exist yet.
        pip_requirements: Replaces the inferred requirements (as in ``mlflow.pyfunc.save_model``).
        extra_pip_requirements: Added to the inferred requirements.
        metadata: Free JSON-able metadata, kept in MLmodel and the bundle's manifest.
        include_modules: Module names (and their submodules) to capture by value even if they
            look installed, whole: every global, and every submodule of a package, imported.
            For code that reaches modules or globals by names computed at run time.
        exclude_modules: Module names (and their submodules) never to capture by value; your
            own editable project (``pip install -e``) is captured unless excluded here.
        strip_docstrings: Remove docstrings from the captured code.
        signature: An MLflow ``ModelSignature`` to write in MLmodel.
        input_example: An input example to write with the model.
        signing_key: Sign the bundle: an Ed25519 private key (the ``os.PathLike`` path of a PEM
            file as ``cloudflow keygen`` writes, PEM text, or a ``cryptography`` key object),
            verified at load with only its public key; or an HMAC secret of at least 32 bytes
            (str or bytes). Default: ``CLOUDFLOW_SIGNING_KEY`` (a secret or PEM text) or
            ``CLOUDFLOW_SIGNING_KEY_FILE`` (a PEM file) if set. The signature covers every
            file, MLflow's included.
        verify: Before publishing, load the bundle in a clean process (without your source on
            the path) and run ``input_example`` there; a capture that missed a module fails the
            save, naming it, and nothing is written.
        python_versions: CPython minor versions the bundle must load on besides the saving one
            (``["3.12", "3.13"]``), or ``"all"``: every one found on this machine (PATH,
            pyenv, uv). Each compiles the code from your source at save time; the bundle still
            holds no source. Default: the saving version only.
        files: Data files the function reads when it runs: name -> path of a file or folder
            (relative to the working directory, or absolute), copied into the bundle. At load,
            ``open()`` of a saved path in your code, path values your code holds, and
            ``cloudflow.bundle_file(path)`` lead to the copies (see the README, "Data files").
            With ``verify=True``, a file the input example reads that is not bundled fails the
            save, naming it.
        model_metadata: Metadata of each model: model name -> dict of JSON values, such as
            ``{"classifier": {"dataset": "iris-v3", "training_history": {"loss": [0.9, 0.5]}}}``.
            ``training_history`` (metric name -> one number per epoch) is reserved. Kept in the
            manifest, shown by ``cloudflow inspect``, ``bundle.model_metadata[name]`` at load.
        runtime_package: The distribution name cloudflow is published under on your own index
            (``"cloudflow-ml"``): the requirements pin it at this cloudflow's version and the
            bundle carries no wheel. Default: ``CLOUDFLOW_RUNTIME_PACKAGE`` if set, else the
            bundle carries the wheel of the cloudflow that saves it (about 230 KB) and every
            environment MLflow builds from it installs that wheel (see the README, "Deploying").

    Raises:
        BundleArgumentError: ``predict_fn`` is not a function, ``models`` not a dict of str, or
            ``path`` exists, or a ``files`` entry is not an existing file or folder.
        ModelKeyError: A model name is not a parameter of ``predict_fn``.
        CaptureError: The function, a module it reaches, or a model cannot be serialized.

    Example:
        >>> cloudflow.save_bundle(predict, {"clf": clf}, "bundle")  # doctest: +SKIP
        >>> cloudflow.load_bundle("bundle").predict(x=[[1.0, 2.0]])  # doctest: +SKIP
    """
    checked = check_arguments(predict_fn, models)
    per_model = _model_metadata.check(model_metadata, checked)
    target = check_path(path)
    data_files = _files.check_files(files)
    key = resolve_key(signing_key)
    runtime = _runtime.check_package(runtime_package)
    write_bundle(
        target,
        predict_fn,
        checked,
        pip_requirements=_check_requirements(pip_requirements, "pip_requirements"),
        extra_pip_requirements=_check_requirements(
            extra_pip_requirements, "extra_pip_requirements"
        ),
        metadata=_check_metadata(metadata),
        include_modules=_check_names(include_modules, "include_modules"),
        exclude_modules=_check_names(exclude_modules, "exclude_modules"),
        strip_docstrings=strip_docstrings,
        signature=signature,
        input_example=input_example,
        signing_key=key,
        verify=verify,
        python_versions=python_versions,
        data_files=data_files,
        model_metadata=per_model,
        runtime_package=runtime,
    )


_STAGING_TRIES = 200


def _staging_in(parent: Path) -> _staging.PrivateFolder:
    """A private staging folder inside ``parent``, in a store other processes write to as well.

    Another save that just finished may remove ``parent`` when it is empty: between this save's
    ``mkdir`` and ``mkdtemp`` (FileNotFoundError), or inside ``mkdir`` itself, after it found the
    folder present and before it checked that it is a folder (pathlib then raises
    FileExistsError). Either way: create it again and retry; each try takes microseconds, and
    under load five in a row were seen to lose that race, so it tries many times. Other users of
    a team store can rename ``parent``'s entries: the folder is reached through its descriptor
    (see :mod:`cloudflow._staging`).
    """
    _blobs.refuse_link(parent, "staging folder")
    for attempt in range(_STAGING_TRIES):
        try:
            parent.mkdir(parents=True, exist_ok=True)
            if attempt == 0:
                remove_stale_staging(parent, "tmp*")
            return _staging.PrivateFolder(parent)
        except (FileNotFoundError, FileExistsError):
            continue
        except StoreError:
            raise
        except OSError as e:
            raise StoreError(
                f"Cannot write to the artifact folder {str(parent.parent)!r}: {e.strerror}."
            ) from e
    raise StoreError(f"Cannot create a staging folder in {str(parent)!r}; try the save again.")


@_names.suggest_names("log_bundle", _names.LOG_BUNDLE)
@_store.translates_store_errors
def log_bundle(
    predict_fn: Callable[..., Any],
    models: Mapping[str, object] | None,
    name: str = "model",
    *,
    registered_model_name: str | None = None,
    pip_requirements: Iterable[str] | None = None,
    extra_pip_requirements: Iterable[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    include_modules: Iterable[str] | None = None,
    exclude_modules: Iterable[str] | None = None,
    strip_docstrings: bool = False,
    signature: Any = None,
    input_example: Any = None,
    tags: Mapping[str, Any] | None = None,
    await_registration_for: int = 300,
    signing_key: Any = None,
    verify: bool = False,
    python_versions: str | Iterable[str] | None = None,
    files: Mapping[str, str | os.PathLike[str]] | None = None,
    model_metadata: Mapping[str, Mapping[str, Any]] | None = None,
    share_files: bool = True,
    runtime_package: str | None = None,
) -> Any:
    """Log a predict function and its models to the active MLflow run as one pyfunc model.

    Starts a run if none is active, as MLflow's ``log_model`` functions do. In a local store the
    bundle is written straight into its final artifact folder (one rename, no copy).

    Args:
        predict_fn: The function to save (see :func:`save_bundle`).
        models: Model name -> model.
        name: The model's name in the run: load it with ``runs:/<run_id>/<name>``.
        registered_model_name: Also register it in the model registry under this name.
        tags: Tags of the logged model.
        await_registration_for: Seconds to wait for the registered version to be ready.
        share_files: Logging to a tracking server, keep each large file (1 MB or more) once in
            the experiment's shared area of the artifact store, uploaded only if it is not there
            yet; loads download it once per machine (see the README's "Tracking servers").
            ``False`` uploads the whole bundle into the model's own folder. A local store
            always shares large files by hard link.
        pip_requirements: As in :func:`save_bundle`.
        extra_pip_requirements: As in :func:`save_bundle`.
        metadata: As in :func:`save_bundle`.
        include_modules: As in :func:`save_bundle`.
        exclude_modules: As in :func:`save_bundle`.
        strip_docstrings: As in :func:`save_bundle`.
        signature: As in :func:`save_bundle`.
        input_example: As in :func:`save_bundle`.
        signing_key: As in :func:`save_bundle`.
        verify: As in :func:`save_bundle`.
        python_versions: As in :func:`save_bundle`.
        files: As in :func:`save_bundle`.
        runtime_package: As in :func:`save_bundle`.
        model_metadata: As in :func:`save_bundle`; also set on the run as short tags, and each
            ``training_history`` logged as run metrics, one step per epoch
            (``cloudflow.<name>.<model>.<metric>``).

    Returns:
        MLflow's ``ModelInfo`` of the logged model (``model_uri``, ``run_id``, ...).

    Example:
        >>> with mlflow.start_run() as run:  # doctest: +SKIP
        ...     info = cloudflow.log_bundle(predict, {"clf": clf})
        >>> cloudflow.load_bundle(f"runs:/{run.info.run_id}/model")  # doctest: +SKIP
    """
    checked = check_arguments(predict_fn, models)
    data_files = _files.check_files(files)
    key = resolve_key(signing_key)
    name = _check_model_name(name)
    registered_model_name = _check_registered_name(registered_model_name)
    include = _check_names(include_modules, "include_modules")
    exclude = _check_names(exclude_modules, "exclude_modules")
    pip_requirements = _check_requirements(pip_requirements, "pip_requirements")
    extra_pip_requirements = _check_requirements(extra_pip_requirements, "extra_pip_requirements")
    metadata = _check_metadata(metadata)
    per_model = _model_metadata.check(model_metadata, checked)
    runtime = _runtime.check_package(runtime_package)
    if not isinstance(share_files, bool):
        raise BundleArgumentError(
            f"share_files must be True or False, got {share_files!r}. True (the default) keeps "
            "large files once per experiment on a tracking server; False uploads them whole."
        )

    import mlflow
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model
    from mlflow.tracking.fluent import _create_logged_model

    run = mlflow.active_run() or mlflow.start_run()
    run_id = run.info.run_id
    client = mlflow.MlflowClient()
    experiment = client.get_experiment(run.info.experiment_id)
    artifact_root = _store._local_path(str(experiment.artifact_location))
    blobs = None
    if artifact_root is not None:
        # Large files are shared with the experiment's other bundles (see cloudflow._blobs).
        blobs = _blobs.blob_folder(artifact_root)
        private = _staging_in(artifact_root / ".cloudflow-staging")
        _blobs.remove_orphans(blobs)
    else:
        private = _staging.PrivateFolder(Path(tempfile.gettempdir()), prefix="cloudflow-")
    area = None
    if artifact_root is None and share_files:
        area = _remote.Area.of_experiment(
            str(experiment.artifact_location), _store.current_tracking_uri()
        )
    staged = private.path / name
    model_id = None
    with _blobs.saving(blobs):
        try:
            manifest = write_bundle(
                staged,
                predict_fn,
                checked,
                pip_requirements=pip_requirements,
                extra_pip_requirements=extra_pip_requirements,
                metadata=metadata,
                include_modules=include,
                exclude_modules=exclude,
                strip_docstrings=strip_docstrings,
                signature=signature,
                input_example=input_example,
                signing_key=key,
                verify=verify,
                python_versions=python_versions,
                data_files=data_files,
                model_metadata=per_model,
                runtime_package=runtime,
                staged=True,
            )
            logged = _create_logged_model(
                name=name,
                source_run_id=run_id,
                experiment_id=run.info.experiment_id,
                tags={k: str(v) for k, v in (tags or {}).items()} or None,
                flavor="cloudflow",
            )
            model_id = logged.model_id
            mlflow_model = Model.load(str(staged / "MLmodel"))
            mlflow_model.run_id = run_id
            mlflow_model.artifact_path = logged.artifact_location
            mlflow_model.model_id = model_id
            mlflow_model.save(str(staged / "MLmodel"))
            # MLmodel now names the run and the model: cover its final bytes and where the
            # bundle is published, then publish.
            published = {
                "run_id": run_id,
                "name": name,
                "model_id": str(model_id),
                "experiment_id": str(run.info.experiment_id),
            }
            manifest = dataclasses.replace(manifest, published=published)
            if area is not None:
                manifest = _remote.mark_shared(manifest, area)
            manifest = seal(staged, manifest, key)
            destination = _store._local_path(str(logged.artifact_location))
            if destination is not None:
                destination.parent.mkdir(parents=True, exist_ok=True)
                if destination.is_dir() and not any(destination.iterdir()):
                    destination.rmdir()
                _digests.make_durable(staged)  # READY below: every byte on the disk first
                private.publish(staged, destination)
                _digests.sync_folder(destination.parent)
            elif manifest.shared:
                _remote.publish(
                    staged, manifest, lambda: client.log_model_artifacts(model_id, str(staged))
                )
            else:
                client.log_model_artifacts(model_id, str(staged))
            client.log_outputs(run_id=run_id, models=[LoggedModelOutput(model_id, step=0)])
            logged = client.finalize_logged_model(model_id, LoggedModelStatus.READY)
        except BaseException:
            if model_id is not None:
                # One try, no retries: when the server died mid-upload, MLflow's retries would
                # add minutes to the error; the model stays PENDING, which loads refuse.
                try:
                    with _no_http_retries():
                        client.delete_logged_model(model_id)
                except Exception:
                    _logger.debug("Could not delete the logged model %s", model_id, exc_info=True)
            raise
        finally:
            private.close()
            if artifact_root is not None:
                with contextlib.suppress(OSError):  # other saves may be staging there right now
                    private.name.parent.rmdir()

    model_info = mlflow_model.get_model_info(logged)
    _inspect.log_metadata_tags(client, run_id, manifest, name)
    _model_metadata.log_history_metrics(client, run_id, manifest.model_metadata, name)
    if registered_model_name is not None:
        from mlflow.tracking._model_registry.fluent import _register_model

        version = _register_model(
            f"models:/{model_id}",
            registered_model_name,
            await_registration_for=await_registration_for,
        )
        model_info.registered_model_version = version.version
    _logger.info(
        "Logged bundle %r to run %s (%d models, %s): %s",
        name,
        run_id,
        len(manifest.models),
        _inspect.human_size(sum(int(f.get("size", 0)) for f in manifest.files.values())),
        logged.artifact_location,
    )
    return model_info


@_names.suggest_names("load_bundle", _names.LOAD_BUNDLE)
@_store.translates_store_errors
def load_bundle(
    model_uri: str | os.PathLike[str],
    *,
    verify: bool = True,
    allow_python_mismatch: bool = False,
    signing_key: Any = None,
    trusted_keys: Any = None,
    device: Any = None,
    dtype: Any = None,
    lazy: bool | str = False,
) -> Bundle:
    """Load a bundle saved by :func:`save_bundle` or :func:`log_bundle`.

    Args:
        model_uri: A local folder, ``runs:/<run_id>/<name>``, ``models:/<name>/<version>``,
            ``models:/<name>@<alias>``, ``models:/<model_id>``, or any URI MLflow can download.
            Bundles in a local store are read where they are, without a copy.
        verify: Check every file against the manifest's digests before unpickling.
        allow_python_mismatch: Try to load a bundle saved under another Python minor version.
        signing_key: Refuse the bundle unless it is signed with this HMAC secret; default:
            ``CLOUDFLOW_SIGNING_KEY`` if set.
        trusted_keys: Refuse the bundle unless it is signed by the private key of one of these
            Ed25519 public keys (PEM text, the path of a ``.pub.pem`` file, or key objects);
            default: the files listed in ``CLOUDFLOW_TRUSTED_KEYS`` (separated by
            ``os.pathsep``) if set. With any key, every file is verified whatever ``verify``
            says, none from the digest cache.
        device: Where torch and transformers models go: ``"cpu"``, ``"cuda"``, ``"cuda:1"``,
            ``"mps"``, or a dict of model name -> device. Tensors are loaded there from the
            file, not loaded on the CPU and copied. Default: the saved device if this machine
            has it, else the CPU.
        dtype: The floating-point dtype of torch and transformers models (``"float16"``,
            ``"bfloat16"``, ``"float32"``, ``"float64"`` or a ``torch.dtype``), or a dict of
            model name -> dtype. Default: as saved.
        lazy: ``True``: return once the code is loaded; each model loads (its files checked
            first) on its first use by the predict function, once, thread-safe. ``"background"``:
            the same, and the models start loading at once in a background thread.
            ``bundle.loaded`` says which are loaded; see the README for what a lazy model
            does and does not do as the model.

    Returns:
        A :class:`Bundle`; call ``bundle.predict(**inputs)``.

    Raises:
        NotFoundError: The run, model or path does not exist.
        BundleFormatError: The folder is not a bundle, or of a newer format.
        IntegrityError: A file differs from the manifest, or the bundle is unsigned or wrongly
            signed while a key is configured.
        EnvironmentMismatchError: The bundle was saved under another Python minor version.
    """
    if not isinstance(model_uri, str | os.PathLike):
        raise BundleArgumentError(
            f"model_uri must be a str or path, got {type(model_uri).__name__}. Pass e.g. "
            "'runs:/<run_id>/model' or a local folder."
        )
    trust = resolve_trust(signing_key, trusted_keys)
    # A bundle downloaded from a server is deleted once nothing reads it (its weights stay
    # mapped): after the weights hashed in the background are checked, or with the Bundle when
    # its models load lazily or its code reads data files.
    identity: dict[str, str] = {}
    with _store.bundle_dir(model_uri, keep=True, identity=identity) as (
        folder,
        temporary,
    ):
        bundle = read_bundle(
            folder,
            verify=verify,
            allow_python_mismatch=allow_python_mismatch,
            signing_key=trust,
            expected_identity=identity,
            device=device,
            dtype=dtype,
            lazy=lazy,
        )
        if temporary:
            bundle.release_when_unread(functools.partial(_store.discard_download, folder))
        return bundle


@contextlib.contextmanager
def _no_http_retries() -> Any:
    names = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")
    saved = {n: os.environ.get(n) for n in names}
    os.environ.update({names[0]: "0", names[1]: "10"})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@_store.translates_store_errors
def export_bundle(model_uri: str | os.PathLike[str], destination: str | os.PathLike[str]) -> Path:
    """Write a self-contained copy of a bundle into the new folder ``destination``.

    Every file is in the copy, the large ones a tracking server keeps in its experiment's shared
    area included (taken from this machine's download cache, downloaded first if needed), so it
    loads with no server: ``load_bundle(destination)``. Each file is checked against the
    manifest before the folder gets its name; a signed bundle stays signed.

    Returns:
        The folder written.

    Raises:
        BundleArgumentError: ``destination`` exists and is not an empty folder.
        NotFoundError: The run, model or path does not exist.
        IntegrityError: A file does not match the manifest.
    """
    from cloudflow import _manifest

    target = check_path(destination, "destination")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise BundleArgumentError(
            f"destination {os.fspath(destination)!r} already exists and is not an empty folder. "
            "Give a new folder for the copy, or remove that one first."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        with _store.bundle_dir(model_uri) as (folder, _):
            data = _manifest.DATA_DIR
            # Under a configured key the signature is checked before anything is fetched.
            manifest = _manifest.read_manifest(folder / data, signing_key=resolve_trust(None, None))
            _remote.export(folder / data, manifest, partial)
        _manifest.verify_files(partial / data, manifest, use_cache=False, preload=False)
        with contextlib.suppress(FileNotFoundError):
            target.rmdir()
        os.rename(partial, target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    _logger.info("Exported %s to %s", os.fspath(model_uri), target)
    return target
