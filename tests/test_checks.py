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
)
ENTRIES = (
    "save_arguments",
    "log_arguments",
    "seed_save_arguments",
    "load_arguments",
    "seed_load_arguments",
    "export_arguments",
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
    assert counted.calls["resolve_trust"] == 1 + 1  # the seed's check, and the reader's own


@pytest.mark.usefixtures("store")
def test_each_verb_checks_each_argument_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted = Counted(monkeypatch)
    cloudflow.save_bundle(predict, {"scaler": {"k": 3}}, tmp_path / "bundle")
    assert counted.of(*ONCE_PER_SAVE) == ONCE_PER_SAVE
    assert counted.calls["save_arguments"] == 1

    counted.calls.clear()
    experiment_id = cloudflow.prepare_env(str(tmp_path / "logged"), "checks")
    with mlflow.start_run(experiment_id=experiment_id):
        info = cloudflow.log_bundle(predict, {"scaler": {"k": 4}})
    assert counted.of(*ONCE_PER_SAVE) == ONCE_PER_SAVE
    assert counted.calls["log_arguments"] == 1
    assert cloudflow.load_bundle(info.model_uri).predict(x=2) == 8
    assert counted.calls["load_arguments"] == 1

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
