"""The save and load benchmark of ``benchmarks/bench.py``, one module per idea.

- :mod:`cfbench.models`: the models (A: BERT-sized text-classification pipeline, B: torch MLP,
  C: scikit-learn forest, ABC: a bundle of the three), their sizes, builders and inputs;
- :mod:`cfbench.strategies`: the ways of shipping them (raw, cloudpickle, mlflow_path,
  mlflow_run, cloudflow_path, cloudflow_run, cloudflow_seed), a table of plain entries;
- :mod:`cfbench.measure`: measuring in clean processes (the load worker and its forked
  children, jobs, peak RSS, bytes written, page cache, machine and import times);
- :mod:`cfbench.runner`: the run, every strategy on every model;
- :mod:`cfbench.first_log`: the first ``log_bundle`` of a new interpreter against a raw save;
- :mod:`cfbench.four_models`: a bundle of four models routed by ``input_type``: eager, parallel
  and lazy loads, and ``mlflow models serve`` to the first answer;
- :mod:`cfbench.report`: tables, targets, Markdown and JSON;
- :mod:`cfbench.cli`: the command line of ``bench.py``.

Importing the package sets the environment every process of the benchmark shares (quiet,
offline, fork-safe) and puts the repository (its cloudflow, and tests/models.py for the MLP
builder) and ``benchmarks/`` (workload.py, the "user code") on ``sys.path``.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent  # benchmarks/
REPO = HERE.parent
BENCH_SCRIPT = HERE / "bench.py"

# Quiet, offline and fork-safe before any library is imported (the worker inherits these).
for _name, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_TRACKING_URI": "",
    "PYTHONWARNINGS": "ignore",
}.items():
    os.environ.setdefault(_name, _value)
if not os.environ["MLFLOW_TRACKING_URI"]:
    del os.environ["MLFLOW_TRACKING_URI"]
if str(REPO) not in sys.path:
    # Run from a checkout: the repository's cloudflow, and tests/models.py for the MLP builder.
    sys.path.insert(1, str(REPO))
if str(HERE) not in sys.path:
    sys.path.insert(1, str(HERE))

warnings.filterwarnings("ignore")
