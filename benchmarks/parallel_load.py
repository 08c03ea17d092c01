"""Loading the models of one bundle in parallel, against one after the other, in the same run.

The bench's three models (A: BERT text-classification pipeline, B: torch MLP, C: scikit-learn
forest; ``--quick`` for small ones) are saved in one bundle with ``save_bundle``. Each is also
saved alone, and its load timed alone: the "sum" and "slowest" rows are the floor a sequential
and a perfectly parallel load could reach. Then the bundle is loaded with
``CLOUDFLOW_LOAD_WORKERS=1`` (one after the other, the default) and ``=3`` (threads), and with
``lazy=True`` followed by one answer of the MLP alone (time to first answer when a request needs
one model). Loads are medians of ``--repeat``, digest cache off (every load hashes every file),
warm page cache, or with ``--cold`` (root on Linux) the page cache dropped before each load.

    python benchmarks/parallel_load.py --quick
    python benchmarks/parallel_load.py
    sudo python benchmarks/parallel_load.py --cold
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO.parent))
sys.path.insert(0, str(REPO))

import bench  # noqa: E402
import workload  # noqa: E402

import cloudflow  # noqa: E402
from cloudflow.runtime import models as _models  # noqa: E402

COLD = False


def drop_page_cache() -> None:
    """Cold loads: the files come from the disk (Linux, as root), as on a fresh machine."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def median_load(path: Path, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        if COLD:
            drop_page_cache()
        start = time.perf_counter()
        cloudflow.load_bundle(path)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--cold", action="store_true", help="drop the page cache before each load (root, Linux)"
    )
    args = parser.parse_args()
    global COLD
    COLD = args.cold
    os.environ["CLOUDFLOW_DIGEST_CACHE"] = "0"
    sizes = bench.QUICK if args.quick else bench.FULL
    models = {
        "text_model": bench.build_text_model(sizes),
        "mlp": bench.build_mlp(sizes),
        "forest": bench.build_forest(sizes),
    }
    alone = {
        "text_model": workload.predict_text,
        "mlp": workload.predict_mlp,
        "forest": workload.predict_forest,
    }
    with tempfile.TemporaryDirectory(prefix="cloudflow-bench-parallel-") as tmp:
        root = Path(tmp)
        singles = {}
        for name, fn in alone.items():
            cloudflow.save_bundle(fn, {name: models[name]}, root / name)
            median_load(root / name, 1)  # warm the page cache
            singles[name] = median_load(root / name, args.repeat)
        cloudflow.save_bundle(workload.predict_all, models, root / "all")
        median_load(root / "all", 1)
        os.environ[_models.LOAD_WORKERS_ENV] = "1"
        sequential = median_load(root / "all", args.repeat)
        os.environ[_models.LOAD_WORKERS_ENV] = "3"
        parallel = median_load(root / "all", args.repeat)
        x = bench.make_inputs(sizes)["x"]
        lazy_first = []
        for _ in range(args.repeat):
            if COLD:
                drop_page_cache()
            start = time.perf_counter()
            loaded = cloudflow.load_bundle(root / "all", lazy=True)
            loaded.models["mlp"](x)  # the first answer needs the MLP only
            lazy_first.append(time.perf_counter() - start)
        lazy = statistics.median(lazy_first)
    base = sum(singles.values())
    rows = [
        *((f"{name} alone", seconds) for name, seconds in singles.items()),
        ("sum of the three alone (baseline)", base),
        ("slowest alone", max(singles.values())),
        ("bundle of three, one after the other", sequential),
        ("bundle of three, in 3 threads", parallel),
        ("bundle of three, lazy=True: load + the MLP's first answer", lazy),
    ]
    cache = "cold page cache" if COLD else "warm page cache"
    print(f"sizes: {sizes.name}, {os.cpu_count()} cores, {cache}, medians of {args.repeat}")
    print("| load | seconds | ratio to the sum |\n|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.3f} | {seconds / base:.2f}x |")


if __name__ == "__main__":
    main()
