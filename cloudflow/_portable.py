"""TRANSITIONAL: the names modules not yet moved import from here.

Compiling code tables lives in :mod:`cloudflow.capture.portable`, reading one in
:mod:`cloudflow.runtime.codetables`. Remove this module once nothing imports it.
"""

from cloudflow.capture.portable import (  # transitional: cloudflow.capture.portable
    python_env_note,
    requirement_lines,
    resolve_versions,
    warn,
)
from cloudflow.runtime.codetables import (  # transitional: cloudflow.runtime.codetables
    read_table,
    table_name,
)

__all__ = [
    "python_env_note",
    "read_table",
    "requirement_lines",
    "resolve_versions",
    "table_name",
    "warn",
]
