"""The MLflow signature and input example of a bundle: its predict function's inputs.

A bundle's signature has one column per input of the predict function (its parameters that are
not models), typed from the parameter's annotation, else its default value, else the input
example, else ``Any``; a parameter without a default is required. MLflow's UI shows it, serving
documents it, and ``spark_udf`` names its columns after it.

MLflow's column-based schema enforcement does not fit a function of named parameters: it turns a
dict of parameters into a one-row DataFrame (so one call would come back as a list) and refuses
list values. The signature is therefore written the way MLflow writes one inferred from a model's
type hints (``is_signature_from_type_hint: true`` in MLmodel): MLflow then hands the inputs to
the bundle untouched, and the bundle checks them against its parameters itself
(:class:`~cloudflow.PredictArgumentError` names the missing or unknown one). Serving such a model
takes requests of the form ``{"inputs": {...}}`` (one call) or ``{"inputs": [{...}, ...]}``.

The outputs are one column typed from the function's return annotation, else ``Any``, as MLflow
writes them for a signature inferred from type hints. A signature always has outputs: MLServer's
MLflow runtime (what KServe and Seldon serve MLflow models with) reads them when it loads a model
and fails on a signature without.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import inspect
import logging
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from cloudflow import _mlflow
from cloudflow.exceptions import BundleArgumentError

_logger = logging.getLogger("cloudflow")

_NAMES = {"str": str, "int": int, "float": float, "bool": bool, "bytes": bytes}


def _scalar_type(tp: Any) -> Any:
    from mlflow.types.schema import DataType

    # bool before int: bool is a subclass of int.
    for python_type, data_type in (
        (bool, DataType.boolean),
        (int, DataType.long),
        (float, DataType.double),
        (str, DataType.string),
        (bytes, DataType.binary),
        (datetime.datetime, DataType.datetime),
    ):
        if isinstance(tp, type) and issubclass(tp, python_type):
            return data_type
    return None


def _annotation_type(annotation: Any) -> Any:
    """The MLflow type of a parameter annotation, or None when it says nothing usable."""
    from mlflow.types.schema import AnyType, Array, Map

    if isinstance(annotation, str):
        annotation = _NAMES.get(annotation.strip())
    if annotation is None or annotation is inspect.Parameter.empty or annotation is Any:
        return None
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union or origin is types.UnionType:
        rest = [a for a in args if a is not type(None)]
        return _annotation_type(rest[0]) if len(rest) == 1 else None
    if origin in (list, tuple, set, frozenset, Iterable) or annotation in (list, tuple):
        inner = args[0] if args and args[0] is not Ellipsis else None
        return Array(_annotation_type(inner) or AnyType())
    if origin in (dict, Mapping) or annotation is dict:
        if args and args[0] is not str:
            return None
        return Map(_annotation_type(args[1]) if len(args) == 2 else AnyType())
    return _scalar_type(annotation)


def _value_type(value: Any) -> Any:
    """The MLflow type of a default or example value, or None."""
    from mlflow.types.schema import Array

    if value is None:
        return None
    if isinstance(value, list) and value:
        inner = {_scalar_type(type(v)) for v in value}
        if len(inner) == 1 and None not in inner:
            return Array(inner.pop())
        return None
    return _scalar_type(type(value))


def _inspect(predict_fn: Callable[..., Any]) -> inspect.Signature:
    try:
        return inspect.signature(predict_fn, eval_str=True)
    except Exception:  # an annotation that names something only imported for type checking
        # Evaluate the others one by one: one such name must not leave every input "any".
        signature = inspect.signature(predict_fn)
        namespace = getattr(inspect.unwrap(predict_fn), "__globals__", {})
        parameters = []
        for p in signature.parameters.values():
            annotation = p.annotation
            if isinstance(annotation, str):
                # As eval_str=True evaluates them, in the function's own globals; one that fails
                # is left as the string (a plain type name is still read).
                with contextlib.suppress(Exception):
                    annotation = eval(annotation, dict(namespace))  # noqa: S307
            parameters.append(p.replace(annotation=annotation))
        return signature.replace(parameters=parameters)


def _parameters(predict_fn: Callable[..., Any]) -> list[inspect.Parameter]:
    return [
        p
        for p in _inspect(predict_fn).parameters.values()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def output_schema(predict_fn: Callable[..., Any]) -> Any:
    """One output column, typed from ``predict_fn``'s return annotation, else ``Any``."""
    from mlflow.types.schema import AnyType, ColSpec, Schema

    try:
        dtype = _annotation_type(_inspect(predict_fn).return_annotation)
    except (TypeError, ValueError):  # no inspectable signature: nothing known of the result
        dtype = None
    return Schema([ColSpec(dtype or AnyType())])


def infer_signature(
    predict_fn: Callable[..., Any],
    model_names: Iterable[str],
    input_example: Mapping[str, Any] | None = None,
) -> Any:
    """A ``ModelSignature`` with one column per input of ``predict_fn``, or None if it has none.

    Example:
        >>> def predict(clf, text: str, top_k=3): ...
        >>> infer_signature(predict, ["clf"]).inputs  # doctest: +SKIP
        ['text': string (required), 'top_k': long (optional)]
    """
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, Schema

    models = set(model_names)
    example = dict(input_example or {})
    columns: list[Any] = []
    for p in _parameters(predict_fn):
        if p.name in models:
            continue
        default = None if p.default is p.empty else p.default
        dtype = (
            _annotation_type(p.annotation)
            or _value_type(default)
            or _value_type(example.get(p.name))
            or AnyType()
        )
        columns.append(ColSpec(dtype, p.name, required=p.default is p.empty))
    if not columns:
        return None
    signature = ModelSignature(inputs=Schema(columns), outputs=output_schema(predict_fn))
    _mlflow.mark_signature_from_type_hints(signature)
    return signature


def check_input_example(
    predict_fn: Callable[..., Any], model_names: Iterable[str], input_example: Any
) -> None:
    """Refuse an input example the predict function could not be called with."""
    if input_example is None:
        return
    if not isinstance(input_example, Mapping):
        raise BundleArgumentError(
            f"input_example must be a dict of the predict function's inputs, such as "
            f"{{'text': 'I love it'}}; got {type(input_example).__name__}."
        )
    models = set(model_names)
    full = inspect.signature(predict_fn)
    has_var_kw = any(p.kind is p.VAR_KEYWORD for p in full.parameters.values())
    params = [p for p in _parameters(predict_fn) if p.name not in models]
    names = [p.name for p in params]
    unknown = [] if has_var_kw else [k for k in input_example if k not in names]
    if unknown:
        raise BundleArgumentError(
            f"input_example has the key {unknown[0]!r}, which is not an input of the predict "
            f"function; its inputs are {names}."
        )
    missing = [p.name for p in params if p.default is p.empty and p.name not in input_example]
    if missing:
        raise BundleArgumentError(
            f"input_example lacks the required input {missing[0]!r}; the predict function's "
            f"inputs are {names}."
        )


def resolve_signature(
    signature: Any,
    predict_fn: Callable[..., Any],
    model_names: Iterable[str],
    input_example: Any = None,
) -> Any:
    """The signature to write: inferred (``None``), none (``False``) or the caller's own.

    A caller's ``ModelSignature`` is copied and marked like an inferred one, so that MLflow
    passes inputs to the bundle untouched (see the module docstring); if it has no outputs,
    they are inferred.

    Raises:
        BundleArgumentError: ``signature`` is of another kind, or names inputs that are not
            parameters of the predict function, or the input example does not fit.
    """
    names = list(model_names)
    check_input_example(predict_fn, names, input_example)
    if signature is False:
        return None
    if signature is None:
        try:
            return infer_signature(predict_fn, names, input_example)
        except Exception as e:  # a signature is informative: never fail a save for it
            _logger.debug("Could not infer a signature for %r: %s", predict_fn, e)
            return None
    from mlflow.models import ModelSignature

    if not isinstance(signature, ModelSignature):
        raise BundleArgumentError(
            f"signature must be an mlflow.models.ModelSignature, None (inferred from the predict "
            f"function's parameters) or False (none); got {type(signature).__name__}."
        )
    inputs = signature.inputs
    if inputs is not None and inputs.has_input_names():
        full = inspect.signature(predict_fn)
        if not any(p.kind is p.VAR_KEYWORD for p in full.parameters.values()):
            accepted = [p.name for p in _parameters(predict_fn) if p.name not in names]
            unknown = [n for n in inputs.input_names() if n not in accepted]
            if unknown:
                raise BundleArgumentError(
                    f"The signature names the input {unknown[0]!r}, which is not an input of the "
                    f"predict function; its inputs are {accepted}."
                )
    signature = copy.deepcopy(signature)
    _mlflow.mark_signature_from_type_hints(signature)
    if signature.outputs is None:
        signature.outputs = output_schema(predict_fn)
    return signature
