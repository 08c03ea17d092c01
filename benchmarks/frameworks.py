"""Each framework's flavor against the framework's own save and load, on a model of real size.

For every framework installed in this interpreter, one model is built from seeded random weights
(or trained on seeded random data) in a fresh process, saved once with ``cloudflow.save_bundle``
and once with each of the framework's own ways (``frameworks_workload.own_ways``). Each save is
timed in that process. Each load then runs ``--repeat`` times, each in a fresh process from
another cwd, with the framework imported before the clock starts; the time is the load plus the
first answer, the median is reported. Every answer is compared with the original's.

| framework | model (full run) | its own ways |
| --- | --- | --- |
| transformers | BERT-base text-classification pipeline, 418 MB | `save_pretrained` |
| torch | MLP 2048-8192-8192-2048-16, 385 MB | `state_dict`, loaded with `mmap=True` |
| sklearn | random forest, 100 trees to full depth | skops, joblib |
| xgboost | `XGBClassifier`, 400 trees of 255 leaves | `.ubj`, `.json` |
| lightgbm | `Booster`, 400 trees of 255 leaves | `model.txt` |
| onnx | `InferenceSession` of an MLP 1024-4096-4096-1024-16, 101 MB | `InferenceSession(path)` |
| keras | `Sequential` of the same widths (backend: `KERAS_BACKEND`, torch by default) | `.keras` |
| flax | Flax NNX MLP of the same widths | orbax `StandardCheckpointer` |
| tensorflow | `tf.Module` of the same widths (run from a venv with TensorFlow) | SavedModel |

    python benchmarks/frameworks.py                    # every installed framework, about 6 minutes
    python benchmarks/frameworks.py --quick            # small models, one repeat: a smoke run
    python benchmarks/frameworks.py --frameworks xgboost,lightgbm --repeat 7
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from cfbench.snippets import fresh_env, run_snippet  # noqa: E402

#: framework -> the module whose import is not timed.
FRAMEWORKS = {
    "transformers": "transformers",
    "torch": "torch",
    "sklearn": "sklearn",
    "xgboost": "xgboost",
    "lightgbm": "lightgbm",
    "onnx": "onnxruntime",
    "keras": "keras",
    "flax": "flax",
    "tensorflow": "tensorflow",
}

SAVER = r"""
import json, sys, time
spec = json.loads(sys.argv[1])
import cfbench  # the benchmark's shared environment (offline, quiet) and sys.path
import frameworks_workload as fw
import cloudflow
from pathlib import Path

framework, size, root = spec["framework"], spec["size"], Path(spec["root"])
model = fw.build(framework, size)
x = fw.inputs(framework, size)
predict = fw.PREDICT[framework]
out = {"expected": fw.to_plain(predict(model, x)), "save": {}}
started = time.perf_counter()
cloudflow.save_bundle(predict, {"model": model}, root / "cloudflow")
out["save"]["cloudflow"] = time.perf_counter() - started
for own in fw.own_ways(framework, size):
    folder = root / own.label
    folder.mkdir()
    started = time.perf_counter()
    own.save(model, folder)
    out["save"][own.label] = time.perf_counter() - started
print("RESULT " + json.dumps(out))
"""

LOADER = r"""
import importlib, json, sys, time
spec = json.loads(sys.argv[1])
import cfbench
import frameworks_workload as fw
import cloudflow
from pathlib import Path

framework, size, root = spec["framework"], spec["size"], Path(spec["root"])
importlib.import_module(spec["module"])  # not timed: both ways need the framework imported
x = fw.inputs(framework, size)
if spec["way"] == "cloudflow":
    started = time.perf_counter()
    answer = cloudflow.load_bundle(root / "cloudflow").predict(x=x)
else:
    (own,) = [o for o in fw.own_ways(framework, size) if o.label == spec["way"]]
    started = time.perf_counter()
    answer = fw.PREDICT[framework](own.load(root / own.label), x)
seconds = time.perf_counter() - started
print("RESULT " + json.dumps({"seconds": seconds, "answer": fw.to_plain(answer)}))
"""


def run(snippet: str, spec: dict[str, object], env: dict[str, str]) -> dict[str, object]:
    return run_snippet(snippet, spec, env, f"{spec['framework']} {spec.get('way', 'save')}")


def same(a: object, b: object) -> bool:
    import numpy as np

    if isinstance(a, list) and a and isinstance(a[0], list) and isinstance(a[0][0], str):
        return a == b  # labels and rounded scores
    return bool(np.allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6))


def megabytes(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def stored(bundle: Path) -> str:
    """What the bundle keeps of the model: its files, by name."""
    manifest = json.loads((bundle / "cloudflow" / "manifest.json").read_text())
    entry = manifest["models"]["model"]
    prefix = entry["path"].rstrip("/") + "/"
    names = sorted({rel[len(prefix) :].split("/")[0] for rel in manifest["files"]
                    if rel.startswith(prefix)})  # fmt: skip
    return f"{entry['flavor']}: " + ", ".join(f"`{n}`" for n in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small models, one repeat")
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="comma-separated")
    parser.add_argument("--repeat", type=int, default=None, help="loads per way (default 5)")
    args = parser.parse_args()
    size = "quick" if args.quick else "full"
    repeat = args.repeat or (1 if args.quick else 5)
    wanted = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    unknown = sorted(set(wanted) - set(FRAMEWORKS))
    if unknown:
        raise SystemExit(f"unknown frameworks {unknown}; choose from {sorted(FRAMEWORKS)}")
    env = fresh_env(PYTHONPATH=os.pathsep.join([str(HERE), str(REPO)]), CF_REPO=str(REPO))
    env.setdefault("KERAS_BACKEND", "torch")
    rows = []
    missing = [f for f in wanted if importlib.util.find_spec(FRAMEWORKS[f]) is None]
    with tempfile.TemporaryDirectory(prefix="cf-frameworks-") as tmp:
        for framework in [f for f in wanted if f not in missing]:
            root = Path(tmp) / framework
            root.mkdir()
            spec = {"framework": framework, "size": size, "root": str(root),
                    "module": FRAMEWORKS[framework]}  # fmt: skip
            saved = run(SAVER, spec, env)
            times: dict[str, list[float]] = {}
            for _ in range(repeat):
                for way in saved["save"]:
                    got = run(LOADER, {**spec, "way": way}, env)
                    if not same(got["answer"], saved["expected"]):
                        raise SystemExit(f"{framework} {way}: the answer differs from the original")
                    times.setdefault(way, []).append(float(got["seconds"]))
            load = {way: statistics.median(t) for way, t in times.items()}
            save = dict(saved["save"])
            for way in [w for w in load if w != "cloudflow"]:
                rows.append({
                    "framework": framework, "stored": stored(root / "cloudflow"), "own": way,
                    "mb": megabytes(root / "cloudflow"), "own_mb": megabytes(root / way),
                    "save": save["cloudflow"], "own_save": save[way],
                    "load": load["cloudflow"], "own_load": load[way],
                })  # fmt: skip
            print(f"{framework}: done", file=sys.stderr, flush=True)
    report(rows, size, repeat, missing)


def report(rows: list[dict[str, object]], size: str, repeat: int, missing: list[str]) -> None:
    day = time.strftime("%Y-%m-%d")
    load = os.getloadavg()[0]
    print(f"\n### Frameworks, {size} models ({day}, {os.cpu_count()} cores, load average "
          f"{load:.1f}, median of {repeat} loads, each in a fresh process)\n")  # fmt: skip
    print("| framework | cloudflow stores | own way | MB (own) | save s (own) | load s "
          "| own load s | load vs own |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['framework']} | {r['stored']} | {r['own']} | {r['mb']:.1f} ({r['own_mb']:.1f}) "
            f"| {r['save']:.2f} ({r['own_save']:.2f}) | {r['load']:.2f} | {r['own_load']:.2f} "
            f"| {float(r['load']) / float(r['own_load']):.2f}x |"
        )
    if missing:
        print(f"\nNot installed here, so not measured: {', '.join(missing)}.")


if __name__ == "__main__":
    main()
