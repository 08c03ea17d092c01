"""Serving engines past MLflow's own: MLServer (KServe V2), Ray Serve and Ray Data, BentoML.

A package of the user's (two modules) holds five predict functions over one scikit-learn model,
returning a dict, a list, a DataFrame, a str and a float. One fresh process saves a bundle of
each, the package is deleted, and the engines run on the bundles as their documentation (and
the README's recipes) tell a user, each in fresh processes from other working directories, on
127.0.0.1:

- MLServer with its MLflow runtime (what KServe and Seldon run for MLflow models) loads every
  bundle and answers V2 ``/infer``, the function's parameters as named inputs;
- the README's Ray recipe, run as written: a Ray Serve deployment answers over HTTP, and Ray
  Data's ``map_batches`` scores rows;
- the README's BentoML recipe, run as written: ``bentoml.mlflow.import_model``, then
  ``bentoml build`` with the bundle's own requirements and cloudflow wheel, the built bento
  served by ``bentoml serve``, and the install step of its image resolved.
Every answer must equal what the function returned before saving.

The engines live in a venv of their own (MLServer needs protobuf below 7, which the project's
stack pins at 7), built once per session with uv (tests/pythons.py) from
requirements/constraints-serving.txt over constraints.txt, with the bundle's requirements;
each session then installs the bundle's own requirements.txt into it, cloudflow from the wheel
the bundle carries (no index and no checkout offers it).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO_ROOT, run_snippet, subprocess_env, write_files
from pythons import (
    CONSTRAINTS,
    Venv,
    ensure_venv,
    exclusive_lock,
    find_python,
    run_python_script,
    where_we_looked,
)
from servers import Server, free_port, running_server

pytestmark = pytest.mark.slow

SERVING_CONSTRAINTS = REPO_ROOT / "requirements" / "constraints-serving.txt"
ENGINES = ("mlserver", "mlserver-mlflow", "uvloop", "ray[serve]", "bentoml", "uv")
ENGINES_WARM_UP = (
    "import mlflow.pyfunc, pandas, sklearn.linear_model, skops.io, cloudpickle, "
    "mlserver, mlserver_mlflow, ray, ray.serve, ray.data, bentoml"
)

FLOWERS_SOURCE = {
    "flowers/__init__.py": "",
    "flowers/features.py": """
        def vector(petal_length, petal_width, scale):
            return [[petal_length * scale, petal_width * scale]]
        """,
    "flowers/predict.py": """
        import pandas as pd

        from flowers.features import vector

        NAMES = ["setosa", "versicolor", "virginica"]


        def _proba(clf, petal_length, petal_width, scale):
            proba = clf.predict_proba(vector(petal_length, petal_width, scale))[0]
            return [round(float(p), 6) for p in proba]


        def label(clf, petal_length: float, petal_width: float, scale: float = 1.0) -> dict:
            proba = _proba(clf, petal_length, petal_width, scale)
            k = proba.index(max(proba))
            ranked = [n for _, n in sorted(zip(proba, NAMES), reverse=True)]
            return {"label": NAMES[k], "score": proba[k], "ranked": ranked}


        def probabilities(clf, petal_length: float, petal_width: float, scale: float = 1.0):
            return _proba(clf, petal_length, petal_width, scale)


        def table(clf, petal_length: float, petal_width: float, scale: float = 1.0):
            return pd.DataFrame({"name": NAMES, "p": _proba(clf, petal_length, petal_width, scale)})


        def name(clf, petal_length: float, petal_width: float, scale: float = 1.0) -> str:
            return label(clf, petal_length, petal_width, scale)["label"]


        def score(clf, petal_length: float, petal_width: float, scale: float = 1.0) -> float:
            return label(clf, petal_length, petal_width, scale)["score"]
        """,
}
FUNCTIONS = ["label", "probabilities", "table", "name", "score"]
CASES: list[dict[str, Any]] = [
    {"petal_length": 1.4, "petal_width": 0.2},
    {"petal_length": 5.1, "petal_width": 1.8},
    {"petal_length": 4.5, "petal_width": 1.5},
]
SCALED = [{**case, "scale": 1.1} for case in CASES]

SAVER = r"""
import json, sys
spec = json.loads(sys.argv[1])
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
import pandas as pd
import cloudflow
from flowers import predict

X, y = load_iris(return_X_y=True)
clf = LogisticRegression(max_iter=500).fit(X[:, 2:], y)

def plain(result):
    return result.to_dict(orient="records") if isinstance(result, pd.DataFrame) else result

expected = {}
for name in spec["functions"]:
    fn = getattr(predict, name)
    expected[name] = {
        kind: [plain(fn(clf, **case)) for case in spec[kind]] for kind in ("cases", "scaled")
    }
    cloudflow.save_bundle(fn, {"clf": clf}, f"{spec['bundles']}/{name}")
emit(expected)
"""


@pytest.fixture(scope="module")
def flowers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The five bundles, saved from a package that is deleted afterwards, and their answers."""
    root = tmp_path_factory.mktemp("flowers")
    source = root / "source"
    write_files(source, FLOWERS_SOURCE)
    spec = {
        "functions": FUNCTIONS,
        "cases": CASES,
        "scaled": SCALED,
        "bundles": str(root / "bundles"),
    }
    try:
        expected = run_snippet(SAVER, cwd=source, args=[json.dumps(spec)], timeout=300)
    finally:
        shutil.rmtree(source)  # from here on, the package cannot be imported
    return {"bundles": root / "bundles", "expected": expected}


def _bundle_requirements(bundle: Path) -> list[str]:
    """The bundle's pins but cloudflow's and the option that finds its wheel (each session's)."""
    lines = (bundle / "requirements.txt").read_text(encoding="utf-8").splitlines()
    wanted = [line.strip() for line in lines if line.strip() and not line.startswith(("#", "-"))]
    return [line for line in wanted if not re.match(r"cloudflow\b", line)]


def _merged_constraints(folder: Path) -> Path:
    """constraints.txt with the pins of constraints-serving.txt in place of its own."""

    def name(line: str) -> str:
        return re.sub(r"[-_.]+", "-", line.split("==")[0].strip().lower())

    serving = [
        line for line in SERVING_CONSTRAINTS.read_text().splitlines() if "==" in line.split("#")[0]
    ]
    replaced = {name(line) for line in serving}
    base = [
        line
        for line in CONSTRAINTS.read_text().splitlines()
        if "==" not in line.split("#")[0] or name(line) not in replaced
    ]
    merged = folder / "constraints-serving-merged.txt"
    merged.write_text("\n".join([*base, *serving]) + "\n", encoding="utf-8")
    return merged


def _uv(venv: Venv) -> Path:
    return venv.folder / "bin" / "uv"


def _run_checked(argv: list[Any], cwd: Path, env: dict[str, str]) -> None:
    done = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, f"{argv[:3]} failed:\n{(done.stdout + done.stderr)[-4000:]}"


@pytest.fixture(scope="module")
def engines(flowers: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """The venv of MLServer, Ray and BentoML with what the bundles require (built once)."""
    base = find_python("3.11")
    if base is None:
        pytest.skip(f"no CPython 3.11 for the serving venv ({where_we_looked('3.11')})")
    folder = tmp_path_factory.mktemp("engines_venv")
    constraints = _merged_constraints(folder)
    requirements = [*ENGINES, *_bundle_requirements(flowers["bundles"] / "label")]
    venv = ensure_venv(
        base,
        constraints=[constraints],
        requirements=requirements,
        warm_up=ENGINES_WARM_UP,
        label="serving",
    )
    # The bundle's own requirements.txt, as a deployer installs it: cloudflow comes from the
    # wheel inside the bundle (its relative --find-links), from no index and not from this
    # checkout. Installed anew each session (a few seconds), under the lock the venv's builds
    # take: the venv is shared by sessions, and its key does not follow cloudflow's source.
    bundle = flowers["bundles"] / "label"
    env = {k: v for k, v in subprocess_env().items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    install = [_uv(venv), "pip", "install", "--quiet", "--python", venv.python]
    with exclusive_lock(Path(f"{venv.folder}.lock")):
        _run_checked(
            [*install, "-c", constraints, "--reinstall-package", "cloudflow"]
            + ["-r", bundle / "requirements.txt"],
            Path(tmp_path_factory.mktemp("install")),
            env,
        )
    return venv


def _engine_env(venv: Venv, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A user's shell in the engines venv: its bin/ first on PATH, nothing of this checkout."""
    env = {k: v for k, v in subprocess_env(extra).items() if k != "PYTHONPATH"}
    env["PATH"] = os.pathsep.join([str(venv.folder / "bin"), env.get("PATH", "")])
    env["VIRTUAL_ENV"] = str(venv.folder)
    env["PYTHONUNBUFFERED"] = "1"
    return env


# --- MLServer / KServe V2 ----------------------------------------------------------------


@pytest.fixture(scope="module")
def mlserver(
    engines: Venv, flowers: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """``mlserver start`` over a folder with one model-settings.json per bundle."""
    root = tmp_path_factory.mktemp("mlserver")
    for name in FUNCTIONS:
        (root / name).mkdir()
        settings = {
            "name": name,
            "implementation": "mlserver_mlflow.MLflowRuntime",
            "parameters": {"uri": str(flowers["bundles"] / name)},
        }
        (root / name / "model-settings.json").write_text(json.dumps(settings))

    def argv(port: int) -> list[str]:
        settings = {
            "host": "127.0.0.1",
            "http_port": port,
            "grpc_port": free_port(),
            "metrics_port": free_port(),
        }
        (root / "settings.json").write_text(json.dumps(settings))
        return [str(engines.folder / "bin" / "mlserver"), "start", str(root)]

    with running_server(
        argv,
        health="/v2/health/ready",
        log=root / "mlserver.log",
        env=_engine_env(engines),
        cwd=root,
        timeout=600,
    ) as server:
        yield server


def _v2_request(cases: list[dict[str, Any]]) -> dict[str, Any]:
    """One V2 input per parameter, one row per call."""
    names = list(cases[0])
    return {
        "inputs": [
            {"name": n, "shape": [len(cases)], "datatype": "FP64", "data": [c[n] for c in cases]}
            for n in names
        ]
    }


def _v2_columns(answer: dict[str, Any]) -> dict[str, list[Any]]:
    """The answer's outputs by name (MLServer JSON-encodes cells other than numbers and str)."""
    columns = {}
    for output in answer["outputs"]:
        data = output["data"]
        if (output.get("parameters") or {}).get("content_type") == "pd_json":
            data = [json.loads(cell) for cell in data]
        columns[output["name"]] = data
    return columns


def _expected_columns(name: str, results: list[Any]) -> dict[str, list[Any]]:
    """The V2 outputs a list of results makes: dicts a column per key, tables their rows."""
    if name == "table":
        results = [row for table in results for row in table]
    if results and all(isinstance(r, dict) for r in results):
        return {key: [r[key] for r in results] for key in results[0]}
    return {"output-0": results}


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("kind", ["cases", "scaled"], ids=["defaults", "every_input"])
def test_mlserver_v2_infer_answers_like_the_function(
    mlserver: Server, flowers: dict[str, Any], name: str, kind: str
) -> None:
    cases = CASES if kind == "cases" else SCALED
    status, answer = mlserver.post_json(f"/v2/models/{name}/infer", _v2_request(cases))
    assert status == 200, f"{answer}\n--- log ---\n{mlserver.log_tail()}"
    assert answer["model_name"] == name
    want = _expected_columns(name, flowers["expected"][name][kind])
    assert _v2_columns(answer) == want


def test_mlserver_metadata_names_the_parameters_as_inputs(mlserver: Server) -> None:
    status, body = mlserver.get("/v2/models/label")
    assert status == 200, body
    metadata = json.loads(body)
    inputs = {i["name"]: i["datatype"] for i in metadata["inputs"]}
    assert inputs == {"petal_length": "FP64", "petal_width": "FP64", "scale": "FP64"}
    assert [o["name"] for o in metadata["outputs"]] == ["output-0"]


def test_mlserver_unknown_input_is_named_in_the_answer(mlserver: Server) -> None:
    request = _v2_request([{**CASES[0], "petal_lenght": 1.0}])
    status, answer = mlserver.post_json("/v2/models/score/infer", request)
    assert status == 400, answer
    assert "petal_lenght" in json.dumps(answer)


# --- Ray Serve and Ray Data: the README's recipe, run as written ---------------------------


def _readme_section(title: str) -> str:
    """A section of the deployment page (docs/deploy.md), where the README links for recipes."""
    text = (REPO_ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def _replace(text: str, old: str, new: str) -> str:
    assert old in text, f"the README's recipe no longer holds {old!r}"
    return text.replace(old, new)


def _with_bundle(folder: Path, flowers: dict[str, Any]) -> Path:
    """``folder`` holding the label bundle as ``flowers-bundle``, as the README names it."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(flowers["bundles"] / "label", folder / "flowers-bundle")
    return folder


@pytest.fixture(scope="module")
def ray_printed(
    engines: Venv, flowers: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> list[Any]:
    """What the README's Ray recipe prints: the Serve answer, then the scored rows."""
    (recipe,) = re.findall(r"```python\n(.*?)```", _readme_section("Ray Serve and Ray Data"), re.S)
    # On a machine shared with other work: a small object store, nothing reached from outside.
    recipe = _replace(
        recipe,
        "ray.init(num_cpus=2)",
        "ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20, "
        '_node_ip_address="127.0.0.1")',
    )
    recipe = _replace(recipe, '"port": 8000', f'"port": {free_port()}')
    port = re.search(r'"port": (\d+)', recipe)
    assert port is not None
    recipe = _replace(recipe, "127.0.0.1:8000", f"127.0.0.1:{port.group(1)}")
    cwd = _with_bundle(tmp_path_factory.mktemp("ray_recipe"), flowers)
    script = cwd / "recipe.py"
    script.write_text(recipe, encoding="utf-8")
    env = _engine_env(engines, {"RAY_USAGE_STATS_ENABLED": "0"})
    done = run_python_script(engines.python, script, cwd=cwd, env=env)
    return [
        ast.literal_eval(line) for line in done.stdout.splitlines() if line.startswith(("{", "["))
    ]


def test_ray_serve_and_map_batches_answer_like_the_function(
    ray_printed: list[Any], flowers: dict[str, Any]
) -> None:
    label = flowers["expected"]["label"]["cases"]
    # The recipe posts CASES[1] to the deployment, and scores CASES[0] and CASES[1].
    assert ray_printed == [label[1], label[:2]]


# --- BentoML: the README's recipe, run as written ---------------------------------------------


@pytest.fixture(scope="module")
def bento(
    engines: Venv, flowers: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """The README's BentoML recipe up to ``bentoml build``, in a fresh BentoML home."""
    root = tmp_path_factory.mktemp("bento")
    project = _with_bundle(root / "project", flowers)
    env = _engine_env(engines, {"BENTOML_HOME": str(root / "home"), "BENTOML_DO_NOT_TRACK": "1"})
    (recipe,) = re.findall(r"```bash\n(.*?)```", _readme_section("BentoML"), re.S)
    steps = recipe.split("\nbentoml build\n", 1)[0]
    built = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", f"{steps}\nbentoml build\n"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert built.returncode == 0, (built.stdout + built.stderr)[-4000:]
    models = (root / "home" / "models" / "flowers").iterdir()
    (model_dir,) = (m for m in models if m.is_dir())
    return {
        "env": env,
        "root": root,
        "bundle": flowers["bundles"] / "label",
        "model_tag": f"flowers:{model_dir.name}",
        "output": built.stdout + built.stderr,
    }


def test_bentoml_build_locks_the_bundles_requirements(bento: dict[str, Any]) -> None:
    assert "Successfully built Bento" in bento["output"]
    bentos = bento["root"] / "home" / "bentos" / "flowers"
    (bento_dir,) = (p for p in bentos.iterdir() if p.is_dir())
    locked = set((bento_dir / "env" / "python" / "requirements.txt").read_text().split())
    pins = set(_bundle_requirements(bento["bundle"]))
    assert pins <= locked, sorted(pins - locked)  # every pin of the bundle, as it is
    # cloudflow is the bundle's own wheel, carried in the bento and named by a relative path
    # that the image's install (run from the bento's src/) resolves.
    (wheel,) = (bento["bundle"] / "cloudflow" / "runtime").glob("*/cloudflow-*.whl")
    assert f"./wheels/{wheel.name}" in locked
    assert (bento_dir / "src" / "wheels" / wheel.name).read_bytes() == wheel.read_bytes()
    assert f"tag: {bento['model_tag']}" in (bento_dir / "bento.yaml").read_text()


def test_bentoml_image_installs_cloudflow_from_the_bento(
    engines: Venv, bento: dict[str, Any], tmp_path: Path
) -> None:
    """The install step of the bento's Dockerfile, run (resolved only) into an empty venv."""
    bentos = bento["root"] / "home" / "bentos" / "flowers"
    (bento_dir,) = (p for p in bentos.iterdir() if p.is_dir())
    dockerfile = (bento_dir / "env" / "docker" / "Dockerfile").read_text()
    assert "COPY --chown=bentoml:bentoml ./src/wheels ./src/wheels" in dockerfile
    install = "uv --directory $INSTALL_ROOT pip install -r $BENTO_PATH/env/python/requirements.txt"
    assert install in dockerfile
    env = {k: v for k, v in bento["env"].items() if k != "VIRTUAL_ENV"}
    _run_checked(
        [_uv(engines), "venv", "--quiet", "--python", engines.python, tmp_path], tmp_path, env
    )
    done = subprocess.run(
        [_uv(engines), "--directory", "./src", "pip", "install", "--dry-run"]
        + ["-r", bento_dir / "env" / "python" / "requirements.txt"],
        cwd=bento_dir,
        env={**env, "VIRTUAL_ENV": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    (wheel,) = (bento["bundle"] / "cloudflow" / "runtime").glob("*/cloudflow-*.whl")
    source = (bento_dir / "src" / "wheels" / wheel.name).as_uri()
    assert f"+ cloudflow @ {source}" in done.stdout + done.stderr


def test_bentoml_serves_the_built_bento_like_the_function(
    engines: Venv, bento: dict[str, Any], flowers: dict[str, Any]
) -> None:
    def argv(port: int) -> list[str]:
        bentoml = str(engines.folder / "bin" / "bentoml")
        return [bentoml, "serve", "flowers:latest", "--host", "127.0.0.1", "--port", str(port)]

    log = bento["root"] / "serve.log"
    with running_server(argv, health="/readyz", log=log, env=bento["env"], cwd=log.parent) as s:
        answers = [s.post_json("/predict", case) for case in CASES]
    assert answers == [(200, want) for want in flowers["expected"]["label"]["cases"]]
