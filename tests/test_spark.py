"""Batch scoring on Spark: ``mlflow.pyfunc.spark_udf`` gives what ``predict`` gives, row by row.

The shop project is saved (source then deleted) and scored on a local Spark session
(``local[1]``, 1 GB) in a subprocess, so the JVM ends with it. The DataFrame's columns are the
predict function's parameters; ``repeat`` and ``tags`` are null where a call leaves them out.
The bundle returns a dict, so the UDF's result type is a struct of its fields.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from helpers import LOCAL_SPARK, assert_same_predictions, outcome, run_snippet
from servers import SHOP_CASES, save_shop

pytestmark = pytest.mark.slow

SCORER = (
    r"""
import json, os, sys
spec = json.loads(sys.argv[1])
# Spark's Python workers run this interpreter (else python3 from PATH), with this environment.
os.environ["PYSPARK_PYTHON"] = os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
"""
    + LOCAL_SPARK
    + r"""
try:
    rows = [(c["text"], c.get("repeat"), c.get("tags")) for c in spec["cases"]]
    df = spark.createDataFrame(rows, "text string, repeat long, tags array<string>").coalesce(1)
    udf = mlflow.pyfunc.spark_udf(
        spark,
        spec["path"],
        result_type="label string, score double, words long, tags array<string>",
        env_manager="local",
    )

    def score(column):
        return [row.p.asDict(recursive=True) for row in df.withColumn("p", column).collect()]

    # One struct column: its fields reach predict by name, in any order.
    attempt("struct", lambda: score(udf(struct("tags", "text", "repeat"))))
    # Plain columns are matched to the signature's inputs by position.
    attempt("columns", lambda: score(udf("text", "repeat", "tags")))
finally:
    spark.stop()
emit(results)
"""
)


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("spark")
    (saved,) = save_shop(root, {"mode": "save", "path": str(root / "bundle")})
    spec = {"path": str(root / "bundle"), "cases": SHOP_CASES}
    cwd = root / "scorer"
    cwd.mkdir()
    results = run_snippet(SCORER, cwd=cwd, args=[json.dumps(spec)], timeout=400)
    return {"results": results, "expected": saved["expected"]}


@pytest.mark.parametrize("way", ["struct", "columns"])
def test_spark_udf_equals_local_predictions(scored: dict[str, Any], way: str) -> None:
    assert_same_predictions(outcome(scored["results"], way), SHOP_CASES, scored["expected"])
