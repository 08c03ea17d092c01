"""Resolving ``runs:/`` in an sqlite store: the direct read agrees with MLflow's client.

``fast_run_model`` reads the run and its logged models straight from the database, to skip the
ORM's per-process query compilation. It must give what ``MlflowClient`` gives in the plain case
(a run with a finished model) and step aside (None) in every other one, so that MLflow's client
answers with its full error. Each case is checked against the real store MLflow wrote.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import mlflow
import pytest

import cloudflow
from cloudflow.exceptions import NotFoundError
from cloudflow.store import tracking as _store


def _predict(x):
    return x + 1


@pytest.fixture
def store(tmp_path: Path, mlflow_state: None) -> dict[str, Any]:
    folder = tmp_path / "store"
    experiment_id = cloudflow.prepare_env(str(folder), "lookup")
    uri = _store.resolve_tracking_uri(folder)
    mlflow.set_tracking_uri(uri)
    return {"folder": folder, "uri": uri, "experiment_id": experiment_id}


def _client_location(uri: str, run_id: str, name: str = "model") -> str:
    """The newest READY model of the run, found through MLflow's client only."""
    client = mlflow.MlflowClient(uri)
    run = client.get_run(run_id)
    models = client.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string=f"name = '{name}'"
    )
    ready = [m for m in models if m.source_run_id == run_id and str(m.status) == "READY"]
    return str(max(ready, key=lambda m: m.creation_timestamp).artifact_location)


def _log(experiment_id: str, name: str = "model") -> str:
    with mlflow.start_run(experiment_id=experiment_id) as run:
        cloudflow.log_bundle(_predict, {}, name=name)
    return run.info.run_id


def test_a_finished_model_resolves_to_what_the_client_finds(store: dict[str, Any]) -> None:
    run_id = _log(store["experiment_id"])
    fast = _store.fast_run_model(store["uri"], run_id, "model")
    assert fast is not None
    assert fast.artifact_location == _client_location(store["uri"], run_id)
    assert fast.experiment_id == store["experiment_id"]
    assert fast.experiment_name == "lookup"
    assert cloudflow.load_bundle(f"runs:/{run_id}/model").predict(x=1) == 2


def test_the_newest_of_two_models_with_one_name_wins(store: dict[str, Any]) -> None:
    with mlflow.start_run(experiment_id=store["experiment_id"]) as run:
        cloudflow.log_bundle(_predict, {}, name="model")
        cloudflow.log_bundle(lambda x: x + 2, {}, name="model")
    run_id = run.info.run_id
    fast = _store.fast_run_model(store["uri"], run_id, "model")
    assert fast is not None
    assert fast.artifact_location == _client_location(store["uri"], run_id)
    assert cloudflow.load_bundle(f"runs:/{run_id}/model").predict(x=1) == 3


def test_other_names_runs_and_experiments_step_aside(store: dict[str, Any]) -> None:
    run_id = _log(store["experiment_id"])
    other = cloudflow.prepare_env(str(store["folder"]), "other")
    assert _store.fast_run_model(store["uri"], run_id, "elsewhere") is None
    assert _store.fast_run_model(store["uri"], "0" * 32, "model") is None
    assert _store.fast_run_model(store["uri"], run_id, "model", experiment="other") is None
    assert _store.fast_run_model(store["uri"], run_id, "model", experiment=other) is None
    by_name = _store.fast_run_model(store["uri"], run_id, "model", experiment="lookup")
    by_id = _store.fast_run_model(store["uri"], run_id, "model", experiment=store["experiment_id"])
    assert by_name == by_id
    assert by_name is not None
    with pytest.raises(NotFoundError, match=r"No run with id '0{32}'.*Check the run id"):
        cloudflow.load_bundle(f"runs:/{'0' * 32}/model")


def test_an_experiment_named_like_another_ones_id_is_looked_up_by_name_first(
    store: dict[str, Any],
) -> None:
    # find_experiment takes a name before an id: so does the direct read.
    run_id = _log(store["experiment_id"])
    cloudflow.prepare_env(str(store["folder"]), store["experiment_id"])  # named "1", say
    assert (
        _store.fast_run_model(store["uri"], run_id, "model", experiment=store["experiment_id"])
        is None
    )
    with pytest.raises(NotFoundError, match=r"is not in experiment"):
        cloudflow.cloudflow_model().load_model(
            tracking_uri=str(store["folder"]),
            experiment_id=store["experiment_id"],
            run_id=run_id,
        )


def test_an_unfinished_or_deleted_model_goes_to_the_client(store: dict[str, Any]) -> None:
    run_id = _log(store["experiment_id"])
    client = mlflow.MlflowClient(store["uri"])
    (model,) = client.search_logged_models(experiment_ids=[store["experiment_id"]])
    client.delete_logged_model(model.model_id)
    assert _store.fast_run_model(store["uri"], run_id, "model") is None

    with mlflow.start_run(experiment_id=store["experiment_id"]) as run:
        pending = mlflow.initialize_logged_model(name="model", source_run_id=run.info.run_id)
    assert str(pending.status) == "PENDING"
    assert _store.fast_run_model(store["uri"], run.info.run_id, "model") is None
    with pytest.raises(NotFoundError, match=r"was never finished.*Save it again"):
        cloudflow.load_bundle(f"runs:/{run.info.run_id}/model")


def test_stores_it_cannot_read_step_aside(store: dict[str, Any], tmp_path: Path) -> None:
    run_id = _log(store["experiment_id"])
    assert _store.fast_run_model("http://127.0.0.1:9", run_id, "model") is None
    assert _store.fast_run_model(f"sqlite:///{tmp_path / 'absent.db'}", run_id, "model") is None
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE runs (run_uuid TEXT)")
    assert _store.fast_run_model(f"sqlite:///{foreign}", run_id, "model") is None
    assert not (tmp_path / "absent.db").exists()  # read-only: nothing created


def test_the_status_table_decodes_as_mlflow_does() -> None:
    """The lookup and ``cloudflow list`` decode statuses without MLflow: same table as its own."""
    from mlflow.entities.logged_model_status import LoggedModelStatus

    for number, name in _store.LOGGED_MODEL_STATUS.items():
        assert str(LoggedModelStatus.from_int(number)) == name
        assert LoggedModelStatus[name].to_int() == number
    assert {s.value for s in LoggedModelStatus} == set(_store.LOGGED_MODEL_STATUS.values())
