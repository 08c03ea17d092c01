"""A bundle loaded where one of its libraries is missing says which, and the pin to install.

The shop project's torch bundle (source deleted) is loaded in a venv that holds cloudflow with
scikit-learn only (tests/pythons.py's shared venv on this interpreter's version): the load is a
``MissingDependencyError`` (a ``CloudflowError``) naming ``torch==<the bundle's pin>``, and
``cloudflow predict`` prints it as one line; ``cloudflow inspect`` marks torch missing there.
"""

from __future__ import annotations

import json
import platform
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers import subprocess_env
from pythons import ensure_venv, find_python, run_python_snippet
from servers import save_shop

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sklearn_only(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    version = ".".join(platform.python_version_tuple()[:2])
    base = find_python(version)
    if base is None:
        pytest.skip(f"no CPython {version} to build a venv on")
    venv = ensure_venv(base)
    root = tmp_path_factory.mktemp("missing_library")
    (saved,) = save_shop(root, {"mode": "save", "path": str(root / "bundle")})
    manifest = json.loads((root / "bundle" / "cloudflow" / "manifest.json").read_text())
    pin = "torch==" + manifest["libraries"]["torch"].partition("+")[0]
    return {"python": venv.python, "bundle": root / "bundle", "pin": pin, "saved": saved}


LOAD = r"""
import sys
import cloudflow

try:
    import torch  # noqa: F401
    emit({"torch": True})
except ImportError:
    try:
        cloudflow.load_bundle(sys.argv[1])
    except cloudflow.CloudflowError as e:
        emit({"torch": False, "type": type(e).__name__, "message": str(e),
              "import_error": isinstance(e, ImportError)})
    else:
        emit({"torch": False, "loaded": True})
"""


def test_load_names_the_missing_library_and_its_pin(
    sklearn_only: dict[str, Any], tmp_path: Path
) -> None:
    got = run_python_snippet(
        sklearn_only["python"], LOAD, cwd=tmp_path, args=[str(sklearn_only["bundle"])]
    )
    assert got["torch"] is False, "the sklearn venv holds torch: nothing is tested"
    assert got["type"] == "MissingDependencyError"
    assert got["import_error"] is True
    assert f"pip install {sklearn_only['pin']}" in got["message"]


def _cli(python: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), "-m", "cloudflow", *args],
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_predict_prints_one_line(sklearn_only: dict[str, Any], tmp_path: Path) -> None:
    bundle = str(sklearn_only["bundle"])
    done = _cli(sklearn_only["python"], ["predict", bundle, "--param", "text=ok"], tmp_path)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("Error: MissingDependencyError: This bundle needs torch")
    assert f"pip install {sklearn_only['pin']}" in lines[0]


def test_cli_inspect_marks_the_missing_requirement(
    sklearn_only: dict[str, Any], tmp_path: Path
) -> None:
    bundle = str(sklearn_only["bundle"])
    done = _cli(sklearn_only["python"], ["inspect", bundle], tmp_path)
    assert done.returncode == 0, done.stderr
    torch_line = next(
        line for line in done.stdout.splitlines() if line.strip().startswith("torch==")
    )
    assert torch_line.split() == [sklearn_only["pin"], "missing", "here"]
    as_json = _cli(sklearn_only["python"], ["inspect", bundle, "--json"], tmp_path)
    here = {e["requirement"]: e for e in json.loads(as_json.stdout)["requirements_here"]}
    assert here[sklearn_only["pin"]]["status"] == "missing"
    assert here[sklearn_only["pin"]]["installed"] is None
    mlflow_line = next(r for r in here if r.startswith("mlflow=="))
    assert here[mlflow_line]["status"] == "ok"
