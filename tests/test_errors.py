"""Every error of the core promise: raised before anything is written, with a message that names
the bad value (and lists the valid ones where there are any).

Messages are matched on the names they must contain, never on exact wording.
"""

from __future__ import annotations

import threading
from pathlib import Path

import mlflow
import pytest
from conftest import UserModules
from helpers import sqlite_uri

import cloudflow
from cloudflow.exceptions import (
    BundleArgumentError,
    CaptureError,
    CloudflowError,
    ModelKeyError,
    NotFoundError,
    PredictArgumentError,
)

UNKNOWN_RUN_ID = "0123456789abcdef0123456789abcdef"


def predict_fn(sentiment_model, input_type, data=None):
    return sentiment_model, input_type, data


def seed_save(store: Path, predict_function, models) -> None:
    """The seed API's save, inside a run, as users write it."""
    experiment_id = cloudflow.prepare_env(str(store), "errors")
    with mlflow.start_run(experiment_id=experiment_id) as run:
        cloudflow.cloudflow_model().save(
            tracking_uri=str(store),
            experiment_id="errors",
            run_id=run.info.run_id,
            predict_function=predict_function,
            models=models,
        )


def assert_nothing_saved(target: Path) -> None:
    """No bundle anywhere under ``target`` (a whole tracking store)."""
    if target.exists():
        assert sorted(target.rglob("MLmodel")) == []


# -- save: arguments are checked before anything is written ------------------------------------


def test_model_key_not_a_parameter(tmp_path: Path) -> None:
    path = tmp_path / "not_created" / "bundle"
    with pytest.raises(ModelKeyError, match="sentiment_modle") as info:
        cloudflow.save_bundle(predict_fn, {"sentiment_modle": object()}, path)
    message = str(info.value)
    for parameter in ("sentiment_model", "input_type", "data"):
        assert parameter in message, f"the message does not list {parameter!r}: {message}"
    assert isinstance(info.value, KeyError)
    assert isinstance(info.value, CloudflowError)
    assert not (tmp_path / "not_created").exists()


def test_model_key_not_a_parameter_through_the_seed_api(tmp_path: Path, mlflow_state: None) -> None:
    store = tmp_path / "store"
    with pytest.raises(ModelKeyError, match="summarization_model"):
        seed_save(store, predict_fn, {"summarization_model": object()})
    assert_nothing_saved(store)


@pytest.mark.parametrize("not_callable", ["predict_fn", 42, None])
def test_predict_fn_not_callable(tmp_path: Path, not_callable: object) -> None:
    path = tmp_path / "bundle"
    with pytest.raises(BundleArgumentError, match=r"(?i)callable"):
        cloudflow.save_bundle(not_callable, {"sentiment_model": object()}, path)
    assert not path.exists()


def test_predict_function_not_callable_through_the_seed_api(
    tmp_path: Path, mlflow_state: None
) -> None:
    store = tmp_path / "store"
    with pytest.raises(BundleArgumentError, match=r"(?i)callable"):
        seed_save(store, "predict_to_save", {"sentiment_model": object()})
    assert_nothing_saved(store)


@pytest.mark.parametrize(
    "models",
    [
        pytest.param([("sentiment_model", 1)], id="list"),
        pytest.param("sentiment_model", id="str"),
        pytest.param(None, id="none"),
    ],
)
def test_models_not_a_dict(tmp_path: Path, models: object) -> None:
    path = tmp_path / "bundle"
    with pytest.raises(BundleArgumentError, match="models"):
        cloudflow.save_bundle(predict_fn, models, path)
    assert not path.exists()


@pytest.mark.parametrize(
    ("key", "name_in_message"),
    [(4242, "4242"), (b"sentiment_model", "sentiment_model"), (("a", "b"), "'a', 'b'")],
    ids=["int", "bytes", "tuple"],
)
def test_models_key_not_a_string(tmp_path: Path, key: object, name_in_message: str) -> None:
    path = tmp_path / "bundle"
    with pytest.raises(BundleArgumentError, match=name_in_message):
        cloudflow.save_bundle(predict_fn, {key: object()}, path)
    assert not path.exists()


def test_unpicklable_model_leaves_nothing_behind(tmp_path: Path) -> None:
    path = tmp_path / "bundle"
    with pytest.raises(CaptureError, match="sentiment_model"):
        cloudflow.save_bundle(predict_fn, {"sentiment_model": threading.Lock()}, path)
    assert not path.exists()
    assert sorted(tmp_path.iterdir()) == []  # no temp folder left next to it either


# -- load: unknown experiment or run -----------------------------------------------------------


@pytest.fixture
def store_with_experiment(tmp_path: Path, mlflow_state: None) -> Path:
    """A tracking folder with one experiment, "errors", that holds no run."""
    store = tmp_path / "store"
    cloudflow.prepare_env(str(store), "errors")
    return store


@pytest.mark.parametrize("experiment", ["no-such-experiment-3f9", "987654"])
def test_unknown_experiment_at_load(store_with_experiment: Path, experiment: str) -> None:
    model = cloudflow.cloudflow_model()
    with pytest.raises(NotFoundError, match=experiment) as info:
        model.load_model(
            tracking_uri=str(store_with_experiment), experiment_id=experiment, run_id=UNKNOWN_RUN_ID
        )
    assert isinstance(info.value, LookupError)
    client = mlflow.MlflowClient(tracking_uri=sqlite_uri(store_with_experiment))
    assert client.get_experiment_by_name(experiment) is None  # loading never creates one


def test_unknown_run_at_load(store_with_experiment: Path) -> None:
    model = cloudflow.cloudflow_model()
    with pytest.raises(NotFoundError, match=UNKNOWN_RUN_ID):
        model.load_model(
            tracking_uri=str(store_with_experiment), experiment_id="errors", run_id=UNKNOWN_RUN_ID
        )


def test_unknown_run_in_a_runs_uri(store_with_experiment: Path) -> None:
    mlflow.set_tracking_uri(sqlite_uri(store_with_experiment))
    with pytest.raises(NotFoundError, match=UNKNOWN_RUN_ID):
        cloudflow.load_bundle(f"runs:/{UNKNOWN_RUN_ID}/model")


def test_missing_local_path_at_load(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no_bundle_here"):
        cloudflow.load_bundle(str(tmp_path / "no_bundle_here"))


# -- predict: unknown or missing parameters -----------------------------------------------------


@pytest.fixture
def saved_errmod(user_modules: UserModules, tmp_path: Path, mlflow_state: None) -> dict:
    """One small predict function saved both ways; the source stays importable."""
    user_modules.write(
        {
            "errmod_main.py": """
                def predict(scorer, threshold_value, data=None):
                    return scorer["k"] * threshold_value
            """
        }
    )
    import errmod_main

    bundle = tmp_path / "bundle"
    cloudflow.save_bundle(errmod_main.predict, {"scorer": {"k": 2}}, bundle)
    store = tmp_path / "store"
    experiment_id = cloudflow.prepare_env(str(store), "predict-errors")
    with mlflow.start_run(experiment_id=experiment_id) as run:
        cloudflow.cloudflow_model().save(
            tracking_uri=str(store),
            experiment_id="predict-errors",
            run_id=run.info.run_id,
            predict_function=errmod_main.predict,
            models={"scorer": {"k": 2}},
        )
    seed = cloudflow.cloudflow_model()
    seed.load_model(tracking_uri=str(store), experiment_id="predict-errors", run_id=run.info.run_id)
    return {"bundle": cloudflow.load_bundle(str(bundle)), "seed": seed}


@pytest.mark.parametrize("api", ["bundle", "seed"])
def test_unknown_parameter_at_predict(saved_errmod: dict, api: str) -> None:
    model = saved_errmod[api]
    assert model.predict(threshold_value=5) == 10
    with pytest.raises(PredictArgumentError, match="bogus_param") as info:
        model.predict(threshold_value=5, bogus_param=1)
    for parameter in ("threshold_value", "data"):
        assert parameter in str(info.value)
    assert isinstance(info.value, TypeError)


@pytest.mark.parametrize("api", ["bundle", "seed"])
def test_missing_parameter_at_predict(saved_errmod: dict, api: str) -> None:
    model = saved_errmod[api]
    with pytest.raises(PredictArgumentError, match="threshold_value") as info:
        model.predict(data=[1])
    assert "data" in str(info.value)
