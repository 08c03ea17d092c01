"""A BERT-sized bundle through a tracking server: logged twice, loaded twice, against MLflow.

``mlflow server`` (sqlite backend, proxied artifacts) runs on 127.0.0.1 behind a byte-counting
TCP proxy, so the MB uploaded and downloaded are measured on the wire. Each step runs in a fresh
process; its time is measured inside it, around the call (log: ``log_bundle`` /
``mlflow.transformers.log_model``; load: the load plus the first answer). The model is built from
seeded random weights untimed, so both logs of each method save the same bytes.

- cloudflow: ``log_bundle`` twice (two runs), then ``load_bundle`` + first predict twice, each
  in a fresh process with one download cache (empty before the first load);
- MLflow: ``mlflow.transformers.log_model`` twice, ``mlflow.transformers.load_model`` + first
  call twice;
- the baseline for the load target: the same bundle logged to a local store and loaded from it
  in a fresh process (``load_bundle``, first predict).

Targets (issue 15): a repeat log uploads < 1 MB; a repeat load downloads < 1 MB and takes at most
1.2x the local-store load.

    python benchmarks/remote.py            # BERT-base (438 MB of weights)
    python benchmarks/remote.py --quick    # a 2-layer BERT, for a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from cfbench.snippets import fresh_env, run_snippet  # noqa: E402
from servers import CountingProxy, tracking_server  # noqa: E402

WORKER = r"""
import json, os, sys, time
sys.path[:0] = [os.environ["CF_REPO"], os.environ["CF_REPO"] + "/benchmarks"]
spec = json.loads(sys.argv[1])
from cfbench.models import SIZES, TEXTS, build_text_model
import mlflow
mlflow.set_tracking_uri(spec["tracking_uri"])
out = {}
if spec["step"].endswith("log"):
    pipe = build_text_model(SIZES[spec["size"]])
    mlflow.set_experiment(spec["experiment"])
    with mlflow.start_run() as run:
        started = time.perf_counter()
        if spec["step"] == "cloudflow-log":
            import cloudflow

            def predict(text_model, texts):
                return [r["label"] for r in text_model(texts)]

            cloudflow.log_bundle(predict, {"text_model": pipe})
        else:
            # Requirements given, as the main benchmark does: else MLflow infers them by loading
            # the model in a subprocess (and asks for torchvision, absent here).
            mlflow.transformers.log_model(
                transformers_model=pipe,
                name="model",
                pip_requirements=["transformers", "torch", "safetensors"],
            )
        out["seconds"] = time.perf_counter() - started
    out["run_id"] = run.info.run_id
else:
    uri = f"runs:/{spec['run_id']}/model"
    started = time.perf_counter()
    if spec["step"] == "cloudflow-load":
        import cloudflow

        answer = cloudflow.load_bundle(uri).predict(texts=TEXTS)
    else:
        answer = [r["label"] for r in mlflow.transformers.load_model(uri)(TEXTS)]
    out["seconds"] = time.perf_counter() - started
    out["answer"] = answer
print("RESULT " + json.dumps(out))
"""


def step(spec: dict[str, object], env: dict[str, str]) -> dict[str, object]:
    return run_snippet(WORKER, spec, env, str(spec["step"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 2-layer BERT (smoke run)")
    args = parser.parse_args()
    size = "quick" if args.quick else "full"
    rows: list[tuple[str, float, float, float]] = []  # what, seconds, MB up, MB down
    with tempfile.TemporaryDirectory(prefix="cf-remote-bench-") as tmp:
        root = Path(tmp)
        env = fresh_env(
            CF_REPO=str(REPO),
            CLOUDFLOW_CACHE_DIR=str(root / "cache"),
            TOKENIZERS_PARALLELISM="false",
            MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
            MLFLOW_TRACKING_TELEMETRY_ENABLED="false",
        )
        answers: dict[str, object] = {}
        with tracking_server(root / "server") as server, CountingProxy(server.url) as proxy:
            uri = proxy.url
            runs: dict[str, list[str]] = {"cloudflow": [], "mlflow": []}
            for method in ("cloudflow", "mlflow"):
                for n in (1, 2):
                    proxy.reset()
                    got = step(
                        {
                            "step": f"{method}-log",
                            "size": size,
                            "tracking_uri": uri,
                            "experiment": f"bench-{method}",
                        },
                        env,
                    )
                    runs[method].append(str(got["run_id"]))
                    rows.append((f"{method} log #{n}", float(got["seconds"]), proxy.sent / 1e6,
                                 proxy.received / 1e6))  # fmt: skip
            for method in ("cloudflow", "mlflow"):
                for n in (1, 2):
                    proxy.reset()
                    got = step(
                        {"step": f"{method}-load", "tracking_uri": uri, "run_id": runs[method][0]},
                        env,
                    )
                    answers[f"{method} #{n}"] = got["answer"]
                    rows.append((f"{method} load #{n}", float(got["seconds"]), proxy.sent / 1e6,
                                 proxy.received / 1e6))  # fmt: skip
        # The local store: the same bundle, loaded where it is.
        store = root / "local"
        local_uri = f"sqlite:///{store}/mlflow.db"
        (store / "artifacts").mkdir(parents=True)
        import cloudflow

        cloudflow.prepare_env(str(store), "bench-local")
        got = step(
            {
                "step": "cloudflow-log",
                "size": size,
                "tracking_uri": local_uri,
                "experiment": "bench-local",
            },
            env,
        )
        local = step(
            {"step": "cloudflow-load", "tracking_uri": local_uri, "run_id": got["run_id"]}, env
        )
        answers["local"] = local["answer"]
        rows.append(("cloudflow load, local store", float(local["seconds"]), 0.0, 0.0))
    if len({json.dumps(a) for a in answers.values()}) != 1:
        raise SystemExit(f"the answers differ: {answers}")
    report(rows, size)


def report(rows: list[tuple[str, float, float, float]], size: str) -> None:
    by = {r[0]: r for r in rows}
    load = os.getloadavg()[0]
    day = time.strftime("%Y-%m-%d")
    print(f"\n### Tracking server on 127.0.0.1, BERT {size} ({day}, load average {load:.1f})\n")
    print("| step | seconds | vs MLflow | MB uploaded | MB downloaded |")
    print("| --- | --- | --- | --- | --- |")
    for what, seconds, up, down in rows:
        method, _, rest = what.partition(" ")
        other = by.get(f"mlflow {rest}") if method == "cloudflow" else None
        ratio = f"{seconds / other[1]:.2f}x" if other else ""
        print(f"| {what} | {seconds:.2f} | {ratio} | {up:.2f} | {down:.2f} |")
    local = by["cloudflow load, local store"][1]
    repeat = by["cloudflow load #2"]
    print("\n| target | measured | met |")
    print("| --- | --- | --- |")
    up2 = by["cloudflow log #2"][2]
    print(f"| repeat log uploads < 1 MB | {up2:.2f} MB | {'yes' if up2 < 1 else 'no'} |")
    met = "yes" if repeat[3] < 1 else "no"
    print(f"| repeat load downloads < 1 MB | {repeat[3]:.2f} MB | {met} |")
    ratio = repeat[1] / local
    print(
        f"| repeat load <= 1.2x a local-store load | {repeat[1]:.2f} s vs {local:.2f} s = "
        f"{ratio:.2f}x | {'yes' if ratio <= 1.2 else 'no'} |"
    )


if __name__ == "__main__":
    main()
