"""What ``files=`` costs: saving and loading a bundle with a data folder, against copying it.

A folder of ``--mb`` MB (one binary table and a JSON label map) is bundled with a small predict
function that reads both at call time. Baselines, in the same run: ``shutil.copytree`` of the
folder (what any tool that ships the files must at least do) and the same save without
``files=``. Save and load are medians of ``--repeat`` runs; load is a fresh digest cache each
time (the digests are checked while the code loads) and includes the first answer. Saves flush
every file to the disk before publishing (``CLOUDFLOW_FSYNC=0``: not), both are shown.

    python benchmarks/data_files.py
    python benchmarks/data_files.py --mb 400 --repeat 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import cloudflow  # noqa: E402


def timed(fn: Callable[[], object], repeat: int, before: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        before()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cloudflow-bench-files-") as tmp:
        root = Path(tmp)
        project = root / "project"
        (project / "data").mkdir(parents=True)
        (project / "data" / "table.bin").write_bytes(os.urandom(args.mb * 1024 * 1024))
        labels = {str(i): f"label {i}" for i in range(1000)}
        (project / "data" / "labels.json").write_text(json.dumps(labels))
        (project / "bench_reader.py").write_text(
            textwrap.dedent(
                """
                import json

                def predict(key):
                    with open("data/labels.json") as f:
                        labels = json.load(f)
                    with open("data/table.bin", "rb") as f:
                        first = f.read(16)
                    return labels[key], first.hex()
                """
            )
        )
        os.chdir(project)
        sys.path.insert(0, str(project))
        import bench_reader

        out = root / "out"

        def clear() -> None:
            shutil.rmtree(out, ignore_errors=True)

        def clear_cache() -> None:
            shutil.rmtree(Path(tmp) / "cache", ignore_errors=True)

        os.environ["CLOUDFLOW_CACHE_DIR"] = str(Path(tmp) / "cache")
        copy = timed(lambda: shutil.copytree(project / "data", out), args.repeat, clear)
        plain = timed(lambda: cloudflow.save_bundle(bench_reader.predict, {}, out), 3, clear)
        save = timed(
            lambda: cloudflow.save_bundle(bench_reader.predict, {}, out, files=["data"]),
            args.repeat,
            clear,
        )
        os.environ["CLOUDFLOW_FSYNC"] = "0"  # what durability costs: the same, not flushed
        plain_nosync = timed(lambda: cloudflow.save_bundle(bench_reader.predict, {}, out), 3, clear)
        save_nosync = timed(
            lambda: cloudflow.save_bundle(bench_reader.predict, {}, out, files=["data"]),
            args.repeat,
            clear,
        )
        del os.environ["CLOUDFLOW_FSYNC"]
        expected = bench_reader.predict("7")
        os.chdir(root)
        load = timed(
            lambda: cloudflow.load_bundle(out).predict(key="7") == expected or sys.exit(1),
            args.repeat,
            clear_cache,
        )
    rows = [
        ("copytree of the data folder (baseline)", copy),
        ("save_bundle without files=", plain),
        ("  the same, CLOUDFLOW_FSYNC=0 (not flushed to the disk)", plain_nosync),
        (f"save_bundle with files= ({args.mb} MB)", save),
        ("  the same, CLOUDFLOW_FSYNC=0", save_nosync),
        ("load_bundle + first answer (cold cache)", load),
    ]
    print("| step | seconds | ratio to copytree |\n|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.3f} | {seconds / copy:.2f}x |")


if __name__ == "__main__":
    main()
