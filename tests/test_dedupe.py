"""Logging an unchanged model again shares its files with the store's earlier bundles.

Large files of bundles logged into one local store are hard links to one file each (see
``cloudflow.store.blobs``). The promise, checked on real stores with saves and loads in separate
processes:

- an unchanged model logged again adds no second copy of its weights: the weights files of the
  two bundles are one file (same device and inode), and the store grows by less than 1 MB;
- a changed model gets files of its own, and each bundle gives its own model's outputs;
- deleting one bundle (its folder removed, as artifact deletion does) leaves every other bundle
  loadable, with the same outputs, and the last save of the experiment frees the space of
  files no bundle holds any more;
- a save that fails leaves no shared file behind, and a store without hard links still saves;
- damage to a shared file shows at the load of every bundle that holds it.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import threading
import time
from pathlib import Path
from typing import Any

import mlflow
import pytest
from helpers import run_snippet

import cloudflow
from cloudflow.exceptions import CaptureError, IntegrityError
from cloudflow.store import blobs as _blobs
from cloudflow.store import tracking as _store

SAVE = """
import sys
import mlflow
import numpy as np
import torch
import cloudflow
from models import tiny_text_pipeline, tiny_torch_mlp

store, full = sys.argv[1], sys.argv[2] == "full"
experiment_id = cloudflow.prepare_env(store, "dedupe")
models = {
    "mlp": tiny_torch_mlp(sizes=(16, 1024, 512, 3)),
    "table": np.arange(300_000, dtype=np.float64),  # a 2.4 MB pickle (the fallback flavor)
}
if full:
    models["text"] = tiny_text_pipeline(hidden=128, vocab_size=4000)


def predict(mlp, table, x, text=None, texts=()):
    with torch.no_grad():
        scores = mlp(torch.tensor(x)).tolist()
    return {"text": text(list(texts)) if text else None, "mlp": scores, "table": float(table.sum())}


texts = ["a good day", "a bad day"]
x = torch.randn(2, 16, generator=torch.Generator().manual_seed(1)).tolist()
runs = {}
for label in ("first", "again", "changed"):
    if label == "changed":
        with torch.no_grad():
            models["mlp"][0].weight.mul_(1.5)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        cloudflow.log_bundle(predict, models)
    runs[label] = {
        "run_id": run.info.run_id,
        "expected": predict(**models, x=x, texts=texts if full else ()),
    }
emit({"runs": runs, "texts": texts if full else [], "x": x})
"""

LOAD = """
import sys
import cloudflow

store, run_id = sys.argv[1], sys.argv[2]
model = cloudflow.cloudflow_model(log_level="ERROR")
model.load_model(tracking_uri=store, experiment_id="dedupe", run_id=run_id)
emit(model.predict(texts=__TEXTS__, x=__X__))
"""

SHARED = (
    "cloudflow/models/text/model.safetensors",
    "cloudflow/models/mlp/weights.safetensors",
    "cloudflow/models/table/model.pkl",
)


def _bundle(store: Path, run_id: str) -> Path:
    uri = _store.resolve_tracking_uri(store)
    location = _store.fast_run_model(uri, run_id, "model")
    assert location is not None
    path = _store.local_path(location.artifact_location)
    assert path is not None
    return path


def _disk_usage(root: Path) -> int:
    """Bytes of the files under ``root``, each inode counted once (as ``du`` does)."""
    seen: dict[tuple[int, int], int] = {}
    for path in root.rglob("*"):
        info = path.lstat()
        if stat.S_ISREG(info.st_mode):
            seen[(info.st_dev, info.st_ino)] = info.st_size
    return sum(seen.values())


def _load(saved: dict[str, Any], label: str) -> Any:
    code = LOAD.replace("__X__", repr(saved["x"])).replace("__TEXTS__", repr(saved["texts"]))
    run_id = saved["runs"][label]["run_id"]
    return run_snippet(code, cwd=saved["cwd"], args=[str(saved["store"]), run_id])


def _save(root: Path, kind: str) -> dict[str, Any]:
    """Three runs logged in a subprocess: a model, the same again, then with a changed weight."""
    store = root / "store"
    tests_dir = Path(__file__).parent
    result = run_snippet(
        SAVE, cwd=root, args=[str(store), kind], env={"PYTHONPATH": str(tests_dir)}
    )
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    return {**result, "store": store, "cwd": elsewhere}


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A transformers pipeline, a torch MLP and a pickled array; tests only read this store."""
    return _save(tmp_path_factory.mktemp("dedupe"), "full")


@pytest.fixture
def own_store(tmp_path: Path, mlflow_state: None) -> dict[str, Any]:
    """The MLP and the array in a store of the test's own, which it may damage or delete from."""
    saved = _save(tmp_path, "small")
    mlflow.set_tracking_uri(_store.resolve_tracking_uri(saved["store"]))
    return saved


def test_an_unchanged_model_logged_again_shares_its_files(saved: dict[str, Any]) -> None:
    runs, store = saved["runs"], saved["store"]
    first, again, changed = (
        _bundle(store, runs[k]["run_id"]) for k in ("first", "again", "changed")
    )
    for rel in SHARED:
        assert (first / rel).stat().st_size >= _blobs.LINK_MIN_SIZE
        assert os.path.samefile(first / rel, again / rel), rel
        assert not (first / rel).stat().st_mode & 0o222, f"{rel} is shared but writable"
    # Only the changed torch model has a file of its own.
    assert not os.path.samefile(first / SHARED[1], changed / SHARED[1])
    assert os.path.samefile(first / SHARED[0], changed / SHARED[0])
    assert os.path.samefile(first / SHARED[2], changed / SHARED[2])
    # The second bundle costs its small files only.
    assert _disk_usage(again) - sum((again / rel).stat().st_size for rel in SHARED) < 1_000_000
    whole = _disk_usage(store)
    unique = _disk_usage(first) + (changed / SHARED[1]).stat().st_size
    assert whole - unique < 3_000_000  # the database and the small files of three bundles


def test_each_bundle_gives_its_own_models_outputs(saved: dict[str, Any]) -> None:
    runs = saved["runs"]
    for label in ("again", "changed"):
        assert _load(saved, label) == runs[label]["expected"], label
    assert runs["again"]["expected"]["mlp"] != runs["changed"]["expected"]["mlp"]
    assert runs["again"]["expected"]["text"] == runs["changed"]["expected"]["text"]


def test_deleting_bundles_leaves_the_others_whole_and_frees_unheld_files(
    own_store: dict[str, Any],
) -> None:
    store, runs = own_store["store"], own_store["runs"]
    first, again, changed = (
        _bundle(store, runs[k]["run_id"]) for k in ("first", "again", "changed")
    )
    blobs = _blobs.blob_folder(first.parents[2])
    old_weights = {p.name for p in blobs.iterdir() if os.path.samefile(p, first / SHARED[1])}
    assert len(old_weights) == 1

    shutil.rmtree(first)  # what deleting a model's artifacts does
    assert _load(own_store, "again") == runs["again"]["expected"]

    # The old MLP weights are now held by `again` only; delete it too, and the next save into
    # the experiment frees them, while the array that `changed` still holds stays.
    shutil.rmtree(again)
    with mlflow.start_run(experiment_id=_experiment_id(store)):
        cloudflow.log_bundle(lambda x: x, {})
    remaining = {p.name for p in blobs.iterdir()}
    assert not old_weights & remaining
    assert any(os.path.samefile(blobs / name, changed / SHARED[2]) for name in remaining)
    assert _load(own_store, "changed") == runs["changed"]["expected"]


def _experiment_id(store: Path) -> str:
    client = mlflow.MlflowClient(_store.resolve_tracking_uri(store))
    return str(client.get_experiment_by_name("dedupe").experiment_id)


def test_damage_to_a_shared_file_shows_in_every_bundle_that_holds_it(
    own_store: dict[str, Any],
) -> None:
    store, runs = own_store["store"], own_store["runs"]
    shared = _bundle(store, runs["first"]["run_id"]) / SHARED[2]
    shared.chmod(0o644)
    with open(shared, "r+b") as f:  # one flipped bit, in place
        f.seek(shared.stat().st_size // 2)
        byte = f.read(1)[0]
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte ^ 0x01]))
    for label in ("first", "again", "changed"):
        with pytest.raises(IntegrityError, match=r"'models/table/model\.pkl'.*blake3 digest"):
            cloudflow.load_bundle(f"runs:/{runs[label]['run_id']}/model")


def _big_table() -> Any:
    import numpy as np

    return np.arange(400_000, dtype=np.float64)


def test_a_failed_save_leaves_no_shared_file(
    tmp_path: Path, mlflow_state: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from models import tiny_torch_mlp

    discarded: list[Path] = []
    real_discard = _blobs.SharedFileLinks.discard_created

    def recording_discard(self: _blobs.SharedFileLinks) -> None:
        discarded.extend(self.created)
        real_discard(self)

    monkeypatch.setattr(_blobs.SharedFileLinks, "discard_created", recording_discard)
    store = tmp_path / "store"
    experiment_id = cloudflow.prepare_env(str(store), "failing")
    lock = threading.Lock()

    def predict(mlp: Any, x: Any) -> Any:
        with lock:  # a lock cannot be pickled: the save fails after the weights were shared
            return mlp(x)

    with (
        mlflow.start_run(experiment_id=experiment_id),
        pytest.raises(CaptureError, match=r"lock"),
    ):
        cloudflow.log_bundle(predict, {"mlp": tiny_torch_mlp(sizes=(16, 1024, 512, 3))})
    assert len(discarded) == 1  # the weights had been entered as a shared file
    artifacts = store / "artifacts" / experiment_id
    assert not (artifacts / _blobs.BLOB_DIR).exists()
    assert _disk_usage(artifacts) == 0


def test_a_store_without_hard_links_still_saves(
    tmp_path: Path, mlflow_state: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(_blobs.os, "link", no_links)
    store = tmp_path / "store"
    experiment_id = cloudflow.prepare_env(str(store), "no-links")
    table = _big_table()
    run_ids = []
    for _ in range(2):
        with mlflow.start_run(experiment_id=experiment_id) as run:
            cloudflow.log_bundle(lambda table, i: float(table[i]), {"table": table})
        run_ids.append(run.info.run_id)
    files = [_bundle(store, r) / "cloudflow/models/table/model.pkl" for r in run_ids]
    assert not os.path.samefile(*files)
    for run_id in run_ids:
        assert cloudflow.load_bundle(f"runs:/{run_id}/model").predict(i=7) == 7.0


RACER = r"""
import os, sys, time
store, out, saves = sys.argv[1], sys.argv[2], int(sys.argv[3])
import mlflow
import numpy as np
import cloudflow
from models import tiny_torch_mlp

mlp = tiny_torch_mlp(sizes=(16, 1024, 512, 3))
table = np.arange(300_000, dtype=np.float64)


def predict(mlp, table, i):
    return float(table[i]) + float(next(mlp.parameters()).detach().sum())


experiment_id = cloudflow.prepare_env(store, "race")
open(out + ".ready", "w").close()
while not os.path.exists(out + ".go"):
    time.sleep(0.01)
runs = []
for _ in range(saves):
    with mlflow.start_run(experiment_id=experiment_id) as run:
        cloudflow.log_bundle(predict, {"mlp": mlp, "table": table})
    runs.append(run.info.run_id)
emit({"runs": runs, "expected": predict(mlp, table, 7)})
"""


@pytest.mark.slow
def test_processes_logging_the_same_model_at_once_share_one_file_each(
    tmp_path: Path, mlflow_state: None
) -> None:
    import concurrent.futures

    store = tmp_path / "store"
    tests_dir = Path(__file__).parent
    outs = [str(tmp_path / f"racer{i}") for i in range(4)]

    def racer(out: str) -> Any:
        return run_snippet(
            RACER, cwd=tmp_path, args=[str(store), out, "4"], env={"PYTHONPATH": str(tests_dir)}
        )

    with concurrent.futures.ThreadPoolExecutor(len(outs)) as pool:
        futures = [pool.submit(racer, out) for out in outs]
        # Start together, once every racer has imported torch and found the store.
        deadline = time.monotonic() + 120
        while not all(Path(out + ".ready").exists() for out in outs):
            assert time.monotonic() < deadline, "the racers did not start"
            for future in futures:
                if future.done():  # a racer that ended early: show why
                    pytest.fail(f"a racer ended before the start: {future.result()!r}")
            time.sleep(0.05)
        for out in outs:
            Path(out + ".go").touch()
        results = [f.result() for f in futures]
    runs = [run for result in results for run in result["runs"]]
    assert len(set(runs)) == 16
    mlflow.set_tracking_uri(_store.resolve_tracking_uri(store))
    for name in ("models/mlp/weights.safetensors", "models/table/model.pkl"):
        files = [_bundle(store, run) / "cloudflow" / name for run in runs]
        inodes = {(f.stat().st_dev, f.stat().st_ino) for f in files}
        assert len(inodes) == 1, f"{name}: {len(inodes)} copies in the store"
    blobs = _blobs.blob_folder(_bundle(store, runs[0]).parents[2])
    assert len(list(blobs.iterdir())) == 3  # the weights, the table, cloudflow's wheel
    expected = results[0]["expected"]
    for run in runs[:: len(runs) // 4]:
        assert cloudflow.load_bundle(f"runs:/{run}/model").predict(i=7) == expected


def test_cloudflow_gc_frees_only_files_no_bundle_holds(own_store: dict[str, Any]) -> None:
    from click.testing import CliRunner

    from cloudflow._units import human_size
    from cloudflow.cli import main

    store, runs = own_store["store"], own_store["runs"]
    first, again, changed = (
        _bundle(store, runs[k]["run_id"]) for k in ("first", "again", "changed")
    )
    old_mlp = (first / SHARED[1]).stat().st_size
    shutil.rmtree(first)
    shutil.rmtree(again)  # the old MLP weights are now held by no bundle
    result = CliRunner().invoke(main, ["gc", "--tracking-uri", str(store)])
    assert result.exit_code == 0, result.output
    assert f"'dedupe' ({_experiment_id(store)}): removed 1 file(s)" in result.output
    assert f"freed {human_size(old_mlp)} (1 file(s) no bundle held)" in result.output
    blobs = _blobs.blob_folder(changed.parents[2])
    held = [changed / rel for rel in SHARED[1:]]
    held += list((changed / "cloudflow" / "runtime").rglob("*.whl"))  # cloudflow's own wheel
    assert sorted(p.stat().st_ino for p in blobs.iterdir()) == sorted(p.stat().st_ino for p in held)
    assert _load(own_store, "changed") == runs["changed"]["expected"]
    again_result = CliRunner().invoke(main, ["gc", "--tracking-uri", str(store)])
    assert again_result.output.strip() == "freed 0 B (0 file(s) no bundle held)"


def test_cloudflow_gc_refuses_a_folder_that_is_no_store(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cloudflow.cli import main

    result = CliRunner().invoke(main, ["gc", "--tracking-uri", str(tmp_path / "nothing")])
    assert result.exit_code != 0
    assert "has no mlflow.db" in result.output
    assert not (tmp_path / "nothing").exists()
