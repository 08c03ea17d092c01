"""A store folder moved, copied or zipped and unzipped elsewhere loads and saves where it now is.

MLflow's database records absolute artifact locations; a store given to cloudflow as a folder
finds its bundles relative to itself. The store is saved in one process from a project whose
source is then deleted, handed over as a zip, and read in fresh processes from another cwd
through every way of loading; a new run logged into the copy writes inside the copy.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from helpers import assert_same_prediction, run_snippet, subprocess_env

PROJECT = {
    "shop_words/__init__.py": "",
    "shop_words/clean.py": "def words(text):\n    return text.lower().split()\n",
    "shop_words/score.py": textwrap.dedent(
        """\
        from shop_words.clean import words


        def predict(weights, bias, text):
            return [sum(weights.get(w, 0.0) for w in words(text)) + bias["value"]]
        """
    ),
}

SAVE = """
import mlflow, cloudflow
from shop_words.score import predict

exp = cloudflow.prepare_env("store", "shop")
with mlflow.start_run(experiment_id=exp) as run:
    cloudflow.cloudflow_model().save(
        tracking_uri="store", experiment_id=exp, run_id=run.info.run_id,
        predict_function=predict,
        models={"weights": {"good": 1.5, "bad": -2.0}, "bias": {"value": 0.25}},
        verify=False,
    )
emit({"run_id": run.info.run_id, "answer": predict(
    {"good": 1.5, "bad": -2.0}, {"value": 0.25}, "Good good BAD")})
"""


def _recorded_locations(store: Path) -> list[str]:
    with sqlite3.connect(store / "mlflow.db") as db:
        return [row[0] for row in db.execute("SELECT artifact_location FROM logged_models")]


@pytest.fixture(scope="module")
def handed_over(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A store saved in ``first/``, copied to ``second/``, zipped, unzipped in ``third/``; only
    the unzipped copy is left."""
    root = tmp_path_factory.mktemp("moved_store")
    source = root / "first"
    for name, text in PROJECT.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text(text, encoding="utf-8")
    saved = run_snippet(SAVE, cwd=source)
    shutil.copytree(source / "store", root / "second" / "store")
    archive = shutil.make_archive(str(root / "handover"), "zip", root / "second")
    shutil.rmtree(source)
    shutil.rmtree(root / "second")
    shutil.unpack_archive(archive, root / "third" / "unzipped")
    store = root / "third" / "unzipped" / "store"
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    return {**saved, "store": store, "cwd": elsewhere}


@pytest.mark.slow  # four fresh processes
def test_a_moved_store_loads_every_way_and_saves_inside_itself(
    handed_over: dict[str, Any],
) -> None:
    store, run_id, want = handed_over["store"], handed_over["run_id"], handed_over["answer"]
    assert all("/first/store/" in loc for loc in _recorded_locations(store))
    # load_bundle with MLflow pointed at the database itself: the locations are mapped as they
    # are read, and the database is not touched by a read.
    got = run_snippet(
        f"""
        import mlflow, cloudflow
        mlflow.set_tracking_uri("sqlite:///{store}/mlflow.db")
        bundle = cloudflow.load_bundle("runs:/{run_id}/model")
        emit(bundle.predict(text="Good good BAD"))
        """,
        cwd=handed_over["cwd"],
    )
    assert_same_prediction(got, want)
    assert all("/first/store/" in loc for loc in _recorded_locations(store))

    # The seed API, then MLflow's own pyfunc, then a new run saved into the moved store.
    got = run_snippet(
        f"""
        import mlflow, cloudflow
        m = cloudflow.cloudflow_model()
        m.load_model(tracking_uri={str(store)!r}, experiment_id="shop", run_id="{run_id}")
        seed = m.predict(text="Good good BAD")
        pyfunc = mlflow.pyfunc.load_model("runs:/{run_id}/model").predict(
            {{"text": "Good good BAD"}})
        exp = cloudflow.prepare_env({str(store)!r}, "shop")
        with mlflow.start_run(experiment_id=exp) as run:
            info = cloudflow.cloudflow_model().save(
                tracking_uri={str(store)!r}, experiment_id=exp, run_id=run.info.run_id,
                predict_function=lambda weights, bias, text: [len(text)],
                models={{"weights": {{}}, "bias": {{"value": 0}}}}, verify=False,
            )
        emit({{"seed": seed, "pyfunc": pyfunc, "new_run": run.info.run_id}})
        """,
        cwd=handed_over["cwd"],
    )
    assert_same_prediction(got["seed"], want)
    assert_same_prediction(got["pyfunc"], want)
    locations = _recorded_locations(store)
    assert len(locations) == 2
    assert all(loc.startswith((store / "artifacts").as_uri() + "/") for loc in locations)
    models = list((store / "artifacts").glob("*/models/*/artifacts/MLmodel"))
    assert len(models) == 2, models

    # The command line, in a fresh process from another cwd.
    done = subprocess.run(
        [sys.executable, "-m", "cloudflow", "predict", f"runs:/{run_id}/model"]
        + ["--tracking-uri", str(store), "-p", "text=Good good BAD"],
        cwd=handed_over["cwd"],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert_same_prediction(json.loads(done.stdout), want)


@pytest.mark.usefixtures("mlflow_state")
def test_a_store_without_its_artifacts_suggests_export(tmp_path: Path) -> None:
    import mlflow

    import cloudflow
    from cloudflow.exceptions import NotFoundError

    store = tmp_path / "store"
    exp = cloudflow.prepare_env(str(store), "shop")
    with mlflow.start_run(experiment_id=exp) as run:
        cloudflow.log_bundle(lambda weights, text: [text], {"weights": {}})
    shutil.rmtree(store / "artifacts")
    with pytest.raises(NotFoundError, match=r"was not copied.*cloudflow export"):
        cloudflow.load_bundle(f"runs:/{run.info.run_id}/model")
