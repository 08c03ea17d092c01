"""What a newcomer types in the first hour, and the errors that must point to the fix.

Each test does what a new user did: a model URI without a store, a bare run id, a name from the
other API, a typo in a tracking URI. Each error is a :class:`CloudflowError` that says where it
looked and what was meant; a failed read leaves nothing in the working folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import pytest
from click.testing import CliRunner
from conftest import restored_mlflow_state
from helpers import run_snippet, sqlite_uri

import cloudflow
from cloudflow.cli import main
from cloudflow.exceptions import (
    BundleArgumentError,
    CaptureError,
    ModelKeyError,
    NotFoundError,
    PredictArgumentError,
)

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
    named = rf"No run with id '{UNKNOWN_RUN_ID}' in the tracking store '.*store'"
    with pytest.raises(NotFoundError, match=named):
        cloudflow.load_bundle(f"runs:/{UNKNOWN_RUN_ID}/model")


def test_a_bare_run_id_suggests_its_runs_uri(saved: dict[str, Any]) -> None:
    run_id = saved["run_id"]
    with pytest.raises(NotFoundError, match=rf"looks like a run id.*'runs:/{run_id}/model'"):
        cloudflow.load_bundle(run_id)


@pytest.mark.usefixtures("mlflow_state")
def test_a_wrong_model_name_lists_the_runs_models(saved: dict[str, Any]) -> None:
    mlflow.set_tracking_uri(sqlite_uri(saved["store"]))
    run_id = saved["run_id"]
    listed = r"no model named 'modle'; its models: \['model', 'reviews'\]"
    with pytest.raises(NotFoundError, match=listed):
        cloudflow.load_bundle(f"runs:/{run_id}/modle")


# -- 3. Names from the other API ---------------------------------------------------------------


def _seed_save(**kwargs: Any) -> Any:
    return cloudflow.cloudflow_model().save(**kwargs)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: _seed_save(tracking_uri="s", experiment_id="e", run_id="r", predict_fn=len),
            r"save\(\) takes no argument 'predict_fn'; did you mean predict_function",
        ),
        (
            lambda: _seed_save(predict_function=predict_fn, model={"weights": {}}),
            r"takes no argument 'model'; did you mean models",
        ),
        (
            lambda: _seed_save(predict_function=predict_fn, python_model=predict_fn),
            r"takes no argument 'python_model'; did you mean predict_function",
        ),
        (
            lambda: _seed_save(predict_function=predict_fn, artifact_path="m"),
            r"'artifact_path': the seed save always names the model 'model'.*log_bundle",
        ),
        (
            lambda: cloudflow.prepare_env("s", experiment_name="e"),
            r"prepare_env\(\) takes no argument 'experiment_name'; did you mean experiment_id",
        ),
        (
            lambda: cloudflow.log_bundle(predict_fn, {}, artifact_path="m"),
            r"log_bundle\(\) takes no argument 'artifact_path'; did you mean name",
        ),
        (
            lambda: cloudflow.log_bundle(predict_function=predict_fn, models={}),
            r"log_bundle\(\) takes no argument 'predict_function'; did you mean predict_fn",
        ),
        (
            lambda: cloudflow.save_bundle(python_model=predict_fn, models={}, path="x"),
            r"save_bundle\(\) takes no argument 'python_model'; did you mean predict_fn",
        ),
        (
            lambda: cloudflow.save_bundle(predict_fn, model={}, path="x"),
            r"save_bundle\(\) takes no argument 'model'; did you mean models",
        ),
        (
            lambda: cloudflow.load_bundle(path="x"),
            r"load_bundle\(\) takes no argument 'path'; did you mean model_uri",
        ),
        (
            lambda: cloudflow.log_bundle(predict_fn, {}, pip_requirement=["x"]),
            r"takes no argument 'pip_requirement'; did you mean 'pip_requirements'\?",
        ),
    ],
)
def test_a_name_from_the_other_api_says_which_is_meant(
    call: Any, match: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BundleArgumentError, match=match) as caught:
        call()
    assert isinstance(caught.value, TypeError)
    assert list(tmp_path.iterdir()) == []


def test_predict_takes_one_dict_as_pyfunc_does(tmp_path: Path) -> None:
    cloudflow.save_bundle(predict_fn, {"weights": {"good": 2}}, tmp_path / "bundle")
    bundle = cloudflow.load_bundle(tmp_path / "bundle")
    assert bundle.predict({"text": "good bad"}) == [2, 0]
    assert bundle.predict(text="good bad") == [2, 0]
    how = r"by name, got 2 by position\. Call bundle\.predict\(text=\.\.\.\), or give one dict"
    with pytest.raises(PredictArgumentError, match=how):
        bundle.predict("wine", "good")


# -- 4. A seed save into a mistyped store ------------------------------------------------------


@pytest.mark.usefixtures("mlflow_state")
def test_a_save_into_a_mistyped_store_touches_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    exp = cloudflow.prepare_env("saving_path", "experiment_name")
    with mlflow.start_run(experiment_id=exp) as run:
        typo = r"No tracking store at 'savng_path'.*MLflow points at .*saving_path"
        with pytest.raises(NotFoundError, match=typo):
            cloudflow.cloudflow_model().save(
                tracking_uri="savng_path",
                experiment_id=exp,
                run_id=run.info.run_id,
                predict_function=predict_fn,
                models={"weights": {}},
            )
        assert mlflow.get_tracking_uri() == sqlite_uri(tmp_path / "saving_path")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saving_path"]
    assert mlflow.MlflowClient().get_run(run.info.run_id).info.status == "FINISHED"


# -- Leftovers: raw TypeError, OSError and DatabaseError ---------------------------------------


def test_load_model_without_a_tracking_uri_says_what_to_give() -> None:
    with pytest.raises(BundleArgumentError, match=r"tracking_uri must be a folder.*got None"):
        cloudflow.cloudflow_model().load_model(None, "exp", UNKNOWN_RUN_ID)


def test_a_model_key_too_long_for_a_file_name_is_refused(tmp_path: Path) -> None:
    def predict(**kwargs):
        return sorted(kwargs)

    with pytest.raises(ModelKeyError, match=r"is 300 characters long.*at most 200 bytes"):
        cloudflow.save_bundle(predict, {"k" * 300: 1}, tmp_path / "bundle")
    assert list(tmp_path.iterdir()) == []


def test_a_model_name_passed_to_a_kwargs_predict_function_is_named(tmp_path: Path) -> None:
    def predict(**kwargs):
        return sorted(kwargs)

    cloudflow.save_bundle(predict, {"weights": 1}, tmp_path / "bundle")
    bundle = cloudflow.load_bundle(tmp_path / "bundle")
    assert bundle.predict(text="x") == ["text", "weights"]
    with pytest.raises(PredictArgumentError, match=r"'weights' is a model of this bundle"):
        bundle.predict(weights=2)


def test_a_damaged_database_named_by_its_sqlite_uri_is_a_store_error(
    saved: dict[str, Any], tmp_path: Path
) -> None:
    damaged = tmp_path / "damaged.db"
    data = bytearray((saved["store"] / "mlflow.db").read_bytes())
    data[100:4100] = b"x" * 4000
    damaged.write_bytes(bytes(data))
    done = CliRunner().invoke(main, ["list", "--tracking-uri", f"sqlite:///{damaged}"])
    assert done.exit_code != 0
    assert "StoreError: The tracking store's database is damaged" in done.output
    assert "Traceback" not in done.output


# -- 5. A second model of one name in a run ----------------------------------------------------


@pytest.mark.usefixtures("mlflow_state")
def test_list_marks_a_model_a_newer_one_of_its_name_hides(tmp_path: Path) -> None:
    from cloudflow.store.listing import format_text, list_store

    exp = cloudflow.prepare_env(str(tmp_path / "store"), "twice")
    with mlflow.start_run(experiment_id=exp) as run:
        first = cloudflow.log_bundle(predict_fn, {"weights": {"good": 1}})
        second = cloudflow.log_bundle(predict_fn, {"weights": {"good": 2}})
    listing = list_store(tmp_path / "store")
    (listed,) = [r for e in listing["experiments"] for r in e["runs"]]
    assert listed["run_id"] == run.info.run_id
    assert [(b["model_id"], b["shadowed"]) for b in listed["bundles"]] == [
        (first.model_id, second.model_id),
        (second.model_id, False),
    ]
    text = format_text(listing)
    assert "model (older: runs:/ loads the newer)" in text
    assert "load the older by its model id, models:/<MODEL ID>" in text


# -- 6. Small things -------------------------------------------------------------------------


def test_a_failed_save_into_a_missing_parent_leaves_no_folder(tmp_path: Path) -> None:
    import threading

    def predict(weights, text):
        return text

    with pytest.raises(CaptureError, match=r"lock"):
        cloudflow.save_bundle(predict, {"weights": threading.Lock()}, tmp_path / "a" / "b" / "c")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0 B"), (999, "999 B"), (1536, "1.5 kB"), (1_000_000, "1.0 MB"), (2**30, "1.1 GB")],
)
def test_sizes_are_in_powers_of_1000(n: int, text: str) -> None:
    from cloudflow._units import human_size, parse_size

    assert human_size(n) == text
    assert parse_size("1.5kB") == 1500
    assert parse_size("1GiB") == 2**30
    assert parse_size("12 parsecs") is None


@pytest.mark.usefixtures("mlflow_state")
def test_the_log_names_where_the_bundle_is_and_sizes_agree(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from cloudflow._units import human_size

    exp = cloudflow.prepare_env(str(tmp_path / "store"), "sizes")
    with caplog.at_level("INFO", logger="cloudflow"), mlflow.start_run(experiment_id=exp):
        info = cloudflow.log_bundle(predict_fn, {"weights": {"good": 1}})
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Logged")]
    (line,) = logged
    assert line.endswith(f"{info.model_id}/artifacts")
    assert (tmp_path / "store" / "artifacts").as_uri() in line
    assert ".cloudflow-staging" not in caplog.text

    uri = f"runs:/{info.run_id}/model"
    store = ["--tracking-uri", str(tmp_path / "store")]
    listed = CliRunner().invoke(main, ["list", *store])
    inspected = CliRunner().invoke(main, ["inspect", uri, *store, "--json"])
    described = CliRunner().invoke(main, ["inspect", uri, *store])
    exported = CliRunner().invoke(main, ["export", uri, str(tmp_path / "copy"), *store])
    for done in (listed, inspected, described, exported):
        assert done.exit_code == 0, done.output
    size = human_size(json.loads(inspected.output)["size_bytes"])
    assert size.endswith((" B", " kB", " MB", " GB"))  # powers of 1000, as du --si prints them
    assert f"  {size}  " in listed.output
    assert f"every file matches its digest; {size})" in described.output
    assert exported.output.rstrip().endswith(f"files and the manifest, {size})")
    recorded = json.loads((tmp_path / "copy" / "cloudflow" / "manifest.json").read_text())
    count = len(recorded["files"]) + len(recorded["outer_files"])
    assert f"({count} files and the manifest" in exported.output


def test_annotated_inputs_are_typed_beside_one_only_imported_for_type_checking(
    user_modules: Any,
) -> None:
    from cloudflow.capture.signature import infer_signature

    user_modules.write(
        {
            "typed_predict.py": (
                "from __future__ import annotations\n"
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n"
                "    import pandas as pd\n\n\n"
                "def predict(m, input_type: str, data: list[list[float]] | None = None,\n"
                "            frame: pd.DataFrame | None = None):\n"
                "    return input_type\n"
            )
        }
    )
    from typed_predict import predict  # type: ignore[import-not-found]

    inputs = {c.name: str(c.type) for c in infer_signature(predict, ["m"]).inputs}
    assert inputs == {
        "input_type": "DataType.string",
        "data": "Array(Array(double))",
        "frame": "Any",
    }
