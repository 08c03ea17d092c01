"""Keras 3 models on the torch, JAX and tensorflow backends, and TensorFlow modules as SavedModels.

The user's source (a registered custom layer, an unregistered one, a custom activation, a
subclassed model; for TensorFlow a ``tf.Module`` with ``tf.function`` methods) is written to a
folder, one fresh process saves a Sequential, a functional and a subclassed model through the
seed API, the folder is deleted, and another fresh process from another working directory,
with no ``KERAS_BACKEND`` set, loads the bundle every way (``load_bundle``, the seed API,
``mlflow.pyfunc.load_model``): outputs must equal the originals exactly.

The torch and JAX backends run in the test environment itself (keras and jax are in the ``test``
extra; the JAX round trip is slow). The tensorflow backend and the ``tf.Module`` run in a venv of
their own (tensorflow-cpu, pinned by requirements/constraints-tensorflow.txt beside
constraints.txt), built once per session and shared by the workers (tests/pythons.py); those
tests are slow. A bundle of one backend loaded where Keras runs on the other, or where the saved
backend's library is missing, is refused with the backends named and the fix.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

import models
import pytest
from helpers import (
    REPO_ROOT,
    grep_tree,
    outcome,
    requirement_names,
    run_snippet,
    source_fragments,
    sqlite_uri,
)
from pythons import CONSTRAINTS, ensure_venv, find_python, run_python_snippet, where_we_looked

from cloudflow.exceptions import CaptureError, EnvironmentMismatchError

KMODELS = '''
"""Keras models of the user's own."""

import keras
import numpy as np
from keras import layers, ops


def half_relu(x):
    return ops.relu(x) * 0.5


@keras.saving.register_keras_serializable(package="kmodels")
class Scale(layers.Layer):
    def __init__(self, factor=2.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def build(self, shape):
        self.w = self.add_weight(shape=(shape[-1],), initializer="random_normal", name="w")

    def call(self, x):
        return x * self.w * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


class Offset(layers.Layer):  # not registered: found by its module-level name
    def build(self, shape):
        self.b = self.add_weight(
            shape=(shape[-1],), initializer="random_normal", name="b", trainable=False
        )

    def call(self, x):
        return x + self.b


class Net(keras.Model):
    def __init__(self, units=64, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.hidden = layers.Dense(units, activation=half_relu)
        self.scale = Scale(3.0)
        self.head = layers.Dense(3)

    def call(self, x):
        return self.head(self.scale(self.hidden(x)))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def build():
    keras.utils.set_random_seed(7)
    sequential = keras.Sequential(
        [
            keras.Input((4,)),
            layers.Dense(64, activation=half_relu),
            Offset(),
            layers.Dropout(0.5),
            layers.Dense(3, activation="softmax"),
        ]
    )
    inputs = keras.Input((4,))
    hidden = Scale(0.5)(layers.Dense(64)(inputs))
    functional = keras.Model(inputs, layers.Dense(3)(layers.BatchNormalization()(hidden)))
    subclassed = Net()
    subclassed(np.zeros((1, 4), dtype="float32"))
    return {"sequential": sequential, "functional": functional, "subclassed": subclassed}
'''

TFMODELS = '''
"""A TensorFlow module of the user's own, not Keras."""

import tensorflow as tf


class Affine(tf.Module):
    def __init__(self, name=None):
        super().__init__(name=name)
        self.w = tf.Variable(tf.random.stateless_normal((4, 64), seed=(1, 2)), name="w")
        self.b = tf.Variable(tf.zeros((64,)), name="b", trainable=False)
        self.steps = tf.Variable(0, name="steps", trainable=False)

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
    def __call__(self, x):
        return tf.nn.relu(tf.matmul(x, self.w) + self.b)


class Scorer(tf.Module):
    def __init__(self):
        super().__init__()
        self.affine = Affine()
        self.head = tf.Variable(tf.random.stateless_normal((64, 3), seed=(3, 4)), name="head")

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
    def score(self, x):
        return tf.matmul(self.affine(x), self.head)

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
    def label(self, x):
        return tf.argmax(self.score(x), axis=-1)

    def python_only(self):
        return "not in a SavedModel"
'''

APP = """
import keras
import numpy as np


def predict(kind, rows, sequential, functional, subclassed):
    x = np.asarray(rows, dtype="float32")
    model = {"sequential": sequential, "functional": functional, "subclassed": subclassed}[kind]
    return keras.ops.convert_to_numpy(model(x, training=False)).tolist()


def predict_tf(kind, rows, sequential, functional, subclassed, scorer):
    if kind == "scorer":
        import tensorflow as tf

        x = tf.constant(np.asarray(rows, dtype="float32"))
        score, label = scorer.score(x), scorer.label(x)
        return {"score": score.numpy().tolist(), "label": label.numpy().tolist()}
    return predict(kind, rows, sequential, functional, subclassed)
"""

KERAS_KINDS = ["sequential", "functional", "subclassed"]
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [-1.0, 0.0, 2.5, 9.0]]
EXPERIMENT = "keras"

SAVE = r"""
import json
import sys

import cloudflow
import mlflow

import app
import kmodels

spec = json.loads(sys.argv[1])
models = kmodels.build()
predict = app.predict
kinds = list(models)
if spec["tensorflow"]:
    import tfmodels

    models["scorer"] = tfmodels.Scorer()
    predict = app.predict_tf
    kinds.append("scorer")
expected = {kind: predict(kind=kind, rows=spec["rows"], **models) for kind in kinds}
weights = {
    name: models[name].get_weights()[0].tobytes().hex()
    for name in ("sequential", "functional", "subclassed")
}
if spec["tensorflow"]:
    weights["scorer"] = models["scorer"].affine.w.numpy().tobytes().hex()
experiment_id = cloudflow.prepare_env(spec["store"], "keras")
with mlflow.start_run(experiment_id=experiment_id) as run:
    cloudflow.cloudflow_model().save(
        tracking_uri=spec["store"],
        experiment_id="keras",
        run_id=run.info.run_id,
        predict_function=predict,
        models=models,
    )
import keras

emit({
    "run_id": run.info.run_id,
    "expected": expected,
    "kinds": kinds,
    "weights": weights,
    "backend": keras.backend.backend(),
})
"""

LOADER = r"""
import importlib.util
import json
import os
import sys

spec = json.loads(sys.argv[1])
results["importable"] = {
    "ok": True,
    "value": [m for m in ("app", "kmodels", "tfmodels") if importlib.util.find_spec(m)],
}
results["backend_before"] = {"ok": True, "value": os.environ.get("KERAS_BACKEND")}

import cloudflow


def answers(predict):
    return {kind: predict(kind=kind, rows=spec["rows"]) for kind in spec["kinds"]}


def seed():
    model = cloudflow.cloudflow_model()
    model.load_model(tracking_uri=spec["store"], experiment_id="keras", run_id=spec["run_id"])
    return answers(model.predict)


attempt("seed", seed)

import keras
import mlflow

results["backend"] = {"ok": True, "value": keras.backend.backend()}
mlflow.set_tracking_uri(spec["tracking_uri"])
uri = f"runs:/{spec['run_id']}/model"
bundle = attempt("load_bundle", lambda: cloudflow.load_bundle(uri))
if bundle is not None:
    results["path"] = {"ok": True, "value": str(bundle.path)}
    attempt("load_bundle_answers", lambda: answers(bundle.predict))
    attempt("classes", lambda: {k: type(v).__module__ + "." + type(v).__qualname__
                                for k, v in bundle.models.items()})
    if "scorer" in bundle.models:
        import tensorflow as tf

        scorer = bundle.models["scorer"]

        def restored():
            found = {id(v): v for v in tf.train.TrackableView(scorer).descendants()
                     if isinstance(v, tf.Variable)}
            return {
                "python_only": hasattr(scorer, "python_only"),
                "module_helpers": [n for n in ("variables", "submodules") if hasattr(scorer, n)],
                "variables": sorted(v.name for v in found.values()),
                "trainable": sorted(v.name for v in found.values() if v.trainable),
                "affine_call": scorer.affine(tf.constant(spec["rows"])).numpy().tolist(),
                "signatures": sorted(scorer.signatures),
            }

        attempt("restored", restored)
pyfunc = attempt("pyfunc", lambda: mlflow.pyfunc.load_model(uri))
if pyfunc is not None:
    attempt("pyfunc_answers", lambda: answers(lambda **kw: pyfunc.predict(kw)))
emit(results)
"""

# Loads a bundle where it should be refused; argv: bundle path, "import keras first" flag.
REFUSED = r"""
import sys

if sys.argv[2] == "1":
    import keras  # binds this process to its backend before the bundle is read

import cloudflow

attempt("load", lambda: cloudflow.load_bundle(sys.argv[1]))
emit(results)
"""


def _write_source(folder: Path, tensorflow: bool) -> None:
    folder.mkdir()
    files = {"kmodels.py": KMODELS, "app.py": APP}
    if tensorflow:
        files["tfmodels.py"] = TFMODELS
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")


def _round_trip(root: Path, python: Path | None, backend: str, tensorflow: bool) -> dict[str, Any]:
    """Save in one fresh process, delete the source, load in another from elsewhere."""
    source = root / "user_src"
    _write_source(source, tensorflow)
    store = root / "store"
    spec = {"store": str(store), "rows": ROWS, "tensorflow": tensorflow}

    def run(code: str, cwd: Path, args: list[str], env: dict[str, str]) -> Any:
        if python is None:
            return run_snippet(code, cwd=cwd, args=args, env=env)
        return run_python_snippet(python, code, cwd=cwd, args=args, env=env)

    saved = run(SAVE, source, [json.dumps(spec)], {"KERAS_BACKEND": backend})
    shutil.rmtree(source)
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    load_spec = {
        **spec,
        "tracking_uri": sqlite_uri(store),
        "run_id": saved["run_id"],
        "kinds": saved["kinds"],
    }
    loaded = run(LOADER, elsewhere, [json.dumps(load_spec)], _without_backend())
    return {"saved": saved, "loaded": loaded, "root": root, "source": source}


def _without_backend() -> dict[str, str]:
    # The loading process inherits the test process's environment: make sure no backend is set
    # there (the bundle must bring its own).
    assert "KERAS_BACKEND" not in os.environ
    return {}


def _bundle(trip: dict[str, Any]) -> Path:
    return Path(outcome(trip["loaded"], "path"))


def _model_dir(trip: dict[str, Any]) -> Path:
    return _bundle(trip) / "cloudflow" / "models"


def _manifest(trip: dict[str, Any]) -> dict[str, Any]:
    return json.loads((_bundle(trip) / "cloudflow" / "manifest.json").read_text())


def _windows(data: bytes) -> list[bytes]:
    return [data[i : i + 24] for i in range(0, len(data) - 24, 61)]


def _assert_weights_not_pickled(trip: dict[str, Any], name: str, stored: bytes) -> None:
    """The model's first weight array is in ``stored`` (its native file), in no pickle."""
    weights = bytes.fromhex(trip["saved"]["weights"][name])
    windows = _windows(weights)
    assert len(weights) >= 1024
    assert all(w in stored for w in windows), f"{name}: the weights are not in its native file"
    for pickled in _bundle(trip).rglob("*.pkl"):
        data = pickled.read_bytes()
        found = [w for w in windows if w in data]
        assert not found, f"{name}: {pickled.relative_to(_bundle(trip))} holds its weights"


def _assert_exact_in_a_clean_process(
    trip: dict[str, Any], way: str, backend: str, kinds: list[str]
) -> None:
    """Loaded ``way`` with the source gone and no KERAS_BACKEND set, on the bundle's backend,
    each kind answers exactly as the original did."""
    loaded = trip["loaded"]
    assert loaded["importable"]["value"] == []  # the user's source is gone
    assert loaded["backend_before"]["value"] is None
    assert loaded["backend"]["value"] == trip["saved"]["backend"] == backend
    got = outcome(loaded, way)
    for kind in kinds:
        assert got[kind] == trip["saved"]["expected"][kind], kind  # exact: same graphs


def _assert_pinned(trip: dict[str, Any], dists: tuple[str, ...]) -> dict[str, str]:
    """Each of ``dists`` is pinned in the bundle's requirements at the version installed here;
    returns the requirements."""
    import importlib.metadata

    reqs = requirement_names(_bundle(trip) / "requirements.txt")
    for dist in dists:
        version = importlib.metadata.version(dist).partition("+")[0]
        assert reqs.get(dist) == f"=={version}", (dist, reqs)
    return reqs


# --- Keras on the torch backend, in this environment ---------------------------------------


@pytest.fixture(scope="module")
def torch_trip(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _round_trip(tmp_path_factory.mktemp("keras_torch"), None, "torch", False)


def test_torch_backend_the_source_is_gone_and_the_backend_came_from_the_bundle(
    torch_trip: dict[str, Any],
) -> None:
    loaded = torch_trip["loaded"]
    assert loaded["importable"]["value"] == []
    assert loaded["backend_before"]["value"] is None
    assert loaded["backend"]["value"] == torch_trip["saved"]["backend"] == "torch"


@pytest.mark.parametrize("way", ["load_bundle_answers", "seed", "pyfunc_answers"])
def test_torch_backend_every_way_of_loading_gives_exactly_the_original_outputs(
    torch_trip: dict[str, Any], way: str
) -> None:
    got = outcome(torch_trip["loaded"], way)
    for kind in KERAS_KINDS:
        assert got[kind] == torch_trip["saved"]["expected"][kind], kind  # exact


def test_torch_backend_user_classes_come_back_from_the_bundle(torch_trip: dict[str, Any]) -> None:
    classes = outcome(torch_trip["loaded"], "classes")
    assert classes == {
        "sequential": "keras.src.models.sequential.Sequential",
        "functional": "keras.src.models.functional.Functional",
        "subclassed": "kmodels.Net",
    }


def test_torch_backend_files_are_the_keras_archive_and_no_source(
    torch_trip: dict[str, Any],
) -> None:
    models = _model_dir(torch_trip)
    for kind in KERAS_KINDS:
        assert sorted(p.name for p in (models / kind).iterdir()) == [
            "custom_objects.pkl",
            "model.keras",
        ], kind
        with zipfile.ZipFile(models / kind / "model.keras") as archive:
            assert sorted(archive.namelist()) == [
                "config.json",
                "metadata.json",
                "model.weights.h5",
            ]
            stored = archive.read("model.weights.h5")
        _assert_weights_not_pickled(torch_trip, kind, stored)
    bundle = _bundle(torch_trip)
    assert not list(bundle.rglob("*.py"))
    fragments = source_fragments_of(KMODELS, torch_trip["root"] / "fragments")
    assert grep_tree(bundle, [*fragments["comments"], *fragments["code"]]) == []
    assert grep_tree(bundle, [str(torch_trip["source"])]) == []


def source_fragments_of(text: str, folder: Path) -> dict[str, list[str]]:
    folder.mkdir(exist_ok=True)
    (folder / "kmodels.py").write_text(text, encoding="utf-8")
    fragments = source_fragments(folder)
    # Keras writes these names into its config, which is what they are for.
    names = ("class Scale", "class Offset", "class Net", "def half_relu")
    fragments["code"] = [line for line in fragments["code"] if not line.startswith(names)]
    return fragments


def test_torch_backend_manifest_describes_each_model_and_pins_keras_and_torch(
    torch_trip: dict[str, Any],
) -> None:

    manifest = _manifest(torch_trip)
    entries = manifest["models"]
    assert {k: v["flavor"] for k, v in entries.items()} == dict.fromkeys(KERAS_KINDS, "keras")
    info = {k: v["info"] for k, v in entries.items()}
    assert info["sequential"]["backend"] == "torch"
    assert info["sequential"]["custom_names"] == ["Offset", "half_relu"]
    assert info["functional"]["custom_names"] == ["kmodels>Scale"]
    assert info["subclassed"]["custom_names"] == ["Net"]
    meta = {k: v["metadata"] for k, v in entries.items()}
    assert meta["sequential"] == {
        **meta["sequential"],
        "framework": "keras",
        "class": "keras.src.models.sequential.Sequential",
        "backend": "torch",
        "parameters": 4 * 64 + 64 + 64 + 64 * 3 + 3,
        "trainable_parameters": 4 * 64 + 64 + 64 * 3 + 3,
        "frozen_parameters": 64,
        "layers": 3,
        "layer_types": {"Dense": 2, "Offset": 1},
        "tensors": 5,
        "dtype": "float32",
    }
    assert meta["functional"]["layer_types"] == {
        "BatchNormalization": 1,
        "Dense": 2,
        "Scale": 1,
    }
    assert meta["functional"]["frozen_parameters"] == 2 * 64  # moving mean and variance
    assert meta["subclassed"]["class"] == "kmodels.Net"
    shapes = meta["subclassed"]["tensor_shapes"]
    assert sorted(map(str, shapes.values())) == ["[3]", "[4, 64]", "[64, 3]", "[64]", "[64]"]
    _assert_pinned(torch_trip, ("keras", "torch"))


def test_torch_backend_bundle_refused_where_keras_is_set_to_another_backend(
    torch_trip: dict[str, Any], tmp_path: Path
) -> None:
    got = run_snippet(
        REFUSED, cwd=tmp_path, args=[str(_bundle(torch_trip)), "0"], env={"KERAS_BACKEND": "numpy"}
    )
    error = got["load"]["error"]
    assert "EnvironmentMismatchError: Model 'functional': A Keras model" in error
    assert "saved on the 'torch' backend" in error
    assert "runs on the 'numpy' backend (KERAS_BACKEND=numpy)" in error
    assert "Set KERAS_BACKEND=torch before anything imports keras" in error


# --- Keras on the JAX backend, in this environment (jax is in the test extra) -----------------


@pytest.fixture(scope="module")
def jax_trip(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _round_trip(tmp_path_factory.mktemp("keras_jax"), None, "jax", False)


@pytest.mark.slow
@pytest.mark.parametrize("way", ["load_bundle_answers", "seed", "pyfunc_answers"])
def test_jax_backend_every_way_of_loading_gives_exactly_the_original_outputs(
    jax_trip: dict[str, Any], way: str
) -> None:
    _assert_exact_in_a_clean_process(jax_trip, way, "jax", KERAS_KINDS)


@pytest.mark.slow
def test_jax_backend_stores_the_keras_archive_and_pins_keras_and_jax(
    jax_trip: dict[str, Any],
) -> None:

    models = _model_dir(jax_trip)
    for kind in KERAS_KINDS:
        with zipfile.ZipFile(models / kind / "model.keras") as archive:
            stored = archive.read("model.weights.h5")
        _assert_weights_not_pickled(jax_trip, kind, stored)
    manifest = _manifest(jax_trip)
    assert {v["info"]["backend"] for v in manifest["models"].values()} == {"jax"}
    assert "torch" not in _assert_pinned(jax_trip, ("keras", "jax"))


# --- in this process ------------------------------------------------------------------------


@pytest.fixture
def keras_torch() -> Any:
    """keras on the torch backend in this process (KERAS_BACKEND is set for the import only)."""
    keras = models.keras_on_torch()
    if keras.backend.backend() != "torch":
        pytest.skip(f"keras was imported here on the {keras.backend.backend()!r} backend")
    return keras


def test_a_keras_model_on_torch_is_the_keras_flavors_not_the_torch_one(keras_torch: Any) -> None:
    import torch

    from cloudflow.flavors import FLAVORS, flavor_for

    model = keras_torch.Sequential([keras_torch.Input((2,)), keras_torch.layers.Dense(1)])
    assert isinstance(model, torch.nn.Module)
    assert flavor_for(model).name == "keras"
    assert flavor_for(torch.nn.Linear(2, 1)).name == "torch"
    names = [f.name for f in FLAVORS]
    assert names.index("keras") < names.index("torch") < names.index("container")
    assert names.index("keras") < names.index("tensorflow") < names.index("container")


def test_a_custom_object_keras_cannot_find_by_name_is_refused_at_save(
    keras_torch: Any, user_modules: Any, tmp_path: Path
) -> None:
    import cloudflow

    user_modules.write(
        {
            "local_layer.py": (
                "import keras\n\n\ndef make():\n"
                "    class Hidden(keras.layers.Layer):\n"
                "        def call(self, x):\n"
                "            return x * 2\n\n"
                "    return keras.Sequential([keras.Input((2,)), Hidden()])\n\n\n"
                "def predict(model, x):\n    return model(x)\n"
            )
        }
    )
    import local_layer

    with pytest.raises(CaptureError, match=r"local_layer\.Hidden .*no module-level object"):
        cloudflow.save_bundle(local_layer.predict, {"model": local_layer.make()}, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_mismatch_error_is_a_cloudflow_error(keras_torch: Any) -> None:
    from cloudflow.flavors import prepare_load

    with pytest.raises(EnvironmentMismatchError, match=r"'m': .*saved on the 'jax' backend"):
        prepare_load({"m": ("keras", {"backend": "jax"})})
    prepare_load({"m": ("keras", {"backend": "torch"})})  # the backend it runs on: fine


# --- the tensorflow venv ------------------------------------------------------------------------

TF_CONSTRAINTS = REPO_ROOT / "requirements" / "constraints-tensorflow.txt"
TF_REQUIREMENTS = ("-e", f"{REPO_ROOT}[keras]", "tensorflow-cpu")
TF_WARM_UP = "import mlflow.pyfunc, mlflow.models, pandas, cloudpickle, blake3, tensorflow, keras"


@pytest.fixture(scope="module")
def tf_python() -> Path:
    base = find_python("3.11")
    if base is None:
        pytest.skip(f"no CPython 3.11 for the tensorflow venv ({where_we_looked('3.11')})")
    venv = ensure_venv(
        base,
        constraints=[CONSTRAINTS, TF_CONSTRAINTS],
        requirements=TF_REQUIREMENTS,
        warm_up=TF_WARM_UP,
        label="tensorflow",
    )
    return venv.python


@pytest.fixture(scope="module")
def tf_trip(tf_python: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _round_trip(tmp_path_factory.mktemp("keras_tf"), tf_python, "tensorflow", True)


@pytest.mark.slow
@pytest.mark.parametrize("way", ["load_bundle_answers", "seed", "pyfunc_answers"])
def test_tensorflow_every_way_of_loading_gives_exactly_the_original_outputs(
    tf_trip: dict[str, Any], way: str
) -> None:
    _assert_exact_in_a_clean_process(tf_trip, way, "tensorflow", [*KERAS_KINDS, "scorer"])


@pytest.mark.slow
def test_tensorflow_a_restored_module_keeps_functions_and_variables_not_python(
    tf_trip: dict[str, Any],
) -> None:
    restored = outcome(tf_trip["loaded"], "restored")
    assert restored["python_only"] is False
    assert restored["module_helpers"] == []  # a tf.Module's .variables, .submodules: gone
    assert restored["variables"] == ["b:0", "head:0", "steps:0", "w:0"]
    assert restored["trainable"] == ["head:0", "w:0"]
    assert len(restored["affine_call"]) == len(ROWS)
    assert len(restored["affine_call"][0]) == 64
    assert restored["signatures"] == []  # two tf.functions with signatures: no default one
    classes = outcome(tf_trip["loaded"], "classes")
    assert classes["subclassed"] == "kmodels.Net"
    assert not classes["scorer"].startswith(("kmodels", "tfmodels"))


@pytest.mark.slow
def test_tensorflow_files_are_native_and_no_pickle_holds_weights(tf_trip: dict[str, Any]) -> None:
    models = _model_dir(tf_trip)
    scorer = models / "scorer"
    assert sorted(p.name for p in scorer.iterdir()) == ["saved_model"]
    saved_model = scorer / "saved_model"
    assert (saved_model / "saved_model.pb").is_file()
    assert not list(scorer.rglob("*.pkl"))
    data = b"".join(p.read_bytes() for p in (saved_model / "variables").glob("variables.data-*"))
    _assert_weights_not_pickled(tf_trip, "scorer", data)
    for kind in KERAS_KINDS:
        with zipfile.ZipFile(models / kind / "model.keras") as archive:
            _assert_weights_not_pickled(tf_trip, kind, archive.read("model.weights.h5"))
    bundle = _bundle(tf_trip)
    assert not list(bundle.rglob("*.py"))
    assert grep_tree(bundle, [str(tf_trip["source"])]) == []


@pytest.mark.slow
def test_tensorflow_manifest_describes_the_module_and_pins_tensorflow(
    tf_trip: dict[str, Any], tf_python: Path
) -> None:
    manifest = _manifest(tf_trip)
    assert manifest["models"]["scorer"]["flavor"] == "tensorflow"
    assert manifest["models"]["sequential"]["info"]["backend"] == "tensorflow"
    meta = manifest["models"]["scorer"]["metadata"]
    assert meta == {
        **meta,
        "framework": "tensorflow",
        "class": "tfmodels.Scorer",
        "parameters": 4 * 64 + 64 + 1 + 64 * 3,
        "trainable_parameters": 4 * 64 + 64 * 3,
        "frozen_parameters": 64 + 1,
        "tensors": 4,
        "layers": 1,
        "layer_types": {"Affine": 1},
        "dtype": ["float32", "int32"],
        "functions": {"label": ["float32[None, 4]"], "score": ["float32[None, 4]"]},
    }
    assert manifest["models"]["sequential"]["metadata"]["backend"] == "tensorflow"
    reqs = requirement_names(_bundle(tf_trip) / "requirements.txt")
    pins = requirement_names(TF_CONSTRAINTS)
    assert reqs["tensorflow-cpu"] == pins["tensorflow-cpu"] == "==2.21.0"
    assert reqs["keras"] == requirement_names(CONSTRAINTS)["keras"]
    assert not {"tensorflow", "torch"} & set(reqs)


@pytest.mark.slow
def test_a_torch_backend_bundle_is_refused_by_keras_on_tensorflow(
    torch_trip: dict[str, Any], tf_python: Path, tmp_path: Path
) -> None:
    bundle = str(_bundle(torch_trip))
    imported = run_python_snippet(tf_python, REFUSED, cwd=tmp_path, args=[bundle, "1"])
    error = imported["load"]["error"]
    assert "EnvironmentMismatchError: Model 'functional':" in error
    assert "saved on the 'torch' backend, and Keras in this process runs on the 'tensorflow'" in (
        error
    )
    assert "(the keras already imported in this process)" in error
    assert "Set KERAS_BACKEND=torch before anything imports keras" in error
    fresh = run_python_snippet(tf_python, REFUSED, cwd=tmp_path, args=[bundle, "0"])
    error = fresh["load"]["error"]
    assert "MissingDependencyError: Model 'functional':" in error
    assert "saved on the 'torch' backend, whose library 'torch' is not installed here" in error


@pytest.mark.slow
def test_a_tensorflow_bundle_is_refused_where_tensorflow_is_missing(
    tf_trip: dict[str, Any], tmp_path: Path
) -> None:
    got = run_snippet(REFUSED, cwd=tmp_path, args=[str(_bundle(tf_trip)), "0"])
    error = got["load"]["error"]
    assert "MissingDependencyError: Model 'functional':" in error
    assert "library 'tensorflow' is not installed here" in error
