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

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cloudflow.exceptions import BundleFormatError
from cloudflow.flavors._base import Flavor, PickleContext, class_name, loaded_module, require
from cloudflow.flavors._boosters import BoosterFiles, load_booster, persistent_load, save_booster

FLAVOR_NAME = "xgboost"
EXTRA = "xgboost"
_MODEL = "model.ubj"
_WRAPPER = "wrapper.pkl"


def _matches(obj: object) -> bool:
    xgb = loaded_module("xgboost")
    if xgb is None:
        return False
    return isinstance(obj, (xgb.Booster, xgb.XGBModel))


def _save(obj: object, path: Path, ctx: PickleContext) -> dict[str, Any]:
    xgb = require("xgboost", flavor=FLAVOR_NAME, extra=EXTRA)
    if isinstance(obj, xgb.Booster):
        entry = save_booster("xgboost", obj, path / _MODEL)
        return {"kind": "booster", "file": _MODEL, **entry}
    boosters = BoosterFiles(path)
    ctx.dump(obj, path / _WRAPPER, persistent_id=boosters.persistent_id)
    return {"kind": "sklearn", "wrapper": _WRAPPER, "boosters": boosters.entries}


def _load(path: Path, info: Mapping[str, Any], ctx: PickleContext) -> object:
    require("xgboost", flavor=FLAVOR_NAME, extra=EXTRA)
    kind = info.get("kind")
    if kind == "booster":
        return load_booster("xgboost", path / _MODEL, info)
    if kind == "sklearn":
        wrapper = path / info.get("wrapper", _WRAPPER)
        boosters = persistent_load(path, info.get("boosters", []), wrapper)
        return ctx.load(wrapper, persistent_load=boosters)
    raise BundleFormatError(
        f"Unknown XGBoost model kind {kind!r} in the bundle; known kinds are 'booster' and "
        "'sklearn'. Upgrade cloudflow to load it."
    )


def _describe(obj: object) -> dict[str, Any]:
    meta: dict[str, Any] = {"framework": FLAVOR_NAME, "class": class_name(obj)}
    wrapper: Any = obj
    booster = wrapper if type(obj).__name__ == "Booster" else getattr(wrapper, "_Booster", None)
    if booster is not None:
        meta["rounds"] = int(booster.num_boosted_rounds())
        meta["n_features"] = int(booster.num_features())
        config = booster.save_config()
        meta["objective"] = _objective(config)
    if booster is not wrapper:
        for attr in ("n_classes_", "n_features_in_"):
            value = getattr(wrapper, attr, None)
            if isinstance(value, int):
                meta[attr.strip("_")] = value
        params = wrapper.get_params()
        meta["hyperparameters"] = {
            k: v for k, v in params.items() if v is not None and isinstance(v, int | float | str)
        }
    return meta


def _objective(config: str) -> str | None:
    import json

    try:
        name = json.loads(config)["learner"]["objective"]["name"]
    except (ValueError, KeyError, TypeError):
        return None
    return name if isinstance(name, str) else None


FLAVOR = Flavor(
    name=FLAVOR_NAME,
    matches=_matches,
    save=_save,
    load=_load,
    packages=(),
    modules=("xgboost",),
    extra=EXTRA,
    describe=_describe,
)
