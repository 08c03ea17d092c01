"""Gradient-boosted trees inside pickled objects: each booster in its library's own file.

A scikit-learn wrapper (``XGBClassifier``, ``LGBMRegressor``) or a Pipeline that ends in one is
pickled through the bundle's context, but its boosters are not: each ``xgboost.Booster`` or
``lightgbm.Booster`` met while pickling is written with the library's own ``save_model`` (XGBoost
UBJSON, LightGBM text) and replaced in the pickle by a reference to that file, so the pickle
holds no tree. At load each file is read back by the library and every reference gets the very
same booster. What the wrapper keeps beside its booster (hyperparameters, ``classes_``, the
label encoder, callbacks, a user subclass's attributes) stays in the pickle, as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudflow.exceptions import BundleFormatError
from cloudflow.flavors._base import Flavor, class_name, loaded_module, require

if TYPE_CHECKING:
    from cloudflow.flavors._base import LoadContext, SaveContext

# First item of every persistent id written for a booster; anything else is not ours.
_PID_TAG = "cloudflow.booster"
#: Library -> the suffix of its booster files.
SUFFIXES = {"xgboost": ".ubj", "lightgbm": ".txt"}


def booster_classes() -> dict[type, str]:
    """Booster class -> library, for the libraries already imported (imports nothing)."""
    out: dict[type, str] = {}
    for library in SUFFIXES:
        module = loaded_module(library)
        booster = getattr(module, "Booster", None) if module is not None else None
        if isinstance(booster, type):
            out[booster] = library
    return out


def save_booster(library: str, booster: Any, file: Path) -> dict[str, Any]:
    """Write one booster in its library's format; returns what :func:`load_booster` needs."""
    if library == "xgboost":
        booster.save_model(str(file))  # best iteration, attributes, feature names included
        return {}
    # Every iteration, as LightGBM's own pickling keeps; the best one is set again at load.
    booster.save_model(str(file), num_iteration=-1)
    return {"best_iteration": int(booster.best_iteration)}


def load_booster(library: str, file: Path, info: Mapping[str, Any]) -> Any:
    """Read a booster :func:`save_booster` wrote."""
    if library == "xgboost":
        xgb = require("xgboost", flavor="xgboost", extra="xgboost")
        booster = xgb.Booster()
        booster.load_model(str(file))
        return booster
    if library == "lightgbm":
        lgb = require("lightgbm", flavor="lightgbm", extra="lightgbm")
        booster = lgb.Booster(model_file=str(file))
        booster.best_iteration = int(info.get("best_iteration", -1))
        return booster
    raise BundleFormatError(
        f"Unknown booster library {library!r} in the bundle; known ones are "
        f"{sorted(SUFFIXES)}. Upgrade cloudflow to load it."
    )


class BoosterFiles:
    """The ``persistent_id`` that writes each booster met while pickling to a file of its own.

    The first booster is ``model<suffix>`` (the file the library reads on its own), later ones
    ``model-<n><suffix>``. :attr:`entries` is what the manifest keeps, in order.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.classes = booster_classes()
        self.entries: list[dict[str, Any]] = []
        self._index: dict[int, int] = {}  # id(booster) -> index in entries
        self._alive: list[Any] = []  # keeps every id above valid while pickling

    def __bool__(self) -> bool:
        """Whether a booster library is imported, so that a booster can be met at all."""
        return bool(self.classes)

    def persistent_id(self, value: object) -> tuple[str, int] | None:
        library = self.classes.get(type(value))
        if library is None:
            return None
        index = self._index.get(id(value))
        if index is None:
            index = len(self.entries)
            name = f"model{'' if index == 0 else f'-{index}'}{SUFFIXES[library]}"
            entry = {"library": library, "file": name}
            entry.update(save_booster(library, value, self.folder / name))
            self.entries.append(entry)
            self._index[id(value)] = index
            self._alive.append(value)
        return (_PID_TAG, index)


def persistent_load(
    folder: Path, entries: Sequence[Mapping[str, Any]], where: Path
) -> Callable[[object], object]:
    """The ``persistent_load`` that gives back the boosters :class:`BoosterFiles` wrote."""
    loaded: dict[int, Any] = {}

    def load(pid: object) -> object:
        ok = isinstance(pid, tuple) and len(pid) == 2 and pid[0] == _PID_TAG
        index = pid[1] if ok else None  # type: ignore[index]
        if not isinstance(index, int) or not 0 <= index < len(entries):
            raise BundleFormatError(
                f"{where} refers to {pid!r}, which is not one of its {len(entries)} booster "
                "files: the bundle is damaged. Save it again."
            )
        if index not in loaded:
            entry = entries[index]
            name = str(entry.get("file", ""))
            if not name or "/" in name or name.startswith("."):
                raise BundleFormatError(
                    f"{where} names the booster file {name!r}, which is not a file of its "
                    "folder: the bundle is damaged. Save it again."
                )
            loaded[index] = load_booster(str(entry.get("library")), folder / name, entry)
        return loaded[index]

    return load


WRAPPER_FILE = "wrapper.pkl"


@dataclass(frozen=True)
class BoosterVerbs:
    """The save and load verbs the XGBoost and LightGBM flavors share.

    A booster alone is its library's own file (``model.ubj``, ``model.txt``); a scikit-learn
    wrapper is ``wrapper.pkl``, pickled through the bundle's context with each of its boosters
    replaced by such a file (:class:`BoosterFiles`), so no pickle holds a tree.

    Attributes:
        library: The import name, which is also the flavor's name and its extra.
        title: The library as the messages name it (``"XGBoost"``).
        wrapper_base: The library's base class of its scikit-learn wrappers (``"XGBModel"``).
    """

    library: str
    title: str
    wrapper_base: str

    @property
    def model_file(self) -> str:
        return f"model{SUFFIXES[self.library]}"

    def _require(self) -> Any:
        return require(self.library, flavor=self.library, extra=self.library)

    def matches(self, obj: object) -> bool:
        module = loaded_module(self.library)
        if module is None:
            return False
        return isinstance(obj, (module.Booster, getattr(module, self.wrapper_base)))

    def save(self, obj: object, path: Path, ctx: SaveContext) -> dict[str, Any]:
        if isinstance(obj, self._require().Booster):
            entry = save_booster(self.library, obj, path / self.model_file)
            return {"kind": "booster", "file": self.model_file, **entry}
        boosters = BoosterFiles(path)
        ctx.dump(obj, path / WRAPPER_FILE, persistent_id=boosters.persistent_id)
        return {"kind": "sklearn", "wrapper": WRAPPER_FILE, "boosters": boosters.entries}

    def flavor(self, describe: Callable[[object], dict[str, Any]]) -> Flavor:
        """The library's flavor: these verbs, ``describe``, and the library as its requirement
        (through ``modules``, so that ``xgboost-cpu`` is pinned where it provides the import)."""
        return Flavor(
            name=self.library,
            matches=self.matches,
            save=self.save,
            load=self.load,
            packages=(),
            modules=(self.library,),
            extra=self.library,
            describe=describe,
        )

    def load(self, path: Path, info: Mapping[str, Any], ctx: LoadContext) -> object:
        self._require()
        kind = info.get("kind")
        if kind == "booster":
            return load_booster(self.library, path / self.model_file, info)
        if kind == "sklearn":
            wrapper = path / info.get("wrapper", WRAPPER_FILE)
            boosters = persistent_load(path, info.get("boosters", []), wrapper)
            return ctx.load(wrapper, persistent_load=boosters)
        raise BundleFormatError(
            f"Unknown {self.title} model kind {kind!r} in the bundle; known kinds are 'booster' "
            "and 'sklearn'. Upgrade cloudflow to load it."
        )


def describe(
    library: str,
    obj: Any,
    booster_facts: Callable[[Any], dict[str, Any]],
    wrapper_facts: Callable[[Any], dict[str, Any]],
) -> dict[str, Any]:
    """The metadata of a booster or a scikit-learn wrapper: what ``booster_facts`` reads from the
    booster (the wrapper's, once fitted), then for a wrapper ``wrapper_facts`` and its scalar
    hyperparameters."""
    meta: dict[str, Any] = {"framework": library, "class": class_name(obj)}
    is_booster = type(obj).__name__ == "Booster"
    booster = obj if is_booster else getattr(obj, "_Booster", None)
    if booster is not None:
        meta.update(booster_facts(booster))
    if not is_booster:
        meta.update(wrapper_facts(obj))
        params = obj.get_params()
        meta["hyperparameters"] = {
            k: v for k, v in params.items() if v is not None and isinstance(v, int | float | str)
        }
    return meta
