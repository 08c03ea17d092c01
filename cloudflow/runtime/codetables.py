"""Reading a portable bundle's code table for the running CPython (tables: capture.portable).

A bundle saved with ``python_versions=[...]`` holds one ``code-3.12.marshal`` per version: the code
objects of its functions compiled by that version, which the pickles refer to by key.
"""

from __future__ import annotations

import marshal
import platform
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cloudflow.exceptions import EnvironmentMismatchError

TABLE_PREFIX = "code-"
TABLE_SUFFIX = ".marshal"


def version_of(info: Any = None) -> str:
    """``"3.11"`` for the running interpreter (or a ``sys.version_info``-like pair)."""
    major, minor = (info or sys.version_info)[:2]
    return f"{major}.{minor}"


def table_name(version: str) -> str:
    return f"{TABLE_PREFIX}{version}{TABLE_SUFFIX}"


def read_table(
    data_dir: Path, versions: list[str], read: Callable[[Path], bytes] | None = None
) -> dict[str, types.CodeType] | None:
    """The code table of the running version, or None for a bundle that pickles code itself.

    ``read`` gives the file's bytes as verified (see
    :class:`cloudflow.integrity.manifest.VerifiedBytes`).
    """
    here = version_of()
    path = data_dir / table_name(here)
    if not path.is_file():
        if any((data_dir / table_name(v)).is_file() for v in versions):
            raise EnvironmentMismatchError(
                f"This bundle loads on Python {', '.join(versions)}; this is Python "
                f"{platform.python_version()}. Load it under one of those, or save it again with "
                f"python_versions=[..., {here!r}]."
            )
        return None
    table: dict[str, types.CodeType] = marshal.loads(read(path) if read else path.read_bytes())
    return table
