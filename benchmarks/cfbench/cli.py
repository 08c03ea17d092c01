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
import json
import sys
from pathlib import Path

from cfbench.measure import fresh_main, worker_main
from cfbench.models import SPECS
from cfbench.report import render
from cfbench.runner import EXTRAS, run_benchmark
from cfbench.strategies import STRATEGIES


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
    parser.add_argument(
        "--extras",
        default=",".join(EXTRAS),
        help="extra rows: first_log (first log_bundle of a new process), four (four-model "
        "bundle: eager, parallel, lazy loads); none for neither",
    )
    parser.add_argument(
        "--serve", action="store_true", help="also time mlflow models serve of the four models"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fresh-job", metavar="JSON", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker_main(fork=not args.no_fork)
        return 0
    if args.fresh_job:
        fresh_main(args.fresh_job)
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
