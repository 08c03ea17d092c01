"""What a newcomer types in the first hour, and the errors that must point to the fix.

Each test does what a new user did: a model URI without a store, a bare run id, a name from the
other API, a typo in a tracking URI. Each error is a :class:`CloudflowError` that says where it
looked and what was meant; a failed read leaves nothing in the working folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pytest
from conftest import restored_mlflow_state
from helpers import run_snippet, sqlite_uri

import cloudflow
from cloudflow.exceptions import NotFoundError

UNKNOWN_RUN_ID = "0123456789abcdef0123456789abcdef"


def predict_fn(weights, text):
    return [weights.get(word, 0) for word in text.split()]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A store with one run holding the models ``model`` and ``reviews``."""
    store = tmp_path_factory.mktemp("newcomer") / "store"
    with restored_mlflow_state():
        exp = cloudflow.prepare_env(str(store), "newcomer")
        with mlflow.start_run(experiment_id=exp) as run:
            cloudflow.log_bundle(predict_fn, {"weights": {"good": 1}})
            cloudflow.log_bundle(predict_fn, {"weights": {"bad": -1}}, "reviews")
    return {"store": store, "run_id": run.info.run_id}


# -- 2. Errors that say where they looked ------------------------------------------------------


def test_a_failed_read_names_the_store_and_creates_nothing(
    saved: dict[str, Any], tmp_path: Path
) -> None:
    run_id = saved["run_id"]
    results = run_snippet(
        f"""
        import cloudflow, mlflow
        attempt("no store", lambda: cloudflow.load_bundle("runs:/{run_id}/model"))
        attempt("registry", lambda: cloudflow.load_bundle("models:/iris/1"))
        mlflow.set_tracking_uri("sqlite:///typo/mlflow.db")
        attempt("typo", lambda: cloudflow.load_bundle("runs:/{run_id}/model"))
        emit(results)
        """,
        cwd=tmp_path,
    )
    for step in ("no store", "registry"):
        assert not results[step]["ok"]
        assert (
            "NotFoundError: runs:/ and models:/ URIs are looked up in a tracking store, "
            in (results[step]["error"])
        )
        assert f"./mlflow.db of {str(tmp_path)!r}, which does not exist" in results[step]["error"]
    assert (
        "NotFoundError: The tracking store 'sqlite:///typo/mlflow.db' does not exist"
        in (results["typo"]["error"])
    )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.usefixtures("mlflow_state")
def test_an_unknown_run_names_the_store_folder(saved: dict[str, Any]) -> None:
    mlflow.set_tracking_uri(sqlite_uri(saved["store"]))
    with pytest.raises(
        NotFoundError, match=rf"No run with id '{UNKNOWN_RUN_ID}' in the tracking store '.*store'"
    ):
        cloudflow.load_bundle(f"runs:/{UNKNOWN_RUN_ID}/model")


def test_a_bare_run_id_suggests_its_runs_uri(saved: dict[str, Any]) -> None:
    run_id = saved["run_id"]
    with pytest.raises(NotFoundError, match=rf"looks like a run id.*'runs:/{run_id}/model'"):
        cloudflow.load_bundle(run_id)


@pytest.mark.usefixtures("mlflow_state")
def test_a_wrong_model_name_lists_the_runs_models(saved: dict[str, Any]) -> None:
    mlflow.set_tracking_uri(sqlite_uri(saved["store"]))
    run_id = saved["run_id"]
    with pytest.raises(
        NotFoundError, match=r"no model named 'modle'; its models: \['model', 'reviews'\]"
    ):
        cloudflow.load_bundle(f"runs:/{run_id}/modle")
