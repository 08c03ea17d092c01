"""The flavor registry: which flavor saves a model, found by asking each in a fixed order.

The order is part of the behaviour: the first flavor whose ``matches`` accepts an object saves it,
so the specific ones come first (a transformers model is also a torch module) and the pickle
fallback, which accepts anything, comes last. A flavor's ``name`` is written into every bundle:
never rename one; add new flavors before the fallback.
"""

from __future__ import annotations

from cloudflow.exceptions import BundleFormatError
from cloudflow.flavors import _pickle, _sklearn, _torch, _transformers
from cloudflow.flavors._base import Flavor, PickleContext

__all__ = ["FLAVORS", "Flavor", "PickleContext", "flavor_for", "get_flavor"]

FLAVORS: tuple[Flavor, ...] = (
    _transformers.FLAVOR,
    _torch.FLAVOR,
    _sklearn.FLAVOR,
    _pickle.FLAVOR,
)

_BY_NAME = {flavor.name: flavor for flavor in FLAVORS}


def flavor_for(obj: object) -> Flavor:
    """The flavor that saves ``obj``: the first in :data:`FLAVORS` that matches it.

    Imports no library: a flavor only recognises objects of libraries already imported.

    Example:
        >>> flavor_for({"threshold": 0.5}).name
        'pickle'
    """
    for flavor in FLAVORS:
        if flavor.matches(obj):
            return flavor
    return FLAVORS[-1]  # unreachable while the fallback matches everything; keeps the type honest


def get_flavor(name: str) -> Flavor:
    """The flavor called ``name`` (as written in a bundle's manifest).

    Raises:
        BundleFormatError: No flavor has that name (a bundle from a newer cloudflow, or damaged).
    """
    try:
        return _BY_NAME[name]
    except KeyError:
        known = ", ".join(repr(n) for n in _BY_NAME)
        raise BundleFormatError(
            f"Unknown model flavor {name!r}; this cloudflow knows {known}. The bundle was "
            "probably written by a newer cloudflow: upgrade it to load this bundle."
        ) from None
