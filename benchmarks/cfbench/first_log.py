"""The first ``log_bundle`` of a new interpreter, against the raw save of the same model in one.

The main table's saves run in the benchmark process after a warm-up, so they leave out what only
the first call of a process pays: the modules ``log_bundle`` imports on first use, MLflow's first
connection to the store, its first run. Here each measurement is a new interpreter
(``bench.py --fresh-job``) that imports ``mlflow``, ``cloudflow`` and the predict function's
module, unpickles the model from a file this process wrote (untimed: building or unpickling the
model is not what is compared), then times ``mlflow.start_run`` (the first connection to an
existing embedded store included), one ``log_bundle`` in that run, and ``mlflow.end_run``, then
one more ``log_bundle`` in a second run of the same process (the first calls paid). The
raw side is a new interpreter that unpickles the same model and times the raw save
(``save_pretrained`` / ``torch.save(state_dict)`` / ``pickle.dump``). Medians of ``save_repeat``;
each cloudflow measurement gets a fresh store.
"""

from __future__ import annotations

import pickle
import shutil
import statistics
import time
import traceback
from pathlib import Path
from typing import Any

from cfbench.measure import JOBS, log, run_fresh, sync
from cfbench.models import Sizes, Spec
from cfbench.strategies import Context, _predict_fn, raw_save_one

#: The models measured: the single-model specs.
FIRST_LOG_SPECS = ("A", "B", "C")


def job_first_log(job: dict[str, Any]) -> dict[str, Any]:
    """In a new interpreter: unpickle the model, then time start_run, log_bundle and end_run, and
    a second log_bundle in a second run."""
    import mlflow

    import cloudflow
    from cfbench.models import SPECS

    spec = SPECS[job["spec"]]
    with open(job["model"], "rb") as f:
        model = pickle.load(f)
    mlflow.set_tracking_uri(job["uri"])
    t0 = time.perf_counter()
    mlflow.start_run(experiment_id=job["experiment_id"])
    t1 = time.perf_counter()
    cloudflow.log_bundle(_predict_fn(spec), {spec.names[0]: model})
    t2 = time.perf_counter()
    mlflow.end_run()
    t3 = time.perf_counter()
    # Once more in a new run of the same process: what is left once the first calls are paid.
    with mlflow.start_run(experiment_id=job["experiment_id"]):
        t4 = time.perf_counter()
        cloudflow.log_bundle(_predict_fn(spec), {spec.names[0]: model})
        t5 = time.perf_counter()
    return {"start_run_s": t1 - t0, "log_s": t2 - t1, "end_run_s": t3 - t2, "second_log_s": t5 - t4}


def job_first_raw_save(job: dict[str, Any]) -> dict[str, Any]:
    """In a new interpreter: unpickle the model, then time its raw save."""
    with open(job["model"], "rb") as f:
        model = pickle.load(f)
    t0 = time.perf_counter()
    raw_save_one(job["name"], model, Path(job["folder"]))
    return {"save_s": time.perf_counter() - t0}


JOBS["first_log"] = job_first_log
JOBS["first_raw_save"] = job_first_raw_save


def bench_first_log(
    specs: list[Spec], models: dict[str, Any], ctx: Context, sizes: Sizes
) -> list[dict[str, Any]]:
    """Per single-model spec: median raw save and first log_bundle, each in new interpreters."""
    out = []
    for spec in specs:
        if spec.key not in FIRST_LOG_SPECS:
            continue
        name = spec.names[0]
        try:
            model_file = ctx.new_path(f"{name}.pkl")
            model_file.parent.mkdir(parents=True, exist_ok=True)
            with open(model_file, "wb") as f:
                pickle.dump(models[name], f, protocol=pickle.HIGHEST_PROTOCOL)
            raw_s, runs = [], []
            for _ in range(sizes.save_repeat):
                folder = ctx.new_path("first-raw")
                sync()
                job = {
                    "kind": "first_raw_save",
                    "name": name,
                    "model": str(model_file),
                    "folder": str(folder),
                }
                raw_s.append(_ok(run_fresh(job, ctx.tmp))["save_s"])
                shutil.rmtree(folder, ignore_errors=True)
                store = ctx.stores.new()
                sync()
                job = {
                    "kind": "first_log",
                    "spec": spec.key,
                    "model": str(model_file),
                    "uri": store.uri,
                    "experiment_id": store.experiment_id,
                }
                runs.append(_ok(run_fresh(job, ctx.tmp)))
                shutil.rmtree(store.folder, ignore_errors=True)
            model_file.unlink()
            entry = {
                "spec": spec.key,
                "raw_save_s": statistics.median(raw_s),
                **{k: statistics.median(r[k] for r in runs) for k in runs[0]},
            }
            log(
                f"{spec.key} first log_bundle of a new process: {entry['log_s']:.2f} s (start_run "
                f"{entry['start_run_s']:.2f} s), raw save {entry['raw_save_s']:.2f} s"
            )
        except Exception:
            entry = {"spec": spec.key, "error": traceback.format_exc()}
            log(f"{spec.key} first log_bundle failed:\n{entry['error']}")
        out.append(entry)
    return out


def _ok(result: dict[str, Any]) -> dict[str, Any]:
    if not result.pop("ok"):
        raise RuntimeError(result["error"])
    return result
