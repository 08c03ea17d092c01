"""The package's import contracts: the load side never imports the save side, and so on.

Every ``import`` in ``cloudflow/`` counts, also those inside functions (a lazy import still drags
a module in when it runs); only imports under ``if TYPE_CHECKING:`` are left out. The layout and
its reasons are in docs/development.md ("How it is built").
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

import cloudflow

PACKAGE = Path(cloudflow.__file__).parent

# Modules every layer may use: no cloudflow imports of their own beyond each other.
BASE = {
    "cloudflow.exceptions",
    "cloudflow._version",
    "cloudflow._names",
    "cloudflow._progress",
    "cloudflow._units",
    "cloudflow._packages",
    "cloudflow._mlflow",
}

# (what, what it must never import, why)
CONTRACTS = [
    (
        "cloudflow.runtime",
        ("cloudflow.capture",),
        "loading and serving never import the save side",
    ),
    (
        "cloudflow.store",
        ("cloudflow.capture", "cloudflow.runtime", "cloudflow._api", "cloudflow._legacy"),
        "the stores serve both sides and know neither",
    ),
    (
        "cloudflow.flavors",
        ("cloudflow.store", "cloudflow.capture", "cloudflow.runtime", "cloudflow._api"),
        "a flavor saves and loads one model from what its context gives it",
    ),
    (
        "cloudflow.integrity",
        (
            "cloudflow.store",
            "cloudflow.capture",
            "cloudflow.runtime",
            "cloudflow.flavors",
            "cloudflow._api",
            "cloudflow._legacy",
            "cloudflow._checks",
        ),
        "digests and signatures rest on nothing they check",
    ),
    (
        "cloudflow._pickler",
        ("cloudflow.capture",),
        "the frozen names old bundles reference are load-side reconstructors",
    ),
    (
        "cloudflow._pyfunc",
        ("cloudflow.capture",),
        "MLflow's loader module is the serving entry point",
    ),
]


def module_name(path: Path, root: Path) -> str:
    parts = ("cloudflow", *path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def imports_of(path: Path, root: Path, modules: set[str]) -> dict[str, bool]:
    """``{imported cloudflow module: imported at module level}`` of one file."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: dict[str, bool] = {}

    def add(target: str, top: bool) -> None:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            found[target] = found.get(target, False) or top

    def visit(node: ast.AST, top: bool) -> None:
        if _type_checking_only(node):
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, top)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                add(full if full in modules else base, top)
        inner = top and not isinstance(
            node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
        )
        # A class body runs at import time, a function body does not.
        if isinstance(node, ast.ClassDef):
            inner = top
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(ast.parse(path.read_text(), str(path)), True)
    return found


def import_graph(root: Path = PACKAGE) -> dict[str, dict[str, bool]]:
    files = {module_name(p, root): p for p in root.rglob("*.py") if "__pycache__" not in p.parts}
    modules = set(files)
    return {name: imports_of(path, root, modules) for name, path in sorted(files.items())}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(graph: dict[str, dict[str, bool]]) -> list[str]:
    """Every import that breaks a contract, as ``importer -> imported (why)``."""
    found = []
    for source, forbidden, why in CONTRACTS:
        for importer, targets in graph.items():
            if not _within(importer, source):
                continue
            for target in targets:
                if any(_within(target, f) for f in forbidden):
                    found.append(f"{importer} -> {target} ({why})")
    for base in BASE & set(graph):
        for target in graph[base]:
            if target not in BASE:
                found.append(f"{base} -> {target} (a base module imports only base modules)")
    return found


def cycles(graph: dict[str, dict[str, bool]]) -> list[list[str]]:
    """Cycles of imports, lazy ones too: a package and its own modules count as modules."""
    found: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in graph.get(node, {}):
            if state.get(target) == 1:
                found.append(stack[stack.index(target) :] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, dict[str, bool]]:
    return import_graph()


def test_the_layers_hold(graph: dict[str, dict[str, bool]]) -> None:
    assert violations(graph) == []


def test_no_import_cycles(graph: dict[str, dict[str, bool]]) -> None:
    assert cycles(graph) == []


def test_the_sub_packages_exist(graph: dict[str, dict[str, bool]]) -> None:
    for package in ("capture", "runtime", "integrity", "store", "flavors"):
        assert f"cloudflow.{package}" in graph
        assert sum(_within(m, f"cloudflow.{package}") for m in graph) > 1, package


def test_a_wrong_import_is_caught(graph: dict[str, dict[str, bool]], tmp_path: Path) -> None:
    # The checker runs on real files: a copy of the package where a loader imports a writer.
    copy = tmp_path / "cloudflow"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    loader = next(p for p in sorted((copy / "runtime").glob("*.py")) if p.name != "__init__.py")
    writer = next(p for p in sorted((copy / "capture").glob("*.py")) if p.name != "__init__.py")
    writer_name = "cloudflow.capture." + writer.stem
    loader.write_text(loader.read_text() + f"\n\ndef _late():\n    import {writer_name}\n")
    found = violations(import_graph(copy))
    wrong = (
        f"cloudflow.runtime.{loader.stem} -> {writer_name} "
        "(loading and serving never import the save side)"
    )
    assert wrong in found
    assert len(found) == len(violations(graph)) + 1
    # A cycle made at module level is named.
    cache = copy / "store" / "cache.py"
    cache.write_text("import cloudflow.integrity.digests\n" + cache.read_text())
    digests = copy / "integrity" / "digests.py"
    digests.write_text("import cloudflow.store.cache\n" + digests.read_text())
    made = {"cloudflow.integrity.digests", "cloudflow.store.cache"}
    assert any(made <= set(cycle) for cycle in cycles(import_graph(copy)))


#: The largest function and class a reader should have to hold in mind at once.
MAX_FUNCTION_LINES, MAX_CLASS_LINES = 120, 300


def oversized(root: Path = PACKAGE) -> list[str]:
    """Every function over :data:`MAX_FUNCTION_LINES` and class over :data:`MAX_CLASS_LINES`."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            limit = (
                MAX_CLASS_LINES
                if isinstance(node, ast.ClassDef)
                else MAX_FUNCTION_LINES
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                else None
            )
            if limit is not None and node.end_lineno is not None:
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{module_name(path, root)}.{node.name}: {lines} lines")
    return found


def test_no_function_or_class_is_too_long_to_read(tmp_path: Path) -> None:
    assert oversized() == []
    long = tmp_path / "cloudflow" / "long.py"
    long.parent.mkdir()
    long.write_text("def f():\n" + "    x = 1\n" * MAX_FUNCTION_LINES)
    assert oversized(long.parent) == [f"cloudflow.long.f: {MAX_FUNCTION_LINES + 1} lines"]
