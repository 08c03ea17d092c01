"""The MLflow pyfunc wrapper of a bundle, and the loader that :mod:`cloudflow._pyfunc` names."""

from __future__ import annotations

import inspect
import math
import os
import sys
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cloudflow.runtime.bundle import Bundle
from cloudflow.runtime.read import read_bundle

# Set by MLflow's scoring server (mlflow models serve) in its own process.
_SERVING_ENV = "_MLFLOW_IS_IN_SERVING_ENVIRONMENT"


def _in_serving() -> bool:
    return os.environ.get(_SERVING_ENV, "").strip().lower() in ("1", "true")


# The function of MLServer's MLflow runtime that answers V2 inference requests (REST ``infer``
# and gRPC ``ModelInfer``); its ``invocations`` handler, MLflow's REST protocol, is another one.
_MLSERVER_RUNTIME = "mlserver_mlflow.runtime"
_MLSERVER_V2_PREDICT = "predict"
_MLSERVER_FRAMES = 8  # MLServer's predict -> PyFuncModel.predict -> _predict -> here, and slack


def _called_by_mlserver_v2() -> bool:
    """Whether MLServer's MLflow runtime is calling, for a V2 inference request.

    MLServer sets no environment variable and passes nothing that tells; its V2 handler is
    found on the call stack, a few frames up.
    """
    if _MLSERVER_RUNTIME not in sys.modules:
        return False
    frame = sys._getframe(1)
    for _ in range(_MLSERVER_FRAMES):
        if frame is None:
            return False
        if (
            frame.f_code.co_name == _MLSERVER_V2_PREDICT
            and frame.f_globals.get("__name__") == _MLSERVER_RUNTIME
        ):
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


def _v2_table(results: Any) -> Any:
    """The results of a call per row as a pandas DataFrame, the answer MLServer's codecs encode.

    MLServer encodes a DataFrame (one V2 output per column), an array or a list of strings, and
    fails on anything else (a list of numbers, of dicts, of lists). One rule covers them all:
    dict results give a column per key, DataFrame results their rows one after the other, any
    other result the column ``output-0`` (MLServer's name for a nameless output). MLServer
    sends numbers and strings as they are and JSON-encodes any other cell.
    """
    import numpy as np
    import pandas as pd

    if not isinstance(results, list):  # one call (a dict of parameters): one row
        results = [results]
    if results and all(isinstance(r, pd.DataFrame) for r in results):
        table = pd.concat(results, ignore_index=True)
    elif results and all(isinstance(r, Mapping) for r in results):
        table = pd.DataFrame.from_records([_plain(dict(r)) for r in results])
    else:
        column = pd.Series([_plain(r) for r in results], dtype=None if results else object)
        table = pd.DataFrame({"output-0": column})
    # MLServer's codecs know numpy dtypes only: pandas' own (the str dtype of pandas 3, the
    # nullable ones) become object columns, which it sends as strings or JSON.
    return table.astype(
        {name: object for name, dtype in table.dtypes.items() if not isinstance(dtype, np.dtype)}
    )


def _plain(value: Any) -> Any:
    """The JSON-like value that MLflow's JSON parsing, pandas or Arrow wrapped in numpy.

    Serving parses each value of ``{"inputs": {...}}`` into a numpy array (0-d for a scalar,
    n-d for a list) when the model has no signature; DataFrame cells hold numpy scalars, and
    Spark's array columns arrive as numpy arrays (nested ones as object arrays of arrays, and
    map or struct cells as dicts of them). ``tolist`` gives the JSON value back.
    """
    np = sys.modules.get("numpy")
    if np is None:
        return value
    if isinstance(value, np.ndarray):
        if value.dtype != object:
            return value.tolist()
        return _plain(value.item()) if value.ndim == 0 else [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _same(value: Any) -> Any:
    return value


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _int_parameters(fn: Callable[..., Any]) -> frozenset[str]:
    """Parameters annotated ``int`` (or ``int | None``), or unannotated with an int default."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return frozenset()
    out = set()
    for p in parameters:
        annotation = p.annotation
        if isinstance(annotation, str):
            annotation = annotation.replace(" ", "")
            is_int = annotation in ("int", "int|None", "None|int", "Optional[int]")
        elif annotation is p.empty:
            is_int = type(p.default) is int
        else:
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            is_int = annotation is int or args == [int]
        if is_int:
            out.add(p.name)
    return frozenset(out)


class CloudflowPyfunc:
    """What ``mlflow.pyfunc.load_model`` wraps: inputs in MLflow's shapes -> ``Bundle.predict``.

    - a dict of parameters: one call, its result returned as it is; locally the values reach
      the function exactly as given (in serving, numpy wrappers are removed first);
    - a pandas DataFrame (``spark_udf``, serving's ``dataframe_records``): one call per row, a
      list of results. An empty cell (None, NaN) of a parameter with a default is left out, so
      the default applies, as when the caller omits it;
    - a list of dicts (serving's ``{"inputs": [...]}``): one call each, a list of results.
    MLflow's inference ``params`` are passed as parameters too.

    Called by MLServer's MLflow runtime for a V2 inference request (KServe, Seldon), the
    request's inputs are a DataFrame (one named input per parameter) and the results are
    returned as a DataFrame its codecs encode (see :func:`_v2_table`).
    """

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self._ints = _int_parameters(bundle._predict_fn)

    def get_raw_model(self) -> Bundle:
        return self.bundle

    def _row(self, row: Mapping[Any, Any]) -> dict[str, Any]:
        required = self.bundle._required
        out = {}
        for key, value in row.items():
            name, value = str(key), _plain(value)
            if _is_missing(value) and name not in required:
                continue
            # pandas turns an int column with an empty cell into floats: 3 arrives as 3.0.
            if name in self._ints and isinstance(value, float) and value.is_integer():
                value = int(value)
            out[name] = value
        return out

    def predict(self, model_input: Any, params: Mapping[str, Any] | None = None) -> Any:
        if _called_by_mlserver_v2():
            return self._predict_for_mlserver(model_input, params)
        if not _in_serving():
            return self._predict(model_input, params, _same)
        from cloudflow.exceptions import CloudflowError

        try:
            return self._predict(model_input, params, _plain)
        except CloudflowError as e:
            # MLflow's scoring server answers any other exception with a generic message and the
            # traceback (server paths included); an MlflowException's message is the answer.
            from mlflow.exceptions import MlflowException
            from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from None

    def _predict_for_mlserver(self, model_input: Any, params: Mapping[str, Any] | None) -> Any:
        from cloudflow.exceptions import CloudflowError

        try:
            return _v2_table(self._predict(model_input, params, _plain))
        except CloudflowError as e:
            # MLServer answers its own InferenceError with 400 and the message; anything
            # else is a 500, as if the server had failed.
            from mlserver.errors import InferenceError

            raise InferenceError(str(e)) from None

    def _predict(
        self,
        model_input: Any,
        params: Mapping[str, Any] | None,
        convert: Callable[[Any], Any],
    ) -> Any:
        extra = {k: convert(v) for k, v in (params or {}).items()}
        if isinstance(model_input, Mapping):
            return self.bundle.predict(
                **{str(k): convert(v) for k, v in model_input.items()}, **extra
            )
        pd = sys.modules.get("pandas")
        if pd is not None and isinstance(model_input, pd.DataFrame):
            rows = model_input.to_dict(orient="records")
            return [self.bundle.predict(**self._row(row), **extra) for row in rows]
        if isinstance(model_input, list) and all(isinstance(r, Mapping) for r in model_input):
            return [
                self.bundle.predict(**{str(k): convert(v) for k, v in row.items()}, **extra)
                for row in model_input
            ]
        from cloudflow.exceptions import PredictArgumentError

        raise PredictArgumentError(
            f"A cloudflow model takes a dict of parameters, a list of dicts or a pandas DataFrame "
            f"whose columns are parameters; got {type(model_input).__name__}. Its inputs are "
            f"{self.bundle.parameters}."
        )


def _load_pyfunc(path: str, model_config: Any = None) -> CloudflowPyfunc:
    """Called by ``mlflow.pyfunc.load_model`` with the bundle's ``cloudflow`` data folder.

    ``model_config`` (``mlflow.pyfunc.load_model(uri, model_config={...})``) may give
    ``device``, ``dtype`` and ``lazy``, as :func:`cloudflow.load_bundle` takes them.
    """
    from cloudflow import _checks

    config = dict(model_config or {})
    options = _checks.check_load_options(
        config.get("device"), config.get("dtype"), config.get("lazy") or False
    )
    return CloudflowPyfunc(
        read_bundle(Path(path), device=options.device, dtype=options.dtype, lazy=options.lazy)
    )
