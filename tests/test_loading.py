"""How a bundle's models load: at the same time, each once."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import cloudflow


def test_the_models_of_a_bundle_load_at_the_same_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each model's load waits for the other to start: one after the other, this would time out."""
    import threading

    import cloudflow.flavors as flavors
    from cloudflow import _bundle

    def predict(a, b, x):
        return a["k"] + b["k"] + x

    cloudflow.save_bundle(predict, {"a": {"k": 1}, "b": {"k": 2}}, tmp_path / "bundle")
    both_started = threading.Barrier(2, timeout=20)
    real_get = flavors.get_flavor
    threads: set[str] = set()

    def get_flavor(name: str) -> object:
        flavor = real_get(name)

        def load(path: Path, info: object, ctx: object) -> object:
            threads.add(threading.current_thread().name)
            both_started.wait()
            return flavor.load(path, info, ctx)

        return dataclasses.replace(flavor, load=load)

    monkeypatch.setattr(flavors, "get_flavor", get_flavor)
    assert _bundle.LOAD_WORKERS >= 2
    assert cloudflow.load_bundle(tmp_path / "bundle").predict(x=3) == 6
    assert len(threads) == 2


# --- device and dtype at load ------------------------------------------------------------------


def _mixed(out: Path) -> Path:
    import models

    def predict(mlp, pipe, clf, x, text):
        import torch

        with torch.no_grad():
            weights = next(mlp.parameters())
            scores = mlp(torch.tensor(x, dtype=weights.dtype)).float().tolist()
        return {"mlp": scores, "text": pipe(text)[0]["label"], "clf": clf.predict(x).tolist()}

    cloudflow.save_bundle(
        predict,
        {
            "mlp": models.tiny_torch_mlp(),
            "pipe": models.tiny_text_pipeline(),
            "clf": models.tiny_sklearn_pipeline(),
        },
        out,
    )
    return out


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _mixed(tmp_path_factory.mktemp("mixed") / "bundle")


X = [[0.1, 0.2, 0.3, 0.4], [1.0, -1.0, 0.5, 2.0]]


def test_dtype_at_load_casts_torch_and_transformers_models(mixed: Path) -> None:
    import torch

    base = cloudflow.load_bundle(mixed)
    half = cloudflow.load_bundle(mixed, dtype="bfloat16")
    assert {p.dtype for p in half.models["mlp"].parameters()} == {torch.bfloat16}
    assert half.models["pipe"].model.dtype == torch.bfloat16
    assert {p.dtype for p in base.models["mlp"].parameters()} == {torch.float32}
    want, got = base.predict(x=X, text="good"), half.predict(x=X, text="good")
    assert got["clf"] == want["clf"]  # scikit-learn models load as saved
    for row_want, row_got in zip(want["mlp"], got["mlp"], strict=True):
        assert row_got == pytest.approx(row_want, abs=0.05)
    # One model by name; the others as saved.
    only = cloudflow.load_bundle(mixed, dtype={"mlp": torch.float16})
    assert {p.dtype for p in only.models["mlp"].parameters()} == {torch.float16}
    assert only.models["pipe"].model.dtype == torch.float32


def test_device_and_dtype_reach_the_pyfunc_loader(
    mixed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow.pyfunc
    import torch

    # What `mlflow models serve` reads: the same loader, configured by the environment.
    monkeypatch.setenv("MLFLOW_PYFUNC_INFERENCE_CONFIG", '{"dtype": "bfloat16"}')
    served = mlflow.pyfunc.load_model(str(mixed)).get_raw_model()
    assert served.models["pipe"].model.dtype == torch.bfloat16
    monkeypatch.delenv("MLFLOW_PYFUNC_INFERENCE_CONFIG")

    model = mlflow.pyfunc.load_model(str(mixed), model_config={"dtype": "float16"})
    loaded = model.get_raw_model()  # the cloudflow.Bundle
    assert {p.dtype for p in loaded.models["mlp"].parameters()} == {torch.float16}
    cpu = cloudflow.load_bundle(mixed, device="cpu")
    assert {str(p.device) for p in cpu.models["mlp"].parameters()} == {"cpu"}


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"device": "gpu"}, cloudflow.BundleArgumentError, r"device 'gpu' is not one of 'cpu'"),
        ({"dtype": "int8"}, cloudflow.BundleArgumentError, r"dtype 'int8' is not one of"),
        (
            {"device": {"nope": "cpu"}},
            cloudflow.BundleArgumentError,
            r"names the model 'nope', which this bundle does not have; its models are",
        ),
        (
            {"dtype": {"clf": "float16"}},
            cloudflow.BundleArgumentError,
            r"'clf', a sklearn model: a dtype applies to torch and transformers models only",
        ),
    ],
)
def test_bad_device_or_dtype_is_refused_before_loading(
    mixed: Path, options: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        cloudflow.load_bundle(mixed, **options)


def test_a_device_this_machine_lacks_is_a_clear_error(mixed: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(cloudflow.EnvironmentMismatchError, match=r"device='cuda:1' was asked"):
        cloudflow.load_bundle(mixed, device="cuda:1")
