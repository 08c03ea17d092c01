"""Small, deterministic models built fully offline, shared by tests and benchmarks.

Nothing here touches the network or the Hugging Face hub: the BERT pipeline gets a local WordPiece
tokenizer and seeded random weights. Every builder returns a fresh object; calling it twice gives
two models with identical outputs.

User-defined classes (a custom ``nn.Module``, a custom scikit-learn transformer) are deliberately
absent: they must live in the user's own modules to be captured, so tests write those into a temp
folder instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TEXT_LABELS = {0: "NEGATIVE", 1: "POSITIVE"}

_WORDS = [
    *("good", "great", "fine", "nice", "love", "like", "happy", "best", "awesome", "excellent"),
    *("bad", "awful", "poor", "hate", "sad", "worst", "terrible", "boring", "slow", "broken"),
    *("the", "a", "an", "is", "was", "it", "this", "that", "movie", "film", "food", "service"),
    *("day", "very", "not", "and", "but", "i", "you", "we", "really", "so", "too", "quite"),
]
_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *_WORDS, *"abcdefghijklmnopqrstuvwxyz"]
_VOCAB += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"]

TEXTS = ["this movie was great", "the food is awful", "i really like it", "not good at all"]


def tiny_tokenizer(*, vocab_size: int | None = None, max_length: int = 64) -> Any:
    """A ``BertTokenizerFast`` over a small WordPiece vocabulary built in memory.

    ``vocab_size`` pads the vocabulary with ``[unusedN]`` tokens (BERT-base has 30522), so a
    benchmark's tokenizer is as large as a real one.
    """
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import BertTokenizerFast

    tokens = list(_VOCAB)
    tokens += [f"[unused{i}]" for i in range((vocab_size or 0) - len(tokens))]
    vocab = {token: i for i, token in enumerate(tokens)}
    backend = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    backend.decoder = decoders.WordPiece(prefix="##")
    return BertTokenizerFast(
        tokenizer_object=backend,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        model_max_length=max_length,
    )


def tiny_bert_model(
    *,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    intermediate: int = 64,
    vocab_size: int = 0,
    max_positions: int = 64,
    seed: int = 0,
) -> Any:
    """A ``BertForSequenceClassification`` with seeded random weights, in eval mode.

    ``vocab_size`` above the local vocabulary only adds embedding rows the tokenizer never uses,
    so a benchmark gets BERT-base's size (``hidden=768, layers=12, heads=12,
    intermediate=3072, vocab_size=30522, max_positions=512``: 110M parameters).
    """
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=max(vocab_size, len(_VOCAB)),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=max_positions,
        id2label=dict(TEXT_LABELS),
        label2id={v: k for k, v in TEXT_LABELS.items()},
        # Wider than BERT's 0.02 so random weights give varied labels and scores.
        initializer_range=0.5,
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    model.eval()
    return model


def tiny_text_pipeline(*, seed: int = 2, **sizes: int) -> Any:
    """A ``text-classification`` pipeline (tiny BERT, local tokenizer), deterministic per seed
    (the default seed gives both labels on :data:`TEXTS`).

    ``sizes`` go to :func:`tiny_bert_model` (``hidden``, ``layers``, ``heads``, ``intermediate``,
    ``vocab_size``, ``max_positions``), so a benchmark can build a BERT-base-sized one with the
    same code.
    """
    from transformers import pipeline

    return pipeline(
        "text-classification",
        model=tiny_bert_model(seed=seed, **sizes),
        tokenizer=tiny_tokenizer(),
        device="cpu",
    )


def tiny_text_pipeline_dir(path: str | Path, *, seed: int = 2, **sizes: int) -> Path:
    """Save :func:`tiny_text_pipeline` with ``save_pretrained`` into ``path``; returns the path.

    Reload it with ``transformers.pipeline("text-classification", model=str(path))``.
    """
    path = Path(path)
    tiny_text_pipeline(seed=seed, **sizes).save_pretrained(str(path))
    return path


def tiny_torch_mlp(*, sizes: tuple[int, ...] = (4, 16, 8, 3), seed: int = 0) -> Any:
    """A seeded ``torch.nn.Sequential`` MLP (Linear/ReLU, with a BatchNorm buffer), in eval mode.

    Input: a float32 tensor of shape ``(batch, sizes[0])``; see :func:`torch_input`.
    """
    import torch
    from torch import nn

    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            if i == 0:
                layers.append(nn.BatchNorm1d(n_out))
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    with torch.no_grad():  # non-default running stats, so a lost buffer changes the outputs
        norm = model[1]
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 1.5)
    model.eval()
    return model


def torch_input(n_features: int = 4, *, batch: int = 5, seed: int = 1) -> Any:
    """A deterministic float32 input batch for :func:`tiny_torch_mlp`."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, n_features, generator=generator)


def iris() -> tuple[Any, Any]:
    """scikit-learn's bundled iris data as ``(X, y)`` (no download)."""
    from sklearn.datasets import load_iris

    data = load_iris()
    return data.data, data.target


def tiny_sklearn_pipeline() -> Any:
    """A fitted ``Pipeline(StandardScaler, LogisticRegression)`` on iris."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = iris()
    return Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=200))]).fit(
        X, y
    )


#: Iris's labels as strings: LightGBM's wrapper keeps them (its label encoder), XGBoost's cannot.
IRIS_NAMES = ("setosa", "versicolor", "virginica")


def tiny_xgb_classifier() -> Any:
    """A fitted ``xgboost.XGBClassifier`` on iris (8 rounds, 3 classes: 24 trees)."""
    import xgboost

    X, y = iris()
    return xgboost.XGBClassifier(n_estimators=8, max_depth=3, random_state=0, n_jobs=1).fit(X, y)


def tiny_xgb_booster() -> Any:
    """A fitted ``xgboost.Booster`` (regression of petal width on the other iris columns)."""
    import xgboost

    X, _ = iris()
    data = xgboost.DMatrix(X[:, :3], label=X[:, 3], feature_names=["sl", "sw", "pl"])
    params = {"max_depth": 3, "seed": 0, "nthread": 1}
    return xgboost.train(params, data, num_boost_round=6)


def tiny_lgbm_classifier() -> Any:
    """A fitted ``lightgbm.LGBMClassifier`` on iris with string labels (:data:`IRIS_NAMES`)."""
    import lightgbm
    import numpy as np

    X, y = iris()
    labels = np.array(IRIS_NAMES)[y]
    model = lightgbm.LGBMClassifier(n_estimators=6, num_leaves=7, random_state=0, verbose=-1)
    return model.fit(X, labels)


def tiny_lgbm_booster() -> Any:
    """A fitted ``lightgbm.Booster`` (regression of petal width on the other iris columns)."""
    import lightgbm

    X, _ = iris()
    data = lightgbm.Dataset(X[:, :3], label=X[:, 3], feature_name=["sl", "sw", "pl"])
    params = {"objective": "regression", "num_leaves": 7, "seed": 0, "verbose": -1}
    return lightgbm.train(params, data, num_boost_round=6)


def tiny_ensemble() -> Any:
    """A container of models: two torch MLPs, a per-language dict of pipelines, a weight."""
    return {
        "nets": [tiny_torch_mlp(seed=0), tiny_torch_mlp(seed=1)],
        "by_language": {"en": tiny_sklearn_pipeline(), "fr": tiny_sklearn_pipeline()},
        "weights": (0.25, 0.75),
    }


def tiny_onnx_model(*, seed: int = 0) -> Any:
    """An ``onnx.ModelProto`` built by hand: ``softmax(relu(X @ W1 + B1) @ W2)``, X (N, 4)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = {
        "W1": rng.standard_normal((4, 8)),
        "B1": rng.standard_normal(8),
        "W2": rng.standard_normal((8, 3)),
    }
    initializers = [numpy_helper.from_array(w.astype(np.float32), n) for n, w in weights.items()]
    nodes = [
        helper.make_node("MatMul", ["X", "W1"], ["H0"]),
        helper.make_node("Add", ["H0", "B1"], ["H1"]),
        helper.make_node("Relu", ["H1"], ["H2"]),
        helper.make_node("MatMul", ["H2", "W2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_mlp",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 3])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    model.producer_name = "cloudflow-tests"
    onnx.checker.check_model(model)
    return model


def tiny_onnx_session() -> Any:
    """An ``onnxruntime.InferenceSession`` of :func:`tiny_onnx_model`, one thread, basic graph
    optimizations, the CPU provider."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return onnxruntime.InferenceSession(
        tiny_onnx_model().SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def tiny_flax_mlp(*, sizes: tuple[int, ...] = (4, 16, 3), seed: int = 0) -> Any:
    """A Flax NNX MLP (Linear, BatchNorm, Dropout) in ``nnx.Sequential``, seeded, in eval mode."""
    import jax
    from flax import nnx

    rngs = nnx.Rngs(seed)
    model = nnx.Sequential(
        nnx.Linear(sizes[0], sizes[1], rngs=rngs),
        nnx.BatchNorm(sizes[1], rngs=rngs),
        jax.nn.relu,
        nnx.Dropout(0.25, rngs=rngs),
        nnx.Linear(sizes[1], sizes[2], rngs=rngs),
    )
    model.eval()
    return model


def jax_input(n_features: int = 4, *, batch: int = 5, seed: int = 1) -> Any:
    import jax

    return jax.random.normal(jax.random.key(seed), (batch, n_features))


def tiny_jax_params(*, sizes: tuple[int, ...] = (4, 8, 3), seed: int = 0) -> Any:
    """The parameters of a hand-written JAX MLP: a dict of a list of dicts of arrays."""
    import jax
    import jax.numpy as jnp

    keys = jax.random.split(jax.random.key(seed), len(sizes) - 1)
    layers = [
        {"w": jax.random.normal(key, (n_in, n_out)) / n_in**0.5, "b": jnp.zeros((n_out,))}
        for key, n_in, n_out in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]
    return {"layers": layers, "activation": "tanh", "shape": tuple(sizes)}


def jax_apply(params: Any, x: Any) -> Any:
    """The hand-written MLP of :func:`tiny_jax_params`."""
    import jax.numpy as jnp

    *hidden, last = params["layers"]
    for layer in hidden:
        x = jnp.tanh(x @ layer["w"] + layer["b"])
    return x @ last["w"] + last["b"]


def keras_on_torch() -> Any:
    """keras, imported on the torch backend if nothing imported it yet.

    ``KERAS_BACKEND`` is set only for the import and removed again, so that the processes the
    tests start inherit no backend (a bundle must bring its own).
    """
    import os
    import sys

    if "keras" not in sys.modules:
        before = os.environ.get("KERAS_BACKEND")
        os.environ["KERAS_BACKEND"] = "torch"
        try:
            import keras  # noqa: F401
        finally:
            if before is None:
                del os.environ["KERAS_BACKEND"]
            else:
                os.environ["KERAS_BACKEND"] = before
    import keras

    return keras


def tiny_keras_model(*, seed: int = 0) -> Any:
    """A functional Keras model on the torch backend: 4 features -> 3 softmax scores."""
    keras = keras_on_torch()
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.LayerNormalization()(hidden))
    return keras.Model(inputs, outputs)


def tiny_tf_module() -> Any:
    """A ``tf.Module`` with one ``tf.function`` of a fixed input signature (needs tensorflow)."""
    import tensorflow as tf

    class Affine(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(tf.random.stateless_normal((4, 3), seed=(1, 2)), name="w")

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def __call__(self, x: Any) -> Any:
            return tf.matmul(x, self.w)

    return Affine()
