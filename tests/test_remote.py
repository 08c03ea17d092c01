"""Bundles on a tracking server: each large file uploaded once per experiment, downloaded once
per machine, verified.

A real ``mlflow server`` with proxied artifacts runs on 127.0.0.1, behind a byte-counting TCP
proxy (tests/servers.py): every client talks to the proxy, so the bytes each save uploads and
each load downloads are measured on the wire. A user project (a package whose torch net and
lookup table are over 4 MB and 1 MB, so both go to the shared area) is logged from fresh processes
whose source is deleted afterwards; every load runs in a fresh process from another folder, with
a download cache of its own where the test says so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from helpers import assert_same_predictions, run_snippet, subprocess_env
from servers import CountingProxy, model_server, tracking_server

from cloudflow._units import human_size

pytestmark = pytest.mark.slow

EXPERIMENT = "remote-shared"
CASES = [{"text": "the parcel came late"}, {"text": "great value, would buy again"}]
#: What one save of the project sends besides its large files: code, configs, MLflow's calls.
SMALL = 1_000_000

PROJECT = {
    "scorer/__init__.py": "",
    "scorer/net.py": """
        import torch


        class Encoder(torch.nn.Module):
            def __init__(self, width=512, hidden=2048, labels=4):
                super().__init__()
                self.body = torch.nn.Sequential(
                    torch.nn.Linear(width, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, labels)
                )

            def forward(self, x):
                return self.body(x)
        """,
    "scorer/features.py": """
        WIDTH = 512


        def featurize(text):
            out = [0.0] * WIDTH
            for i, ch in enumerate(text.lower()):
                out[(ord(ch) * 31 + i) % WIDTH] += 1.0
            return out
        """,
    "scorer/predict.py": """
        from scorer.features import featurize

        LABELS = ["late", "broken", "happy", "other"]


        def predict(net, table, text):
            import torch

            with torch.no_grad():
                logits = net(torch.tensor([featurize(text)]))[0]
            k = int(logits.argmax())
            return {"label": LABELS[k], "score": round(float(logits[k]) + float(table[k]), 6)}
        """,
}

SAVER = r"""
import json, sys
spec = json.loads(sys.argv[1])
import mlflow, numpy as np, torch
import cloudflow
from scorer.net import Encoder
from scorer.predict import predict

torch.manual_seed(spec["seed"])
net = Encoder().eval()
table = np.linspace(0.0, 1.0, 400_000, dtype=np.float32)  # 1.6 MB: shared too
expected = [predict(net, table, **case) for case in spec["cases"]]
mlflow.set_tracking_uri(spec["tracking_uri"])
mlflow.set_experiment(spec["experiment"])
with mlflow.start_run() as run:
    info = cloudflow.log_bundle(
        predict,
        {"net": net, "table": table},
        share_files=spec.get("share_files", True),
        signing_key=spec.get("signing_key"),
    )
emit({"run_id": run.info.run_id, "model_uri": info.model_uri, "expected": expected})
"""

LOADER = r"""
import json, sys
spec = json.loads(sys.argv[1])
import cloudflow

uri, cases = spec["uri"], spec["cases"]
if spec["way"] == "load_bundle":
    release = None
    if spec.get("busy_checker"):
        # As on a busy machine: the weights' check in the background starts after the load.
        import threading
        from cloudflow.runtime.verifying import VERIFIER

        release = threading.Event()
        for _ in range(VERIFIER._max_workers):
            VERIFIER.submit(release.wait)
    bundle = cloudflow.load_bundle(uri, lazy=spec.get("lazy", False))
    if release is not None:
        release.set()
    emit([bundle.predict(**case) for case in cases])
elif spec["way"] == "pyfunc":
    import mlflow.pyfunc

    emit(mlflow.pyfunc.load_model(uri).predict(cases))
elif spec["way"] == "seed":
    model = cloudflow.cloudflow_model()
    model.load_model(
        tracking_uri=spec["tracking_uri"], experiment_id=spec["experiment"], run_id=spec["run_id"]
    )
    emit([model.predict(**case) for case in cases])
"""


def write_project(root: Path) -> Path:
    for relative, text in PROJECT.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return root


def save(
    project: Path, tracking_uri: str, env: dict[str, str] | None = None, **job: Any
) -> dict[str, Any]:
    """Log the project from a fresh process in ``project``; returns the run, URI and answers."""
    spec = {
        "tracking_uri": tracking_uri,
        "experiment": EXPERIMENT,
        "seed": 0,
        "cases": CASES,
        **job,
    }
    return dict(run_snippet(SAVER, cwd=project, env=env, args=[json.dumps(spec)], timeout=300))


def load(
    where: Path,
    counter: CountingProxy,
    cache: Path,
    way: str = "load_bundle",
    *,
    tracking_uri: str | None = None,
    env: dict[str, str] | None = None,
    **extra: Any,
) -> tuple[Any, int]:
    """Load and predict in a fresh process from ``where``; returns the answers and the bytes
    ``counter`` saw go to clients (the tracking server's proxy, unless another is given)."""
    where.mkdir(parents=True, exist_ok=True)
    tracking_uri = tracking_uri or counter.url
    spec = {"way": way, "cases": CASES, "tracking_uri": tracking_uri, "experiment": EXPERIMENT}
    spec.update(extra)
    full_env = {
        "MLFLOW_TRACKING_URI": tracking_uri,
        "CLOUDFLOW_CACHE_DIR": str(cache),
        **(env or {}),
    }
    counter.reset()
    answers = run_snippet(LOADER, cwd=where, env=full_env, args=[json.dumps(spec)], timeout=300)
    return answers, counter.received


def run_cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``python -m cloudflow ARGS`` in a fresh process, whatever its exit status."""
    return subprocess.run(
        [sys.executable, "-m", "cloudflow", *args],
        cwd=cwd,
        env=subprocess_env(env),
        capture_output=True,
        text=True,
        timeout=300,
    )


def cloudflow_cli(*args: str, cwd: Path, env: dict[str, str]) -> str:
    """``python -m cloudflow ARGS`` in a fresh process; its output (the test fails on an error)."""
    done = run_cli(*args, cwd=cwd, env=env)
    assert done.returncode == 0, done.stderr[-2000:] + done.stdout
    return done.stdout


def area_files(server_root: Path) -> list[Path]:
    found = (server_root / "artifacts").glob("*/.cloudflow-blobs/*")
    return sorted(p for p in found if p.is_file())


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A tracking server with proxied artifacts, behind a counting proxy; the project logged
    twice (same weights, two runs) from fresh processes, its source then deleted."""
    root = tmp_path_factory.mktemp("remote")
    with tracking_server(root / "server") as server, CountingProxy(server.url) as proxy:
        project = write_project(root / "project")
        proxy.reset()
        first = save(project, proxy.url)
        first_upload = proxy.sent
        proxy.reset()
        second = save(project, proxy.url)
        second_upload = proxy.sent
        shutil.rmtree(project)
        yield {
            "root": root,
            "server": server,
            "server_root": root / "server",
            "proxy": proxy,
            "first": first,
            "second": second,
            "uploads": (first_upload, second_upload),
        }


def test_the_second_log_of_an_unchanged_model_uploads_kilobytes(remote: dict[str, Any]) -> None:
    first, second = remote["uploads"]
    shared = area_files(remote["server_root"])
    large = sum(p.stat().st_size for p in shared)
    # The net's weights, the table and cloudflow's wheel (230 KB, over the area's 128 KB).
    assert len(shared) == 3, [p.name for p in shared]
    assert large > 3_500_000
    assert first > large, (first, large)
    assert second < SMALL, f"the second log uploaded {second} bytes"
    # Each bundle's own folder holds no large file: they are in the area only.
    for run in ("first", "second"):
        folders = list(
            (remote["server_root"] / "artifacts").glob(
                f"*/models/{remote[run]['model_uri'].split('/')[-1]}/artifacts"
            )
        )
        assert len(folders) == 1
        sizes = [p.stat().st_size for p in folders[0].rglob("*") if p.is_file()]
        assert max(sizes) < 1024 * 1024


def test_the_area_holds_files_by_digest_with_the_manifest_naming_them(
    remote: dict[str, Any],
) -> None:
    model_id = remote["first"]["model_uri"].split("/")[-1]
    (folder,) = (remote["server_root"] / "artifacts").glob(f"*/models/{model_id}/artifacts")
    manifest = json.loads((folder / "cloudflow" / "manifest.json").read_text())
    assert manifest["format_version"] == 4
    assert manifest["shared"]["area"].endswith("/.cloudflow-blobs")
    assert manifest["shared"]["area"].startswith("mlflow-artifacts:")
    digests = {manifest["files"][rel]["blake3"] for rel in manifest["shared"]["files"]}
    assert digests == {p.name for p in area_files(remote["server_root"])}


def test_a_load_downloads_each_large_file_once_per_machine(
    remote: dict[str, Any], tmp_path: Path
) -> None:
    proxy, cache = remote["proxy"], tmp_path / "cache"
    large = sum(p.stat().st_size for p in area_files(remote["server_root"]))
    first_uri = f"runs:/{remote['first']['run_id']}/model"
    answers, first = load(tmp_path / "a", proxy, cache, uri=first_uri)
    assert_same_predictions(answers, CASES, remote["first"]["expected"])
    assert first > large
    answers, again = load(tmp_path / "b", proxy, cache, uri=first_uri)
    assert_same_predictions(answers, CASES, remote["first"]["expected"])
    assert again < SMALL, f"the second load downloaded {again} bytes"
    # Another run with the same weights: its small files only.
    other_uri = f"runs:/{remote['second']['run_id']}/model"
    answers, other = load(tmp_path / "c", proxy, cache, uri=other_uri)
    assert_same_predictions(answers, CASES, remote["second"]["expected"])
    assert other < SMALL, f"a run sharing the weights downloaded {other} bytes"
    cached = sorted(p.name for p in (cache / "files" / "blobs").iterdir())
    assert cached == sorted(p.name for p in area_files(remote["server_root"]))
    # One put-together folder per bundle, kept for the next load; nothing half-built left.
    bundles = sorted(p.name for p in (cache / "files" / "bundles").iterdir() if p.is_dir())
    assert len(bundles) == 2, bundles
    assert not [b for b in bundles if b.startswith(".")], bundles


def test_a_repeat_load_reads_the_weights_as_a_local_store_does_without_hashing_them(
    remote: dict[str, Any], tmp_path: Path
) -> None:
    """The first load hashes each file as it streams and enters it in the digest cache; the
    next load checks the same files through the cache, as a load from a local store does."""
    cache = tmp_path / "cache"
    uri = f"runs:/{remote['first']['run_id']}/model"
    load(tmp_path / "a", remote["proxy"], cache, uri=uri)
    code = r"""
import json, sys
from cloudflow.integrity import digests as _digests
hashed = []
real = _digests._hash_open_file
def spy(path, *args, **kwargs):
    hashed.append(str(path))
    return real(path, *args, **kwargs)
_digests._hash_open_file = spy
import cloudflow
b = cloudflow.load_bundle(sys.argv[1])
emit({"answers": [b.predict(**c) for c in json.loads(sys.argv[2])], "hashed": hashed})
"""
    got = run_snippet(
        code,
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": remote["proxy"].url, "CLOUDFLOW_CACHE_DIR": str(cache)},
        args=[uri, json.dumps(CASES)],
    )
    assert_same_predictions(got["answers"], CASES, remote["first"]["expected"])
    assert not [p for p in got["hashed"] if p.endswith(".safetensors")], got["hashed"]


@pytest.mark.parametrize("changed", ["small file", "large file"])
def test_a_changed_folder_in_the_cache_is_put_together_again(
    remote: dict[str, Any], tmp_path: Path, changed: str
) -> None:
    proxy, cache = remote["proxy"], tmp_path / "cache"
    uri = f"runs:/{remote['first']['run_id']}/model"
    load(tmp_path / "a", proxy, cache, uri=uri)
    (folder,) = [p for p in (cache / "files" / "bundles").iterdir() if p.is_dir()]
    files = sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    victim = files[-1] if changed == "large file" else folder / "cloudflow" / "code.pkl"
    os.chmod(victim, 0o600)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 1
    victim.write_bytes(bytes(data))  # a large file is the cache's own file: it changes too
    answers, downloaded = load(tmp_path / "b", proxy, cache, uri=uri)
    assert_same_predictions(answers, CASES, remote["first"]["expected"])
    if changed == "large file":
        assert downloaded > 1024 * 1024  # its sound copy came from the server again
    else:
        assert downloaded < SMALL


@pytest.mark.parametrize("way", ["seed", "pyfunc"])
def test_every_load_path_takes_the_shared_files_from_the_cache(
    remote: dict[str, Any], tmp_path: Path, way: str
) -> None:
    proxy, cache = remote["proxy"], tmp_path / "cache"
    run_id = remote["first"]["run_id"]
    uri = f"runs:/{run_id}/model"
    answers, first = load(tmp_path / "a", proxy, cache, way, uri=uri, run_id=run_id)
    assert_same_predictions(answers, CASES, remote["first"]["expected"])
    answers, again = load(tmp_path / "b", proxy, cache, way, uri=uri, run_id=run_id)
    assert_same_predictions(answers, CASES, remote["first"]["expected"])
    assert again < SMALL < first, (first, again)


def test_eight_processes_starting_at_once_download_each_file_once(
    remote: dict[str, Any], tmp_path: Path
) -> None:
    proxy, cache = remote["proxy"], tmp_path / "cache"
    large = sum(p.stat().st_size for p in area_files(remote["server_root"]))
    spec = {
        "way": "load_bundle",
        "cases": CASES,
        "uri": f"runs:/{remote['first']['run_id']}/model",
    }
    env = subprocess_env({"MLFLOW_TRACKING_URI": proxy.url, "CLOUDFLOW_CACHE_DIR": str(cache)})
    script = tmp_path / "load.py"
    script.write_text(
        "import json, sys\nimport cloudflow\nspec = json.loads(sys.argv[1])\n"
        "b = cloudflow.load_bundle(spec['uri'])\n"
        "print(json.dumps([b.predict(**c) for c in spec['cases']]))\n"
    )
    proxy.reset()
    processes = [
        subprocess.Popen(
            [sys.executable, str(script), json.dumps(spec)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(8)
    ]
    outputs = [p.communicate(timeout=400) for p in processes]
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err[-2000:]
        assert_same_predictions(json.loads(out), CASES, remote["first"]["expected"])
    # One copy of each large file, plus eight times the small files and MLflow's calls.
    assert proxy.received < large + 8 * SMALL, (proxy.received, large)
    assert proxy.received > large


def test_share_files_false_uploads_the_whole_bundle(remote: dict[str, Any], tmp_path: Path) -> None:
    project = write_project(tmp_path / "project")
    proxy = remote["proxy"]
    proxy.reset()
    whole = save(project, proxy.url, share_files=False)
    uploaded = proxy.sent
    shutil.rmtree(project)
    model_id = whole["model_uri"].split("/")[-1]
    (folder,) = (remote["server_root"] / "artifacts").glob(f"*/models/{model_id}/artifacts")
    manifest = json.loads((folder / "cloudflow" / "manifest.json").read_text())
    assert manifest["shared"] == {}
    assert manifest["format_version"] == 3
    assert uploaded > 3_500_000
    # Downloaded whole into a temporary folder, which goes once nothing reads it: not before
    # the weights are checked, nor while lazy models are still to load from it.
    temp = tmp_path / "tmp"
    temp.mkdir()
    for way in ({}, {"busy_checker": True}, {"lazy": True}):
        answers, _ = load(
            tmp_path / "a",
            proxy,
            tmp_path / "cache",
            uri=f"runs:/{whole['run_id']}/model",
            env={"TMPDIR": str(temp)},
            **way,
        )
        assert_same_predictions(answers, CASES, whole["expected"])
        assert list(temp.iterdir()) == [], way  # nothing left of the download
    assert not (tmp_path / "cache" / "files" / "blobs").exists() or not list(
        (tmp_path / "cache" / "files" / "blobs").iterdir()
    )


def test_inspect_over_http_names_the_shared_files_without_downloading_them(
    remote: dict[str, Any], tmp_path: Path
) -> None:
    proxy = remote["proxy"]
    env = {"CLOUDFLOW_CACHE_DIR": str(tmp_path / "cache")}
    proxy.reset()
    uri = f"runs:/{remote['first']['run_id']}/model"
    out = cloudflow_cli("inspect", uri, "--tracking-uri", proxy.url, cwd=tmp_path, env=env)
    large = sum(p.stat().st_size for p in area_files(remote["server_root"]))
    assert "the 3 shared on the server are checked as a load downloads them" in out
    assert f"shared files      3 ({human_size(large)}) in mlflow-artifacts:/" in out
    assert "format 4" in out
    assert proxy.received < SMALL


def test_a_downloaded_folder_loads_through_the_server_it_was_logged_to(
    remote: dict[str, Any], tmp_path: Path
) -> None:
    """``mlflow artifacts download`` gives the small files; the load finds the server in the
    manifest (no tracking URI set in the loading process) and fetches the rest."""
    proxy = remote["proxy"]
    download = r"""
import sys
import mlflow
emit(mlflow.artifacts.download_artifacts(artifact_uri=sys.argv[1], dst_path=sys.argv[2]))
"""
    folder = run_snippet(
        download,
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": proxy.url},
        args=[f"runs:/{remote['first']['run_id']}/model", str(tmp_path / "copy")],
    )
    assert max(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) < 1024 * 1024
    code = r"""
import json, sys
import cloudflow
b = cloudflow.load_bundle(sys.argv[1])
emit([b.predict(**c) for c in json.loads(sys.argv[2])])
"""
    answers = run_snippet(
        code,
        cwd=tmp_path,
        env={"CLOUDFLOW_CACHE_DIR": str(tmp_path / "cache")},
        args=[folder, json.dumps(CASES)],
    )
    assert_same_predictions(answers, CASES, remote["first"]["expected"])


def test_export_writes_a_bundle_that_loads_with_no_server(
    remote: dict[str, Any], tmp_path: Path
) -> None:
    proxy = remote["proxy"]
    target = tmp_path / "exported"
    env = {"CLOUDFLOW_CACHE_DIR": str(tmp_path / "cache")}
    uri = f"runs:/{remote['first']['run_id']}/model"
    out = cloudflow_cli(
        "export", uri, str(target), "--tracking-uri", proxy.url, cwd=tmp_path, env=env
    )
    assert "exported" in out
    sizes = sorted(p.stat().st_size for p in target.rglob("*") if p.is_file())
    assert sizes[-1] > 1024 * 1024  # the large files are in it
    # No server, no cache: a machine that never saw either.
    code = r"""
import json, sys
import cloudflow
b = cloudflow.load_bundle(sys.argv[1])
emit([b.predict(**c) for c in json.loads(sys.argv[2])])
"""
    proxy.reset()
    answers = run_snippet(
        code,
        cwd=tmp_path,
        env={
            "CLOUDFLOW_CACHE_DIR": str(tmp_path / "other-cache"),
            "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",  # nothing listens there
        },
        args=[str(target), json.dumps(CASES)],
    )
    assert proxy.received == 0  # nothing came from the server the bundle was logged to
    assert_same_predictions(answers, CASES, remote["first"]["expected"])
    assert not (tmp_path / "other-cache" / "files" / "blobs").exists() or not list(
        (tmp_path / "other-cache" / "files" / "blobs").iterdir()
    )


def test_a_signed_bundle_on_the_server_verifies_and_loads_under_its_key(
    remote: dict[str, Any], tmp_path: Path
) -> None:
    key = "a-team-secret-of-enough-length-0123456789"
    project = write_project(tmp_path / "project")
    signed = save(project, remote["proxy"].url, signing_key=key)
    shutil.rmtree(project)
    uri = f"runs:/{signed['run_id']}/model"
    env = {"CLOUDFLOW_CACHE_DIR": str(tmp_path / "cache"), "CLOUDFLOW_SIGNING_KEY": key}
    out = cloudflow_cli("verify", uri, "--tracking-uri", remote["proxy"].url, cwd=tmp_path, env=env)
    assert out.startswith("ok: ")
    answers, _ = load(
        tmp_path / "a",
        remote["proxy"],
        tmp_path / "cache",
        uri=uri,
        env={"CLOUDFLOW_SIGNING_KEY": key},
    )
    assert_same_predictions(answers, CASES, signed["expected"])
    wrong = load_fails(
        uri,
        remote["proxy"].url,
        tmp_path / "cache",
        tmp_path / "b",
        key="another-secret-of-enough-length-9876543210",
    )
    assert wrong["error"] == "IntegrityError", wrong


def test_signing_a_server_bundle_is_refused_with_the_fix_and_leaves_no_download(
    remote: dict[str, Any], tmp_path: Path
) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    done = run_cli(
        "sign",
        f"runs:/{remote['first']['run_id']}/model",
        "--tracking-uri",
        remote["proxy"].url,
        cwd=tmp_path,
        env={"CLOUDFLOW_SIGNING_KEY": "k" * 40, "TMPDIR": str(temp)},
    )
    assert done.returncode != 0
    assert "is stored on a server: sign it where it is saved (signing_key= at save" in done.stderr
    assert list(temp.iterdir()) == []  # the download made to find out is gone


def test_a_bundle_from_the_server_answers_through_mlflow_models_serve(
    remote: dict[str, Any], tmp_path: Path
) -> None:
    uri = f"runs:/{remote['first']['run_id']}/model"
    with model_server(uri, tmp_path / "serve.log", tracking_uri=remote["proxy"].url) as scoring:
        status, answer = scoring.post_json("/invocations", {"inputs": CASES})
    assert status == 200, answer
    assert_same_predictions(answer["predictions"], CASES, remote["first"]["expected"])


SPARK = r"""
import json, os, sys
spec = json.loads(sys.argv[1])
os.environ["PYSPARK_PYTHON"] = os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
import mlflow.pyfunc
from pyspark.sql import SparkSession

spark = (
    SparkSession.builder.master("local[1]")
    .appName("cloudflow-remote")
    .config("spark.driver.memory", "1g")
    .config("spark.ui.enabled", "false")
    .config("spark.driver.host", "127.0.0.1")
    .config("spark.driver.bindAddress", "127.0.0.1")
    .getOrCreate()
)
spark.sparkContext.setLogLevel("ERROR")
try:
    df = spark.createDataFrame([(c["text"],) for c in spec["cases"]], "text string").coalesce(1)
    udf = mlflow.pyfunc.spark_udf(
        spark, spec["uri"], result_type="label string, score double", env_manager="local"
    )
    rows = df.withColumn("p", udf("text")).collect()
    emit([row.p.asDict(recursive=True) for row in rows])
finally:
    spark.stop()
"""


def test_a_bundle_from_the_server_scores_through_spark_udf(
    remote: dict[str, Any], tmp_path: Path
) -> None:
    spec = {"uri": f"runs:/{remote['first']['run_id']}/model", "cases": CASES}
    env = {"MLFLOW_TRACKING_URI": remote["proxy"].url, "CLOUDFLOW_CACHE_DIR": str(tmp_path / "c")}
    answers = run_snippet(SPARK, cwd=tmp_path, env=env, args=[json.dumps(spec)], timeout=400)
    assert_same_predictions(answers, CASES, remote["first"]["expected"])


# --- faults ------------------------------------------------------------------------------------

FAULT_LOADER = r"""
import json, sys
import cloudflow
try:
    cloudflow.load_bundle(sys.argv[1]).predict(text="x")
except cloudflow.CloudflowError as e:
    emit({"error": type(e).__name__, "message": str(e)})
else:
    emit({"error": None})
"""


def load_fails(
    uri: str, tracking_uri: str, cache: Path, where: Path, key: str | None = None
) -> dict[str, Any]:
    where.mkdir(parents=True, exist_ok=True)
    env = {
        **({"CLOUDFLOW_SIGNING_KEY": key} if key else {}),
        "MLFLOW_TRACKING_URI": tracking_uri,
        "CLOUDFLOW_CACHE_DIR": str(cache),
        # One try: the server is gone for good, MLflow's retries would only wait.
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    }
    return dict(run_snippet(FAULT_LOADER, cwd=where, env=env, args=[uri]))


def cache_is_clean(cache: Path) -> list[str]:
    """Names in the cache's file folder: no file under a digest name, no partial download."""
    blobs = cache / "files" / "blobs"
    return sorted(p.name for p in blobs.iterdir()) if blobs.is_dir() else []


@pytest.mark.parametrize("damage", ["altered", "truncated"])
def test_a_damaged_file_on_the_server_is_refused_and_never_cached(
    remote: dict[str, Any], tmp_path: Path, damage: str
) -> None:
    weights = max(area_files(remote["server_root"]), key=lambda p: p.stat().st_size)
    original = weights.read_bytes()
    try:
        os.chmod(weights, 0o644)
        if damage == "altered":
            middle = len(original) // 2
            weights.write_bytes(
                original[:middle] + bytes([original[middle] ^ 1]) + original[middle + 1 :]
            )
        else:
            weights.write_bytes(original[: len(original) // 3])
        uri = f"runs:/{remote['first']['run_id']}/model"
        got = load_fails(uri, remote["proxy"].url, tmp_path / "cache", tmp_path / "a")
    finally:
        weights.write_bytes(original)
    assert got["error"] == "IntegrityError", got
    assert "is not the file the bundle's manifest names" in got["message"]
    assert weights.name[:16] in got["message"]
    assert weights.name not in cache_is_clean(tmp_path / "cache")
    assert not [n for n in cache_is_clean(tmp_path / "cache") if n.startswith(".partial")]


def test_a_file_missing_from_the_area_is_named_with_the_fix(
    remote: dict[str, Any], tmp_path: Path
) -> None:
    table = min(area_files(remote["server_root"]), key=lambda p: p.stat().st_size)
    moved = table.with_name("moved-away")
    os.rename(table, moved)
    try:
        uri = f"runs:/{remote['first']['run_id']}/model"
        got = load_fails(uri, remote["proxy"].url, tmp_path / "cache", tmp_path / "a")
    finally:
        os.rename(moved, table)
    assert got["error"] == "NotFoundError", got
    assert f"has no file {table.name[:16]}..." in got["message"]
    assert "Log the model again" in got["message"]
    assert not [n for n in cache_is_clean(tmp_path / "cache") if n.startswith(".partial")]


def test_a_server_gone_mid_download_gives_a_clear_error_and_keeps_nothing(
    remote: dict[str, Any], tmp_path: Path
) -> None:
    uri = f"runs:/{remote['first']['run_id']}/model"
    cache = tmp_path / "cache"
    # The bundle's small files arrive, then the connection drops inside the large ones.
    with CountingProxy(remote["server"].url, cut_after=1_500_000) as cutting:
        got = load_fails(uri, cutting.url, cache, tmp_path / "a")
    assert got["error"] == "StoreError", got
    assert "Could not download" in got["message"]
    assert "nothing half-written was kept" in got["message"]
    names = cache_is_clean(cache)
    assert not [n for n in names if n.startswith(".partial")], names
    # The cache is not poisoned: the next load, the server back, answers.
    answers, _ = load(tmp_path / "b", remote["proxy"], cache, uri=uri)
    assert_same_predictions(answers, CASES, remote["first"]["expected"])


def test_a_full_cache_disk_gives_a_clear_error_and_keeps_nothing(
    remote: dict[str, Any], tmp_path: Path
) -> None:
    cache = tmp_path / "small-disk"
    cache.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(cache)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a 2 MB tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        uri = f"runs:/{remote['first']['run_id']}/model"
        got = load_fails(uri, remote["proxy"].url, cache, tmp_path / "a")
        names = cache_is_clean(cache)
    finally:
        subprocess.run(["umount", str(cache)], check=True)
    assert got["error"] == "CacheError", got
    assert "ran out of disk space" in got["message"]
    assert "cloudflow cache prune" in got["message"]
    assert not [n for n in names if n.startswith(".partial")], names


# --- clean-up and the cache's limit ----------------------------------------------------------


def test_gc_over_http_frees_what_no_bundle_names_and_keeps_the_rest(
    remote: dict[str, Any], tmp_path: Path
) -> None:
    import mlflow

    from cloudflow.store import remote as _remote

    proxy = remote["proxy"]
    project = write_project(tmp_path / "project")
    gone = save(project, proxy.url, seed=1, experiment="remote-gc")
    kept = save(project, proxy.url, seed=2, experiment="remote-gc")
    shutil.rmtree(project)
    client = mlflow.MlflowClient(proxy.url)
    experiment = client.get_experiment_by_name("remote-gc")
    root = remote["server_root"] / "artifacts" / experiment.experiment_id / ".cloudflow-blobs"
    before = {p.name: p.stat().st_size for p in root.iterdir() if p.is_file()}
    assert len(before) == 4  # two nets; one table and the cloudflow wheel both share
    client.delete_logged_model(gone["model_uri"].split("/")[-1])

    def gc() -> str:
        env = {"CLOUDFLOW_CACHE_DIR": str(tmp_path / "cache")}
        return cloudflow_cli("gc", "--tracking-uri", proxy.url, cwd=tmp_path, env=env)

    # A save in progress announced the deleted net's weights: they stay.
    (orphan,) = _digests_of(remote, gone) - _digests_of(remote, kept)
    area = _remote.Area(f"mlflow-artifacts:/{experiment.experiment_id}/.cloudflow-blobs", proxy.url)
    repo = area.repository()
    marker = _remote._announce(area, repo, [orphan], tmp_path)
    assert "freed 0 B" in gc()
    assert orphan in {p.name for p in root.iterdir()}
    _remote._withdraw(area, repo, marker)
    out = gc()
    after = {p.name for p in root.iterdir() if p.is_file()}
    assert after == set(before) - {orphan}, out
    assert f"freed {before[orphan] / 1e6:.1f} MB (1 file(s)" in out
    answers, _ = load(
        tmp_path / "a", proxy, tmp_path / "cache", uri=f"runs:/{kept['run_id']}/model"
    )
    assert_same_predictions(answers, CASES, kept["expected"])


def _digests_of(remote: dict[str, Any], saved: dict[str, Any]) -> set[str]:
    model_id = saved["model_uri"].split("/")[-1]
    (folder,) = (remote["server_root"] / "artifacts").glob(f"*/models/{model_id}/artifacts")
    manifest = json.loads((folder / "cloudflow" / "manifest.json").read_text())
    return {manifest["files"][rel]["blake3"] for rel in manifest["shared"]["files"]}


def test_the_cache_keeps_to_its_limit_and_prunes_on_demand(
    remote: dict[str, Any], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    uri = f"runs:/{remote['first']['run_id']}/model"
    where = tmp_path / "a"
    where.mkdir()
    spec = {"way": "load_bundle", "cases": CASES, "uri": uri}
    env = {
        "MLFLOW_TRACKING_URI": remote["proxy"].url,
        "CLOUDFLOW_CACHE_DIR": str(cache),
        "CLOUDFLOW_CACHE_MAX_SIZE": "2.5MB",
    }
    # 5.8 MB of files through a 2.5 MB cache: the bundle loads, the cache keeps to its limit
    # once the next download makes room.
    answers = run_snippet(LOADER, cwd=where, env=env, args=[json.dumps(spec)])
    assert_same_predictions(answers, CASES, remote["first"]["expected"])

    def cli(*args: str) -> str:
        return cloudflow_cli("cache", *args, cwd=tmp_path, env=env)

    cli("prune")
    sizes = [p.stat().st_size for p in (cache / "files" / "blobs").iterdir()]
    assert sum(sizes) <= 2_500_000, sizes
    assert "limit     2.5 MB" in cli("info")
    out = cli("prune", "--max-size", "0")
    assert "the cache holds 0 file(s)" in out
    assert "files     0 (0 B)" in cli("info")


# --- attacks through the download cache --------------------------------------------------------

ONE_LOAD = r"""
import json, os, sys
import cloudflow
spec = json.loads(sys.argv[1])
try:
    answer = cloudflow.load_bundle(spec["uri"], verify=spec["verify"]).predict(**spec["case"])
except Exception as e:  # whatever it raised, say whether the copy's code ran
    emit({"error": type(e).__name__, "message": str(e), "ran": os.path.exists(spec["sentinel"])})
else:
    emit({"error": None, "answer": answer, "ran": os.path.exists(spec["sentinel"])})
"""


def _bundle_folder(remote: dict[str, Any], model_uri: str) -> Path:
    model_id = model_uri.removeprefix("models:/")
    (folder,) = (remote["server_root"] / "artifacts").glob(f"*/models/{model_id}/artifacts")
    return folder


KEY = "a-team-secret-of-enough-length-0123456789"


@pytest.fixture(scope="module")
def signed(remote: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The project logged once more, signed with :data:`KEY`; its source then deleted."""
    project = write_project(tmp_path_factory.mktemp("signed") / "project")
    saved = save(project, remote["proxy"].url, signing_key=KEY)
    shutil.rmtree(project)
    return saved


def test_a_refused_copy_leaves_nothing_in_the_cache_that_a_later_load_runs(
    remote: dict[str, Any], signed: dict[str, Any], tmp_path: Path
) -> None:
    """A copy carrying a signed bundle's genuine manifest and signature, with another code.pkl,
    is refused under the key; the genuine bundle's next unverified load runs its own code."""
    import pickle

    key = KEY
    sentinel = tmp_path / "RAN-THE-COPY'S-CODE"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (eval, (f"__import__('os').mkdir({str(sentinel)!r}) or (lambda **kw: 0)",))

    copy = tmp_path / "copy"
    shutil.copytree(_bundle_folder(remote, signed["model_uri"]), copy)  # its small files
    (copy / "cloudflow" / "code.pkl").write_bytes(pickle.dumps(Payload()) + pickle.dumps(None))
    cache = tmp_path / "cache"
    env = {"MLFLOW_TRACKING_URI": remote["proxy"].url, "CLOUDFLOW_CACHE_DIR": str(cache)}

    def one_load(uri: str, verify: bool, **extra: str) -> dict[str, Any]:
        spec = {"uri": uri, "verify": verify, "sentinel": str(sentinel), "case": CASES[0]}
        where = tmp_path / f"load-{len(list(tmp_path.glob('load-*')))}"
        where.mkdir()
        return dict(run_snippet(ONE_LOAD, cwd=where, env={**env, **extra}, args=[json.dumps(spec)]))

    refused = one_load(str(copy), True, CLOUDFLOW_SIGNING_KEY=key)
    assert refused["error"] == "IntegrityError", refused
    assert "code.pkl" in refused["message"]
    assert not refused["ran"]
    genuine = one_load(f"runs:/{signed['run_id']}/model", False)
    assert not genuine["ran"], "the genuine bundle's load ran the refused copy's code"
    assert genuine["error"] is None, genuine
    assert_same_predictions([genuine["answer"]], CASES[:1], signed["expected"][:1])


def test_verify_checks_the_signature_before_it_fetches_prunes_or_allocates_anything(
    remote: dict[str, Any], signed: dict[str, Any], tmp_path: Path
) -> None:
    """A copy of a signed bundle whose manifest names another host and claims 10 TB per file
    (its checksum made right again): ``cloudflow verify`` refuses it (exit 2) without a request
    to that host, without pruning the download cache, without a byte downloaded."""
    import socket
    import threading

    from cloudflow.integrity import manifest as _manifest

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    asked: list[bytes] = []
    stop = threading.Event()

    def answer() -> None:  # the other host: records what reaches it
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                asked.append(conn.recv(4096))
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    copy = tmp_path / "copy"
    shutil.copytree(_bundle_folder(remote, signed["model_uri"]), copy)
    path = copy / "cloudflow" / "manifest.json"
    data = json.loads(path.read_text())
    port = listener.getsockname()[1]
    data["shared"]["area"] = f"http://127.0.0.1:{port}/elsewhere/.cloudflow-blobs"
    data["shared"]["server"] = f"http://127.0.0.1:{port}"
    for rel in data["shared"]["files"]:
        data["files"][rel]["size"] = 10**13
    data[_manifest.CHECKSUM_KEY] = _manifest.checksum(data)
    path.write_text(json.dumps(data))
    cache = tmp_path / "cache"
    kept = cache / "files" / "blobs" / ("ab" * 32)
    kept.parent.mkdir(parents=True)
    cache.chmod(0o700)
    (cache / "files").chmod(0o700)
    kept.write_bytes(b"a file another bundle needs")
    env = {"CLOUDFLOW_CACHE_DIR": str(cache), "CLOUDFLOW_SIGNING_KEY": KEY}
    try:
        done = run_cli("verify", str(copy), cwd=tmp_path, env=env)
    finally:
        stop.set()
        thread.join()
        listener.close()
    assert done.returncode == 2, done.stderr[-2000:]
    assert "FAILED" in done.stderr, done.stderr[-2000:]
    assert "signature" in done.stderr, done.stderr[-2000:]
    assert asked == [], "verify sent a request to the host an unchecked manifest names"
    assert kept.read_bytes() == b"a file another bundle needs", "the cache was pruned"
    assert [p.name for p in kept.parent.iterdir()] == [kept.name]


def test_a_damaged_file_in_the_area_is_repaired_by_the_next_save(
    remote: dict[str, Any], tmp_path: Path
) -> None:
    """The area's copy of the weights altered on the server (same name, same size): the next
    log of the model reads it back, uploads its own in its place, and its bundle loads."""
    weights = max(area_files(remote["server_root"]), key=lambda p: p.stat().st_size)
    original = weights.read_bytes()
    middle = len(original) // 2
    os.chmod(weights, 0o644)
    weights.write_bytes(original[:middle] + bytes([original[middle] ^ 1]) + original[middle + 1 :])
    try:
        first = f"runs:/{remote['first']['run_id']}/model"
        got = load_fails(first, remote["proxy"].url, tmp_path / "cache", tmp_path / "a")
        assert got["error"] == "IntegrityError", got
        assert "a save reads the area's copy back" in got["message"]
        project = write_project(tmp_path / "project")
        again = save(project, remote["proxy"].url)
        shutil.rmtree(project)
        assert weights.read_bytes() == original, "the area's copy was not repaired"
        answers, _ = load(
            tmp_path / "b",
            remote["proxy"],
            tmp_path / "cache",
            uri=f"runs:/{again['run_id']}/model",
        )
        assert_same_predictions(answers, CASES, again["expected"])
        answers, _ = load(tmp_path / "c", remote["proxy"], tmp_path / "cache", uri=first)
        assert_same_predictions(answers, CASES, remote["first"]["expected"])  # repaired too
    finally:
        if weights.read_bytes() != original:
            weights.write_bytes(original)
