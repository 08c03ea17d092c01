"""The seed API users know, kept word for word: ``prepare_env`` and ``cloudflow_model``.

A thin layer over :mod:`cloudflow._api`: the tracking URI is the folder (or server) given, the
experiment is named or numbered by ``experiment_id``, and the bundle is the run's model ``model``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from cloudflow import _checks, _names
from cloudflow._api import load_checked, log_checked
from cloudflow.exceptions import CloudflowError, NotFoundError
from cloudflow.runtime.bundle import Bundle
from cloudflow.store import tracking as _store

MODEL_NAME = "model"


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

    experiment_id = _checks.env_arguments(tracking_uri, experiment_id)
    with _store.store_errors():
        uri = _store.resolve_tracking_uri(tracking_uri)
        mlflow.set_tracking_uri(uri)
        exp_id = _store.get_or_create_experiment(tracking_uri, experiment_id)
        mlflow.set_experiment(experiment_id=exp_id)
    return exp_id


class cloudflow_model:  # noqa: N801 - the seed API's name, kept as users know it
    """Save a predict function with its models in an MLflow run, or load one and predict.

    Args:
        log_level: Level of the ``cloudflow`` logger ("DEBUG", "INFO", "WARNING", "ERROR").
    """

    def __init__(self, log_level: str = "ERROR") -> None:
        level = _checks.check_log_level(log_level)
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

        checked = _checks.seed_save_arguments(
            tracking_uri,
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
        mlflow.set_tracking_uri(_store_of_run(tracking_uri, experiment_id, run_id))
        active = mlflow.active_run()
        if active is not None and active.info.run_id == run_id:
            return log_checked(checked)
        if active is not None:
            # Another run is active: log into run_id without disturbing it.
            with mlflow.start_run(run_id=run_id, nested=True):
                return log_checked(checked)
        with mlflow.start_run(run_id=run_id):
            return log_checked(checked)

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

        trust, options = _checks.seed_load_arguments(
            tracking_uri, signing_key, trusted_keys, device=device, dtype=dtype, lazy=lazy
        )
        uri = _store.existing_store_uri(tracking_uri)  # a load creates no store
        mlflow.set_tracking_uri(uri)
        if str(run_id).startswith(("models:/", "runs:/")):
            model_uri = str(run_id)
        else:
            model_uri = f"runs:/{run_id}/{MODEL_NAME}"
            # The run, in that experiment, with a finished model: one lookup; else look closer.
            found = _store.fast_run_model(
                uri, str(run_id), MODEL_NAME, experiment=str(experiment_id)
            )
            if found is None:
                _store.run_in_experiment(mlflow.MlflowClient(uri), experiment_id, run_id)
        self.bundle = load_checked(_checks.LoadArguments(model_uri, trust, options))
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


def _store_of_run(tracking_uri: str | os.PathLike[str], experiment_id: str, run_id: str) -> str:
    """The URI of the store that holds run ``run_id`` of the experiment; nothing is created.

    The run must already be in that store (prepare_env made it, a run was started in it): look
    before creating a store folder or switching MLflow's process-wide tracking URI, so that a
    mistyped tracking_uri leaves nothing behind and the active run intact.

    Raises:
        NotFoundError: No such run there; when MLflow points at another store, the message
            asks whether ``tracking_uri`` is a typo of it.
    """
    import mlflow

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
    return uri
