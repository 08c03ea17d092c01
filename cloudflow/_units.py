"""Sizes in one unit system: powers of 1000 (kB, MB, GB), as ``du --si`` and ``ls -l --si``.

``inspect``, ``list``, ``export``, ``gc``, ``cache`` and the save log print sizes with
:func:`human_size` alone, so one bundle has one size everywhere; a bundle's file count and bytes
come from :func:`bundle_totals` alone. Sizes a user writes (``CLOUDFLOW_CACHE_MAX_SIZE``,
``--max-size``) are read by :func:`parse_size`, which also takes the binary units (``GiB``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

#: The units :func:`parse_size` reads, upper-cased, in bytes.
SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
SIZE_UNITS.update({"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40})

#: How :func:`parse_size`'s caller lists them in an error message.
SIZE_UNITS_TEXT = "B, KB, MB, GB, TB, KiB, MiB, GiB, TiB"


def human_size(n: int | float) -> str:
    """1536 -> '1.5 kB': powers of 1000, the one unit system of every command and log line."""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"  # pragma: no cover - the loop returns


def parse_size(text: str) -> int | None:
    """Bytes of a size written ``500MB``, ``20GB``, ``1.5GiB`` or ``1000000``; None if not one."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).upper() if match else ""
    if match is None or unit not in SIZE_UNITS:
        return None
    return int(float(match.group(1)) * SIZE_UNITS[unit])


def bundle_totals(files: Mapping[str, Any], outer_files: Mapping[str, Any]) -> tuple[int, int]:
    """How many files a bundle records and their bytes: its data folder's and the files beside
    it (``MLmodel``, the requirements), the manifest itself apart; what ``verify`` checks,
    ``export`` copies and ``inspect`` and ``list`` report."""
    entries = [*files.values(), *outer_files.values()]
    return len(entries), sum(int((e or {}).get("size", 0)) for e in entries)
