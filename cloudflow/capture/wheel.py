"""The cloudflow a bundle installs: its own wheel, carried inside the bundle, or a pinned name.

A bundle loads through ``cloudflow._pyfunc``, so every environment built from its requirements
needs cloudflow itself. No public index has this cloudflow (PyPI's ``cloudflow`` is another
project), so by default each bundle carries the wheel of the cloudflow that saved it, in
``cloudflow/runtime/<digest prefix>/``, and its requirements name it as::

    --find-links cloudflow/runtime/8c1f2e0a9b7d3c45
    cloudflow==2.0.0.dev0

pip and uv resolve a relative ``--find-links`` of a requirements file against that file's own
folder, which holds in every place MLflow installs from: its virtualenv and uv env managers
(a temporary file beside links to the model's files, run from there), the conda env manager
(pip run beside ``conda.yaml``) and the image of ``mlflow models build-docker``
(``pip install -r /opt/ml/model/requirements.txt`` run from ``/opt/mlflow``). A plain relative
path to the wheel would resolve against the working directory instead, which in the image is
not the model's folder. The image's conda environment is built from a copy of ``conda.yaml``
in ``/opt/mlflow``: its pip section also names ``../ml/model/cloudflow/runtime/...``, the
model's folder seen from there (pip skips a location that does not exist, with a warning).

The wheel is built from the files of the imported package, whatever way it was installed
(a wheel, an sdist, editable from a checkout): cloudflow is pure Python, so no build backend
is needed. It is built once per process and content, and byte for byte the same for the same
files (fixed timestamps and order), so a local store shares one copy per cloudflow version by
hard link (see :mod:`cloudflow.store.blobs`).

A team that publishes cloudflow on an index of its own passes ``runtime_package="name"`` (or
sets ``CLOUDFLOW_RUNTIME_PACKAGE``): the bundle then pins ``name==<this version>`` and carries
no wheel.
"""

from __future__ import annotations

import base64
import csv
import functools
import hashlib
import io
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudflow._version import __version__
from cloudflow.exceptions import BundleArgumentError

#: The bundle's folder (inside its data folder) that holds the wheel.
RUNTIME_DIR = "runtime"
#: Names a distribution to pin instead of carrying the wheel.
RUNTIME_PACKAGE_ENV = "CLOUDFLOW_RUNTIME_PACKAGE"
#: The image of ``mlflow models build-docker`` copies ``conda.yaml`` to ``/opt/mlflow`` and the
#: model to ``/opt/ml/model``: the model's folder as seen from there.
DOCKER_MODEL_DIR = "../ml/model"

# What pyproject.toml's dependencies say, for a cloudflow imported from a checkout that was
# never installed (no METADATA to copy); tests/test_runtime.py holds the two equal.
CORE_REQUIRES = (
    "mlflow>=3.0,<4",
    "cloudpickle>=3.0,<3.2",
    "numpy>=1.23",
    "pandas>=1.5",
    "click>=8",
    "blake3>=1.0",
)
_ENTRY_POINTS = "[console_scripts]\ncloudflow = cloudflow.cli:main\n"
# Zip entries get one fixed time (zip's earliest), so equal files make an equal wheel.
_EPOCH = (1980, 1, 1, 0, 0, 0)
_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")


@dataclass(frozen=True)
class Wheel:
    """A built wheel of the running cloudflow."""

    name: str
    data: bytes


def check_package(value: object) -> str | None:
    """The distribution to pin instead of carrying the wheel; None carries the wheel.

    ``value`` None reads ``CLOUDFLOW_RUNTIME_PACKAGE``; an empty value carries the wheel.

    Raises:
        BundleArgumentError: Not a distribution name.
    """
    where = "runtime_package"
    if value is None:
        value = os.environ.get(RUNTIME_PACKAGE_ENV, "")
        where = RUNTIME_PACKAGE_ENV
    if not isinstance(value, str) or (value and not _NAME.match(value)):
        raise BundleArgumentError(
            f"{where} is {value!r}, which is not a distribution name. Give the name cloudflow "
            "is published under on your own index (such as 'cloudflow-ml'; the bundle then "
            f"pins it at {__version__} and carries no wheel), or leave it unset: the bundle "
            "then carries the wheel of this cloudflow."
        )
    return value or None


def requirement_lines(package: str | None) -> list[str]:
    """The lines of requirements.txt that install cloudflow (see the module docstring)."""
    if package is not None:
        return [f"{package}=={__version__}"]
    return [f"--find-links {_find_links(build_wheel())}", f"cloudflow=={__version__}"]


def folder_of(wheel: Wheel) -> str:
    """The wheel's folder in the bundle's data folder: ``runtime/<digest prefix>``.

    MLflow reuses an environment it built for the same requirement lines; naming the wheel's
    content in them keeps a bundle saved by a changed cloudflow of the same version (a
    checkout) from running in an environment that holds the earlier one.
    """
    from cloudflow.integrity.digests import digest_bytes

    return f"{RUNTIME_DIR}/{digest_bytes(wheel.data)[:16]}"


def _find_links(wheel: Wheel) -> str:
    from cloudflow.integrity.manifest import DATA_DIR

    return f"{DATA_DIR}/{folder_of(wheel)}"


def add_docker_conda_location(conda_env: dict[str, Any]) -> None:
    """Name the wheel's folder as the image of ``build-docker`` sees it from ``conda.yaml``."""
    for dependency in conda_env.get("dependencies", []):
        if isinstance(dependency, dict) and isinstance(dependency.get("pip"), list):
            pip = dependency["pip"]
            for at, line in enumerate(list(pip)):
                if line.startswith("--find-links ") and "/" + RUNTIME_DIR + "/" in line:
                    folder = line.removeprefix("--find-links ")
                    pip.insert(at + 1, f"--find-links {DOCKER_MODEL_DIR}/{folder}")
                    return


def wheel_name() -> str:
    """The file name of this cloudflow's wheel."""
    return f"cloudflow-{__version__}-py3-none-any.whl"


def _package_files() -> list[tuple[str, bytes]]:
    """``(path in the wheel, content)`` of the imported cloudflow package, sorted."""
    root = Path(__file__).resolve().parents[1]  # the cloudflow package
    found = []
    for path in root.rglob("*"):
        if "__pycache__" in path.parts or not path.is_file():
            continue
        if path.suffix == ".py" or path.name == "py.typed":
            found.append((f"cloudflow/{path.relative_to(root).as_posix()}", path.read_bytes()))
    return sorted(found)


def _metadata() -> tuple[str, str]:
    """METADATA and entry_points.txt of the installed distribution, or made from constants."""
    from importlib import metadata

    try:
        dist = metadata.distribution("cloudflow")
    except metadata.PackageNotFoundError:
        dist = None
    if dist is not None and dist.version == __version__:
        text = dist.read_text("METADATA")
        if text:
            return text, dist.read_text("entry_points.txt") or _ENTRY_POINTS
    lines = ["Metadata-Version: 2.1", "Name: cloudflow", f"Version: {__version__}"]
    lines += ["Requires-Python: >=3.10"] + [f"Requires-Dist: {r}" for r in CORE_REQUIRES]
    return "\n".join(lines) + "\n", _ENTRY_POINTS


def _record_line(name: str, data: bytes) -> list[str]:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return [name, f"sha256={digest}", str(len(data))]


@functools.lru_cache(maxsize=4)
def _build(version: str, files: tuple[tuple[str, bytes], ...], meta: tuple[str, str]) -> bytes:
    info = f"cloudflow-{version}.dist-info"
    wheel = "Wheel-Version: 1.0\nGenerator: cloudflow\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    entries = [
        *files,
        (f"{info}/METADATA", meta[0].encode()),
        (f"{info}/WHEEL", wheel.encode()),
        (f"{info}/entry_points.txt", meta[1].encode()),
        (f"{info}/top_level.txt", b"cloudflow\n"),
    ]
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    for name, data in entries:
        writer.writerow(_record_line(name, data))
    writer.writerow([f"{info}/RECORD", "", ""])
    entries.append((f"{info}/RECORD", record.getvalue().encode()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            entry = zipfile.ZipInfo(name, date_time=_EPOCH)
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(entry, data)
    return out.getvalue()


def build_wheel() -> Wheel:
    """The wheel of the running cloudflow, from its imported files (cached per content)."""
    return Wheel(wheel_name(), _build(__version__, tuple(_package_files()), _metadata()))
