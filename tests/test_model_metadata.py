"""Metadata of each model (``model_metadata=``): checked first, kept, shown, on the run.

A bundle of two models is logged with free metadata and a ``training_history`` for one of
them, through ``log_bundle`` and through the seed API; a fresh process from another working
directory finds it on ``bundle.model_metadata`` and ``cloudflow inspect`` shows it. The run
gets short tags (the final value of each history metric) and the history as metrics, one step
per epoch. Bad input is refused before anything is written, naming the bad value.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import restored_mlflow_state
from helpers import outcome, run_snippet, sqlite_uri

import cloudflow
from cloudflow.exceptions import BundleArgumentError

HISTORY = {"loss": [0.9, 0.5, 0.3], "val_accuracy": [0.6, 0.75, 0.875]}
GIVEN = {
    "scorer": {
        "dataset": "iris-v3",
        "epochs": 3,
        "tags": ["baseline", "cpu"],
        "split": (0.8, 0.2),  # a tuple is JSON's list
        "training_history": HISTORY,
    }
}


class Scorer:
    def __init__(self, k: float) -> None:
        self.k = k


def predict(scorer: Scorer, rules: dict[str, float], x: float) -> float:
    return scorer.k * x + rules["offset"]


def _models() -> dict[str, object]:
    return {"scorer": Scorer(2.0), "rules": {"offset": 1.0}}


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One bundle logged by log_bundle, one by the seed API, into an embedded store."""
    store = tmp_path_factory.mktemp("store")
    with restored_mlflow_state():
        import mlflow

        experiment_id = cloudflow.prepare_env(str(store), "metadata")
        with mlflow.start_run(experiment_id=experiment_id) as run:
            cloudflow.log_bundle(predict, _models(), model_metadata=GIVEN)
        with mlflow.start_run(experiment_id=experiment_id) as seed_run:
            cloudflow.cloudflow_model().save(
                tracking_uri=str(store),
                experiment_id="metadata",
                run_id=seed_run.info.run_id,
                predict_function=predict,
                models=_models(),
                model_metadata={"rules": {"source": "hand-written"}},
                verify=False,
            )
        client = mlflow.MlflowClient()
        tags = client.get_run(run.info.run_id).data.tags
        metrics = {
            key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
            for key in ("cloudflow.model.scorer.loss", "cloudflow.model.scorer.val_accuracy")
        }
        seed_tags = client.get_run(seed_run.info.run_id).data.tags
    return {
        "store": str(store),
        "tracking_uri": sqlite_uri(store),
        "run_id": run.info.run_id,
        "seed_run_id": seed_run.info.run_id,
        "tags": tags,
        "metrics": metrics,
        "seed_tags": seed_tags,
    }


LOADER = r"""
import json
import sys

import cloudflow
import mlflow

spec = json.loads(sys.argv[1])
mlflow.set_tracking_uri(spec["tracking_uri"])


def load(run_id):
    bundle = cloudflow.load_bundle(f"runs:/{run_id}/model")
    return {"model_metadata": bundle.model_metadata, "metadata": bundle.metadata,
            "answer": bundle.predict(x=3.0), "path": str(bundle.path)}


attempt("logged", lambda: load(spec["run_id"]))


def seed():
    model = cloudflow.cloudflow_model()
    model.load_model(tracking_uri=spec["store"], experiment_id="metadata",
                     run_id=spec["seed_run_id"])
    return model.bundle.model_metadata


attempt("seed", seed)
emit(results)
"""


@pytest.fixture(scope="module")
def loaded(logged: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    spec = {k: logged[k] for k in ("store", "tracking_uri", "run_id", "seed_run_id")}
    return run_snippet(LOADER, cwd=tmp_path_factory.mktemp("elsewhere"), args=[json.dumps(spec)])


def test_a_fresh_process_finds_each_models_metadata(loaded: dict[str, Any]) -> None:
    got = outcome(loaded, "logged")
    expected = {**GIVEN["scorer"], "split": [0.8, 0.2]}
    assert got["model_metadata"] == {"scorer": expected, "rules": {}}
    assert got["metadata"] == {}  # the bundle-wide metadata= is another thing
    assert got["answer"] == 7.0
    assert outcome(loaded, "seed") == {"scorer": {}, "rules": {"source": "hand-written"}}


def test_the_manifest_keeps_it_beside_the_described_metadata(loaded: dict[str, Any]) -> None:
    data = Path(outcome(loaded, "logged")["path"]) / "cloudflow" / "manifest.json"
    manifest = json.loads(data.read_text())
    assert manifest["model_metadata"]["scorer"]["training_history"] == HISTORY
    assert manifest["models"]["scorer"]["metadata"]["class"].endswith("Scorer")  # unchanged


def test_inspect_shows_the_metadata_and_the_history(loaded: dict[str, Any]) -> None:
    from click.testing import CliRunner

    from cloudflow.cli import main

    path = outcome(loaded, "logged")["path"]
    result = CliRunner().invoke(main, ["inspect", path], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for needle in (
        '    dataset: "iris-v3"',
        '    tags: ["baseline", "cpu"]',
        "    history loss: 0.9 -> 0.3 (3 epochs)",
        "    history val_accuracy: 0.6 -> 0.875 (3 epochs)",
    ):
        assert needle in result.output, f"{needle!r} not in:\n{result.output}"
    as_json = CliRunner().invoke(main, ["inspect", path, "--json"], catch_exceptions=False)
    models = json.loads(as_json.output)["models"]
    assert models["scorer"]["model_metadata"]["epochs"] == 3
    assert models["rules"]["model_metadata"] == {}


def test_the_run_gets_short_tags_and_the_history_as_metrics(logged: dict[str, Any]) -> None:
    tags = logged["tags"]
    assert tags["cloudflow.model.scorer.meta.dataset"] == "iris-v3"
    assert tags["cloudflow.model.scorer.meta.tags"] == "baseline, cpu"
    assert tags["cloudflow.model.scorer.history.loss"] == "0.3"  # the final value
    assert tags["cloudflow.model.scorer.history.val_accuracy"] == "0.875"
    assert tags["cloudflow.model.scorer.history.epochs"] == "3"
    assert not [k for k in tags if "training_history" in k]  # never the whole history
    assert logged["metrics"] == {
        "cloudflow.model.scorer.loss": [(0, 0.9), (1, 0.5), (2, 0.3)],
        "cloudflow.model.scorer.val_accuracy": [(0, 0.6), (1, 0.75), (2, 0.875)],
    }
    assert logged["seed_tags"]["cloudflow.model.rules.meta.source"] == "hand-written"


def test_long_values_are_shortened_in_tags_but_kept_whole(tmp_path: Path) -> None:
    from cloudflow.integrity import manifest as _manifest
    from cloudflow.runtime.inspect import TAG_VALUE_MAX, metadata_tags

    note = "x" * 1000
    cloudflow.save_bundle(
        predict, _models(), tmp_path / "b", model_metadata={"scorer": {"note": note}}
    )
    manifest = _manifest.read_manifest(tmp_path / "b" / "cloudflow")
    assert manifest.model_metadata["scorer"]["note"] == note
    tag = metadata_tags(manifest)["cloudflow.model.scorer.meta.note"]
    assert len(tag) == TAG_VALUE_MAX
    assert tag.endswith("...")


# --- refused before anything is written -----------------------------------------------------


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (
            {"scorrer": {"a": 1}},
            r"names the model 'scorrer', which is not in models; the models are 'scorer', 'rules'",
        ),
        (
            ["scorer"],
            r"model_metadata must be a dict of model name -> dict of JSON values, got list",
        ),
        ({"scorer": "iris"}, r"model_metadata\['scorer'\] must be a dict of JSON values, got str"),
        ({"scorer": {1: "a"}}, r"model_metadata\['scorer'\] keys must be str; 1 is a int"),
        ({"scorer": {"fit": len}}, r"model_metadata\['scorer'\]\['fit'\] is not JSON"),
        ({"scorer": {"best": float("nan")}}, r"\['best'\] is not JSON \(Out of range float"),
        (
            {"scorer": {"training_history": [0.9, 0.5]}},
            r"\['training_history'\] must map metric names to lists of numbers.*got list",
        ),
        (
            {"scorer": {"training_history": {"loss": 0.3}}},
            r"\['training_history'\]\['loss'\] must be a list of numbers, one per epoch; got float",
        ),
        (
            {"scorer": {"training_history": {"loss": [0.9, "0.5"]}}},
            r"\['training_history'\]\['loss'\]\[1\] is '0\.5'; a training history holds finite",
        ),
        (
            {"scorer": {"training_history": {"loss": [0.9, float("inf")]}}},
            r"\['loss'\]\[1\] is inf; a training history holds finite numbers only",
        ),
        (
            {"scorer": {"training_history": {"ok": [True]}}},
            r"\['ok'\]\[0\] is True; a training history holds finite numbers only \(int or",
        ),
    ],
)
def test_bad_model_metadata_is_refused_and_nothing_is_written(
    given: Any, message: str, tmp_path: Path
) -> None:
    with pytest.raises(BundleArgumentError, match=message):
        cloudflow.save_bundle(predict, _models(), tmp_path / "b", model_metadata=given)
    assert not (tmp_path / "b").exists()


def test_log_bundle_and_the_seed_api_refuse_it_before_logging(
    tmp_path: Path, mlflow_state: None
) -> None:
    import mlflow

    store = tmp_path / "store"
    experiment_id = cloudflow.prepare_env(str(store), "refused")
    with mlflow.start_run(experiment_id=experiment_id) as run:
        with pytest.raises(BundleArgumentError, match=r"names the model 'nope'.*'scorer', 'rules'"):
            cloudflow.log_bundle(predict, _models(), model_metadata={"nope": {}})
        with pytest.raises(BundleArgumentError, match=r"names the model 'nope'.*'scorer', 'rules'"):
            cloudflow.cloudflow_model().save(
                tracking_uri=str(store),
                experiment_id="refused",
                run_id=run.info.run_id,
                predict_function=predict,
                models=_models(),
                model_metadata={"nope": {}},
            )
    client = mlflow.MlflowClient()
    assert client.search_logged_models(experiment_ids=[experiment_id]) == []
    assert not [k for k in client.get_run(run.info.run_id).data.tags if k.startswith("cloudflow")]
