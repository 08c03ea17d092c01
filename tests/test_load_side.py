"""The load side never brings the save side in: serving a bundle runs no capture code.

A process that loads a bundle with ``mlflow.pyfunc.load_model`` and predicts (a scoring server,
a Spark executor) must not import what only saving runs: capture of code, the bundle pickler,
the code-table compiler, signature inference, the clean-process check, provenance, the wheel
builder. ``cloudflow/runtime/`` holds what loading imports, and imports none of it, not even
inside a function.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

from conftest import SavedProject
from helpers import REPO_ROOT, assert_same_predictions, run_snippet

#: Modules only the saving process runs (``cloudflow.capture`` and its modules, by prefix).
SAVE_SIDE = (
    "cloudflow.capture",
    "cloudflow.capture.clean_process",
    "cloudflow.capture.provenance",
    "cloudflow.capture.wheel",
)
#: Names of the save side that ``cloudflow._pickler`` holds until its load side moves out; once
#: it only re-exports the reconstructors that pickled bundles name, none of them is there.
PICKLER_SAVE_SIDE = ("CaptureSession", "_BundlePickler")

#: Old modules the load side may still import a load-side name from, until they are split:
#: module -> what it is taken for (and its new home). None is left.
TRANSITIONAL: dict[str, str] = {}

# Records which module imported each cloudflow module first, then loads and predicts.
LOADER = r"""
import json, sys

imported_by = {}


class Watch:
    def find_spec(self, name, path=None, target=None):
        if name.startswith("cloudflow") and name not in imported_by:
            frame = sys._getframe(1)
            while frame is not None and (
                frame.f_code.co_filename.startswith("<frozen")
                or frame.f_globals.get("__name__", "").startswith("importlib")
            ):
                frame = frame.f_back
            imported_by[name] = None if frame is None else frame.f_globals.get("__name__")
        return None


sys.meta_path.insert(0, Watch())
import mlflow.pyfunc

spec = json.loads(sys.argv[1])
model = mlflow.pyfunc.load_model(spec["bundle"])
answers = [model.predict(dict(case)) for case in spec["cases"]]
# Its own names only: a name it hands out lazily (module __getattr__) is not looked up.
pickler = vars(sys.modules.get("cloudflow._pickler") or sys)
emit({
    "answers": answers,
    "modules": sorted(n for n in sys.modules if n.startswith("cloudflow")),
    "imported_by": imported_by,
    "pickler": sorted(n for n in spec["pickler_save_side"] if n in pickler),
})
"""


def _chain(name: str, imported_by: dict[str, str | None]) -> str:
    """``a <- b <- c``: the module, what imported it, what imported that..."""
    chain = [name]
    while (parent := imported_by.get(chain[-1])) is not None and parent not in chain:
        chain.append(parent)
    return " <- ".join(chain)


def test_a_pyfunc_load_and_predict_imports_nothing_of_the_save_side(
    saved_project_a: SavedProject, tmp_path: Path
) -> None:
    saved = saved_project_a
    spec = {
        "bundle": str(saved.bundle_path),
        "cases": saved.cases,
        "pickler_save_side": list(PICKLER_SAVE_SIDE),
    }
    got = run_snippet(LOADER, cwd=tmp_path, args=[json.dumps(spec)])
    assert_same_predictions(got["answers"], saved.cases, saved.expected)
    assert "cloudflow.runtime.pyfunc" in got["modules"]  # the loader ran from where it lives
    offenders = [
        _chain(name, got["imported_by"]) for name in got["modules"] if name.startswith(SAVE_SIDE)
    ]
    offenders += [f"cloudflow._pickler.{name}" for name in got["pickler"]]
    assert not offenders, "the save side is imported by a load:\n" + "\n".join(offenders)


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports, at the top or inside a function: (line, module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            # from cloudflow import _capture: the module is the name imported.
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def save_side_imports(folder: Path) -> list[str]:
    """``file:line module`` for each import of the save side in ``folder``'s modules."""
    out = []
    for path in sorted(folder.glob("*.py")):
        for line, module in _imports(path):
            old_api = module in ("cloudflow._api", "cloudflow._bundle", "cloudflow._legacy")
            transitional = module.startswith(tuple(f"{m}." for m in TRANSITIONAL))
            if module in TRANSITIONAL or transitional:
                continue
            if old_api or module.startswith(SAVE_SIDE):
                out.append(f"{path.name}:{line} {module}")
    return out


def test_the_runtime_package_imports_nothing_of_the_save_side() -> None:
    """Not at the top and not inside a function; the old modules being split are listed apart."""
    assert save_side_imports(REPO_ROOT / "cloudflow" / "runtime") == []


def test_the_import_check_finds_a_save_side_import_inside_a_function(tmp_path: Path) -> None:
    """The check above can fail: an import of the save side hidden in a function is found."""
    runtime = REPO_ROOT / "cloudflow" / "runtime"
    for path in runtime.glob("*.py"):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    (tmp_path / "read.py").write_text(
        (runtime / "read.py").read_text(encoding="utf-8")
        + "\n\ndef _probe():\n    from cloudflow.capture import write\n\n    return write\n",
        encoding="utf-8",
    )
    found = save_side_imports(tmp_path)
    line = len((tmp_path / "read.py").read_text(encoding="utf-8").splitlines()) - 2
    assert found == [f"read.py:{line} cloudflow.capture", f"read.py:{line} cloudflow.capture.write"]
