"""TRANSITIONAL: lazy models live in :mod:`cloudflow.runtime.lazy`."""

from cloudflow.runtime.lazy import LazyModel, is_loaded, loaded  # transitional: runtime.lazy

__all__ = ["LazyModel", "is_loaded", "loaded"]
