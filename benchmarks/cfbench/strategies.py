"""The strategies: the ways of shipping the models, one plain entry each in :data:`STRATEGIES`.

An entry is four functions and two names: ``prepare`` (before the clock: a fresh path, or a
fresh embedded store already connected), ``save`` (timed, in the benchmark process, on live
models), ``load`` and ``predict`` (in a fresh load process), and ``connect`` for strategies that
read a tracking store (run in the load process before its clock starts: a service connects
once). The embedded stores and on-disk sizes live here too.
"""

from __future__ import annotations

import os
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import workload

from cfbench.models import TEXT_TASK, Sizes, Spec, build_mlp

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
# What every strategy shares


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


def _connect(uri: str) -> None:
    """Open the store before the timed load: a service connects once, then loads."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.MlflowClient().search_experiments(max_results=1)


def prepare_path(ctx: Context, key: str) -> dict[str, Any]:
    """A strategy that saves to a path: a new one, named after the strategy."""
    return {"path": ctx.new_path(key)}


def prepare_store(ctx: Context, key: str) -> dict[str, Any]:
    """A strategy that logs to a run: a fresh embedded store, connected before the clock starts."""
    store = ctx.stores.new()
    _connect(store.uri)
    return {"store": store}


def connect_store(handle: dict[str, Any]) -> None:
    _connect(handle["uri"])


def saved_path(prepared: dict[str, Any]) -> Saved:
    return Saved({"path": str(prepared["path"])}, prepared["path"])


def saved_run(store: Store, run_id: str) -> Saved:
    return Saved({"uri": store.uri, "run_id": run_id}, store.folder, in_store=True)


def predict_models(loaded: Any, spec: Spec, inputs: dict[str, Any]) -> Any:
    """The predict function called on a dict of loaded models."""
    return _call(spec, loaded, inputs)


def predict_bundle(loaded: Any, spec: Spec, inputs: dict[str, Any]) -> Any:
    """``Bundle.predict`` (or the seed API's ``predict``) with the caller's parameters."""
    return loaded.predict(**{k: inputs[k] for k in spec.params})


# raw: each library's own calls -------------------------------------------------------------


def raw_save_one(name: str, model: Any, folder: Path) -> None:
    folder.mkdir(parents=True)
    if name.startswith("text_model"):
        model.save_pretrained(str(folder))
    elif name == "mlp":
        import torch

        torch.save(model.state_dict(), folder / "model.pt")
    else:
        with open(folder / "model.pkl", "wb") as f:
            pickle.dump(model, f, protocol=pickle.HIGHEST_PROTOCOL)


def raw_load_one(name: str, folder: Path, sizes: Sizes) -> Any:
    if name.startswith("text_model"):
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


def raw_save(prepared: dict[str, Any], spec: Spec, models: dict[str, Any]) -> Saved:
    for name in spec.names:
        raw_save_one(name, models[name], prepared["path"] / name)
    return saved_path(prepared)


def raw_load(handle: dict[str, Any], spec: Spec, sizes: Sizes) -> Any:
    return {name: raw_load_one(name, Path(handle["path"]) / name, sizes) for name in spec.names}


# cloudpickle: the classic Cloudflow way ----------------------------------------------------


def cloudpickle_save(prepared: dict[str, Any], spec: Spec, models: dict[str, Any]) -> Saved:
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
    return saved_path(prepared)


def cloudpickle_load(handle: dict[str, Any], spec: Spec, sizes: Sizes) -> Any:
    import cloudpickle

    with open(Path(handle["path"]) / "bundle.pkl", "rb") as f:
        return cloudpickle.load(f)


def cloudpickle_predict(loaded: Any, spec: Spec, inputs: dict[str, Any]) -> Any:
    fn, models = loaded
    return fn(**models, **{k: inputs[k] for k in spec.params})


# MLflow's flavors, one model each ----------------------------------------------------------


def mlflow_path_save(prepared: dict[str, Any], spec: Spec, models: dict[str, Any]) -> Saved:
    path = prepared["path"]
    path.mkdir(parents=True)
    for name in spec.names:
        _mlflow_flavor(name).save_model(models[name], str(path / name), **MLFLOW_KWARGS[name])
    return saved_path(prepared)


def mlflow_path_load(handle: dict[str, Any], spec: Spec, sizes: Sizes) -> Any:
    return {n: _mlflow_flavor(n).load_model(str(Path(handle["path"]) / n)) for n in spec.names}


def mlflow_run_save(prepared: dict[str, Any], spec: Spec, models: dict[str, Any]) -> Saved:
    import mlflow

    store = prepared["store"]
    with mlflow.start_run(experiment_id=store.experiment_id) as run:
        for name in spec.names:
            _mlflow_flavor(name).log_model(models[name], name=name, **MLFLOW_KWARGS[name])
    return saved_run(store, run.info.run_id)


def mlflow_run_load(handle: dict[str, Any], spec: Spec, sizes: Sizes) -> Any:
    run_id = handle["run_id"]
    return {n: _mlflow_flavor(n).load_model(f"runs:/{run_id}/{n}") for n in spec.names}


# cloudflow ---------------------------------------------------------------------------------


def cloudflow_path_save(prepared: dict[str, Any], spec: Spec, models: dict[str, Any]) -> Saved:
    import cloudflow

    models = {n: models[n] for n in spec.names}
    cloudflow.save_bundle(_predict_fn(spec), models, str(prepared["path"]))
    return saved_path(prepared)


def cloudflow_path_load(handle: dict[str, Any], spec: Spec, sizes: Sizes) -> Any:
    import cloudflow

    return cloudflow.load_bundle(handle["path"])


def cloudflow_log(store: Store, spec: Spec, models: dict[str, Any]) -> str:
    """``log_bundle`` in a new run of the store (started and ended here); the run's id."""
    import mlflow

    import cloudflow

    mlflow.set_tracking_uri(store.uri)
    with mlflow.start_run(experiment_id=store.experiment_id) as run:
        cloudflow.log_bundle(_predict_fn(spec), {n: models[n] for n in spec.names})
    return run.info.run_id


def cloudflow_run_save(prepared: dict[str, Any], spec: Spec, models: dict[str, Any]) -> Saved:
    store = prepared["store"]
    return saved_run(store, cloudflow_log(store, spec, models))


def cloudflow_run_load(handle: dict[str, Any], spec: Spec, sizes: Sizes) -> Any:
    import cloudflow

    return cloudflow.load_bundle(f"runs:/{handle['run_id']}/model")


def cloudflow_seed_prepare(ctx: Context, key: str) -> dict[str, Any]:
    import mlflow

    import cloudflow

    prepared = prepare_store(ctx, key)
    store = prepared["store"]
    experiment_id = cloudflow.prepare_env(str(store.folder), store.experiment)
    # The seed API logs into a run the user started; create it before the clock starts.
    prepared["run_id"] = mlflow.MlflowClient(store.uri).create_run(experiment_id).info.run_id
    return prepared


def cloudflow_seed_save(prepared: dict[str, Any], spec: Spec, models: dict[str, Any]) -> Saved:
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


def cloudflow_seed_connect(handle: dict[str, Any]) -> None:
    _connect(f"sqlite:///{Path(handle['folder']) / 'mlflow.db'}")


def cloudflow_seed_load(handle: dict[str, Any], spec: Spec, sizes: Sizes) -> Any:
    import cloudflow

    model = cloudflow.cloudflow_model(log_level="ERROR")
    model.load_model(
        tracking_uri=handle["folder"],
        experiment_id=handle["experiment"],
        run_id=handle["run_id"],
    )
    return model


# --------------------------------------------------------------------------------------------
# The table


@dataclass(frozen=True)
class Strategy:
    """One way of shipping the models: how it saves (timed), loads and calls them."""

    key: str
    label: str
    save: Callable[[dict[str, Any], Spec, dict[str, Any]], Saved]
    load: Callable[[dict[str, Any], Spec, Sizes], Any]
    predict: Callable[[Any, Spec, dict[str, Any]], Any]
    prepare: Callable[[Context, str], dict[str, Any]] = prepare_path
    connect: Callable[[dict[str, Any]], None] | None = None


STRATEGIES: dict[str, Strategy] = {
    s.key: s
    for s in (
        Strategy("raw", "raw (framework calls)", raw_save, raw_load, predict_models),
        Strategy("cloudpickle", "cloudpickle of function + models", cloudpickle_save,
                 cloudpickle_load, cloudpickle_predict),
        Strategy("mlflow_path", "mlflow.<flavor> save_model/load_model, path", mlflow_path_save,
                 mlflow_path_load, predict_models),
        Strategy("mlflow_run", "mlflow.<flavor> log_model/load_model, runs:/", mlflow_run_save,
                 mlflow_run_load, predict_models, prepare_store, connect_store),
        Strategy("cloudflow_path", "cloudflow save_bundle/load_bundle, path", cloudflow_path_save,
                 cloudflow_path_load, predict_bundle),
        Strategy("cloudflow_run", "cloudflow log_bundle/load_bundle, runs:/", cloudflow_run_save,
                 cloudflow_run_load, predict_bundle, prepare_store, connect_store),
        Strategy("cloudflow_seed", "cloudflow seed API save/load_model (save verifies)",
                 cloudflow_seed_save, cloudflow_seed_load, predict_bundle, cloudflow_seed_prepare,
                 cloudflow_seed_connect),
    )
}  # fmt: skip
NEEDS_CLOUDFLOW = {"cloudflow_path", "cloudflow_run", "cloudflow_seed"}
