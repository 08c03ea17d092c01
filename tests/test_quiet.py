"""Under the seed API's default log level (ERROR), MLflow's store-creation lines stay out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import subprocess_env

SEED = """
import logging, sys
import cloudflow, mlflow

logging.basicConfig(level=logging.INFO)  # as a service's or notebook's logging often is
model = cloudflow.cloudflow_model(log_level=sys.argv[1])
exp = cloudflow.prepare_env("store", "quiet")


def predict(m, x):
    return x + m["k"]


with mlflow.start_run(experiment_id=exp) as run:
    model.save(tracking_uri="store", experiment_id=exp, run_id=run.info.run_id,
               predict_function=predict, models={"m": {"k": 1}}, verify=False)
print(model.predict(x=1) if model.load_model("store", "quiet", run.info.run_id) else None)
"""


@pytest.mark.parametrize(("level", "shown"), [("ERROR", False), ("INFO", True)])
def test_store_creation_is_quiet_unless_info_is_asked(
    tmp_path: Path, level: str, shown: bool
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SEED, level],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "2"
    assert ("Creating initial MLflow database tables" in done.stderr) is shown, done.stderr
