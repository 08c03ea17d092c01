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

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cloudflow.exceptions import BundleFormatError
from cloudflow.flavors._base import Flavor, PickleContext, class_name, loaded_module, require
from cloudflow.flavors._boosters import BoosterFiles, load_booster, persistent_load, save_booster

FLAVOR_NAME = "lightgbm"
EXTRA = "lightgbm"
_MODEL = "model.txt"
_WRAPPER = "wrapper.pkl"


def _matches(obj: object) -> bool:
    lgb = loaded_module("lightgbm")
    if lgb is None:
        return False
    return isinstance(obj, (lgb.Booster, lgb.LGBMModel))


def _save(obj: object, path: Path, ctx: PickleContext) -> dict[str, Any]:
    lgb = require("lightgbm", flavor=FLAVOR_NAME, extra=EXTRA)
    if isinstance(obj, lgb.Booster):
        entry = save_booster("lightgbm", obj, path / _MODEL)
        return {"kind": "booster", "file": _MODEL, **entry}
    boosters = BoosterFiles(path)
    ctx.dump(obj, path / _WRAPPER, persistent_id=boosters.persistent_id)
    return {"kind": "sklearn", "wrapper": _WRAPPER, "boosters": boosters.entries}


def _load(path: Path, info: Mapping[str, Any], ctx: PickleContext) -> object:
    require("lightgbm", flavor=FLAVOR_NAME, extra=EXTRA)
    kind = info.get("kind")
    if kind == "booster":
        return load_booster("lightgbm", path / _MODEL, info)
    if kind == "sklearn":
        wrapper = path / info.get("wrapper", _WRAPPER)
        boosters = persistent_load(path, info.get("boosters", []), wrapper)
        return ctx.load(wrapper, persistent_load=boosters)
    raise BundleFormatError(
        f"Unknown LightGBM model kind {kind!r} in the bundle; known kinds are 'booster' and "
        "'sklearn'. Upgrade cloudflow to load it."
    )


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
        params = wrapper.get_params()
        meta["hyperparameters"] = {
            k: v for k, v in params.items() if v is not None and isinstance(v, int | float | str)
        }
    return meta


FLAVOR = Flavor(
    name=FLAVOR_NAME,
    matches=_matches,
    save=_save,
    load=_load,
    packages=(),
    modules=("lightgbm",),
    extra=EXTRA,
    describe=_describe,
)
