"""Keyword names from the other API, or from MLflow, named for what they are called here.

The seed API (``predict_function``, ``models``, ``experiment_id``) and the MLflow-style verbs
(``predict_fn``, ``name``) spell the same things differently, and MLflow's own ``log_model``
functions add a third set (``python_model``, ``artifact_path``). Python's own error for a name
from the wrong set is a bare ``TypeError: got an unexpected keyword argument``; this one says
which name is meant.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from cloudflow.exceptions import BundleArgumentError

_F = TypeVar("_F", bound=Callable[..., Any])

_RUN_HINT = (
    "it logs into the active run: call it inside `with mlflow.start_run(run_id=...)`, after "
    "mlflow.set_tracking_uri(...) or cloudflow.prepare_env(...)"
)

#: Per public call: a name it does not take -> what to write instead.
SEED_SAVE = {
    "predict_fn": "predict_function (predict_fn is save_bundle's and log_bundle's name)",
    "python_model": "predict_function (cloudflow saves a function, not an mlflow PythonModel)",
    "model": "models (a dict of name -> model)",
    "artifact_path": "nothing: the seed save always names the model 'model'; "
    "cloudflow.log_bundle(..., name=...) chooses the name",
    "name": "nothing: the seed save always names the model 'model'; "
    "cloudflow.log_bundle(..., name=...) chooses the name",
    "registered_model_name": "cloudflow.log_bundle(..., registered_model_name=...), "
    "which the seed save does not take",
    "experiment_name": "experiment_id (it takes the experiment's name or id)",
    "experiment": "experiment_id (it takes the experiment's name or id)",
}
MLFLOW_STYLE = {
    "predict_function": "predict_fn (predict_function is the seed API's name)",
    "python_model": "predict_fn (cloudflow saves a function, not an mlflow PythonModel)",
    "model": "models (a dict of name -> model)",
}
LOG_BUNDLE = {
    **MLFLOW_STYLE,
    "artifact_path": "name (MLflow 3's name for it; load it with runs:/<run_id>/<name>)",
    "run_id": f"nothing: {_RUN_HINT}",
    "experiment_id": f"nothing: {_RUN_HINT}",
    "tracking_uri": f"nothing: {_RUN_HINT}",
}
SAVE_BUNDLE = {
    **MLFLOW_STYLE,
    "artifact_path": "path (the folder to write; log_bundle logs into a run)",
    "name": "path (the folder to write; log_bundle takes name=)",
}
PREPARE_ENV = {
    "experiment_name": "experiment_id (prepare_env takes the experiment's name as experiment_id)",
    "experiment": "experiment_id (the experiment's name)",
    "uri": "tracking_uri",
    "path": "tracking_uri (the store folder)",
    "store": "tracking_uri (the store folder)",
}
LOAD_MODEL = {
    "experiment_name": "experiment_id (it takes the experiment's name or id)",
    "experiment": "experiment_id (the experiment's name or id)",
    "model_uri": "run_id (it also takes a runs:/ or models:/ URI)",
    "uri": "run_id (it also takes a runs:/ or models:/ URI)",
}
LOAD_BUNDLE = {
    "path": "model_uri (a folder or a runs:/ or models:/ URI)",
    "uri": "model_uri",
    "model_path": "model_uri",
    "run_id": "model_uri='runs:/<run_id>/model'",
    "tracking_uri": "nothing: call mlflow.set_tracking_uri(...) or cloudflow.prepare_env(...) "
    "first, or set MLFLOW_TRACKING_URI",
}


def suggest_names(call: str, aliases: Mapping[str, str]) -> Callable[[_F], _F]:
    """Refuse keyword arguments ``call`` does not take with the name that is meant.

    Args:
        call: How the user calls it (``"cloudflow_model().save"``), for the message.
        aliases: Names from the other API -> what to write instead; other unknown names get
            the closest parameter names.

    Raises:
        BundleArgumentError: A keyword argument the function does not take (also a TypeError,
            as Python's own error for it is).
    """

    def decorate(fn: _F) -> _F:
        signature = inspect.signature(fn)
        names = [
            p.name
            for p in signature.parameters.values()
            if p.name != "self" and p.kind is not p.VAR_KEYWORD
        ]
        if any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
            return fn

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for given in kwargs:
                if given not in signature.parameters:
                    raise BundleArgumentError(_message(call, given, aliases, names))
            return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


def _message(call: str, given: str, aliases: Mapping[str, str], names: list[str]) -> str:
    head = f"{call}() takes no argument {given!r}"
    if given in aliases:
        meant = aliases[given]
        tail = f"; did you mean {meant}?" if not meant.startswith("nothing") else f": {meant[9:]}."
    else:
        close = difflib.get_close_matches(given, names, n=1, cutoff=0.6)
        tail = f"; did you mean {close[0]!r}?" if close else "."
    return f"{head}{tail} Its parameters are {names}."
