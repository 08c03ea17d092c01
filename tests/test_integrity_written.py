"""A save digests the files it writes itself as it writes them: the seal reads none of them back.

The opens are counted with a real audit hook (``sys.addaudithook``, the ``open`` event every
``open()``, ``io.FileIO`` and ``os.open`` raises), and the file changed behind the save's back is
changed by a real second thread with this user's rights, in the private staging folder itself.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import UserModules
from helpers import outcome, run_snippet

import cloudflow
from cloudflow.exceptions import IntegrityError

torch = pytest.importorskip("torch")

APP = """
    import torch


    class Scaler:
        def __init__(self, k):
            self.k = k


    def predict(scaler, net, x):
        with open("data/table.bin", "rb") as f:
            offset = len(f.read())
        with torch.no_grad():
            y = net(torch.full((1, 4), float(x))).sum().item()
        return round(scaler.k * y + offset, 4)


    def predict_gated(scaler, net, gate, x):
        return predict(scaler, net, x)
"""

#: Whatever calls these hooks lives as long as the process: one hook, switched by a variable.
_OPENS: list[tuple[str, bool]] | None = None
_HOOKED = False


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and _OPENS is not None and isinstance(args[0], str | bytes | os.PathLike):
        path = os.fsdecode(args[0])
        mode, flags = args[1], args[2]
        writes = (
            bool(flags & (os.O_WRONLY | os.O_RDWR))
            if mode is None
            else any(c in mode for c in "wax+")
        )
        _OPENS.append((path, writes))


@pytest.fixture
def opens() -> Iterator[list[tuple[str, bool]]]:
    """Every file opened while the fixture is active: (path, opened for writing)."""
    global _OPENS, _HOOKED
    if not _HOOKED:
        sys.addaudithook(_hook)
        _HOOKED = True
    _OPENS = []
    try:
        yield _OPENS
    finally:
        _OPENS = None


@pytest.fixture
def app(user_modules: UserModules, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    user_modules.write({"written_app.py": APP})
    src = tmp_path / "src"
    (src / "data").mkdir(parents=True)
    (src / "data" / "table.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    monkeypatch.chdir(src)
    import written_app

    return written_app


def _models(app: Any) -> dict[str, object]:
    torch.manual_seed(0)
    return {"scaler": app.Scaler(3), "net": torch.nn.Linear(4, 2)}


def _in_bundle(path: str) -> str | None:
    """The bundle-relative name of a file opened inside a staging folder, if it is one."""
    marker = "/bundle/"
    if (".cloudflow-" not in path and "/proc/" not in path) or marker not in path:
        return None
    return path.split(marker, 1)[1]


def _written_and_read_back(opens: list[tuple[str, bool]]) -> tuple[set[str], list[str]]:
    """The bundle files a save opened for writing, and those of its data folder it opened again
    after writing them (what the seal would have read back)."""
    written: set[str] = set()
    read_back: list[str] = []
    for path, writes in list(opens):
        rel = _in_bundle(path)
        if rel is None:
            continue
        if writes:
            written.add(rel)
        elif rel in written and rel.startswith("cloudflow/"):
            read_back.append(rel)
    return written, read_back


@pytest.mark.parametrize("verb", ["save_bundle", "log_bundle"])
def test_the_seal_reads_back_none_of_the_files_cloudflow_wrote(
    app: Any,
    opens: list[tuple[str, bool]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    verb: str,
) -> None:
    # Flushing to the disk opens every file (it reads none): off, so that every open counted is
    # one that could read.
    monkeypatch.setenv("CLOUDFLOW_FSYNC", "0")
    key = os.urandom(32)
    env: dict[str, str] | None = None
    if verb == "save_bundle":
        target: Any = tmp_path / "release"
        cloudflow.save_bundle(app.predict, _models(app), target, files=["data"], signing_key=key)
    else:
        # log_bundle seals twice: after writing, and once MLflow's MLmodel names the run.
        import mlflow

        store = tmp_path / "store"
        exp_id = cloudflow.prepare_env(str(store), "written")
        opens.clear()
        with mlflow.start_run(experiment_id=exp_id) as run:
            cloudflow.log_bundle(app.predict, _models(app), files=["data"], signing_key=key)
        target = f"runs:/{run.info.run_id}/model"
        env = {"MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}  # for the fresh process
    written, read_back = _written_and_read_back(opens)
    ours = {
        "cloudflow/code.pkl",
        "cloudflow/models/scaler/model.pkl",
        "cloudflow/files/named/data/table.bin",
        "MLmodel",
        "conda.yaml",
        "requirements.txt",
    }
    assert ours <= written, sorted(written)
    assert any(rel.startswith("cloudflow/models/net/") for rel in written), sorted(written)
    assert any(rel.endswith(".whl") for rel in written), sorted(written)
    assert read_back == [], read_back

    # The bundle loads, verified under the key, in a fresh process without the user's source.
    want = app.predict(_models(app)["scaler"], _models(app)["net"], 2)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    results = run_snippet(
        f"""
        import cloudflow
        bundle = cloudflow.load_bundle({str(target)!r}, signing_key=bytes.fromhex({key.hex()!r}))
        attempt("predict", lambda: bundle.predict(x=2))
        emit(results)
        """,
        cwd=elsewhere,
        env=env,
    )
    assert outcome(results, "predict") == want


class _Gate:
    """A model pickled after the data file was written: its pickling lets the second thread
    change that file, then waits until it has."""

    written = threading.Event()
    changed = threading.Event()

    def __reduce__(self) -> tuple[Any, ...]:
        _Gate.written.set()
        assert _Gate.changed.wait(30), "the second thread never changed the file"
        return (int, (0,))


def test_a_file_changed_in_the_staging_folder_after_it_was_written_fails_the_save(
    app: Any, tmp_path: Path
) -> None:
    target = tmp_path / "release"
    data_file = "cloudflow/files/named/data/table.bin"
    errors: list[BaseException] = []

    def change_it() -> None:
        # Another thread of this user: once the data file is written (closed), it finds the
        # staging folder by its name and changes one byte of that file in place.
        try:
            assert _Gate.written.wait(30), "the save never reached the gate"
            (staging,) = tmp_path.glob(".release.cloudflow-*.tmp")
            with open(staging / "bundle" / data_file, "r+b") as f:
                first = f.read(1)
                f.seek(0)
                f.write(bytes([first[0] ^ 0xFF]))
        except BaseException as e:
            errors.append(e)
        _Gate.changed.set()

    _Gate.written.clear()
    _Gate.changed.clear()
    thread = threading.Thread(target=change_it)
    thread.start()
    try:
        changed = r"'files/named/data/table\.bin' was changed after this save wrote it"
        with pytest.raises(IntegrityError, match=changed):
            cloudflow.save_bundle(
                app.predict_gated,
                {**_models(app), "gate": _Gate()},
                target,
                files=["data"],
                signing_key=os.urandom(32),
            )
    finally:
        thread.join(30)
    assert errors == []
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "user_src"]  # no staging left


FLAVOR_APP = """
    import numpy as np


    def predict(session, params, x):
        features = np.full((1, 4), float(x), dtype=np.float32)
        (probabilities,) = session.run(None, {"X": features})
        return round(float(probabilities.sum()) + float(params["layers"][0]["w"].sum()), 4)
"""


def test_an_onnx_session_and_a_jax_tree_are_digested_as_written(
    user_modules: UserModules,
    opens: list[tuple[str, bool]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The two files a flavor used to write in one call by path: the session's model.onnx and
    # the JAX tree's tree.json (its arrays go through the safetensors writer, digested already).
    pytest.importorskip("onnxruntime")
    pytest.importorskip("jax")
    import models

    user_modules.write({"flavor_app.py": FLAVOR_APP})
    import flavor_app

    saved = {"session": models.tiny_onnx_session(), "params": models.tiny_jax_params()}
    want = flavor_app.predict(saved["session"], saved["params"], 2)
    key = os.urandom(32)
    monkeypatch.setenv("CLOUDFLOW_FSYNC", "0")  # flushing opens every file: off, see above
    cloudflow.save_bundle(flavor_app.predict, saved, tmp_path / "release", signing_key=key)
    written, read_back = _written_and_read_back(opens)
    assert {
        "cloudflow/models/session/model.onnx",
        "cloudflow/models/params/tree.json",
        "cloudflow/models/params/arrays.safetensors",
    } <= written, sorted(written)
    assert read_back == [], read_back

    user_modules.forget()
    bundle = cloudflow.load_bundle(tmp_path / "release", signing_key=key)
    assert bundle.predict(x=2) == want
