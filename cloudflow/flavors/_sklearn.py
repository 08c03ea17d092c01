"""scikit-learn estimators: pickled through the bundle's context, or skops on request.

Why pickle by default: measured here (100-tree RandomForest, 290 MB, 2 cores) skops took 1.0 s to
dump and audit and 1.75 s to load, against 0.27 s and 0.37 s for pickle, 4 to 5 times slower, and
skops' safety brings nothing to a bundle whose predict function is pickled code anyway and whose
files are digest-checked before anything is unpickled. Set :data:`FORMAT` to ``"skops"`` to write
skops files where skops can (every type in the estimator from scikit-learn, NumPy or SciPy); an
estimator holding user classes (a custom transformer in a Pipeline) is pickled either way, as those
classes live in the bundle's captured modules, which skops cannot import. Loading reads whichever
format the bundle names.

XGBoost and LightGBM boosters inside an estimator (a Pipeline whose last step is an
``XGBClassifier``) are not pickled: each goes to its library's own file, and the pickle refers to
it (see :mod:`cloudflow.flavors._boosters`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudflow.exceptions import BundleFormatError
from cloudflow.flavors._base import Flavor, class_name, loaded_module, require
from cloudflow.flavors._boosters import BoosterFiles, persistent_load

if TYPE_CHECKING:
    from cloudflow.flavors._base import LoadContext, SaveContext

FLAVOR_NAME = "sklearn"
EXTRA = "sklearn"
#: How estimators are written: "pickle" (fast, the default) or "skops" (where skops can).
FORMAT = "pickle"
_PICKLE_FILE = "model.pkl"
_SKOPS_FILE = "model.skops"
# Types skops reports as untrusted that are still the libraries' own, so safe to trust at load.
_LIBRARY_ROOTS = frozenset({"sklearn", "numpy", "scipy"})


def _matches(obj: object) -> bool:
    base = loaded_module("sklearn.base")
    return base is not None and isinstance(obj, base.BaseEstimator)


def _save(obj: object, path: Path, ctx: SaveContext) -> dict[str, Any]:
    if FORMAT == "skops":
        info = _save_skops(obj, path)
        if info is not None:
            return info
    # XGBoost and LightGBM boosters in the estimator (a Pipeline ending in an XGBClassifier)
    # go to their libraries' own files, not into the pickle.
    boosters = BoosterFiles(path)
    ctx.dump(obj, path / _PICKLE_FILE, persistent_id=boosters.persistent_id if boosters else None)
    if boosters.entries:
        return {"format": "pickle", "file": _PICKLE_FILE, "boosters": boosters.entries}
    return {"format": "pickle", "file": _PICKLE_FILE}


def _save_skops(obj: object, path: Path) -> dict[str, Any] | None:
    """Writes a skops file and returns its info, or None (and no file) if skops cannot hold it."""
    skops_io = require("skops.io", flavor=FLAVOR_NAME, extra=EXTRA)
    target = path / _SKOPS_FILE
    try:
        skops_io.dump(obj, target)
        untrusted = list(skops_io.get_untrusted_types(file=target))
    except Exception:  # noqa: BLE001 - any object skops cannot walk goes to pickle instead
        target.unlink(missing_ok=True)
        return None
    if any(name.partition(".")[0] not in _LIBRARY_ROOTS for name in untrusted):
        target.unlink()
        return None
    # skops is a requirement of this model only (a pickled estimator needs scikit-learn alone).
    return {"format": "skops", "file": _SKOPS_FILE, "trusted": untrusted, "modules": ["skops"]}


def _load(path: Path, info: Mapping[str, Any], ctx: LoadContext) -> object:
    fmt = info.get("format", "pickle")
    if fmt == "pickle":
        require("sklearn", flavor=FLAVOR_NAME, extra=EXTRA)
        file = path / info.get("file", _PICKLE_FILE)
        if info.get("boosters"):
            return ctx.load(file, persistent_load=persistent_load(path, info["boosters"], file))
        return ctx.load(file)
    if fmt == "skops":
        skops_io = require("skops.io", flavor=FLAVOR_NAME, extra=EXTRA)
        data = ctx.read_bytes(path / info.get("file", _SKOPS_FILE))  # as verified, read once
        return skops_io.loads(data, trusted=info.get("trusted"))
    raise BundleFormatError(
        f"Unknown scikit-learn format {fmt!r} in the bundle; known formats are 'pickle' and "
        "'skops'. Upgrade cloudflow to load it."
    )


def _count(estimator: Any) -> tuple[int, int]:
    """(fitted numbers, tree nodes) in an estimator and the estimators inside it."""
    numbers = nodes = 0
    tree = getattr(estimator, "tree_", None)
    if tree is not None and hasattr(tree, "node_count"):
        return 0, int(tree.node_count)
    for name, value in vars(estimator).items():
        fitted = name.endswith("_") and not name.startswith("_")
        if fitted and getattr(getattr(value, "dtype", None), "kind", "x") in "fc":
            numbers += int(value.size)
    children: list[Any] = []
    for step in getattr(estimator, "steps", None) or ():
        children.append(step[1])
    for attr in ("estimators_", "transformers_"):
        value = getattr(estimator, attr, None)
        if isinstance(value, list | tuple):
            children.extend(value)
    for child in children:
        if isinstance(child, tuple) and len(child) >= 2:  # ColumnTransformer: (name, est, cols)
            child = child[1]
        if hasattr(child, "get_params"):
            n, t = _count(child)
            numbers += n
            nodes += t
    return numbers, nodes


def _describe(obj: object) -> dict[str, Any]:
    meta: dict[str, Any] = {"framework": "sklearn", "class": class_name(obj)}
    steps = getattr(obj, "steps", None)
    if isinstance(steps, list):
        meta["steps"] = [f"{name}: {type(step).__qualname__}" for name, step in steps]
        meta["layers"] = len(steps)
    estimators = getattr(obj, "estimators_", None)
    if isinstance(estimators, list):
        meta["estimators"] = len(estimators)
    for attr in ("n_features_in_", "n_outputs_"):
        value = getattr(obj, attr, None)
        if isinstance(value, int):
            meta[attr.strip("_")] = value
    classes = getattr(obj, "classes_", None)
    with contextlib.suppress(TypeError):
        if classes is not None:
            meta["n_classes"] = len(classes)
    numbers, nodes = _count(obj)
    if numbers:
        meta["parameters"] = numbers
    if nodes:
        meta["tree_nodes"] = nodes
    return meta


FLAVOR = Flavor(
    name=FLAVOR_NAME,
    matches=_matches,
    save=_save,
    load=_load,
    packages=("scikit-learn",),
    extra=EXTRA,
    describe=_describe,
)
