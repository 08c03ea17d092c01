"""Each model flavor saves and loads its kind of model with the same outputs.

The round trip is parametrized over the registry itself: a new flavor in ``FLAVORS`` fails
``test_every_flavor_has_a_sample`` until it gets a sample model here, and is then round-tripped
like the others. Flavors pickle through cloudflow's own context (see ``pickle_context``), so
user classes inside models travel by value exactly as in a saved bundle.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import models
import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

from cloudflow.capture.codewriter import CodeWriter
from cloudflow.capture.pickler import SaveContext
from cloudflow.capture.policy import CapturePolicy
from cloudflow.exceptions import BundleFormatError, CaptureError, MissingDependencyError
from cloudflow.flavors import FLAVORS, Flavor, flavor_for, get_flavor, requirements_for
from cloudflow.flavors import _sklearn as sklearn_flavor
from cloudflow.flavors._base import require
from cloudflow.flavors._torch import ALIGNMENT, write_safetensors
from cloudflow.runtime.unpickler import LoadContext, ModuleTable, load_code

# --- the pickling context ---------------------------------------------------------------------


class BundleContext:
    """cloudflow's own pickling context, as a bundle uses it.

    One object for both sides (a flavor is given a save context, then a load context): the
    save context writes classes of user modules as references
    into the bundle's module table; the first load writes and reads the ``code.pkl`` that holds
    those modules, as loading a bundle does before its models.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.policy = CapturePolicy()
        self.save_context = SaveContext(self.policy)
        self.shared_files = None
        self._load_context: LoadContext | None = None

    def dump(
        self,
        obj: object,
        path: Path,
        *,
        persistent_id: Callable[[object], object | None] | None = None,
    ) -> None:
        self.save_context.dump(obj, path, persistent_id=persistent_id)

    def load(self, path: Path, *, persistent_load: Callable[[object], object] | None = None) -> Any:
        if self._load_context is None:
            code = self.folder / "code.pkl"
            # Any function: what matters are the modules.
            CodeWriter(self.policy).dump_code(len, code)
            table = ModuleTable()
            load_code(code, table)
            self._load_context = LoadContext(table)
        return self._load_context.load(path, persistent_load=persistent_load)

    def read_bytes(self, path: Path) -> bytes:
        return Path(path).read_bytes()


@pytest.fixture
def pickle_context(tmp_path: Path) -> BundleContext:
    return BundleContext(tmp_path)


def round_trip(flavor: Flavor, obj: object, folder: Path, ctx: Any) -> tuple[object, dict]:
    """Save, pass the info through JSON as the manifest does, load."""
    folder.mkdir(parents=True, exist_ok=True)
    info = flavor.save(obj, folder, ctx)
    info = json.loads(json.dumps(info))
    return flavor.load(folder, info, ctx), info


# --- samples and output checks, one per flavor ------------------------------------------------


def _pickle_sample() -> object:
    return {"threshold": 0.5, "labels": ["NEGATIVE", "POSITIVE"], "weights": (1, 2.5)}


def _tf_sample() -> object:
    # tensorflow has a venv of its own (tests/test_keras_tf.py); here only where it is installed.
    pytest.importorskip("tensorflow")
    return models.tiny_tf_module()


SAMPLES: dict[str, Callable[[], object]] = {
    "xgboost": models.tiny_xgb_classifier,
    "lightgbm": models.tiny_lgbm_classifier,
    "onnx": models.tiny_onnx_session,
    "transformers": models.tiny_text_pipeline,
    "torch": models.tiny_torch_mlp,
    "sklearn": models.tiny_sklearn_pipeline,
    "flax": models.tiny_flax_mlp,
    "jax": models.tiny_jax_params,
    "container": models.tiny_ensemble,
    "pickle": _pickle_sample,
    "keras": models.tiny_keras_model,
    "tensorflow": _tf_sample,
}


def _same_pipeline_outputs(original: Any, loaded: Any) -> None:
    assert loaded(models.TEXTS) == original(models.TEXTS)
    assert loaded.model.config.id2label == original.model.config.id2label


def _same_torch_outputs(original: Any, loaded: Any) -> None:
    x = models.torch_input()
    with torch.no_grad():
        assert torch.equal(loaded(x), original(x))
    assert loaded.training == original.training


def _same_sklearn_outputs(original: Any, loaded: Any) -> None:
    X, _ = models.iris()
    np.testing.assert_array_equal(loaded.predict_proba(X), original.predict_proba(X))


def _same_boosted_outputs(original: Any, loaded: Any) -> None:
    X, _ = models.iris()
    np.testing.assert_array_equal(loaded.predict(X), original.predict(X))
    np.testing.assert_array_equal(loaded.predict_proba(X), original.predict_proba(X))
    np.testing.assert_array_equal(loaded.classes_, original.classes_)
    assert repr(loaded.get_params()) == repr(original.get_params())  # missing=nan != nan


def _same_session_outputs(original: Any, loaded: Any) -> None:
    X = models.iris()[0].astype(np.float32)
    np.testing.assert_array_equal(loaded.run(None, {"X": X})[0], original.run(None, {"X": X})[0])
    assert loaded.get_providers() == original.get_providers()


def _same_ensemble_outputs(original: Any, loaded: Any) -> None:
    assert type(loaded["nets"]) is list
    assert type(loaded["weights"]) is tuple
    assert loaded["weights"] == original["weights"]
    assert list(loaded["by_language"]) == list(original["by_language"])
    for mine, theirs in zip(loaded["nets"], original["nets"], strict=True):
        _same_torch_outputs(theirs, mine)
    for language, pipeline in original["by_language"].items():
        _same_sklearn_outputs(pipeline, loaded["by_language"][language])


def _same_flax_outputs(original: Any, loaded: Any) -> None:
    x = models.jax_input()
    assert np.array_equal(np.asarray(loaded(x)), np.asarray(original(x)))


def _same_jax_outputs(original: Any, loaded: Any) -> None:
    x = models.jax_input()
    got, want = models.jax_apply(loaded, x), models.jax_apply(original, x)
    assert np.array_equal(np.asarray(got), np.asarray(want))
    assert type(loaded["layers"]) is list
    assert loaded["shape"] == original["shape"]
    assert type(loaded["shape"]) is tuple
    assert loaded["activation"] == "tanh"


def _same_keras_outputs(original: Any, loaded: Any) -> None:
    x = models.iris()[0][::10].astype(np.float32)
    np.testing.assert_array_equal(
        np.asarray(loaded.predict(x, verbose=0)), np.asarray(original.predict(x, verbose=0))
    )


def _same_tf_outputs(original: Any, loaded: Any) -> None:
    x = models.iris()[0][::10].astype(np.float32)
    np.testing.assert_array_equal(loaded(x).numpy(), original(x).numpy())


def _same_object(original: Any, loaded: Any) -> None:
    assert loaded == original


CHECKS: dict[str, Callable[[Any, Any], None]] = {
    "xgboost": _same_boosted_outputs,
    "lightgbm": _same_boosted_outputs,
    "onnx": _same_session_outputs,
    "transformers": _same_pipeline_outputs,
    "torch": _same_torch_outputs,
    "sklearn": _same_sklearn_outputs,
    "flax": _same_flax_outputs,
    "jax": _same_jax_outputs,
    "container": _same_ensemble_outputs,
    "pickle": _same_object,
    "keras": _same_keras_outputs,
    "tensorflow": _same_tf_outputs,
}


def test_every_flavor_has_a_sample() -> None:
    names = [flavor.name for flavor in FLAVORS]
    assert len(set(names)) == len(names)
    assert set(SAMPLES) == set(names) == set(CHECKS)


def test_pickle_fallback_is_last() -> None:
    assert FLAVORS[-1].name == "pickle"
    assert FLAVORS[-1].matches(object())


@pytest.mark.parametrize("flavor", FLAVORS, ids=lambda f: f.name)
def test_round_trip_gives_the_same_outputs(
    flavor: Flavor, tmp_path: Path, pickle_context: BundleContext
) -> None:
    original = SAMPLES[flavor.name]()
    assert flavor_for(original) is flavor
    loaded, _ = round_trip(flavor, original, tmp_path / "model", pickle_context)
    if flavor.name != "tensorflow":  # a restored SavedModel is TensorFlow's object, not the class
        assert type(loaded) is type(original)
    CHECKS[flavor.name](original, loaded)


@pytest.mark.parametrize("flavor", FLAVORS, ids=lambda f: f.name)
def test_describe_names_framework_and_class(flavor: Flavor) -> None:
    assert flavor.describe is not None
    obj = SAMPLES[flavor.name]()
    meta = flavor.describe(obj)
    json.dumps(meta)  # goes into the manifest and MLflow tags
    assert meta["class"] == f"{type(obj).__module__}.{type(obj).__qualname__}"
    assert meta["framework"] in {flavor.name, "builtins"}


@pytest.mark.parametrize("flavor", FLAVORS, ids=lambda f: f.name)
def test_flavor_declares_its_packages(flavor: Flavor) -> None:
    # A container's requirements are its elements' (see test_container_requirements_...).
    assert flavor.packages or flavor.modules or flavor.name == "container"
    extras = {None, "torch", "transformers", "sklearn", "xgboost", "lightgbm", "onnx", "keras"}
    assert flavor.extra in {*extras, "tensorflow", "jax", "flax"}


# --- choosing a flavor ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (models.tiny_text_pipeline, "transformers"),
        (models.tiny_bert_model, "transformers"),  # also an nn.Module: the specific flavor wins
        (models.tiny_tokenizer, "transformers"),
        (models.tiny_torch_mlp, "torch"),
        (lambda: nn.Linear(2, 2), "torch"),
        (models.tiny_sklearn_pipeline, "sklearn"),
        # Also scikit-learn estimators: the boosting flavors come first.
        (models.tiny_xgb_classifier, "xgboost"),
        (models.tiny_xgb_booster, "xgboost"),
        (models.tiny_lgbm_classifier, "lightgbm"),
        (models.tiny_lgbm_booster, "lightgbm"),
        (models.tiny_onnx_model, "onnx"),
        (models.tiny_onnx_session, "onnx"),
        (lambda: np.arange(3), "pickle"),
        (lambda: len, "pickle"),
        # Containers: only with a non-pickle model inside, at any depth.
        (models.tiny_ensemble, "container"),
        (lambda: (nn.Linear(2, 2),), "container"),
        (lambda: [1, [2, {"deep": nn.Linear(2, 2)}]], "container"),
        (lambda: {"threshold": 0.5, "labels": ["a", "b"]}, "pickle"),
        (lambda: [np.arange(3), np.ones(2)], "pickle"),
        (lambda: [], "pickle"),
        (lambda: {1: nn.Linear(2, 2)}, "pickle"),  # a key that is not a str
        (lambda: collections.OrderedDict(a=nn.Linear(2, 2)), "pickle"),  # a dict subclass
    ],
)
def test_flavor_for_picks_the_specific_flavor(build: Callable[[], object], expected: str) -> None:
    assert flavor_for(build()).name == expected


def test_importing_and_matching_imports_no_framework() -> None:
    code = textwrap.dedent(
        """
        import sys
        from cloudflow.flavors import flavor_for
        assert flavor_for({"a": 1}).name == "pickle"
        heavy = {"torch", "transformers", "sklearn", "safetensors", "skops", "xgboost", "lightgbm"}
        heavy |= {"onnx", "onnxruntime", "jax", "jaxlib", "flax"}
        heavy &= set(sys.modules)
        assert not heavy, heavy
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_unknown_flavor_name_lists_the_known_ones() -> None:
    with pytest.raises(BundleFormatError, match=r"Unknown model flavor 'tf'.*'torch'.*'pickle'"):
        get_flavor("tf")


def test_get_flavor_returns_the_registered_flavor() -> None:
    for flavor in FLAVORS:
        assert get_flavor(flavor.name) is flavor


def test_missing_library_names_the_extra(
    tmp_path: Path, pickle_context: BundleContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    flavor = get_flavor("torch")
    info = flavor.save(models.tiny_torch_mlp(), tmp_path, pickle_context)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)  # makes the import fail
    with pytest.raises(MissingDependencyError, match=r"pip install 'cloudflow\[torch\]'"):
        flavor.load(tmp_path, info, pickle_context)


@pytest.mark.parametrize(
    ("name", "library"), [("xgboost", "xgboost"), ("lightgbm", "lightgbm"), ("onnx", "onnxruntime")]
)
def test_missing_boosting_or_onnx_library_names_the_extra(
    name: str,
    library: str,
    tmp_path: Path,
    pickle_context: BundleContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flavor = get_flavor(name)
    info = flavor.save(SAMPLES[name](), tmp_path, pickle_context)
    monkeypatch.setitem(sys.modules, library, None)  # makes the import fail
    with pytest.raises(MissingDependencyError, match=rf"pip install 'cloudflow\[{name}\]'"):
        flavor.load(tmp_path, info, pickle_context)


def test_require_without_extra_names_the_module() -> None:
    with pytest.raises(MissingDependencyError, match=r"pip install no_such_module_here"):
        require("no_such_module_here", flavor="pickle", extra=None)


# --- user classes: they live in the user's modules, not in an installed library ---------------

USER_MODULE = """
import torch
from torch import nn
from sklearn.base import BaseEstimator, TransformerMixin
from transformers import BertForSequenceClassification, TextClassificationPipeline


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 3)
        self.register_buffer("scale", torch.tensor([2.0, 0.5, 1.0]))

    def forward(self, x):
        return self.body(x) * self.scale


class LoudPipeline(TextClassificationPipeline):
    def postprocess(self, model_outputs, **kwargs):
        result = super().postprocess(model_outputs, **kwargs)
        return {**result, "loud": True}


class MyBert(BertForSequenceClassification):
    pass


class AddConstant(TransformerMixin, BaseEstimator):
    def __init__(self, value=1.0):
        self.value = value

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        return X + self.value
"""


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """A user module on sys.path; ``_forget`` makes it unimportable again."""
    source = tmp_path / "user_src"
    source.mkdir()
    (source / "cf_user_models.py").write_text(USER_MODULE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(source))
    import cf_user_models

    try:
        yield cf_user_models
    finally:
        sys.modules.pop("cf_user_models", None)


def _forget(module: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """The user's source is gone: the class must come from the saved files."""
    monkeypatch.delitem(sys.modules, module.__name__)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if not p.endswith("user_src")])
    with pytest.raises(ImportError, match="cf_user_models"):
        __import__(module.__name__)


def test_user_torch_module_round_trips(
    user_module: ModuleType,
    tmp_path: Path,
    pickle_context: BundleContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch.manual_seed(0)
    net = user_module.TinyNet().eval()
    flavor = flavor_for(net)
    assert flavor.name == "torch"
    folder = tmp_path / "net"
    folder.mkdir()
    info = flavor.save(net, folder, pickle_context)
    _forget(user_module, monkeypatch)
    loaded: Any = flavor.load(folder, info, pickle_context)
    # The module cannot be imported any more, so the class came from module.pkl, by value.
    assert type(loaded).__qualname__ == "TinyNet"
    x = models.torch_input()
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))


def test_user_sklearn_transformer_round_trips(
    user_module: ModuleType,
    tmp_path: Path,
    pickle_context: BundleContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    X, y = models.iris()
    estimator = make_pipeline(user_module.AddConstant(3.0), LogisticRegression(max_iter=300))
    estimator.fit(X, y)
    flavor = flavor_for(estimator)
    assert flavor.name == "sklearn"
    monkeypatch.setattr(sklearn_flavor, "FORMAT", "skops")  # even then: skops cannot import it
    folder = tmp_path / "est"
    folder.mkdir()
    info = flavor.save(estimator, folder, pickle_context)
    assert info["format"] == "pickle"
    assert not (folder / "model.skops").exists()
    _forget(user_module, monkeypatch)
    loaded: Any = flavor.load(folder, info, pickle_context)
    np.testing.assert_array_equal(loaded.predict_proba(X), estimator.predict_proba(X))


def test_user_pipeline_and_model_classes_round_trip(
    user_module: ModuleType,
    tmp_path: Path,
    pickle_context: BundleContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = models.tiny_bert_model()
    model = user_module.MyBert(base.config)
    model.load_state_dict(base.state_dict())
    model.eval()
    pipe = user_module.LoudPipeline(
        model=model, tokenizer=models.tiny_tokenizer(), task="text-classification", device="cpu"
    )
    expected = pipe(models.TEXTS)
    assert expected[0]["loud"]
    flavor = flavor_for(pipe)
    assert flavor.name == "transformers"
    folder = tmp_path / "pipe"
    folder.mkdir()
    info = flavor.save(pipe, folder, pickle_context)
    assert "file" in info["class"]
    assert "file" in info["model_class"]
    _forget(user_module, monkeypatch)
    loaded: Any = flavor.load(folder, info, pickle_context)
    assert type(loaded).__qualname__ == "LoudPipeline"
    assert type(loaded.model).__qualname__ == "MyBert"
    assert loaded(models.TEXTS) == expected


# --- torch ------------------------------------------------------------------------------------


def _tied_model() -> nn.Module:
    torch.manual_seed(0)
    embed = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = embed.weight  # tied, as language models tie input and output embeddings
    return nn.Sequential(embed, nn.Tanh(), head).eval()


def test_torch_tied_weights_are_stored_once_and_stay_shared(
    tmp_path: Path, pickle_context: BundleContext
) -> None:
    model = _tied_model()
    loaded: Any
    loaded, info = round_trip(get_flavor("torch"), model, tmp_path, pickle_context)
    with safe_open(tmp_path / "weights.safetensors", framework="pt") as f:
        assert list(f.keys()) == ["0.weight"]
    assert info["tensors"] == 1
    assert loaded[0].weight is loaded[2].weight
    assert isinstance(loaded[2].weight, nn.Parameter)
    tokens = torch.tensor([[1, 2, 3], [7, 8, 9]])
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model(tokens))


def test_torch_skeleton_holds_no_weight_bytes(
    tmp_path: Path, pickle_context: BundleContext
) -> None:
    model = models.tiny_torch_mlp(sizes=(64, 512, 256, 8))
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    assert weights > 600_000
    round_trip(get_flavor("torch"), model, tmp_path, pickle_context)
    skeleton = (tmp_path / "module.pkl").read_bytes()
    assert len(skeleton) < 5_000
    first_layer = model[0].weight.detach().numpy().tobytes()
    assert first_layer[:256] not in skeleton
    assert (tmp_path / "weights.safetensors").stat().st_size >= weights


class _Everything(nn.Module):
    """Parameters and tensors of every kind the torch flavor has to tell apart."""

    def __init__(self) -> None:
        super().__init__()
        self.trainable = nn.Linear(3, 2)
        self.frozen = nn.Linear(3, 2).to(torch.float64).requires_grad_(False)
        self.low = nn.Parameter(torch.ones(2, dtype=torch.float16))
        self.register_buffer("table", torch.arange(12.0).reshape(3, 4))
        self.register_buffer("scratch", torch.full((2,), 7), persistent=False)
        self.row = self.table[1]  # a view of the buffer: another tensor on the same storage
        self.plain = torch.tensor([0.25, 0.75])  # a tensor attribute, neither param nor buffer
        self.sparse = torch.eye(3).to_sparse()  # not storable in safetensors: stays pickled


def test_torch_keeps_parameter_kinds_dtypes_and_mode(
    tmp_path: Path, pickle_context: BundleContext
) -> None:
    torch.manual_seed(0)
    model = _Everything().train()
    loaded: Any
    loaded, _ = round_trip(get_flavor("torch"), model, tmp_path, pickle_context)
    assert loaded.training
    assert loaded.trainable.weight.requires_grad
    assert not loaded.frozen.weight.requires_grad
    assert loaded.frozen.weight.dtype == torch.float64
    assert loaded.low.dtype == torch.float16
    assert isinstance(loaded.low, nn.Parameter)
    assert sorted(dict(loaded.named_parameters())) == sorted(dict(model.named_parameters()))
    assert sorted(dict(loaded.named_buffers())) == ["scratch", "table"]
    assert not isinstance(loaded.table, nn.Parameter)
    assert "scratch" not in loaded.state_dict()  # still non-persistent
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert torch.equal(loaded.scratch, model.scratch)
    assert torch.equal(loaded.row, model.row)
    assert torch.equal(loaded.plain, model.plain)
    assert torch.equal(loaded.sparse.to_dense(), torch.eye(3))


def test_torch_load_memory_maps_the_weights(tmp_path: Path, pickle_context: BundleContext) -> None:
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("needs Linux /proc to see memory mappings")
    loaded, _ = round_trip(get_flavor("torch"), models.tiny_torch_mlp(), tmp_path, pickle_context)
    assert str(tmp_path / "weights.safetensors") in maps.read_text()
    assert loaded is not None  # the mapping lives as long as the model


@pytest.mark.parametrize("pad", [True, False])
def test_write_safetensors_is_standard_and_aligned(tmp_path: Path, pad: bool) -> None:
    from safetensors.torch import load_file

    base = torch.randn(16, 16)
    tensors = {
        "odd": torch.randn(3),
        "matrix": base,
        "row": base[2],  # shares the storage of "matrix"
        "transposed": torch.randn(4, 4).t(),  # not contiguous
        "flag": torch.tensor(True),
        "half": torch.randn(5, dtype=torch.bfloat16),
        "small": torch.arange(5, dtype=torch.int16),
        "empty": torch.zeros(0, 3),
        "complex": torch.randn(2, 3, dtype=torch.complex64),
        "last": torch.randn(16, 16, dtype=torch.float64),
    }
    write_safetensors(tensors, tmp_path / "w.safetensors", {"format": "pt"}, pad=pad)
    loaded = load_file(tmp_path / "w.safetensors")  # safetensors' own reader accepts it
    padding = {k for k in loaded if k.startswith("__cloudflow_padding__.")}
    assert bool(padding) == pad
    assert set(loaded) - padding == set(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype
        assert torch.equal(loaded[name], tensor), name
    sizes_aligned = [n for n, t in tensors.items() if t.numel() * t.element_size() % ALIGNMENT == 0]
    must_align = [n for n in tensors if tensors[n].numel()] if pad else sizes_aligned
    assert all(loaded[n].data_ptr() % ALIGNMENT == 0 for n in must_align)
    with safe_open(tmp_path / "w.safetensors", framework="pt") as f:
        assert f.metadata() == {"format": "pt"}


def test_torch_describe_counts_trainable_and_frozen() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    model[0].requires_grad_(False)
    meta = get_flavor("torch").describe(model)  # type: ignore[misc]
    assert meta["parameters"] == 4 * 8 + 8 + 8 * 2 + 2
    assert meta["frozen_parameters"] == 4 * 8 + 8
    assert meta["trainable_parameters"] == 8 * 2 + 2
    assert meta["layers"] == 2  # the ReLU holds no weights
    assert meta["layer_types"] == {"Linear": 2}
    assert meta["tensors"] == 4
    assert meta["tensor_shapes"] == {
        "0.weight": [8, 4],
        "0.bias": [8],
        "2.weight": [2, 8],
        "2.bias": [2],
    }
    assert meta["dtype"] == "float32"
    assert meta["device"] == "cpu"
    assert meta["training"] is True


# --- transformers -----------------------------------------------------------------------------


def test_pipeline_keeps_task_labels_and_call_settings(
    tmp_path: Path, pickle_context: BundleContext
) -> None:
    from transformers import pipeline

    original = pipeline(
        "text-classification",
        model=models.tiny_bert_model(seed=2),
        tokenizer=models.tiny_tokenizer(),
        top_k=None,  # every label with its score
        function_to_apply="sigmoid",
        truncation=True,
        device="cpu",
    )
    loaded: Any
    loaded, info = round_trip(get_flavor("transformers"), original, tmp_path, pickle_context)
    assert info["task"] == "text-classification"
    assert loaded.task == "text-classification"
    expected = original(models.TEXTS)
    assert len(expected[0]) == 2  # top_k=None was kept, not reset to the best label only
    assert loaded(models.TEXTS) == expected
    assert loaded.model.config.id2label == models.TEXT_LABELS


def test_pipeline_folder_is_what_transformers_reads(
    tmp_path: Path, pickle_context: BundleContext
) -> None:
    from transformers import pipeline

    original = models.tiny_text_pipeline()
    get_flavor("transformers").save(original, tmp_path, pickle_context)
    assert (tmp_path / "model.safetensors").exists()
    reread = pipeline("text-classification", model=str(tmp_path))
    assert reread(models.TEXTS) == original(models.TEXTS)


def test_pipeline_load_memory_maps_the_weights(
    tmp_path: Path, pickle_context: BundleContext
) -> None:
    maps = Path("/proc/self/maps")
    if not maps.exists():
        pytest.skip("needs Linux /proc to see memory mappings")
    pipe = models.tiny_text_pipeline()
    loaded, _ = round_trip(get_flavor("transformers"), pipe, tmp_path, pickle_context)
    assert str(tmp_path / "model.safetensors") in maps.read_text()
    assert loaded is not None


def test_pipeline_weights_load_aligned_for_identical_outputs(
    tmp_path: Path, pickle_context: BundleContext
) -> None:
    # 8-byte aligned memory-mapped weights change the last bits of the scores; see
    # write_safetensors. Every weight whose size allows it must start 64-byte aligned.
    pipe = models.tiny_text_pipeline()
    loaded: Any
    loaded, _ = round_trip(get_flavor("transformers"), pipe, tmp_path, pickle_context)
    for name, param in loaded.model.named_parameters():
        if param.numel() * param.element_size() % ALIGNMENT == 0:
            assert param.data_ptr() % ALIGNMENT == 0, name
    assert loaded(models.TEXTS * 3) == pipe(models.TEXTS * 3)


def test_bare_transformers_model_round_trips(tmp_path: Path, pickle_context: BundleContext) -> None:
    model = models.tiny_bert_model().train()
    loaded: Any
    loaded, info = round_trip(get_flavor("transformers"), model, tmp_path, pickle_context)
    assert info["kind"] == "model"
    assert type(loaded) is type(model)
    assert loaded.training
    inputs = models.tiny_tokenizer()(models.TEXTS, padding=True, return_tensors="pt")
    model.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, model(**inputs).logits)


def test_tokenizer_round_trips(tmp_path: Path, pickle_context: BundleContext) -> None:
    tokenizer = models.tiny_tokenizer()
    loaded: Any
    loaded, info = round_trip(get_flavor("transformers"), tokenizer, tmp_path, pickle_context)
    assert info["kind"] == "pretrained"
    assert type(loaded) is type(tokenizer)
    assert loaded(models.TEXTS)["input_ids"] == tokenizer(models.TEXTS)["input_ids"]


def test_transformers_describe_reports_layers_and_labels() -> None:
    meta = get_flavor("transformers").describe(models.tiny_text_pipeline())  # type: ignore[misc]
    assert meta["task"] == "text-classification"
    assert meta["layers"] == 2
    assert meta["labels"] == {"0": "NEGATIVE", "1": "POSITIVE"}
    assert meta["parameters"] == meta["trainable_parameters"] > 0
    assert meta["dtype"] == "float32"


# --- scikit-learn -----------------------------------------------------------------------------


def test_sklearn_pickles_by_default(tmp_path: Path, pickle_context: BundleContext) -> None:
    _, info = round_trip(
        get_flavor("sklearn"), models.tiny_sklearn_pipeline(), tmp_path, pickle_context
    )
    assert info == {"format": "pickle", "file": "model.pkl"}
    assert requirements_for("sklearn", info) == ["scikit-learn"], "no skops for a pickle"


def test_sklearn_skops_format_round_trips(
    tmp_path: Path, pickle_context: BundleContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sklearn.ensemble import RandomForestClassifier

    monkeypatch.setattr(sklearn_flavor, "FORMAT", "skops")
    X, y = models.iris()
    forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(X, y)
    loaded: Any
    loaded, info = round_trip(get_flavor("sklearn"), forest, tmp_path, pickle_context)
    assert info["format"] == "skops"
    assert requirements_for("sklearn", info) == ["scikit-learn", "skops"]
    assert all(name.startswith("sklearn.") for name in info["trusted"])
    assert not (tmp_path / "model.pkl").exists()
    np.testing.assert_array_equal(loaded.predict_proba(X), forest.predict_proba(X))


def test_sklearn_unknown_format_is_refused(tmp_path: Path, pickle_context: BundleContext) -> None:
    with pytest.raises(BundleFormatError, match=r"Unknown scikit-learn format 'onnx'"):
        get_flavor("sklearn").load(tmp_path, {"format": "onnx"}, pickle_context)


def test_sklearn_describe_lists_steps() -> None:
    meta = get_flavor("sklearn").describe(models.tiny_sklearn_pipeline())  # type: ignore[misc]
    assert meta["steps"] == ["scale: StandardScaler", "clf: LogisticRegression"]
    assert meta["n_features_in"] == 4
    assert meta["n_classes"] == 3
    assert meta["parameters"] > 0


# --- XGBoost and LightGBM ---------------------------------------------------------------------


def _assert_no_trees_in(pickle_file: Path, booster_file: Path) -> None:
    """The pickle is a few kB of wrapper state; the trees are in the booster file only."""
    data = pickle_file.read_bytes()
    trees = booster_file.read_bytes()
    assert len(data) < 8_000, len(data)
    assert len(trees) > len(data) // 2
    # A pickled booster holds these very bytes (both libraries pickle their own model format).
    windows = [trees[i : i + 24] for i in range(len(trees) // 3, len(trees) - 24, 97)]
    assert len(windows) > 10
    assert not [w for w in windows if w in data]
    assert b"split_feature" not in data
    assert b"split_conditions" not in data


def test_xgboost_booster_is_one_native_file(tmp_path: Path, pickle_context: BundleContext) -> None:
    import xgboost

    booster = models.tiny_xgb_booster()
    loaded: Any
    loaded, info = round_trip(get_flavor("xgboost"), booster, tmp_path, pickle_context)
    assert info["kind"] == "booster"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ubj"]
    reread = xgboost.Booster(model_file=str(tmp_path / "model.ubj"))  # XGBoost reads it alone
    X, _ = models.iris()
    data = xgboost.DMatrix(X[:, :3], feature_names=["sl", "sw", "pl"])
    np.testing.assert_array_equal(loaded.predict(data), booster.predict(data))
    np.testing.assert_array_equal(reread.predict(data), booster.predict(data))
    assert loaded.feature_names == ["sl", "sw", "pl"]


def test_xgboost_wrapper_keeps_its_attributes_without_pickling_trees(
    tmp_path: Path, pickle_context: BundleContext
) -> None:
    model = models.tiny_xgb_classifier()
    model.note = "kept"  # an attribute XGBoost's own model file has no place for
    loaded: Any
    loaded, info = round_trip(get_flavor("xgboost"), model, tmp_path, pickle_context)
    assert info["boosters"] == [{"library": "xgboost", "file": "model.ubj"}]
    assert loaded.n_classes_ == 3
    assert loaded.note == "kept"
    assert loaded.get_booster().num_boosted_rounds() == 8
    _assert_no_trees_in(tmp_path / "wrapper.pkl", tmp_path / "model.ubj")


def test_xgboost_regressor_round_trips_exactly(
    tmp_path: Path, pickle_context: BundleContext
) -> None:
    import xgboost

    X, _ = models.iris()
    model = xgboost.XGBRegressor(n_estimators=5, max_depth=2, n_jobs=1).fit(X[:, :3], X[:, 3])
    loaded: Any
    loaded, _ = round_trip(get_flavor("xgboost"), model, tmp_path, pickle_context)
    assert type(loaded) is xgboost.XGBRegressor
    np.testing.assert_array_equal(loaded.predict(X[:, :3]), model.predict(X[:, :3]))


def test_lightgbm_booster_keeps_its_best_iteration(
    tmp_path: Path, pickle_context: BundleContext
) -> None:
    import lightgbm

    X, _ = models.iris()
    train = lightgbm.Dataset(X[::2, :3], label=X[::2, 3])
    valid = lightgbm.Dataset(X[1::2, :3], label=X[1::2, 3])
    booster = lightgbm.train(
        {"objective": "regression", "num_leaves": 4, "learning_rate": 0.5, "verbose": -1},
        train,
        num_boost_round=300,
        valid_sets=[valid],
        callbacks=[lightgbm.early_stopping(3, verbose=False)],
    )
    assert booster.best_iteration > 0
    loaded: Any
    loaded, info = round_trip(get_flavor("lightgbm"), booster, tmp_path, pickle_context)
    assert info["kind"] == "booster"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.txt"]
    assert loaded.best_iteration == booster.best_iteration
    np.testing.assert_array_equal(loaded.predict(X[:, :3]), booster.predict(X[:, :3]))


def test_lightgbm_wrapper_keeps_string_labels_without_pickling_trees(
    tmp_path: Path, pickle_context: BundleContext
) -> None:
    model = models.tiny_lgbm_classifier()
    loaded: Any
    loaded, info = round_trip(get_flavor("lightgbm"), model, tmp_path, pickle_context)
    assert info["boosters"] == [{"library": "lightgbm", "file": "model.txt", "best_iteration": 0}]
    X, _ = models.iris()
    assert list(loaded.predict(X[:3])) == list(model.predict(X[:3]))
    assert list(loaded.classes_) == list(models.IRIS_NAMES)
    _assert_no_trees_in(tmp_path / "wrapper.pkl", tmp_path / "model.txt")


def test_pipeline_ending_in_a_booster_keeps_the_trees_out_of_the_pickle(
    tmp_path: Path, pickle_context: BundleContext
) -> None:
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = models.iris()
    pipeline = make_pipeline(StandardScaler(), models.tiny_xgb_classifier()).fit(X, y)
    flavor = flavor_for(pipeline)
    assert flavor.name == "sklearn"  # the pipeline, whole, with its booster beside it
    loaded: Any
    loaded, info = round_trip(flavor, pipeline, tmp_path, pickle_context)
    assert info["boosters"] == [{"library": "xgboost", "file": "model.ubj"}]
    np.testing.assert_array_equal(loaded.predict_proba(X), pipeline.predict_proba(X))
    _assert_no_trees_in(tmp_path / "model.pkl", tmp_path / "model.ubj")


def test_booster_reference_that_is_not_ours_is_refused(
    tmp_path: Path, pickle_context: BundleContext
) -> None:
    flavor = get_flavor("xgboost")
    info = flavor.save(models.tiny_xgb_classifier(), tmp_path, pickle_context)
    info["boosters"] = []  # the pickle now refers to a booster the manifest does not list
    with pytest.raises(BundleFormatError, match=r"not one of its 0 booster files"):
        flavor.load(tmp_path, info, pickle_context)


@pytest.mark.parametrize("name", ["xgboost", "lightgbm"])
def test_boosted_describe_counts_trees_and_classes(name: str) -> None:
    flavor = get_flavor(name)
    meta = flavor.describe(SAMPLES[name]())  # type: ignore[misc]
    assert meta["n_classes"] == 3
    assert meta["n_features"] == 4
    assert meta["objective"] == "multi:softprob" if name == "xgboost" else "multiclass"
    if name == "xgboost":
        assert meta["rounds"] == 8
    else:
        assert meta["trees"] == 6 * 3  # one tree per class and iteration
        assert meta["iterations"] == 6
    assert meta["hyperparameters"]["n_estimators"] in (6, 8)


# --- ONNX ------------------------------------------------------------------------------------


def test_onnx_model_is_its_own_protobuf(tmp_path: Path, pickle_context: BundleContext) -> None:
    import onnx

    model = models.tiny_onnx_model()
    loaded: Any
    loaded, info = round_trip(get_flavor("onnx"), model, tmp_path, pickle_context)
    assert info == {"kind": "model", "file": "model.onnx", "external_data": False}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    assert type(loaded) is onnx.ModelProto
    assert loaded.SerializeToString() == model.SerializeToString()


def test_onnx_session_is_rebuilt_with_its_options(
    tmp_path: Path, pickle_context: BundleContext
) -> None:
    import onnxruntime

    # Built from a file this time (the bundle's samples are built from bytes).
    source = tmp_path / "source.onnx"
    source.write_bytes(models.tiny_onnx_model().SerializeToString())
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.enable_mem_pattern = False
    session = onnxruntime.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    folder = tmp_path / "saved"
    loaded: Any
    loaded, info = round_trip(get_flavor("onnx"), session, folder, pickle_context)
    source.unlink()
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx"]
    assert info["providers"] == ["CPUExecutionProvider"]
    assert info["session_options"]["graph_optimization_level"] == "ORT_DISABLE_ALL"
    kept = loaded.get_session_options()
    assert kept.graph_optimization_level == onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert kept.intra_op_num_threads == 1
    assert kept.enable_mem_pattern is False
    _same_session_outputs(session, loaded)


def test_onnx_session_from_a_provider_not_here_falls_back_to_cpu(
    tmp_path: Path, pickle_context: BundleContext, caplog: pytest.LogCaptureFixture
) -> None:
    session = models.tiny_onnx_session()
    info = get_flavor("onnx").save(session, tmp_path, pickle_context)
    info["providers"] = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    with caplog.at_level("WARNING", logger="cloudflow"):
        loaded: Any = get_flavor("onnx").load(tmp_path, info, pickle_context)
    assert loaded.get_providers() == ["CPUExecutionProvider"]
    assert "CUDAExecutionProvider, not available here" in caplog.text
    _same_session_outputs(session, loaded)


def test_onnx_describe_counts_parameters() -> None:
    meta = get_flavor("onnx").describe(models.tiny_onnx_model())  # type: ignore[misc]
    assert meta["parameters"] == 4 * 8 + 8 + 8 * 3
    assert meta["nodes"] == 5
    assert meta["opsets"] == {"ai.onnx": 17}
    assert meta["inputs"] == ["X"]
    session_meta = get_flavor("onnx").describe(models.tiny_onnx_session())  # type: ignore[misc]
    assert session_meta["providers"] == ["CPUExecutionProvider"]
    assert session_meta["outputs"] == ["probabilities"]


# --- containers of models ---------------------------------------------------------------------


def test_container_saves_each_element_with_its_flavor(
    tmp_path: Path, pickle_context: BundleContext
) -> None:
    ensemble = {"nets": [models.tiny_torch_mlp()], "odd/../key": models.tiny_xgb_classifier()}
    loaded: Any
    loaded, info = round_trip(get_flavor("container"), ensemble, tmp_path, pickle_context)
    assert [(i["key"], i["flavor"], i["path"]) for i in info["items"]] == [
        ("nets", "container", "0"),
        ("odd/../key", "xgboost", "1"),  # keys live in the manifest, never in a path
    ]
    assert (tmp_path / "0" / "0" / "weights.safetensors").exists()
    assert (tmp_path / "1" / "model.ubj").exists()
    X, _ = models.iris()
    np.testing.assert_array_equal(
        loaded["odd/../key"].predict_proba(X), ensemble["odd/../key"].predict_proba(X)
    )
    _same_torch_outputs(ensemble["nets"][0], loaded["nets"][0])


def test_the_same_model_twice_in_a_container_is_saved_once_and_stays_one(
    tmp_path: Path, pickle_context: BundleContext
) -> None:
    net = models.tiny_torch_mlp()
    nets = [net, models.tiny_torch_mlp(seed=1)]
    ensemble = {"members": [net, net], "again": nets, "also": nets}
    loaded: Any
    loaded, info = round_trip(get_flavor("container"), ensemble, tmp_path, pickle_context)
    members = info["items"][0]["info"]["items"]
    assert members[1] == {"path": "1", "flavor": "torch", "info": {}, "same_as": "0/0"}
    assert info["items"][2]["same_as"] == "1"
    assert sorted(p.name for p in (tmp_path / "0").iterdir()) == ["0"]  # one folder, one copy
    assert not (tmp_path / "2").exists()
    assert loaded["members"][0] is loaded["members"][1]
    assert loaded["also"] is loaded["again"]
    assert loaded["again"][0] is loaded["members"][0]  # the same net, wherever it was met
    _same_torch_outputs(net, loaded["members"][1])


def test_container_that_holds_itself_is_refused(
    tmp_path: Path, pickle_context: BundleContext
) -> None:
    loop: list[Any] = [nn.Linear(2, 2)]
    loop.append(loop)
    with pytest.raises(CaptureError, match=r"The list holds itself \(at index or key 1\)"):
        get_flavor("container").save(loop, tmp_path, pickle_context)


def test_container_refuses_an_element_path_outside_its_folder(
    tmp_path: Path, pickle_context: BundleContext
) -> None:
    info = {"kind": "list", "items": [{"flavor": "pickle", "path": "../x", "info": {}}]}
    with pytest.raises(BundleFormatError, match=r"has the path '\.\./x', not a sub-folder"):
        get_flavor("container").load(tmp_path, info, pickle_context)


def test_container_with_damaged_items_is_refused() -> None:
    from cloudflow.flavors import walk

    with pytest.raises(BundleFormatError, match=r"elements that are not each a flavor, a path"):
        list(walk("container", {"kind": "list", "items": [{"flavor": "torch"}]}))


def test_container_describe_lists_its_elements() -> None:
    meta = get_flavor("container").describe(models.tiny_ensemble())  # type: ignore[misc]
    assert meta["class"] == "builtins.dict"
    assert meta["items"] == 3
    assert meta["elements"]["nets"]["flavor"] == "container"
    assert meta["elements"]["nets"]["elements"]["1"]["parameters"] > 0
    assert meta["elements"]["by_language"]["elements"]["fr"]["n_classes"] == 3
    assert meta["elements"]["weights"]["flavor"] == "pickle"
