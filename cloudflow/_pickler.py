"""FROZEN: the names bundles' pickles use for cloudflow's reconstructors (the on-disk format).

Every ``code.pkl`` and every model pickle names its reconstructors ``cloudflow._pickler.<name>``
(``_rebuild_module``, ``_skeleton_class``...): bundles written by any version of cloudflow load
through this module. The reconstructors live in :mod:`cloudflow.runtime.unpickler`, which writes
them under these names still (``FORMAT_MODULE``). Never rename or remove a name here; add one
only with a new reconstructor there (``RECONSTRUCTORS``). Nothing else belongs here but the
transitional block at the end.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cloudflow.runtime import unpickler as _runtime
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

# --- TRANSITIONAL ---------------------------------------------------------------------------------
# What cloudflow._bundle still imports from here, each name with its home. Remove this block (and
# the names from nowhere else) once nothing imports them from cloudflow._pickler.
LoadContext = _runtime.LoadContext  # transitional: cloudflow.runtime.unpickler.LoadContext
ModuleTable = _runtime.ModuleTable  # transitional: cloudflow.runtime.unpickler.ModuleTable
load_code = _runtime.load_code  # transitional: cloudflow.runtime.unpickler.load_code
__all__ += ["CaptureSession", "LoadContext", "ModuleTable", "load_code"]  # transitional

if TYPE_CHECKING:
    # transitional: cloudflow.capture.codewriter.CaptureSession (a CapturePolicy, a SaveContext
    # and a CodeWriter in one object)
    from cloudflow.capture.codewriter import CaptureSession


def __getattr__(name: str) -> Any:
    # The save side only when asked for: loading a bundle imports this module for its names.
    if name == "CaptureSession":  # transitional: cloudflow.capture.codewriter.CaptureSession
        from cloudflow.capture import codewriter

        return codewriter.CaptureSession
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
