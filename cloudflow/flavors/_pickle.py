"""The fallback flavor: any picklable object, through the bundle's pickling context."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloudflow.flavors._base import Flavor, class_name

if TYPE_CHECKING:
    from cloudflow.flavors._base import LoadContext, SaveContext

FLAVOR_NAME = "pickle"
_FILE = "model.pkl"


def _matches(obj: object) -> bool:
    # Last in the registry: whatever no other flavor claimed.
    return True


def _save(obj: object, path: Path, ctx: SaveContext) -> dict[str, Any]:
    ctx.dump(obj, path / _FILE)
    return {"file": _FILE}


def _load(path: Path, info: Mapping[str, Any], ctx: LoadContext) -> object:
    return ctx.load(path / info.get("file", _FILE))


def _describe(obj: object) -> dict[str, Any]:
    # Nothing else is cheap and safe to ask of an arbitrary object (len() may load a dataset).
    return {
        "framework": type(obj).__module__.partition(".")[0],
        "class": class_name(obj),
    }


FLAVOR = Flavor(
    name=FLAVOR_NAME,
    matches=_matches,
    save=_save,
    load=_load,
    packages=("cloudpickle",),
    extra=None,
    describe=_describe,
)
