"""The models of the benchmark: A, B, C and their bundle ABC, their sizes, builders and inputs.

Everything is built locally (no network, no hub) from seeded random weights, so every run
saves the same bytes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

TEXT_TASK = "text-classification"
BERT_VOCAB = 30522
TEXTS = ["this movie was great", "the food is awful", "i really like it", "not good at all"] * 2
BATCH = 8


@dataclass(frozen=True)
class Sizes:
    name: str
    bert: dict[str, int]
    mlp: tuple[int, ...]
    forest: tuple[int, int, int]  # samples, trees, features
    save_repeat: int
    load_repeat: int
    overhead_calls: int
    import_repeat: int


FULL = Sizes(
    name="full",
    bert={"hidden": 768, "layers": 12, "heads": 12, "intermediate": 3072},
    mlp=(2048, 8192, 8192, 2048, 16),
    forest=(32000, 100, 8),
    save_repeat=3,
    load_repeat=3,
    overhead_calls=20000,
    import_repeat=5,
)
QUICK = Sizes(
    name="quick",
    bert={"hidden": 128, "layers": 2, "heads": 2, "intermediate": 512},
    mlp=(256, 1024, 1024, 16),
    forest=(3000, 20, 8),
    save_repeat=1,
    load_repeat=1,
    overhead_calls=5000,
    import_repeat=1,
)
TINY = Sizes(  # warm-up only
    name="tiny",
    bert={"hidden": 32, "layers": 1, "heads": 2, "intermediate": 64},
    mlp=(8, 16, 4),
    forest=(200, 2, 8),
    save_repeat=1,
    load_repeat=1,
    overhead_calls=1,
    import_repeat=1,
)
SIZES = {s.name: s for s in (FULL, QUICK, TINY)}


def build_tokenizer() -> Any:
    """A ``BertTokenizerFast`` with BERT-base's vocabulary size (tests/models.py's builder)."""
    from tests.models import tiny_tokenizer

    return tiny_tokenizer(vocab_size=BERT_VOCAB, max_length=512)


def build_text_model(sizes: Sizes, seed: int = 0) -> Any:
    """Model A: BERT (BERT-base shape in the full run) in a text-classification pipeline."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, pipeline

    labels = {0: "NEGATIVE", 1: "POSITIVE"}
    config = BertConfig(
        vocab_size=BERT_VOCAB,
        hidden_size=sizes.bert["hidden"],
        num_hidden_layers=sizes.bert["layers"],
        num_attention_heads=sizes.bert["heads"],
        intermediate_size=sizes.bert["intermediate"],
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config).eval()
    return pipeline(TEXT_TASK, model=model, tokenizer=build_tokenizer(), device="cpu")


def build_mlp(sizes: Sizes, seed: int = 0) -> Any:
    """Model B: a Linear/BatchNorm/ReLU MLP (tests/models.py's builder)."""
    from tests.models import tiny_torch_mlp

    return tiny_torch_mlp(sizes=sizes.mlp, seed=seed)


def build_forest(sizes: Sizes, seed: int = 0) -> Any:
    """Model C: a random forest regressor grown to full depth on noisy data (large trees)."""
    import numpy as np
    from sklearn.ensemble import RandomForestRegressor

    samples, trees, features = sizes.forest
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(samples, features)).astype(np.float32)
    y = X[:, 0] + rng.normal(size=samples)
    forest = RandomForestRegressor(
        n_estimators=trees, max_features=0.5, n_jobs=os.cpu_count(), random_state=seed
    ).fit(X, y)
    return forest.set_params(n_jobs=None)


BUILDERS: dict[str, Callable[[Sizes], Any]] = {
    "text_model": build_text_model,
    "mlp": build_mlp,
    "forest": build_forest,
}


def make_inputs(sizes: Sizes) -> dict[str, Any]:
    """The predict parameters of every model, deterministic."""
    import numpy as np
    import torch

    generator = torch.Generator().manual_seed(1)
    return {
        "texts": list(TEXTS),
        "x": torch.randn(BATCH, sizes.mlp[0], generator=generator),
        "X": np.random.default_rng(1).normal(size=(BATCH, sizes.forest[2])).astype(np.float32),
    }


def count_parameters(model: Any) -> int | None:
    module = getattr(model, "model", model)  # a pipeline holds its module in .model
    parameters = getattr(module, "parameters", None)
    if parameters is None:
        return None
    return sum(p.numel() for p in parameters())


@dataclass(frozen=True)
class Spec:
    key: str
    title: str
    names: tuple[str, ...]  # keys of the models dict, parameters of the predict function
    fn: str  # in workload.py
    params: tuple[str, ...]  # caller's parameters, from make_inputs


SPECS = {
    s.key: s
    for s in (
        Spec("A", "A: BERT-base text-classification pipeline", ("text_model",), "predict_text",
             ("texts",)),
        Spec("B", "B: torch MLP", ("mlp",), "predict_mlp", ("x",)),
        Spec("C", "C: scikit-learn random forest", ("forest",), "predict_forest", ("X",)),
        Spec("ABC", "ABC: bundle of A, B and C", ("text_model", "mlp", "forest"), "predict_all",
             ("texts", "x", "X")),
    )
}  # fmt: skip


def summarize(spec: Spec, out: Any) -> Any:
    """A small JSON-able digest of a prediction, so strategies can be checked against each other."""
    if spec.key == "ABC":
        return {
            "text": summarize(SPECS["A"], out["text"]),
            "mlp": summarize(SPECS["B"], out["mlp"]),
            "forest": summarize(SPECS["C"], out["forest"]),
        }
    if spec.key == "A":
        return [(r["label"], round(float(r["score"]), 3)) for r in out]
    return round(float(out.sum()), 3)
