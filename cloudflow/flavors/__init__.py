"""The flavor registry: which flavor saves a model, found by asking each in a fixed order.

The order is part of the behaviour: the first flavor whose ``matches`` accepts an object saves it.

1. Flavors users add, in the order added: first those given to :func:`register_flavor`, then
   those of installed plugins (the ``cloudflow.flavors`` entry point group), by entry point name.
   A user flavor exists to claim objects the built-ins would otherwise save in a generic way (a
   class of the user's own that scikit-learn would pickle, a torch subclass with its own export),
   so it is asked first.
2. The built-ins, :data:`FLAVORS`: the specific ones first (an XGBoost or LightGBM wrapper is also
   a scikit-learn estimator, a transformers model also a torch module, a Keras model on the
   torch backend also a torch module and on the tensorflow backend a trackable TensorFlow
   object), then JAX pytrees of arrays (a ``jax.Array``, or a plain dict, list or tuple nest
   whose leaves are arrays and plain values, with at least one JAX array: see
   :mod:`cloudflow.flavors._jax`), then containers of models (a dict or list holding a model of
   another flavor, or JAX arrays beside an object a pytree cannot hold), and the pickle
   fallback, which accepts anything, last. A pytree of arrays is asked before the container
   flavor because each of its arrays is a model of that flavor on its own: the container would
   otherwise claim the whole tree and give every array a folder of its own.

A flavor's ``name`` is written into every bundle: never rename one; add new built-in flavors
before the container and the fallback. A user flavor cannot take a built-in's name.
"""

from __future__ import annotations

import importlib.metadata
import logging
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from cloudflow import _packages
from cloudflow.exceptions import (
    BundleArgumentError,
    BundleFormatError,
    CloudflowError,
    MissingDependencyError,
)
from cloudflow.flavors import (
    _container,
    _flax,
    _jax,
    _keras,
    _lightgbm,
    _onnx,
    _pickle,
    _sklearn,
    _tensorflow,
    _torch,
    _transformers,
    _xgboost,
)
from cloudflow.flavors._base import Flavor, LoadContext, SaveContext, SharedFiles

__all__ = [
    "DEVICE_FLAVORS",
    "ENTRY_POINT_GROUP",
    "FLAVORS",
    "Flavor",
    "LoadContext",
    "SaveContext",
    "SharedFiles",
    "check_installed",
    "flavor_for",
    "flavor_sources",
    "get_flavor",
    "prepare_load",
    "register_flavor",
    "requirements_for",
    "unregister_flavor",
    "user_flavors",
    "walk",
]

_logger = logging.getLogger("cloudflow")

FLAVORS: tuple[Flavor, ...] = (
    _xgboost.FLAVOR,
    _lightgbm.FLAVOR,
    _onnx.FLAVOR,
    _transformers.FLAVOR,
    _keras.FLAVOR,
    _torch.FLAVOR,
    _tensorflow.FLAVOR,
    _sklearn.FLAVOR,
    _flax.FLAVOR,
    _jax.FLAVOR,
    _container.FLAVOR,
    _pickle.FLAVOR,
)
#: Flavors whose models take a device and a dtype at load.
DEVICE_FLAVORS = ("torch", "transformers")
#: The entry point group where installed packages offer flavors (``name = "module:FLAVOR"``).
ENTRY_POINT_GROUP = "cloudflow.flavors"

_BY_NAME = {flavor.name: flavor for flavor in FLAVORS}
# User flavors: name -> (flavor, where it comes from), registered ones and discovered plugins.
_REGISTERED: dict[str, tuple[Flavor, dict[str, str]]] = {}
_PLUGINS: dict[str, tuple[Flavor, dict[str, str]]] | None = None
_PLUGIN_ERRORS: dict[str, str] = {}
# Reentrant: a plugin module may call register_flavor while it is being imported.
_LOCK = threading.RLock()


def register_flavor(flavor: Flavor) -> Flavor:
    """Add a flavor for a kind of model cloudflow does not know; it is asked before the built-ins.

    The flavor's ``name`` goes into every bundle it saves, with the distribution that provides
    its module (found from ``flavor.save.__module__``) and that distribution's version: a process
    that loads such a bundle must register the same flavor first, or have the plugin installed
    (see :data:`ENTRY_POINT_GROUP`); otherwise the load fails naming the flavor and what to
    install. Registering a flavor of the same name again replaces it (a re-run notebook cell),
    a plugin's of that name too; :func:`unregister_flavor` removes it.

    Args:
        flavor: The flavor; its ``matches`` must not import a library (look in ``sys.modules``).

    Returns:
        The flavor, so that ``FLAVOR = register_flavor(Flavor(...))`` is one statement.

    Raises:
        BundleArgumentError: Not a :class:`Flavor`, or it takes a built-in flavor's name.

    Example:
        >>> import cloudflow
        >>> flavor = cloudflow.Flavor(
        ...     name="my_table",
        ...     matches=lambda obj: type(obj).__name__ == "Table",
        ...     save=lambda obj, path, ctx: obj.write(path / "table.csv") or {},
        ...     load=lambda path, info, ctx: Table.read(path / "table.csv"),
        ... )
        >>> cloudflow.register_flavor(flavor)  # doctest: +SKIP
    """
    if not isinstance(flavor, Flavor):
        raise BundleArgumentError(
            f"register_flavor takes a cloudflow.Flavor, got {type(flavor).__name__}. Build one "
            "with cloudflow.Flavor(name=..., matches=..., save=..., load=...)."
        )
    _check_name(flavor.name, "register_flavor")
    with _LOCK:
        _REGISTERED.pop(flavor.name, None)
        _REGISTERED[flavor.name] = (flavor, _source_of(flavor))
    return flavor


def unregister_flavor(name: str) -> None:
    """Remove a flavor :func:`register_flavor` added (a no-op for a name it did not add)."""
    with _LOCK:
        _REGISTERED.pop(name, None)


def _check_name(name: object, where: str) -> None:
    if not isinstance(name, str) or not name.isidentifier():
        raise BundleArgumentError(
            f"{where}: flavor name {name!r} is not a Python identifier. Name it e.g. 'my_table'."
        )
    if name in _BY_NAME:
        raise BundleArgumentError(
            f"{where}: {name!r} is the name of a built-in flavor ({', '.join(_BY_NAME)}). Give "
            "the flavor a name of its own, e.g. the package's name."
        )


def _source_of(flavor: Flavor, entry_point: str | None = None) -> dict[str, str]:
    """Where a user flavor comes from: its module, the distribution that provides it, version."""
    module = getattr(flavor.save, "__module__", None) or ""
    source = {"module": module}
    if entry_point is not None:
        source["entry_point"] = entry_point
    top = module.partition(".")[0]
    dist = _packages.top_level_names_to_distributions({top}).get(top) if top else None
    if dist:
        source["distribution"] = dist
        version = _packages.distribution_version(dist)
        if version is not None:
            source["version"] = version
    return source


def _plugins() -> dict[str, tuple[Flavor, dict[str, str]]]:
    """The flavors installed packages offer, loaded once (a broken plugin is logged, skipped)."""
    global _PLUGINS
    with _LOCK:
        if _PLUGINS is not None:
            return _PLUGINS
        found: dict[str, tuple[Flavor, dict[str, str]]] = {}
        for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=_ep_key):
            try:
                flavor = ep.load()
                if callable(flavor) and not isinstance(flavor, Flavor):
                    flavor = flavor()
                if not isinstance(flavor, Flavor):
                    raise TypeError(f"it is a {type(flavor).__name__}, not a cloudflow.Flavor")
                _check_name(flavor.name, f"entry point {ep.name!r}")
            except Exception as e:  # noqa: BLE001 - one broken plugin must not stop the others
                _PLUGIN_ERRORS[ep.name] = f"{type(e).__name__}: {e}"
                _logger.warning("Skipped the cloudflow flavor plugin %r (%s): %s", ep.name, ep, e)
                continue
            source = _source_of(flavor, entry_point=f"{ep.name} = {ep.value}")
            dist = getattr(ep, "dist", None)
            if dist is not None:
                source["distribution"] = dist.name
                source["version"] = dist.version
            found.setdefault(flavor.name, (flavor, source))
        _PLUGINS = found
        return found


def _ep_key(ep: importlib.metadata.EntryPoint) -> tuple[str, str]:
    return ep.name, ep.value


def user_flavors() -> list[Flavor]:
    """The flavors users added, in the order they are asked: registered, then plugins."""
    plugins = _plugins()
    with _LOCK:
        registered = [flavor for flavor, _ in _REGISTERED.values()]
    return registered + [f for name, (f, _) in plugins.items() if name not in _REGISTERED]


def _user_entry(name: str) -> tuple[Flavor, dict[str, str]] | None:
    with _LOCK:
        entry = _REGISTERED.get(name)
    return entry if entry is not None else _plugins().get(name)


def flavor_for(obj: object) -> Flavor:
    """The flavor that saves ``obj``: the first user flavor, then built-in, that matches it.

    Imports no library: a flavor only recognises objects of libraries already imported.

    Example:
        >>> flavor_for({"threshold": 0.5}).name
        'pickle'
    """
    for flavor in user_flavors():
        if flavor.matches(obj):
            return flavor
    for flavor in FLAVORS:
        if flavor.matches(obj):
            return flavor
    return FLAVORS[-1]  # unreachable while the fallback matches everything; keeps the type honest


def get_flavor(name: str) -> Flavor:
    """The flavor called ``name`` (as written in a bundle's manifest).

    Raises:
        BundleFormatError: No flavor has that name (a bundle from a newer cloudflow, or damaged).
    """
    builtin = _BY_NAME.get(name)
    if builtin is not None:
        return builtin
    entry = _user_entry(name)
    if entry is not None:
        return entry[0]
    known = ", ".join(repr(n) for n in [*_BY_NAME, *(f.name for f in user_flavors())])
    raise BundleFormatError(
        f"Unknown model flavor {name!r}; this cloudflow knows {known}. The bundle was probably "
        "written by a newer cloudflow, or with a flavor a plugin adds: upgrade cloudflow, or "
        "install the plugin."
    ) from None


# The container flavor looks its elements' flavors up here (it does not import this package).
_container.use_registry(_container.Registry(flavor_for, get_flavor, DEVICE_FLAVORS))


def walk(name: str, info: Mapping[str, Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every (flavor name, info) one saved model uses: its own, then a container's elements'."""
    return _container.walk(name, info)


def flavor_sources(names: Iterable[str]) -> dict[str, dict[str, str]]:
    """Where each user flavor among ``names`` comes from, for the manifest (built-ins: none)."""
    out: dict[str, dict[str, str]] = {}
    for name in names:
        if name in _BY_NAME or name in out:
            continue
        entry = _user_entry(name)
        if entry is not None:
            out[name] = dict(entry[1])
    return out


def check_installed(
    models: Mapping[str, tuple[str, Mapping[str, Any]]], sources: Mapping[str, Mapping[str, str]]
) -> None:
    """Fail before anything loads if a model's flavor (or an element's) is not available here.

    Args:
        models: Model name -> (flavor name, info), as the manifest has them.
        sources: The manifest's record of where user flavors come from.

    Raises:
        MissingDependencyError: A user flavor that is neither registered nor installed; the
            message names it, the distribution (and version) to install, or the module that
            defines it.
        BundleFormatError: A flavor of which nothing is known (a newer cloudflow's).
    """
    for model, (top, info) in models.items():
        for name, _ in walk(top, info):
            if name in _BY_NAME or _user_entry(name) is not None:
                continue
            source = sources.get(name)
            if source is None:
                get_flavor(name)  # raises the unknown-flavor error
                continue
            raise MissingDependencyError(_missing_message(model, name, source))


def prepare_load(models: Mapping[str, tuple[str, Mapping[str, Any]]]) -> None:
    """Run each flavor's ``prepare`` (a container's elements' too) before the bundle's code loads.

    Args:
        models: Model name -> (flavor name, info), as the manifest has them.

    Raises:
        CloudflowError: A flavor found that this process cannot load its model (a Keras model
            saved on another backend than the one Keras here runs on); the message starts with
            the model's name.
    """
    for model, (top, info) in models.items():
        for name, used_info in walk(top, info):
            prepare = get_flavor(name).prepare
            if prepare is None:
                continue
            try:
                prepare(used_info)
            except CloudflowError as e:
                raise type(e)(f"Model {model!r}: {e}") from e


def _missing_message(model: str, name: str, source: Mapping[str, str]) -> str:
    dist, version = source.get("distribution"), source.get("version")
    broken = _PLUGIN_ERRORS.get(name)
    where = f"Model {model!r} was saved with the {name!r} flavor"
    if broken is not None:
        return f"{where}, whose plugin is installed but failed to load: {broken}. Reinstall it."
    if dist:
        pin = f"{dist}=={version}" if version else dist
        return (
            f"{where}, which the distribution {dist!r} provides; it is not installed here "
            f"(no {ENTRY_POINT_GROUP!r} entry point named it). Install it with: pip install {pin}"
        )
    module = source.get("module") or "the saving program"
    return (
        f"{where}, defined in {module!r} and added with cloudflow.register_flavor; no flavor "
        f"of that name is registered or installed here. Import {module!r} and call "
        "cloudflow.register_flavor with it before loading the bundle."
    )


def requirements_for(name: str, info: Mapping[str, Any]) -> list[str]:
    """The distributions a model saved with flavor ``name`` and ``info`` needs at load.

    For the flavor and, in a container, each element's: ``packages`` as the flavor names them,
    the distribution that provides each of its ``modules`` here, the libraries of boosters
    stored beside a pickle (a Pipeline ending in an XGBClassifier), the ``modules`` a saved
    model's info names (the library of a Keras model's backend), and for a user flavor the
    distribution it comes from.
    """
    dists: list[str] = []
    modules: set[str] = set()
    for used, used_info in walk(name, info):
        flavor = get_flavor(used)
        dists.extend(flavor.packages)
        modules.update(flavor.modules)
        modules.update(str(b.get("library")) for b in used_info.get("boosters") or ())
        modules.update(str(m) for m in used_info.get("modules") or ())
        if used not in _BY_NAME:
            entry = _user_entry(used)
            if entry is not None and entry[1].get("distribution"):
                dists.append(entry[1]["distribution"])
    dists.extend(_packages.top_level_names_to_distributions(modules).values())
    return list(dict.fromkeys(dists))
