"""MLflow's own model tools on bundles: ``update-pip-requirements`` and ``add_libraries_to_model``.

A scikit-learn project of two modules is logged four times into a folder store (two bundles
unsigned, two signed with an Ed25519 key), each registered, in a subprocess whose source is then
deleted. The real MLflow command and function change each bundle's environment files; every
load happens in a fresh process from another working directory, and answers are compared to
the ones computed before saving. Unsigned: loads with one warning naming what changed. Signed:
refused with the way to sign again; ``cloudflow sign`` shows the difference; signed again, it
loads. A bundle whose ``add_libraries_to_model`` wheels hold every requirement is then predicted
by ``mlflow models predict --env-manager uv`` with no network and no index.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import UserModules
from helpers import (
    REPO_ROOT,
    assert_same_predictions,
    outcome,
    run_snippet,
    sqlite_uri,
    write_files,
)
from servers import server_env

import cloudflow
from cloudflow.cli import main
from cloudflow.exceptions import IntegrityError
from cloudflow.integrity import manifest as _manifest
from cloudflow.integrity import signing as _signing

IRIS_SOURCE = {
    "irisapp/__init__.py": "",
    "irisapp/features.py": """
        NAMES = ["setosa", "versicolor", "virginica"]


        def clean(rows):
            return [[float(v) for v in row] for row in rows]
        """,
    "irisapp/predict.py": """
        from irisapp.features import NAMES, clean


        def predict(clf, rows: list):
            return [NAMES[int(k)] for k in clf.predict(clean(rows))]
        """,
}
CASES = [
    {"rows": [[5.1, 3.5, 1.4, 0.2]]},
    {"rows": [[6.3, 3.3, 6.0, 2.5], [5.9, 3.0, 4.2, 1.5]]},
]
#: Registered model name -> signed?
BUNDLES = {
    "pip-unsigned": False,
    "pip-signed": True,
    "wheels-unsigned": False,
    "wheels-signed": True,
}
ADDED = "requests==2.32.3"
CHANGED = "MLflow's environment files changed after it was saved"
REFUSED = "changed after it was signed"
#: The refusal of a signed bundle whose requirements MLflow's tool changed, and the way back.
RESIGN = (
    r"changed after it was signed: 'conda.yaml', 'requirements.txt' changed\. .*"
    r"review it and sign the bundle again: `cloudflow sign .* --key KEY.pem` shows the "
    r"difference first"
)

SAVER = r"""
import json, sys
from pathlib import Path
from urllib.parse import urlparse

import mlflow
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

import cloudflow
from irisapp.predict import predict

spec = json.loads(sys.argv[1])
X, y = load_iris(return_X_y=True)
models = {"clf": LogisticRegression(max_iter=500).fit(X, y)}
out = {"expected": [predict(**models, **case) for case in spec["cases"]]}
out.update(runs={}, folders={}, uris={})
experiment = cloudflow.prepare_env(spec["store"], "tools")
for name, signed in spec["bundles"].items():
    with mlflow.start_run(experiment_id=experiment) as run:
        info = cloudflow.log_bundle(
            predict,
            models,
            registered_model_name=name,
            signing_key=Path(spec["key"]) if signed else None,
            # update-pip-requirements parses every line of requirements.txt as a requirement:
            # the runtime wheel's --find-links line is not one (see the README).
            runtime_package="cloudflow" if name.startswith("pip-") else None,
        )
    out["runs"][name] = run.info.run_id
    out["uris"][name] = info.model_uri
    location = mlflow.MlflowClient().get_logged_model(info.model_id).artifact_location
    out["folders"][name] = urlparse(location).path
emit(out)
"""

#: Loads one bundle three ways in a fresh process (``load_bundle``, ``mlflow.pyfunc`` and the
#: seed API) and records each one's answers, or its error, and cloudflow's warnings.
LOADER = r"""
import importlib.util, json, logging, sys

spec = json.loads(sys.argv[1])
results["importable"] = {"ok": True, "value": importlib.util.find_spec("irisapp") is not None}
warned = []


class Keep(logging.Handler):
    def emit(self, record):
        warned.append(record.getMessage())


logging.getLogger("cloudflow").addHandler(Keep(logging.WARNING))

import mlflow
import mlflow.pyfunc

import cloudflow

mlflow.set_tracking_uri(spec["tracking_uri"])


def way(name, load):
    before = len(warned)
    attempt(name, load)
    results[name + " warnings"] = {"ok": True, "value": warned[before:]}


def answers(predict):
    return [predict(**case) for case in spec["cases"]]


def pyfunc():
    model = mlflow.pyfunc.load_model(spec["uri"])
    return [model.predict(case) for case in spec["cases"]]


def seed():
    # The seed API logs errors only unless asked for more (its contract): ask for warnings.
    model = cloudflow.cloudflow_model(log_level="WARNING")
    model.load_model(tracking_uri=spec["store"], experiment_id="tools", run_id=spec["seed"])
    return answers(model.predict)


way("load_bundle", lambda: answers(cloudflow.load_bundle(spec["uri"]).predict))
way("pyfunc", pyfunc)
way("seed", seed)
emit(results)
"""

WAYS = ("load_bundle", "pyfunc", "seed")


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The iris project logged once per entry of :data:`BUNDLES`, its source deleted."""
    root = tmp_path_factory.mktemp("mlflow_tools")
    source, store = root / "source", root / "store"
    write_files(source, IRIS_SOURCE)
    key = root / "keys" / "release.pem"
    key.parent.mkdir()
    public = _signing.generate_key_pair(key)
    spec = {"store": str(store), "key": str(key), "cases": CASES, "bundles": BUNDLES}
    try:
        saved = run_snippet(SAVER, cwd=source, args=[json.dumps(spec)])
    finally:
        shutil.rmtree(source)  # from here on, the project's source cannot be imported
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    return {
        **saved,
        "root": root,
        "store": store,
        "key": key,
        "public": public,
        "cwd": elsewhere,
        "env": {"MLFLOW_TRACKING_URI": sqlite_uri(store)},
    }


def load_three_ways(
    tools: dict[str, Any], uri: str, seed: str, *, signed: bool = False
) -> dict[str, Any]:
    env = dict(tools["env"])
    if signed:  # mlflow.pyfunc.load_model gets the key from the environment, as serving does
        env["CLOUDFLOW_TRUSTED_KEYS"] = str(tools["public"])
    spec = {
        "uri": uri,
        "seed": seed,
        "store": str(tools["store"]),
        "tracking_uri": sqlite_uri(tools["store"]),
        "cases": CASES,
    }
    results = run_snippet(LOADER, cwd=tools["cwd"], env=env, args=[json.dumps(spec)])
    assert outcome(results, "importable") is False
    return dict(results)


def assert_loads_with_one_warning(results: dict[str, Any], expected: Any, *names: str) -> None:
    for way in WAYS:
        assert_same_predictions(outcome(results, way), CASES, expected)
        warnings = outcome(results, f"{way} warnings")
        assert len(warnings) == 1, (way, warnings)
        assert CHANGED in warnings[0], (way, warnings[0])
        for name in names:
            assert name in warnings[0], (way, name, warnings[0])


def assert_refused(results: dict[str, Any], *names: str) -> None:
    for way in WAYS:
        step = results[way]
        assert not step["ok"], (way, step)
        last = step["error"].strip().splitlines()[-1]
        assert last.startswith("cloudflow.exceptions.IntegrityError: "), (way, last)
        for name in (REFUSED, "cloudflow sign", *names):
            assert name in last, (way, name, last)


def cloudflow_cli(tools: dict[str, Any], *args: str) -> Any:
    """The ``cloudflow`` command, in this process (click's runner, as tests/test_cli.py does)."""
    return CliRunner().invoke(
        main, [*args, "--tracking-uri", sqlite_uri(tools["store"])], catch_exceptions=False
    )


def cli(tools: dict[str, Any], *args: str, env: dict[str, str] | None = None) -> Any:
    """``python -m ARGS`` (``mlflow ...``) in a fresh process, from another working directory."""
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=tools["cwd"],
        env=server_env({**tools["env"], **(env or {})}),
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=600,
    )


def update_pip_requirements(tools: dict[str, Any], uri: str) -> None:
    done = cli(tools, "mlflow", "models", "update-pip-requirements", "-m", uri, "add", ADDED)
    assert done.returncode == 0, done.stderr[-3000:]


def resign_and_load(
    tools: dict[str, Any], uri: str, seed: str, folder: Path, *diff_lines: str
) -> None:
    """``cloudflow sign`` shows the difference and signs only once accepted; then it loads."""
    key, public = str(tools["key"]), str(tools["public"])
    done = cloudflow_cli(tools, "verify", uri, "--key", public)
    assert done.exit_code == 2, done.output
    assert REFUSED in done.stderr
    assert f"cloudflow sign {folder}" in done.stderr
    signature = (folder / "cloudflow" / "manifest.sig").read_bytes()
    asked = cloudflow_cli(tools, "sign", uri, "--key", key)  # nobody to say yes
    assert asked.exit_code == 1, asked.output
    for line in diff_lines:
        assert line in asked.stdout.splitlines(), (line, asked.stdout)
    assert asked.stdout.splitlines()[-1] == "Sign the bundle as it is now? [y/N]: "
    assert (folder / "cloudflow" / "manifest.sig").read_bytes() == signature  # not signed
    signed = cloudflow_cli(tools, "sign", uri, "--key", key, "--yes")
    assert signed.exit_code == 0, signed.output
    assert asked.stdout.splitlines()[:-1] == signed.stdout.splitlines()[:-1]  # same difference
    assert signed.stdout.splitlines()[-1].startswith("signed ")
    done = cloudflow_cli(tools, "verify", uri, "--key", public)
    assert done.exit_code == 0, done.output
    assert done.stdout.startswith("ok: ")
    results = load_three_ways(tools, uri, seed, signed=True)
    for way in WAYS:
        assert_same_predictions(outcome(results, way), CASES, tools["expected"])
        assert outcome(results, f"{way} warnings") == []


# --- mlflow models update-pip-requirements --------------------------------------------------


@pytest.mark.slow
def test_update_pip_requirements_on_an_unsigned_bundle_loads_with_one_warning(
    tools: dict[str, Any], mlflow_state: None
) -> None:
    # A logged model's URI, as MLflow 3 logs models (its runs:/ form resolves to the run's own
    # artifacts, where a logged model is not).
    run_id, uri = tools["runs"]["pip-unsigned"], tools["uris"]["pip-unsigned"]
    update_pip_requirements(tools, uri)
    results = load_three_ways(tools, uri, run_id)
    assert_loads_with_one_warning(
        results, tools["expected"], "'conda.yaml', 'requirements.txt' changed"
    )
    # cloudflow verify names the change too (and that the bundle is not signed).
    done = cloudflow_cli(tools, "verify", uri, "--key", str(tools["public"]))
    assert done.exit_code == 2
    assert "is not signed" in done.stderr
    assert (
        "MLflow's environment files changed after saving: 'conda.yaml', 'requirements.txt' "
        "changed" in done.stderr
    )


@pytest.mark.slow
def test_update_pip_requirements_on_a_signed_bundle_is_refused_until_signed_again(
    tools: dict[str, Any], mlflow_state: None
) -> None:
    import mlflow

    run_id, uri = tools["runs"]["pip-signed"], tools["uris"]["pip-signed"]
    update_pip_requirements(tools, uri)
    mlflow.set_tracking_uri(sqlite_uri(tools["store"]))
    # Refused with or without a key configured: a signed bundle is what was signed.
    for keys in ([tools["public"]], None):
        with pytest.raises(IntegrityError, match=RESIGN):
            cloudflow.load_bundle(uri, trusted_keys=keys)
    assert_refused(load_three_ways(tools, uri, run_id, signed=True), "'requirements.txt'")
    folder = Path(tools["folders"]["pip-signed"])
    resign_and_load(tools, uri, run_id, folder, f"+{ADDED}", f"+  - {ADDED}")


# --- mlflow.models.utils.add_libraries_to_model ------------------------------------------------

#: Runs add_libraries_to_model, as MLflow documents it, on the two "wheels-" bundles.
ADD_LIBRARIES = r"""
import json, os, sys
from urllib.parse import urlparse

import mlflow
from mlflow.models.utils import add_libraries_to_model

spec = json.loads(sys.argv[1])
mlflow.set_tracking_uri(spec["tracking_uri"])
out = {}
for name, find_links in spec["jobs"]:
    os.environ.update(find_links)
    info = add_libraries_to_model(f"models:/{name}/1")
    location = mlflow.MlflowClient().get_logged_model(info.model_id).artifact_location
    out[name] = {"version": str(info.registered_model_version), "folder": urlparse(location).path}
emit(out)
"""


@pytest.fixture(scope="module")
def wheeled(tools: dict[str, Any]) -> dict[str, Any]:
    """The "wheels-" bundles after ``add_libraries_to_model``: version 2 of each."""
    # Until a bundle carries its own cloudflow runtime, its requirements pin a cloudflow no index
    # has: pip wheel finds it built from this checkout, for this download step only.
    wheelhouse = tools["root"] / "cloudflow-wheel"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", str(REPO_ROOT), "-w", str(wheelhouse)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    first = {"PIP_FIND_LINKS": f"{os.environ.get('PIP_FIND_LINKS', '')} {wheelhouse}".strip()}
    jobs: list[Any] = [["wheels-unsigned", first]]
    out = run_snippet(
        ADD_LIBRARIES,
        cwd=tools["cwd"],
        args=[json.dumps({"tracking_uri": sqlite_uri(tools["store"]), "jobs": jobs})],
    )
    # The second takes the very same wheels from the first one's folder (a local mirror), not
    # from the network again: 190 MB less to download.
    mirror = Path(out["wheels-unsigned"]["folder"]) / "wheels"
    jobs = [["wheels-signed", {"PIP_FIND_LINKS": str(mirror), "PIP_NO_INDEX": "1"}]]
    out |= run_snippet(
        ADD_LIBRARIES,
        cwd=tools["cwd"],
        args=[json.dumps({"tracking_uri": sqlite_uri(tools["store"]), "jobs": jobs})],
    )
    for name in ("wheels-unsigned", "wheels-signed"):
        assert out[name]["version"] == "2"
        folder = out[name]["folder"] = Path(out[name]["folder"])
        wheels = sorted(p.name for p in (folder / "wheels").iterdir())
        assert any(w.startswith("cloudflow-") for w in wheels), wheels
        assert (folder / "original_requirements.txt").is_file()
    return out


@pytest.mark.slow
def test_add_libraries_to_model_on_an_unsigned_bundle_loads_with_one_warning(
    tools: dict[str, Any], wheeled: dict[str, Any]
) -> None:
    uri = "models:/wheels-unsigned/2"
    results = load_three_ways(tools, uri, uri)
    assert_loads_with_one_warning(
        results,
        tools["expected"],
        "'conda.yaml', 'requirements.txt' changed",
        "'original_requirements.txt', ",
        " file(s) in wheels/ added",
        "MLmodel's artifact_path, model_id, model_uuid, utc_time_created, wheels rewritten",
    )


@pytest.mark.slow
def test_add_libraries_to_model_on_a_signed_bundle_is_refused_until_signed_again(
    tools: dict[str, Any], wheeled: dict[str, Any], mlflow_state: None
) -> None:
    uri = "models:/wheels-signed/2"
    assert_refused(
        load_three_ways(tools, uri, uri, signed=True),
        "'original_requirements.txt'",
        "wheels/",
        "model_id",
    )
    cloudflow_wheel = next(
        p.name for p in (wheeled["wheels-signed"]["folder"] / "wheels").glob("cloudflow-*.whl")
    )
    resign_and_load(
        tools,
        uri,
        uri,
        wheeled["wheels-signed"]["folder"],
        "-cloudflow==2.0.0.dev0",
        f"+wheels/{cloudflow_wheel}",
        "+++ original_requirements.txt (now)",
    )


@pytest.mark.slow
def test_a_bundle_with_every_requirement_as_a_wheel_is_predicted_with_no_index(
    tools: dict[str, Any], wheeled: dict[str, Any]
) -> None:
    """Air-gapped serving: ``mlflow models predict --env-manager uv``, uv offline, no index.

    MLflow's env managers first install python_env.yaml's build dependencies (pip, setuptools,
    wheel), which add_libraries_to_model does not ship: a user carries those four wheels
    beside the model (downloaded here, on the connected side, like the model's wheels).
    Everything else comes from the bundle's own ``wheels/``; uv gets an empty cache.
    """
    root = tools["root"] / "air-gapped"
    build = root / "build-wheels"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "pip==26.3", "setuptools==84.2.1", "wheel"]
        + ["-d", str(build)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert not any(p.name.startswith("cloudflow") for p in build.iterdir())
    request = root / "request.json"
    request.write_text(json.dumps({"inputs": CASES}), encoding="utf-8")
    env = {
        "UV_OFFLINE": "1",
        "UV_NO_INDEX": "1",
        "UV_CACHE_DIR": str(root / "uv-cache"),
        "UV_FIND_LINKS": str(build),
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(build),
        "MLFLOW_ENV_ROOT": str(root / "envs"),
    }
    predicted = cli(
        tools,
        "mlflow",
        "models",
        "predict",
        "-m",
        "models:/wheels-unsigned/2",
        "--env-manager",
        "uv",
        "-i",
        str(request),
        "-t",
        "json",
        env=env,
    )
    assert predicted.returncode == 0, predicted.stderr[-4000:]
    assert "Packages were unavailable because the network was disabled" not in predicted.stderr
    answer = json.loads(predicted.stdout.strip().splitlines()[-1])
    assert_same_predictions(answer["predictions"], CASES, tools["expected"])
    assert CHANGED in predicted.stderr  # the one warning, from the model's own environment


# --- in one process: what stays strict -------------------------------------------------------


@pytest.fixture
def changed(user_modules: UserModules, tmp_path: Path) -> Path:
    """An unsigned bundle whose requirements MLflow's update_model_requirements changed."""
    user_modules.write({rel: text for rel, text in IRIS_SOURCE.items()})
    from irisapp.predict import predict
    from mlflow.models.model import update_model_requirements
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    X, y = load_iris(return_X_y=True)
    bundle = tmp_path / "bundle"
    clf = LogisticRegression(max_iter=500).fit(X, y)
    cloudflow.save_bundle(predict, {"clf": clf}, bundle, verify=False, runtime_package="cloudflow")
    update_model_requirements(str(bundle), "add", [ADDED])
    user_modules.forget()
    return bundle


def test_update_pip_requirements_stops_on_a_default_bundle_and_changes_nothing(
    user_modules: UserModules, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A default bundle names its cloudflow wheel's folder with a ``--find-links`` line, which
    MLflow's tool reads as a requirement: it stops before writing, and the bundle stays as saved
    (docs/deploy.md says why the line cannot be anywhere else)."""
    from mlflow.models.model import update_model_requirements
    from packaging.requirements import InvalidRequirement

    user_modules.write(
        {"tableapp.py": "def predict(table, keys: list):\n    return [table[k] for k in keys]\n"}
    )
    from tableapp import predict

    bundle = tmp_path / "bundle"
    table = {"a": 1, "b": 2}
    cloudflow.save_bundle(predict, {"table": table}, bundle, verify=False, runtime_package="")
    files = ("requirements.txt", "conda.yaml", "python_env.yaml")
    saved = {name: (bundle / name).read_bytes() for name in files}
    assert b"\n--find-links cloudflow/runtime/" in saved["requirements.txt"]
    for operation in ("add", "remove"):
        with pytest.raises(InvalidRequirement, match=r"--find-links cloudflow/runtime/"):
            update_model_requirements(str(bundle), operation, [ADDED])
    assert {name: (bundle / name).read_bytes() for name in files} == saved
    user_modules.forget()
    caplog.set_level(logging.WARNING, logger="cloudflow")
    assert cloudflow.load_bundle(bundle).predict(keys=["b", "a"]) == [2, 1]
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_a_changed_environment_warns_once_unsigned_and_is_refused_signed(
    changed: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="cloudflow")
    assert cloudflow.load_bundle(changed).predict(**CASES[0]) == ["setosa"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert f"{CHANGED}: 'conda.yaml', 'requirements.txt' changed." in warnings[0]
    key = tmp_path / "k.pem"
    public = _signing.generate_key_pair(key)
    shown: list[str] = []
    for review in (None, lambda d: bool(shown.append(d))):  # nobody asked, or said no
        with pytest.raises(IntegrityError, match=r"Not signing .*the change was not accepted"):
            _manifest.sign_bundle(changed, _signing.resolve_key(key), review)
    assert not (changed / "cloudflow" / "manifest.sig").exists()  # refused: nothing signed
    assert f"+{ADDED}" in shown[0].splitlines()
    _manifest.sign_bundle(changed, _signing.resolve_key(key), lambda d: True)
    caplog.clear()
    assert cloudflow.load_bundle(changed, trusted_keys=[public]).predict(**CASES[0]) == ["setosa"]
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    (changed / "requirements.txt").write_text("numpy\n", encoding="utf-8")
    for keys in ([public], None):
        with pytest.raises(IntegrityError, match=rf"{REFUSED}: 'requirements.txt' changed"):
            cloudflow.load_bundle(changed, trusted_keys=keys)


@pytest.mark.parametrize("rel", ["cloudflow/code.pkl", "cloudflow/models/clf/model.pkl"])
def test_a_changed_pickle_is_refused_even_where_the_environment_changed_too(
    changed: Path, rel: str
) -> None:
    path = changed / rel
    data = bytearray(path.read_bytes())
    data[random.Random(rel).randrange(len(data))] ^= 0x10
    path.write_bytes(bytes(data))
    name = rel.removeprefix("cloudflow/")
    with pytest.raises(IntegrityError, match=rf"The file '{name}' .*does not match"):
        cloudflow.load_bundle(changed)


def test_changed_weights_are_refused_even_where_the_environment_changed_too(
    user_modules: UserModules, tmp_path: Path
) -> None:
    user_modules.write(
        {
            "weightsapp.py": """
                def predict(mlp, rows):
                    import torch

                    with torch.no_grad():
                        return mlp(torch.tensor(rows, dtype=torch.float32)).argmax(1).tolist()
            """
        }
    )
    import weightsapp
    from mlflow.models.model import update_model_requirements
    from models import tiny_torch_mlp

    bundle = tmp_path / "bundle"
    mlp = tiny_torch_mlp()
    expected = weightsapp.predict(mlp, **CASES[1])
    cloudflow.save_bundle(
        weightsapp.predict, {"mlp": mlp}, bundle, verify=False, runtime_package="cloudflow"
    )
    update_model_requirements(str(bundle), "add", [ADDED])
    user_modules.forget()
    assert cloudflow.load_bundle(bundle).predict(**CASES[1]) == expected
    (weights,) = (bundle / "cloudflow").rglob("*.safetensors")
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01  # a weight, not the header: it still parses
    weights.write_bytes(bytes(data))
    rel = weights.relative_to(bundle / "cloudflow").as_posix()
    # Weights are hashed while the first predict runs: its answer is refused.
    with pytest.raises(IntegrityError, match=rf"The file '{rel}' .*does not match"):
        cloudflow.load_bundle(bundle).predict(**CASES[1])


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("predict_fn: predict", "predict_fn: predicx"),
        ("loader_module: cloudflow._pyfunc", "loader_module: cloudflow._pyfunx"),
        ("model_uuid:", "model_uuix:"),  # a key that is not a publication key
    ],
)
def test_mlmodel_may_change_only_where_it_says_the_model_was_logged(
    changed: Path, old: str, new: str, caplog: pytest.LogCaptureFixture
) -> None:
    mlmodel = changed / "MLmodel"
    text = mlmodel.read_text(encoding="utf-8")
    assert old in text
    mlmodel.write_text(text.replace(old, new), encoding="utf-8")
    with pytest.raises(IntegrityError, match=r"The file 'MLmodel' .*does not match"):
        cloudflow.load_bundle(changed)
    # Where and when it was logged may change (add_libraries_to_model logs it again).
    mlmodel.write_text(
        text.replace("model_id: null", "model_id: m-0123").replace(
            "utc_time_created: '", "utc_time_created: '1"
        ),
        encoding="utf-8",
    )
    caplog.set_level(logging.WARNING, logger="cloudflow")
    assert cloudflow.load_bundle(changed).predict(**CASES[0]) == ["setosa"]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "MLmodel's model_id, utc_time_created rewritten" in warning
