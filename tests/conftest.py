"""Shared fixtures: the fixture projects saved once per session, and throw-away user modules."""

from __future__ import annotations

import contextlib
import importlib
import json
import shutil
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.register_assert_rewrite("helpers")
# The server fixtures (tracking server, model serving) for every test module that asks for them.
pytest_plugins = ["servers"]

from helpers import FIXTURES_DIR, TESTS_DIR, run_script  # noqa: E402

_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")


@dataclass(frozen=True)
class SavedProject:
    """A fixture project saved in a subprocess whose source copy was deleted afterwards."""

    source_copy: Path  # deleted before the fixture yields
    bundle_path: Path  # written by save_bundle to a plain path
    cases: list[dict[str, Any]]  # keyword arguments of predict() besides the models
    expected: list[Any]  # predict(**models, **case) in the saving process, before saving
    expected_after_save: list[Any]
    store: Path | None = None  # the seed API's tracking folder (project A only)
    run_id: str | None = None
    experiment_id: str | None = None
    experiment_name: str | None = None
    sentinel: Path | None = None  # written if a module nothing reaches is ever executed


def _save_fixture_project(root: Path, name: str, extra_args: list[str], env=None) -> dict:
    copy = root / f"{name}_source"
    shutil.copytree(FIXTURES_DIR / name, copy, ignore=_IGNORE)
    out = root / f"{name}_saved.json"
    try:
        run_script(
            copy / "save_project.py",
            [*extra_args, "--out", str(out), "--tests-dir", str(TESTS_DIR)],
            cwd=copy,
            env=env,
        )
    finally:
        shutil.rmtree(copy)  # from here on, the project's source cannot be imported
    return json.loads(out.read_text(encoding="utf-8")) | {"source_copy": copy}


@pytest.fixture(scope="session")
def saved_project_a(tmp_path_factory: pytest.TempPathFactory) -> SavedProject:
    """Project A saved through the seed API (and with ``save_bundle`` to a plain path)."""
    root = tmp_path_factory.mktemp("project_a")
    store, bundle, sentinel = root / "store", root / "bundle", root / "UNREACHED_WAS_EXECUTED"
    saved = _save_fixture_project(
        root,
        "project_a",
        ["--store", str(store), "--bundle-path", str(bundle)],
        env={"PROJECT_A_SENTINEL": str(sentinel)},
    )
    return SavedProject(
        source_copy=saved["source_copy"],
        bundle_path=bundle,
        cases=saved["cases"],
        expected=saved["expected"],
        expected_after_save=saved["expected_after_save"],
        store=store,
        run_id=saved["run_id"],
        experiment_id=saved["experiment_id"],
        experiment_name=saved["experiment_name"],
        sentinel=sentinel,
    )


@pytest.fixture(scope="session")
def saved_project_b(tmp_path_factory: pytest.TempPathFactory) -> SavedProject:
    """Project B (its own ``utils``, modules named like installed packages) saved to a path."""
    root = tmp_path_factory.mktemp("project_b")
    bundle = root / "bundle"
    saved = _save_fixture_project(root, "project_b", ["--bundle-path", str(bundle)])
    return SavedProject(
        source_copy=saved["source_copy"],
        bundle_path=bundle,
        cases=saved["cases"],
        expected=saved["expected"],
        expected_after_save=saved["expected"],
    )


class UserModules:
    """A temporary folder of user modules on ``sys.path``, forgotten after the test."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._top_names: set[str] = set()

    def write(self, files: dict[str, str]) -> Path:
        """Write ``{relative path: source}`` (dedented) under the root; returns the root."""
        for relative, source in files.items():
            path = self.root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(source), encoding="utf-8")
            self._top_names.add(Path(relative).parts[0].removesuffix(".py"))
        importlib.invalidate_caches()
        return self.root

    def purge(self) -> None:
        """Drop every module written here from ``sys.modules``."""
        for name in list(sys.modules):
            if name.split(".")[0] in self._top_names:
                del sys.modules[name]
        importlib.invalidate_caches()

    def forget(self) -> None:
        """Make the source unreachable: delete the files, leave ``sys.path``, purge the modules."""
        shutil.rmtree(self.root)
        while str(self.root) in sys.path:
            sys.path.remove(str(self.root))
        self.purge()


@pytest.fixture
def user_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[UserModules]:
    """User modules written into ``tmp_path/user_src``, importable for the test's duration."""
    root = tmp_path / "user_src"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    modules = UserModules(root)
    yield modules
    modules.purge()


@contextlib.contextmanager
def restored_mlflow_state() -> Iterator[None]:
    """Give MLflow's process-wide tracking URI, active experiment and run back afterwards."""
    import mlflow
    from mlflow.tracking import fluent

    previous_uri = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fluent, "_active_experiment_id", None)
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
            patch.setenv(name, "")  # records the original state, so undo restores it
            patch.delenv(name)
        try:
            yield
        finally:
            while mlflow.active_run() is not None:
                mlflow.end_run()
            mlflow.set_tracking_uri(previous_uri)


@pytest.fixture
def mlflow_state() -> Iterator[None]:
    """MLflow's process-wide state, restored after the test."""
    with restored_mlflow_state():
        yield
