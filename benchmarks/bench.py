#!/usr/bin/env python
"""Save and load benchmark: cloudflow against the raw framework calls, pickling and MLflow.

Builds its models locally (no network, no hub), saves each with every strategy, loads each in a
fresh process, and prints absolute seconds and MB with their ratio to the raw baseline.

    python benchmarks/bench.py --quick            # small models, under a minute
    python benchmarks/bench.py                    # full run: BERT-base, 100M MLP, 300 MB forest
    python benchmarks/bench.py --json out.json --markdown

Models: A is a BERT-base-sized ``text-classification`` pipeline (hidden 768, 12 layers, 110M
parameters, seeded random weights, a WordPiece tokenizer built in memory); B a torch MLP of about
100M parameters; C a scikit-learn random forest of about 300 MB; ABC a bundle of all three.

How it measures (details in benchmarks/README.md):

* Saves run in this process, on live models, after one untimed warm-up save of tiny models per
  strategy. Every save that logs to a run gets a store of its own (a fresh copy of an empty
  embedded store), so no strategy profits from an earlier save.
* Loads run in a fresh process: a worker imports the libraries once (import time is measured on
  its own), then forks one child per load, so each load starts with nothing loaded but the
  libraries imported, like a service that has just started. The child measures the load call,
  the first predict, its peak RSS (``getrusage``) and the bytes it wrote (``/proc/self/io``: a
  load that copies the weights writes them). ``--no-fork`` starts a new interpreter per load
  instead.
* Stores are embedded (a folder: sqlite database plus artifact folder) in a temp folder that is
  removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# Quiet, offline and fork-safe before any library is imported (the worker inherits these).
for _name, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_TRACKING_URI": "",
    "PYTHONWARNINGS": "ignore",
}.items():
    os.environ.setdefault(_name, _value)
if not os.environ["MLFLOW_TRACKING_URI"]:
    del os.environ["MLFLOW_TRACKING_URI"]
if str(REPO) not in sys.path:
    # Run from a checkout: the repository's cloudflow, and tests/models.py for the MLP builder.
    sys.path.insert(1, str(REPO))

import warnings  # noqa: E402

warnings.filterwarnings("ignore")

import workload  # noqa: E402

DIGEST_CACHE_ENV = "CLOUDFLOW_CACHE_DIR"
FRAMEWORKS = ("torch", "transformers", "sklearn", "tensorflow", "jax", "keras", "onnx")
TEXT_TASK = "text-classification"
BERT_VOCAB = 30522
TEXTS = ["this movie was great", "the food is awful", "i really like it", "not good at all"] * 2
BATCH = 8
MLFLOW_KWARGS: dict[str, dict[str, Any]] = {
    # pip_requirements given, so MLflow does not infer them by loading the model in a subprocess.
    "text_model": {"pip_requirements": ["transformers", "torch", "safetensors"]},
    # "pickle" gives back the same nn.Module. MLflow's default outside Databricks, "pt2"
    # (torch.export), needs an input example, returns a traced GraphModule, and took 5x longer to
    # save here (12 s for model B), so it is not the comparison a user would pick.
    "mlp": {"pip_requirements": ["torch"], "serialization_format": "pickle"},
    # MLflow's default format (skops); the trusted types are what skops asks for a forest.
    "forest": {"pip_requirements": ["scikit-learn", "skops"],
               "skops_trusted_types": ["sklearn.tree._tree.Tree"]},
}  # fmt: skip


# --------------------------------------------------------------------------------------------
# Sizes, models and inputs


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


# --------------------------------------------------------------------------------------------
# Sizes on disk and embedded stores


def tree_size(path: Path) -> int:
    """Bytes of the files under path, each inode counted once (hard links are not copies)."""
    if path.is_file():
        return path.stat().st_size
    seen: set[tuple[int, int]] = set()
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            st = os.lstat(os.path.join(root, f))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


@dataclass
class Store:
    """An embedded store: <folder>/mlflow.db and <folder>/artifacts, as cloudflow lays it out."""

    folder: Path
    experiment: str
    experiment_id: str = ""

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.folder / 'mlflow.db'}"


class Stores:
    """Fresh embedded stores, copied from one empty database (creating the schema takes seconds)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.count = 0
        self.template = root / "template.db"
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        store = SqlAlchemyStore(f"sqlite:///{self.template}", (root / "unused").as_uri())
        store.engine.dispose()

    def new(self) -> Store:
        import mlflow

        self.count += 1
        folder = self.root / f"store{self.count}"
        (folder / "artifacts").mkdir(parents=True)
        shutil.copyfile(self.template, folder / "mlflow.db")
        store = Store(folder, "bench")
        client = mlflow.MlflowClient(store.uri)
        store.experiment_id = client.create_experiment(
            store.experiment, artifact_location=(folder / "artifacts").as_uri()
        )
        return store


# --------------------------------------------------------------------------------------------
# Strategies. Each saves in the main process and loads in a worker child.


@dataclass
class Context:
    tmp: Path
    stores: Stores
    sizes: Sizes
    cold: bool = False
    counter: int = 0

    def new_path(self, label: str) -> Path:
        self.counter += 1
        return self.tmp / "saved" / f"{self.counter:03d}-{label}"


@dataclass
class Saved:
    handle: dict[str, Any]  # what the loader needs (JSON)
    location: Path  # what to measure and delete (a path, or a store folder)
    in_store: bool = False


def _predict_fn(spec: Spec) -> Callable[..., Any]:
    return getattr(workload, spec.fn)


def _call(spec: Spec, models: dict[str, Any], inputs: dict[str, Any]) -> Any:
    return _predict_fn(spec)(**models, **{k: inputs[k] for k in spec.params})


def _mlflow_flavor(name: str) -> Any:
    import mlflow

    return {"text_model": mlflow.transformers, "mlp": mlflow.pytorch, "forest": mlflow.sklearn}[
        name
    ]


# raw: each library's own calls -------------------------------------------------------------


def raw_save_one(name: str, model: Any, folder: Path) -> None:
    folder.mkdir(parents=True)
    if name == "text_model":
        model.save_pretrained(str(folder))
    elif name == "mlp":
        import torch

        torch.save(model.state_dict(), folder / "model.pt")
    else:
        with open(folder / "model.pkl", "wb") as f:
            pickle.dump(model, f, protocol=pickle.HIGHEST_PROTOCOL)


def raw_load_one(name: str, folder: Path, sizes: Sizes) -> Any:
    if name == "text_model":
        from transformers import pipeline

        return pipeline(TEXT_TASK, model=str(folder), device="cpu")
    if name == "mlp":
        # torch's fast path: build the skeleton without allocating, then adopt the memory-mapped
        # tensors of the file (torch.load(mmap=True) + load_state_dict(assign=True)).
        import torch

        with torch.device("meta"):
            model = build_mlp(sizes)
        state = torch.load(folder / "model.pt", mmap=True, weights_only=True)
        model.load_state_dict(state, assign=True)
        return model.eval()
    with open(folder / "model.pkl", "rb") as f:
        return pickle.load(f)


class PathStrategy:
    """Saves to a path. ``prepare`` runs before the clock starts, ``save`` is timed."""

    key = label = ""

    def prepare(self, ctx: Context) -> dict[str, Any]:
        return {"path": ctx.new_path(self.key)}

    def saved(self, prepared: dict[str, Any]) -> Saved:
        return Saved({"path": str(prepared["path"])}, prepared["path"])

    connect = None


class StoreStrategy:
    """Logs to a run of a fresh embedded store, connected before the clock starts."""

    key = label = ""

    def prepare(self, ctx: Context) -> dict[str, Any]:
        store = ctx.stores.new()
        _connect(store.uri)
        return {"store": store}

    @staticmethod
    def connect(handle: dict[str, Any]) -> None:
        _connect(handle["uri"])

    @staticmethod
    def saved(store: Store, run_id: str) -> Saved:
        return Saved({"uri": store.uri, "run_id": run_id}, store.folder, in_store=True)


class Raw(PathStrategy):
    key, label = "raw", "raw (framework calls)"

    def save(self, prepared: dict[str, Any], spec: Spec, models: dict[str, Any]) -> Saved:
        for name in spec.names:
            raw_save_one(name, models[name], prepared["path"] / name)
        return self.saved(prepared)

    @staticmethod
    def load(handle: dict[str, Any], spec: Spec, sizes: Sizes) -> Any:
        return {name: raw_load_one(name, Path(handle["path"]) / name, sizes) for name in spec.names}

    @staticmethod
    def predict(loaded: Any, spec: Spec, inputs: dict[str, Any]) -> Any:
        return _call(spec, loaded, inputs)


class Cloudpickle(PathStrategy):
    key, label = "cloudpickle", "cloudpickle of function + models"

    def save(self, prepared: dict[str, Any], spec: Spec, models: dict[str, Any]) -> Saved:
        import cloudpickle

        path = prepared["path"]
        path.mkdir(parents=True)
        # The classic Cloudflow way: one pickle of the function (by value) and the whole models.
        cloudpickle.register_pickle_by_value(workload)
        try:
            with open(path / "bundle.pkl", "wb") as f:
                cloudpickle.dump(
                    (_predict_fn(spec), {n: models[n] for n in spec.names}),
                    f,
                    protocol=pickle.HIGHEST_PROTOCOL,
                )
        finally:
            cloudpickle.unregister_pickle_by_value(workload)
        return self.saved(prepared)

    @staticmethod
    def load(handle: dict[str, Any], spec: Spec, sizes: Sizes) -> Any:
        import cloudpickle

        with open(Path(handle["path"]) / "bundle.pkl", "rb") as f:
            return cloudpickle.load(f)

    @staticmethod
    def predict(loaded: Any, spec: Spec, inputs: dict[str, Any]) -> Any:
        fn, models = loaded
        return fn(**models, **{k: inputs[k] for k in spec.params})


class MlflowPath(PathStrategy):
    key, label = "mlflow_path", "mlflow.<flavor> save_model/load_model, path"

    def save(self, prepared: dict[str, Any], spec: Spec, models: dict[str, Any]) -> Saved:
        path = prepared["path"]
        path.mkdir(parents=True)
        for name in spec.names:
            _mlflow_flavor(name).save_model(models[name], str(path / name), **MLFLOW_KWARGS[name])
        return self.saved(prepared)

    @staticmethod
    def load(handle: dict[str, Any], spec: Spec, sizes: Sizes) -> Any:
        return {n: _mlflow_flavor(n).load_model(str(Path(handle["path"]) / n)) for n in spec.names}

    predict = staticmethod(Raw.predict)


class MlflowRun(StoreStrategy):
    key, label = "mlflow_run", "mlflow.<flavor> log_model/load_model, runs:/"

    def save(self, prepared: dict[str, Any], spec: Spec, models: dict[str, Any]) -> Saved:
        import mlflow

        store = prepared["store"]
        with mlflow.start_run(experiment_id=store.experiment_id) as run:
            for name in spec.names:
                _mlflow_flavor(name).log_model(models[name], name=name, **MLFLOW_KWARGS[name])
        return self.saved(store, run.info.run_id)

    @staticmethod
    def load(handle: dict[str, Any], spec: Spec, sizes: Sizes) -> Any:
        run_id = handle["run_id"]
        return {n: _mlflow_flavor(n).load_model(f"runs:/{run_id}/{n}") for n in spec.names}

    predict = staticmethod(Raw.predict)


class CloudflowPath(PathStrategy):
    key, label = "cloudflow_path", "cloudflow save_bundle/load_bundle, path"

    def save(self, prepared: dict[str, Any], spec: Spec, models: dict[str, Any]) -> Saved:
        import cloudflow

        models = {n: models[n] for n in spec.names}
        cloudflow.save_bundle(_predict_fn(spec), models, str(prepared["path"]))
        return self.saved(prepared)

    @staticmethod
    def load(handle: dict[str, Any], spec: Spec, sizes: Sizes) -> Any:
        import cloudflow

        return cloudflow.load_bundle(handle["path"])

    @staticmethod
    def predict(loaded: Any, spec: Spec, inputs: dict[str, Any]) -> Any:
        return loaded.predict(**{k: inputs[k] for k in spec.params})


class CloudflowRun(StoreStrategy):
    key, label = "cloudflow_run", "cloudflow log_bundle/load_bundle, runs:/"

    def save(self, prepared: dict[str, Any], spec: Spec, models: dict[str, Any]) -> Saved:
        store = prepared["store"]
        return self.saved(store, self.log(store, spec, models))

    @staticmethod
    def log(store: Store, spec: Spec, models: dict[str, Any]) -> str:
        import mlflow

        import cloudflow

        mlflow.set_tracking_uri(store.uri)
        with mlflow.start_run(experiment_id=store.experiment_id) as run:
            cloudflow.log_bundle(_predict_fn(spec), {n: models[n] for n in spec.names})
        return run.info.run_id

    @staticmethod
    def load(handle: dict[str, Any], spec: Spec, sizes: Sizes) -> Any:
        import cloudflow

        return cloudflow.load_bundle(f"runs:/{handle['run_id']}/model")

    predict = staticmethod(CloudflowPath.predict)


class CloudflowSeed(StoreStrategy):
    key, label = "cloudflow_seed", "cloudflow seed API save/load_model (save verifies)"

    def prepare(self, ctx: Context) -> dict[str, Any]:
        import mlflow

        import cloudflow

        prepared = super().prepare(ctx)
        store = prepared["store"]
        experiment_id = cloudflow.prepare_env(str(store.folder), store.experiment)
        # The seed API logs into a run the user started; create it before the clock starts.
        prepared["run_id"] = mlflow.MlflowClient(store.uri).create_run(experiment_id).info.run_id
        return prepared

    def save(self, prepared: dict[str, Any], spec: Spec, models: dict[str, Any]) -> Saved:
        import cloudflow

        store = prepared["store"]
        run_id = prepared["run_id"]
        cloudflow.cloudflow_model(log_level="ERROR").save(
            tracking_uri=str(store.folder),
            experiment_id=store.experiment,
            run_id=run_id,
            predict_function=_predict_fn(spec),
            models={n: models[n] for n in spec.names},
        )
        handle = {"folder": str(store.folder), "experiment": store.experiment, "run_id": run_id}
        return Saved(handle, store.folder, in_store=True)

    @staticmethod
    def connect(handle: dict[str, Any]) -> None:
        _connect(f"sqlite:///{Path(handle['folder']) / 'mlflow.db'}")

    @staticmethod
    def load(handle: dict[str, Any], spec: Spec, sizes: Sizes) -> Any:
        import cloudflow

        model = cloudflow.cloudflow_model(log_level="ERROR")
        model.load_model(
            tracking_uri=handle["folder"],
            experiment_id=handle["experiment"],
            run_id=handle["run_id"],
        )
        return model

    predict = staticmethod(CloudflowPath.predict)


STRATEGIES: dict[str, Any] = {
    s.key: s
    for s in (Raw(), Cloudpickle(), MlflowPath(), MlflowRun(), CloudflowPath(), CloudflowRun(),
              CloudflowSeed())
}  # fmt: skip
NEEDS_CLOUDFLOW = {"cloudflow_path", "cloudflow_run", "cloudflow_seed"}


def _connect(uri: str) -> None:
    """Open the store before the timed load: a service connects once, then loads."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.MlflowClient().search_experiments(max_results=1)


# --------------------------------------------------------------------------------------------
# The load worker: imports once, forks a child per load


def preimport() -> float:
    """Import what any strategy's load uses, so the loads compare loading, not importing."""
    import importlib
    import pkgutil

    start = time.perf_counter()
    for name in (
        "numpy",
        "torch",
        "safetensors.torch",
        "transformers",
        "transformers.pipelines",
        "transformers.models.bert.modeling_bert",
        "transformers.models.bert.tokenization_bert",
        "tokenizers",
        "sklearn.ensemble",
        "sklearn.tree",
        "cloudpickle",
        "mlflow",
        "mlflow.pyfunc",
        "mlflow.transformers",
        "mlflow.pytorch",
        "mlflow.sklearn",
        "mlflow.store.tracking.sqlalchemy_store",
        "skops.io",
        "tests.models",
    ):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    import transformers

    for attr in ("pipeline", "AutoConfig", "AutoTokenizer", "AutoModelForSequenceClassification"):
        getattr(transformers, attr)
    try:
        import cloudflow
    except ImportError:
        pass
    else:
        for info in pkgutil.walk_packages(cloudflow.__path__, "cloudflow."):
            with contextlib.suppress(Exception):
                importlib.import_module(info.name)
    return time.perf_counter() - start


def _reset_peak_rss() -> None:
    """Set the peak RSS to the current RSS (Linux: 5 > /proc/self/clear_refs), so the peak of the
    load is measured even when the process was larger before (e.g. while importing)."""
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _maxrss_mb() -> float:
    """Peak RSS: VmHWM (which the reset above moves), else getrusage's ru_maxrss."""
    with contextlib.suppress(OSError, StopIteration, ValueError):
        with open("/proc/self/status") as f:
            line = next(line for line in f if line.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _io_written() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("wchar:")).split()[1])


def job_load(job: dict[str, Any]) -> dict[str, Any]:
    import gc

    sizes = SIZES[job["sizes"]]
    spec = SPECS[job["spec"]]
    strategy = STRATEGIES[job["strategy"]]
    inputs = make_inputs(sizes)
    # cloudflow remembers file digests in a cache folder: each load names its own (a fresh one
    # is a machine that never loaded this bundle), never the user's ~/.cache.
    if job.get("digest_cache"):
        os.environ[DIGEST_CACHE_ENV] = job["digest_cache"]
    connect = getattr(strategy, "connect", None)
    connect_s = None
    if connect is not None:
        t = time.perf_counter()
        connect(job["handle"])
        connect_s = time.perf_counter() - t
    if job.get("evict"):
        evict_page_cache(Path(job["evict"]))
    gc.collect()
    _reset_peak_rss()
    rss0, io0 = _maxrss_mb(), _io_written()
    t0 = time.perf_counter()
    loaded = strategy.load(job["handle"], spec, sizes)
    t1 = time.perf_counter()
    rss1, io1 = _maxrss_mb(), _io_written()
    out = strategy.predict(loaded, spec, inputs)
    t2 = time.perf_counter()
    rss2 = _maxrss_mb()
    return {
        "load_s": t1 - t0,
        "first_predict_s": t2 - t1,
        "connect_s": connect_s,
        "load_rss_mb": rss1 - rss0,
        "peak_rss_mb": rss2 - rss0,
        "written_mb": (io1 - io0) / 2**20,
        "output": summarize(spec, out),
    }


def evict_page_cache(location: Path) -> None:
    """Drop the page cache of the saved files (only those), so the load reads them from disk."""
    os.sync()  # dirty pages cannot be dropped
    files = [location] if location.is_file() else [
        Path(root) / f for root, _dirs, names in os.walk(location) for f in names
    ]  # fmt: skip
    for path in files:
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def job_overhead(job: dict[str, Any]) -> dict[str, Any]:
    """Per-call cost of Bundle.predict (and of MLflow's pyfunc predict) over a direct call."""
    import mlflow.pyfunc

    import cloudflow

    n = job["calls"]
    bundle = cloudflow.load_bundle(job["path"])
    model = bundle.models["model"]
    direct = workload.predict_noop
    pyfunc = mlflow.pyfunc.load_model(job["path"])

    def per_call(call: Callable[[], Any], calls: int, batch: int = 100) -> float:
        times = []
        for _ in range(max(1, calls // batch)):
            t = time.perf_counter_ns()
            for _ in range(batch):
                call()
            times.append((time.perf_counter_ns() - t) / batch / 1000)
        return statistics.median(times)

    assert bundle.predict(x=1) == 1
    assert direct(model=model, x=1) == 1
    per_call(lambda: bundle.predict(x=1), 1000)  # warm up
    direct_us = per_call(lambda: direct(model=model, x=1), n)
    bundle_us = per_call(lambda: bundle.predict(x=1), n)
    pyfunc_us = per_call(lambda: pyfunc.predict({"x": 1}), max(100, n // 20), batch=10)
    return {
        "direct_us": direct_us,
        "bundle_us": bundle_us,
        "overhead_us": bundle_us - direct_us,
        "pyfunc_us": pyfunc_us,
    }


def job_profile(job: dict[str, Any]) -> dict[str, Any]:
    """Profile of one load (empty digest cache); see :func:`profiled`."""
    sizes = SIZES[job["sizes"]]
    spec = SPECS[job["spec"]]
    strategy = STRATEGIES[job["strategy"]]
    os.environ[DIGEST_CACHE_ENV] = job["digest_cache"]
    connect = getattr(strategy, "connect", None)
    if connect is not None:
        connect(job["handle"])
    return {"profile": profiled(lambda: strategy.load(job["handle"], spec, sizes), job["top"])}


class Sampler:
    """Wall-clock sampling profiler of every thread (cProfile sees only the calling one).

    Every ``interval`` seconds it records which functions are on each thread's stack; a
    function's share of samples is its share of wall time (waits on I/O or locks included).
    """

    def __init__(self, interval: float = 0.002) -> None:
        import threading

        self.interval = interval
        self.samples = 0
        self.total: dict[str, int] = {}
        self.own: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import threading

        me = threading.get_ident()
        while not self._stop.wait(self.interval):
            self.samples += 1
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                seen: set[str] = set()
                leaf = True
                f: Any = frame
                while f is not None:
                    code = f.f_code
                    name = f"{Path(code.co_filename).name}:{code.co_firstlineno}({code.co_name})"
                    if leaf:
                        self.own[name] = self.own.get(name, 0) + 1
                        leaf = False
                    if name not in seen:
                        seen.add(name)
                        self.total[name] = self.total.get(name, 0) + 1
                    f = f.f_back

    def __enter__(self) -> Sampler:
        self._start = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.wall = time.perf_counter() - self._start

    def text(self, top: int) -> str:
        per = self.wall / max(1, self.samples)
        lines = [
            f"wall {self.wall:.3f} s, {self.samples} samples; seconds on the stack (all "
            "threads; a thread's time counts for each function it is in), own = at the top"
        ]
        lines.append(f"{'cumulative s':>12} {'own s':>7}  function")
        # The benchmark's own wrappers and thread plumbing are on every stack: leave them out.
        skip = ("bench.py:", "threading.py:")
        ranked = sorted(
            ((n, c) for n, c in self.total.items() if not n.startswith(skip)), key=lambda kv: -kv[1]
        )[:top]
        for name, count in ranked:
            lines.append(f"{count * per:12.3f} {self.own.get(name, 0) * per:7.3f}  {name}")
        return "\n".join(lines)  # fmt: skip


def profiled(call: Callable[[], Any], top: int) -> str:
    """Sampling profile (all threads) and cProfile's top entries (calling thread) of a call."""
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    with Sampler() as sampler:
        profiler.enable()
        call()
        profiler.disable()
    buffer = io.StringIO()
    stats = pstats.Stats(profiler, stream=buffer).strip_dirs().sort_stats("cumulative")
    stats.print_stats(top)
    return sampler.text(top) + "\n\ncProfile (calling thread only):" + buffer.getvalue()


JOBS = {"load": job_load, "overhead": job_overhead, "profile": job_profile}


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    try:
        return {"ok": True, **JOBS[job["kind"]](job)}
    except BaseException:
        return {"ok": False, "error": traceback.format_exc()}


def worker_main(fork: bool) -> None:
    """Worker loop: one JSON job a line on stdin, one '@@RESULT <json>' line back on stdout."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything else printed goes to the log, never into the protocol
    sys.stdout = sys.stderr
    import_s = preimport()
    import gc

    gc.collect()
    gc.freeze()  # what the imports allocated is never collected: the children's gc stays cheap
    protocol.write("@@READY " + json.dumps({"import_s": import_s}) + "\n")
    for line in sys.stdin:
        job = json.loads(line)
        result = _run_forked(job) if fork else run_job(job)
        protocol.write("@@RESULT " + json.dumps(result) + "\n")
        _clear(Path(tempfile.gettempdir()))


def _run_forked(job: dict[str, Any]) -> dict[str, Any]:
    sys.stderr.flush()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_fd)
        payload = json.dumps(run_job(job)).encode()
        with os.fdopen(write_fd, "wb") as f:
            f.write(payload)
        sys.stderr.flush()
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        data = f.read()
    _pid, status = os.waitpid(pid, 0)
    if not data:
        return {"ok": False, "error": f"load process died (wait status {status})"}
    return json.loads(data)


def _clear(folder: Path) -> None:
    """Empty the worker's temp folder (MLflow's runs:/ loads download into it)."""
    for entry in folder.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


class Worker:
    """A fresh interpreter that has imported the libraries and runs load jobs.

    With ``fork`` (the default) one worker serves every job, forking a child per load; without,
    every job gets a new worker (and pays the imports again, outside the timed load).
    """

    def __init__(self, tmp: Path, fork: bool) -> None:
        self.tmp = tmp
        self.fork = fork
        self.log = tmp / "worker.log"
        self.scratch = tmp / "worker-tmp"
        self.scratch.mkdir(exist_ok=True)
        self.proc: subprocess.Popen[str] | None = None
        self.import_s: float | None = None
        self._start()

    def _start(self) -> None:
        env = child_env()
        env["TMPDIR"] = str(self.scratch)
        command = [sys.executable, str(Path(__file__).resolve()), "--worker"]
        if not self.fork:
            command.append("--no-fork")
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=env,
                cwd=str(self.tmp),
            )
        self.ready = False

    def wait_ready(self) -> None:
        if not self.ready:
            self.import_s = float(self._read("@@READY ")["import_s"])
            self.ready = True

    def _read(self, marker: str) -> dict[str, Any]:
        assert self.proc is not None
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(marker):
                return json.loads(line[len(marker) :])
        raise RuntimeError(f"the load worker stopped; its log:\n{tail(self.log)}")

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        if self.proc is None:
            self._start()
        self.wait_ready()
        assert self.proc is not None
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        result = self._read("@@RESULT ")
        if not self.fork:
            self.close()
        return result

    def close(self) -> None:
        if self.proc is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(timeout=120)
            self.proc = None


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


# --------------------------------------------------------------------------------------------
# Machine, versions, import time


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram_gb = None
    with contextlib.suppress(OSError, StopIteration):
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        kb = int(next(line for line in meminfo if line.startswith("MemTotal")).split()[1])
        ram_gb = round(kb / 2**20, 1)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gb": ram_gb,
        "os": platform.platform(),
        "python": platform.python_version(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for dist in ("mlflow", "torch", "transformers", "scikit-learn", "skops", "safetensors",
                 "cloudpickle", "numpy"):  # fmt: skip
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    try:
        from cloudflow._version import __version__
    except ImportError:
        out["cloudflow"] = None
    else:
        out["cloudflow"] = __version__
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    out["cloudflow commit"] = commit
    return out


def cloudflow_available() -> bool:
    probe = "import cloudflow; cloudflow.log_bundle; cloudflow.load_bundle; cloudflow.save_bundle"
    return (
        subprocess.run(
            [sys.executable, "-c", probe], env=child_env(), capture_output=True
        ).returncode
        == 0
    )


def import_times(repeat: int) -> dict[str, Any]:
    """Wall time of `python -c "import X"` in fresh interpreters (median), and what it imports."""
    env = child_env()

    def wall(code: str) -> float:
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    out: dict[str, Any] = {"python -c pass": wall("pass"), "import mlflow": wall("import mlflow")}
    try:
        out["import cloudflow"] = wall("import cloudflow")
    except subprocess.CalledProcessError:
        out["import cloudflow"] = None
        return out
    probe = (
        "import json, sys, cloudflow; "
        f"print(json.dumps(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], env=env, check=True, capture_output=True, text=True
    )
    out["frameworks imported by import cloudflow"] = json.loads(result.stdout.splitlines()[-1])
    probe = "import json, sys, cloudflow; print(json.dumps('mlflow' in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", probe], env=env, check=True, capture_output=True, text=True
    )
    out["import cloudflow imports mlflow"] = json.loads(result.stdout.splitlines()[-1])
    return out


# --------------------------------------------------------------------------------------------
# The run


@dataclass
class Cell:
    """All measurements of one strategy on one model."""

    spec: str
    strategy: str
    save_s: list[float] = field(default_factory=list)
    size_mb: float | None = None
    load: list[dict[str, Any]] = field(default_factory=list)
    reload: list[dict[str, Any]] = field(default_factory=list)  # cloudflow, digest cache warm
    errors: list[str] = field(default_factory=list)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def timed_save(
    strategy: Any, ctx: Context, spec: Spec, models: dict[str, Any]
) -> tuple[Saved, float]:
    """Prepare (a path, or a fresh store connected), then time the save alone."""
    import gc

    prepared = strategy.prepare(ctx)
    gc.collect()
    t = time.perf_counter()
    saved = strategy.save(prepared, spec, models)
    return saved, time.perf_counter() - t


def remove(saved: Saved) -> None:
    shutil.rmtree(saved.location, ignore_errors=True)


def sync() -> None:
    """Write dirty pages out between steps, so one save's writeback is not timed in the next."""
    with contextlib.suppress(AttributeError, OSError):
        os.sync()


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    sizes = QUICK if args.quick else FULL
    if args.save_repeat:
        sizes = Sizes(**{**asdict(sizes), "save_repeat": args.save_repeat})
    if args.load_repeat:
        sizes = Sizes(**{**asdict(sizes), "load_repeat": args.load_repeat})
    specs = [SPECS[k] for k in args.models.split(",")]
    strategies = [STRATEGIES[k] for k in args.strategies.split(",")]
    has_cloudflow = cloudflow_available()
    if not has_cloudflow:
        log("cloudflow is not importable (or incomplete): its strategies are skipped")
        strategies = [s for s in strategies if s.key not in NEEDS_CLOUDFLOW]
    report: dict[str, Any] = {
        "command": " ".join(["python", "benchmarks/bench.py", *sys.argv[1:]]),
        "sizes": asdict(sizes),
        "machine": machine(),
        "versions": versions(),
        "fork": not args.no_fork,
        "cold": args.cold,
    }
    print_header(report)
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="cloudflow-bench-"))
    # Digests cloudflow remembers go to the temp folder, not to the user's ~/.cache.
    os.environ[DIGEST_CACHE_ENV] = str(tmp / "digest-cache")
    worker: Worker | None = None
    try:
        log("import times (fresh interpreters, nothing else running)")
        report["imports"] = import_times(sizes.import_repeat)
        # The worker imports its libraries while this process builds models and warms up.
        worker = Worker(tmp, fork=not args.no_fork)
        stores = Stores(tmp)
        ctx = Context(tmp, stores, sizes, cold=args.cold)
        log("warm-up: every strategy saves tiny models once, untimed")
        warm = {name: BUILDERS[name](TINY) for name in BUILDERS}
        for strategy in strategies:
            if strategy.key == "cloudflow_seed":
                continue  # log_bundle's path, plus a clean-process check that is never warm
            try:
                remove(timed_save(strategy, ctx, SPECS["ABC"], warm)[0])
            except Exception:
                log(f"warm-up of {strategy.key} failed:\n{traceback.format_exc()}")
        del warm

        log(f"building the {sizes.name} models")
        models: dict[str, Any] = {}
        build_s = {}
        for name in sorted({n for spec in specs for n in spec.names}):
            t = time.perf_counter()
            models[name] = BUILDERS[name](sizes)
            build_s[name] = time.perf_counter() - t
            log(f"  {name}: {build_s[name]:.1f} s, parameters: {count_parameters(models[name])}")
        report["build_s"] = build_s
        report["parameters"] = {n: count_parameters(m) for n, m in models.items()}
        worker.wait_ready()
        report["worker_import_s"] = worker.import_s

        cells: list[Cell] = []
        for spec in specs:
            cells += bench_spec(spec, strategies, models, ctx, worker, sizes)
        report["cells"] = [asdict(c) for c in cells]

        if has_cloudflow:
            report["again"] = bench_again(specs, models, ctx, sizes)
            report["overhead"] = bench_overhead(ctx, worker, sizes)
            if args.profile:
                report["profiles"] = bench_profiles(args.profile, specs, models, ctx, worker)
    finally:
        if worker is not None:
            worker.close()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    report["total_s"] = time.perf_counter() - started
    report["load_average_1min_end"] = round(os.getloadavg()[0], 2)
    report["targets"] = targets(report)
    return report


def _load_job(
    ctx: Context, spec: Spec, strategy: Any, saved: Saved, digest_cache: Path
) -> dict[str, Any]:
    return {
        "kind": "load",
        "sizes": ctx.sizes.name,
        "spec": spec.key,
        "strategy": strategy.key,
        "handle": saved.handle,
        "digest_cache": str(digest_cache),
        "evict": str(saved.location) if ctx.cold else None,
    }


def bench_spec(
    spec: Spec,
    strategies: list[Any],
    models: dict[str, Any],
    ctx: Context,
    worker: Worker,
    sizes: Sizes,
) -> list[Cell]:
    cells = {s.key: Cell(spec.key, s.key) for s in strategies}
    last: dict[str, Saved] = {}
    for _repeat in range(sizes.save_repeat):
        for strategy in strategies:
            cell = cells[strategy.key]
            sync()
            try:
                saved, seconds = timed_save(strategy, ctx, spec, models)
            except Exception:
                cell.errors.append(f"save: {traceback.format_exc()}")
                log(f"{spec.key} {strategy.key}: save failed\n{traceback.format_exc()}")
                continue
            cell.save_s.append(seconds)
            cell.size_mb = store_size(saved) / 2**20
            log(f"{spec.key} {strategy.key}: save {seconds:.2f} s, {cell.size_mb:.1f} MB")
            if strategy.key in last:
                remove(last[strategy.key])
            last[strategy.key] = saved
    caches: dict[str, Path] = {}
    for repeat in range(sizes.load_repeat + 1):
        for strategy in strategies:
            if strategy.key not in last:
                continue
            cell = cells[strategy.key]
            if repeat < sizes.load_repeat:
                # A load on a machine that never loaded this bundle: an empty digest cache.
                caches[strategy.key] = cache = ctx.new_path("digests")
                kind = "load"
            elif strategy.key in NEEDS_CLOUDFLOW and strategy.key in caches:
                # Once more with the digest cache the previous load left (a reload).
                cache, kind = caches[strategy.key], "reload"
            else:
                continue
            sync()
            result = worker.run(_load_job(ctx, spec, strategy, last[strategy.key], cache))
            if not result.pop("ok"):
                cell.errors.append(f"{kind}: {result['error']}")
                log(f"{spec.key} {strategy.key}: {kind} failed\n{result['error']}")
                continue
            (cell.load if kind == "load" else cell.reload).append(result)
            log(
                f"{spec.key} {strategy.key}: {kind} {result['load_s']:.3f} s, first predict "
                f"{result['first_predict_s']:.3f} s, RSS +{result['load_rss_mb']:.0f} MB, "
                f"wrote {result['written_mb']:.1f} MB"
            )
    for saved in last.values():
        remove(saved)
    check_outputs(spec, cells.values())
    return list(cells.values())


def store_size(saved: Saved) -> int:
    """Bytes a save added: its folder, or for a store everything but the empty database."""
    if not saved.in_store:
        return tree_size(saved.location)
    return tree_size(saved.location / "artifacts")


def check_outputs(spec: Spec, cells: Any) -> None:
    outputs = {c.strategy: c.load[0]["output"] for c in cells if c.load}
    reference = outputs.get("raw")
    for key, output in outputs.items():
        if reference is not None and output != reference:
            log(
                f"WARNING {spec.key} {key}: first predict differs from raw: {output} != {reference}"
            )


def bench_again(
    specs: list[Spec], models: dict[str, Any], ctx: Context, sizes: Sizes
) -> list[dict[str, Any]]:
    """Stretch target: log an unchanged bundle a second time into the same store."""
    out = []
    for spec in specs:
        try:
            store = ctx.stores.new()
            _connect(store.uri)
            t = time.perf_counter()
            CloudflowRun.log(store, spec, models)
            first_s = time.perf_counter() - t
            sync()
            size_before = tree_size(store.folder / "artifacts")
            times = []
            for _ in range(sizes.save_repeat):
                t = time.perf_counter()
                CloudflowRun.log(store, spec, models)
                times.append(time.perf_counter() - t)
            again_s = statistics.median(times)
            growth = (tree_size(store.folder / "artifacts") - size_before) / len(times)
            shutil.rmtree(store.folder, ignore_errors=True)
            entry = {"spec": spec.key, "first_s": first_s, "again_s": again_s,
                     "growth_mb": growth / 2**20}  # fmt: skip
            log(f"{spec.key} log_bundle again: {again_s:.2f} s (median of {len(times)}), store "
                f"+{growth / 2**20:.2f} MB each")  # fmt: skip
        except Exception:
            entry = {"spec": spec.key, "error": traceback.format_exc()}
            log(f"{spec.key} log_bundle again failed:\n{entry['error']}")
        out.append(entry)
    return out


def bench_overhead(ctx: Context, worker: Worker, sizes: Sizes) -> dict[str, Any]:
    import cloudflow

    path = ctx.new_path("noop")
    cloudflow.save_bundle(workload.predict_noop, {"model": [1, 2, 3]}, str(path))
    result = worker.run({"kind": "overhead", "path": str(path), "calls": sizes.overhead_calls})
    shutil.rmtree(path, ignore_errors=True)
    if result.pop("ok"):
        log(f"predict overhead: {result['overhead_us']:.1f} us a call")
    else:
        log(f"predict overhead failed:\n{result['error']}")
    return result


def bench_profiles(
    which: str, specs: list[Spec], models: dict[str, Any], ctx: Context, worker: Worker
) -> dict[str, str]:
    """Profiles of cloudflow's log_bundle (here) and load_bundle by run id (in a load child)."""
    out = {}
    for spec in specs:
        if which != "all" and spec.key not in which.split(","):
            continue
        store = ctx.stores.new()
        _connect(store.uri)
        run_ids: list[str] = []
        out[f"{spec.key} log_bundle"] = profiled(
            lambda spec=spec, store=store, ids=run_ids: ids.append(
                CloudflowRun.log(store, spec, models)
            ),
            30,
        )
        sync()
        job = {
            "kind": "profile",
            "sizes": ctx.sizes.name,
            "spec": spec.key,
            "strategy": "cloudflow_run",
            "handle": {"uri": store.uri, "run_id": run_ids[0]},
            "digest_cache": str(ctx.new_path("digests")),
            "top": 30,
        }
        result = worker.run(job)
        out[f"{spec.key} load_bundle runs:/"] = result.get("profile") or result.get("error", "")
        shutil.rmtree(store.folder, ignore_errors=True)
    return out


# --------------------------------------------------------------------------------------------
# Targets and output


def _cell(report: dict[str, Any], spec: str, strategy: str) -> dict[str, Any] | None:
    for c in report.get("cells", []):
        if c["spec"] == spec and c["strategy"] == strategy:
            return c
    return None


def _med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def cell_stats(c: dict[str, Any]) -> dict[str, float | None]:
    loads = c["load"]

    def m(key: str) -> float | None:
        return _med([r[key] for r in loads if r.get(key) is not None])

    reloads = [r["load_s"] for r in c.get("reload", [])]
    return {
        "save_s": _med(c["save_s"]),
        "load_s": m("load_s"),
        "reload_s": _med(reloads),
        "first_predict_s": m("first_predict_s"),
        "to_first_s": _med([r["load_s"] + r["first_predict_s"] for r in loads]),
        "size_mb": c["size_mb"],
        "load_rss_mb": m("load_rss_mb"),
        "peak_rss_mb": m("peak_rss_mb"),
        "written_mb": m("written_mb"),
        "connect_s": m("connect_s"),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 5's targets, each with the measured value and whether it is met.

    A line whose ``op`` is None gives a figure for scale and is not a target.
    """
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, op: str | None, limit: float, unit: str = "") -> None:
        met = None
        if op is not None and value is not None:
            met = value <= limit if op == "<=" else value >= limit
        out.append(
            {"target": name, "value": value, "op": op, "limit": limit, "unit": unit, "met": met}
        )

    for spec in SPECS:
        raw = _cell(report, spec, "raw")
        cf = _cell(report, spec, "cloudflow_run")
        if raw is None or cf is None:
            continue
        r, c = cell_stats(raw), cell_stats(cf)
        add(f"{spec}: log_bundle / raw save", _ratio(c["save_s"], r["save_s"]), "<=", 1.15, "x")
        add(f"{spec}: load_bundle runs:/ / raw load", _ratio(c["load_s"], r["load_s"]), "<=", 1.2,
            "x")  # fmt: skip
        add(f"{spec}: same, reload (digest cache warm)", _ratio(c["reload_s"], r["load_s"]), "<=",
            1.2, "x")  # fmt: skip
        others = ((_cell(report, spec, "mlflow_run"), "MLflow runs:/ load", 5),
                  (_cell(report, spec, "cloudpickle"), "unpickle", 10))  # fmt: skip
        for other, what, limit in others:
            if other is None:
                continue
            theirs = cell_stats(other)["load_s"]
            add(f"{spec}: {what} / load_bundle", _ratio(theirs, c["load_s"]), ">=", limit, "x")
            add(f"{spec}: same, reload", _ratio(theirs, c["reload_s"]), ">=", limit, "x")
            add(f"{spec}: for scale, {what} / raw load", _ratio(theirs, r["load_s"]), None, limit,
                "x")  # fmt: skip
        add(f"{spec}: bundle size / raw size", _ratio(c["size_mb"], r["size_mb"]), "<=", 1.01, "x")
        limit = 0.01 * (c["size_mb"] or 0)
        add(f"{spec}: MB written by load_bundle runs:/", c["written_mb"], "<=", limit, "MB")
        for again in report.get("again", []):
            if again["spec"] == spec and "error" not in again:
                add(f"{spec}: repeat log_bundle / raw save (stretch)",
                    _ratio(again["again_s"], r["save_s"]), "<=", 0.1, "x")  # fmt: skip
                add(f"{spec}: store growth on repeat (stretch)", again["growth_mb"], "<=", 1.0,
                    "MB")  # fmt: skip
    overhead = report.get("overhead", {}).get("overhead_us")
    if overhead is not None:
        add("Bundle.predict overhead", overhead, "<=", 20, "us")
    imported = report.get("imports", {}).get("frameworks imported by import cloudflow")
    if imported is not None:
        add("ML frameworks imported by `import cloudflow`", len(imported), "<=", 0)
    return out


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10 and digits > 1:
        return f"{value:.1f}"
    return f"{value:.{digits}f}"


def _fx(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def table_rows(report: dict[str, Any], spec: str) -> list[list[str]]:
    raw = _cell(report, spec, "raw")
    base = cell_stats(raw) if raw else {}
    rows = []
    for c in report.get("cells", []):
        if c["spec"] != spec:
            continue
        s = cell_stats(c)
        label = STRATEGIES[c["strategy"]].label
        if c["errors"] and s["load_s"] is None:
            label += " (error)"
        rows.append([
            label,
            _fmt(s["save_s"]),
            _fx(_ratio(s["save_s"], base.get("save_s"))),
            _fmt(s["load_s"], 3),
            _fx(_ratio(s["load_s"], base.get("load_s"))),
            _fmt(s["reload_s"], 3),
            _fmt(s["first_predict_s"], 3),
            _fmt(s["to_first_s"], 3),
            _fx(_ratio(s["to_first_s"], base.get("to_first_s"))),
            _fmt(s["size_mb"], 1),
            _fx(_ratio(s["size_mb"], base.get("size_mb"))),
            _fmt(s["load_rss_mb"], 0),
            _fmt(s["peak_rss_mb"], 0),
            _fmt(s["written_mb"], 1),
        ])  # fmt: skip
    return rows


HEADERS = ["strategy", "save s", "save/raw", "load s", "load/raw", "reload s", "1st predict s",
           "load+1st s", "load+1st/raw", "size MB", "size/raw", "RSS load MB", "RSS peak MB",
           "written MB"]  # fmt: skip


def render_text_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in
                       enumerate(zip(headers, widths, strict=True)))]  # fmt: skip
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in
                               enumerate(zip(row, widths, strict=True))))  # fmt: skip
    return "\n".join(lines)


def render_markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |"]
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def print_header(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB RAM; {m['os']}")
    if m["load_average_1min"] > 0.5:
        print(f"WARNING: load average {m['load_average_1min']} at start: other work is running")
    print(f"Python {m['python']}; " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()))
    print(f"Command: {report['command']}")
    print(flush=True)


def render(report: dict[str, Any], markdown: bool) -> str:
    table = render_markdown_table if markdown else render_text_table
    out: list[str] = []
    s = report["sizes"]
    out.append(
        f"Sizes: {s['name']} (saves: median of {s['save_repeat']}, loads: median of "
        f"{s['load_repeat']} fresh processes); parameters: "
        + ", ".join(f"{k} {v / 1e6:.1f}M" for k, v in report.get("parameters", {}).items() if v)
    )
    out.append("")
    for spec in SPECS:
        rows = table_rows(report, spec)
        if not rows:
            continue
        out.append(("### " if markdown else "") + SPECS[spec].title)
        out.append("")
        out.append(table(HEADERS, rows))
        out.append("")
    again = [a for a in report.get("again", []) if "error" not in a]
    if again:
        out.append(("### " if markdown else "") + "Logging an unchanged bundle again (same store)")
        out.append("")
        rows = []
        for a in again:
            raw = _cell(report, a["spec"], "raw")
            raw_save = cell_stats(raw)["save_s"] if raw else None
            rows.append([a["spec"], _fmt(a["first_s"]), _fmt(a["again_s"]),
                         _fx(_ratio(a["again_s"], raw_save)), _fmt(a["growth_mb"], 2)])  # fmt: skip
        headers = ["model", "first log s", "again s (median)", "again/raw save", "store +MB each"]
        out.append(table(headers, rows))
        out.append("")
    extra = []
    o = report.get("overhead", {})
    if "overhead_us" in o:
        calls = f"{o['direct_us']:.2f} / {o['bundle_us']:.2f} / {o['pyfunc_us']:.1f} us"
        extra.append(["Bundle.predict overhead (median)", f"{o['overhead_us']:.1f} us"])
        extra.append(["direct call / Bundle.predict / mlflow pyfunc predict", calls])
    for k, v in report.get("imports", {}).items():
        extra.append(
            [f"`{k}`" if markdown else k, f"{v:.2f} s" if isinstance(v, float) else str(v)]
        )
    if report.get("worker_import_s") is not None:
        extra.append(["libraries imported before each load (not in load s)",
                      f"{report['worker_import_s']:.2f} s"])  # fmt: skip
    if extra:
        out.append(table(["measure", "value"], extra))
        out.append("")
    if report.get("targets"):
        out.append(("### " if markdown else "") + "Targets (issue 5)")
        out.append("")
        rows = []
        for t in report["targets"]:
            met = {True: "met", False: "MISSED", None: "-"}[t["met"]]
            value = t["value"]
            shown = "-" if value is None else f"{_fmt(value)}{t['unit']}"
            limit = f"{t['op']} {_fmt(t['limit'])}{t['unit']}" if t["op"] else ""
            rows.append([t["target"], shown, limit, met if t["op"] else ""])
        out.append(table(["target", "measured", "limit", ""], rows))
        out.append("")
    errors = [(c["spec"], c["strategy"], e) for c in report.get("cells", []) for e in c["errors"]]
    for spec, strategy, error in errors:
        out.append(f"ERROR {spec} {strategy}: {error.strip().splitlines()[-1]}")
    out.append(
        f"Total time: {report.get('total_s', 0):.0f} s; load average (1 min) at start "
        f"{report['machine']['load_average_1min']}, at end {report.get('load_average_1min_end')}"
    )
    for name, text in report.get("profiles", {}).items():
        out.append("")
        out.append(f"Profile: {name}")
        out.append(text)
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small models, under a minute")
    parser.add_argument("--json", metavar="FILE", help="also write every measurement as JSON")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument("--models", default=",".join(SPECS), help="subset of A,B,C,ABC")
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="subset of strategies")
    parser.add_argument("--save-repeat", type=int, help="saves per strategy (median)")
    parser.add_argument("--load-repeat", type=int, help="loads per strategy (median)")
    parser.add_argument("--no-fork", action="store_true", help="a new interpreter per load")
    parser.add_argument(
        "--cold", action="store_true", help="drop the saved files from the page cache before loads"
    )
    parser.add_argument("--profile", metavar="MODELS", help="cProfile cloudflow on A,B,... or all")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker_main(fork=not args.no_fork)
        return 0
    report = run_benchmark(args)
    print(render(report, markdown=args.markdown))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
    missed = [t for t in report["targets"] if t["met"] is False]
    errors = [c for c in report.get("cells", []) if c["errors"]]
    return 1 if errors else 0 if not missed else 0


if __name__ == "__main__":
    sys.exit(main())
