"""TRANSITIONAL: the names modules not yet moved import from here.

Saving's scan lives in :mod:`cloudflow.capture.scan`, the module and distribution helpers both
sides need in :mod:`cloudflow._packages`. Remove this module once nothing imports it.
"""

from cloudflow._packages import (  # transitional: cloudflow._packages
    distribution_version,
    relative_filename,
    top_level_names_to_distributions,
)
from cloudflow.capture.scan import (  # transitional: cloudflow.capture.scan
    import_root,
    is_user_module,
    module_locations,
    user_roots,
)
from cloudflow.capture.scan import library_dirs as _library_dirs  # transitional: scan.library_dirs
from cloudflow.capture.scan import under as _under  # transitional: cloudflow.capture.scan.under

__all__ = [
    "_library_dirs",
    "_under",
    "distribution_version",
    "import_root",
    "is_user_module",
    "module_locations",
    "relative_filename",
    "top_level_names_to_distributions",
    "user_roots",
]
