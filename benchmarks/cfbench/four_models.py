"""A bundle of four models like the seed's, one predict function routing by ``input_type``.

The models: A (the BERT-sized text pipeline, route ``sentiment``), a second, different text
pipeline (A's shape with half its layers and other seeded weights, route ``topic``), B (the torch
MLP, route ``mlp``) and C (the forest, route ``forest``); the function is
``workload.predict_routed``. Each is also saved with its raw framework call. Every load runs in a
fresh process (a forked child of the load worker, libraries imported, empty digest cache; with
``--cold`` the files dropped from the page cache first), medians of ``load_repeat``:

- each model's raw load alone, and the MLP's raw load + its first answer (the baseline of the
  lazy rows, with its peak RSS);
- the bundle loaded eagerly, one model after the other (``CLOUDFLOW_LOAD_WORKERS=1``, the
  default) and in 4 threads (``CLOUDFLOW_LOAD_WORKERS=4``), then one ``mlp`` request;
- ``load_bundle(path, lazy=True)`` then one ``mlp`` request: the time to the first answer, and
  the peak RSS of the process, which holds the MLP alone;
- with ``--serve``: ``mlflow models serve`` of the bundle (``--env-manager local``), eager and
  lazy (``MLFLOW_PYFUNC_INFERENCE_CONFIG='{"lazy": true}'``), from the process start to the first
  HTTP 200 answer of ``/invocations`` to an ``mlp`` request.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import workload

from cfbench.measure import (
    DIGEST_CACHE_ENV,
    JOBS,
    Worker,
    _maxrss_mb,
    _reset_peak_rss,
    child_env,
    evict_page_cache,
    log,
    sync,
)
from cfbench.models import SIZES, Sizes, build_text_model, make_inputs
from cfbench.strategies import Context, raw_load_one, raw_save_one

FOUR_NAMES = ("text_model", "text_model_2", "mlp", "forest")
ROUTE = "mlp"  # the request of the lazy rows: it needs the MLP alone
LOAD_WORKERS_ENV = "CLOUDFLOW_LOAD_WORKERS"
PARALLEL_WORKERS = 4


def second_text_sizes(sizes: Sizes) -> Sizes:
    """The second text pipeline: A's shape with half its layers."""
    bert = {**sizes.bert, "layers": max(1, sizes.bert["layers"] // 2)}
    return dataclasses.replace(sizes, bert=bert)


def build_four(sizes: Sizes, models: dict[str, Any]) -> dict[str, Any]:
    """The four models, reusing A, B and C when they are built already."""
    from cfbench.models import BUILDERS

    four = {n: models[n] if n in models else BUILDERS[n](sizes) for n in ("text_model", "mlp")}
    four["text_model_2"] = build_text_model(second_text_sizes(sizes), seed=1)
    four["forest"] = models["forest"] if "forest" in models else BUILDERS["forest"](sizes)
    return {n: four[n] for n in FOUR_NAMES}


def route_inputs(sizes: Sizes, route: str = ROUTE, as_json: bool = False) -> dict[str, Any]:
    """The parameters of one request of a route (plain lists for an HTTP request)."""
    inputs = make_inputs(sizes)
    key = {"sentiment": "texts", "topic": "texts", "mlp": "x", "forest": "X"}[route]
    value = inputs[key]
    if as_json and hasattr(value, "tolist"):
        value = value.tolist()
    return {"input_type": route, key: value}


def job_four(job: dict[str, Any]) -> dict[str, Any]:
    """One load of the four-model bundle (or of one model raw) and one request, measured."""
    sizes = SIZES[job["sizes"]]
    os.environ[DIGEST_CACHE_ENV] = job["digest_cache"]
    os.environ[LOAD_WORKERS_ENV] = str(job.get("workers", 1))
    mode = job["mode"]
    if mode == "raw":
        name = job["name"]
        route = {v: k for k, v in workload.ROUTES.items()}[name]
    else:
        route = ROUTE
    request = route_inputs(sizes, route)
    if job.get("evict"):
        evict_page_cache(Path(job["evict"]))
    gc.collect()
    _reset_peak_rss()
    rss0 = _maxrss_mb()
    t0 = time.perf_counter()
    if mode == "raw":
        model = raw_load_one(name, Path(job["path"]), sizes)
        t1 = time.perf_counter()
        rss1 = _maxrss_mb()
        others: dict[str, Any] = {n: None for n in FOUR_NAMES if n != name}
        out = workload.predict_routed(**{name: model}, **others, **request)
    else:
        import cloudflow

        bundle = cloudflow.load_bundle(job["path"], lazy=mode == "lazy")
        t1 = time.perf_counter()
        rss1 = _maxrss_mb()
        out = bundle.predict(**request)
    t2 = time.perf_counter()
    rss2 = _maxrss_mb()
    return {
        "load_s": t1 - t0,
        "first_predict_s": t2 - t1,
        "load_rss_mb": rss1 - rss0,
        "peak_rss_mb": rss2 - rss0,
        "output": json.loads(json.dumps(out, default=str))[:2],
    }


JOBS["four"] = job_four


def bench_four(
    models: dict[str, Any], ctx: Context, worker: Worker, sizes: Sizes, serve: bool
) -> dict[str, Any]:
    """Saves the four models (raw, and as one bundle), then measures the loads (and serving)."""
    import cloudflow

    try:
        four = build_four(sizes, models)
        raw_root = ctx.new_path("four-raw")
        for name, model in four.items():
            raw_save_one(name, model, raw_root / name)
        bundle = ctx.new_path("four-bundle")
        cloudflow.save_bundle(workload.predict_routed, four, str(bundle))
        del four
        sync()
        out: dict[str, Any] = {"route": ROUTE, "raw": {}, "bundle": {}}
        for name in FOUR_NAMES:
            out["raw"][name] = _loads(
                ctx, worker, sizes, mode="raw", name=name, path=str(raw_root / name)
            )
        for key, mode, workers in (
            ("eager", "eager", 1),
            ("parallel", "eager", PARALLEL_WORKERS),
            ("lazy", "lazy", 1),
        ):
            out["bundle"][key] = _loads(
                ctx, worker, sizes, mode=mode, workers=workers, path=str(bundle)
            )
        reference = out["raw"][workload.ROUTES[ROUTE]]["output"]
        for key, entry in out["bundle"].items():
            if entry["output"] != reference:
                log(f"WARNING four models, {key}: the {ROUTE} answer differs from the raw one")
        if serve:
            out["serve"] = {
                key: bench_serve(bundle, ctx, sizes, lazy=key == "lazy")
                for key in ("eager", "lazy")
            }
        shutil.rmtree(raw_root, ignore_errors=True)
        shutil.rmtree(bundle, ignore_errors=True)
        return out
    except Exception:
        error = traceback.format_exc()
        log(f"four-model bundle failed:\n{error}")
        return {"error": error}


def _loads(ctx: Context, worker: Worker, sizes: Sizes, **job: Any) -> dict[str, Any]:
    """Median of ``load_repeat`` loads, each in a forked child with an empty digest cache."""
    results = []
    for _ in range(sizes.load_repeat):
        sync()
        result = worker.run(
            {
                "kind": "four",
                "sizes": sizes.name,
                "digest_cache": str(ctx.new_path("digests")),
                "evict": job["path"] if ctx.cold else None,  # --cold: the files from the disk
                **job,
            }
        )
        if not result.pop("ok"):
            raise RuntimeError(result["error"])
        results.append(result)
    keys = ("load_s", "first_predict_s", "load_rss_mb", "peak_rss_mb")
    entry: dict[str, Any] = {k: statistics.median(r[k] for r in results) for k in keys}
    entry["to_first_s"] = statistics.median(r["load_s"] + r["first_predict_s"] for r in results)
    entry["output"] = results[0]["output"]
    what = job.get("name") or f"bundle {job['mode']}, {job.get('workers', 1)} load worker(s)"
    log(
        f"four models, {what}: load {entry['load_s']:.3f} s, first answer "
        f"{entry['first_predict_s']:.3f} s, peak RSS +{entry['peak_rss_mb']:.0f} MB"
    )
    return entry


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _status(url: str, body: bytes | None = None) -> int:
    request = urllib.request.Request(url, data=body)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (OSError, ValueError):
        return 0  # not listening yet


def bench_serve(
    bundle: Path, ctx: Context, sizes: Sizes, lazy: bool, timeout: float = 600
) -> dict[str, Any]:
    """``mlflow models serve`` of the bundle: seconds from the process start to the first 200."""
    port = _free_port()
    env = child_env()
    env[DIGEST_CACHE_ENV] = str(ctx.new_path("digests"))
    # MLflow starts the server as `uvicorn` from PATH: this interpreter's scripts come first,
    # as in an activated venv.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if lazy:
        env["MLFLOW_PYFUNC_INFERENCE_CONFIG"] = json.dumps({"lazy": True})
    body = json.dumps({"inputs": route_inputs(sizes, as_json=True)}).encode()
    base = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        str(bundle),
        "--env-manager",
        "local",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    sync()
    with open(ctx.tmp / "serve.log", "a") as server_log:
        start = time.perf_counter()
        proc = subprocess.Popen(
            command,
            env=env,
            cwd=str(ctx.tmp),
            stdout=server_log,
            stderr=server_log,
            start_new_session=True,
        )
        try:
            ping_s = answer_s = None
            status = 0
            while time.perf_counter() - start < timeout and proc.poll() is None:
                if ping_s is None:
                    if _status(base + "/ping") == 200:
                        ping_s = time.perf_counter() - start
                    else:
                        time.sleep(0.05)
                    continue
                status = _status(base + "/invocations", body)
                if status == 200:
                    answer_s = time.perf_counter() - start
                    break
                time.sleep(0.05)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    entry = {"ping_s": ping_s, "first_answer_s": answer_s, "last_status": status}
    log(
        f"serve ({'lazy' if lazy else 'eager'}): /ping after {ping_s} s, first 200 of "
        f"/invocations after {answer_s} s"
    )
    return entry
