"""The models of ``frameworks.py``, one per framework: builder, own save and load, predict.

This module sits next to the script and is not installed, so cloudflow captures its predict
functions by value, as it would a user's module. Each framework's own way is its documented save
and load of that model; where a framework has two common ones, both are listed (``OWN``).
Everything is built locally from seeded random weights or seeded random data.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Dense stacks of the ONNX, Keras and Flax models: 25M parameters, 101 MB of float32 (full run).
WIDTHS = {"full": (1024, 4096, 4096, 1024, 16), "quick": (64, 256, 256, 16)}
#: Gradient-boosted trees: rows, features, trees, leaves (full run: a 20-60 MB model file).
BOOST = {"full": (50_000, 32, 400, 255), "quick": (2_000, 8, 20, 15)}
ROWS = 8  # the batch each first predict answers


@dataclass(frozen=True)
class Own:
    """One of a framework's own ways: ``save(model, folder)`` and ``load(folder) -> model``."""

    label: str
    save: Callable[[Any, Path], None]
    load: Callable[[Path], Any]


def inputs(framework: str, size: str) -> Any:
    rng = np.random.default_rng(1)
    if framework == "transformers":
        return ["this movie was great", "the food is awful", "i really like it", "not good"] * 2
    if framework == "torch":
        import torch
        from cfbench.models import SIZES

        width = SIZES[size].mlp[0]
        return torch.randn(ROWS, width, generator=torch.Generator().manual_seed(1))
    if framework == "sklearn":
        return rng.normal(size=(ROWS, 8)).astype(np.float32)
    if framework in ("xgboost", "lightgbm"):
        return rng.normal(size=(ROWS, BOOST[size][1])).astype(np.float32)
    return rng.normal(size=(ROWS, WIDTHS[size][0])).astype(np.float32)


# predict functions: the saved "user code"; the own ways call the same ones -------------------


def predict_text(model: Any, x: Any) -> Any:
    return [[r["label"], round(r["score"], 5)] for r in model(x)]


def predict_torch(model: Any, x: Any) -> Any:
    import torch

    with torch.no_grad():
        return model(x).numpy()


def predict_proba(model: Any, x: Any) -> Any:
    return model.predict_proba(x)


def predict_sklearn(model: Any, x: Any) -> Any:
    return model.predict(x)


def predict_booster(model: Any, x: Any) -> Any:
    return model.predict(x)


def predict_onnx(model: Any, x: Any) -> Any:
    return model.run(None, {"x": x})[0]


def predict_keras(model: Any, x: Any) -> Any:
    import keras

    return keras.ops.convert_to_numpy(model(x, training=False))


def predict_array(model: Any, x: Any) -> Any:
    return np.asarray(model(x))


def predict_tensorflow(model: Any, x: Any) -> Any:
    return model(x).numpy()


PREDICT: dict[str, Callable[[Any, Any], Any]] = {
    "transformers": predict_text,
    "torch": predict_torch,
    "sklearn": predict_sklearn,
    "xgboost": predict_proba,
    "lightgbm": predict_booster,
    "onnx": predict_onnx,
    "keras": predict_keras,
    "flax": predict_array,
    "tensorflow": predict_tensorflow,
}


# builders ------------------------------------------------------------------------------------


def _boost_data(size: str) -> tuple[Any, Any]:
    rows, features, _, _ = BOOST[size]
    rng = np.random.default_rng(0)
    X = rng.normal(size=(rows, features)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] * X[:, 2] + rng.normal(size=rows) > 0).astype(np.int32)
    return X, y


def build(framework: str, size: str) -> Any:
    from cfbench.models import SIZES, build_forest, build_mlp, build_text_model

    if framework == "transformers":
        return build_text_model(SIZES[size])
    if framework == "torch":
        return build_mlp(SIZES[size]).eval()
    if framework == "sklearn":
        return build_forest(SIZES[size])
    if framework == "xgboost":
        import xgboost

        _, _, trees, leaves = BOOST[size]
        X, y = _boost_data(size)
        return xgboost.XGBClassifier(
            n_estimators=trees, max_leaves=leaves, max_depth=0, grow_policy="lossguide",
            tree_method="hist", random_state=0, n_jobs=os.cpu_count(),
        ).fit(X, y)  # fmt: skip
    if framework == "lightgbm":
        import lightgbm

        _, _, trees, leaves = BOOST[size]
        X, y = _boost_data(size)
        data = lightgbm.Dataset(X, y)
        params = {"objective": "binary", "num_leaves": leaves, "verbose": -1, "seed": 0}
        return lightgbm.train(params, data, num_boost_round=trees)
    if framework == "onnx":
        import onnxruntime

        return onnxruntime.InferenceSession(_onnx_bytes(size), providers=["CPUExecutionProvider"])
    if framework == "keras":
        import keras

        keras.utils.set_random_seed(0)
        widths = WIDTHS[size]
        layers = [keras.Input((widths[0],))]
        layers += [keras.layers.Dense(w, activation="relu") for w in widths[1:-1]]
        layers.append(keras.layers.Dense(widths[-1]))
        return keras.Sequential(layers)
    if framework == "flax":
        from flax import nnx

        return _flax_mlp(size, nnx.Rngs(0))
    if framework == "tensorflow":
        return _tf_module(size)
    raise ValueError(f"no framework {framework!r}")


def _onnx_bytes(size: str) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    widths = WIDTHS[size]
    rng = np.random.default_rng(0)
    nodes, inits, last = [], [], "x"
    for i, (a, b) in enumerate(zip(widths, widths[1:], strict=False)):
        w = (rng.normal(size=(a, b)) / np.sqrt(a)).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"w{i}"),
            numpy_helper.from_array(np.zeros(b, np.float32), f"b{i}"),
        ]  # noqa: E501
        nodes += [helper.make_node("MatMul", [last, f"w{i}"], [f"m{i}"])]
        nodes += [helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"])]
        last = f"a{i}"
        if i < len(widths) - 2:
            nodes += [helper.make_node("Relu", [last], [f"r{i}"])]
            last = f"r{i}"
    nodes[-1].output[0] = "y"
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, widths[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, widths[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def _flax_mlp(size: str, rngs: Any) -> Any:
    from flax import nnx

    class MLP(nnx.Module):
        def __init__(self, widths: tuple[int, ...], rngs: nnx.Rngs) -> None:
            self.layers = nnx.List(
                [nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths, widths[1:], strict=False)]
            )

        def __call__(self, x: Any) -> Any:
            for layer in self.layers[:-1]:
                x = nnx.relu(layer(x))
            return self.layers[-1](x)

    return MLP(WIDTHS[size], rngs)


def _tf_module(size: str) -> Any:
    import tensorflow as tf

    widths = WIDTHS[size]

    class Dense(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            gen = tf.random.Generator.from_seed(0)
            self.ws = [
                tf.Variable(gen.normal((a, b)) / a**0.5)
                for a, b in zip(widths, widths[1:], strict=False)
            ]  # noqa: E501

        @tf.function(input_signature=[tf.TensorSpec([None, widths[0]], tf.float32)])
        def __call__(self, x: Any) -> Any:
            for w in self.ws[:-1]:
                x = tf.nn.relu(x @ w)
            return x @ self.ws[-1]

    return Dense()


# each framework's own save and load ----------------------------------------------------------


def _transformers_own() -> list[Own]:
    def load(folder: Path) -> Any:
        from transformers import pipeline

        return pipeline("text-classification", model=str(folder), device="cpu")

    return [Own("save_pretrained", lambda m, f: m.save_pretrained(str(f)), load)]


def _torch_own(size: str) -> list[Own]:
    import torch

    def load(folder: Path) -> Any:
        # torch's fastest documented path: a skeleton on the meta device adopting the
        # memory-mapped tensors of the file.
        from cfbench.models import SIZES, build_mlp

        with torch.device("meta"):
            model = build_mlp(SIZES[size])
        state = torch.load(folder / "model.pt", mmap=True, weights_only=True)
        model.load_state_dict(state, assign=True)
        return model.eval()

    return [Own("state_dict", lambda m, f: torch.save(m.state_dict(), f / "model.pt"), load)]


def _sklearn_own() -> list[Own]:
    def skops_save(model: Any, folder: Path) -> None:
        import skops.io

        skops.io.dump(model, folder / "model.skops")

    def skops_load(folder: Path) -> Any:
        import skops.io

        path = folder / "model.skops"
        return skops.io.load(path, trusted=skops.io.get_untrusted_types(file=path))

    def joblib_save(model: Any, folder: Path) -> None:
        import joblib

        joblib.dump(model, folder / "model.joblib")

    def joblib_load(folder: Path) -> Any:
        import joblib

        return joblib.load(folder / "model.joblib")

    return [Own("skops", skops_save, skops_load), Own("joblib", joblib_save, joblib_load)]


def _xgboost_own() -> list[Own]:
    def own(suffix: str) -> Own:
        def load(folder: Path) -> Any:
            import xgboost

            model = xgboost.XGBClassifier()
            model.load_model(folder / f"model.{suffix}")
            return model

        return Own(f".{suffix}", lambda m, f: m.save_model(f / f"model.{suffix}"), load)

    return [own("ubj"), own("json")]


def _lightgbm_own() -> list[Own]:
    def load(folder: Path) -> Any:
        import lightgbm

        return lightgbm.Booster(model_file=folder / "model.txt")

    return [Own("model.txt", lambda m, f: m.save_model(f / "model.txt"), load)]


def _onnx_own(size: str) -> list[Own]:
    def save(model: Any, folder: Path) -> None:
        (folder / "model.onnx").write_bytes(_onnx_bytes(size))  # the bytes the session runs

    def load(folder: Path) -> Any:
        import onnxruntime

        return onnxruntime.InferenceSession(
            str(folder / "model.onnx"), providers=["CPUExecutionProvider"]
        )

    return [Own("model.onnx", save, load)]


def _keras_own() -> list[Own]:
    def load(folder: Path) -> Any:
        import keras

        return keras.saving.load_model(folder / "model.keras")

    return [Own(".keras", lambda m, f: m.save(f / "model.keras"), load)]


def _flax_own(size: str) -> list[Own]:
    # Flax's documented checkpointing: the state with orbax, the model rebuilt abstractly.
    def save(model: Any, folder: Path) -> None:
        import orbax.checkpoint as ocp
        from flax import nnx

        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save((folder / "state").absolute(), nnx.state(model))
        checkpointer.wait_until_finished()

    def load(folder: Path) -> Any:
        import orbax.checkpoint as ocp
        from flax import nnx

        abstract = nnx.eval_shape(lambda: _flax_mlp(size, nnx.Rngs(0)))
        graphdef, abstract_state = nnx.split(abstract)
        state = ocp.StandardCheckpointer().restore((folder / "state").absolute(), abstract_state)
        return nnx.merge(graphdef, state)

    return [Own("orbax", save, load)]


def _tensorflow_own() -> list[Own]:
    def load(folder: Path) -> Any:
        import tensorflow as tf

        return tf.saved_model.load(str(folder / "saved_model"))

    def save(model: Any, folder: Path) -> None:
        import tensorflow as tf

        tf.saved_model.save(model, str(folder / "saved_model"))

    return [Own("SavedModel", save, load)]


def own_ways(framework: str, size: str) -> list[Own]:
    return {
        "transformers": _transformers_own,
        "torch": lambda: _torch_own(size),
        "sklearn": _sklearn_own,
        "xgboost": _xgboost_own,
        "lightgbm": _lightgbm_own,
        "onnx": lambda: _onnx_own(size),
        "keras": _keras_own,
        "flax": lambda: _flax_own(size),
        "tensorflow": _tensorflow_own,
    }[framework]()


def to_plain(answer: Any) -> Any:
    """The answer as JSON-able numbers, for comparing across processes."""
    if isinstance(answer, list):
        return answer
    return np.asarray(answer, dtype=np.float64).round(5).tolist()
