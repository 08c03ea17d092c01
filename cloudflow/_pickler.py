"""FROZEN: the names bundles' pickles use for cloudflow's reconstructors (the on-disk format).

Every ``code.pkl`` and every model pickle names its reconstructors ``cloudflow._pickler.<name>``
(``_rebuild_module``, ``_skeleton_class``...): bundles written by any version of cloudflow load
through this module. The reconstructors live in :mod:`cloudflow.runtime.unpickler`, which writes
them under these names still (``FORMAT_MODULE``). Never rename or remove a name here; add one
only with a new reconstructor there (``RECONSTRUCTORS``). Nothing else belongs here.
"""

from __future__ import annotations

from cloudflow.runtime.unpickler import (
    _bundle_code,
    _bundle_global,
    _bundle_module,
    _class_setstate,
    _forward_ref,
    _fresh_namespace,
    _function_setstate,
    _lru_cache,
    _make_function,
    _module_namespace,
    _new_type,
    _own_names,
    _rebuild_module,
    _set_module_state,
    _skeleton_class,
    _skeleton_enum,
    _skeleton_namedtuple,
    _typevar,
)

__all__ = [
    "_bundle_code",
    "_bundle_global",
    "_bundle_module",
    "_class_setstate",
    "_forward_ref",
    "_fresh_namespace",
    "_function_setstate",
    "_lru_cache",
    "_make_function",
    "_module_namespace",
    "_new_type",
    "_own_names",
    "_rebuild_module",
    "_set_module_state",
    "_skeleton_class",
    "_skeleton_enum",
    "_skeleton_namedtuple",
    "_typevar",
]
