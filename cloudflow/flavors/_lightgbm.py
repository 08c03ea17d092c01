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

from cloudflow.flavors._base import Flavor, class_name
from cloudflow.flavors._boosters import BoosterVerbs, scalar_hyperparameters

FLAVOR_NAME = "lightgbm"
EXTRA = "lightgbm"
_VERBS = BoosterVerbs(library="lightgbm", title="LightGBM", wrapper_base="LGBMModel")


def _describe(obj: object) -> dict[str, Any]:
    meta: dict[str, Any] = {"framework": FLAVOR_NAME, "class": class_name(obj)}
    wrapper: Any = obj
    booster = wrapper if type(obj).__name__ == "Booster" else getattr(wrapper, "_Booster", None)
    if booster is not None:
        meta["trees"] = int(booster.num_trees())
        meta["iterations"] = int(booster.current_iteration())
        meta["n_features"] = int(booster.num_feature())
        objective = booster.params.get("objective")
        if isinstance(objective, str):
            meta["objective"] = objective
    if booster is not wrapper:
        classes = getattr(wrapper, "_n_classes", None)
        if isinstance(classes, int) and classes > 0:
            meta["n_classes"] = classes
        meta["hyperparameters"] = scalar_hyperparameters(wrapper)
    return meta


FLAVOR = Flavor(
    name=FLAVOR_NAME,
    matches=_VERBS.matches,
    save=_VERBS.save,
    load=_VERBS.load,
    packages=(),
    modules=("lightgbm",),
    extra=EXTRA,
    describe=_describe,
)
