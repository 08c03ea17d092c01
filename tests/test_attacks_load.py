"""Attacks on the way a bundle is read: each reproduced as it was found, each now refused.

A signed bundle of the release put back in place of a newer one by URI (rollback); a file
swapped between its check and the library that opens it by name; a FIFO where an empty file
was; hostile manifests given to ``inspect``, ``list`` and ``load_bundle``. The bundles hold the
``Tripwire`` model of ``test_attacks.py``, which creates a folder the moment it is unpickled.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import outcome, run_snippet, subprocess_env
from test_attacks import app, in_src, save  # noqa: F401 - the fixtures of the tripwire bundles

HANG_S = 60  # a check that waits on a FIFO would wait forever: fail instead


def cli(*args: str, cwd: Path, key: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m cloudflow ARGS`` in a fresh process, killed (failing the test) if it hangs."""
    return subprocess.run(
        [sys.executable, "-m", "cloudflow", *args],
        cwd=cwd,
        env=subprocess_env({"CLOUDFLOW_SIGNING_KEY": key} if key else None),
        capture_output=True,
        text=True,
        timeout=HANG_S,
    )


# --- rollback by URI ----------------------------------------------------------------------------


def _roll_back(tripwire: Any, tracking_uri: str, folder_of: Any, name: str) -> None:
    """Two releases of one run, both signed with the release key and registered as versions 1
    and 2 of ``name`` (alias ``champion`` on 2); release 1's files copied over release 2's
    (``folder_of(model_id)``: the folder on disk). The signature alone cannot tell them apart:
    each URI's own identity must."""
    import mlflow

    import cloudflow
    from cloudflow.exceptions import IntegrityError

    key = os.urandom(32)
    experiment = f"releases-{name}"
    experiment_id = cloudflow.prepare_env(tracking_uri, experiment)
    infos = []
    with mlflow.start_run(experiment_id=experiment_id) as run:
        for k in (3, 5):
            infos.append(
                cloudflow.log_bundle(
                    tripwire.predict,
                    {
                        "scaler": tripwire.Scaler(k),
                        "wire": tripwire.Tripwire(str(tripwire.SENTINEL)),
                    },
                    files=["data"],
                    signing_key=key,
                    registered_model_name=name,
                )
            )
    client = mlflow.MlflowClient()
    client.set_registered_model_alias(name, "champion", infos[1].registered_model_version)
    run_id = run.info.run_id
    assert cloudflow.load_bundle(f"runs:/{run_id}/model", signing_key=key).predict(x=1) == 6
    old, new = (folder_of(i.model_id) for i in infos)
    shutil.rmtree(new)
    shutil.copytree(old, new)  # release 1, intact and signed, where release 2 was
    refused = rf"with model_id '{infos[0].model_id}', not '{infos[1].model_id}'"
    for uri in (
        f"runs:/{run_id}/model",
        f"models:/{name}/2",
        f"models:/{name}@champion",
        f"models:/{infos[1].model_id}",
    ):
        with pytest.raises(IntegrityError, match=refused):
            cloudflow.load_bundle(uri, signing_key=key)
    seed = cloudflow.cloudflow_model()
    for asked in (run_id, f"models:/{name}@champion"):
        with pytest.raises(IntegrityError, match=refused):
            seed.load_model(tracking_uri, experiment, asked, signing_key=key)
    # Release 1 still loads by its own names.
    assert cloudflow.load_bundle(f"models:/{name}/1", signing_key=key).predict(x=1) == 4
    assert cloudflow.load_bundle(f"models:/{infos[0].model_id}", signing_key=key).predict(x=1) == 4


def test_an_older_signed_release_put_in_the_newest_ones_folder_is_refused_by_every_uri(
    app: Any,  # noqa: F811
    in_src: None,  # noqa: F811
    tmp_path: Path,
    mlflow_state: None,
) -> None:
    import mlflow

    def folder_of(model_id: str) -> Path:
        location = mlflow.MlflowClient().get_logged_model(model_id).artifact_location
        return Path(location.removeprefix("file://"))

    _roll_back(app, str(tmp_path / "store"), folder_of, "rel")


@pytest.mark.slow
def test_an_older_signed_release_on_a_tracking_server_is_refused_by_every_uri(
    app: Any,  # noqa: F811
    in_src: None,  # noqa: F811
    mlflow_server: Any,
    mlflow_state: None,
) -> None:
    """The same on ``mlflow server`` (proxied artifacts): whoever can write the server's
    artifact folder puts release 1 where release 2 is."""
    root = mlflow_server.log.parent / "artifacts"

    def folder_of(model_id: str) -> Path:
        (folder,) = root.glob(f"*/models/{model_id}/artifacts")
        return folder

    _roll_back(app, mlflow_server.url, folder_of, f"rel-{os.urandom(4).hex()}")


# --- a FIFO where a file was --------------------------------------------------------------------

FIFO_LOADS = """
import sys
import cloudflow

key = sys.argv[1]
fifos, intact = sys.argv[2:4], sys.argv[4]
for i, bundle in enumerate(fifos):
    attempt(f"signed {i}", lambda: cloudflow.load_bundle(bundle, signing_key=key).predict(x=1))
    # Unsigned, the data files are hashed in the process-wide pool while the code loads.
    attempt(f"unsigned {i}", lambda: cloudflow.load_bundle(bundle).predict(x=1))
attempt("intact unsigned", lambda: cloudflow.load_bundle(intact).predict(x=1))
attempt("intact signed", lambda: cloudflow.load_bundle(intact, signing_key=key).predict(x=1))
emit(results)
"""


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_where_an_empty_file_was_is_refused_and_starves_no_other_load(
    app: Any,  # noqa: F811
    in_src: None,  # noqa: F811
    tmp_path: Path,
) -> None:
    (tmp_path / "src" / "data" / "empty.txt").write_bytes(b"")
    key = os.urandom(32).hex()
    intact = save(app, tmp_path / "intact", signing_key=key)
    fifos = []
    for i in range(2):
        bundle = save(app, tmp_path / f"fifo{i}", signing_key=key)
        (empty,) = (bundle / "cloudflow").rglob("empty.txt")
        empty.unlink()
        os.mkfifo(empty)  # same name, same size (0): only its kind differs
        fifos.append(bundle)
    results = run_snippet(
        FIFO_LOADS,
        cwd=tmp_path,
        args=[key, *map(str, fifos), str(intact)],
        timeout=HANG_S,
    )
    for name in ("signed 0", "unsigned 0", "signed 1", "unsigned 1"):
        assert not results[name]["ok"], name
        assert "IntegrityError" in results[name]["error"], results[name]["error"]
        assert "is not a regular file (a FIFO)" in results[name]["error"]
    assert outcome(results, "intact unsigned") == 4
    assert outcome(results, "intact signed") == 4
    done = cli("verify", str(fifos[0]), cwd=tmp_path, key=key)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "a FIFO" in done.stdout + done.stderr
    done = cli("inspect", str(fifos[0]), cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "integrity         FAILED" in done.stdout
    assert "a FIFO" in done.stdout
    manifest = fifos[1] / "cloudflow" / "manifest.json"
    manifest.unlink()
    os.mkfifo(manifest)  # the manifest itself
    done = cli("inspect", str(fifos[1]), cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr  # as for any unreadable manifest
    assert "Error: IntegrityError: " in done.stderr
    assert "manifest.json' is not a regular file (a FIFO)" in done.stderr


# --- hostile manifests --------------------------------------------------------------------------

#: Values put in place of each field of a manifest: every JSON type, paths out of the bundle.
HOSTILE = [None, 7, -1, 2.5, True, "x", "../../etc/passwd", [], [3, "x"], {}, {"a": [None]}]


def _fields(value: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The path of every field of a JSON document (dict keys and list indexes)."""
    out = [at] if at else []
    if isinstance(value, dict):
        for key, item in value.items():
            out += _fields(item, (*at, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += _fields(item, (*at, index))
    return out


def _write_manifest(bundle: Path, data: Any) -> None:
    from cloudflow.integrity.manifest import CHECKSUM_KEY, checksum

    if isinstance(data, dict):
        data = {**data, CHECKSUM_KEY: checksum(data)}  # so only the types can give it away
    (bundle / "cloudflow" / "manifest.json").write_text(json.dumps(data), encoding="utf-8")


def _clean(fn: Any) -> str:
    """What ``fn()`` did: "ok", or the CloudflowError it raised (anything else fails the test)."""
    from cloudflow.exceptions import CloudflowError

    try:
        fn()
    except CloudflowError as e:
        return type(e).__name__
    return "ok"


@pytest.mark.slow
def test_hostile_manifests_get_a_clear_error_from_inspect_list_and_load(
    app: Any,  # noqa: F811
    in_src: None,  # noqa: F811
    tmp_path: Path,
    mlflow_state: None,
) -> None:
    """Every field of a real manifest given every JSON type (checksum made to match), and a
    100,000-deep bracket: each answers or raises a CloudflowError naming the damage, and one bad
    bundle leaves ``list`` listing the others."""
    import mlflow

    import cloudflow
    from cloudflow.runtime import inspect as _inspect
    from cloudflow.store import listing as _listing

    store = tmp_path / "store"
    experiment_id = cloudflow.prepare_env(str(store), "hostile")
    with mlflow.start_run(experiment_id=experiment_id):
        good = cloudflow.log_bundle(
            app.predict,
            {"scaler": app.Scaler(3), "wire": app.Tripwire(str(app.SENTINEL))},
            files=["data"],
            model_metadata={"scaler": {"training_history": {"loss": [1.0, 0.5]}, "owner": "a"}},
            metadata={"team": ["x"]},
        )
        bad = cloudflow.log_bundle(
            app.predict,
            {"scaler": app.Scaler(3), "wire": app.Tripwire(str(app.SENTINEL))},
            name="bad",
            files=["data"],
        )
    location = mlflow.MlflowClient().get_logged_model(bad.model_id).artifact_location
    bundle = Path(location.removeprefix("file://"))
    original = json.loads((bundle / "cloudflow" / "manifest.json").read_text(encoding="utf-8"))
    fields = [f for f in _fields(original) if f[0] != "manifest_sha256"]
    rng = random.Random(26)
    trials = [(f, v) for f in fields for v in rng.sample(HOSTILE, 2)]
    trials += [
        ((), "[" * 100_000 + "]" * 100_000),
        (("metadata",), {"deep": [[[[[[[[0]]]]]]]] * 3}),
    ]
    trials += [(("metadata", "deep"), json.loads("[" * 900 + "]" * 900))]
    outcomes: dict[str, int] = {}
    for at, value in trials:
        data = json.loads(json.dumps(original))
        if not at:
            (bundle / "cloudflow" / "manifest.json").write_text(value, encoding="utf-8")
        else:
            holder = data
            for key in at[:-1]:
                holder = holder[key]
            holder[at[-1]] = value
            _write_manifest(bundle, data)
        seen = [
            _clean(lambda: _inspect.format_text(_inspect.describe_folder(bundle))),
            _clean(lambda: cloudflow.load_bundle(bundle, verify=False)),
            _clean(lambda: cloudflow.load_bundle(bundle)),
        ]
        listing = _listing.list_store(store)
        (run,) = listing["experiments"][-1]["runs"]
        rows = {b["name"]: b for b in run["bundles"]}
        assert rows["model"]["unreadable"] is None
        assert rows["model"]["size_bytes"] > 0
        assert "bad" in rows, (at, value)  # listed: as it is, or as unreadable
        _listing.format_text(listing)
        for what in seen:
            outcomes[what] = outcomes.get(what, 0) + 1
    print(f"{len(trials)} hostile manifests:", outcomes)
    assert outcomes.get("IntegrityError", 0) > len(trials)  # most are refused, named
    assert cloudflow.load_bundle(f"models:/{good.model_id}").predict(x=1) == 4


@pytest.mark.skipif(sys.platform != "linux", reason="limits the address space with setrlimit")
def test_inspect_of_a_sparse_huge_code_file_never_reads_it_whole(
    app: Any,  # noqa: F811
    in_src: None,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A 1.5 GiB sparse code.pkl (a few KB on the disk), its size in the manifest: inspect
    hashes it as it streams, in a process limited to 1 GiB that could not hold it."""
    bundle = save(app, tmp_path / "bundle")
    code = bundle / "cloudflow" / "code.pkl"
    size = 3 * 512 * 1024**2
    os.truncate(code, size)
    data = json.loads((bundle / "cloudflow" / "manifest.json").read_text(encoding="utf-8"))
    data["files"]["code.pkl"]["size"] = size
    _write_manifest(bundle, data)
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (1024**3, 1024**3))"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            f"{limit}\nfrom cloudflow.cli import main\nmain()",
            "inspect",
            str(bundle),
        ],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=HANG_S,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "'code.pkl' of the bundle" in done.stdout
    assert "does not match" in done.stdout


# --- a file reopened by name after its check -----------------------------------------------------

KERAS_RACE = """
import os, shutil, subprocess, sys, time
from pathlib import Path

os.environ["KERAS_BACKEND"] = "torch"
import keras
import numpy as np
import cloudflow
from cloudflow.exceptions import IntegrityError

scratch, sentinel, loads = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
key = os.urandom(32)


def net(fn):
    inputs = keras.Input((3,))
    return keras.Model(inputs, keras.layers.Lambda(fn)(inputs))


def predict(net, x):
    return net.predict(np.asarray(x, dtype="float32"), verbose=0).tolist()


bundle = scratch / "bundle"
cloudflow.save_bundle(predict, {"net": net(lambda x: x * 2.0)}, bundle, signing_key=key)
(target,) = (bundle / "cloudflow").rglob("*.keras")
good = scratch / "good.keras"
shutil.copyfile(target, good)
# The attacker's archive: its Lambda's bytecode runs when Keras rebuilds the model.
evil = scratch / "evil.keras"
payload = eval(f"lambda x: (__import__('os').makedirs({sentinel!r}, exist_ok=True), x)[1]")
net(payload).save(evil)
os.rmdir(sentinel)  # made while the attacker saved it
swapper = subprocess.Popen([sys.executable, "-c", '''
import os, shutil, sys
target, good, evil = sys.argv[1:4]
while True:
    for source in (evil, good):
        shutil.copyfile(source, target + ".tmp")
        os.replace(target + ".tmp", target)
''', str(target), str(good), str(evil)])
answers, refused, wrong, tried = 0, 0, 0, 0
try:
    for tried in range(1, loads + 1):
        try:
            got = cloudflow.load_bundle(bundle, signing_key=key).predict(x=[[1.0, 2.0, 3.0]])
        except IntegrityError:
            refused += 1
        else:
            answers += 1
            wrong += got != [[2.0, 4.0, 6.0]]
        if os.path.exists(sentinel):
            break
finally:
    swapper.kill()
    swapper.wait()
emit({"ran": os.path.exists(sentinel), "tried": tried, "answers": answers, "wrong": wrong,
      "refused": refused})
"""


LOADS = 80


@pytest.mark.slow
def test_a_keras_archive_swapped_while_signed_loads_run_never_runs_the_attackers_code(
    tmp_path: Path,
) -> None:
    """Another process swaps model.keras (a Lambda: loaded with safe_mode=False) with an
    attacker's archive and back, in a loop, while signed loads run (the attack succeeded within
    15 to 203 loads when the archive was reopened by name after its check)."""
    if importlib.util.find_spec("keras") is None:
        pytest.skip("keras is not installed")
    sentinel = tmp_path / "ATTACKER_RAN"
    result = run_snippet(
        KERAS_RACE, cwd=tmp_path, args=[str(tmp_path), str(sentinel), str(LOADS)], timeout=600
    )
    assert not result["ran"], result
    assert result["wrong"] == 0, result
    assert result["answers"] + result["refused"] == LOADS
    assert result["refused"] > 0  # the swapper did reach the checks
    assert result["answers"] > 0


SEALED_LOADS = """
import json, os, sys, tempfile
from pathlib import Path

import numpy as np
import cloudflow

bundle, key = sys.argv[1], sys.argv[2]
x = np.random.default_rng(1).random((5, 4)).astype("float32")


def answers(loaded):
    return json.loads(json.dumps(loaded.predict(x=x), default=str))


before = set(os.listdir(tempfile.gettempdir()))
plain = answers(cloudflow.load_bundle(bundle))
signed = answers(cloudflow.load_bundle(bundle, signing_key=key))
lazy = answers(cloudflow.load_bundle(bundle, signing_key=key, lazy=True))
left = sorted(n for n in set(os.listdir(tempfile.gettempdir())) - before if "sealed" in n)
emit({"plain": plain, "signed": signed, "lazy": lazy, "left": left})
"""


@pytest.mark.slow
def test_every_flavor_loads_signed_from_its_checked_files_with_the_same_answers(
    tmp_path: Path, user_modules: Any
) -> None:
    """Under a key each model loads from a private folder of its checked files (copies, and
    the checked descriptors of safetensors weights): the answers are those of an unsigned load,
    lazily too, and nothing is left in the temp dir."""
    import models as built

    import cloudflow

    user_modules.write(
        {
            "sealed_app.py": """
                import numpy as np
                import torch
                import xgboost

                def predict(net, onnx, xgb, lgbm, text, ensemble, x):
                    with torch.no_grad():
                        torch_out = net(torch.from_numpy(x)).tolist()
                    return {
                        "torch": torch_out,
                        "onnx": onnx.run(None, {"X": x})[0].tolist(),
                        "xgb": xgb.predict(xgboost.DMatrix(
                            x[:, :3], feature_names=["sl", "sw", "pl"])).tolist(),
                        "lgbm": lgbm.predict(x[:, :3]).tolist(),
                        "text": str(text("good")),
                        "ensemble": ensemble["by_language"]["en"].predict(x).tolist(),
                    }
            """
        }
    )
    import sealed_app

    key = os.urandom(32).hex()
    bundle = tmp_path / "bundle"
    cloudflow.save_bundle(
        sealed_app.predict,
        {
            "net": built.tiny_torch_mlp(),
            "onnx": built.tiny_onnx_session(),
            "xgb": built.tiny_xgb_booster(),
            "lgbm": built.tiny_lgbm_booster(),
            "text": built.tiny_text_pipeline(),
            "ensemble": built.tiny_ensemble(),
        },
        bundle,
        signing_key=key,
    )
    result = run_snippet(SEALED_LOADS, cwd=tmp_path, args=[str(bundle), key])
    assert result["signed"] == result["plain"]
    assert result["lazy"] == result["plain"]
    assert result["left"] == []
