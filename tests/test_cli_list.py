"""``cloudflow list`` on a folder store, and one-line errors from the bundle's predict function.

The store is made in the test with ``prepare_env`` and ``log_bundle`` (a pickled dict model, a
registered version); the commands run in-process through click's CliRunner.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import pytest
from click.testing import CliRunner

import cloudflow
from cloudflow.cli import main
from cloudflow.exceptions import NotFoundError
from cloudflow.store import listing as _listing


def _add(settings, x):
    return x + settings["step"]


def _fail(settings, x):
    raise ValueError(f"cannot handle {x!r}\nsecond line of the message")


def _run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def store(tmp_path: Path, mlflow_state: None) -> dict[str, Any]:
    folder = tmp_path / "store"
    experiment_id = cloudflow.prepare_env(str(folder), "listed")
    with mlflow.start_run(experiment_id=experiment_id) as run:
        cloudflow.log_bundle(_add, {"settings": {"step": 1}}, registered_model_name="adder")
    with mlflow.start_run(experiment_id=experiment_id) as failing:
        cloudflow.log_bundle(_fail, {"settings": {"step": 1}}, name="broken")
    with mlflow.start_run(experiment_id=experiment_id):
        mlflow.log_param("nothing", "saved")  # a run without a bundle is not listed
    return {"folder": folder, "run_id": run.info.run_id, "failing_id": failing.info.run_id}


def test_list_prints_runs_models_and_flavors(store: dict[str, Any]) -> None:
    result = _run("list", "--tracking-uri", str(store["folder"]))
    assert result.exit_code == 0, result.output
    out = result.output
    assert "experiment 'listed' (id 1): 2 bundle(s) in 2 run(s)" in out
    assert "experiment 'Default' (id 0): no bundles" in out
    row = next(line for line in out.splitlines() if store["run_id"] in line)
    assert row.split()[:4] == [store["run_id"], "model", "settings:", "pickle"]
    assert row.rstrip().endswith("adder v1")
    assert any(store["failing_id"] in line and " broken " in line for line in out.splitlines())


def test_list_json_parses_and_matches_the_manifest(store: dict[str, Any]) -> None:
    result = _run("list", "--tracking-uri", str(store["folder"]), "--json")
    assert result.exit_code == 0, result.output
    listing = json.loads(result.output)
    (experiment,) = [e for e in listing["experiments"] if e["name"] == "listed"]
    runs = {r["run_id"]: r for r in experiment["runs"]}
    assert set(runs) == {store["run_id"], store["failing_id"]}
    (bundle,) = runs[store["run_id"]]["bundles"]
    assert bundle["name"] == "model"
    assert bundle["status"] == "READY"
    assert bundle["flavors"] == {"settings": "pickle"}
    assert bundle["registered"] == [{"name": "adder", "version": "1"}]
    assert bundle["created"].endswith("Z")
    folder = Path(bundle["artifact_location"].removeprefix("file://"))
    manifest = json.loads((folder / "cloudflow" / "manifest.json").read_text())
    recorded = [*manifest["files"].values(), *manifest["outer_files"].values()]
    assert bundle["size_bytes"] == sum(f["size"] for f in recorded) > 0
    # The direct sqlite read and MLflow's client agree.
    uri = cloudflow.store.tracking.existing_store_uri(store["folder"])
    from_client = _listing._from_client(uri)
    _listing._mark_shadowed(from_client)
    assert from_client == listing["experiments"]


def test_list_refuses_a_folder_that_is_not_a_store(tmp_path: Path) -> None:
    empty = tmp_path / "not_a_store"
    empty.mkdir()
    (empty / "notes.txt").write_text("hello")
    result = CliRunner().invoke(main, ["list", "--tracking-uri", str(empty)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "No tracking store at" in lines[0]
    assert "not_a_store" in lines[0]
    assert "prepare_env" in lines[0]
    assert sorted(p.name for p in empty.iterdir()) == ["notes.txt"]
    missing = tmp_path / "missing"
    assert _run("list", "--tracking-uri", str(missing)).exit_code == 1
    assert not missing.exists()
    with pytest.raises(NotFoundError, match=r"No tracking store at 'sqlite:///.*nothing\.db'"):
        _listing.list_store(f"sqlite:///{tmp_path / 'nothing.db'}")
    assert not (tmp_path / "nothing.db").exists()


def test_an_error_of_the_predict_function_is_one_line(store: dict[str, Any]) -> None:
    uri = f"runs:/{store['failing_id']}/broken"
    args = ["predict", uri, "--tracking-uri", str(store["folder"]), "-p", "x=3"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines == [
        "Error: the predict function raised ValueError: cannot handle 3 "
        "[1 more line(s): --traceback shows all]"
    ]
    for where in (args + ["--traceback"], ["--traceback", *args]):
        result = CliRunner().invoke(main, where)
        assert result.exit_code == 1
        assert "Traceback (most recent call last)" in result.output
        assert "in _fail" in result.output
        assert result.output.rstrip().endswith(
            "ValueError: cannot handle 3\nsecond line of the message"
        )
    ok = _run("predict", f"runs:/{store['run_id']}/model", "--tracking-uri", str(store["folder"]))
    assert ok.exit_code == 1
    assert "PredictArgumentError" in ok.output
    assert len(ok.output.strip().splitlines()) == 1


@pytest.mark.parametrize("command", ["inspect", "predict"])
def test_reads_never_create_a_store(
    command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forgetting --tracking-uri, or giving a folder that holds no store, creates nothing."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    empty = tmp_path / "not_a_store"
    empty.mkdir()
    forgot = CliRunner().invoke(main, [command, "runs:/0123abcd/model"])
    assert forgot.exit_code == 2, forgot.output
    assert "give it with --tracking-uri STORE" in forgot.output
    wrong = CliRunner().invoke(
        main, [command, "runs:/0123abcd/model", "--tracking-uri", str(empty)]
    )
    assert wrong.exit_code == 1, wrong.output
    assert "No tracking store at" in wrong.output
    assert "Give the folder that was given to prepare_env" in wrong.output
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["not_a_store"]
