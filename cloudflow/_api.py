"""The public verbs: save_bundle, log_bundle, load_bundle, export_bundle (MLflow's names).

Each verb checks all it was given first (:mod:`cloudflow._checks`, one call, one order) and then
runs its steps on the checked arguments. ``log_bundle``'s steps, in order: the run, the staging
folder (with the store's shared large files), the bundle written into it, the logged model, the
MLmodel rewritten to name them, the seal (digests and signature), the publishing, and after it
the run's tags and metrics and the registration.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from cloudflow import _checks, _mlflow, _model_metadata, _names, _units
from cloudflow.capture.write import write_bundle
from cloudflow.integrity import digests as _digests
from cloudflow.integrity import manifest as _manifest
from cloudflow.integrity import staging as _staging
from cloudflow.integrity.manifest import Manifest
from cloudflow.runtime import inspect as _inspect
from cloudflow.runtime.bundle import Bundle
from cloudflow.runtime.read import read_bundle
from cloudflow.store import blobs as _blobs
from cloudflow.store import remote as _remote
from cloudflow.store import tracking as _store

_logger = logging.getLogger("cloudflow")


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
    # Every parameter by its name: _checks takes the same ones, and checks them in its order.
    checked, target = _checks.save_arguments(**locals())
    write_bundle(target, checked.predict_fn, checked.models, **checked.writer_options())


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
    # Every parameter by its name: _checks takes the same ones, and checks them in its order.
    return log_checked(_checks.log_arguments(**locals()))


def log_checked(checked: _checks.LogArguments) -> Any:
    """:func:`log_bundle` on arguments :mod:`cloudflow._checks` has checked: its steps.

    Returns:
        MLflow's ``ModelInfo`` of the logged model.
    """
    log = _start(checked)
    # One record of what this save wrote, digested as written, for both seals.
    with _blobs.saving(log.blobs), _digests.recording():
        try:
            manifest = _write(checked, log)
            _create_logged_model(checked, log)
            mlflow_model = _rewrite_mlmodel(log)
            manifest = _seal(checked, log, manifest)
            _publish(log, manifest)
            _finalize(log)
        except BaseException:
            _discard_logged_model(log)
            raise
        finally:
            log.private.close()
    model_info = mlflow_model.get_model_info(log.logged)
    _inspect.log_metadata_tags(log.client, log.run_id, manifest, checked.name)
    _model_metadata.log_history_metrics(
        log.client, log.run_id, manifest.model_metadata, checked.name
    )
    _register(checked, log, model_info)
    _report(checked, log, manifest)
    return model_info


@dataclasses.dataclass
class _Log:
    """One :func:`log_checked` call, as its steps fill it in.

    Attributes:
        private: The private staging folder; ``staged`` the bundle inside it.
        blobs: The local store's shared large files (None on a tracking server).
        area: The experiment's shared area on a tracking server, when files are shared there.
        logged: MLflow's logged model, once created (then finalized).
    """

    client: Any
    run_id: str
    experiment_id: str
    private: _staging.PrivateFolder
    staged: Path
    blobs: Path | None = None
    area: _remote.Area | None = None
    logged: Any = None

    @property
    def model_id(self) -> str:
        return str(self.logged.model_id)


def _start(checked: _checks.LogArguments) -> _Log:
    """The run (the active one, or a new one, as MLflow's ``log_model`` does) and the staging
    folder: in a local store inside its artifact folder, so that publishing is one rename."""
    import mlflow

    run = mlflow.active_run() or mlflow.start_run()
    client = mlflow.MlflowClient()
    experiment = client.get_experiment(run.info.experiment_id)
    location = str(experiment.artifact_location)
    artifact_root = _store.local_path(location)
    blobs = area = None
    if artifact_root is not None:
        # Large files are shared with the experiment's other bundles (see cloudflow.store.blobs).
        blobs = _blobs.blob_folder(artifact_root)
        private = _staging.inside(artifact_root / ".cloudflow-staging")
        _blobs.remove_orphans(blobs)
    else:
        if checked.share_files:
            area = _remote.Area.of_experiment(location, _store.current_tracking_uri())
        private = _staging.temporary()
    staged = private.path / checked.name
    return _Log(client, run.info.run_id, run.info.experiment_id, private, staged, blobs, area)


def _write(checked: _checks.LogArguments, log: _Log) -> Manifest:
    save = checked.save
    return write_bundle(
        log.staged, save.predict_fn, save.models, **save.writer_options(), staged=True
    )


def _create_logged_model(checked: _checks.LogArguments, log: _Log) -> None:
    log.logged = _mlflow.create_logged_model(
        name=checked.name,
        source_run_id=log.run_id,
        experiment_id=log.experiment_id,
        tags={k: str(v) for k, v in (checked.tags or {}).items()} or None,
        flavor="cloudflow",
    )


def _rewrite_mlmodel(log: _Log) -> Any:
    """MLmodel names the run and the logged model, as MLflow's own ``log_model`` writes it."""
    from mlflow.models import Model

    mlmodel = str(log.staged / "MLmodel")
    mlflow_model = Model.load(mlmodel)
    mlflow_model.run_id = log.run_id
    mlflow_model.artifact_path = log.logged.artifact_location
    mlflow_model.model_id = log.model_id
    # What Model.save writes, digested as written: the second seal reads none of it back.
    _digests.write_hashed(mlmodel, mlflow_model.to_yaml().encode("utf-8"))
    return mlflow_model


def _seal(checked: _checks.LogArguments, log: _Log, manifest: Manifest) -> Manifest:
    """Seal again: MLmodel now names the run and the model; cover its final bytes and where
    the bundle is published."""
    published = {
        "run_id": log.run_id,
        "name": checked.name,
        "model_id": log.model_id,
        "experiment_id": str(log.experiment_id),
    }
    manifest = dataclasses.replace(manifest, published=published)
    if log.area is not None:
        manifest = _remote.mark_shared(manifest, log.area)
    return _manifest.seal(log.staged, manifest, checked.save.signer)


def _publish(log: _Log, manifest: Manifest) -> None:
    """Into a local store by one rename; to a server, the shared files first, or all of it."""
    destination = _store.local_path(str(log.logged.artifact_location))
    if destination is not None:
        destination.parent.mkdir(parents=True, exist_ok=True)
        if destination.is_dir() and not any(destination.iterdir()):
            destination.rmdir()
        log.private.publish(log.staged, destination)  # READY below: every byte on the disk
    elif manifest.shared:
        _remote.publish(
            log.staged,
            manifest,
            lambda: log.client.log_model_artifacts(log.model_id, str(log.staged)),
        )
    else:
        log.client.log_model_artifacts(log.model_id, str(log.staged))


def _finalize(log: _Log) -> None:
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus

    log.client.log_outputs(run_id=log.run_id, models=[LoggedModelOutput(log.model_id, step=0)])
    log.logged = log.client.finalize_logged_model(log.model_id, LoggedModelStatus.READY)


def _discard_logged_model(log: _Log) -> None:
    """Delete the logged model of a failed log, if it was created."""
    if log.logged is None:
        return
    # One try, no retries: when the server died mid-upload, MLflow's retries would add
    # minutes to the error; the model stays PENDING, which loads refuse.
    try:
        with _no_http_retries():
            log.client.delete_logged_model(log.model_id)
    except Exception:
        _logger.debug("Could not delete the logged model %s", log.model_id, exc_info=True)


def _register(checked: _checks.LogArguments, log: _Log, model_info: Any) -> None:
    if checked.registered_model_name is None:
        return
    version = _mlflow.register_model(
        f"models:/{log.model_id}",
        checked.registered_model_name,
        await_registration_for=checked.await_registration_for,
    )
    model_info.registered_model_version = version.version


def _report(checked: _checks.LogArguments, log: _Log, manifest: Manifest) -> None:
    _logger.info(
        "Logged bundle %r to run %s (%d models, %s): %s",
        checked.name,
        log.run_id,
        len(manifest.models),
        _units.human_size(sum(int(f.get("size", 0)) for f in manifest.files.values())),
        log.logged.artifact_location,
    )


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
    checked = _checks.load_arguments(
        model_uri, signing_key, trusted_keys, device=device, dtype=dtype, lazy=lazy
    )
    return load_checked(checked, verify=verify, allow_python_mismatch=allow_python_mismatch)


def load_checked(checked: _checks.LoadArguments, **options: Any) -> Bundle:
    """:func:`load_bundle` on a checked ``model_uri``, trust and load options; ``options`` are
    ``verify`` and ``allow_python_mismatch``."""
    # A bundle downloaded from a server is deleted once nothing reads it (its weights stay
    # mapped): after the weights hashed in the background are checked, or with the Bundle when
    # its models load lazily or its code reads data files.
    identity: dict[str, str] = {}
    with _store.bundle_dir(checked.model_uri, keep=True, identity=identity) as (
        folder,
        temporary,
    ):
        bundle = read_bundle(
            folder,
            signing_key=checked.trust,
            expected_identity=identity,
            device=checked.options.device,
            dtype=checked.options.dtype,
            lazy=checked.options.lazy,
            **options,
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
    source, target = _checks.export_arguments(model_uri, destination)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        with _store.bundle_dir(source.model_uri) as (folder, _):
            data = _manifest.DATA_DIR
            # Under a configured key the signature is checked before anything is fetched.
            manifest = _manifest.read_manifest(folder / data, signing_key=source.trust)
            _remote.export(folder / data, manifest, partial)
        _manifest.verify_files(partial / data, manifest, use_cache=False, preload=False)
        with contextlib.suppress(FileNotFoundError):
            target.rmdir()
        os.rename(partial, target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    _logger.info("Exported %s to %s", os.fspath(source.model_uri), target)
    return target
