"""The flavor interface: how one kind of model is saved to and loaded from a folder."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cloudflow.exceptions import MissingDependencyError


class SharedFiles(Protocol):
    """The save's store of large files shared between bundles (the same weights saved twice).

    A flavor writing a large file computes its digest from memory first: if the store holds the
    very file already, it is linked instead of written; else it is written and adopted.
    """

    def link_existing(self, digest: str, size: int, path: Path, /) -> bool:
        """Link the stored file of that digest and size at ``path``; False if there is none."""
        ...

    def adopt(self, path: Path, digest: str, size: int, /) -> None:
        """Note a file just written at ``path``, of that digest and size, as the store's."""
        ...


class SaveContext(Protocol):
    """What a flavor is given to save a model: pickling that knows the bundle's user modules.

    Flavors that must pickle part of a model (a torch module's skeleton, an estimator with user
    classes) go through :meth:`dump`, never through ``pickle`` or ``cloudpickle`` directly: classes
    and functions from the user's modules are then written as references into the bundle's own
    module table, so the model and the predict function share one copy of each user class at load.
    """

    @property
    def shared_files(self) -> SharedFiles | None:
        """Where large files go shared between bundles, or None (write them as they are)."""
        ...

    def dump(
        self,
        obj: object,
        path: Path,
        *,
        persistent_id: Callable[[object], object | None] | None = None,
    ) -> None: ...


class LoadContext(Protocol):
    """What a flavor is given to load a model: the bundle's files as verified, and unpickling
    into the bundle's module table (what :meth:`SaveContext.dump` wrote)."""

    def load(
        self,
        path: Path,
        *,
        persistent_load: Callable[[object], object] | None = None,
    ) -> object: ...

    def read_bytes(self, path: Path) -> bytes:
        """A file of the bundle as verified at load (read once, checked in memory)."""
        ...


@dataclass(frozen=True)
class Flavor:
    """One kind of model and the verbs to save and load it.

    Attributes:
        name: Written into the manifest; never rename one, old bundles name it.
        matches: Whether an object is of this kind. Must not import the library: look in
            ``sys.modules`` first (an object of a library that was never imported cannot exist).
        save: Writes the object into an empty folder; returns the JSON-able information ``load``
            needs, stored in the manifest.
        load: Rebuilds the object from the folder and that information.
        packages: Distributions the saved files need at load, for requirements and the manifest.
        modules: Top-level import names the saved files need at load; each becomes a requirement
            on whichever distribution provides it here (``xgboost`` may come from
            ``xgboost-cpu``), with its version. Unlike ``packages``, nothing is required of a
            module no distribution provides.
        extra: The ``cloudflow[...]`` extra that installs them.
        describe: Metadata about a live model (class, parameter count, dtype...), for the manifest.
        prepare: Called with a saved model's information before any of the bundle's code is
            unpickled, for process-wide state its library fixes when first imported (Keras's
            backend); raises a :class:`~cloudflow.exceptions.CloudflowError` if this process
            cannot load the model.
    """

    name: str
    matches: Callable[[object], bool]
    save: Callable[[object, Path, SaveContext], dict[str, Any]]
    load: Callable[[Path, Mapping[str, Any], LoadContext], object]
    packages: tuple[str, ...] = ()
    extra: str | None = None
    describe: Callable[[object], dict[str, Any]] | None = field(default=None)
    modules: tuple[str, ...] = ()
    prepare: Callable[[Mapping[str, Any]], None] | None = field(default=None)


def class_name(obj: object) -> str:
    """The dotted name of an object's class, as flavors report it (``module.Qualname``)."""
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def loaded_module(name: str) -> Any:
    """The module ``name`` if something already imported it, else None (imports nothing)."""
    return sys.modules.get(name)


def require(module: str, *, flavor: str, extra: str | None) -> Any:
    """Import ``module`` for a flavor, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        hint = f"pip install 'cloudflow[{extra}]'" if extra else f"pip install {module}"
        raise MissingDependencyError(
            f"The {flavor!r} flavor needs the {module!r} library, which is not installed. "
            f"Install it with: {hint}"
        ) from e
