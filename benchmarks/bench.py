#!/usr/bin/env python
"""Save and load benchmark: cloudflow against the raw framework calls, pickling and MLflow.

The code is the package ``cfbench`` next to this file (see benchmarks/README.md); this is its
command line: ``python benchmarks/bench.py [--quick] [--markdown] [--json FILE] ...``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

# The models and inputs, for the other benchmarks that ``import bench``.
from cfbench.cli import main  # noqa: E402
from cfbench.models import (  # noqa: E402, F401
    FULL,
    QUICK,
    build_forest,
    build_mlp,
    build_text_model,
    make_inputs,
)

if __name__ == "__main__":
    sys.exit(main())
