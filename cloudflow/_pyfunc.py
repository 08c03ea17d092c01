"""The MLflow pyfunc entry point of every bundle.

Every saved MLmodel names this module as its ``loader_module``: it is part of the on-disk format.
Never rename it or ``_load_pyfunc``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cloudflow._bundle import Bundle, read_bundle


def _to_python(value: Any) -> Any:
    """Unwrap what MLflow's serving and pandas put around plain values (0-d arrays, scalars)."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is an MLflow dependency
        return value
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            return value.item()
        if value.ndim == 1 and value.size == 1 and value.dtype.kind in "OUSbifc":
            return value[0].item() if hasattr(value[0], "item") else value[0]
        return value
    if isinstance(value, np.generic):
        return value.item()
    return value


class CloudflowPyfunc:
    """What ``mlflow.pyfunc.load_model`` wraps: inputs in MLflow's shapes -> ``Bundle.predict``.

    - a dict of parameters: one call, its result returned as it is;
    - a pandas DataFrame (serving's ``dataframe_records``, ``spark_udf``): one call per row,
      a list of results;
    - a list of dicts: one call each, a list of results.
    MLflow's inference ``params`` are passed as parameters too.
    """

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle

    def get_raw_model(self) -> Bundle:
        return self.bundle

    def predict(self, model_input: Any, params: Mapping[str, Any] | None = None) -> Any:
        extra = {k: _to_python(v) for k, v in (params or {}).items()}
        if isinstance(model_input, Mapping):
            return self.bundle.predict(
                **{k: _to_python(v) for k, v in model_input.items()}, **extra
            )
        try:
            import pandas as pd
        except ImportError:  # pragma: no cover
            pd = None
        if pd is not None and isinstance(model_input, pd.DataFrame):
            rows = model_input.to_dict(orient="records")
            return [
                self.bundle.predict(**{str(k): _to_python(v) for k, v in row.items()}, **extra)
                for row in rows
            ]
        if isinstance(model_input, list) and all(isinstance(r, Mapping) for r in model_input):
            return [
                self.bundle.predict(**{k: _to_python(v) for k, v in row.items()}, **extra)
                for row in model_input
            ]
        from cloudflow.exceptions import PredictArgumentError

        raise PredictArgumentError(
            f"A cloudflow model takes a dict of parameters, a list of dicts or a pandas DataFrame "
            f"whose columns are parameters; got {type(model_input).__name__}. Its inputs are "
            f"{self.bundle.parameters}."
        )


def _load_pyfunc(path: str, model_config: Any = None) -> CloudflowPyfunc:
    """Called by ``mlflow.pyfunc.load_model`` with the bundle's ``cloudflow`` data folder."""
    return CloudflowPyfunc(read_bundle(Path(path)))
