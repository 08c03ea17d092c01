"""The MLflow pyfunc entry point of every bundle: FROZEN, part of the on-disk format.

Every MLmodel cloudflow ever wrote names ``loader_module: cloudflow._pyfunc``, and
``mlflow.pyfunc.load_model`` imports that module and calls its ``_load_pyfunc(data_path,
model_config)``. Bundles saved by any version must keep loading, so this module and that name
stay here for good, re-exported from :mod:`cloudflow.runtime.pyfunc`, where the code lives.
Import nothing else here: serving imports this module first, and what it imports is what a
scoring process carries.
"""

from cloudflow.runtime.pyfunc import CloudflowPyfunc, _load_pyfunc

__all__ = ["CloudflowPyfunc", "_load_pyfunc"]
