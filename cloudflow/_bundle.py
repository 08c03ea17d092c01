"""Transitional: the old names of what moved out of here, until their importers switch.

The bundle is written by :mod:`cloudflow.capture.write` (its environment files by
:mod:`cloudflow.capture.requirements`) and read by :mod:`cloudflow.runtime.read` into a
:class:`cloudflow.runtime.bundle.Bundle`.
"""

from cloudflow.capture.write import write_bundle  # transitional: cloudflow.capture.write
from cloudflow.runtime.bundle import Bundle  # transitional: cloudflow.runtime.bundle
from cloudflow.runtime.bundle import parameters_of as _parameters  # transitional: runtime.bundle
from cloudflow.runtime.read import data_dir_of, read_bundle  # transitional: runtime.read

__all__ = ["Bundle", "_parameters", "data_dir_of", "read_bundle", "write_bundle"]
