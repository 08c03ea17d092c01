"""The predict functions of the benchmark: the "user code" a bundle carries.

This module sits next to ``bench.py`` and is not installed, so cloudflow captures it by value, as
it would a user's own module. The raw and MLflow strategies call the same functions directly on
the models they load, so every strategy runs the same code on its first predict.
"""

from __future__ import annotations

from typing import Any


def predict_text(text_model: Any, texts: list[str]) -> Any:
    """Model A: a ``text-classification`` pipeline."""
    return text_model(texts)


def predict_mlp(mlp: Any, x: Any) -> Any:
    """Model B: a torch module, without autograd."""
    import torch

    with torch.no_grad():
        return mlp(x)


def predict_forest(forest: Any, X: Any) -> Any:
    """Model C: a scikit-learn forest."""
    return forest.predict(X)


def predict_all(text_model: Any, mlp: Any, forest: Any, texts: list[str], x: Any, X: Any) -> Any:
    """The bundle of A, B and C."""
    return {
        "text": predict_text(text_model, texts),
        "mlp": predict_mlp(mlp, x),
        "forest": predict_forest(forest, X),
    }


def predict_noop(model: Any, x: Any) -> Any:
    """Does nothing: what is left of a call through ``Bundle.predict`` is its own overhead."""
    return x


ROUTES = {"sentiment": "text_model", "topic": "text_model_2", "mlp": "mlp", "forest": "forest"}


def predict_routed(
    text_model: Any,
    text_model_2: Any,
    mlp: Any,
    forest: Any,
    input_type: str,
    texts: Any = None,
    x: Any = None,
    X: Any = None,
) -> Any:
    """The four-model bundle, like the seed's: each request is answered by one model, chosen by
    ``input_type``. JSON in (lists as a server receives them, or tensors and arrays), JSON out."""
    if input_type == "sentiment":
        return predict_text(text_model, list(texts))
    if input_type == "topic":
        return predict_text(text_model_2, list(texts))
    if input_type == "mlp":
        import torch

        return predict_mlp(mlp, torch.as_tensor(x, dtype=torch.float32)).tolist()
    if input_type == "forest":
        import numpy as np

        return predict_forest(forest, np.asarray(X, dtype=np.float32)).tolist()
    raise ValueError(f"input_type {input_type!r} is not one of {sorted(ROUTES)}")
