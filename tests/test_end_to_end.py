"""The promise, end to end: save a multi-module project, delete its source, load it elsewhere.

Project A (tests/fixtures/project_a) is copied to a temp dir, saved through the seed API in a
subprocess, and the copy deleted (the ``saved_project_a`` session fixture). One fresh subprocess,
started from an empty working directory with no ``PYTHONPATH`` to the project, then loads the bundle
every supported way and answers every case; each test below checks one of those ways.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import SavedProject
from helpers import (
    FIXTURES_DIR,
    assert_same_predictions,
    grep_tree,
    outcome,
    requirement_names,
    run_snippet,
    source_fragments,
    sqlite_uri,
)

# Cases whose keys are the same, so that they fit one DataFrame (one row per call).
FRAME_KEYS = {"input_type", "data"}

LOADER = r"""
import importlib.util
import json
import sys
from pathlib import Path

spec = json.loads(sys.argv[1])
cases = spec["cases"]
results["environment"] = {"ok": True, "value": {
    "cwd_entries": sorted(p.name for p in Path.cwd().iterdir()),
    "importable": {
        name: importlib.util.find_spec(name) is not None
        for name in ("predict_app", "plugins", "utils")
    },
}}

import cloudflow


def seed(experiment):
    model = cloudflow.cloudflow_model()
    model.load_model(tracking_uri=spec["store"], experiment_id=experiment, run_id=spec["run_id"])
    return [model.predict(**case) for case in cases]


# The seed API first: it must work in a process where nothing set MLflow up.
attempt("seed_by_name", lambda: seed(spec["experiment_name"]))
attempt("seed_by_id", lambda: seed(spec["experiment_id"]))

import mlflow

mlflow.set_tracking_uri(spec["tracking_uri"])
uri = f"runs:/{spec['run_id']}/model"


def bundle_by(model_uri):
    bundle = cloudflow.load_bundle(model_uri)
    return {
        "path": str(bundle.path),
        "models": sorted(bundle.models),
        "predictions": [bundle.predict(**case) for case in cases],
    }


attempt("load_bundle_runs", lambda: bundle_by(uri))
attempt("load_bundle_path", lambda: bundle_by(spec["bundle_path"]))

pyfunc = attempt("pyfunc_load", lambda: mlflow.pyfunc.load_model(uri))
if pyfunc is not None:
    attempt("pyfunc_dict", lambda: [pyfunc.predict(dict(case)) for case in cases])

    def frame_predict():
        import pandas as pd

        out = pyfunc.predict(pd.DataFrame(spec["frame_rows"]))
        return {"type": type(out).__name__, "value": out if isinstance(out, list) else repr(out)}

    attempt("pyfunc_dataframe", frame_predict)

results["sentinel"] = {"ok": True, "value": Path(spec["sentinel"]).exists()}
emit(results)
"""


@pytest.fixture(scope="module")
def loaded(saved_project_a: SavedProject, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Results of the one loading subprocess (see ``LOADER``)."""
    saved = saved_project_a
    frame_rows = [case for case in saved.cases if set(case) == FRAME_KEYS]
    spec = {
        "store": str(saved.store),
        "tracking_uri": sqlite_uri(saved.store),
        "run_id": saved.run_id,
        "experiment_name": saved.experiment_name,
        "experiment_id": saved.experiment_id,
        "bundle_path": str(saved.bundle_path),
        "cases": saved.cases,
        "frame_rows": frame_rows,
        "sentinel": str(saved.sentinel),
    }
    elsewhere = tmp_path_factory.mktemp("elsewhere")  # another, empty working directory
    return run_snippet(
        LOADER,
        cwd=elsewhere,
        args=[json.dumps(spec)],
        env={"PROJECT_A_SENTINEL": str(saved.sentinel)},
    )


def assert_same_as_saved(got: Any, saved: SavedProject) -> None:
    assert_same_predictions(got, saved.cases, saved.expected)


def logged_bundle_dir(saved: SavedProject) -> Path:
    """The folder the seed save logged, found in the store (independently of any loader)."""
    mlmodels = sorted(saved.store.rglob("MLmodel"))
    assert len(mlmodels) == 1, f"expected one logged model in the store, found {mlmodels}"
    return mlmodels[0].parent


def test_saving_does_not_change_the_live_predictions(saved_project_a: SavedProject) -> None:
    assert saved_project_a.expected_after_save == saved_project_a.expected


def test_loader_runs_without_the_source(saved_project_a: SavedProject, loaded: dict) -> None:
    assert not saved_project_a.source_copy.exists()
    environment = outcome(loaded, "environment")
    assert environment["cwd_entries"] == []
    assert environment["importable"] == {"predict_app": False, "plugins": False, "utils": False}


def test_seed_load_model_by_experiment_name(saved_project_a: SavedProject, loaded: dict) -> None:
    assert_same_as_saved(outcome(loaded, "seed_by_name"), saved_project_a)


def test_seed_load_model_by_experiment_id(saved_project_a: SavedProject, loaded: dict) -> None:
    assert_same_as_saved(outcome(loaded, "seed_by_id"), saved_project_a)


def test_load_bundle_runs_uri(saved_project_a: SavedProject, loaded: dict) -> None:
    result = outcome(loaded, "load_bundle_runs")
    assert result["models"] == ["tab_model", "text_model", "torch_model"]
    assert_same_as_saved(result["predictions"], saved_project_a)


def test_load_bundle_runs_uri_reads_a_local_store_in_place(
    saved_project_a: SavedProject, loaded: dict
) -> None:
    path = Path(outcome(loaded, "load_bundle_runs")["path"]).resolve()
    assert path.is_relative_to(saved_project_a.store.resolve()), (
        f"runs:/ on a local store was copied to {path} instead of read in place"
    )


def test_save_bundle_to_a_path_then_load_bundle(
    saved_project_a: SavedProject, loaded: dict
) -> None:
    result = outcome(loaded, "load_bundle_path")
    assert Path(result["path"]).resolve() == saved_project_a.bundle_path.resolve()
    assert result["models"] == ["tab_model", "text_model", "torch_model"]
    assert_same_as_saved(result["predictions"], saved_project_a)


def test_mlflow_pyfunc_predict_with_a_dict(saved_project_a: SavedProject, loaded: dict) -> None:
    outcome(loaded, "pyfunc_load")
    assert_same_as_saved(outcome(loaded, "pyfunc_dict"), saved_project_a)


def test_mlflow_pyfunc_predict_with_a_dataframe_gives_a_list(
    saved_project_a: SavedProject, loaded: dict
) -> None:
    result = outcome(loaded, "pyfunc_dataframe")
    assert result["type"] == "list", f"DataFrame input returned {result['type']}"
    rows = [
        (case, expected)
        for case, expected in zip(saved_project_a.cases, saved_project_a.expected, strict=True)
        if set(case) == FRAME_KEYS
    ]
    assert len(rows) >= 3
    assert_same_predictions(result["value"], [c for c, _ in rows], [e for _, e in rows])


def test_module_nothing_reaches_never_ran(saved_project_a: SavedProject, loaded: dict) -> None:
    outcome(loaded, "seed_by_name")  # the loads happened
    assert outcome(loaded, "sentinel") is False
    assert not saved_project_a.sentinel.exists()


@pytest.mark.parametrize("which", ["logged", "plain path"])
def test_bundle_holds_no_source(saved_project_a: SavedProject, which: str) -> None:
    bundle = (
        logged_bundle_dir(saved_project_a) if which == "logged" else saved_project_a.bundle_path
    )
    assert (bundle / "MLmodel").is_file()
    assert sorted(bundle.rglob("*.py")) == []
    fragments = source_fragments(FIXTURES_DIR / "project_a")
    assert len(fragments["comments"]) >= 20  # the grep has teeth
    assert len(fragments["code"]) >= 60
    assert grep_tree(bundle, fragments["comments"]) == []
    assert grep_tree(bundle, fragments["code"]) == []
    # Positive control: a string value of the captured code is found by the same grep, so the
    # absence of source lines above is not an artefact of compressed or unreadable files.
    assert grep_tree(bundle, ["cf-marker-5e1d0a9c-project-a"]) != []


def test_store_holds_no_python_file(saved_project_a: SavedProject) -> None:
    assert sorted(saved_project_a.store.rglob("*.py")) == []
    assert sorted(saved_project_a.bundle_path.rglob("*.py")) == []


def test_manifest_lists_the_user_modules_the_function_reaches(
    saved_project_a: SavedProject,
) -> None:
    manifest_path = logged_bundle_dir(saved_project_a) / "cloudflow" / "manifest.json"
    captured = set(json.loads(manifest_path.read_text())["captured_modules"])
    reached = {
        "predict_app.api",
        "predict_app.decorators",
        "predict_app.labels",
        "predict_app.features.common",
        "predict_app.features.tabular",
        "predict_app.features.text.normalize",
        "plugins.scoring",  # imported inside a function body, at call time
        "utils",
    }
    assert reached <= captured, f"not captured: {sorted(reached - captured)}"
    # `from .stopwords import STOPWORDS` at import time: the value travels in normalize's
    # globals; the module itself is reached by nothing, so it does not travel.
    assert {"predict_app.features.text.stopwords", "plugins.weights"} & captured == set()
    report = json.loads(manifest_path.read_text())["captured_globals"]
    assert "STOPWORDS" in report["predict_app.features.text.normalize"]["globals"]
    assert "LABEL_BONUS" in report["plugins.scoring"]["globals"]
    never = {"predict_app.unreached", "save_project", "__main__", "models", "conftest"}
    assert captured & never == set()
    libraries = {"torch", "transformers", "sklearn", "numpy", "functools", "re", "json"}
    assert {name.split(".")[0] for name in captured} & libraries == set()


def test_manifest_lists_the_user_modules_model_classes_come_from(
    saved_project_a: SavedProject,
) -> None:
    manifest_path = logged_bundle_dir(saved_project_a) / "cloudflow" / "manifest.json"
    captured = set(json.loads(manifest_path.read_text())["captured_modules"])
    # The torch model's class lives in predict_app.nets, which the predict function never imports.
    assert "predict_app.nets" in captured


def test_mlmodel_is_a_cloudflow_flavor_not_a_pickled_python_model(
    saved_project_a: SavedProject,
) -> None:
    mlmodel = yaml.safe_load((logged_bundle_dir(saved_project_a) / "MLmodel").read_text())
    pyfunc = mlmodel["flavors"]["python_function"]
    assert pyfunc["loader_module"].split(".")[0] == "cloudflow"
    assert "python_model" not in pyfunc
    assert "cloudflow" in mlmodel["flavors"]
    assert any("version" in key for key in mlmodel["flavors"]["cloudflow"])


def test_requirements_name_the_flavor_libraries_with_versions(
    saved_project_a: SavedProject,
) -> None:
    requirements = requirement_names(logged_bundle_dir(saved_project_a) / "requirements.txt")
    for distribution in ("torch", "transformers", "scikit-learn", "numpy"):
        assert requirements.get(distribution), f"{distribution} missing or unversioned"
    assert "cloudflow" in requirements, sorted(requirements)
