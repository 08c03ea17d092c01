"""JAX and Flax NNX: modules and pytrees of arrays, stored as safetensors, loaded anywhere.

One bundle holds a Flax NNX module written by the user (nnx.Linear, nnx.BatchNorm, nnx.Dropout,
a layer class of the user's own, bfloat16 parameters), the same kind of module in training mode
(its dropout RNG keys must come back), and the parameters of a hand-written JAX model (a dict of
a list of dicts of arrays, a tied array, a typed PRNG key, a numpy array, plain values). It is
saved through the seed API, the user's source deleted, and one fresh process from another
working directory loads it every way (``load_bundle``, lazily, the seed API,
``mlflow.pyfunc.load_model``); outputs must equal the originals bit for bit (JAX on the CPU is
deterministic, and the arrays come back with the very values and dtypes they had).
"""

from __future__ import annotations

import collections
import importlib.metadata
import json
import shutil
import struct
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import restored_mlflow_state
from helpers import EVERY_WAY_LOADER, outcome, requirement_names, run_snippet, sqlite_uri

import cloudflow
from cloudflow.exceptions import BundleArgumentError, IntegrityError
from cloudflow.flavors import flavor_for

APP = """
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class Gain(nnx.Module):
    \"\"\"A layer of the user's own: a learned gain per feature.\"\"\"

    def __init__(self, n):
        self.gain = nnx.Param(jnp.linspace(0.5, 1.5, n))

    def __call__(self, x):
        return x * self.gain[...]


class Net(nnx.Module):
    def __init__(self, rngs):
        self.hidden = nnx.Linear(4, 64, rngs=rngs)
        self.norm = nnx.BatchNorm(64, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.gain = Gain(64)
        self.wide = nnx.Linear(64, 64, rngs=rngs)
        self.out = nnx.Linear(64, 3, rngs=rngs, param_dtype=jnp.bfloat16)

    def __call__(self, x):
        h = self.drop(jax.nn.relu(self.norm(self.hidden(x))))
        return self.out(jnp.tanh(self.wide(self.gain(h))))


def build(seed, train):
    net = Net(nnx.Rngs(seed))
    net.train()
    net(jnp.arange(32.0).reshape(8, 4) / 10)  # the batch statistics move off their initial values
    if not train:
        net.eval()
    return net


def make_params():
    k1, k2 = jax.random.split(jax.random.key(3))
    first = jax.random.normal(k1, (4, 8))
    return {
        "layers": [
            {"w": first, "b": jnp.full((8,), 0.1)},
            {"w": jax.random.normal(k2, (8, 3)), "b": jnp.zeros((3,), jnp.bfloat16)},
        ],
        "tied": first,
        "key": jax.random.key(7),
        "mask": np.array([1, 0, 1], dtype=np.int8),
        "scale": 0.5,
        "shape": (4, 8, 3),
        "activation": "tanh",
    }


def apply(params, x):
    first, last = params["layers"]
    h = jnp.tanh(x @ first["w"] + first["b"])
    return (h @ last["w"] + last["b"]) * params["scale"] * params["mask"]


def floats(array):
    return np.asarray(array, dtype=np.float32).tolist()


def predict(kind, rows, net, dropout_net, params):
    x = jnp.asarray(rows, dtype=jnp.float32)
    if kind == "net":
        return floats(net(x))
    if kind == "dropout_net":  # two calls: two masks, drawn from the saved RNG state
        return [floats(dropout_net(x)), floats(dropout_net(x))]
    if kind == "params":
        return floats(apply(params, x))
    key = params["key"]
    return {
        "gain_is_the_functions_class": isinstance(net.gain, Gain),
        "tied": params["tied"] is params["layers"][0]["w"],
        "key": [str(jax.random.key_impl(key)), np.asarray(jax.random.key_data(key)).tolist()],
        "mask": [type(params["mask"]).__name__, str(params["mask"].dtype), params["mask"].tolist()],
        "shape": [type(params["shape"]).__name__, list(params["shape"])],
        "dtypes": [str(net.out.kernel[...].dtype), str(params["layers"][1]["b"].dtype)],
        "on_default_device": [
            list(net.hidden.kernel[...].devices()) == [jax.devices()[0]],
            list(params["layers"][0]["w"].devices()) == [jax.devices()[0]],
        ],
    }
"""
KINDS = ["net", "dropout_net", "params", "facts"]
EXPERIMENT = "jax"
# hidden 4*64+64, norm scale and bias 2*64, gain 64, wide 64*64+64, out 64*3+3.
NET_PARAMETERS = 320 + 128 + 64 + 4160 + 195


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The bundle, saved through the seed API from a user module that is then deleted."""
    root = tmp_path_factory.mktemp("jax")
    source = root / "user_src"
    source.mkdir()
    (source / "jax_app.py").write_text(APP, encoding="utf-8")
    store = root / "store"
    rows = [[0.1 * i - 0.3 * j for j in range(4)] for i in range(5)]
    with restored_mlflow_state(), pytest.MonkeyPatch.context() as patch:
        import mlflow
        from flax import nnx

        patch.syspath_prepend(str(source))
        import jax_app

        live = {
            "net": jax_app.build(0, train=False),
            "dropout_net": jax_app.build(1, train=True),
            "params": jax_app.make_params(),
        }
        # A clone answers for the training-mode net: each call advances its RNG count, and the
        # saved state must be the one before any call.
        answering = {**live, "dropout_net": nnx.clone(live["dropout_net"])}
        expected = {k: jax_app.predict(kind=k, rows=rows, **answering) for k in KINDS}
        experiment_id = cloudflow.prepare_env(str(store), EXPERIMENT)
        with mlflow.start_run(experiment_id=experiment_id) as run:
            cloudflow.cloudflow_model().save(
                tracking_uri=str(store),
                experiment_id=EXPERIMENT,
                run_id=run.info.run_id,
                predict_function=jax_app.predict,
                models=live,
            )
        weights = {
            "hidden": np.asarray(live["net"].hidden.kernel[...]).tobytes(),
            "wide": np.asarray(live["net"].wide.kernel[...]).tobytes(),
            "layers.0.w": np.asarray(live["params"]["layers"][0]["w"]).tobytes(),
        }
        sys.modules.pop("jax_app")
    shutil.rmtree(source)
    return {
        "store": str(store),
        "tracking_uri": sqlite_uri(store),
        "run_id": run.info.run_id,
        "rows": rows,
        "expected": expected,
        "weights": weights,
    }


@pytest.fixture(scope="module")
def loaded(saved: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    spec = {key: saved[key] for key in ("store", "tracking_uri", "run_id", "rows")}
    spec.update(kinds=KINDS, app="jax_app", experiment="jax", lazy_kind="params")
    where = tmp_path_factory.mktemp("elsewhere")
    return run_snippet(EVERY_WAY_LOADER, cwd=where, args=[json.dumps(spec)])


def _bundle(loaded: dict[str, Any]) -> Path:
    return Path(outcome(loaded, "path"))


def test_the_source_is_gone_in_the_loading_process(loaded: dict[str, Any]) -> None:
    assert loaded["importable"]["value"] is False


def test_the_original_answers_are_what_they_should_be(saved: dict[str, Any]) -> None:
    # What the loads are compared with: a mask that drops units, two different draws, and the
    # facts of the live objects (the loads must give the same facts back).
    first, second = saved["expected"]["dropout_net"]
    assert first != second
    assert saved["expected"]["facts"] == {
        "gain_is_the_functions_class": True,
        "tied": True,
        "key": ["threefry2x32", [0, 7]],
        "mask": ["ndarray", "int8", [1, 0, 1]],
        "shape": ["tuple", [4, 8, 3]],
        "dtypes": ["bfloat16", "bfloat16"],
        "on_default_device": [True, True],
    }


@pytest.mark.parametrize("way", ["load_bundle_answers", "seed", "pyfunc_answers"])
def test_every_way_of_loading_gives_exactly_the_original_outputs(
    saved: dict[str, Any], loaded: dict[str, Any], way: str
) -> None:
    got = outcome(loaded, way)
    for kind in KINDS:
        assert got[kind] == saved["expected"][kind], kind  # exact: the same arrays, bit for bit


def test_a_lazy_bundle_loads_the_pytree_alone_on_first_use(
    saved: dict[str, Any], loaded: dict[str, Any]
) -> None:
    got = outcome(loaded, "lazy")
    assert not any(got["before"].values())
    assert got["after"] == {"net": False, "dropout_net": False, "params": True}
    assert got["answer"] == saved["expected"]["params"]


def header_length(path: Path) -> int:
    (length,) = struct.unpack("<Q", path.read_bytes()[:8])
    return int(length)


def _safetensors_header(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_bytes()[8 : 8 + header_length(path)]))


def test_weights_are_safetensors_and_no_pickle_holds_them(
    saved: dict[str, Any], loaded: dict[str, Any]
) -> None:
    bundle = _bundle(loaded)
    model_dir = bundle / "cloudflow" / "models"
    files = {name: sorted(p.name for p in (model_dir / name).iterdir()) for name in KINDS[:3]}
    assert files == {
        "net": ["module.pkl", "weights.safetensors"],
        "dropout_net": ["module.pkl", "weights.safetensors"],
        "params": ["arrays.safetensors", "tree.json"],  # no pickle at all
    }
    assert (model_dir / "net" / "module.pkl").stat().st_size < 16_000  # structure only
    pickles = [p.read_bytes() for p in bundle.rglob("*.pkl")]
    for name, raw in saved["weights"].items():
        windows = [raw[i : i + 24] for i in range(0, len(raw) - 24, 97)]
        assert windows, name
        assert not [w for p in pickles for w in windows if w in p], name

    header = _safetensors_header(model_dir / "net" / "weights.safetensors")
    assert header["__metadata__"] == {"format": "flax"}
    assert header["out.kernel"]["dtype"] == "BF16"
    assert header["hidden.kernel"]["shape"] == [4, 64]
    assert header["drop.rngs.key"] == {**header["drop.rngs.key"], "dtype": "U32", "shape": [2]}
    arrays = {k: v for k, v in header.items() if not k.startswith(("__metadata__", "__cloudflow"))}
    spans = [entry["data_offsets"] for entry in arrays.values()]
    assert all(start % 64 == 0 for start, end in spans if end > start)  # each array aligned
    assert (8 + header_length(model_dir / "net" / "weights.safetensors")) % 64 == 0

    arrays = _safetensors_header(model_dir / "params" / "arrays.safetensors")
    assert "tied" not in arrays  # stored once, under its first name
    assert arrays["layers.1.b"]["dtype"] == "BF16"
    assert arrays["mask"]["dtype"] == "I8"
    tree = json.loads((model_dir / "params" / "tree.json").read_text())["tree"]
    assert tree["keys"] == ["layers", "tied", "key", "mask", "scale", "shape", "activation"]
    assert tree["items"][1] == {"kind": "array", "key": "layers.0.w", "array": "jax"}


def test_requirements_pin_jax_jaxlib_and_flax(loaded: dict[str, Any]) -> None:
    reqs = requirement_names(_bundle(loaded) / "requirements.txt")
    for dist in ("jax", "jaxlib", "flax", "safetensors"):
        assert reqs.get(dist) == f"=={importlib.metadata.version(dist)}", (dist, reqs)
    assert "torch" not in reqs


def test_manifest_describes_the_module_and_the_pytree(loaded: dict[str, Any]) -> None:
    manifest = json.loads((_bundle(loaded) / "cloudflow" / "manifest.json").read_text())
    flavors = {name: entry["flavor"] for name, entry in manifest["models"].items()}
    assert flavors == {"net": "flax", "dropout_net": "flax", "params": "jax"}
    net = manifest["models"]["net"]["metadata"]
    assert net["framework"] == "flax"
    assert net["class"] == "jax_app.Net"
    assert net["parameters"] == NET_PARAMETERS
    assert net["buffers"] == 2 * 64 + 2  # batch mean and variance, the RNG count and key
    assert net["layer_types"] == {"Linear": 3, "BatchNorm": 1, "Gain": 1}
    assert net["layers"] == 5
    assert net["dtype"] == ["bfloat16", "float32"]
    assert net["device"] == str(jax.devices()[0])
    assert net["variable_types"] == {"BatchStat": 2, "Param": 9, "RngCount": 1, "RngKey": 1}
    assert net["tensors"] == 13
    assert net["tensor_shapes"]["hidden.kernel"] == [4, 64]
    params = manifest["models"]["params"]["metadata"]
    assert params["framework"] == "jax"
    assert params["class"] == "builtins.dict"
    assert params["parameters"] == 4 * 8 + 8 + 8 * 3 + 3 + 3  # the mask counts; the key not
    assert params["prng_keys"] == 1
    assert params["tensors"] == 6  # the tied array once
    assert params["dtype"] == ["bfloat16", "float32", "int8"]


def test_inspect_shows_the_layers_of_the_module(loaded: dict[str, Any]) -> None:
    from click.testing import CliRunner

    from cloudflow.cli import main

    result = CliRunner().invoke(main, ["inspect", str(_bundle(loaded))], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for needle in (
        "net  [flax]",
        f"parameters {NET_PARAMETERS:,}",
        "layer types BatchNorm x1, Gain x1, Linear x3",
        "params  [jax]",
        "flax==",
        "jaxlib==",
    ):
        assert needle in result.output, f"{needle!r} not in:\n{result.output}"


def test_a_changed_weights_file_is_found_when_the_lazy_module_loads(
    loaded: dict[str, Any], tmp_path: Path
) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(_bundle(loaded), copy)
    weights = copy / "cloudflow" / "models" / "net" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    bundle = cloudflow.load_bundle(copy, lazy=True)
    assert bundle.model("params")["activation"] == "tanh"  # the others load
    with pytest.raises(IntegrityError, match=r"models/net/weights\.safetensors"):
        bundle.model("net")


def test_device_is_refused_for_jax_models(loaded: dict[str, Any]) -> None:
    with pytest.raises(BundleArgumentError, match=r"'net', a flax model: a device applies to"):
        cloudflow.load_bundle(_bundle(loaded), device={"net": "cpu"})


# --- which objects the JAX flavors claim (in process) --------------------------------------

Point = collections.namedtuple("Point", ["x", "y"])


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda: jnp.ones(3), "jax"),  # one array alone
        (lambda: jax.random.key(0), "jax"),
        (lambda: {"w": jnp.ones(2), "b": [jnp.zeros(1), None, 0.5, "relu"]}, "jax"),
        (lambda: ({"w": jnp.ones(2)}, np.ones(3)), "jax"),  # numpy beside JAX arrays
        # Not a pytree this flavor stores: falls back on the container or the pickle.
        (lambda: {"w": jnp.ones(2), "fn": len}, "container"),  # an object leaf
        (lambda: {"w": jnp.ones(2), "eps": float("nan")}, "container"),  # no NaN in JSON
        (lambda: Point(jnp.ones(2), jnp.ones(2)), "pickle"),  # a namedtuple
        (lambda: collections.OrderedDict(w=jnp.ones(2)), "pickle"),
        (lambda: {1: jnp.ones(2)}, "pickle"),  # a key that is not a str
        (lambda: jnp.ones(3, jnp.int4), "pickle"),  # a dtype safetensors cannot hold
        (lambda: {"a": np.ones(3), "b": [np.zeros(2)]}, "pickle"),  # numpy alone: as before
        (lambda: np.ones(3), "pickle"),
        (lambda: {"params": jnp.ones(2), "labels": ["a", "b"]}, "jax"),
    ],
)
def test_which_objects_the_jax_flavor_claims(build: Any, expected: str) -> None:
    assert flavor_for(build()).name == expected


def test_a_container_saves_each_jax_array_beside_other_models(tmp_path: Path) -> None:
    from sklearn.dummy import DummyClassifier

    clf = DummyClassifier().fit([[0], [1]], [0, 1])
    table = jnp.arange(6.0).reshape(2, 3)
    models = {"both": {"table": table, "clf": clf}}

    def predict(both, i):
        return {"row": both["table"][i].tolist(), "label": int(both["clf"].predict([[i]])[0])}

    cloudflow.save_bundle(predict, models, tmp_path / "bundle")
    folder = tmp_path / "bundle" / "cloudflow" / "models" / "both"
    assert sorted(p.name for p in (folder / "0").iterdir()) == ["arrays.safetensors", "tree.json"]
    got = cloudflow.load_bundle(tmp_path / "bundle").predict(i=1)
    assert got == {"row": [3.0, 4.0, 5.0], "label": int(clf.predict([[1]])[0])}
