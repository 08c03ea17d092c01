"""LightGBM: boosters and their scikit-learn wrappers, trees in LightGBM's own text format.

The trees, the parameters, feature names and pandas categories go to ``model.txt``, written by
``Booster.save_model``: a file any LightGBM reads (``lightgbm.Booster(model_file=...)``), no
pickle. A scikit-learn wrapper (``LGBMClassifier``, ``LGBMRegressor``, ``LGBMRanker``, a user
subclass) is the booster plus what the wrapper keeps beside it: hyperparameters, ``classes_``
and the label encoder, ``n_features_in_``, best iteration and scores, a custom objective. That
part is pickled through the bundle's context as ``wrapper.pkl`` with the booster replaced by a
reference to the file, so the pickle holds no tree. (MLflow's lightgbm flavor pickles the whole
wrapper, trees included.)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cloudflow.exceptions import BundleFormatError
from cloudflow.flavors._base import Flavor, PickleContext, class_name, loaded_module, require

FLAVOR_NAME = "lightgbm"
EXTRA = "lightgbm"
_MODEL = "model.txt"
_WRAPPER = "wrapper.pkl"
# The persistent id that stands for the booster inside wrapper.pkl.
_PID = ("cloudflow.lightgbm.booster",)


def _matches(obj: object) -> bool:
    lgb = loaded_module("lightgbm")
    if lgb is None:
        return False
    return isinstance(obj, (lgb.Booster, lgb.LGBMModel))


def _save_booster(booster: Any, file: Path) -> None:
    # Every iteration (not only up to the best one), as the live booster predicts by default.
    booster.save_model(str(file), num_iteration=-1)


def _save(obj: object, path: Path, ctx: PickleContext) -> dict[str, Any]:
    lgb = require("lightgbm", flavor=FLAVOR_NAME, extra=EXTRA)
    if isinstance(obj, lgb.Booster):
        _save_booster(obj, path / _MODEL)
        return {"kind": "booster", "file": _MODEL}
    wrapper: Any = obj
    booster = getattr(wrapper, "_Booster", None)
    if booster is not None:
        _save_booster(booster, path / _MODEL)

    def persistent_id(value: object) -> object | None:
        return _PID if booster is not None and value is booster else None

    ctx.dump(wrapper, path / _WRAPPER, persistent_id=persistent_id)
    return {
        "kind": "sklearn",
        "file": _MODEL if booster is not None else None,
        "wrapper": _WRAPPER,
        "fitted": booster is not None,
    }


def _load(path: Path, info: Mapping[str, Any], ctx: PickleContext) -> object:
    lgb = require("lightgbm", flavor=FLAVOR_NAME, extra=EXTRA)
    kind = info.get("kind")
    if kind == "booster":
        return lgb.Booster(model_file=str(path / info["file"]))
    if kind == "sklearn":
        booster = lgb.Booster(model_file=str(path / info["file"])) if info.get("file") else None

        def persistent_load(pid: object) -> object:
            if tuple(pid) != _PID or booster is None:  # type: ignore[arg-type]
                raise BundleFormatError(
                    f"{path / info['wrapper']} refers to {pid!r}, which is not the booster of "
                    "this LightGBM model: the bundle is damaged. Save it again."
                )
            return booster

        return ctx.load(path / info["wrapper"], persistent_load=persistent_load)
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
