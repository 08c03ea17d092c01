"""Every framework the users bring: XGBoost, LightGBM, ONNX, containers, flavors users add.

One bundle holds an XGBoost booster and classifier, a LightGBM booster and classifier (string
labels), a scikit-learn Pipeline ending in an XGBClassifier, a container (two torch nets, a
dict of per-language pipelines, a tuple of weights), an ONNX model and an ONNX Runtime session.
It is saved through the seed API, the user's source deleted, and one fresh process from another
working directory loads it every way (``load_bundle``, lazily, the seed API,
``mlflow.pyfunc.load_model``); outputs must equal the originals exactly.

Flavors users add: a plugin package (tests/fixtures/flavor_plugin) offers one through the
``cloudflow.flavors`` entry point group. It is installed once into a folder put on the path of
the processes that should see it (a real install, dist-info and entry points, in seconds; no
venv to build); a process without it must refuse the bundle, naming the flavor and what to
install. ``register_flavor`` is tested in process.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import models
import pytest
from conftest import restored_mlflow_state
from helpers import (
    CLOUDFLOW_INSTALLED,
    EVERY_WAY_LOADER,
    FIXTURES_DIR,
    REPO_ROOT,
    outcome,
    requirement_names,
    run_snippet,
    sqlite_uri,
)

import cloudflow
from cloudflow.exceptions import BundleArgumentError, IntegrityError, MissingDependencyError
from cloudflow.flavors import flavor_for, unregister_flavor

APP = """
import numpy as np
import torch


def predict(kind, rows, xgb_booster, xgb_classifier, lgbm_booster, lgbm_classifier,
            boosted_pipeline, ensemble, onnx_model, onnx_session):
    X = np.asarray(rows, dtype=np.float64)
    if kind == "onnx_session":
        return onnx_session.run(None, {"X": X.astype(np.float32)})[0].tolist()
    if kind == "onnx_model":
        import onnxruntime

        session = onnxruntime.InferenceSession(
            onnx_model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        return session.run(None, {"X": X.astype(np.float32)})[0].tolist()
    if kind == "xgb_booster":
        import xgboost

        data = xgboost.DMatrix(X[:, :3], feature_names=["sl", "sw", "pl"])
        return xgb_booster.predict(data).tolist()
    if kind == "xgb_classifier":
        return xgb_classifier.predict_proba(X).tolist()
    if kind == "lgbm_booster":
        return lgbm_booster.predict(X[:, :3]).tolist()
    if kind == "lgbm_classifier":
        return {
            "labels": lgbm_classifier.predict(X).tolist(),
            "proba": lgbm_classifier.predict_proba(X).tolist(),
        }
    if kind == "boosted_pipeline":
        return boosted_pipeline.predict_proba(X).tolist()
    with torch.no_grad():
        nets = [net(torch.tensor(X, dtype=torch.float32)).tolist() for net in ensemble["nets"]]
    return {
        "nets": nets,
        "weights": list(ensemble["weights"]),
        "fr": ensemble["by_language"]["fr"].predict_proba(X).tolist(),
    }
"""
KINDS = [
    "xgb_booster",
    "xgb_classifier",
    "lgbm_booster",
    "lgbm_classifier",
    "boosted_pipeline",
    "ensemble",
    "onnx_model",
    "onnx_session",
]
EXPERIMENT = "frameworks"


def _models() -> dict[str, Any]:
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = models.iris()
    return {
        "xgb_booster": models.tiny_xgb_booster(),
        "xgb_classifier": models.tiny_xgb_classifier(),
        "lgbm_booster": models.tiny_lgbm_booster(),
        "lgbm_classifier": models.tiny_lgbm_classifier(),
        "boosted_pipeline": make_pipeline(StandardScaler(), models.tiny_xgb_classifier()).fit(X, y),
        "ensemble": models.tiny_ensemble(),
        "onnx_model": models.tiny_onnx_model(),
        "onnx_session": models.tiny_onnx_session(),
    }


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The bundle, saved through the seed API from a user module that is then deleted."""
    root = tmp_path_factory.mktemp("frameworks")
    source = root / "user_src"
    source.mkdir()
    (source / "frameworks_app.py").write_text(APP, encoding="utf-8")
    store = root / "store"
    rows = models.iris()[0][::15].tolist()
    with restored_mlflow_state(), pytest.MonkeyPatch.context() as patch:
        import mlflow

        patch.syspath_prepend(str(source))
        import frameworks_app

        live = _models()
        expected = {k: frameworks_app.predict(kind=k, rows=rows, **live) for k in KINDS}
        experiment_id = cloudflow.prepare_env(str(store), EXPERIMENT)
        with mlflow.start_run(experiment_id=experiment_id) as run:
            cloudflow.cloudflow_model().save(
                tracking_uri=str(store),
                experiment_id=EXPERIMENT,
                run_id=run.info.run_id,
                predict_function=frameworks_app.predict,
                models=live,
            )
        sys.modules.pop("frameworks_app")
    shutil.rmtree(source)
    return {
        "store": str(store),
        "tracking_uri": sqlite_uri(store),
        "run_id": run.info.run_id,
        "rows": rows,
        "expected": expected,
    }


@pytest.fixture(scope="module")
def loaded(saved: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    spec = {
        **saved,
        "kinds": KINDS,
        "app": "frameworks_app",
        "experiment": "frameworks",
        "lazy_kind": "ensemble",
    }
    where = tmp_path_factory.mktemp("elsewhere")
    return run_snippet(EVERY_WAY_LOADER, cwd=where, args=[json.dumps(spec)])


def test_the_source_is_gone_in_the_loading_process(loaded: dict[str, Any]) -> None:
    assert loaded["importable"]["value"] is False


@pytest.mark.parametrize("way", ["load_bundle_answers", "seed", "pyfunc_answers"])
def test_every_way_of_loading_gives_exactly_the_original_outputs(
    saved: dict[str, Any], loaded: dict[str, Any], way: str
) -> None:
    got = outcome(loaded, way)
    for kind in KINDS:
        assert got[kind] == saved["expected"][kind], kind  # exact: same trees, same weights


def test_a_lazy_container_loads_on_first_use(saved: dict[str, Any], loaded: dict[str, Any]) -> None:
    got = outcome(loaded, "lazy")
    assert not any(got["before"].values())
    assert got["after"]["ensemble"] is True
    assert got["after"]["xgb_classifier"] is False
    assert got["answer"] == saved["expected"]["ensemble"]


def _bundle(loaded: dict[str, Any]) -> Path:
    return Path(outcome(loaded, "path"))


def test_requirements_pin_each_framework(loaded: dict[str, Any]) -> None:
    reqs = requirement_names(_bundle(loaded) / "requirements.txt")
    for dist in ("xgboost-cpu", "lightgbm", "onnx", "onnxruntime", "torch", "scikit-learn"):
        version = importlib.metadata.version(dist).partition("+")[0]
        assert reqs.get(dist) == f"=={version}", (dist, reqs)


def test_boosters_are_stored_in_their_own_formats_not_pickled(loaded: dict[str, Any]) -> None:
    model_dir = _bundle(loaded) / "cloudflow" / "models"
    files = {
        name: sorted(p.name for p in (model_dir / name).iterdir())
        for name in (
            "xgb_booster",
            "xgb_classifier",
            "lgbm_booster",
            "lgbm_classifier",
            "onnx_model",
            "onnx_session",
        )
    }
    assert files == {
        "xgb_booster": ["model.ubj"],
        "xgb_classifier": ["model.ubj", "wrapper.pkl"],
        "lgbm_booster": ["model.txt"],
        "lgbm_classifier": ["model.txt", "wrapper.pkl"],
        "onnx_model": ["model.onnx"],
        "onnx_session": ["model.onnx"],
    }
    assert (model_dir / "lgbm_booster" / "model.txt").read_text().startswith("tree\n")
    for name, booster in [
        ("xgb_classifier", "model.ubj"),
        ("lgbm_classifier", "model.txt"),
        ("boosted_pipeline", "model.ubj"),
    ]:
        pickled = next((model_dir / name).glob("*.pkl")).read_bytes()
        trees = (model_dir / name / booster).read_bytes()
        assert len(pickled) < 8_000, name
        windows = [trees[i : i + 24] for i in range(len(trees) // 3, len(trees) - 24, 97)]
        assert not [w for w in windows if w in pickled], name


def test_container_elements_each_have_their_folder(loaded: dict[str, Any]) -> None:
    ensemble = _bundle(loaded) / "cloudflow" / "models" / "ensemble"
    assert (ensemble / "0" / "0" / "weights.safetensors").exists()  # nets[0]
    assert (ensemble / "0" / "1" / "weights.safetensors").exists()  # nets[1]
    assert (ensemble / "1" / "1" / "model.pkl").exists()  # by_language["fr"]
    assert (ensemble / "2" / "model.pkl").exists()  # the weights tuple, a plain value


def test_manifest_describes_each_model(loaded: dict[str, Any]) -> None:
    manifest = json.loads((_bundle(loaded) / "cloudflow" / "manifest.json").read_text())
    meta = {name: entry["metadata"] for name, entry in manifest["models"].items()}
    flavors = {name: entry["flavor"] for name, entry in manifest["models"].items()}
    assert flavors == {
        "xgb_booster": "xgboost",
        "xgb_classifier": "xgboost",
        "lgbm_booster": "lightgbm",
        "lgbm_classifier": "lightgbm",
        "boosted_pipeline": "sklearn",
        "ensemble": "container",
        "onnx_model": "onnx",
        "onnx_session": "onnx",
    }
    assert meta["xgb_booster"]["rounds"] == 6
    assert meta["xgb_classifier"]["class"] == "xgboost.sklearn.XGBClassifier"
    assert meta["lgbm_classifier"]["trees"] == 18
    assert meta["lgbm_booster"]["n_features"] == 3
    assert meta["boosted_pipeline"]["steps"] == [
        "standardscaler: StandardScaler",
        "xgbclassifier: XGBClassifier",
    ]
    assert meta["ensemble"]["elements"]["nets"]["items"] == 2
    assert meta["onnx_model"]["parameters"] == 4 * 8 + 8 + 8 * 3
    assert meta["onnx_session"]["providers"] == ["CPUExecutionProvider"]
    assert manifest["flavors"] == {}  # built-in flavors only


def test_inspect_shows_trees_providers_and_container_elements(loaded: dict[str, Any]) -> None:
    from click.testing import CliRunner

    from cloudflow.cli import main

    result = CliRunner().invoke(main, ["inspect", str(_bundle(loaded))], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for needle in (
        "xgb_classifier  [xgboost]",
        "n_features_in 4 | n_features 4 | n_classes 3 | rounds 8 | objective multi:softprob",
        "n_features 4 | n_classes 3 | trees 18 | objective multiclass",
        "elements by_language [container], nets [container], weights [pickle]",
        "providers CPUExecutionProvider",
        "xgboost-cpu==",
    ):
        assert needle in result.output, f"{needle!r} not in:\n{result.output}"


def test_a_changed_container_file_is_found_when_the_lazy_model_loads(
    loaded: dict[str, Any], tmp_path: Path
) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(_bundle(loaded), copy)
    weights = copy / "cloudflow" / "models" / "ensemble" / "0" / "1" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    bundle = cloudflow.load_bundle(copy, lazy=True)
    assert len(bundle.model("xgb_classifier").classes_) == 3  # the others load
    with pytest.raises(IntegrityError, match=r"ensemble/0/1/weights\.safetensors"):
        bundle.model("ensemble")


def test_device_reaches_the_torch_elements_of_a_container(
    loaded: dict[str, Any], tmp_path: Path
) -> None:
    bundle = cloudflow.load_bundle(_bundle(loaded), device={"ensemble": "cpu"}, dtype="float64")
    nets = bundle.model("ensemble")["nets"]
    assert {str(p.dtype) for net in nets for p in net.parameters()} == {"torch.float64"}
    with pytest.raises(BundleArgumentError, match=r"'xgb_classifier', a xgboost model"):
        cloudflow.load_bundle(_bundle(loaded), device={"xgb_classifier": "cpu"})


# --- flavors users add: register_flavor ------------------------------------------------------

COUNTER_FLAVOR = """
import json

import cloudflow


class Counter:
    def __init__(self, counts):
        self.counts = dict(counts)

    def top(self):
        return max(self.counts, key=self.counts.get)


def _save(obj, path, ctx):
    (path / "counts.json").write_text(json.dumps(obj.counts))
    return {"file": "counts.json"}


def _load(path, info, ctx):
    return Counter(json.loads((path / info["file"]).read_text()))


FLAVOR = cloudflow.Flavor(
    name="counter",
    matches=lambda obj: isinstance(obj, Counter),
    save=_save,
    load=_load,
)


def predict(counter, n):
    return [counter.top()] * n
"""


@pytest.fixture
def counter_flavor(user_modules: Any) -> Iterator[Any]:
    user_modules.write({"counter_flavor.py": COUNTER_FLAVOR})
    import counter_flavor

    cloudflow.register_flavor(counter_flavor.FLAVOR)
    try:
        yield counter_flavor
    finally:
        unregister_flavor("counter")


def test_a_registered_flavor_saves_its_kind_and_is_named_in_the_manifest(
    counter_flavor: Any, tmp_path: Path
) -> None:
    counter = counter_flavor.Counter({"a": 1, "b": 5})
    assert flavor_for(counter).name == "counter"
    assert flavor_for([counter]).name == "container"  # a model of a user flavor counts
    cloudflow.save_bundle(counter_flavor.predict, {"counter": counter}, tmp_path / "bundle")
    data = tmp_path / "bundle" / "cloudflow"
    assert sorted(p.name for p in (data / "models" / "counter").iterdir()) == ["counts.json"]
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["flavors"] == {"counter": {"module": "counter_flavor"}}
    assert cloudflow.load_bundle(tmp_path / "bundle").predict(n=2) == ["b", "b"]
    unregister_flavor("counter")
    expected = r"'counter' flavor, defined in 'counter_flavor' and added with cloudflow\.register"
    with pytest.raises(MissingDependencyError, match=expected):
        cloudflow.load_bundle(tmp_path / "bundle")
    cloudflow.register_flavor(counter_flavor.FLAVOR)
    assert cloudflow.load_bundle(tmp_path / "bundle").predict(n=1) == ["b"]


def test_a_registered_flavor_is_asked_before_the_builtins(counter_flavor: Any) -> None:
    from torch import nn

    linear = nn.Linear(2, 2)
    assert flavor_for(linear).name == "torch"
    grabbing = cloudflow.Flavor(
        name="grabs_linear",
        matches=lambda obj: isinstance(obj, nn.Linear),
        save=counter_flavor.FLAVOR.save,
        load=counter_flavor.FLAVOR.load,
    )
    cloudflow.register_flavor(grabbing)
    try:
        assert flavor_for(linear).name == "grabs_linear"
        assert flavor_for(nn.ReLU()).name == "torch"
    finally:
        unregister_flavor("grabs_linear")
    assert flavor_for(linear).name == "torch"


def test_register_flavor_refuses_a_builtin_name_and_what_is_not_a_flavor() -> None:
    taken = cloudflow.Flavor(name="torch", matches=bool, save=dict, load=dict)  # type: ignore[arg-type]
    with pytest.raises(BundleArgumentError, match=r"'torch' is the name of a built-in flavor"):
        cloudflow.register_flavor(taken)
    with pytest.raises(BundleArgumentError, match=r"takes a cloudflow\.Flavor, got dict"):
        cloudflow.register_flavor({"name": "x"})  # type: ignore[arg-type]


# --- flavors users add: a plugin through the entry point group ----------------------------------

PLUGIN_APP = """
def predict(table, tables, row):
    return {"one": table.lookup(row), "many": {k: t.lookup(row) for k, t in tables.items()}}
"""

PLUGIN_SAVE = r"""
import sys

import cloudflow
from cf_flavor_plugin import Table
from cloudflow.flavors import flavor_for

import plugin_app

table = Table({"a": [1.0, 2.0], "b": [3.0, 4.0]}, scale=2.0)
models = {"table": table, "tables": {"x": table, "y": Table({"c": [5.0, 6.0]})}}
cloudflow.save_bundle(plugin_app.predict, models, sys.argv[1])
emit({
    "flavor": flavor_for(table).name,
    "expected": [plugin_app.predict(row=r, **models) for r in (0, 1)],
})
"""

PLUGIN_LOAD = r"""
import importlib.util
import sys

import cloudflow
import mlflow

found = importlib.util.find_spec("plugin_app") is not None
results["importable"] = {"ok": True, "value": found}
bundle = attempt("load_bundle", lambda: cloudflow.load_bundle(sys.argv[1]))
if bundle is not None:
    attempt("answers", lambda: [bundle.predict(row=r) for r in (0, 1)])
    attempt("pyfunc", lambda: mlflow.pyfunc.load_model(sys.argv[1]).predict({"row": 1}))
emit(results)
"""


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plugin package installed (dist-info, entry points) into a folder of its own."""
    root = tmp_path_factory.mktemp("plugin")
    source = root / "src"
    shutil.copytree(FIXTURES_DIR / "flavor_plugin", source)  # the build writes beside it
    site = root / "site"
    argv = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", site]
    # Building with the setuptools installed here takes seconds, not a download of setuptools;
    # it needs one that builds wheels itself (70.1+, which torch pulls in) or the wheel package.
    builds_wheels = importlib.util.find_spec("setuptools") is not None and (
        importlib.util.find_spec("setuptools.command.bdist_wheel") is not None
    )
    if builds_wheels or importlib.util.find_spec("wheel") is not None:
        argv.append("--no-build-isolation")
    subprocess.run([*map(str, argv), str(source)], check=True, capture_output=True, timeout=300)
    return site


def _with_plugin(site: Path) -> dict[str, str]:
    paths = [str(site)] + ([] if CLOUDFLOW_INSTALLED else [str(REPO_ROOT)])
    return {"PYTHONPATH": os.pathsep.join(paths)}


@pytest.mark.slow
def test_a_plugin_flavor_round_trips_and_its_absence_names_the_distribution(
    plugin_site: Path, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "plugin_app.py").write_text(PLUGIN_APP, encoding="utf-8")
    bundle = tmp_path / "bundle"
    env = _with_plugin(plugin_site)
    saved = run_snippet(PLUGIN_SAVE, cwd=project, env=env, args=[str(bundle)])
    shutil.rmtree(project)
    assert saved["flavor"] == "cf_table"
    manifest = json.loads((bundle / "cloudflow" / "manifest.json").read_text())
    assert manifest["flavors"]["cf_table"] == {
        "module": "cf_flavor_plugin",
        "entry_point": "cf_table = cf_flavor_plugin:FLAVOR",
        "distribution": "cf-flavor-plugin",
        "version": "0.1.0",
    }
    assert manifest["models"]["tables"]["flavor"] == "container"
    assert manifest["models"]["table"]["metadata"]["columns"] == 2
    assert requirement_names(bundle / "requirements.txt")["cf-flavor-plugin"] == "==0.1.0"
    assert (bundle / "cloudflow" / "models" / "table" / "table.json").exists()

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    got = run_snippet(PLUGIN_LOAD, cwd=elsewhere, env=env, args=[str(bundle)])
    assert got["importable"]["value"] is False
    assert outcome(got, "answers") == saved["expected"]
    assert outcome(got, "pyfunc") == saved["expected"][1]

    without = run_snippet(PLUGIN_LOAD, cwd=elsewhere, args=[str(bundle)])
    assert not without["load_bundle"]["ok"]
    error = without["load_bundle"]["error"]
    assert "MissingDependencyError" in error
    assert "Model 'table' was saved with the 'cf_table' flavor" in error
    assert "pip install cf-flavor-plugin==0.1.0" in error


BROKEN_LOAD = r"""
import logging, sys

import cloudflow

warnings = []
handler = logging.Handler()
handler.emit = lambda record: warnings.append(record.getMessage())
logging.getLogger("cloudflow").addHandler(handler)
# Another bundle still saves and loads: the broken plugin is skipped, not fatal.
cloudflow.save_bundle(lambda x: x + 1, {}, sys.argv[2])
attempt("other", lambda: cloudflow.load_bundle(sys.argv[2]).predict(x=1))
attempt("load_bundle", lambda: cloudflow.load_bundle(sys.argv[1]))
results["warnings"] = {"ok": True, "value": warnings}
emit(results)
"""


@pytest.mark.slow
def test_a_plugin_that_fails_to_import_is_skipped_and_named_when_its_bundle_loads(
    plugin_site: Path, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "plugin_app.py").write_text(PLUGIN_APP, encoding="utf-8")
    bundle = tmp_path / "bundle"
    saved = run_snippet(PLUGIN_SAVE, cwd=project, env=_with_plugin(plugin_site), args=[str(bundle)])
    shutil.rmtree(project)
    assert saved["flavor"] == "cf_table"
    # The same distribution installed, but its module now fails on import (a dependency of its
    # own missing), as a broken install does.
    broken = tmp_path / "broken-site"
    shutil.copytree(plugin_site, broken)
    (broken / "cf_flavor_plugin" / "__init__.py").write_text(
        'raise ImportError("cf_flavor_plugin needs the library libtable, which is missing")\n',
        encoding="utf-8",
    )
    got = run_snippet(
        BROKEN_LOAD,
        cwd=tmp_path,
        env=_with_plugin(broken),
        args=[str(bundle), str(tmp_path / "other")],
    )
    assert outcome(got, "other") == 2
    warned = outcome(got, "warnings")
    assert any("Skipped the cloudflow flavor plugin 'cf_table'" in w for w in warned), warned
    assert any("needs the library libtable" in w for w in warned), warned
    error = got["load_bundle"]["error"]
    assert "MissingDependencyError" in error
    assert "whose plugin is installed but failed to load: ImportError" in error
    assert "Reinstall it" in error
