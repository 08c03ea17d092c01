"""Loading a bundle by run id from a local store reads the weights in place: no copy is made.

MLflow's own loaders download every artifact of a ``runs:/`` URI into a temp folder first, even
when the store is a folder on the same disk. cloudflow promises to read a local store's files where
they are (issue 5). This is checked three independent ways in a fresh process, none of which can
pass by accident:

1. Every tensor of the loaded torch model lives in a memory mapping whose file *is* the weights
   file inside the store (``os.path.samefile`` on the path ``/proc/self/maps`` names, so same
   device and inode). A copy anywhere would be another inode; a read into the heap would be an
   anonymous mapping. A control tensor allocated by the test must fail the same check, which
   shows that the check can say no; and the loaded model's output must equal the saved one's,
   which shows those mapped bytes really are the weights.
2. The loading process wrote fewer bytes than the weights file holds (``wchar`` of
   ``/proc/self/io``, which counts ``write`` and ``sendfile``, so also ``shutil.copy``).
3. No new file of the weights' size appeared anywhere under the test's temp folder, which holds
   the store and the loading process's ``TMPDIR`` (where MLflow would download to).

Linux only: the first two checks read ``/proc``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from helpers import run_snippet

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/maps and io")

EXPERIMENT = "no-copy"

# Saves a seeded MLP (about 4 MB of float32 weights) with the seed API into an embedded store.
SAVE = """
import sys
import mlflow
import torch
import cloudflow

store = sys.argv[1]
torch.manual_seed(0)
mlp = torch.nn.Sequential(
    torch.nn.Linear(1024, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 4)
).eval()


def predict(mlp, x):
    with torch.no_grad():
        return mlp(torch.tensor(x)).tolist()


x = torch.randn(3, 1024, generator=torch.Generator().manual_seed(1)).tolist()
experiment_id = cloudflow.prepare_env(store, sys.argv[2])
with mlflow.start_run(experiment_id=experiment_id) as run:
    cloudflow.cloudflow_model(log_level="ERROR").save(
        tracking_uri=store,
        experiment_id=sys.argv[2],
        run_id=run.info.run_id,
        predict_function=predict,
        models={"mlp": mlp},
    )
emit({"run_id": run.info.run_id, "x": x, "expected": predict(mlp, x)})
"""

# Loads the bundle by run id from the folder store and reports where its tensors live.
LOAD = """
import os
import sys

store, experiment, run_id, weights = sys.argv[1:5]


def written():
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("wchar:")).split()[1])


def backing_file(address):
    # The file mapped at this address, or None for anonymous memory (heap, private arenas).
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split(maxsplit=5)
            start, end = (int(v, 16) for v in fields[0].split("-"))
            if start <= address < end:
                return fields[5].strip() if len(fields) == 6 else None
    return None


def is_weights_file(address):
    path = backing_file(address)
    return bool(path) and os.path.exists(path) and os.path.samefile(path, weights)


import torch  # noqa: E402
import cloudflow  # noqa: E402

before = written()
model = cloudflow.cloudflow_model(log_level="ERROR")
bundle = model.load_model(tracking_uri=store, experiment_id=experiment, run_id=run_id)
after = written()
tensors = list(bundle.models["mlp"].state_dict().items())
control = torch.randn(1024 * 1024)  # as large as a weight matrix, allocated here
emit({
    "written": after - before,
    "bundle_path": str(bundle.path),
    "tensors": {name: is_weights_file(t.data_ptr()) for name, t in tensors},
    "tensor_bytes": sum(t.numel() * t.element_size() for _, t in tensors),
    "backing": {name: backing_file(t.data_ptr()) for name, t in tensors},
    "control": is_weights_file(control.data_ptr()),
    "got": model.predict(x=__import__("json").loads(sys.argv[5])),
})
"""


def _large_files(root: Path, min_size: int) -> dict[tuple[int, int], str]:
    """Files of at least ``min_size`` bytes under root, by (device, inode)."""
    found = {}
    for folder, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            if st.st_size >= min_size:
                found[(st.st_dev, st.st_ino)] = path
    return found


def test_load_by_run_id_maps_the_store_file_and_copies_nothing(tmp_path: Path) -> None:
    import json

    store = tmp_path / "store"
    saved = run_snippet(SAVE, cwd=tmp_path, args=[str(store), EXPERIMENT])

    # The weights file is the one large file the save wrote into the store's artifacts.
    large = _large_files(store / "artifacts", 1024 * 1024)
    assert len(large) == 1, (
        f"expected one weights file in the store, found {sorted(large.values())}"
    )
    weights = Path(next(iter(large.values())))
    weights_size = weights.stat().st_size
    assert weights_size > 4 * 1024 * 1024  # 1024x1024 float32 and more

    # The loading process runs elsewhere, with its temp folder inside tmp_path (checked below).
    (tmp_path / "tmp").mkdir()
    (tmp_path / "elsewhere").mkdir()
    copies_before = _large_files(tmp_path, int(weights_size * 0.9))
    loaded = run_snippet(
        LOAD,
        cwd=tmp_path / "elsewhere",
        env={"TMPDIR": str(tmp_path / "tmp")},
        args=[str(store), EXPERIMENT, saved["run_id"], str(weights), json.dumps(saved["x"])],
    )
    copies_after = _large_files(tmp_path, int(weights_size * 0.9))

    got = [v for row in loaded["got"] for v in row]
    assert got == pytest.approx([v for row in saved["expected"] for v in row], rel=1e-6)
    # 1. Every tensor is a mapping of the store's own file; the control tensor is not.
    assert loaded["control"] is False
    assert loaded["tensors"], "the loaded model has no tensors"
    not_mapped = {n: loaded["backing"][n] for n, ok in loaded["tensors"].items() if not ok}
    assert not not_mapped, f"tensors not mapped from {weights}: {not_mapped}"
    assert loaded["tensor_bytes"] > 0.99 * 1024 * 1024 * 4
    assert Path(loaded["bundle_path"]).resolve().is_relative_to(store.resolve())
    # 2. The load wrote almost nothing (a copy of the weights would be ~weights_size bytes).
    assert loaded["written"] < weights_size // 2, f"the load wrote {loaded['written']} bytes"
    # 3. No file the size of the weights appeared anywhere under tmp_path.
    new = sorted(path for key, path in copies_after.items() if key not in copies_before)
    assert not new, f"the load created copies of the weights: {new}"
