"""The demo as a user runs it: save in one process, delete the project, load in another.

SAVE_MLflow.py runs from a copy of demo/MLFLOW_save, which is deleted before LOAD_MLflow.py runs
from demo/MLFLOW_load with PYTHONPATH unset, so the loaded model cannot fall back on the project's
source. The load side's answers must equal the save side's.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parent.parent / "demo"
SAVE_MODULES = ("download_file", "get_print", "intermediate_module", "utils", "train_models")


def _clean_env() -> dict[str, str]:
    """The environment without PYTHONPATH; cloudflow still importable if it is not installed."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = [sys.executable, "-c", "import cloudflow"]
    if subprocess.run(probe, env=env, cwd="/", capture_output=True).returncode != 0:
        import cloudflow

        # Only the folder holding the cloudflow package: it has none of the demo's modules.
        env["PYTHONPATH"] = str(Path(cloudflow.__file__).resolve().parent.parent)
    return env


def _run(script: str, cwd: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, script, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _same(a: object, b: object, tol: float = 1e-3) -> bool:
    """Equal, except floats within ``tol`` (two processes may round the last bits differently)."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, int | float) and isinstance(b, int | float) and abs(a - b) <= tol
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], tol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y, tol) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("demo")
    env = _clean_env()
    project = tmp / "MLFLOW_save"
    shutil.copytree(
        DEMO / "MLFLOW_save",
        project,
        ignore=shutil.ignore_patterns("__pycache__", "cloudflow_store"),
    )
    store = tmp / "store"
    save = _run(
        "SAVE_MLflow.py",
        project,
        "--tracking-uri",
        str(store),
        "--json-out",
        str(tmp / "save.json"),
        env=env,
    )
    assert save.returncode == 0, save.stdout + save.stderr
    shutil.rmtree(project)

    # Serve the logged sample image on 127.0.0.1 to classify it from a URL as well.
    (digit,) = store.rglob("examples/digit.png")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=digit.parent)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/digit.png"
    try:
        load = _run(
            "LOAD_MLflow.py",
            DEMO / "MLFLOW_load",
            "--tracking-uri",
            str(store),
            "--image",
            url,
            "--image",
            str(digit),
            "--text",
            "I love this place, the staff were wonderful.",
            "--json-out",
            str(tmp / "load.json"),
            env=env,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert load.returncode == 0, load.stdout + load.stderr
    return {
        "env": env,
        "save": json.loads((tmp / "save.json").read_text()),
        "load": json.loads((tmp / "load.json").read_text()),
        "save_out": save.stdout,
        "load_out": load.stdout,
    }


@pytest.mark.slow  # serves an image over http on 127.0.0.1
def test_load_answers_equal_save_answers(demo_run: dict) -> None:
    saved, loaded = demo_run["save"], demo_run["load"]
    assert loaded["run_id"] == saved["run_id"]  # the latest run, found without --run-id
    expected = {"sentiment", "translation", "summarization", "image", "tabular"}
    assert set(saved["predictions"]) == expected
    for name, answer in saved["predictions"].items():
        assert _same(loaded["predictions"][name], answer), (name, answer, loaded["predictions"])


@pytest.mark.slow
def test_answers_are_meaningful(demo_run: dict) -> None:
    predictions = demo_run["load"]["predictions"]
    assert [a["label"] for a in predictions["sentiment"]] == ["POSITIVE", "NEGATIVE"]
    assert predictions["sentiment (--text 1)"][0]["label"] == "POSITIVE"
    assert predictions["translation"][0]["translation_text"] == "Où est la gare ?"
    assert predictions["tabular"][0]["label"] == "virginica"
    summary = predictions["summarization"]["summary_text"]
    assert 0 < len(summary) < len(predictions["summarization"]["input_text"])
    assert predictions["image"][0] == {"label": "2", "score": pytest.approx(0.947, abs=0.05)}


@pytest.mark.slow
def test_image_from_url_and_from_path(demo_run: dict) -> None:
    predictions = demo_run["load"]["predictions"]
    assert _same(predictions["image (--image 1)"], predictions["image"])  # URL
    assert _same(predictions["image (--image 2)"], predictions["image"])  # local path


@pytest.mark.slow
def test_progress_and_timings_are_shown(demo_run: dict) -> None:
    save_out, load_out = demo_run["save_out"], demo_run["load_out"]
    assert f"RUN ID :  {demo_run['save']['run_id']}" in save_out
    for step in ("Training the sentiment head", "Training the torch digits network", "Saving"):
        assert f"{step}" in save_out
        assert any(step in line and "done in" in line for line in save_out.splitlines()), step
    assert "Loaded in" in load_out
    assert "- image: digit.png -> 2 (" in load_out


@pytest.mark.slow
def test_load_ran_without_the_save_modules(demo_run: dict) -> None:
    code = f"import importlib.util as u; print([m for m in {SAVE_MODULES!r} if u.find_spec(m)])"
    probe = subprocess.run(
        [sys.executable, "-c", code],
        cwd=DEMO / "MLFLOW_load",
        env=demo_run["env"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip() == "[]"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_hub_unreachable_fails_with_one_clear_line(tmp_path: Path) -> None:
    env = _clean_env()
    # Point the hub at a closed local port: unreachable here and on any machine with a network.
    env["HF_ENDPOINT"] = f"http://127.0.0.1:{_closed_port()}"
    store = tmp_path / "store"
    result = _run(
        "SAVE_MLflow.py", DEMO / "MLFLOW_save", "--hub", "--tracking-uri", str(store), env=env
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert result.stderr.startswith("error: --hub needs the Hugging Face hub")
    assert "run without --hub" in result.stderr
    assert not store.exists()  # nothing half-saved


def test_load_without_a_store_says_to_save_first(tmp_path: Path) -> None:
    result = _run(
        "LOAD_MLflow.py",
        DEMO / "MLFLOW_load",
        "--tracking-uri",
        str(tmp_path / "missing"),
        env=_clean_env(),
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: no store at {tmp_path / 'missing'}: run ../MLFLOW_save/SAVE_MLflow.py first."
    )
