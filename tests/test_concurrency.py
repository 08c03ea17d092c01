"""Many writers on one embedded store, many loaders of one bundle.

The embedded store is one sqlite file: processes that log at the same moment must neither lose a
run nor see "database is locked", including the ones that all find the store missing and create
it together. Loading is per bundle: each load gets its own module table, whichever thread loads.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import mlflow
import pytest
from conftest import UserModules
from helpers import sqlite_uri, subprocess_env

import cloudflow
from cloudflow.store import tracking as _store

PROCESSES = 8
SAVES = 20
LOADS_PER_PROCESS = 40

WORKER = r"""
import json, os, sys, time
store, wid, saves, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
import mlflow, cloudflow

def predict(table, x):
    return table["k"] * x

def wait_for(path):
    while not os.path.exists(path):
        time.sleep(0.01)

def publish(path, value):  # whole or not at all: the reader polls for the name
    with open(path + ".tmp", "w") as f:
        json.dump(value, f)
    os.replace(path + ".tmp", path)

wait_for(out + ".go")  # everyone imported: start together, on a store nobody created yet
experiment_id = cloudflow.prepare_env(store, "concurrency")
runs = []
for i in range(saves):
    k = wid * 1000 + i
    with mlflow.start_run(experiment_id=experiment_id) as run:
        cloudflow.log_bundle(predict, {"table": {"k": k}})
    runs.append([run.info.run_id, k])
publish(out, runs)

wait_for(out + ".load")  # every run is logged: load a share of all of them, together
with open(out + ".load") as f:
    todo = json.load(f)
done = []
for run_id, k in todo:
    bundle = cloudflow.load_bundle(f"runs:/{run_id}/model")
    done.append([run_id, bundle.predict(x=3) == 3 * k])
publish(out + ".loaded", done)
"""


def _wait_all(paths: list[Path], procs: list[subprocess.Popen], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        failed = [p.args for p in procs if p.poll() not in (None, 0)]
        assert not failed, "a worker died; see its stderr file"
        assert time.monotonic() < deadline, "the workers took too long"
        time.sleep(0.05)


@pytest.mark.slow
def test_eight_processes_log_twenty_bundles_each_into_one_new_store(
    tmp_path: Path, mlflow_state: None
) -> None:
    store = tmp_path / "store"
    outs = [tmp_path / f"worker{w}.json" for w in range(PROCESSES)]
    errs = [tmp_path / f"worker{w}.stderr" for w in range(PROCESSES)]
    procs = []
    for w in range(PROCESSES):
        argv = [sys.executable, "-c", WORKER, str(store), str(w), str(SAVES), str(outs[w])]
        with open(errs[w], "w") as err:
            procs.append(subprocess.Popen(argv, cwd=tmp_path, env=subprocess_env(), stderr=err))
    try:
        for out in outs:
            Path(f"{out}.go").touch()
        _wait_all(outs, procs, timeout=600)
        runs = [tuple(r) for out in outs for r in json.loads(out.read_text())]
        assert len(runs) == PROCESSES * SAVES
        shares = [runs[w::PROCESSES][:LOADS_PER_PROCESS] for w in range(PROCESSES)]
        for out, share in zip(outs, shares, strict=True):
            # Written whole, then renamed: a worker polls for the name and reads at once.
            Path(f"{out}.load.tmp").write_text(json.dumps(share))
            Path(f"{out}.load.tmp").replace(f"{out}.load")
        loaded = [Path(f"{out}.loaded") for out in outs]
        _wait_all(loaded, procs, timeout=600)
        for proc in procs:
            assert proc.wait(timeout=60) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for err in errs:
        text = err.read_text(encoding="utf-8", errors="replace")
        assert "database is locked" not in text.lower(), text[-3000:]
        assert "Traceback" not in text, text[-3000:]
    results = [r for path in loaded for r in json.loads(path.read_text())]
    assert len(results) == PROCESSES * min(SAVES, LOADS_PER_PROCESS)
    assert all(ok for _, ok in results)

    client = mlflow.MlflowClient(tracking_uri=sqlite_uri(store))
    experiment = client.get_experiment_by_name("concurrency")
    found = client.search_runs([experiment.experiment_id], max_results=1000)
    assert {r.info.run_id for r in found} == {run_id for run_id, _ in runs}
    models = _store.logged_models(client, experiment.experiment_id)  # every page
    assert sorted(m.source_run_id for m in models) == sorted(run_id for run_id, _ in runs)
    assert {str(m.status) for m in models} == {"READY"}
    mlflow.set_tracking_uri(sqlite_uri(store))
    for run_id, k in runs:
        assert cloudflow.load_bundle(f"runs:/{run_id}/model").predict(x=2) == 2 * k


# --- threads ------------------------------------------------------------------------------------


def _bundle_with_state(user_modules: UserModules, root: Path, name: str, factor: int) -> Path:
    """A bundle whose captured ``utils`` counts its calls and is imported lazily by predict."""
    user_modules.write(
        {
            f"{name}/__init__.py": "",
            f"{name}/utils.py": f"""
                CALLS = 0
                FACTOR = {factor}

                def bump():
                    global CALLS
                    CALLS += 1
                    return CALLS
            """,
            f"{name}/api.py": f"""
                def predict(table, x):
                    from {name} import utils  # executed at call time, inside the bundle

                    return utils.bump(), utils.FACTOR * table["k"] * x
            """,
        }
    )
    api = __import__(f"{name}.api", fromlist=["predict"])
    path = root / name
    cloudflow.save_bundle(api.predict, {"table": {"k": 2}}, path)
    return path


def test_eight_threads_load_and_call_bundles_at_once(
    user_modules: UserModules, tmp_path: Path
) -> None:
    first = _bundle_with_state(user_modules, tmp_path, "thread_app_a", 1)
    second = _bundle_with_state(user_modules, tmp_path, "thread_app_b", 10)
    user_modules.forget()  # from here on, only the bundles hold the code
    calls = 50
    barrier = threading.Barrier(8)
    results: dict[int, Any] = {}

    def work(i: int) -> None:
        try:
            path, factor = (first, 1) if i % 2 == 0 else (second, 10)
            barrier.wait()
            bundle = cloudflow.load_bundle(path)
            barrier.wait()
            results[i] = [bundle.predict(x=i) for _ in range(calls)], factor
        except BaseException as e:  # reported below, with the thread that raised
            results[i] = e

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    for i in range(8):
        assert not isinstance(results[i], BaseException), results[i]
        answers, factor = results[i]
        # Every load has its own module state: each thread counts 1..50 in its own utils.
        assert answers == [(n, factor * 2 * i) for n in range(1, calls + 1)]
