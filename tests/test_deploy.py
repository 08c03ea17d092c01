"""Every MLflow path that builds an environment from a bundle installs the bundle's own cloudflow.

A scikit-learn bundle and a torch bundle (the shop project of tests/servers.py), each with a
package of the user's, are saved in a subprocess whose source is deleted afterwards. Each path
then builds its environment from the bundle's own files, as its tool's documentation tells a
user, and must answer exactly what the function answered before saving:

- ``mlflow models predict`` and ``mlflow models serve`` (an HTTP POST) with ``--env-manager uv``;
- ``mlflow models serve --env-manager virtualenv`` (MLflow's default). ``mlflow models predict
  --env-manager virtualenv`` asks pyenv to build the bundle's Python in a fresh temporary pyenv
  root, a download this machine cannot make (no network but the package registries); ``serve``
  takes the interpreter from ``~/.pyenv``, so virtualenv is tested through ``serve``;
- ``mlflow.models.predict(..., env_manager="uv")`` and ``spark_udf(env_manager="uv")``;
- a registered ``models:/name@alias`` served with uv;
- the image of ``mlflow models generate-dockerfile``: its install step
  (``C._install_pyfunc_deps('/opt/ml/model', ...)``, which runs ``pip install -r
  /opt/ml/model/requirements.txt`` from ``WORKDIR /opt/mlflow``) and its entrypoint
  (``C._serve('local')``), run in a fresh venv in the same folder layout under a temporary root
  (no Docker engine runs here, and no base image could be pulled).

No environment has cloudflow preinstalled, and no index or find-links folder holds it: the
machine's find-links folder (only the CPU torch wheel) is given to pip and uv alike, or a torch
environment would download several GB of CUDA builds. Every environment lives under one fresh
``MLFLOW_ENV_ROOT`` for the module; uv keeps its one cache (``UV_CACHE_DIR`` if set, else uv's
own) for the session, shared with tests/pythons.py's builds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    LOCAL_SPARK,
    TESTS_DIR,
    assert_same_predictions,
    run_snippet,
    subprocess_env,
    write_files,
)
from servers import SHOP_CASES, running_server, save_shop

pytestmark = pytest.mark.slow

#: The machine's find-links folder: the CPU torch wheel, nothing else.
WHEELS = Path("/opt/wheels")
ENV_BUILD_TIMEOUT = 1200.0

IRIS_SOURCE = {
    "irisapp/__init__.py": "",
    "irisapp/features.py": """
        def rows(data, scale):
            return [[float(v) * scale for v in row] for row in data]
        """,
    "irisapp/predict.py": """
        from irisapp.features import rows

        NAMES = ["setosa", "versicolor", "virginica"]


        def predict(clf, data: list, scale: float = 1.0):
            return [NAMES[int(k)] for k in clf.predict(rows(data, scale))]
        """,
}
IRIS_CASES: list[dict[str, Any]] = [
    {"data": [[5.1, 3.5, 1.4, 0.2], [6.3, 3.3, 6.0, 2.5]]},
    {"data": [[5.9, 3.0, 4.2, 1.5]], "scale": 1.0},
    {"data": [[3.0, 1.7, 2.4, 0.8]], "scale": 2.0},
]
IRIS_SAVER = r"""
import json, sys
spec = json.loads(sys.argv[1])
sys.path.append(spec["tests_dir"])
from models import tiny_sklearn_pipeline
import cloudflow
from irisapp.predict import predict

clf = tiny_sklearn_pipeline()
cloudflow.save_bundle(predict, {"clf": clf}, spec["path"])
emit({"expected": [predict(clf, **case) for case in spec["cases"]]})
"""


def _find_links() -> list[Path]:
    folders = [WHEELS] if WHEELS.is_dir() else []
    for variable in ("PIP_FIND_LINKS", "UV_FIND_LINKS"):
        folders += [Path(p) for p in os.environ.get(variable, "").split() if Path(p).is_dir()]
    return folders


@pytest.fixture(scope="module")
def deploy_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of every deployment command: a fresh env root, no path to cloudflow."""
    for folder in _find_links():
        assert not list(folder.glob("cloudflow*")), f"{folder} holds a cloudflow"
    env = {k: v for k, v in subprocess_env().items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["MLFLOW_ENV_ROOT"] = str(tmp_path_factory.mktemp("mlflow_envs"))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["MLFLOW_MODELS_WORKERS"] = "1"
    if WHEELS.is_dir():
        env.setdefault("UV_FIND_LINKS", str(WHEELS))
        env.setdefault("PIP_FIND_LINKS", str(WHEELS))
    return env


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Both bundles, their cases and the answers before saving; the torch one also registered."""
    import mlflow

    from cloudflow.store import tracking as _store

    root = tmp_path_factory.mktemp("deploy_bundles")
    source = root / "iris_source"
    write_files(source, IRIS_SOURCE)
    spec = {"tests_dir": str(TESTS_DIR), "cases": IRIS_CASES, "path": str(root / "sklearn")}
    try:
        iris = run_snippet(IRIS_SAVER, cwd=source, args=[json.dumps(spec)], timeout=300)
    finally:
        shutil.rmtree(source)
    store = root / "store"
    saved, logged = save_shop(
        root,
        {"mode": "save", "path": str(root / "torch")},
        {
            "mode": "log",
            "tracking_uri": str(store),
            "experiment": "deploy",
            "registered_model_name": "shop-deploy",
        },
    )
    tracking_uri = _store.resolve_tracking_uri(str(store))
    client = mlflow.MlflowClient(tracking_uri, registry_uri=tracking_uri)
    client.set_registered_model_alias("shop-deploy", "champion", "1")
    assert logged["expected"] == saved["expected"]
    return {
        "sklearn": {"uri": str(root / "sklearn"), "cases": IRIS_CASES, **iris},
        "torch": {"uri": str(root / "torch"), "cases": SHOP_CASES, **saved},
        "registered": {
            "uri": "models:/shop-deploy@champion",
            "cases": SHOP_CASES,
            "tracking_uri": tracking_uri,
            **logged,
        },
    }


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> None:
    done = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=ENV_BUILD_TIMEOUT
    )
    assert done.returncode == 0, f"{argv[:5]} failed:\n{(done.stdout + done.stderr)[-5000:]}"


def _post(url: str, body: object) -> Any:
    request = urllib.request.Request(
        f"{url}/invocations",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())["predictions"]


def _cloudflows_in(env_root: Path) -> list[Path]:
    """The cloudflow packages installed in the environments MLflow built under ``env_root``."""
    found = env_root.glob("*/lib/python*/site-packages/cloudflow")  # mlflow-<hash>/ per env
    return sorted(found)


def _assert_cloudflow_from_the_bundle(site_packages_cloudflow: list[Path]) -> None:
    assert site_packages_cloudflow, "no environment holds cloudflow"
    for package in site_packages_cloudflow:
        assert (package / "capture" / "wheel.py").is_file()  # a real install, not a checkout
        dist_info = list(package.parent.glob("cloudflow-*.dist-info"))
        assert len(dist_info) == 1
        assert not (dist_info[0] / "direct_url.json").exists()  # from the wheel, not a source


BUNDLES = ["sklearn", "torch"]


@pytest.mark.parametrize("kind", BUNDLES)
def test_mlflow_models_predict_with_uv(
    kind: str, bundles: dict[str, Any], deploy_env: dict[str, str], tmp_path: Path
) -> None:
    bundle = bundles[kind]
    (tmp_path / "input.json").write_text(json.dumps({"inputs": bundle["cases"]}))
    argv = [sys.executable, "-m", "mlflow", "models", "predict", "-m", bundle["uri"]]
    argv += ["-i", "input.json", "-t", "json", "-o", "output.json", "--env-manager", "uv"]
    _run(argv, tmp_path, deploy_env)
    got = json.loads((tmp_path / "output.json").read_text())["predictions"]
    assert_same_predictions(got, bundle["cases"], bundle["expected"])


@pytest.mark.parametrize("manager", ["uv", "virtualenv"])
@pytest.mark.parametrize("kind", [*BUNDLES, "registered"])
def test_mlflow_models_serve(
    kind: str, manager: str, bundles: dict[str, Any], deploy_env: dict[str, str], tmp_path: Path
) -> None:
    if kind == "registered" and manager == "virtualenv":
        pytest.skip("the registered bundle is the torch one: served with uv, as a user would")
    bundle = bundles[kind]
    env = dict(deploy_env)
    if "tracking_uri" in bundle:
        env["MLFLOW_TRACKING_URI"] = bundle["tracking_uri"]

    def argv(port: int) -> list[str]:
        return [
            *(sys.executable, "-m", "mlflow", "models", "serve", "-m", bundle["uri"]),
            *("--env-manager", manager, "--host", "127.0.0.1", "--port", str(port)),
            *("--workers", "1"),
        ]

    log = tmp_path / "serve.log"
    with running_server(
        argv, health="/ping", log=log, env=env, cwd=tmp_path, timeout=ENV_BUILD_TIMEOUT
    ) as server:
        got = _post(server.url, {"inputs": bundle["cases"]})
        one = _post(server.url, {"inputs": bundle["cases"][0]})
    assert_same_predictions(got, bundle["cases"], bundle["expected"])
    assert_same_predictions([one], bundle["cases"][:1], bundle["expected"][:1])
    _assert_cloudflow_from_the_bundle(_cloudflows_in(Path(deploy_env["MLFLOW_ENV_ROOT"])))


PREDICT_API = r"""
import json, sys
spec = json.loads(sys.argv[1])
import mlflow.models

mlflow.models.predict(
    model_uri=spec["uri"],
    input_data=spec["cases"],  # a list of calls: MLflow sends {"inputs": [...]}
    content_type="json",
    output_path="output.json",
    env_manager="uv",
)
emit(json.load(open("output.json"))["predictions"])
"""


def test_mlflow_models_predict_api_with_uv(
    bundles: dict[str, Any], deploy_env: dict[str, str], tmp_path: Path
) -> None:
    bundle = bundles["sklearn"]
    spec = {"uri": bundle["uri"], "cases": bundle["cases"]}
    got = run_snippet(
        PREDICT_API, cwd=tmp_path, args=[json.dumps(spec)], env=deploy_env, timeout=900
    )
    assert_same_predictions(got, bundle["cases"], bundle["expected"])


SPARK_SCORER = (
    r"""
import json, os, sys
spec = json.loads(sys.argv[1])
os.environ["PYSPARK_PYTHON"] = os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
"""
    + LOCAL_SPARK
    + r"""
try:
    rows = [(c["data"], c.get("scale")) for c in spec["cases"]]
    df = spark.createDataFrame(rows, "data array<array<double>>, scale double").coalesce(1)
    udf = mlflow.pyfunc.spark_udf(
        spark, spec["uri"], result_type="array<string>", env_manager="uv"
    )
    got = [row.p for row in df.withColumn("p", udf(struct("data", "scale"))).collect()]
finally:
    spark.stop()
emit(got)
"""
)


def test_spark_udf_with_uv(
    bundles: dict[str, Any], deploy_env: dict[str, str], tmp_path: Path
) -> None:
    bundle = bundles["sklearn"]
    # Outside the local env manager, MLflow's UDF gets a batch's answers back from a scoring
    # server in the built environment as one table, padding lists of unequal length with NaN:
    # here each call answers one label.
    picked = [k for k, case in enumerate(bundle["cases"]) if len(case["data"]) == 1]
    cases = [bundle["cases"][k] for k in picked]
    spec = {"uri": bundle["uri"], "cases": cases}
    got = run_snippet(
        SPARK_SCORER, cwd=tmp_path, args=[json.dumps(spec)], env=deploy_env, timeout=900
    )
    assert_same_predictions(got, cases, [bundle["expected"][k] for k in picked])


# --- the image of mlflow models generate-dockerfile -------------------------------------------


_DOCKERFILE_STEPS = {
    "workdir": r"^WORKDIR (\S+)$",
    "copied": r"^COPY (\S+) \S+$",
    "model": r"^COPY \S+ (\S+)$",
    "install": r'^RUN python -c "(.*_install_pyfunc_deps.*)"$',
    "mlflow": r"^RUN pip install (mlflow==\S+)$",
    "entrypoint": r'^ENTRYPOINT \["python", "-c", "(.*)"\]$',
}


def _dockerfile_steps(dockerfile: str) -> dict[str, str]:
    """The image's working directory, model folder, install code and entrypoint code."""
    steps = {}
    for step, pattern in _DOCKERFILE_STEPS.items():
        found = re.search(pattern, dockerfile, re.M)
        assert found is not None, f"no {step} step in:\n{dockerfile}"
        steps[step] = found.group(1)
    return steps


@pytest.mark.parametrize("kind", BUNDLES)
def test_generated_dockerfile_installs_and_serves(
    kind: str, bundles: dict[str, Any], deploy_env: dict[str, str], tmp_path: Path
) -> None:
    bundle = bundles[kind]
    context = tmp_path / "context"
    argv = [sys.executable, "-m", "mlflow", "models", "generate-dockerfile", "-m", bundle["uri"]]
    _run([*argv, "-d", str(context)], tmp_path, deploy_env)
    steps = _dockerfile_steps((context / "Dockerfile").read_text())
    assert steps["workdir"] == "/opt/mlflow"
    assert steps["model"] == "/opt/ml/model"
    assert "env_manager='local'" in steps["install"]
    # The image's folders under a temporary root; the model copied as COPY copies it.
    image = tmp_path / "image"
    workdir = image / steps["workdir"].lstrip("/")
    model = image / steps["model"].lstrip("/")
    workdir.mkdir(parents=True)
    shutil.copytree(context / steps["copied"], model)
    venv = image / "venv"
    uv_venv = ["uv", "venv", "--seed", "--quiet", "--python", sys.executable, str(venv)]
    _run(uv_venv, image, deploy_env)
    env = dict(deploy_env)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{deploy_env['PATH']}"
    env["VIRTUAL_ENV"] = str(venv)
    python = str(venv / "bin" / "python")
    # `RUN pip install mlflow==...` (with uv, for speed: what it installs is not under test).
    _run(["uv", "pip", "install", "--quiet", "--python", python, steps["mlflow"]], workdir, env)
    install = steps["install"].replace(steps["model"], str(model))
    _run([python, "-c", install], workdir, env)
    # ENV MLFLOW_DISABLE_ENV_CREATION=True; the entrypoint, its model folder and port moved here.
    env.update(MLFLOW_DISABLE_ENV_CREATION="True", DISABLE_NGINX="true")
    entry = steps["entrypoint"]

    def serve(port: int) -> list[str]:
        moved = f"C.MODEL_PATH = {str(model)!r}; C.DEFAULT_INFERENCE_SERVER_PORT = {port}; "
        return [python, "-c", entry.replace("C._serve(", moved + "C._serve(")]

    with running_server(
        serve, health="/ping", log=tmp_path / "image.log", env=env, cwd=workdir
    ) as server:
        got = _post(server.url, {"inputs": bundle["cases"]})
    assert_same_predictions(got, bundle["cases"], bundle["expected"])
    site = list((venv / "lib").glob("python*/site-packages/cloudflow"))
    _assert_cloudflow_from_the_bundle(site)
