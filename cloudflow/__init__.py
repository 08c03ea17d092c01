"""cloudflow: one MLflow pyfunc model from a multi-module predict function and its models.

Save the function by value with every user module it reaches, each model in its native format,
and load it anywhere without the source::

    import cloudflow, mlflow
    with mlflow.start_run() as run:
        cloudflow.log_bundle(predict, {"sentiment_model": pipe, "tabular_model": clf})
    bundle = cloudflow.load_bundle(f"runs:/{run.info.run_id}/model")
    bundle.predict(input_type="sentiment", data="I love it")
"""

from cloudflow._api import export_bundle, load_bundle, log_bundle, save_bundle
from cloudflow._bundle import Bundle
from cloudflow._files import bundle_file
from cloudflow._legacy import cloudflow_model, prepare_env
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
