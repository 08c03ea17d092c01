"""LightGBM: boosters and their scikit-learn wrappers, trees in LightGBM's own text format.

The trees, the parameters, feature names and pandas categories go to ``model.txt``, written by
``Booster.save_model``: a file any LightGBM reads (``lightgbm.Booster(model_file=...)``), no
pickle. A scikit-learn wrapper (``LGBMClassifier``, ``LGBMRegressor``, ``LGBMRanker``, a user
subclass) is the booster plus what the wrapper keeps beside it: hyperparameters, ``classes_``
and the label encoder, ``n_features_in_``, best iteration and scores, a custom objective. That
part is pickled through the bundle's context as ``wrapper.pkl`` with the booster replaced by a
reference to the file, so the pickle holds no tree. (MLflow's lightgbm flavor writes the
wrapper whole, trees included, with pickle, cloudpickle or skops; only a bare Booster gets its
native file there.)
"""

from __future__ import annotations

from typing import Any

from cloudflow.flavors._boosters import BoosterVerbs, describe

FLAVOR_NAME = "lightgbm"
_VERBS = BoosterVerbs(library="lightgbm", title="LightGBM", wrapper_base="LGBMModel")


def _booster_facts(booster: Any) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "trees": int(booster.num_trees()),
        "iterations": int(booster.current_iteration()),
        "n_features": int(booster.num_feature()),
    }
    objective = booster.params.get("objective")
    if isinstance(objective, str):
        facts["objective"] = objective
    return facts


def _wrapper_facts(wrapper: Any) -> dict[str, Any]:
    classes = getattr(wrapper, "_n_classes", None)
    return {"n_classes": classes} if isinstance(classes, int) and classes > 0 else {}


def _describe(obj: object) -> dict[str, Any]:
    return describe(FLAVOR_NAME, obj, _booster_facts, _wrapper_facts)


FLAVOR = _VERBS.flavor(describe=_describe)
