"""Every entry point checks its arguments once, through cloudflow._checks, before it writes.

The counts are taken through real saves and loads: each check is wrapped by a counter that
calls the real one, so the bundle is really written and then loaded back.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
from conftest import restored_mlflow_state
from helpers import sqlite_uri

import cloudflow
from cloudflow import _checks
from cloudflow.capture import portable as _portable
from cloudflow.capture import signature as _signature
from cloudflow.capture import wheel as _runtime
from cloudflow.exceptions import BundleArgumentError
from cloudflow.integrity import signing as _signing

#: The checks of a save, each wrapped by the counter; the entry functions of _checks too.
SAVE_CHECKS = (
    "check_arguments",
    "check_model_metadata",
    "check_module_names",
    "check_requirements",
    "check_metadata",
    "check_files",
    "check_share_files",
    "check_signature",
    "check_python_versions",
)
ENTRIES = (
    "save_arguments",
    "log_arguments",
    "seed_save_arguments",
    "load_arguments",
    "seed_load_arguments",
    "export_arguments",
    "check_load_options",
    "check_free_path",
)


def predict(scaler, x):
    return scaler["k"] * x


class Counted:
    """Calls of the wrapped functions, by name; each call goes through to the real one."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        for name in SAVE_CHECKS + ENTRIES:
            self._wrap(monkeypatch, _checks, name)
        self._wrap(monkeypatch, _signing, "resolve_key")
        self._wrap(monkeypatch, _signing, "resolve_trust")
        self._wrap(monkeypatch, _runtime, "check_package")
        # The checks _checks hands to the save side's own code, once each.
        self._wrap(monkeypatch, _signature, "resolve_signature")
        self._wrap(monkeypatch, _portable, "resolve_versions")

    def _wrap(self, monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> None:
        real: Callable[..., Any] = getattr(module, name)

        def counting(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, counting)

    def of(self, *names: str) -> dict[str, int]:
        return {name: self.calls[name] for name in names}


#: What one save checks: each check once, the module lists and the requirements one per argument.
ONCE_PER_SAVE = {
    "check_arguments": 1,
    "check_model_metadata": 1,
    "check_module_names": 2,  # include_modules, exclude_modules
    "check_requirements": 2,  # pip_requirements, extra_pip_requirements
    "check_metadata": 1,
    "check_files": 1,
    "check_share_files": 1,
    "resolve_key": 1,
    "check_package": 1,
    "check_signature": 1,
    "resolve_signature": 1,
    "check_python_versions": 1,
    "resolve_versions": 1,
}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Path]:
    with restored_mlflow_state():
        yield tmp_path / "store"


def _seed_save(store: Path, **options: Any) -> str:
    experiment_id = cloudflow.prepare_env(str(store), "checks")
    with mlflow.start_run(experiment_id=experiment_id) as run:
        pass  # a finished run, as a training script leaves it
    cloudflow.cloudflow_model().save(
        str(store), "checks", run.info.run_id, predict, {"scaler": {"k": 3}}, **options
    )
    return run.info.run_id


def test_the_seed_save_checks_each_argument_once(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It used to run four checks itself and then all of them again inside log_bundle.
    counted = Counted(monkeypatch)
    run_id = _seed_save(store, verify=False, files=None, model_metadata={"scaler": {"a": 1}})

    assert counted.of(*ONCE_PER_SAVE) == ONCE_PER_SAVE
    assert counted.of(*ENTRIES) == {**dict.fromkeys(ENTRIES, 0), "seed_save_arguments": 1}
    bundle = cloudflow.cloudflow_model().load_model(str(store), "checks", run_id)
    assert bundle.predict(x=2) == 6  # the save really happened
    assert counted.calls["seed_load_arguments"] == 1
    assert counted.calls["check_load_options"] == 1
    assert counted.calls["resolve_trust"] == 1 + 1  # the seed's check, and the reader's own


@pytest.mark.usefixtures("store")
def test_each_verb_checks_each_argument_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted = Counted(monkeypatch)
    cloudflow.save_bundle(predict, {"scaler": {"k": 3}}, tmp_path / "bundle")
    assert counted.of(*ONCE_PER_SAVE) == ONCE_PER_SAVE
    assert counted.of("save_arguments", "check_free_path") == {
        "save_arguments": 1,
        "check_free_path": 1,
    }

    counted.calls.clear()
    experiment_id = cloudflow.prepare_env(str(tmp_path / "logged"), "checks")
    with mlflow.start_run(experiment_id=experiment_id):
        info = cloudflow.log_bundle(predict, {"scaler": {"k": 4}})
    assert counted.of(*ONCE_PER_SAVE) == ONCE_PER_SAVE
    assert counted.of("log_arguments", "check_free_path") == {
        "log_arguments": 1,
        "check_free_path": 0,  # a logged bundle is staged in a private folder of its own
    }
    assert cloudflow.load_bundle(info.model_uri, lazy=True, device="cpu").predict(x=2) == 8
    assert counted.of("load_arguments", "check_load_options") == {
        "load_arguments": 1,
        "check_load_options": 1,
    }

    # MLflow's loader checks model_config's options through the same check, before any read.
    counted.calls.clear()
    with pytest.raises(BundleArgumentError, match=r"lazy must be False, True or 'background'"):
        mlflow.pyfunc.load_model(str(tmp_path / "bundle"), model_config={"lazy": "soon"})
    assert counted.calls["check_load_options"] == 1

    counted.calls.clear()
    cloudflow.export_bundle(tmp_path / "bundle", tmp_path / "copy")
    assert counted.of("export_arguments", "load_arguments") == {
        "export_arguments": 1,
        "load_arguments": 0,
    }
    assert cloudflow.load_bundle(tmp_path / "copy").predict(x=1) == 3


def _listing(root: Path) -> dict[str, tuple[int, int]]:
    return {
        os.path.relpath(os.path.join(folder, name), root): (
            os.stat(os.path.join(folder, name)).st_size,
            os.stat(os.path.join(folder, name)).st_mtime_ns,
        )
        for folder, _, names in os.walk(root)
        for name in names
    }


#: Bad arguments of the seed save that were checked only inside log_bundle, after the seed save
#: had resumed the run (which MLflow then ended as FAILED) and switched MLflow's tracking URI.
LATE_CHECKED = [
    ({"include_modules": ["not a module"]}, r"include_modules must list module names"),
    ({"share_files": "yes"}, r"share_files must be True or False, got 'yes'"),
    ({"exclude_modules": [3]}, r"exclude_modules must list module names .* 3 is not one"),
]


def test_a_bad_argument_to_the_seed_save_leaves_nothing_written(store: Path) -> None:
    experiment_id = cloudflow.prepare_env(str(store), "checks")
    with mlflow.start_run(experiment_id=experiment_id) as run:
        pass
    elsewhere = "sqlite:///" + str(store.parent / "elsewhere.db")
    mlflow.set_tracking_uri(elsewhere)
    before = _listing(store)
    client = mlflow.MlflowClient(sqlite_uri(store))

    for option, pattern in LATE_CHECKED:
        with pytest.raises(BundleArgumentError, match=pattern):
            cloudflow.cloudflow_model().save(
                str(store), "checks", run.info.run_id, predict, {"scaler": {"k": 3}}, **option
            )
        assert _listing(store) == before, option
        assert client.get_run(run.info.run_id).info.status == "FINISHED", option
        assert mlflow.get_tracking_uri() == elsewhere, option
    assert list(client.search_logged_models(experiment_ids=[experiment_id])) == []
    assert not (store.parent / "elsewhere.db").exists()


#: Bad arguments of log_bundle that only the writer used to check, after log_bundle had started
#: the MLflow run (left behind, FAILED) and made its staging folder.
WRITER_CHECKED = [
    ({"signature": "x: int"}, r"signature must be an mlflow\.models\.ModelSignature, None"),
    ({"input_example": {"y": 1}}, r"input_example has the key 'y', which is not an input"),
    ({"python_versions": ["3"]}, r"python_versions lists '3'; give CPython minor versions"),
    ({"python_versions": "3.9"}, r"python_versions lists '3\.9'; cloudflow runs on Python 3\.10"),
]


def test_a_bad_argument_to_log_bundle_starts_no_run_and_writes_nothing(store: Path) -> None:
    experiment_id = cloudflow.prepare_env(str(store), "checks")
    client = mlflow.MlflowClient(sqlite_uri(store))
    before = _listing(store)

    for option, pattern in WRITER_CHECKED:
        with pytest.raises(BundleArgumentError, match=pattern):
            cloudflow.log_bundle(predict, {"scaler": {"k": 3}}, **option)
        assert mlflow.active_run() is None, option
        assert client.search_runs([experiment_id]) == [], option
        assert _listing(store) == before, option
    assert list(client.search_logged_models(experiment_ids=[experiment_id])) == []

    # The same arguments, good, log a bundle that loads.
    info = cloudflow.log_bundle(predict, {"scaler": {"k": 3}}, input_example={"x": 2})
    mlflow.end_run()
    assert cloudflow.load_bundle(info.model_uri).predict(x=2) == 6


def test_a_taken_path_fails_in_its_place_in_the_order(tmp_path: Path) -> None:
    # Step 2 (where it goes) before step 3 (what is captured): the path was checked only by
    # the writer, after every other argument.
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(BundleArgumentError, match=r"taken' already exists\. Give a new folder"):
        cloudflow.save_bundle(predict, {"scaler": {"k": 3}}, taken, include_modules=["not one"])
    # Step 4 (python_versions) before step 5 (metadata): the writer checked it after them all.
    with pytest.raises(BundleArgumentError, match=r"python_versions lists '3'; give CPython"):
        cloudflow.save_bundle(
            predict, {"scaler": {"k": 3}}, tmp_path / "new", python_versions=["3"], metadata=[1]
        )
    # A bad signature comes first of all but predict_fn, models and model_metadata.
    with pytest.raises(BundleArgumentError, match=r"signature must be an mlflow\.models"):
        cloudflow.save_bundle(predict, {"scaler": {"k": 3}}, taken, signature="x: int")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]
