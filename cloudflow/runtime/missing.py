"""The error of a load that lacks a library the bundle needs: it names the package and its pin."""

from __future__ import annotations

import re

from cloudflow.exceptions import MissingDependencyError
from cloudflow.integrity.manifest import Manifest

# Import names whose distribution is named otherwise, for the message of a missing library.
_DISTRIBUTION_OF = {
    "sklearn": "scikit-learn",
    "PIL": "pillow",
    "cv2": "opencv-python",
    "yaml": "pyyaml",
    "google": "protobuf",
}


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def missing_library_error(error: BaseException, manifest: Manifest) -> BaseException:
    """A library the bundle needs is not installed: name it and the pin it was saved with.

    ``error`` is what the load raised; when a missing module (a ``ModuleNotFoundError`` in its
    chain) is the cause, the result is a :class:`MissingDependencyError` naming the package
    and its version in the bundle's requirements, else ``error`` itself.
    """
    if isinstance(error, MissingDependencyError) and getattr(error, "pin", None):
        return error
    seen: BaseException | None = error
    while seen is not None and not isinstance(seen, ModuleNotFoundError):
        seen = seen.__cause__ or seen.__context__
    if seen is None or not seen.name:
        return error
    top = seen.name.split(".")[0]
    wanted = _normalized(_DISTRIBUTION_OF.get(top, top))
    versions = {_normalized(d): (d, v) for d, v in manifest.libraries.items()}
    # The module's own distribution, or a build of it named with a suffix (xgboost-cpu).
    found = versions.get(wanted) or next(
        (dv for n, dv in sorted(versions.items()) if n.startswith(wanted + "-")), None
    )
    if found is None:
        return error
    dist, version = found
    pin = f"{dist}=={version.partition('+')[0]}"
    translated = MissingDependencyError(
        f"This bundle needs {dist} (it was saved with {pin}), which is not installed here "
        f"(No module named {top!r}). Install it with: pip install {pin}; or let MLflow build "
        "the environment from the bundle's requirements.txt (mlflow models serve "
        "--env-manager uv)."
    )
    translated.pin = pin  # type: ignore[attr-defined]
    return translated
