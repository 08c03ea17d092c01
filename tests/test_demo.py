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


def _serve(folder: Path) -> http.server.ThreadingHTTPServer:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=folder)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# One test for the whole round trip: SAVE and LOAD take a minute, and pytest-xdist would run a
# shared module fixture once per worker.
@pytest.mark.slow  # serves an image over http on 127.0.0.1
def test_demo_round_trip_without_the_project_source(tmp_path: Path) -> None:
    env = _clean_env()
    project = tmp_path / "MLFLOW_save"
    shutil.copytree(
        DEMO / "MLFLOW_save",
        project,
        ignore=shutil.ignore_patterns("__pycache__", "cloudflow_store"),
    )
    store = tmp_path / "store"
    save_json, load_json = tmp_path / "save.json", tmp_path / "load.json"
    save = _run(
        "SAVE_MLflow.py",
        project,
        "--tracking-uri",
        str(store),
        "--json-out",
        str(save_json),
        env=env,
    )
    assert save.returncode == 0, save.stdout + save.stderr
    shutil.rmtree(project)

    # The sample image logged with the run, classified from a URL and from a local path.
    (digit,) = store.rglob("examples/digit.png")
    server = _serve(digit.parent)
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
            str(load_json),
            env=env,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert load.returncode == 0, load.stdout + load.stderr
    saved, loaded = json.loads(save_json.read_text()), json.loads(load_json.read_text())

    # The load side answers what the save side answered, for the latest run (no --run-id given).
    assert loaded["run_id"] == saved["run_id"]
    expected = {"sentiment", "translation", "summarization", "image", "tabular"}
    assert set(saved["predictions"]) == expected
    for name, answer in saved["predictions"].items():
        assert _same(loaded["predictions"][name], answer), (name, answer, loaded["predictions"])

    # The answers mean something.
    answers = loaded["predictions"]
    assert [a["label"] for a in answers["sentiment"]] == ["POSITIVE", "NEGATIVE"]
    assert answers["sentiment (--text 1)"][0]["label"] == "POSITIVE"
    assert answers["translation"][0]["translation_text"] == "Où est la gare ?"
    assert answers["tabular"][0]["label"] == "virginica"
    summary = answers["summarization"]["summary_text"]
    assert 0 < len(summary) < len(answers["summarization"]["input_text"])
    assert answers["image"][0] == {"label": "2", "score": pytest.approx(0.947, abs=0.05)}
    assert _same(answers["image (--image 1)"], answers["image"])  # from the URL
    assert _same(answers["image (--image 2)"], answers["image"])  # from the local path

    # Progress and timings are visible.
    assert f"RUN ID :  {saved['run_id']}" in save.stdout
    for step in ("Training the sentiment head", "Training the torch digits network", "Saving"):
        assert any(step in line and "done in" in line for line in save.stdout.splitlines()), step
    assert "Loaded in" in load.stdout
    assert "- image: digit.png -> 2 (" in load.stdout

    # LOAD ran where none of the project's modules can be imported.
    code = f"import importlib.util as u; print([m for m in {SAVE_MODULES!r} if u.find_spec(m)])"
    probe = subprocess.run(
        [sys.executable, "-c", code],
        cwd=DEMO / "MLFLOW_load",
        env=env,
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
