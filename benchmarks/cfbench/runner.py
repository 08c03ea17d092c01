"""The run: every strategy on every model, then the extra rows, into one report (a dict).

Saves run in this process, on live models, after one untimed warm-up save of tiny models per
strategy; loads run in the worker's forked children (:mod:`cfbench.measure`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import workload

from cfbench.first_log import bench_first_log
from cfbench.four_models import bench_four
from cfbench.measure import (
    DIGEST_CACHE_ENV,
    Worker,
    cloudflow_available,
    import_times,
    log,
    machine,
    profiled,
    sync,
    versions,
)
from cfbench.models import BUILDERS, FULL, QUICK, SPECS, TINY, Sizes, Spec, count_parameters
from cfbench.report import print_header, targets
from cfbench.strategies import (
    NEEDS_CLOUDFLOW,
    STRATEGIES,
    Context,
    Saved,
    Stores,
    _connect,
    cloudflow_log,
    tree_size,
)


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


def timed_save(
    strategy: Any, ctx: Context, spec: Spec, models: dict[str, Any]
) -> tuple[Saved, float]:
    """Prepare (a path, or a fresh store connected), then time the save alone."""
    import gc

    prepared = strategy.prepare(ctx, strategy.key)
    gc.collect()
    t = time.perf_counter()
    saved = strategy.save(prepared, spec, models)
    return saved, time.perf_counter() - t


def remove(saved: Saved) -> None:
    shutil.rmtree(saved.location, ignore_errors=True)


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    sizes = QUICK if args.quick else FULL
    if args.save_repeat:
        sizes = Sizes(**{**asdict(sizes), "save_repeat": args.save_repeat})
    if args.load_repeat:
        sizes = Sizes(**{**asdict(sizes), "load_repeat": args.load_repeat})
    specs = [SPECS[k] for k in args.models.split(",")]
    extras = parse_extras(args.extras, args.serve)
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
            if "first_log" in extras:
                log("first log_bundle of a new process, against the raw save in one")
                report["first_log"] = bench_first_log(specs, models, ctx, sizes)
            if "four" in extras:
                log(
                    "four-model bundle: eager, parallel and lazy loads"
                    + (", mlflow models serve" if args.serve else "")
                )
                report["four"] = bench_four(models, ctx, worker, sizes, serve=args.serve)
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


EXTRAS = ("first_log", "four")


def parse_extras(value: str, serve: bool) -> set[str]:
    """The extra rows asked for (``--extras``): a comma list of EXTRAS, or ``none``."""
    extras = {e for e in value.split(",") if e and e != "none"}
    unknown = extras - set(EXTRAS)
    if unknown:
        raise SystemExit(f"--extras {value!r}: unknown {sorted(unknown)}; choose from {EXTRAS}")
    return extras | ({"four"} if serve else set())


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
            cloudflow_log(store, spec, models)
            first_s = time.perf_counter() - t
            sync()
            size_before = tree_size(store.folder / "artifacts")
            times = []
            for _ in range(sizes.save_repeat):
                t = time.perf_counter()
                cloudflow_log(store, spec, models)
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
                cloudflow_log(store, spec, models)
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
