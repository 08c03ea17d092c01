"""Every error of the core promise: raised before anything is written, with a message that names
the bad value (and lists the valid ones where there are any).

Messages are matched on the names they must contain, never on exact wording.
"""

from __future__ import annotations

import importlib
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from conftest import restored_mlflow_state
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


def seed_save(store: Path, experiment: str, predict_function, models) -> None:
    """The seed API's save, inside a run, as users write it."""
    experiment_id = cloudflow.prepare_env(str(store), experiment)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        cloudflow.cloudflow_model().save(
            tracking_uri=str(store),
            experiment_id=experiment,
            run_id=run.info.run_id,
            predict_function=predict_function,
            models=models,
        )


def assert_nothing_logged(store: Path, experiment: str) -> None:
    """The experiment's run (the last one started) has no artifact, and no model was logged."""
    client = mlflow.MlflowClient(tracking_uri=sqlite_uri(store))
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([experiment_id])
    assert len(runs) == 1
    assert client.list_artifacts(runs[0].info.run_id) == []
    assert list(client.search_logged_models(experiment_ids=[experiment_id])) == []


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One tracking folder for the module (creating an sqlite store takes seconds).

    It holds the experiment "errors", which has no run.
    """
    with restored_mlflow_state():
        store = tmp_path_factory.mktemp("errors") / "store"
        cloudflow.prepare_env(str(store), "errors")
        yield store


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


def test_model_key_not_a_parameter_through_the_seed_api(store: Path) -> None:
    with pytest.raises(ModelKeyError, match="summarization_model"):
        seed_save(store, "seed-model-key", predict_fn, {"summarization_model": object()})
    assert_nothing_logged(store, "seed-model-key")


@pytest.mark.parametrize("not_callable", ["predict_to_save_result", 4242, None])
def test_predict_fn_not_callable(tmp_path: Path, not_callable: object) -> None:
    path = tmp_path / "bundle"
    with pytest.raises(BundleArgumentError, match=re.escape(repr(not_callable))):
        cloudflow.save_bundle(not_callable, {"sentiment_model": object()}, path)
    assert not path.exists()


def test_predict_function_not_callable_through_the_seed_api(store: Path) -> None:
    with pytest.raises(BundleArgumentError, match="predict_to_save"):
        seed_save(store, "seed-not-callable", "predict_to_save", {"sentiment_model": object()})
    assert_nothing_logged(store, "seed-not-callable")


@pytest.mark.parametrize(
    "models",
    [
        pytest.param([("sentiment_model", 1)], id="list"),
        pytest.param("sentiment_model", id="str"),
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


@pytest.mark.parametrize("experiment", ["no-such-experiment-3f9", "987654"])
def test_unknown_experiment_at_load(store: Path, experiment: str) -> None:
    model = cloudflow.cloudflow_model()
    with pytest.raises(NotFoundError, match=experiment) as info:
        model.load_model(tracking_uri=str(store), experiment_id=experiment, run_id=UNKNOWN_RUN_ID)
    assert isinstance(info.value, LookupError)
    client = mlflow.MlflowClient(tracking_uri=sqlite_uri(store))
    assert client.get_experiment_by_name(experiment) is None  # loading never creates one


def test_unknown_run_at_load(store: Path) -> None:
    model = cloudflow.cloudflow_model()
    with pytest.raises(NotFoundError, match=UNKNOWN_RUN_ID):
        model.load_model(tracking_uri=str(store), experiment_id="errors", run_id=UNKNOWN_RUN_ID)


def test_unknown_run_in_a_runs_uri(store: Path) -> None:
    mlflow.set_tracking_uri(sqlite_uri(store))
    with pytest.raises(NotFoundError, match=UNKNOWN_RUN_ID):
        cloudflow.load_bundle(f"runs:/{UNKNOWN_RUN_ID}/model")


def test_missing_local_path_at_load(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no_bundle_here"):
        cloudflow.load_bundle(str(tmp_path / "no_bundle_here"))


# -- predict: unknown or missing parameters -----------------------------------------------------


@pytest.fixture(scope="module")
def saved_errmod(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """One small predict function saved both ways and loaded; the source stays importable."""
    root = tmp_path_factory.mktemp("errmod")
    (root / "errmod_main.py").write_text(
        "def predict(scorer, threshold_value, data=None):\n"
        '    return scorer["k"] * threshold_value\n',
        encoding="utf-8",
    )
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    try:
        import errmod_main

        bundle = root / "bundle"
        cloudflow.save_bundle(errmod_main.predict, {"scorer": {"k": 2}}, bundle)
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
        seed.load_model(
            tracking_uri=str(store), experiment_id="predict-errors", run_id=run.info.run_id
        )
        yield {"bundle": cloudflow.load_bundle(str(bundle)), "seed": seed}
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("errmod_main", None)


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
