"""The load side never imports the save side; flavors reach neither the store nor either side.

``cloudflow/runtime`` is what loading and serving import: an import of ``cloudflow.capture``
from it, anywhere in a module (a function's own import included), would put the saving
machinery into every serving process. Flavors are given what they need from a save or a load
through their context, so they import neither the store nor ``capture`` or ``runtime``. Read from
the source with ``ast``: nothing is imported to check it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import cloudflow

PACKAGE = Path(cloudflow.__file__).parent
STORE = ("cloudflow._store", "cloudflow._remote", "cloudflow._cache", "cloudflow._listing")
STORE += ("cloudflow._blobs", "cloudflow.store")

#: Folder -> the modules its files must never import (a name or anything under it).
FORBIDDEN = {
    "runtime": ("cloudflow.capture",),
    "flavors": ("cloudflow.capture", "cloudflow.runtime", *STORE),
}


def imported(source: str, package: str) -> list[tuple[int, str]]:
    """(line, module) of every import in ``source``, relative ones resolved against ``package``;
    ``from cloudflow import _blobs`` counts as ``cloudflow._blobs``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([base] if base else [])])
            found.append((node.lineno, base))
            found.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names)
    return found


def violations(folder: str, files: dict[str, str]) -> list[str]:
    """``file:line imports module`` for each forbidden import of ``files`` (name -> source)."""
    banned = FORBIDDEN[folder]
    found = []
    for name, source in sorted(files.items()):
        for line, module in imported(source, f"cloudflow.{folder}"):
            if any(module == b or module.startswith(b + ".") for b in banned):
                found.append(f"{folder}/{name}:{line} imports {module}")
    return found


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_a_side_imports_nothing_it_must_not(folder: str) -> None:
    files = {p.name: p.read_text(encoding="utf-8") for p in (PACKAGE / folder).glob("*.py")}
    assert files, f"no modules under cloudflow/{folder}"
    assert violations(folder, files) == []


def test_the_check_finds_a_wrong_import_wherever_it_stands() -> None:
    wrong = {
        "top.py": "from cloudflow.capture import scan\n",
        "inner.py": "def f():\n    from ..capture.policy import CapturePolicy\n",
        "plain.py": "import cloudflow.capture.pickler\n",
        "fine.py": "from cloudflow import _packages\nfrom . import unpickler\n",
    }
    assert violations("runtime", wrong) == [
        "runtime/inner.py:2 imports cloudflow.capture.policy",
        "runtime/inner.py:2 imports cloudflow.capture.policy.CapturePolicy",
        "runtime/plain.py:1 imports cloudflow.capture.pickler",
        "runtime/top.py:1 imports cloudflow.capture",
        "runtime/top.py:1 imports cloudflow.capture.scan",
    ]
    flavor = {"_x.py": "from cloudflow import _blobs, _digests\n"}
    assert violations("flavors", flavor) == ["flavors/_x.py:1 imports cloudflow._blobs"]
