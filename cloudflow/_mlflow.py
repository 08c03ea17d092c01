"""Every private MLflow name cloudflow uses, in one place.

MLflow's public API does not cover everything a bundle needs: writing the environment files
exactly as ``mlflow.pyfunc.save_model`` does, creating a logged model before its files are
published, registering a ``models:/<model_id>`` URI, streaming a proxied artifact, telling
whether a tracking URI was set. Each of those reaches a name MLflow may rename in any release;
they are all here, each with what cloudflow needs it for, so an MLflow upgrade touches this file
alone (``tests/test_layout.py`` fails on a private MLflow name used anywhere else).

Nothing here imports MLflow at module level: ``import cloudflow`` stays free of it, and each
function imports what it reaches when called.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

# --- the tracking store and the registry ----------------------------------------------------


def tracking_uri_is_set() -> bool:
    """Whether this process set a tracking URI (``mlflow.set_tracking_uri``).

    ``mlflow.get_tracking_uri()`` answers MLflow's default when none was set, so it cannot
    tell a store the user chose from the default one that may not exist; loads of ``runs:/``
    and ``models:/`` URIs need that difference to say which store is missing.
    """
    from mlflow.tracking._tracking_service import utils

    return bool(utils.is_tracking_uri_set())


def create_logged_model(
    *,
    name: str,
    source_run_id: str,
    experiment_id: str,
    tags: dict[str, str] | None,
    flavor: str,
) -> Any:
    """A new logged model (its id and artifact location) before any of its files exist.

    ``log_bundle`` writes the bundle's ``MLmodel`` naming the model id and then publishes the
    files into the model's artifact location; the public ``mlflow.initialize_logged_model``
    does not take the flavor MLflow records.
    """
    from mlflow.tracking.fluent import _create_logged_model

    return _create_logged_model(
        name=name,
        source_run_id=source_run_id,
        experiment_id=experiment_id,
        tags=tags,
        flavor=flavor,
    )


def register_model(model_uri: str, name: str, *, await_registration_for: int) -> Any:
    """Register ``model_uri`` (a ``models:/<model_id>`` URI) as a new version of ``name``.

    What ``mlflow.register_model`` does, without the logging and the run it may start; it is
    what ``mlflow.<flavor>.log_model(registered_model_name=...)`` calls.
    """
    from mlflow.tracking._model_registry.fluent import _register_model

    return _register_model(model_uri, name, await_registration_for=await_registration_for)


def parse_model_uri(model_uri: str) -> Any:
    """A ``models:/`` URI's parts (``model_id``, ``name``, ``version``, ``stage``, ``alias``).

    MLflow's own parser, so a ``models:/`` URI means in cloudflow what it means in MLflow (a
    logged model's id and a registered name are told apart the same way).
    """
    from mlflow.store.artifact.utils.models import _parse_model_uri

    return _parse_model_uri(model_uri)


# --- artifact repositories ------------------------------------------------------------------


def http_artifact_credentials(repo: Any) -> Any | None:
    """The host credentials of an http artifact repository (proxied artifacts), else None.

    A remote area's file is streamed from such a repository, hashed chunk by chunk and cut off
    past the size its manifest states; the public download writes the whole file first.
    """
    if hasattr(repo, "_host_creds") and hasattr(repo, "_download_file"):
        return repo._host_creds
    return None


def download_artifact_file(repo: Any, remote_path: str, local_path: str) -> None:
    """Download one file of any artifact repository (S3, GCS, Azure...) to ``local_path``.

    The one-file download every repository implements, straight to the path given (the public
    ``download_artifacts`` takes a folder and picks the file's name and place in it).
    """
    repo._download_file(remote_path, local_path)


# --- the model's files: environment, example, signature --------------------------------------


class EnvironmentFiles(NamedTuple):
    """The names MLflow gives a model's environment files (``conda.yaml``, ...)."""

    conda: str
    constraints: str
    python_env: str
    requirements: str


def environment_files() -> EnvironmentFiles:
    """The environment files' names, as MLflow writes and its deployment tools read them."""
    from mlflow.utils import environment as env

    return EnvironmentFiles(
        conda=env._CONDA_ENV_FILE_NAME,
        constraints=env._CONSTRAINTS_FILE_NAME,
        python_env=env._PYTHON_ENV_FILE_NAME,
        requirements=env._REQUIREMENTS_FILE_NAME,
    )


def write_python_env(path: Path) -> None:
    """Write ``python_env.yaml`` for this interpreter, as ``mlflow.pyfunc.save_model`` does."""
    from mlflow.utils.environment import _PythonEnv

    _PythonEnv.current().to_yaml(str(path))


def process_pip_requirements(
    default: list[str], pip_requirements: Any = None, extra_pip_requirements: Any = None
) -> tuple[dict[str, Any], list[str], list[str]]:
    """``(conda_env, requirements, constraints)`` the way every MLflow flavor makes them.

    It also warns where the user's own requirements disagree with the installed versions.
    """
    from mlflow.utils.environment import _process_pip_requirements

    result = _process_pip_requirements(default, pip_requirements, extra_pip_requirements)
    return result[0], result[1], result[2]


#: The steps of :func:`process_pip_requirements` that run without its check of the user's
#: requirements against the environment (see ``cloudflow.capture.requirements.pip_environment``).
_REQUIREMENT_STEPS = (
    "_contains_mlflow_requirement",
    "_generate_mlflow_version_pinning",
    "_remove_incompatible_requirements",
    "_lock_requirements",
    "_mlflow_conda_env",
)


def has_requirement_steps() -> bool:
    """Whether this MLflow has every step :func:`pinned_environment` runs."""
    from mlflow.utils import environment as env

    return all(hasattr(env, step) for step in _REQUIREMENT_STEPS)


def pinned_environment(requirements: list[str]) -> tuple[dict[str, Any], list[str], list[str]]:
    """``(conda_env, requirements, constraints)`` for requirements that are this environment's
    own pins: :func:`process_pip_requirements`'s steps in its order, without its check of them
    against the installed versions (they cannot disagree; that check costs about 1 s).
    """
    from mlflow.utils import environment as env

    reqs = list(dict.fromkeys(requirements))
    if not env._contains_mlflow_requirement(reqs):
        reqs.insert(0, env._generate_mlflow_version_pinning())
    reqs = env._remove_incompatible_requirements(reqs)
    reqs = env._lock_requirements(reqs, []) or reqs
    conda_env = env._mlflow_conda_env(additional_pip_deps=reqs, install_mlflow=False)
    return conda_env, reqs, []


def save_example(model: Any, input_example: Any, path: str) -> None:
    """Write ``input_example`` into the model folder ``path`` and record it in ``model``.

    The same files and ``MLmodel`` keys as ``mlflow.pyfunc.save_model(input_example=...)``, so
    MLflow's serving and UI find the example where they look.
    """
    from mlflow.models.utils import _save_example

    _save_example(model, input_example, path)


def mark_signature_from_type_hints(signature: Any) -> None:
    """Record that ``signature`` was inferred from the predict function's type hints.

    MLflow's pyfunc then hands the input to the model without enforcing the schema on it (the
    params only), as it does for a ``PythonModel`` whose ``predict`` is annotated.
    """
    signature._is_signature_from_type_hint = True


def signature_from_type_hints(signature: Any) -> bool:
    """Whether ``signature`` is marked as inferred from type hints (see the function above)."""
    return bool(getattr(signature, "_is_signature_from_type_hint", False))
