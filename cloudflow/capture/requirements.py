"""What a bundle's environment is: requirements.txt, conda.yaml, python_env.yaml and MLmodel.

The requirements pin cloudflow (the wheel the bundle carries, or a package index's release),
the libraries its flavors need and those the saved code imports; MLmodel names the pyfunc
loader every MLflow tool calls (``cloudflow._pyfunc``) and the cloudflow flavor.
"""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cloudflow import _mlflow, _packages
from cloudflow._version import __version__
from cloudflow.capture import portable as _portable
from cloudflow.capture import wheel as _runtime
from cloudflow.capture.policy import CapturePolicy
from cloudflow.integrity import digests as _digests
from cloudflow.integrity.manifest import DATA_DIR, Manifest
from cloudflow.runtime.models import PYFUNC_CONFIG
from cloudflow.store import blobs as _blobs

FLAVOR_NAME = "cloudflow"
LOADER_MODULE = "cloudflow._pyfunc"
PYFUNC_FLAVOR = "python_function"  # mlflow.pyfunc.FLAVOR_NAME
_BASE_PACKAGES = ("cloudpickle",)


def pinned_requirements(
    policy: CapturePolicy,
    flavor_packages: Iterable[str],
    python_versions: list[str],
    runtime_package: str | None,
) -> tuple[list[str], dict[str, str]]:
    """Pinned requirements: cloudflow, its flavors' libraries, libraries the code imports.

    cloudflow is the wheel the bundle carries, or ``runtime_package`` pinned at this version
    (see :mod:`cloudflow.capture.wheel`).

    For a bundle that loads on several Python versions, a pinned release that does not support
    one of them gets environment markers (see :func:`cloudflow.capture.portable.requirement_lines`),
    and the save warns, naming it.
    """
    dists: dict[str, None] = dict.fromkeys(_BASE_PACKAGES)
    dists.update(dict.fromkeys(flavor_packages))
    tops = {t for t in policy.third_party if t not in ("mlflow", "cloudflow")}
    dists.update(dict.fromkeys(_packages.top_level_names_to_distributions(tops).values()))
    versions: dict[str, str] = {}
    for dist in dists:
        version = _packages.distribution_version(dist)
        if version is not None:
            versions[dist] = version
    # A local version label (torch 2.13.0+cpu) names a build no index serves: pin the release.
    reqs = _runtime.requirement_lines(runtime_package)
    left_out = []
    for dist, version in sorted(versions.items()):
        lines, why = _portable.requirement_lines(dist, version.partition("+")[0], python_versions)
        reqs += lines
        if why:
            left_out.append(why)
    if left_out:
        _portable.warn(
            "Some pinned requirements do not install on every Python this bundle loads on ("
            + "; ".join(left_out)
            + "). requirements.txt pins them for the other versions and leaves them unpinned "
            "there, where pip picks a release that supports it, and a load warns that the "
            "library versions differ. To pin one there too, add a line such as "
            "'numpy==2.2.6; python_version == \"3.10\"' with extra_pip_requirements."
        )
    libraries = {"cloudflow": __version__, **versions}
    return reqs, libraries


def write_mlmodel(
    root: Path,
    manifest: Manifest,
    mlflow_model: Any,
    pip_requirements: Iterable[str] | None,
    extra_pip_requirements: Iterable[str] | None,
    signature: Any,
    input_example: Any,
    runtime_package: str | None,
) -> None:
    import yaml
    from mlflow.models import Model

    names = _mlflow.environment_files()
    model = mlflow_model if mlflow_model is not None else Model()
    portable = len(manifest.python_versions) > 1
    if signature is not None:
        model.signature = signature
    if input_example is not None:
        _mlflow.save_example(model, input_example, str(root))
    # mlflow.pyfunc.add_to_model's entry, written without importing mlflow.pyfunc (0.7 s of a
    # process's first save: its agent loaders build pydantic models on import);
    # test_first_save holds the two equal. "config" lists what mlflow.pyfunc.load_model(uri,
    # model_config={...}) and serving's MLFLOW_PYFUNC_INFERENCE_CONFIG may set: MLflow passes
    # only keys listed there.
    model.add_flavor(
        PYFUNC_FLAVOR,
        loader_module=LOADER_MODULE,
        python_version="{}.{}.{}".format(*sys.version_info[:3]),
        data=DATA_DIR,
        env={"conda": names.conda, "virtualenv": names.python_env},
        config=dict(PYFUNC_CONFIG),
    )
    model.add_flavor(
        FLAVOR_NAME,
        format_version=manifest.format_version,
        cloudflow_version=__version__,
        predict_fn=manifest.predict_fn["name"],
        models={name: entry.flavor for name, entry in manifest.models.items()},
        **({"python_versions": manifest.python_versions} if portable else {}),
    )
    if manifest.metadata:
        model.metadata = {**(model.metadata or {}), **manifest.metadata}
    mlmodel = io.StringIO()
    model.to_yaml(mlmodel)  # what Model.save writes, digested as written
    _digests.write_hashed(root / "MLmodel", mlmodel.getvalue().encode("utf-8"))
    runtime = _runtime.requirement_lines(runtime_package)
    if pip_requirements is not None and not any(_names_cloudflow(r) for r in pip_requirements):
        # The user's list replaces the inferred one, but no bundle loads without cloudflow.
        pip_requirements = [*runtime, *pip_requirements]
    conda_env, pip_reqs, constraints = pip_environment(
        manifest.requirements,
        list(pip_requirements) if pip_requirements is not None else None,
        list(extra_pip_requirements) if extra_pip_requirements is not None else None,
    )
    if runtime_package is None:
        _runtime.add_docker_conda_location(conda_env)
    # Digested as written (cloudflow.integrity.digests.write_hashed): the seal reads none of them
    # back.
    conda_text = yaml.safe_dump(conda_env, default_flow_style=False)
    _digests.write_hashed(root / names.conda, conda_text.encode("utf-8"))
    if constraints:
        _digests.write_hashed(root / names.constraints, _lines(constraints))
    _digests.write_hashed(root / names.requirements, _lines(pip_reqs))
    python_env = root / names.python_env
    _mlflow.write_python_env(python_env)
    if portable:
        note = _portable.python_env_note(manifest.python_versions)
        python_env.write_text(note + python_env.read_text(encoding="utf-8"), encoding="utf-8")


def _lines(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode("utf-8")


def _names_cloudflow(requirement: str) -> bool:
    name = re.split(r"[\s\[<>=!~;@]", requirement.strip(), maxsplit=1)[0]
    return name.lower() == "cloudflow"


def pip_environment(
    requirements: list[str],
    pip_requirements: list[str] | None,
    extra_pip_requirements: list[str] | None,
) -> tuple[dict[str, Any], list[str], list[str]]:
    """``(conda_env, pip requirements, constraints)`` for the bundle's environment files.

    With the user's own requirements this is MLflow's ``_process_pip_requirements``, which also
    warns where they disagree with the installed versions. Without them, the requirements are
    this environment's own pins (:func:`pinned_requirements`), which cannot disagree with it, so
    the same steps run without that check: it maps every installed distribution's files to
    import names, about 1 s of a process's first save. ``test_first_save`` holds the two outputs
    equal.
    """
    if (
        pip_requirements is not None
        or extra_pip_requirements is not None
        or not _mlflow.has_requirement_steps()
    ):
        return _mlflow.process_pip_requirements(
            list(requirements), pip_requirements, extra_pip_requirements
        )
    return _mlflow.pinned_environment(requirements)


def write_runtime(data: Path, files: _blobs.SharedFileLinks) -> None:
    """Put the wheel of this cloudflow into the bundle: a link to the store's copy if it has one.

    The wheel is small (about 230 KB) but the same in every bundle a cloudflow version saves,
    so it is shared whatever its size.
    """
    wheel = _runtime.build_wheel()
    folder = data / _runtime.folder_of(wheel)
    folder.mkdir(parents=True)
    target = folder / wheel.name
    digest = _digests.digest_bytes(wheel.data)
    if not files.link_existing(digest, len(wheel.data), target, min_size=0):
        _digests.write_hashed(target, wheel.data)
        files.adopt(target, digest, len(wheel.data), min_size=0)
