"""The model registry: log_bundle(registered_model_name=...), load by version and by alias.

Against the session's tracking server (slow: the shop project logged twice over HTTP, see
tests/servers.py), then quickly against a folder store, whose sqlite database holds a registry
too. The seed API takes a registered model as
``load_model(tracking_uri, experiment_id, run_id="models:/<name>@<alias>")``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import assert_same_predictions, outcome, run_snippet
from servers import SHOP_CASES, SHOP_EXPERIMENT, SHOP_MODEL_NAME, Server, model_server

import cloudflow

LOADER = r"""
import json, sys
spec = json.loads(sys.argv[1])
url, name, cases = spec["tracking_uri"], spec["name"], spec["cases"]
import cloudflow, mlflow

def seed(run_id):
    model = cloudflow.cloudflow_model()
    model.load_model(tracking_uri=url, experiment_id=spec["experiment"], run_id=run_id)
    return [model.predict(**case) for case in cases]

attempt("seed_alias", lambda: seed(f"models:/{name}@champion"))
attempt("seed_version_2", lambda: seed(f"models:/{name}/2"))
mlflow.set_tracking_uri(url)

def by_uri(uri):
    bundle = cloudflow.load_bundle(uri)
    return [bundle.predict(**case) for case in cases]

attempt("version_1", lambda: by_uri(f"models:/{name}/1"))
attempt("version_2", lambda: by_uri(f"models:/{name}/2"))
attempt("alias", lambda: by_uri(f"models:/{name}@champion"))
attempt("latest", lambda: by_uri(f"models:/{name}/latest"))
attempt("pyfunc_alias", lambda: mlflow.pyfunc.load_model(f"models:/{name}@champion").predict(cases))
emit(results)
"""

# Which version each way of loading must give.
WAYS = {
    "seed_alias": "v1",
    "seed_version_2": "v2",
    "version_1": "v1",
    "version_2": "v2",
    "alias": "v1",
    "latest": "v2",
    "pyfunc_alias": "v1",
}


@pytest.fixture(scope="module")
def loaded(mlflow_server: Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    spec = {
        "tracking_uri": mlflow_server.url,
        "experiment": SHOP_EXPERIMENT,
        "name": SHOP_MODEL_NAME,
        "cases": SHOP_CASES,
    }
    cwd = tmp_path_factory.mktemp("registry_loader")
    return dict(run_snippet(LOADER, cwd=cwd, args=[json.dumps(spec)], timeout=300))


@pytest.mark.slow
def test_log_bundle_registers_versions(
    shop_on_server: dict[str, Any], mlflow_server: Server
) -> None:
    import mlflow

    versions = [str(shop_on_server[v]["registered_model_version"]) for v in ("v1", "v2")]
    assert versions == ["1", "2"]
    client = mlflow.MlflowClient(mlflow_server.url, registry_uri=mlflow_server.url)
    version = client.get_model_version_by_alias(SHOP_MODEL_NAME, "champion")
    assert (version.version, version.run_id) == ("1", shop_on_server["v1"]["run_id"])
    assert client.get_model_version(SHOP_MODEL_NAME, "2").run_id == shop_on_server["v2"]["run_id"]
    # The two versions answer differently, so the tests below see which one was resolved.
    assert shop_on_server["v1"]["expected"] != shop_on_server["v2"]["expected"]


@pytest.mark.slow
@pytest.mark.parametrize("way", sorted(WAYS))
def test_load_registered_model_in_another_process(
    shop_on_server: dict[str, Any], loaded: dict[str, Any], way: str
) -> None:
    want = shop_on_server[WAYS[way]]["expected"]
    assert_same_predictions(outcome(loaded, way), SHOP_CASES, want)


@pytest.mark.slow
def test_serve_registered_model_by_alias(
    shop_on_server: dict[str, Any], mlflow_server: Server, tmp_path: Path
) -> None:
    uri = f"models:/{SHOP_MODEL_NAME}@champion"
    with model_server(uri, tmp_path / "serve.log", tracking_uri=mlflow_server.url) as server:
        status, answer = server.post_json("/invocations", {"inputs": SHOP_CASES})
    assert status == 200, answer
    assert_same_predictions(answer["predictions"], SHOP_CASES, shop_on_server["v1"]["expected"])


# --- a folder store: its sqlite database holds the registry ----------------------------------


@pytest.fixture
def registered_in_folder(tmp_path: Path, user_modules: Any, mlflow_state: None) -> tuple[str, Any]:
    """Versions 1 (offset 1) and 2 (offset 2) of 'adder' in a folder store; champion -> 1."""
    import mlflow

    user_modules.write(
        {
            "adder_mod.py": """
                def predict(offset, x: int):
                    return x + offset["value"]
                """
        }
    )
    import adder_mod

    store = str(tmp_path / "store")
    cloudflow.prepare_env(store, "registry")
    for value in (1, 2):
        with mlflow.start_run():
            info = cloudflow.log_bundle(
                adder_mod.predict, {"offset": {"value": value}}, registered_model_name="adder"
            )
        assert str(info.registered_model_version) == str(value)
    mlflow.MlflowClient().set_registered_model_alias("adder", "champion", "1")
    return store, adder_mod


def test_registered_model_in_folder_store(registered_in_folder: tuple[str, Any]) -> None:
    store, _ = registered_in_folder
    assert cloudflow.load_bundle("models:/adder/1").predict(x=10) == 11
    assert cloudflow.load_bundle("models:/adder/2").predict(x=10) == 12
    assert cloudflow.load_bundle("models:/adder@champion").predict(x=10) == 11
    seed = cloudflow.cloudflow_model()
    seed.load_model(tracking_uri=store, experiment_id="registry", run_id="models:/adder@champion")
    assert seed.predict(x=5) == 6


def test_unknown_registered_model(registered_in_folder: tuple[str, Any]) -> None:
    store, _ = registered_in_folder
    with pytest.raises(cloudflow.NotFoundError, match="no-such-model"):
        cloudflow.cloudflow_model().load_model(store, "registry", "models:/no-such-model/1")
    with pytest.raises(cloudflow.NotFoundError, match="nobody"):
        cloudflow.load_bundle("models:/adder@nobody")
