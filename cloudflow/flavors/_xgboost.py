"""XGBoost: boosters and their scikit-learn wrappers, trees in XGBoost's own UBJSON format.

The trees, the learner's parameters, feature names and types, the booster's attributes (best
iteration...) go to ``model.ubj``, written by ``Booster.save_model``: a file any XGBoost reads
(``xgboost.Booster(model_file=...)``), no pickle. A scikit-learn wrapper (``XGBClassifier``,
``XGBRegressor``, ``XGBRanker``, a user subclass) is the booster plus what the wrapper keeps
beside it: its hyperparameters, ``n_classes_``, ``classes_``, callbacks, a custom objective. That
part is pickled through the bundle's context as ``wrapper.pkl``, with the booster replaced by a
reference to the file, so the pickle holds no tree and the wrapper comes back exactly as it was
(its class, possibly the user's, included). MLflow's xgboost flavor instead rebuilds the wrapper
from the hyperparameters XGBoost stores in the model file; that loses what is not a
hyperparameter (a user subclass's attributes), which the skeleton keeps.
"""

from __future__ import annotations

from typing import Any

from cloudflow.flavors._boosters import BoosterVerbs, describe

FLAVOR_NAME = "xgboost"
_VERBS = BoosterVerbs(library="xgboost", title="XGBoost", wrapper_base="XGBModel")


def _booster_facts(booster: Any) -> dict[str, Any]:
    return {
        "rounds": int(booster.num_boosted_rounds()),
        "n_features": int(booster.num_features()),
        "objective": _objective(booster.save_config()),
    }


def _wrapper_facts(wrapper: Any) -> dict[str, Any]:
    facts = {}
    for attr in ("n_classes_", "n_features_in_"):
        value = getattr(wrapper, attr, None)
        if isinstance(value, int):
            facts[attr.strip("_")] = value
    return facts


def _describe(obj: object) -> dict[str, Any]:
    return describe(FLAVOR_NAME, obj, _booster_facts, _wrapper_facts)


def _objective(config: str) -> str | None:
    import json

    try:
        name = json.loads(config)["learner"]["objective"]["name"]
    except (ValueError, KeyError, TypeError):
        return None
    return name if isinstance(name, str) else None


FLAVOR = _VERBS.flavor(describe=_describe)
