"""cloudflow: one MLflow pyfunc model from a multi-module predict function and its models.

Save the function by value with every user module it reaches, each model in its native format,
and load it anywhere without the source::

    import cloudflow, mlflow
    with mlflow.start_run() as run:
        cloudflow.log_bundle(predict, {"sentiment_model": pipe, "tabular_model": clf})
    bundle = cloudflow.load_bundle(f"runs:/{run.info.run_id}/model")
    bundle.predict(input_type="sentiment", data="I love it")
"""

from typing import TYPE_CHECKING, Any

from cloudflow._version import __version__
from cloudflow.exceptions import (
    BundleArgumentError,
    BundleFormatError,
    CacheError,
    CaptureError,
    CloudflowError,
    DataFileError,
    EnvironmentMismatchError,
    IntegrityError,
    MissingDependencyError,
    ModelKeyError,
    NotFoundError,
    PredictArgumentError,
    StoreError,
)
from cloudflow.flavors import Flavor, register_flavor
from cloudflow.runtime.bundle import Bundle
from cloudflow.runtime.files import bundle_file

if TYPE_CHECKING:
    from cloudflow._api import export_bundle, load_bundle, log_bundle, save_bundle
    from cloudflow._legacy import cloudflow_model, prepare_env

#: The verbs are imported on first use (PEP 562): a process that only serves bundles (MLflow
#: imports ``cloudflow._pyfunc``, which imports this package first) never imports the save side
#: that ``save_bundle`` and ``log_bundle`` bring.
_VERBS = {
    "export_bundle": "cloudflow._api",
    "load_bundle": "cloudflow._api",
    "log_bundle": "cloudflow._api",
    "save_bundle": "cloudflow._api",
    "cloudflow_model": "cloudflow._legacy",
    "prepare_env": "cloudflow._legacy",
}


def __getattr__(name: str) -> Any:
    module = _VERBS.get(name)
    if module is None:
        raise AttributeError(f"module 'cloudflow' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_VERBS))


__all__ = [
    "Bundle",
    "BundleArgumentError",
    "BundleFormatError",
    "CacheError",
    "CaptureError",
    "CloudflowError",
    "DataFileError",
    "EnvironmentMismatchError",
    "Flavor",
    "IntegrityError",
    "MissingDependencyError",
    "ModelKeyError",
    "NotFoundError",
    "PredictArgumentError",
    "StoreError",
    "__version__",
    "bundle_file",
    "cloudflow_model",
    "export_bundle",
    "load_bundle",
    "log_bundle",
    "prepare_env",
    "register_flavor",
    "save_bundle",
]
