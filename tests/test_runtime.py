"""Each bundle carries the cloudflow that saved it, as a wheel its requirements install.

The environments MLflow builds from a bundle are tested in tests/test_deploy.py; here, what the
bundle holds: the wheel (complete, the same bytes for the same cloudflow, listed and digested in
the manifest), the requirement lines that name it, one shared file per cloudflow version in a
local store, and the option (and environment variable) that pins a distribution instead.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import mlflow
import pytest
from helpers import REPO_ROOT

import cloudflow
from cloudflow._version import __version__
from cloudflow.capture import wheel as _runtime
from cloudflow.exceptions import BundleArgumentError

FOLDER = _runtime.folder_of(_runtime.build_wheel())  # runtime/<digest prefix>
WHEEL = f"cloudflow/{FOLDER}/cloudflow-{__version__}-py3-none-any.whl"


def predict(table, x):
    return [table[k] for k in x]


def test_bundle_carries_the_wheel_and_its_requirements_name_it(tmp_path: Path) -> None:
    cloudflow.save_bundle(predict, {"table": {"a": 1}}, tmp_path / "b")
    root = tmp_path / "b"
    lines = (root / "requirements.txt").read_text().splitlines()
    assert f"--find-links cloudflow/{FOLDER}" in lines
    assert f"cloudflow=={__version__}" in lines
    conda = (root / "conda.yaml").read_text()
    assert f"--find-links cloudflow/{FOLDER}" in conda
    assert f"--find-links ../ml/model/cloudflow/{FOLDER}" in conda  # the image's conda env
    manifest = cloudflow.load_bundle(root).manifest
    assert f"{FOLDER}/cloudflow-{__version__}-py3-none-any.whl" in manifest.files
    with zipfile.ZipFile(root / WHEEL) as zf:
        names = set(zf.namelist())
        meta = zf.read(f"cloudflow-{__version__}.dist-info/METADATA").decode()
        record = zf.read(f"cloudflow-{__version__}.dist-info/RECORD").decode()
    package = Path(cloudflow.__file__).parent
    sources = {
        f"cloudflow/{p.relative_to(package).as_posix()}"
        for p in package.rglob("*.py")
        if "__pycache__" not in p.parts
    }
    assert sources <= names
    assert "cloudflow/py.typed" in names
    assert f"Version: {__version__}" in meta
    assert "Requires-Dist: cloudpickle" in meta
    assert all(name in record for name in sources)


def test_wheel_is_the_same_bytes_for_the_same_files() -> None:
    first = _runtime.build_wheel()
    _runtime._build.cache_clear()
    assert _runtime.build_wheel() == first


def test_wheel_metadata_without_an_installed_distribution_lists_pyproject_dependencies() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert list(_runtime.CORE_REQUIRES) == project["dependencies"]


def test_local_store_keeps_one_runtime_file_per_version(tmp_path: Path, mlflow_state: None) -> None:
    cloudflow.prepare_env(str(tmp_path / "store"), "runtime")  # artifacts inside the folder
    roots = []
    for _ in range(2):
        with mlflow.start_run():
            info = cloudflow.log_bundle(predict, {"table": {"a": 1}})
        roots.append(Path(mlflow.artifacts.download_artifacts(info.model_uri)))
    first, second = (os.stat(root / WHEEL) for root in roots)
    assert (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)
    assert first.st_nlink == 3  # the two bundles and the store's shared copy
    for root in roots:
        assert cloudflow.load_bundle(root).predict(x=["a"]) == [1]


def test_runtime_package_pins_that_distribution_and_carries_no_wheel(tmp_path: Path) -> None:
    cloudflow.save_bundle(predict, {"table": {}}, tmp_path / "b", runtime_package="cf-ml")
    lines = (tmp_path / "b" / "requirements.txt").read_text().splitlines()
    assert f"cf-ml=={__version__}" in lines
    assert not any("cloudflow" in line for line in lines)
    assert not (tmp_path / "b" / "cloudflow" / "runtime").exists()


def test_runtime_package_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(_runtime.RUNTIME_PACKAGE_ENV, "cf-internal")
    cloudflow.save_bundle(predict, {"table": {}}, tmp_path / "b")
    lines = (tmp_path / "b" / "requirements.txt").read_text().splitlines()
    assert f"cf-internal=={__version__}" in lines
    cloudflow.save_bundle(predict, {"table": {}}, tmp_path / "c", runtime_package="")
    assert (tmp_path / "c" / WHEEL).is_file()


@pytest.mark.parametrize("bad", ["cloudflow==2.0", "-e .", 3])
def test_bad_runtime_package_is_refused_before_writing(tmp_path: Path, bad: object) -> None:
    with pytest.raises(BundleArgumentError, match="not a distribution name"):
        cloudflow.save_bundle(predict, {"table": {}}, tmp_path / "b", runtime_package=bad)  # type: ignore[arg-type]
    assert not (tmp_path / "b").exists()


def test_bad_runtime_package_variable_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(_runtime.RUNTIME_PACKAGE_ENV, "a b")
    with pytest.raises(BundleArgumentError, match="CLOUDFLOW_RUNTIME_PACKAGE is 'a b'"):
        cloudflow.save_bundle(predict, {"table": {}}, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_user_requirements_keep_the_runtime(tmp_path: Path) -> None:
    cloudflow.save_bundle(predict, {"table": {}}, tmp_path / "b", pip_requirements=["numpy"])
    lines = (tmp_path / "b" / "requirements.txt").read_text().splitlines()
    assert f"--find-links cloudflow/{FOLDER}" in lines
    assert f"cloudflow=={__version__}" in lines
    assert "numpy" in lines


def test_requirements_here_marks_missing_and_different() -> None:
    from importlib import metadata

    from cloudflow.runtime.inspect import requirements_here

    mlflow_pin = f"mlflow=={metadata.version('mlflow')}"
    lines = [
        "--find-links cloudflow/runtime",
        mlflow_pin,
        "numpy==0.1.0",
        "surely-not-installed-dist==1.0",
        'numpy; python_version < "3"',
    ]
    got = {e["requirement"]: (e["status"], e["installed"]) for e in requirements_here(lines)}
    assert got == {
        mlflow_pin: ("ok", metadata.version("mlflow")),
        "numpy==0.1.0": ("different", metadata.version("numpy")),
        "surely-not-installed-dist==1.0": ("missing", None),
        'numpy; python_version < "3"': ("not here", metadata.version("numpy")),
    }
