"""The seed API users know, kept word for word: ``prepare_env`` and ``cloudflow_model``.

A thin layer over :mod:`cloudflow._api`: the tracking URI is the folder (or server) given, the
experiment is named or numbered by ``experiment_id``, and the bundle is the run's model ``model``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from cloudflow import _model_metadata, _names, _store
from cloudflow._api import load_bundle, log_bundle
from cloudflow._bundle import Bundle, check_arguments
from cloudflow._files import check_files
from cloudflow._runtime import check_package
from cloudflow._signing import resolve_key, resolve_trust
from cloudflow.exceptions import BundleArgumentError, CloudflowError, NotFoundError

MODEL_NAME = "model"
_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG", "NOTSET")


@_names.suggest_names("prepare_env", _names.PREPARE_ENV)
def prepare_env(tracking_uri: str | os.PathLike[str], experiment_id: str) -> str:
    """Point MLflow at a tracking store and make an experiment active, creating it if missing.

    Args:
        tracking_uri: A folder (the embedded default: an sqlite database and the artifacts inside
            that folder), or a tracking server's ``http(s)://`` URI, or a database URI.
        experiment_id: The experiment's name (created if it does not exist).

    Returns:
        The experiment's id, to pass to ``mlflow.start_run(experiment_id=...)``.
    """
    import mlflow

    if not isinstance(experiment_id, str) or not experiment_id:
        raise BundleArgumentError(
            f"experiment_id must be the experiment's name (a non-empty str), got {experiment_id!r}."
        )
    _check_tracking_uri(tracking_uri, "prepare_env('./cloudflow_store', 'my-experiment')")
    with _store.store_errors():
        uri = _store.resolve_tracking_uri(tracking_uri)
        mlflow.set_tracking_uri(uri)
        exp_id = _store.get_or_create_experiment(tracking_uri, experiment_id)
        mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


def _check_tracking_uri(tracking_uri: object, example: str) -> None:
    if not isinstance(tracking_uri, str | os.PathLike) or not str(os.fspath(tracking_uri)).strip():
        raise BundleArgumentError(
            f"tracking_uri must be a folder for an embedded store or a tracking server's URI (a "
            f"non-empty str or path), got {tracking_uri!r}. Pass e.g. {example}."
        )


class cloudflow_model:  # noqa: N801 - the seed API's name, kept as users know it
    """Save a predict function with its models in an MLflow run, or load one and predict.

    Args:
        log_level: Level of the ``cloudflow`` logger ("DEBUG", "INFO", "WARNING", "ERROR").
    """

    def __init__(self, log_level: str = "ERROR") -> None:
        level = str(log_level).upper()
        if level not in _LEVELS:
            raise BundleArgumentError(
                f"log_level {log_level!r} is not a logging level. Use one of {list(_LEVELS)}."
            )
        logger = logging.getLogger("cloudflow")
        logger.setLevel(level)
        if not logger.handlers:
            handler = logging.StreamHandler()
            handler.setFormatter(
                logging.Formatter("%(asctime)s cloudflow %(levelname)s %(message)s")
            )
            logger.addHandler(handler)
        self.log_level = level
        self.bundle: Bundle | None = None

    @_names.suggest_names("cloudflow_model().save", _names.SEED_SAVE)
    @_store.translates_store_errors
    def save(
        self,
        tracking_uri: str | os.PathLike[str],
        experiment_id: str,
        run_id: str,
        predict_function: Callable[..., Any],
        models: Mapping[str, object],
        *,
        verify: bool = True,
        include_modules: Iterable[str] | None = None,
        exclude_modules: Iterable[str] | None = None,
        python_versions: str | Iterable[str] | None = None,
        files: Mapping[str, str | os.PathLike[str]] | None = None,
        signing_key: Any = None,
        model_metadata: Mapping[str, Mapping[str, Any]] | None = None,
        share_files: bool = True,
        runtime_package: str | None = None,
    ) -> Any:
        """Save ``predict_function`` with ``models`` as the model ``model`` of run ``run_id``.

        Args:
            tracking_uri: The folder or server given to :func:`prepare_env`.
            experiment_id: The experiment's name or id.
            run_id: The run to log to (usually the active one).
            predict_function: The function to save; it receives each model by its key.
            models: Model name -> model; each name a parameter of ``predict_function``.
            verify: Load the bundle in a clean process, without your source, before it is
                logged, so that a module the capture missed fails the save (naming it) instead
                of a load months later. It costs one load: 0.2 s for plain objects, 1.5 s with
                torch or scikit-learn, 5 s with transformers (measured on 2 cores).
            include_modules: Modules (and their submodules) to capture by value and whole, as
                in :func:`cloudflow.log_bundle`.
            exclude_modules: Modules (and their submodules) to keep by reference, as in
                :func:`cloudflow.log_bundle`.
            python_versions: CPython versions the bundle loads on, as in
                :func:`cloudflow.log_bundle`.
            files: Data files the function reads when it runs (name -> path), copied into the
                bundle, as in :func:`cloudflow.log_bundle`.
            signing_key: Sign the bundle (an Ed25519 private key or an HMAC secret), as in
                :func:`cloudflow.log_bundle`.
            model_metadata: Metadata of each model (model name -> dict of JSON values; the
                reserved ``training_history`` maps metric names to one number per epoch), as
                in :func:`cloudflow.log_bundle`: in the manifest, the run's tags and metrics.
            share_files: On a tracking server, keep each large file once per experiment
                (uploaded only if new; downloaded once per machine), as in
                :func:`cloudflow.log_bundle`; ``False`` uploads the whole bundle.
            runtime_package: The distribution name cloudflow is published under on your own
                index, pinned instead of carrying cloudflow's wheel, as in
                :func:`cloudflow.log_bundle`.

        Returns:
            MLflow's ``ModelInfo`` of the logged model.
        """
        import mlflow

        _check_tracking_uri(tracking_uri, "the folder given to prepare_env")
        _model_metadata.check(model_metadata, check_arguments(predict_function, models))
        check_files(files)
        resolve_key(signing_key)
        check_package(runtime_package)
        # The run must already be in that store (prepare_env made it, a run was started in it):
        # look before creating a store folder or switching MLflow's process-wide tracking URI,
        # so that a mistyped tracking_uri leaves nothing behind and the active run intact.
        current = _store.current_tracking_uri()
        try:
            uri = _store.existing_store_uri(tracking_uri)
            _store.run_in_experiment(mlflow.MlflowClient(uri), experiment_id, run_id)
        except NotFoundError as e:
            if current is None or _store.same_store(current, tracking_uri):
                raise
            raise NotFoundError(
                f"{e} MLflow points at {current!r} (set by prepare_env or "
                f"mlflow.set_tracking_uri): is tracking_uri={os.fspath(tracking_uri)!r} a typo "
                "of it? Pass the tracking_uri given to prepare_env."
            ) from e
        mlflow.set_tracking_uri(uri)

        def log() -> Any:
            return log_bundle(
                predict_function,
                models,
                MODEL_NAME,
                verify=verify,
                include_modules=include_modules,
                exclude_modules=exclude_modules,
                python_versions=python_versions,
                files=files,
                signing_key=signing_key,
                model_metadata=model_metadata,
                share_files=share_files,
                runtime_package=runtime_package,
            )

        active = mlflow.active_run()
        if active is not None and active.info.run_id == run_id:
            return log()
        if active is not None:
            # Another run is active: log into run_id without disturbing it.
            with mlflow.start_run(run_id=run_id, nested=True):
                return log()
        with mlflow.start_run(run_id=run_id):
            return log()

    @_names.suggest_names("cloudflow_model().load_model", _names.LOAD_MODEL)
    @_store.translates_store_errors
    def load_model(
        self,
        tracking_uri: str | os.PathLike[str],
        experiment_id: str,
        run_id: str,
        *,
        signing_key: Any = None,
        trusted_keys: Any = None,
        device: Any = None,
        dtype: Any = None,
        lazy: bool | str = False,
    ) -> Bundle:
        """Load the model ``model`` of run ``run_id`` (experiment given by name or id).

        ``run_id`` may also be a model URI: ``models:/<name>/<version>`` or
        ``models:/<name>@<alias>`` for a version of a registered model, or
        ``runs:/<run_id>/<name>``. Registered models live outside experiments, so
        ``experiment_id`` is then not used. ``signing_key`` and ``trusted_keys`` refuse a
        bundle not signed by those keys, ``device`` and ``dtype`` place torch and
        transformers models, and ``lazy`` loads each model on its first use, as in
        :func:`cloudflow.load_bundle`.

        Returns:
            The loaded :class:`~cloudflow.Bundle`; ``predict`` calls it.
        """
        import mlflow

        _check_tracking_uri(
            tracking_uri,
            "load_model('./cloudflow_store', 'my-experiment', run_id), the folder "
            "given to prepare_env when the model was saved",
        )
        trust = resolve_trust(signing_key, trusted_keys)
        uri = _store.existing_store_uri(tracking_uri)  # a load creates no store
        mlflow.set_tracking_uri(uri)
        if str(run_id).startswith(("models:/", "runs:/")):
            self.bundle = load_bundle(
                str(run_id), signing_key=trust, device=device, dtype=dtype, lazy=lazy
            )
            return self.bundle
        fast = _store.fast_run_model(uri, str(run_id), MODEL_NAME, experiment=str(experiment_id))
        if fast is not None:  # the run, in that experiment, with a finished model: one lookup
            self.bundle = load_bundle(
                f"runs:/{run_id}/{MODEL_NAME}",
                signing_key=trust,
                device=device,
                dtype=dtype,
                lazy=lazy,
            )
            return self.bundle
        _store.run_in_experiment(mlflow.MlflowClient(uri), experiment_id, run_id)
        self.bundle = load_bundle(
            f"runs:/{run_id}/{MODEL_NAME}", signing_key=trust, device=device, dtype=dtype, lazy=lazy
        )
        return self.bundle

    def predict(self, *inputs: Any, **params: Any) -> Any:
        """Call the loaded predict function with its models and ``params``.

        The inputs go by name, or as one dict of them (as ``mlflow.pyfunc`` takes them).
        """
        if self.bundle is None:
            raise CloudflowError(
                "No model is loaded: call load_model(tracking_uri, experiment_id, run_id) first."
            )
        return self.bundle.predict(*inputs, **params)
