"""A snippet of Python run in a fresh interpreter, its result read from its ``RESULT`` line.

The stand-alone benchmarks (``frameworks.py``, ``remote.py``) time each step inside a new
process: the snippet prints ``RESULT <json>`` last; a failure stops the benchmark with the tail
of the snippet's stderr.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Any


def run_snippet(
    snippet: str, spec: dict[str, Any], env: dict[str, str], what: str
) -> dict[str, Any]:
    """Run ``snippet`` with ``json.dumps(spec)`` as its argument, from the temp dir."""
    done = subprocess.run(
        [sys.executable, "-c", snippet, json.dumps(spec)],
        env=env,
        cwd=tempfile.gettempdir(),
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if done.returncode != 0:
        raise SystemExit(f"{what} failed:\n{done.stderr[-3000:]}")
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return dict(json.loads(line[len("RESULT ") :]))


def fresh_env(**extra: str) -> dict[str, str]:
    """This process's environment without MLflow's settings and ``PYTHONPATH``, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYTHONPATH"))}
    env.update(extra)
    return env
