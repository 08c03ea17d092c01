"""How the package is laid out: rules read from its source with ``ast``, nothing imported."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "cloudflow"

#: The one module that may name MLflow's private names (see its docstring).
MLFLOW_MODULE = "_mlflow.py"

#: Private MLflow names still used outside ``_mlflow.py``, file by file. Each has its wrapper in
#: ``cloudflow._mlflow`` already; this list must become empty once those files call them.
NOT_YET_SWITCHED: dict[str, set[str]] = {}


def _private(dotted: str) -> bool:
    return dotted.split(".")[0] == "mlflow" and any(
        part.startswith("_") for part in dotted.split(".")
    )


def _dotted(node: ast.expr) -> list[str] | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return parts[::-1]


def _attribute_names(tree: ast.AST) -> set[str]:
    """The private attribute names a module reaches on any object (``repo._download_file``)."""
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
    }


def private_mlflow_names(source: str, known_attributes: frozenset[str] = frozenset()) -> set[str]:
    """Every private MLflow name ``source`` imports or reaches.

    Found: imports (``from mlflow.x import _y``, ``import mlflow._x``), attributes of MLflow
    modules through any alias (``env._y`` after ``from mlflow.utils import environment as
    env``), and attributes of MLflow objects whose names ``_mlflow.py`` reaches (given as
    ``known_attributes``: an object's type is not in the source), as ``._name``.
    """
    tree = ast.parse(source)
    aliases: dict[str, str] = {}
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "mlflow":
                    aliases[alias.asname or "mlflow"] = alias.name if alias.asname else "mlflow"
                    if _private(alias.name):
                        found.add(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "mlflow":
                continue
            for alias in node.names:
                dotted = f"{node.module}.{alias.name}"
                aliases[alias.asname or alias.name] = dotted
                if _private(dotted):
                    found.add(dotted)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        parts = _dotted(node)
        if parts is not None and parts[0] in aliases:
            segments = ".".join([aliases[parts[0]], *parts[1:]]).split(".")
            first = next((i for i, part in enumerate(segments) if part.startswith("_")), None)
            if segments[0] == "mlflow" and first is not None:
                found.add(".".join(segments[: first + 1]))  # the private name, not what follows
        elif node.attr in known_attributes:
            found.add(f".{node.attr}")
    return found


def _modules() -> Iterator[Path]:
    yield from sorted(PACKAGE.rglob("*.py"))


def _known_attributes() -> frozenset[str]:
    return frozenset(_attribute_names(ast.parse((PACKAGE / MLFLOW_MODULE).read_text())))


def test_private_mlflow_names_only_in_one_module() -> None:
    known = _known_attributes()
    assert {"_download_file", "_host_creds", "_is_signature_from_type_hint"} <= known
    stray: dict[str, set[str]] = {}
    for path in _modules():
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == MLFLOW_MODULE:
            continue
        names = private_mlflow_names(path.read_text(encoding="utf-8"), known)
        names -= NOT_YET_SWITCHED.get(rel, set())
        if names:
            stray[rel] = names
    assert not stray, (
        f"Private MLflow names outside cloudflow/{MLFLOW_MODULE}: {stray}. Reach them through "
        f"a function of cloudflow/{MLFLOW_MODULE} (one place an MLflow upgrade touches)."
    )


def test_not_yet_switched_list_is_current() -> None:
    """An entry of the list that its file no longer uses is taken out (the list only shrinks)."""
    known = _known_attributes()
    for rel, allowed in NOT_YET_SWITCHED.items():
        used = private_mlflow_names((PACKAGE / rel).read_text(encoding="utf-8"), known)
        assert allowed <= used, f"{rel} no longer uses {sorted(allowed - used)}: drop them here"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from mlflow.tracking.fluent import _create_logged_model", "_create_logged_model"),
        ("from mlflow.utils import environment as env\nenv._lock_requirements([])", "_lock_"),
        ("import mlflow\nmlflow.tracking._tracking_service.utils", "_tracking_service"),
        ("import mlflow.store._unity_catalog as uc", "_unity_catalog"),
        ("def f(repo):\n    return repo._download_file('a', 'b')", "._download_file"),
    ],
)
def test_the_check_sees_each_kind_of_reach(source: str, expected: str) -> None:
    names = private_mlflow_names(source, frozenset({"_download_file"}))
    assert any(expected in name for name in names), names


def test_public_mlflow_names_pass() -> None:
    source = (
        "import mlflow\nfrom mlflow.entities import ViewType\nmlflow.MlflowClient()\n"
        "from cloudflow import _store\n_store._local_path('x')\nself._lock = 1\n"
    )
    assert private_mlflow_names(source, frozenset({"_download_file"})) == set()
