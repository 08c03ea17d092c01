"""Module and distribution helpers both the saving and the loading process need.

Which distribution installs an import name and at which version (requirements at save, the
library check at load), and how a module name maps to a relative file name or resolves a relative
import (the capture at save, the bundle's ``__import__`` at load). Imports nothing of cloudflow.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.metadata
import inspect
import re
from collections.abc import Iterable


def relative_filename(module_name: str, is_package: bool) -> str:
    """The path a module's file has relative to its import root, e.g. ``pkg/sub/mod.py``."""
    base = module_name.replace(".", "/")
    return f"{base}/__init__.py" if is_package else f"{base}.py"


def package_of(namespace: dict) -> str | None:
    """The package a relative import in code with these globals resolves against."""
    package = namespace.get("__package__")
    if package is not None:
        return str(package)
    name = namespace.get("__name__")
    if not isinstance(name, str):
        return None
    return name if "__path__" in namespace else name.rpartition(".")[0]


def resolve_import(name: str, level: int, package: str | None) -> str | None:
    """The absolute module name an import statement names, or None if it cannot be resolved."""
    if level == 0:
        return name
    if not package:
        return None
    bits = package.rsplit(".", level - 1)
    if len(bits) < level:
        return None
    base = bits[0]
    return f"{base}.{name}" if name else base


# Import name -> distribution, as found so far in this process. Names no distribution provides are
# not remembered: a library installed after the first save is found by the next one.
_DIST_OF: dict[str, str] = {}


def top_level_names_to_distributions(tops: Iterable[str]) -> dict[str, str]:
    """Map top-level import names to the distributions that install them (``sklearn`` ->
    ``scikit-learn``); a name no distribution provides is left out.

    A name's answer is the distribution of the same name if it provides the name (``numpy``),
    else the first in ``importlib.metadata.distributions()`` order that does (``sklearn``), as
    ``packages_distributions()[name][0]``. Only what answers the question is read: a
    distribution's ``top_level.txt`` where it declares one, else the text of its ``RECORD``,
    parsed only when a wanted name occurs in it, and the search stops once every name is
    answered. ``importlib.metadata.packages_distributions()`` parses every file entry of every
    installed distribution, when a bundle asks for a handful of names: about 1 s of a process's
    first save with torch and transformers installed. Answers are remembered for the process.

    Example:
        >>> top_level_names_to_distributions({"sklearn"})  # doctest: +SKIP
        {'sklearn': 'scikit-learn'}
    """
    pending = set(tops) - _DIST_OF.keys()
    for top in sorted(pending):  # most libraries are installed under their import name
        with contextlib.suppress(Exception):
            named = importlib.metadata.distribution(top)
            if top in _top_level_names(named, {top}):
                _DIST_OF[top] = str(named.metadata["Name"])
    pending -= _DIST_OF.keys()
    for dist in importlib.metadata.distributions() if pending else ():
        try:
            provided = _top_level_names(dist, pending)
            name = dist.metadata["Name"] if provided else None
        except Exception:  # a broken distribution must not break saving
            continue
        if not name:
            continue
        for top in provided & pending:
            _DIST_OF[top] = str(name)
        pending -= provided
        if not pending:
            break
    return {top: _DIST_OF[top] for top in sorted(tops) if top in _DIST_OF}


def _top_level_names(dist: importlib.metadata.Distribution, wanted: set[str]) -> set[str]:
    """The top-level names ``dist`` installs, as far as they matter for ``wanted``."""
    declared = (dist.read_text("top_level.txt") or "").split()
    if declared:
        return set(declared)
    record = dist.read_text("RECORD")
    if record is None:  # an old egg-info install: let importlib read its file list
        return {_top_level_name(str(path)) for path in dist.files or ()}
    if not any(name in record for name in wanted):
        return set()
    paths = (
        csv.reader(record.splitlines())
        if '"' in record
        else (line.split(",", 1) for line in record.splitlines())
    )
    return {_top_level_name(row[0]) for row in paths if row and row[0]}


def _top_level_name(path: str) -> str:
    """``numpy`` of ``numpy/core/x.py``, ``six`` of ``six.py``, ``_cffi`` of ``_cffi.abi3.so``:
    ``importlib.metadata``'s rule for distributions that declare no top-level names."""
    first, sep, _ = path.replace("\\", "/").partition("/")
    return first if sep else (inspect.getmodulename(first) or first)


def distribution_version(dist: str) -> str | None:
    """The installed version of a distribution, or None if it is not installed.

    ``importlib.metadata.version`` parses the whole ``METADATA`` file as an e-mail message, long
    description included (7 ms for transformers'; every load checks each library of a bundle):
    the ``Version`` field is read from the header alone.
    """
    try:
        found = importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
    return _header_field(found, "Version") or found.version


def distribution_field(dist: str, name: str) -> str | None:
    """A field of an installed distribution's metadata header (``Requires-Python``), or None."""
    try:
        return _header_field(importlib.metadata.distribution(dist), name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _header_field(found: importlib.metadata.Distribution, name: str) -> str | None:
    """A field of ``METADATA``'s header, read without parsing the long description after it."""
    text = found.read_text("METADATA") or found.read_text("PKG-INFO") or ""
    header = text.replace("\r\n", "\n").split("\n\n", 1)[0]
    match = re.search(rf"^{re.escape(name)}:[ \t]*(.*?)[ \t]*$", header, re.MULTILINE)
    return match.group(1) or None if match else None
