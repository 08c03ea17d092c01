"""Saves publish whole bundles or nothing: killed at any moment, failing verification, or raising.

The kill trials run a *fork server*: one subprocess imports MLflow and cloudflow once, then forks
a child for every save; the test SIGKILLs that child after a random delay drawn from the length of
an uninterrupted save. The server only reaps a child when the test says so, so the pid killed is
always the saving child (never a recycled pid). After every kill the target holds either nothing
or a complete bundle that loads and predicts right, and no logged model is READY without files.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
from conftest import UserModules
from helpers import sqlite_uri, subprocess_env
from mlflow.exceptions import MlflowException

import cloudflow
from cloudflow.exceptions import CaptureError, CloudflowError

SAVE_TRIALS = 13
LOG_TRIALS = 12
PAD = 300_000  # bytes of model data, so that a save takes long enough to be cut in its middle

SERVER = r"""
import json, os, sys, traceback
import mlflow, cloudflow

def predict(table, x):
    return table["k"] * x

def save(cmd):
    models = {"table": {"k": cmd["k"], "pad": bytes(cmd["pad"])}}
    if cmd["kind"] == "save":
        cloudflow.save_bundle(predict, models, cmd["target"])
        return
    experiment_id = cloudflow.prepare_env(cmd["store"], "atomic")
    with mlflow.start_run(experiment_id=experiment_id) as run:
        with open(cmd["target"], "w") as f:
            f.write(run.info.run_id)
        cloudflow.log_bundle(predict, models)

# Warm up in the server, so the children fork with everything imported and a kill lands in the
# save itself, not in an import.
import tempfile
import mlflow.store.tracking.sqlalchemy_store, mlflow.tracking.fluent, mlflow.pyfunc  # noqa
with tempfile.TemporaryDirectory() as tmp:
    cloudflow.save_bundle(predict, {"table": {"k": 0}}, tmp + "/warm")
    cloudflow.load_bundle(tmp + "/warm")
print("ready", flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    pid = os.fork()
    if pid == 0:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        try:
            save(cmd)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    print(json.dumps({"pid": pid}), flush=True)
    sys.stdin.readline()  # the test has killed the child (or let it be): reap it now
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"status": status}), flush=True)
"""


class ForkServer:
    def __init__(self, cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER],
            cwd=cwd,
            env=subprocess_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self._read() == "ready"

    def _read(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "the fork server died"
        return line.strip()

    def trial(self, cmd: dict[str, Any], kill_after: float | None) -> tuple[float, bool]:
        """Run one save; SIGKILL it after ``kill_after`` s. Returns (seconds, finished)."""
        assert self.proc.stdin is not None
        started = time.perf_counter()
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        pid = json.loads(self._read())["pid"]
        if kill_after is not None:
            time.sleep(kill_after)
            os.kill(pid, signal.SIGKILL)  # our own grandchild, not reaped yet: the pid is its
        self.proc.stdin.write("reap\n")
        self.proc.stdin.flush()
        status = json.loads(self._read())["status"]
        elapsed = time.perf_counter() - started
        finished = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        if kill_after is None:
            assert finished, f"an uninterrupted save failed (status {status})"
        return elapsed, finished

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture
def fork_server(tmp_path: Path) -> Iterator[ForkServer]:
    server = ForkServer(tmp_path)
    try:
        yield server
    finally:
        server.close()


def assert_absent_or_complete(path: Path, k: int) -> bool:
    """Either no bundle at ``path``, or one that loads and predicts right. Returns which."""
    if not path.exists():
        return False
    assert cloudflow.load_bundle(path).predict(x=2) == 2 * k
    return True


def assert_no_half_bundle(root: Path) -> None:
    """Every folder that looks like a bundle (has an MLmodel) outside staging folders loads."""
    for mlmodel in root.rglob("MLmodel"):
        folder = mlmodel.parent
        if any(part.startswith(".") for part in folder.relative_to(root).parts):
            continue  # a staging folder of a killed save: hidden, never published
        loaded = cloudflow.load_bundle(folder)
        assert loaded.predict(x=1) == loaded.models["table"]["k"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the kill trials fork")
def test_save_bundle_killed_at_random_moments(fork_server: ForkServer, tmp_path: Path) -> None:
    rng = random.Random(20240611)
    out = tmp_path / "bundles"
    out.mkdir()
    calm, _ = fork_server.trial(
        {"kind": "save", "target": str(out / "calm"), "k": 1, "pad": PAD}, None
    )
    assert assert_absent_or_complete(out / "calm", 1)
    published = 0
    for i in range(SAVE_TRIALS):
        target = out / f"b{i}"
        cmd = {"kind": "save", "target": str(target), "k": i + 2, "pad": PAD}
        fork_server.trial(cmd, kill_after=rng.uniform(0.0, 1.1 * calm))
        published += assert_absent_or_complete(target, i + 2)
        assert_no_half_bundle(out)
    visible = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert set(visible) <= {"calm", *(f"b{i}" for i in range(SAVE_TRIALS))}
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert all(".cloudflow-" in name and name.endswith(".tmp") for name in leftovers)
    print(f"save_bundle kill trials: {SAVE_TRIALS}, published {published}, calm save {calm:.2f}s")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the kill trials fork")
def test_log_bundle_killed_at_random_moments(
    fork_server: ForkServer, tmp_path: Path, mlflow_state: None
) -> None:
    rng = random.Random(20240612)
    store = tmp_path / "store"
    for name in ("calm1", "calm2"):  # the first one also creates the database
        cmd = {"kind": "log", "store": str(store), "target": str(tmp_path / name), "k": 1, "pad": 0}
        calm, _ = fork_server.trial(cmd, None)
    client = mlflow.MlflowClient(tracking_uri=sqlite_uri(store))
    mlflow.set_tracking_uri(sqlite_uri(store))
    statuses: dict[str, int] = {}
    for i in range(LOG_TRIALS):
        k = i + 2
        run_file = tmp_path / f"t{i}.run"
        cmd = {"kind": "log", "store": str(store), "target": str(run_file), "k": k, "pad": 0}
        fork_server.trial(cmd, kill_after=rng.uniform(0.0, 1.1 * calm))
        if not run_file.exists():
            statuses["no run"] = statuses.get("no run", 0) + 1
            continue
        run_id = run_file.read_text().strip()
        try:
            run = client.get_run(run_id)
        except MlflowException:
            statuses["no run"] = statuses.get("no run", 0) + 1
            continue
        models = [
            m
            for m in client.search_logged_models(experiment_ids=[run.info.experiment_id])
            if m.source_run_id == run_id
        ]
        if not models:
            statuses["run, no model"] = statuses.get("run, no model", 0) + 1
        for model in models:
            status = str(model.status)
            statuses[status] = statuses.get(status, 0) + 1
            if status == "READY":  # READY comes last: the files must be there, whole
                folder = Path(model.artifact_location.removeprefix("file://"))
                assert (folder / "MLmodel").is_file()
                assert cloudflow.load_bundle(f"models:/{model.model_id}").predict(x=2) == 2 * k
        try:
            loaded = cloudflow.load_bundle(f"runs:/{run_id}/model")
        except CloudflowError:
            assert not any(str(m.status) == "READY" for m in models)
        else:
            assert loaded.predict(x=2) == 2 * k
        assert_no_half_bundle(store / "artifacts")
    print(f"log_bundle kill trials: {LOG_TRIALS}, outcomes {statuses}, calm save {calm:.2f}s")


# --- failures that raise: nothing is left behind -------------------------------------------------


@pytest.fixture
def lazy_app(user_modules: UserModules) -> Any:
    """A predict function that imports a plugin by a computed name: invisible to the capture."""
    user_modules.write(
        {
            "lazy_app.py": """
                import importlib

                PLUGIN = "7c2"

                def predict(table, x):
                    plugin = importlib.import_module(f"hidden_plugin_{PLUGIN}")
                    return plugin.twice(table["k"] * x)
            """,
            "hidden_plugin_7c2.py": """
                def twice(v):
                    return 2 * v
            """,
        }
    )
    import lazy_app

    assert lazy_app.predict({"k": 3}, x=1) == 6  # works here, where the source is importable
    return lazy_app


def test_verify_fails_the_save_naming_the_missing_module(lazy_app: Any, tmp_path: Path) -> None:
    path = tmp_path / "out" / "bundle"
    with pytest.raises(CaptureError, match=r"'hidden_plugin_7c2'.*include_modules="):
        cloudflow.save_bundle(
            lazy_app.predict, {"table": {"k": 3}}, path, verify=True, input_example={"x": 1}
        )
    assert not path.parent.exists()  # no staging folder, nor the parent the save created
    cloudflow.save_bundle(
        lazy_app.predict,
        {"table": {"k": 3}},
        path,
        verify=True,
        input_example={"x": 1},
        include_modules=["hidden_plugin_7c2"],
    )
    assert cloudflow.load_bundle(path).predict(x=1) == 6


def test_verify_without_example_still_catches_a_module_needed_to_load(
    user_modules: UserModules, tmp_path: Path
) -> None:
    user_modules.write(
        {
            "shapes_7c2.py": """
                class Square:
                    def __init__(self, side):
                        self.side = side
            """,
            "area_app.py": """
                def predict(shape, scale):
                    return shape.side ** 2 * scale
            """,
        }
    )
    import area_app
    import shapes_7c2

    path = tmp_path / "bundle"
    with pytest.raises(CaptureError, match=r"missed the module 'shapes_7c2'"):
        cloudflow.save_bundle(
            area_app.predict,
            {"shape": shapes_7c2.Square(3)},
            path,
            exclude_modules=["shapes_7c2"],
            verify=True,
        )
    assert not path.exists()


def test_verify_fails_log_bundle_and_logs_nothing(
    lazy_app: Any, tmp_path: Path, mlflow_state: None
) -> None:
    store = tmp_path / "store"
    experiment_id = cloudflow.prepare_env(store, "verify")
    with (
        mlflow.start_run(experiment_id=experiment_id) as run,
        pytest.raises(CaptureError, match="hidden_plugin_7c2"),
    ):
        cloudflow.log_bundle(
            lazy_app.predict, {"table": {"k": 3}}, verify=True, input_example={"x": 1}
        )
    client = mlflow.MlflowClient(tracking_uri=sqlite_uri(store))
    assert list(client.search_logged_models(experiment_ids=[experiment_id])) == []
    assert client.list_artifacts(run.info.run_id) == []
    files = [p for p in (store / "artifacts").rglob("*") if p.is_file()]
    assert files == []


def test_verify_names_a_file_read_from_the_working_directory(
    user_modules: UserModules, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A function that reads a file relative to the saving process's cwd fails the check."""
    user_modules.write(
        {
            "vocab_app.py": """
                def predict(table, word):
                    with open("vocab.txt") as f:
                        return word in f.read().split() and table["ok"]
            """
        }
    )
    (user_modules.root / "vocab.txt").write_text("alpha beta\n")
    monkeypatch.chdir(user_modules.root)
    import vocab_app

    path = tmp_path / "bundle"
    named = r"read 'vocab\.txt' \(from the working directory\).*files=\{'vocab': 'vocab\.txt'\}"
    with pytest.raises(CaptureError, match=named):
        cloudflow.save_bundle(
            vocab_app.predict,
            {"table": {"ok": True}},
            path,
            verify=True,
            input_example={"word": "alpha"},
        )
    assert not path.exists()


def test_a_failing_model_leaves_no_staging_folder(tmp_path: Path) -> None:
    import threading

    def predict(lock, x):
        return x

    path = tmp_path / "bundle"
    with pytest.raises(CaptureError, match=r"'lock'.*lock"):
        cloudflow.save_bundle(predict, {"lock": threading.Lock()}, path)
    assert list(tmp_path.iterdir()) == []
