"""Transitional: the old names of the data files' code, until their importers switch.

Data files are saved by :mod:`cloudflow.capture.files` and found at load by
:mod:`cloudflow.runtime.files`.
"""

from cloudflow.runtime.files import bundle_file  # transitional: cloudflow.runtime.files
from cloudflow.runtime.files import path_text as _fspath  # transitional: cloudflow.runtime.files

__all__ = ["_fspath", "bundle_file"]
