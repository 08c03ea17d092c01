"""The loaded bundle: its predict function, its models, and the checks of a predict call."""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import inspect
import logging
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cloudflow.exceptions import BundleArgumentError, ModelKeyError, PredictArgumentError
from cloudflow.integrity.manifest import Manifest

_logger = logging.getLogger("cloudflow")


def parameters_of(predict_fn: Callable[..., Any]) -> tuple[inspect.Signature, list[str], bool]:
    """``(signature, parameter names but *args/**kwargs, whether it takes **kwargs)``."""
    try:
        signature = inspect.signature(predict_fn)
    except (TypeError, ValueError) as e:
        raise BundleArgumentError(
            f"predict_fn {predict_fn!r} has no inspectable signature ({e}). Pass a Python function "
            "(def or lambda), a functools.partial of one, or an object with a Python __call__."
        ) from e
    names = [
        p.name
        for p in signature.parameters.values()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    has_var_kw = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    return signature, names, has_var_kw


#: Set while Bundle.predict calls the predict function: a lazy model it loads then has its weights
#: hashed while the call runs (Bundle.predict waits for them before answering). Elsewhere (a
#: model used outside predict, or from a thread the function starts) they are hashed first.
IN_PREDICT: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "cloudflow_in_predict", default=False
)


class Bundle:
    """A loaded bundle: the predict function and its live models.

    Attributes:
        models: Model name -> the loaded model object.
        predict_fn: The saved predict function, its models bound.
        metadata: The user metadata given at save time (``metadata=``, for the whole bundle).
        model_metadata: Model name -> the metadata given for that model at save time
            (``model_metadata=``: free JSON values, ``training_history``); ``{}`` for a model
            without any.
        manifest: Everything the bundle records (flavors, captured modules, requirements, files).
        path: The local folder the bundle was read from.

    Weights files parsed without running code (safetensors) may still be being hashed when
    :func:`~cloudflow.load_bundle` returns: the first :meth:`predict` runs meanwhile and its
    answer is returned only once they match (else :class:`~cloudflow.exceptions.IntegrityError`,
    naming the file, and no answer). ``models``, ``predict_fn`` and :meth:`model` wait for the
    check before handing anything out; :meth:`wait_verified` waits for it.
    """

    def __init__(
        self,
        predict_fn: Callable[..., Any],
        models: dict[str, object],
        manifest: Manifest,
        path: Path,
        *,
        verifying: concurrent.futures.Future[None] | None = None,
        late: list[concurrent.futures.Future[None]] | None = None,
    ) -> None:
        self._predict_fn = predict_fn
        self._models = models
        self._verifying = verifying
        self._late = late if late is not None else []
        self._lazy = not all(self.loaded.values())  # stand-ins that may load during a call
        self.manifest = manifest
        self.metadata = dict(manifest.metadata)
        self.model_metadata = {
            name: dict(manifest.model_metadata.get(name) or {}) for name in manifest.models
        }
        self.path = path
        _, names, has_var_kw = parameters_of(predict_fn)
        signature = inspect.signature(predict_fn)
        self.parameters = [n for n in names if n not in models]
        self._accepted = None if has_var_kw else frozenset(self.parameters)
        self._required = frozenset(
            p.name
            for p in signature.parameters.values()
            if p.default is p.empty
            and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p.name not in models
        )
        # def predict(model, /, x): positional-only parameters cannot be passed by name.
        self._positional = [
            p.name for p in signature.parameters.values() if p.kind is p.POSITIONAL_ONLY
        ]

    def release_when_unread(self, release: Callable[[], object]) -> None:
        """Call ``release`` (which deletes the bundle's folder) once nothing reads the folder:
        at once; once the weights hashed in the background are checked; or with the Bundle,
        when models load lazily from it or its code reads data files from it."""
        if self._lazy or self.manifest.data_files:
            weakref.finalize(self, release)
        elif self._verifying is not None:
            self._verifying.add_done_callback(lambda _: release())
        else:
            release()

    @property
    def models(self) -> dict[str, object]:
        self.wait_verified()
        return self._models

    @property
    def predict_fn(self) -> Callable[..., Any]:
        self.wait_verified()
        return self._predict_fn

    def wait_verified(self) -> None:
        """Wait until every file of the bundle is checked; raise if one does not match.

        Raises:
            IntegrityError: A file differs from what the bundle recorded (named in the message).
        """
        verifying = self._verifying
        if verifying is not None:
            verifying.result()
            self._verifying = None
        for future in list(self._late):  # lazy models loaded by a predict call
            future.result()  # a failed check stays listed: every later call raises too
            with contextlib.suppress(ValueError):
                self._late.remove(future)

    @property
    def loaded(self) -> dict[str, bool]:
        """Model name -> whether it is loaded (always True unless loaded with ``lazy=``)."""
        from cloudflow.runtime.lazy import is_loaded

        return {name: is_loaded(model) for name, model in self._models.items()}

    def model(self, name: str) -> object:
        """The model ``name`` itself, loading it now if it was loaded lazily."""
        from cloudflow.runtime.lazy import loaded

        if name not in self._models:
            raise ModelKeyError(
                f"This bundle has no model {name!r}; its models are {sorted(self._models)}."
            )
        model = loaded(self._models[name])
        self.wait_verified()  # handed out only once its files are proven
        return model

    def warm(self) -> None:
        """Load every model not loaded yet, one after the other (``lazy="background"``)."""
        for name in self._models:
            try:
                self.model(name)
            except Exception:  # raised again, named, where the model is used
                _logger.warning("Loading model %r in the background failed", name, exc_info=True)

    def predict(self, *inputs: Any, **params: Any) -> Any:
        """Call the saved predict function with the bundle's models and ``params``.

        The inputs go by name (``predict(input_type="iris", data=rows)``), or as one dict of
        them, as ``mlflow.pyfunc`` takes them (``predict({"input_type": "iris", ...})``).

        Raises:
            PredictArgumentError: A parameter the function does not take, one that names a model,
                or a required one missing, or inputs given by position. The message lists the
                function's parameters.
        """
        if inputs:
            params = self._by_name(inputs, params)
        keys = params.keys()
        if (
            (self._accepted is not None and not keys <= self._accepted)
            or not (self._required <= keys)
            or not keys.isdisjoint(self._models)
        ):
            self._raise_for(params)
        if self._verifying is None and not self._late and not self._lazy:
            return self._call(params)
        token = IN_PREDICT.set(True)
        try:
            answer = self._call(params)
        except BaseException:
            self.wait_verified()  # a damaged weights file may be why it failed: say that first
            raise
        finally:
            IN_PREDICT.reset(token)
        self.wait_verified()  # the answer is given only once the weights are proven
        return answer

    def _call(self, params: Mapping[str, Any]) -> Any:
        models, predict_fn = self._models, self._predict_fn
        if self._positional:
            named = {**models, **params}
            args = []
            for name in self._positional:
                if name not in named:
                    break
                args.append(named.pop(name))
            return predict_fn(*args, **named)
        if not models:
            return predict_fn(**params)
        return predict_fn(**models, **params)

    def _by_name(self, inputs: tuple[Any, ...], params: dict[str, Any]) -> dict[str, Any]:
        """The inputs of a call that gave one dict of them, as pyfunc does; else refuse."""
        if len(inputs) == 1 and not params and isinstance(inputs[0], Mapping):
            given = dict(inputs[0])
            if all(isinstance(k, str) for k in given):
                return given
        name = self.manifest.predict_fn.get("name", "predict_fn")
        shown = ", ".join(f"{p}=..." for p in self.parameters[: max(len(inputs), 1)])
        raise PredictArgumentError(
            f"predict takes the inputs of {name} by name, got {len(inputs)} by position. Call "
            f"bundle.predict({shown}), or give one dict of them: bundle.predict({{...}}). Its "
            f"inputs are {self.parameters}."
        )

    def _raise_for(self, params: Mapping[str, Any]) -> None:
        name = self.manifest.predict_fn.get("name", "predict_fn")
        models = [p for p in params if p in self._models]
        if models:
            raise PredictArgumentError(
                f"{models[0]!r} is a model of this bundle and is passed to {name} automatically; "
                f"do not pass it to predict. Its inputs are {self.parameters}."
            )
        unknown = sorted(set(params) - (self._accepted or set()))
        if unknown:
            raise PredictArgumentError(
                f"{name} has no parameter {unknown[0]!r}. Its inputs are {self.parameters} "
                f"(models, passed automatically: {sorted(self._models)}). Check the spelling."
            )
        missing = sorted(self._required - set(params))
        raise PredictArgumentError(
            f"{name} is missing the required parameter {missing[0]!r}. Its inputs are "
            f"{self.parameters}; required: {sorted(self._required)}."
        )

    def __repr__(self) -> str:
        name = self.manifest.predict_fn.get("name")
        return (
            f"<cloudflow.Bundle {name}({', '.join(self.parameters)}) "
            f"models={sorted(self._models)} path={str(self.path)!r}>"
        )
