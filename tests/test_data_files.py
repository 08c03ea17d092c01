"""Data files a predict function reads at call time travel in the bundle (``files=``).

The fixture project (tests/fixtures/data_files/) reads, when it runs: a JSON label map by a path
relative to the working directory (``open``), a vocabulary through a ``pathlib`` global computed
from ``__file__`` at import, stop words through an ``os.path`` string global and ``open``, a
weights table with ``numpy.loadtxt`` from a folder global, a synonyms file outside the project
whose absolute path comes from the environment, and paths built at call time from ``__file__``
and with ``cloudflow.bundle_file``.

A fresh process saves it from a copy of the project (``cwd`` = the copy), computing every answer
first; the copy and the outside file are deleted; another fresh process loads the bundles from an
empty working directory through ``load_bundle``, the seed API and ``mlflow.pyfunc.load_model``
(a folder and a ``runs:/`` URI, which MLflow copies to a temp folder) and must answer the same.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import UserModules
from helpers import (
    FIXTURES_DIR,
    assert_same_predictions,
    grep_tree,
    outcome,
    run_snippet,
    source_fragments,
    sqlite_uri,
)

import cloudflow
from cloudflow.cli import main
from cloudflow.exceptions import (
    BundleArgumentError,
    DataFileError,
    IntegrityError,
)

PROJECT = FIXTURES_DIR / "data_files"
CASES = [
    {"text": "I love it and the delivery is fast"},
    {"text": "Broken again refund"},
    {"text": "awesome superb"},
]
SYNONYMS = {"awesome": "great", "superb": "great"}

SAVE = """
import os, sys
from pathlib import Path

import mlflow
import numpy as np
from sklearn.linear_model import LogisticRegression

import cloudflow
from shop_text import predict as shop

out, cases = Path(sys.argv[1]), __import__("json").loads(sys.argv[2])
vocab = Path("shop_text/resources/vocab.txt").read_text().split()
model = LogisticRegression().fit(np.eye(len(vocab)), np.array([1, 0, 0, 1, 0, 1]))
FILES = {
    "labels": "data/labels.json",
    "resources": "shop_text/resources",
    "synonyms": os.environ["SHOP_SYNONYMS"],
}
results["expected"] = [shop.predict(model, **c) for c in cases]
results["expected_late"] = [shop.predict_late(**c) for c in cases]
attempt("save", lambda: cloudflow.save_bundle(
    shop.predict, {"model": model}, out / "bundle", files=FILES, verify=True,
    input_example=cases[0]))
attempt("save_late", lambda: cloudflow.save_bundle(
    shop.predict_late, {}, out / "late", files=FILES, verify=True, input_example=cases[0]))


def seed():
    store = str(out / "store")
    experiment_id = cloudflow.prepare_env(store, "shop")
    with mlflow.start_run(experiment_id=experiment_id) as run:
        cloudflow.cloudflow_model().save(
            tracking_uri=store, experiment_id=experiment_id, run_id=run.info.run_id,
            predict_function=shop.predict, models={"model": model}, files=FILES)
    return run.info.run_id


attempt("seed", seed)


def refused(predict, models, name, **options):
    try:
        cloudflow.save_bundle(predict, models, out / name, verify=True,
                              input_example=cases[0], **options)
    except cloudflow.CaptureError as e:
        return {"error": str(e), "exists": (out / name).exists()}
    return {"error": None, "exists": (out / name).exists()}


attempt("without_files", lambda: refused(shop.predict, {"model": model}, "without"))
attempt("from_cwd", lambda: refused(shop.predict_from_cwd, {}, "from_cwd", files=FILES))
emit(results)
"""

LOAD = """
import json, sys
from pathlib import Path

import mlflow
import mlflow.pyfunc

import cloudflow

out, cases, run_id, uri = Path(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
attempt("load_bundle", lambda: [
    cloudflow.load_bundle(out / "bundle").predict(**c) for c in cases])
attempt("late", lambda: [cloudflow.load_bundle(out / "late").predict(**c) for c in cases])


def seed():
    model = cloudflow.cloudflow_model()
    model.load_model(tracking_uri=str(out / "store"), experiment_id="shop", run_id=run_id)
    return [model.predict(**c) for c in cases]


def pyfunc(model_uri):
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(model_uri)
    return [model.predict(c) for c in cases]


attempt("seed", seed)
attempt("pyfunc_folder", lambda: pyfunc(str(out / "bundle")))
attempt("pyfunc_runs", lambda: pyfunc(f"runs:/{run_id}/model"))
emit(results)
"""


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Save from a copy of the project, delete it and the outside file, load elsewhere."""
    root = tmp_path_factory.mktemp("data-files")
    project = root / "project"
    shutil.copytree(PROJECT, project, ignore=shutil.ignore_patterns("__pycache__"))
    shared = root / "shared-drive"
    shared.mkdir()
    synonyms = shared / "synonyms.json"
    synonyms.write_text(json.dumps(SYNONYMS), encoding="utf-8")
    fragments = source_fragments(project)
    out = root / "out"
    saved = run_snippet(
        SAVE,
        cwd=project,
        env={"SHOP_SYNONYMS": str(synonyms)},
        args=[str(out), json.dumps(CASES)],
    )
    shutil.rmtree(project)
    shutil.rmtree(shared)
    empty = root / "elsewhere"
    empty.mkdir()
    run_id = saved["seed"]["value"] if saved.get("seed", {}).get("ok") else "none"
    loaded = run_snippet(
        LOAD,
        cwd=empty,
        args=[str(out), json.dumps(CASES), run_id, sqlite_uri(out / "store")],
    )
    return {
        "saved": saved,
        "loaded": loaded,
        "out": out,
        "needles": [str(project), str(shared), *fragments["code"], *fragments["comments"]],
    }


@pytest.mark.parametrize("way", ["load_bundle", "seed", "pyfunc_folder", "pyfunc_runs"])
def test_answers_are_the_same_with_the_source_and_data_gone(shop: dict[str, Any], way: str) -> None:
    outcome(shop["saved"], "save")
    outcome(shop["saved"], "seed")
    assert_same_predictions(outcome(shop["loaded"], way), CASES, shop["saved"]["expected"])


def test_paths_built_at_call_time_find_the_copies(shop: dict[str, Any]) -> None:
    """``Path(__file__).parent / ...`` and ``cloudflow.bundle_file(...)``, run after loading."""
    outcome(shop["saved"], "save_late")
    got = outcome(shop["loaded"], "late")
    assert_same_predictions(got, CASES, shop["saved"]["expected_late"])
    assert got[0]["known"] == ["love", "fast"]


def test_the_bundle_holds_the_data_but_no_source_and_no_saving_path(shop: dict[str, Any]) -> None:
    bundle = shop["out"] / "bundle"
    outcome(shop["saved"], "save")
    copies = sorted(
        str(p.relative_to(bundle / "cloudflow" / "files"))
        for p in (bundle / "cloudflow" / "files").rglob("*")
        if p.is_file()
    )
    assert copies == [
        "named/synonyms/synonyms.json",
        "tree-0/data/labels.json",
        "tree-0/shop_text/resources/stopwords.txt",
        "tree-0/shop_text/resources/vocab.txt",
        "tree-0/shop_text/resources/weights.csv",
    ]
    assert not list(bundle.rglob("*.py"))
    assert grep_tree(bundle, shop["needles"]) == []
    assert grep_tree(shop["out"] / "store" / "artifacts", shop["needles"]) == []


def test_a_save_without_files_names_every_file_it_read(shop: dict[str, Any]) -> None:
    refused = outcome(shop["saved"], "without_files")
    error = refused["error"]
    assert error is not None
    for name in ("'data/labels.json' (from the working directory)", "vocab.txt", "weights.csv"):
        assert name in error
    assert "stopwords.txt" in error
    assert "synonyms.json" in error
    assert "files={'labels': 'data/labels.json'" in error
    assert error.endswith("Nothing was saved.")
    assert refused["exists"] is False


def test_a_read_the_bundle_cannot_redirect_is_named(shop: dict[str, Any]) -> None:
    refused = outcome(shop["saved"], "from_cwd")
    assert refused["error"] is not None
    assert "labels.json" in refused["error"]
    assert "although the bundle holds a copy" in refused["error"]
    assert "cloudflow.bundle_file(" in refused["error"]
    assert refused["exists"] is False


def test_inspect_lists_the_data_files(shop: dict[str, Any]) -> None:
    outcome(shop["saved"], "save")
    result = CliRunner().invoke(main, ["inspect", str(shop["out"] / "bundle")])
    assert result.exit_code == 0, result.output
    assert "Data files (3)" in result.output
    assert "resources  " in result.output
    assert "(folder, 3 files)" in result.output
    assert "cloudflow/files/tree-0/data/labels.json" in result.output


# --- in one process ----------------------------------------------------------------------------

READER = {
    "label_reader.py": """
        import json

        import cloudflow


        def predict(scale, key):
            with open("data/labels.json") as f:
                labels = json.load(f)
            return labels[key] * scale


        def helper(name):
            return str(cloudflow.bundle_file(name))
    """
}


def _project(folder: Path, value: int) -> Path:
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "labels.json").write_text(json.dumps({"a": value}))
    return folder


def _reader_in(
    user_modules: UserModules, monkeypatch: pytest.MonkeyPatch, folder: Path, value: int
) -> Any:
    """The label reader module, run from a project folder whose labels.json maps a -> value."""
    user_modules.write(READER)
    monkeypatch.chdir(_project(folder, value))
    import label_reader

    return label_reader


def test_a_changed_byte_in_a_bundled_file_is_refused(
    user_modules: UserModules, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    label_reader = _reader_in(user_modules, monkeypatch, tmp_path / "p", 3)

    cloudflow.save_bundle(label_reader.predict, {"scale": 2}, tmp_path / "b", files=["data"])
    monkeypatch.chdir(tmp_path)
    assert cloudflow.load_bundle(tmp_path / "b").predict(key="a") == 6
    (copy,) = (tmp_path / "b" / "cloudflow" / "files").rglob("labels.json")
    copy.write_text(copy.read_text().replace("3", "4"))
    with pytest.raises(IntegrityError, match=r"labels\.json"):
        cloudflow.load_bundle(tmp_path / "b").predict(key="a")


def test_two_bundles_with_the_same_relative_path_read_their_own(
    user_modules: UserModules, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A notebook saving twice from two folders, then a service loading both."""
    user_modules.write(READER)
    import label_reader

    for name, value in (("one", 1), ("two", 2)):
        monkeypatch.chdir(_project(tmp_path / f"src-{name}", value))
        cloudflow.save_bundle(
            label_reader.predict, {"scale": 10}, tmp_path / name, files={"labels": "data"}
        )
    monkeypatch.chdir(_project(tmp_path / "service", 7))  # the service has its own data/ too
    one, two = cloudflow.load_bundle(tmp_path / "one"), cloudflow.load_bundle(tmp_path / "two")
    assert (one.predict(key="a"), two.predict(key="a")) == (10, 20)
    assert label_reader.predict(10, key="a") == 70  # the live module reads the live file


def test_bundle_file_outside_and_inside_a_bundle(
    user_modules: UserModules, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    label_reader = _reader_in(user_modules, monkeypatch, tmp_path / "p", 1)

    assert label_reader.helper("data/labels.json") == "data/labels.json"  # unsaved: as given
    cloudflow.save_bundle(
        label_reader.helper, {}, tmp_path / "b", files={"labels": "data/labels.json"}
    )
    monkeypatch.chdir(tmp_path)
    loaded = cloudflow.load_bundle(tmp_path / "b")
    inside = Path(loaded.predict(name="data/labels.json"))
    assert inside.is_relative_to(tmp_path / "b" / "cloudflow" / "files")
    assert json.loads(inside.read_text()) == {"a": 1}
    assert Path(loaded.predict(name="labels")) == inside  # by the entry's name too
    with pytest.raises(DataFileError, match=r"'data/other\.json' is not a file of this bundle"):
        loaded.predict(name="data/other.json")


def test_bad_files_arguments_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    (tmp_path / "labels.json").write_text("{}")
    target = tmp_path / "bundle"

    def save(files: Any) -> None:
        cloudflow.save_bundle(lambda x: x, {}, target, files=files)

    with pytest.raises(BundleArgumentError, match=r"files\['labels'\] is .*missing\.json"):
        save({"labels": tmp_path / "missing.json"})
    with pytest.raises(BundleArgumentError, match=r"files: '../up' is not a valid name"):
        save({"../up": tmp_path / "labels.json"})
    with pytest.raises(BundleArgumentError, match=r"files must be a dict of name -> path"):
        save(str(tmp_path / "labels.json"))
    with pytest.raises(BundleArgumentError, match=r"files\['labels'\] must be a path"):
        save({"labels": 3})
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["labels.json"]


def test_a_manifest_pointing_a_data_file_outside_the_bundle_is_refused(
    user_modules: UserModules, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    label_reader = _reader_in(user_modules, monkeypatch, tmp_path / "p", 1)

    cloudflow.save_bundle(label_reader.predict, {"scale": 1}, tmp_path / "b", files=["data"])
    manifest_path = tmp_path / "b" / "cloudflow" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    key = next(iter(manifest["data_files"]["keys"]))
    manifest["data_files"]["keys"][key] = "files/../../../etc"
    from cloudflow.integrity.manifest import CHECKSUM_KEY, checksum

    manifest[CHECKSUM_KEY] = checksum(manifest)
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(IntegrityError, match=r"leads to 'files/\.\./\.\./\.\./etc', outside"):
        cloudflow.load_bundle(tmp_path / "b")


def test_a_large_data_file_is_stored_once_in_a_local_store(
    user_modules: UserModules, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_state: None
) -> None:
    """Two runs bundling the same 2 MB lookup table hold one copy of it (hard links)."""
    import mlflow

    user_modules.write(READER)
    folder = _project(tmp_path / "p", 5)
    (folder / "data" / "table.bin").write_bytes(bytes(range(256)) * 8192)
    monkeypatch.chdir(folder)
    import label_reader

    experiment_id = cloudflow.prepare_env(tmp_path / "store", "tables")
    run_ids = []
    for _ in range(2):
        with mlflow.start_run(experiment_id=experiment_id) as run:
            cloudflow.log_bundle(label_reader.predict, {"scale": 1}, files={"data": "data"})
        run_ids.append(run.info.run_id)
    monkeypatch.chdir(tmp_path)
    copies = []
    for run_id in run_ids:
        loaded = cloudflow.load_bundle(f"runs:/{run_id}/model")
        assert loaded.predict(key="a") == 5
        copies += list((loaded.path / "cloudflow" / "files").rglob("table.bin"))
    assert len(copies) == 2
    assert len({(c.stat().st_dev, c.stat().st_ino) for c in copies}) == 1
    assert copies[0].read_bytes() == bytes(range(256)) * 8192
