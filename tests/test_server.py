"""A shared tracking server: log a bundle over HTTP, load it from other processes.

``mlflow server`` runs on 127.0.0.1 with an sqlite backend and proxied artifact storage
(``--artifacts-destination``): clients never see the artifact folder, every file goes through
HTTP. The shop project is logged from a subprocess whose source is deleted afterwards; every
load happens in a fresh process started from another directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import assert_same_predictions, outcome, run_snippet
from servers import SHOP_CASES, SHOP_EXPERIMENT, Server

pytestmark = pytest.mark.slow

EXPERIMENT = SHOP_EXPERIMENT


@pytest.fixture(scope="module")
def logged(shop_on_server: dict[str, Any]) -> dict[str, Any]:
    """The first of the two runs the session logged to the server (tests/servers.py)."""
    return dict(shop_on_server["v1"])


LOADER = r"""
import json, sys
spec = json.loads(sys.argv[1])
url, run_id, cases = spec["url"], spec["run_id"], spec["cases"]
import cloudflow, mlflow

# The seed API first, in a process where nothing set MLflow up.
def seed(experiment, run):
    model = cloudflow.cloudflow_model()
    model.load_model(tracking_uri=url, experiment_id=experiment, run_id=run)
    return [model.predict(**case) for case in cases]

attempt("seed_by_run_id", lambda: seed(spec["experiment"], run_id))
attempt("seed_by_experiment_id", lambda: seed(spec["experiment_id"], run_id))
mlflow.set_tracking_uri(url)

def by_uri(uri):
    bundle = cloudflow.load_bundle(uri)
    return [bundle.predict(**case) for case in cases]

attempt("runs_uri", lambda: by_uri(f"runs:/{run_id}/model"))
attempt("models_uri", lambda: by_uri(spec["model_uri"]))
attempt("pyfunc", lambda: mlflow.pyfunc.load_model(f"runs:/{run_id}/model").predict(cases))
emit(results)
"""


@pytest.fixture(scope="module")
def loaded(
    logged: dict[str, Any], mlflow_server: Server, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    spec = {
        "url": mlflow_server.url,
        "run_id": logged["run_id"],
        "experiment": EXPERIMENT,
        "experiment_id": logged["experiment_id"],
        "model_uri": logged["model_uri"],
        "cases": SHOP_CASES,
    }
    cwd = tmp_path_factory.mktemp("server_loader")
    return dict(run_snippet(LOADER, cwd=cwd, args=[json.dumps(spec)], timeout=300))


@pytest.mark.parametrize(
    "way", ["seed_by_run_id", "seed_by_experiment_id", "runs_uri", "models_uri", "pyfunc"]
)
def test_load_from_another_process(loaded: dict[str, Any], logged: dict[str, Any], way: str):
    assert_same_predictions(outcome(loaded, way), SHOP_CASES, logged["expected"])


def test_model_uri_is_a_logged_model(logged: dict[str, Any]) -> None:
    assert logged["model_uri"].startswith("models:/m-")


def test_artifacts_are_proxied_by_the_server(logged: dict[str, Any], mlflow_server: Server) -> None:
    """The client logged through HTTP: the files are in the server's artifact destination."""
    import mlflow

    client = mlflow.MlflowClient(mlflow_server.url)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment.artifact_location.startswith("mlflow-artifacts:")
    destination = Path(mlflow_server.log).parent / "artifacts"
    model_id = logged["model_uri"].removeprefix("models:/")
    (manifest,) = destination.rglob(f"{model_id}/**/cloudflow/manifest.json")
    bundle_root = manifest.parent.parent
    assert (bundle_root / "MLmodel").is_file()
    assert (bundle_root / "cloudflow" / "code.pkl").is_file()
    assert (manifest.parent / "models" / "mlp").is_dir()


def test_model_metadata_is_logged_as_run_tags(
    logged: dict[str, Any], mlflow_server: Server
) -> None:
    import mlflow

    tags = mlflow.MlflowClient(mlflow_server.url).get_run(logged["run_id"]).data.tags
    mlp = {k.removeprefix("cloudflow.model.mlp."): v for k, v in tags.items() if ".mlp." in k}
    assert mlp["class"] == "torch.nn.modules.container.Sequential"
    assert mlp["framework"] == "torch"
    assert mlp["flavor"] == "torch"
    assert (mlp["parameters"], mlp["trainable_parameters"], mlp["frozen_parameters"]) == (
        "275",
        "275",
        "0",
    )
    assert (mlp["dtype"], mlp["device"], mlp["layers"]) == ("float32", "cpu", "4")
    assert int(mlp["size_bytes"]) > 275 * 4
    assert tags["cloudflow.model.settings.flavor"] == "pickle"
    assert tags["cloudflow.model.predict_fn"].startswith("predict(mlp, settings, text")
    assert all(len(v) <= 250 for k, v in tags.items() if k.startswith("cloudflow."))


def test_cli_inspect_over_http(
    logged: dict[str, Any], mlflow_server: Server, mlflow_state: None
) -> None:
    from click.testing import CliRunner

    from cloudflow.cli import main

    uri = f"runs:/{logged['run_id']}/model"
    args = ["inspect", uri, "--tracking-uri", mlflow_server.url, "--json"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["integrity"]["status"] == "ok"
    assert info["run_id"] == logged["run_id"]
    assert info["path"] is None  # downloaded to a temporary folder, removed again
    assert sorted(info["models"]) == ["mlp", "settings"]


QUIET_THEN_ASKED = r"""
import os, sys
import cloudflow, mlflow
mlflow.set_tracking_uri(sys.argv[1])
cloudflow.load_bundle(sys.argv[2])
print("=== asked", file=sys.stderr, flush=True)
os.environ["CLOUDFLOW_PROGRESS"] = "1"
cloudflow.load_bundle(sys.argv[2])
"""


def test_download_bars_only_when_asked(
    logged: dict[str, Any], mlflow_server: Server, tmp_path: Path
) -> None:
    """In a log (stderr not a terminal), MLflow's 'Downloading artifacts' bars stay out."""
    import subprocess
    import sys

    from helpers import subprocess_env

    done = subprocess.run(
        [sys.executable, "-c", QUIET_THEN_ASKED, mlflow_server.url, logged["model_uri"]],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    quiet, _, asked = done.stderr.partition("=== asked")
    assert "Downloading artifacts" not in quiet
    assert "Downloading artifacts" in asked


def test_data_files_travel_through_a_server(
    mlflow_server: Server,
    user_modules: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mlflow_state: None,
) -> None:
    """A bundle downloaded from a server keeps its data files while it lives, then frees them."""
    import gc

    import mlflow

    import cloudflow

    user_modules.write(
        {
            "server_reader.py": """
                import json

                def predict(scale, key):
                    with open("data/labels.json") as f:
                        return json.load(f)[key] * scale
            """
        }
    )
    (tmp_path / "p" / "data").mkdir(parents=True)
    (tmp_path / "p" / "data" / "labels.json").write_text('{"a": 4}')
    monkeypatch.chdir(tmp_path / "p")
    import server_reader

    mlflow.set_tracking_uri(mlflow_server.url)
    experiment_id = mlflow.create_experiment("data-files-over-http")
    with mlflow.start_run(experiment_id=experiment_id) as run:
        # Downloaded whole (no file in the shared area, not even the cloudflow wheel), so the
        # load reads a download of its own, deleted once nothing reads it.
        cloudflow.log_bundle(server_reader.predict, {"scale": 3}, files=["data"], share_files=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p" / "data" / "labels.json").unlink()
    bundle = cloudflow.load_bundle(f"runs:/{run.info.run_id}/model")
    folder = bundle.path
    assert bundle.predict(key="a") == 12
    assert (folder / "cloudflow" / "files").is_dir()
    del bundle
    gc.collect()
    assert not folder.exists()


DYING = """
import os, sys, time

import mlflow

import cloudflow

url, server_pid = sys.argv[1], int(sys.argv[2])
os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"  # the upload's own retries
mlflow.set_tracking_uri(url)
experiment_id = mlflow.create_experiment("dying")
real = mlflow.MlflowClient.log_model_artifacts


def stop_then_upload(self, *args, **kwargs):
    os.killpg(server_pid, 9)  # the server dies as the files go up
    time.sleep(0.5)
    return real(self, *args, **kwargs)


mlflow.MlflowClient.log_model_artifacts = stop_then_upload
mlflow.start_run(experiment_id=experiment_id)
started = time.perf_counter()
try:
    cloudflow.log_bundle(lambda table, key: table[key], {"table": {"a": 1}})
except Exception as e:
    emit({"type": type(e).__name__, "message": str(e), "seconds": time.perf_counter() - started})
else:
    emit({"type": None})
os._exit(0)  # no end_run against the dead server at exit
"""


def test_a_server_that_dies_during_an_upload_gives_a_clear_error_quickly(
    tmp_path: Path,
) -> None:
    """One StoreError naming the server, in seconds: no raw MlflowException after minutes."""
    from servers import tracking_server

    with tracking_server(tmp_path / "server") as server:
        got = run_snippet(
            DYING, cwd=tmp_path, args=[server.url, str(server.process.pid)], timeout=600
        )
    assert got["type"] == "StoreError", got
    assert f"The tracking server {server.url} does not answer" in got["message"]
    assert got["seconds"] < 60, got
