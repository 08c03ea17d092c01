"""The catalogue of misuse: every kind of mistake gets one exception class and a message that names
the bad value and says how to fix it, and nothing is written anywhere.

Each row of :data:`CATALOGUE` is one kind of misuse. The test snapshots every file cloudflow could
touch (the case's own folder, the shared store's artifacts, the shared bundles) and the store's
runs and logged models, makes the bad call, checks the exception's exact class and its message,
and compares the snapshots.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import mlflow.pyfunc
import pytest
from conftest import restored_mlflow_state
from helpers import sqlite_uri

import cloudflow
from cloudflow.exceptions import (
    BundleArgumentError,
    BundleFormatError,
    CaptureError,
    CloudflowError,
    EnvironmentMismatchError,
    IntegrityError,
    MissingDependencyError,
    ModelKeyError,
    NotFoundError,
    PredictArgumentError,
    StoreError,
)

UNKNOWN_RUN = "0123456789abcdef0123456789abcdef"
KEY = b"misuse signing key, 32 bytes long"

LOCKED = """
import threading

LOCK = threading.Lock()


def predict_locked(sentiment_model, input_type):
    with LOCK:
        return input_type
"""

APP = """
import threading


class Holder:
    def __init__(self):
        self.k = 2
        self.lock = threading.Lock()


def predict(sentiment_model, input_type, data=None):
    return [sentiment_model["k"], input_type, data]


def predict_sklearn(clf, rows):
    return clf.predict(rows).tolist()
"""


@dataclass
class World:
    """What the cases act on; ``tmp`` is new for every case, the rest is shared."""

    tmp: Path
    store: Path
    run_id: str
    other_run_id: str
    bundle: Path
    signed_bundle: Path
    sklearn_bundle: Path
    app: Any
    monkeypatch: pytest.MonkeyPatch
    deleted_run: str = ""
    damaged_store: Path | None = None

    def copy_bundle(self, name: str = "copy") -> Path:
        return Path(shutil.copytree(self.bundle, self.tmp / name))


def _rewrite_manifest(bundle: Path, **changes: Any) -> Path:
    """Edit a manifest as anyone can, recomputing its documented checksum."""
    path = bundle / "cloudflow" / "manifest.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    for key, value in changes.items():
        if key == "flavor":
            for entry in data["models"].values():
                entry["flavor"] = value
        else:
            data[key] = value
    body = {k: v for k, v in data.items() if k != "manifest_sha256"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    data["manifest_sha256"] = hashlib.sha256(canonical.encode("ascii")).hexdigest()
    path.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")
    return bundle


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A store with a logged bundle, and bundles saved to paths; built once for the module."""
    root = tmp_path_factory.mktemp("misuse")
    source = root / "src"
    source.mkdir()
    (source / "misuse_app_5d1.py").write_text(textwrap.dedent(APP), encoding="utf-8")
    (source / "misuse_locked_5d1.py").write_text(textwrap.dedent(LOCKED), encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch, restored_mlflow_state():
        patch.syspath_prepend(str(source))
        import misuse_app_5d1 as app
        from sklearn.linear_model import LogisticRegression

        store = root / "store"
        experiment_id = cloudflow.prepare_env(store, "misuse")
        other_id = cloudflow.prepare_env(store, "other")
        with mlflow.start_run(experiment_id=experiment_id) as run:
            cloudflow.cloudflow_model().save(
                str(store), "misuse", run.info.run_id, app.predict, {"sentiment_model": {"k": 1}}
            )
        with mlflow.start_run(experiment_id=other_id) as other:
            pass
        bundle = root / "bundle"
        cloudflow.save_bundle(app.predict, {"sentiment_model": {"k": 1}}, bundle)
        signed = root / "signed"
        cloudflow.save_bundle(app.predict, {"sentiment_model": {"k": 1}}, signed, signing_key=KEY)
        clf = LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1])
        sklearn_bundle = root / "sklearn_bundle"
        cloudflow.save_bundle(app.predict_sklearn, {"clf": clf}, sklearn_bundle)
        yield {
            "store": store,
            "run_id": run.info.run_id,
            "other_run_id": other.info.run_id,
            "bundle": bundle,
            "signed_bundle": signed,
            "sklearn_bundle": sklearn_bundle,
            "app": app,
        }
        sys.modules.pop("misuse_app_5d1", None)
        sys.modules.pop("misuse_locked_5d1", None)


@dataclass(frozen=True)
class Misuse:
    kind: str
    error: type[CloudflowError]
    match: str  # the bad value, then the fix
    act: Callable[[World], object]
    setup: Callable[[World], object] | None = None


def seed_load(w: World, experiment: str, run_id: str, store: Path | None = None) -> object:
    return cloudflow.cloudflow_model().load_model(str(store or w.store), experiment, run_id)


def seed_save(w: World, models: object) -> object:
    return cloudflow.cloudflow_model().save(str(w.store), "misuse", w.run_id, w.app.predict, models)


def fresh(w: World) -> Path:
    return w.tmp / "new_bundle"


def _save(w: World, predict: Any = None, models: Any = None, **kwargs: Any) -> None:
    predict = w.app.predict if predict is None else predict
    models = {"sentiment_model": {"k": 1}} if models is None else models
    cloudflow.save_bundle(predict, models, fresh(w), **kwargs)


def _same_size_garbage(path: Path) -> None:
    path.write_bytes(b"\x80" * path.stat().st_size)


def _loaded(w: World) -> cloudflow.Bundle:
    return cloudflow.load_bundle(w.bundle)


def _without_sklearn(w: World) -> object:
    w.monkeypatch.setitem(sys.modules, "sklearn", None)  # as if it were not installed
    return cloudflow.load_bundle(w.sklearn_bundle)


async def _apredict(sentiment_model: Any, input_type: str) -> str:
    return input_type


def _log_in_run(w: World, **kwargs: Any) -> object:
    return cloudflow.log_bundle(w.app.predict, {"sentiment_model": {"k": 1}}, **kwargs)


def _nested(depth: int) -> list[Any]:
    top: list[Any] = []
    inner = top
    for _ in range(depth):
        inner.append([])
        inner = inner[0]
    return top


def _deleted_run(w: World) -> str:
    client = mlflow.MlflowClient(tracking_uri=sqlite_uri(w.store))
    experiment = client.get_experiment_by_name("misuse")
    run = client.create_run(experiment.experiment_id)
    client.delete_run(run.info.run_id)
    return str(run.info.run_id)


def _damaged_store(w: World) -> Path:
    copy = w.tmp / "damaged_store"
    shutil.copytree(w.store, copy)
    db = copy / "mlflow.db"
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 3])
    return copy


CATALOGUE = [
    # -- the cases found by the adversarial round ------------------------------------------
    Misuse(
        "a logged model name MLflow refuses",
        BundleArgumentError,
        r"name must be a model name .* without any of / : \. %.*got 'model\.v2'",
        lambda w: _log_in_run(w, name="model.v2"),
    ),
    Misuse(
        "a logged model name too long for a file name",
        BundleArgumentError,
        r"name must be a model name of 1 to 200 characters.*got 'mmmm.*\.\.\.'",
        lambda w: _log_in_run(w, name="m" * 300),
    ),
    Misuse(
        "a registered model name MLflow refuses",
        BundleArgumentError,
        r"registered_model_name must be a non-empty name without '/' or ':'.*got 'team/iris'",
        lambda w: _log_in_run(w, registered_model_name="team/iris"),
    ),
    Misuse(
        "a bundle path that is None",
        BundleArgumentError,
        r"path must be the path of a folder to create.*got None\. Pass e\.g\. path=",
        lambda w: cloudflow.save_bundle(w.app.predict, {"sentiment_model": {"k": 1}}, None),
    ),
    Misuse(
        "a bundle path under a file",
        BundleArgumentError,
        r"new_bundle/b' is inside '.*new_bundle', which is a file, not a folder",
        lambda w: cloudflow.save_bundle(
            w.app.predict, {"sentiment_model": {"k": 1}}, fresh(w) / "b"
        ),
        setup=lambda w: fresh(w).write_text("a file"),
    ),
    Misuse(
        "a bundle folder name longer than a file system allows",
        BundleArgumentError,
        r"path has a folder name of 300 bytes.*file systems allow 255",
        lambda w: cloudflow.save_bundle(
            w.app.predict, {"sentiment_model": {"k": 1}}, w.tmp / ("n" * 300)
        ),
    ),
    Misuse(
        "metadata nested without end",
        BundleArgumentError,
        r"metadata\['deep'\] is nested deeper than 32 levels",
        lambda w: _save(w, metadata={"deep": _nested(2000)}),
    ),
    Misuse(
        "prepare_env with an empty tracking_uri",
        BundleArgumentError,
        r"tracking_uri must be a folder .* got ''\. Pass e\.g\. prepare_env\(",
        lambda w: cloudflow.prepare_env("", "misuse"),
    ),
    Misuse(
        "prepare_env with None",
        BundleArgumentError,
        r"tracking_uri must be a folder .* got None",
        lambda w: cloudflow.prepare_env(None, "misuse"),  # type: ignore[arg-type]
    ),
    Misuse(
        "an async predict function",
        BundleArgumentError,
        r"'_apredict' is an async function.*asyncio\.run\(apredict",
        lambda w: _save(w, predict=_apredict),
    ),
    Misuse(
        "a save into a deleted run",
        NotFoundError,
        r"The run '[0-9a-f]{32}' was deleted\. Restore it",
        lambda w: cloudflow.cloudflow_model().save(
            str(w.store), "misuse", w.deleted_run, w.app.predict, {"sentiment_model": {"k": 1}}
        ),
        setup=lambda w: setattr(w, "deleted_run", _deleted_run(w)),
    ),
    Misuse(
        "a damaged store database",
        StoreError,
        r"The tracking store's database is damaged .*malformed.*Restore its mlflow\.db",
        lambda w: seed_load(w, "misuse", w.run_id, store=w.damaged_store),
        setup=lambda w: setattr(w, "damaged_store", _damaged_store(w)),
    ),
    Misuse(
        "a data file that does not exist",
        BundleArgumentError,
        r"files\['labels'\] is 'no/such/labels\.json', which cannot be read here",
        lambda w: _save(w, files={"labels": "no/such/labels.json"}),
    ),
    Misuse(
        "a signing secret too short",
        BundleArgumentError,
        r"signing_key is 6 bytes long; a signing secret needs at least 32",
        lambda w: _save(w, signing_key="secret"),
    ),
    Misuse(
        "trusted keys that are not public keys",
        BundleArgumentError,
        r"trusted_keys must hold Ed25519 public keys .* got int",
        lambda w: cloudflow.load_bundle(w.bundle, trusted_keys=[42]),
    ),
    # -- save: the arguments -------------------------------------------------------------------
    Misuse(
        "models not a dict",
        BundleArgumentError,
        r"got list\. Pass e\.g\. models=\{'sentiment_model'",
        lambda w: _save(w, models=[("sentiment_model", {"k": 1})]),
    ),
    Misuse(
        "models key not a str",
        BundleArgumentError,
        r"1 is a int\. Use the parameter names as keys",
        lambda w: _save(w, models={1: {"k": 1}}),
    ),
    Misuse(
        "models key not a parameter",
        ModelKeyError,
        r"'sentiment' is not a parameter of predict\(sentiment_model, .*Rename the key",
        lambda w: _save(w, models={"sentiment": {"k": 1}}),
    ),
    Misuse(
        "models key not an identifier",
        ModelKeyError,
        r"'my-model' is not a valid Python identifier.*Rename the key",
        lambda w: _save(w, models={"my-model": {"k": 1}}),
    ),
    Misuse(
        "predict_fn not callable",
        BundleArgumentError,
        r"got str 'predict_result'\. Pass the function itself",
        lambda w: _save(w, predict="predict_result"),
    ),
    Misuse(
        "predict_fn a builtin",
        BundleArgumentError,
        r"<built-in function len> is a builtin.*Wrap it in a function of your own",
        lambda w: _save(w, predict=len, models={}),
    ),
    Misuse(
        "predict_fn a class",
        BundleArgumentError,
        r"<class 'dict'> is a class.*Wrap it in a function of your own",
        lambda w: _save(w, predict=dict, models={}),
    ),
    Misuse(
        "a model that cannot be pickled",
        CaptureError,
        r"model 'sentiment_model'.*cannot pickle '_thread\.lock'.*\.lock.*Make the model picklable",
        lambda w: _save(w, models={"sentiment_model": w.app.Holder()}),
    ),
    Misuse(
        "code that cannot be pickled",
        CaptureError,
        r"global misuse_locked_5d1\.LOCK \(_thread\.lock\) cannot be pickled.*inside the "
        r"function that uses it.*exclude_modules=\[.misuse_locked_5d1.\]",
        lambda w: _save(w, predict=__import__("misuse_locked_5d1").predict_locked),
    ),
    Misuse(
        "a path that exists",
        BundleArgumentError,
        r"new_bundle' already exists\. Give a new folder, or delete the old bundle",
        lambda w: _save(w),
        setup=lambda w: fresh(w).mkdir(),
    ),
    Misuse(
        "include_modules not module names",
        BundleArgumentError,
        r"such as 'utils' or 'pkg\.sub'; 'not a module' is not one",
        lambda w: _save(w, include_modules=["not a module"]),
    ),
    Misuse(
        "include_modules not importable",
        CaptureError,
        r"'no_such_module_5d1', which cannot be imported.*make the module importable",
        lambda w: _save(w, include_modules=["no_such_module_5d1"]),
    ),
    Misuse(
        "pip_requirements a bare name",
        BundleArgumentError,
        r"'torch', which is not a requirements file.*such as \['torch'\]",
        lambda w: _save(w, pip_requirements="torch"),
    ),
    Misuse(
        "metadata not JSON",
        BundleArgumentError,
        r"metadata\['owner'\] is not JSON.*Use str, numbers",
        lambda w: _save(w, metadata={"owner": object()}),
    ),
    Misuse(
        "signing key of the wrong type",
        BundleArgumentError,
        r"got int\. Pass the key itself.*CLOUDFLOW_SIGNING_KEY",
        lambda w: _save(w, signing_key=12345),
    ),
    Misuse(
        "log_bundle name with a slash",
        BundleArgumentError,
        r"such as 'model' or 'model_v2'; got 'a/b'",
        lambda w: cloudflow.log_bundle(w.app.predict, {"sentiment_model": {"k": 1}}, name="a/b"),
    ),
    Misuse(
        "seed save with a wrong model key",
        ModelKeyError,
        r"'sentiment' is not a parameter.*Rename the key or the parameter",
        lambda w: seed_save(w, {"sentiment": {"k": 1}}),
    ),
    # -- stores, experiments, runs, registered models -------------------------------------------
    Misuse(
        "a tracking folder that cannot be written",
        StoreError,
        r"a_file/store'.*Give a folder you can write to",
        lambda w: cloudflow.prepare_env(w.tmp / "a_file" / "store", "misuse"),
        setup=lambda w: (w.tmp / "a_file").write_text("not a folder"),
    ),
    Misuse(
        "a tracking URI of an unknown scheme",
        StoreError,
        r"'ftp://example\.invalid/store' has the scheme 'ftp'.*Give a folder path",
        lambda w: cloudflow.prepare_env("ftp://example.invalid/store", "misuse"),
    ),
    Misuse(
        "an empty experiment name",
        BundleArgumentError,
        r"a non-empty str\), got ''",
        lambda w: cloudflow.prepare_env(w.tmp / "store", ""),
    ),
    Misuse(
        "an unknown run",
        NotFoundError,
        rf"'{UNKNOWN_RUN}'.*Check the run id",
        lambda w: seed_load(w, "misuse", UNKNOWN_RUN),
    ),
    Misuse(
        "an unknown experiment",
        NotFoundError,
        r"'no-such-experiment'.*Existing experiments: \['Default', 'misuse', 'other'\].*Check the",
        lambda w: seed_load(w, "no-such-experiment", w.run_id),
    ),
    Misuse(
        "a run of another experiment",
        NotFoundError,
        r"is not in experiment 'misuse'.*Check the experiment name",
        lambda w: seed_load(w, "misuse", w.other_run_id),
    ),
    Misuse(
        "a tracking folder that holds no store",
        NotFoundError,
        r"No tracking store at '.*nowhere'.*given to prepare_env",
        lambda w: seed_load(w, "misuse", w.run_id, store=w.tmp / "nowhere"),
    ),
    Misuse(
        "an unknown registered model",
        NotFoundError,
        r"'models:/no-such-model-5d1/1'.*Check the model name, version or alias",
        lambda w: cloudflow.load_bundle("models:/no-such-model-5d1/1"),
        setup=lambda w: mlflow.set_tracking_uri(sqlite_uri(w.store)),
    ),
    Misuse(
        "a runs:/ URI of an unknown run",
        NotFoundError,
        rf"'{UNKNOWN_RUN}'.*Check the run id",
        lambda w: cloudflow.load_bundle(f"runs:/{UNKNOWN_RUN}/model"),
        setup=lambda w: mlflow.set_tracking_uri(sqlite_uri(w.store)),
    ),
    # -- bundles on disk ------------------------------------------------------------------------
    Misuse(
        "a model_uri that is not a str",
        BundleArgumentError,
        r"got int\. Pass e\.g\. 'runs:/<run_id>/model'",
        lambda w: cloudflow.load_bundle(123),
    ),
    Misuse(
        "a path that does not exist",
        NotFoundError,
        r"'.*missing_bundle'.*Check the path",
        lambda w: cloudflow.load_bundle(w.tmp / "missing_bundle"),
    ),
    Misuse(
        "a folder that is not a bundle",
        BundleFormatError,
        r"'.*empty' is not a cloudflow bundle.*Give the folder that holds the MLmodel",
        lambda w: cloudflow.load_bundle(w.tmp / "empty"),
        setup=lambda w: (w.tmp / "empty").mkdir(),
    ),
    Misuse(
        "a bundle of a newer format",
        BundleFormatError,
        r"format version 99.*Upgrade cloudflow: pip install -U cloudflow",
        lambda w: cloudflow.load_bundle(w.tmp / "copy"),
        setup=lambda w: _rewrite_manifest(w.copy_bundle(), format_version=99),
    ),
    Misuse(
        "a corrupted manifest",
        IntegrityError,
        r"manifest\.json' is damaged: it is not valid JSON.*save it again",
        lambda w: cloudflow.load_bundle(w.tmp / "copy"),
        setup=lambda w: (w.copy_bundle() / "cloudflow" / "manifest.json").write_text('{"files":'),
    ),
    Misuse(
        "a damaged code file",
        IntegrityError,
        r"'code\.pkl'.*does not match the blake3.*save the bundle again",
        lambda w: cloudflow.load_bundle(w.tmp / "copy"),
        setup=lambda w: _same_size_garbage(w.copy_bundle() / "cloudflow" / "code.pkl"),
    ),
    Misuse(
        "an MLmodel naming a missing data folder, through MLflow",
        NotFoundError,
        r"'.*copy/elsewhere': the folder does not exist\. Check the path",
        lambda w: mlflow.pyfunc.load_model(str(w.tmp / "copy")),
        setup=lambda w: (w.copy_bundle() / "MLmodel").write_text(
            (w.bundle / "MLmodel").read_text().replace("data: cloudflow", "data: elsewhere")
        ),
    ),
    Misuse(
        "an unknown flavor",
        BundleFormatError,
        r"Unknown model flavor 'tflite'.*upgrade cloudflow, or install the plugin",
        lambda w: cloudflow.load_bundle(w.tmp / "copy"),
        setup=lambda w: _rewrite_manifest(w.copy_bundle(), flavor="tflite"),
    ),
    Misuse(
        "a flavor library that is not installed",
        MissingDependencyError,
        r"needs scikit-learn \(it was saved with scikit-learn==[\d.]+\), which is not installed"
        r".*pip install scikit-learn==[\d.]+",
        _without_sklearn,
    ),
    Misuse(
        "a bundle of another Python",
        EnvironmentMismatchError,
        r"Python 3\.2\.0.*pass allow_python_mismatch=True",
        lambda w: cloudflow.load_bundle(w.tmp / "copy"),
        setup=lambda w: _rewrite_manifest(w.copy_bundle(), python_version="3.2.0"),
    ),
    Misuse(
        "a bundle signed with another key",
        IntegrityError,
        r"signed with another key.*Do not use this bundle",
        lambda w: cloudflow.load_bundle(
            w.signed_bundle, signing_key=b"not the key, 32 bytes long or more"
        ),
    ),
    Misuse(
        "an unsigned bundle where a key is required",
        IntegrityError,
        r"is not signed.*Sign it \(cloudflow sign\)",
        lambda w: cloudflow.load_bundle(w.bundle, signing_key=KEY),
    ),
    # -- predict ---------------------------------------------------------------------------------
    Misuse(
        "an unknown predict parameter",
        PredictArgumentError,
        r"no parameter 'colour'\. Its inputs are \['input_type', 'data'\].*Check the spelling",
        lambda w: _loaded(w).predict(input_type="text", colour="red"),
    ),
    Misuse(
        "a missing predict parameter",
        PredictArgumentError,
        r"missing the required parameter 'input_type'.*required: \['input_type'\]",
        lambda w: _loaded(w).predict(data=[1]),
    ),
    Misuse(
        "a model passed as a predict parameter",
        PredictArgumentError,
        r"'sentiment_model' is a model of this bundle.*do not pass it to predict",
        lambda w: _loaded(w).predict(input_type="text", sentiment_model={"k": 5}),
    ),
    Misuse(
        "a pyfunc input of the wrong kind",
        PredictArgumentError,
        r"got str\. Its inputs are \['input_type', 'data'\]",
        lambda w: mlflow.pyfunc.load_model(str(w.bundle)).predict("some text"),
    ),
    Misuse(
        "a seed predict before load_model",
        CloudflowError,
        r"No model is loaded: call load_model\(tracking_uri, experiment_id, run_id\) first",
        lambda w: cloudflow.cloudflow_model().predict(input_type="text"),
    ),
    Misuse(
        "a log level that does not exist",
        BundleArgumentError,
        r"'LOUD' is not a logging level\. Use one of",
        lambda w: cloudflow.cloudflow_model(log_level="LOUD"),
    ),
]


def _snapshot(*roots: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for root in roots:
        if not root.exists():
            out[str(root)] = None
            continue
        for path in sorted(root.rglob("*")):
            if path.is_file():
                out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                out[str(path)] = "dir"
    return out


def _records(store: Path) -> tuple[int, int, list[str]]:
    client = mlflow.MlflowClient(tracking_uri=sqlite_uri(store))
    experiments = client.search_experiments()
    ids = [e.experiment_id for e in experiments]
    runs = client.search_runs(ids, max_results=1000)
    models = client.search_logged_models(experiment_ids=ids)
    return len(runs), len(models), sorted(e.name for e in experiments)


def test_the_catalogue_is_large_enough() -> None:
    assert len(CATALOGUE) >= 20
    assert len({case.kind for case in CATALOGUE}) == len(CATALOGUE)


@pytest.mark.parametrize("case", CATALOGUE, ids=[case.kind for case in CATALOGUE])
def test_misuse_is_answered_clearly_and_writes_nothing(
    case: Misuse,
    shared: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mlflow_state: None,
) -> None:
    monkeypatch.syspath_prepend(str(shared["bundle"].parent / "src"))
    monkeypatch.setitem(sys.modules, "misuse_app_5d1", shared["app"])
    monkeypatch.delenv("CLOUDFLOW_SIGNING_KEY", raising=False)
    world = World(tmp=tmp_path, monkeypatch=monkeypatch, **shared)
    if case.setup is not None:
        case.setup(world)
    watched = (tmp_path, world.store / "artifacts", world.bundle, world.sklearn_bundle)
    before, records = _snapshot(*watched), _records(world.store)

    with pytest.raises(case.error, match=f"(?s){case.match}") as raised:
        case.act(world)
    assert raised.type is case.error, f"{raised.type.__name__}: {raised.value}"

    assert _snapshot(*watched) == before
    assert _records(world.store) == records
    assert mlflow.active_run() is None
