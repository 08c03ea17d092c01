"""Where the captured code comes from: the git commit of the project it was imported from."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

import cloudflow
from cloudflow.integrity.manifest import read_manifest
from cloudflow.runtime.inspect import metadata_tags

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

APP = """
from scoring import helpers


def predict(model, x):
    return helpers.double(x) + model["bias"]
"""
HELPERS = """
def double(x):
    return 2 * x
"""


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=cf", "-c", "user.email=cf@example.com", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


@pytest.fixture
def project(user_modules: Any) -> Path:
    """A git checkout (the user_src folder) holding an app module and a package, committed."""
    root = user_modules.write(
        {"app.py": APP, "scoring/__init__.py": "", "scoring/helpers.py": HELPERS}
    )
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "first")
    return root


def _save(tmp_path: Path, name: str) -> Any:
    import app

    out = tmp_path / name
    cloudflow.save_bundle(app.predict, {"model": {"bias": 1}}, out)
    return read_manifest(out / "cloudflow")


def test_a_bundle_records_the_commit_of_the_captured_code(project: Path, tmp_path: Path) -> None:
    head = _git(project, "rev-parse", "HEAD")
    manifest = _save(tmp_path, "clean")
    assert manifest.provenance == {
        "git": [{"commit": head, "dirty": False, "modules": ["app", "scoring", "scoring.helpers"]}]
    }
    text = (tmp_path / "clean" / "cloudflow" / "manifest.json").read_text()
    assert str(project) not in text  # no path of this machine
    tags = metadata_tags(manifest, "model")
    assert tags["cloudflow.model.git_commit"] == head
    assert tags["cloudflow.model.git_dirty"] == "false"
    assert cloudflow.load_bundle(tmp_path / "clean").predict(x=3) == 7

    # A captured file changed since the commit: the commit alone does not hold this code.
    (project / "scoring" / "helpers.py").write_text(HELPERS + "\n# edited\n")
    assert _save(tmp_path, "dirty").provenance["git"][0]["dirty"] is True


def test_changes_outside_the_captured_files_leave_it_clean(project: Path, tmp_path: Path) -> None:
    (project / "notes.txt").write_text("not code the bundle runs")
    assert _save(tmp_path, "bundle").provenance["git"][0]["dirty"] is False


def test_inspect_names_the_commit(project: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cloudflow.cli import main

    head = _git(project, "rev-parse", "HEAD")
    _save(tmp_path, "bundle")
    as_json = CliRunner().invoke(main, ["inspect", str(tmp_path / "bundle"), "--json"])
    assert json.loads(as_json.output)["provenance"]["git"][0]["commit"] == head
    text = CliRunner().invoke(main, ["inspect", str(tmp_path / "bundle")]).output
    assert f"git {head[:12]} (as committed): app, scoring, scoring.helpers" in text


def test_code_outside_any_checkout_records_nothing(user_modules: Any, tmp_path: Path) -> None:
    user_modules.write({"app.py": APP, "scoring/__init__.py": "", "scoring/helpers.py": HELPERS})
    assert _save(tmp_path, "bundle").provenance == {}
