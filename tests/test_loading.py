"""How a bundle's models load: at the same time, each once."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

import cloudflow


def test_with_load_workers_the_models_load_at_the_same_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each model's load waits for the other to start: one after the other, this would time out."""
    import threading

    import cloudflow.flavors as flavors
    from cloudflow.runtime import models

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
    monkeypatch.setenv(models.LOAD_WORKERS_ENV, "2")
    assert cloudflow.load_bundle(tmp_path / "bundle").predict(x=3) == 6
    assert len(threads) == 2
    monkeypatch.setenv(models.LOAD_WORKERS_ENV, "many")
    with pytest.raises(cloudflow.BundleArgumentError, match=r"'many' is not a number of threads"):
        cloudflow.load_bundle(tmp_path / "bundle")


# --- device and dtype at load ------------------------------------------------------------------


def _mixed(out: Path) -> Path:
    import models

    def predict(mlp, pipe, clf, x, text):
        import torch

        with torch.no_grad():
            weights = next(mlp.parameters())
            inputs = torch.tensor(x, dtype=weights.dtype, device=weights.device)
            scores = mlp(inputs).float().cpu().tolist()
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


def test_device_cuda_puts_the_models_there_and_answers_the_same(mixed: Path) -> None:
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    base = cloudflow.load_bundle(mixed)
    gpu = cloudflow.load_bundle(mixed, device="cuda")
    assert {p.device.type for p in gpu.models["mlp"].parameters()} == {"cuda"}
    assert gpu.models["pipe"].model.device.type == "cuda"
    want, got = base.predict(x=X, text="good"), gpu.predict(x=X, text="good")
    assert got["clf"] == want["clf"]
    assert got["text"] == want["text"]
    for row_want, row_got in zip(want["mlp"], got["mlp"], strict=True):
        assert row_got == pytest.approx(row_want, rel=1e-4, abs=1e-5)


# --- lazy loading ------------------------------------------------------------------------------


@pytest.fixture
def routed(user_modules: Any, tmp_path: Path) -> Any:
    """A predict function that routes to one of two models, each counting its loads."""
    user_modules.write(
        {
            "routing_app.py": """
                import os

                LOADS = []

                class Counted:
                    def __init__(self, name, k):
                        self.name, self.k = name, k

                    def __setstate__(self, state):
                        self.__dict__.update(state)
                        LOADS.append(state["name"])  # the bundle's own copy of this module

                    def __call__(self, x):
                        return self.k * x

                    def __len__(self):
                        return self.k

                REGISTRY = {}

                def predict(sentiment, summary, input_type, x):
                    model = sentiment if input_type == "sentiment" else summary
                    is_model = isinstance(model, Counted)
                    return {"value": model(x), "size": len(model), "is_model": is_model}
            """
        }
    )
    import routing_app

    models = {
        "sentiment": routing_app.Counted("sentiment", 2),
        "summary": routing_app.Counted("summary", 3),
    }
    cloudflow.save_bundle(routing_app.predict, models, tmp_path / "bundle")
    return tmp_path / "bundle"


def _loads(bundle: cloudflow.Bundle) -> list[str]:
    return list(bundle.predict_fn.__globals__["LOADS"])


def test_a_lazy_bundle_loads_only_the_model_that_answers(routed: Path) -> None:
    bundle = cloudflow.load_bundle(routed, lazy=True)
    assert bundle.loaded == {"sentiment": False, "summary": False}
    assert _loads(bundle) == []
    assert "not loaded yet" in repr(bundle.models["summary"])
    got = bundle.predict(input_type="sentiment", x=5)
    assert got == {"value": 10, "size": 2, "is_model": True}  # calls, len, isinstance
    assert bundle.loaded == {"sentiment": True, "summary": False}
    assert _loads(bundle) == ["sentiment"]
    assert bundle.predict(input_type="sentiment", x=1)["value"] == 2
    assert _loads(bundle) == ["sentiment"]  # once
    eager = cloudflow.load_bundle(routed)
    assert _loads(eager) == ["sentiment", "summary"]


def test_a_lazy_model_loads_once_under_eight_threads(routed: Path) -> None:
    import concurrent.futures

    bundle = cloudflow.load_bundle(routed, lazy=True)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda x: bundle.predict(input_type="summary", x=x), range(40)))
    assert [a["value"] for a in answers] == [3 * x for x in range(40)]
    assert _loads(bundle) == ["summary"]


def test_a_lazy_models_files_are_checked_when_it_loads(routed: Path) -> None:
    (pickle_file,) = (routed / "cloudflow" / "models" / "summary").glob("*.pkl")
    data = bytearray(pickle_file.read_bytes())
    data[-3] ^= 1
    pickle_file.write_bytes(bytes(data))
    bundle = cloudflow.load_bundle(routed, lazy=True)  # the code and the other model are fine
    assert bundle.predict(input_type="sentiment", x=1)["value"] == 2
    with pytest.raises(cloudflow.IntegrityError, match=r"models/summary/.*does not match"):
        bundle.predict(input_type="summary", x=1)
    assert _loads(bundle) == ["sentiment"]  # the damaged pickle was never unpickled
    with pytest.raises(cloudflow.IntegrityError, match=r"models/summary"):
        cloudflow.load_bundle(routed)  # an eager load refuses the bundle at once


def test_background_warming_and_the_model_itself(routed: Path) -> None:
    import time

    bundle = cloudflow.load_bundle(routed, lazy="background")
    deadline = time.monotonic() + 30
    while not all(bundle.loaded.values()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert bundle.loaded == {"sentiment": True, "summary": True}
    real = bundle.model("summary")
    assert type(real).__name__ == "Counted"
    assert type(bundle.models["summary"]) is not type(real)  # a stand-in, documented
    with pytest.raises(cloudflow.ModelKeyError, match=r"no model 'other'; its models are"):
        bundle.model("other")
    with pytest.raises(cloudflow.BundleArgumentError, match=r"lazy must be False, True or"):
        cloudflow.load_bundle(routed, lazy="sometimes")


def test_lazy_through_the_pyfunc_loader(routed: Path) -> None:
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(str(routed), model_config={"lazy": True})
    assert model.predict({"input_type": "summary", "x": 2})["value"] == 6
    assert model.get_raw_model().loaded == {"sentiment": False, "summary": True}


# --- verification overlapped with the first predict ---------------------------------------------


def _weights_bundle(out: Path) -> Path:
    import models

    def predict(mlp, x):
        import torch

        with torch.no_grad():
            return mlp(torch.tensor(x, dtype=torch.float32)).tolist()

    cloudflow.save_bundle(predict, {"mlp": models.tiny_torch_mlp()}, out)
    return out


@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
def test_the_first_predict_runs_while_the_weights_are_hashed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lazy: bool
) -> None:
    """The hash of the weights waits for the first predict to compute its answer: were they done
    one after the other, it would time out. The answer is returned only once the hash is done.
    Lazily, the model loads inside that call, and its weights are hashed while the call runs."""
    import threading
    import time

    from cloudflow.integrity import manifest as _manifest
    from cloudflow.runtime.bundle import Bundle

    bundle_dir = _weights_bundle(tmp_path / "bundle")
    x = [[0.5] * 4]
    expected = cloudflow.load_bundle(bundle_dir).predict(x=x)
    monkeypatch.setenv("CLOUDFLOW_DIGEST_CACHE", "0")
    predicting, answered, order = threading.Event(), threading.Event(), []
    real_verify, real_call = _manifest.verify_digests, Bundle._call

    def verify_digests(data: Path, manifest: Any, rels: list[str], **kwargs: Any) -> None:
        weights = any(rel.endswith(".safetensors") for rel in rels)
        if weights:
            assert predicting.wait(30), "the weights were hashed before the first predict began"
            assert answered.wait(30), "the first predict waited for the hash to compute"
            time.sleep(0.2)  # a predict that did not wait for the hash would return meanwhile
        real_verify(data, manifest, rels, **kwargs)
        if weights:
            order.append("verified")

    def call(self: Any, params: Any) -> Any:
        predicting.set()
        answer = real_call(self, params)
        order.append("answered")
        answered.set()
        return answer

    monkeypatch.setattr(_manifest, "verify_digests", verify_digests)
    monkeypatch.setattr(Bundle, "_call", call)
    bundle = cloudflow.load_bundle(bundle_dir, lazy=lazy)
    assert bundle.predict(x=x) == expected
    assert order == ["answered", "verified"]  # computed meanwhile, returned once verified
    assert bundle.predict(x=x) == expected  # later calls do not wait


def test_damaged_weights_give_no_answer_and_a_signed_load_refuses_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from cloudflow.exceptions import IntegrityError

    monkeypatch.setenv("CLOUDFLOW_DIGEST_CACHE", "0")
    key = "k" * 32
    unsigned = _weights_bundle(tmp_path / "unsigned")
    signed = tmp_path / "signed"
    import models

    def predict(mlp, x):
        return x

    cloudflow.save_bundle(predict, {"mlp": models.tiny_torch_mlp()}, signed, signing_key=key)
    for folder in (unsigned, signed):
        (weights,) = (folder / "cloudflow").rglob("*.safetensors")
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF  # the last weight, so the header still parses
        weights.write_bytes(bytes(data))
    name = rf"{weights.name}.*does not match"
    bundle = cloudflow.load_bundle(unsigned)  # returns while the weights are hashed
    with pytest.raises(IntegrityError, match=name):
        bundle.predict(x=[[0.5] * 4])
    with pytest.raises(IntegrityError, match=name):
        bundle.predict(x=[[0.5] * 4])  # and every later call
    with pytest.raises(IntegrityError, match=name):
        bundle.models  # noqa: B018 - nothing of the bundle is handed out
    assert any("is damaged; its predict will refuse" in r.message for r in caplog.records)
    with pytest.raises(IntegrityError, match=name):
        cloudflow.load_bundle(signed, signing_key=key)


def test_a_lazy_models_damaged_weights_give_no_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLOUDFLOW_DIGEST_CACHE", "0")
    folder = _weights_bundle(tmp_path / "bundle")
    (weights,) = (folder / "cloudflow").rglob("*.safetensors")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # the last weight, so the header still parses
    weights.write_bytes(bytes(data))
    bundle = cloudflow.load_bundle(folder, lazy=True)
    for _ in range(2):  # the call that loads it, and every later one
        with pytest.raises(cloudflow.IntegrityError, match=rf"{weights.name}.*does not match"):
            bundle.predict(x=[[0.5] * 4])
    with pytest.raises(cloudflow.IntegrityError, match=rf"{weights.name}.*does not match"):
        bundle.model("mlp")
    outside = cloudflow.load_bundle(folder, lazy=True)  # used outside predict: checked first
    with pytest.raises(cloudflow.IntegrityError, match=rf"{weights.name}.*does not match"):
        outside.models["mlp"](__import__("torch").zeros(1, 4))
