"""Other CPython interpreters, and virtual environments on them built once and shared.

:func:`find_python` looks for a CPython minor version where this machine keeps its interpreters:
the pyenv root (``$PYENV_ROOT``, ``pyenv root``, else ``~/.pyenv``: ``versions/3.N.P/bin/python``,
the newest patch release first), then ``python3.N`` on ``PATH``. Every candidate is run to read its
version, so a pyenv shim for a version that is not selected (it exits with an error) is passed by.

:func:`ensure_venv` gives a virtual environment on such an interpreter holding the pinned stack
(``requirements/constraints.txt``: mlflow, scikit-learn, numpy, pandas...; for 3.10, whose
wheels of those releases do not exist, ``requirements/constraints-py310.txt``, the newest
releases that support it: see :func:`constraints_for`) and this checkout's
cloudflow, installed in editable mode: the venv always runs the working tree's cloudflow, so an
edit of ``cloudflow/`` never calls for a rebuild. Each venv lives in ``$CLOUDFLOW_TEST_VENVS``
(default ``<tempdir>/cloudflow-test-venvs``) in a folder named after the interpreter's version and
a hash of everything that decides its contents: the constraints file, ``pyproject.toml``, the
requirement list, the interpreter and the checkout's path. Later sessions and other pytest-xdist
workers reuse it; a missing or half-built one (no stamp file) is built again. A build holds an
exclusive lock (``fcntl.flock``, or ``filelock`` where there is no ``fcntl``) on ``<folder>.lock``,
so two workers never build the same venv at once: the second waits, then reuses it.

A framework whose pins clash with the shared stack, or too large for it, gets a venv of its own
the same way: :func:`ensure_venv` with its ``requirements``, the constraints files that pin
them (``constraints.txt`` and the framework's own, applied together) and a ``label`` for the
folder's name. tests/test_keras_tf.py builds the tensorflow-cpu one so (48 s with uv here).

The installer is uv if it is installed (``pip install uv``), else pip. Measured here (2 cores,
PyPI) for one venv: uv 8 s to install (11 s with an empty uv cache) plus a bytecode warm-up that
brings the two venvs, built in parallel, to 31 s; pip 150 s (140 s from its cache). Later, with
the 3.10 venv (its own pins) and the machine busy with other work, one after the other: 52 s
(3.10), 89 s (3.12), 86 s (3.13).
``CLOUDFLOW_TEST_VENV_INSTALLER=pip`` (or ``uv``) forces one.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers import _PRELUDE, REPO_ROOT, SUBPROCESS_TIMEOUT, SubprocessFailed, subprocess_env

CONSTRAINTS = REPO_ROOT / "requirements" / "constraints.txt"
# Minor versions whose venvs take their own pins: constraints.txt pins releases for 3.11+.
CONSTRAINTS_BY_MINOR = {"3.10": REPO_ROOT / "requirements" / "constraints-py310.txt"}
# What each venv gets, besides what the constraints pin; cloudflow is installed editable.
REQUIREMENTS = ("-e", f"{REPO_ROOT}[sklearn]")
# Imported once with bytecode writing on, at the end of a uv build (see _build). Third-party
# modules only: a venv build must not depend on the state of the working tree's cloudflow.
WARM_UP = (
    "import mlflow.pyfunc, mlflow.models, mlflow.tracking, pandas, sklearn.pipeline, "
    "sklearn.linear_model, sklearn.preprocessing, skops.io, cloudpickle, blake3"
)
BUILD_TIMEOUT = 1800  # pip takes minutes on a cold cache
LOCK_TIMEOUT = 2 * BUILD_TIMEOUT
STAMP = "cloudflow-test-venv.json"
_LAYOUT = "3"  # change to rebuild every venv after a change of how they are built


def venvs_root() -> Path:
    configured = os.environ.get("CLOUDFLOW_TEST_VENVS")
    return Path(configured) if configured else Path(tempfile.gettempdir(), "cloudflow-test-venvs")


def minor(version: str) -> str:
    """``"3.12"`` of ``"3.12.1"``."""
    return ".".join(version.split(".")[:2])


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def python_version(python: Path | str) -> str | None:
    """The full version of a CPython interpreter, or None if it does not run or is not CPython."""
    probe = "import platform; print(platform.python_implementation(), platform.python_version())"
    try:
        done = subprocess.run(
            [str(python), "-c", probe], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        return None
    words = done.stdout.split()
    if done.returncode != 0 or len(words) != 2 or words[0] != "CPython":
        return None
    return words[1]


def pyenv_root() -> Path | None:
    if os.environ.get("PYENV_ROOT"):
        return Path(os.environ["PYENV_ROOT"])
    pyenv = shutil.which("pyenv")
    if pyenv:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run([pyenv, "root"], capture_output=True, text=True, timeout=60)
            if done.returncode == 0 and done.stdout.strip():
                return Path(done.stdout.strip())
    default = Path.home() / ".pyenv"
    return default if default.is_dir() else None


def _pyenv_pythons() -> list[tuple[str, Path]]:
    """``(version, python)`` of every plain CPython release pyenv has, newest first."""
    root = pyenv_root()
    if root is None or not (root / "versions").is_dir():
        return []
    found = []
    for folder in (root / "versions").iterdir():
        python = folder / "bin" / "python"
        if re.fullmatch(r"\d+\.\d+\.\d+", folder.name) and python.exists():
            found.append((folder.name, python))
    return sorted(found, key=lambda item: _version_key(item[0]), reverse=True)


def _candidates(wanted: str) -> list[Path]:
    candidates = [python for version, python in _pyenv_pythons() if minor(version) == wanted]
    on_path = shutil.which(f"python{wanted}")
    if on_path:
        candidates.append(Path(on_path))
    return candidates


def find_python(wanted: str) -> Path | None:
    """A CPython interpreter of minor version ``wanted`` (``"3.12"``), or None."""
    for python in _candidates(wanted):
        version = python_version(python)
        if version is not None and minor(version) == wanted:
            return python
    return None


def where_we_looked(wanted: str) -> str:
    root = pyenv_root()
    pyenv = f"{root}/versions/{wanted}.*/bin/python" if root else "pyenv (not installed)"
    return f"looked in {pyenv} and for python{wanted} on PATH"


def installed_minors(oldest: tuple[int, int] = (3, 10)) -> list[str]:
    """Every CPython minor version >= ``oldest`` found by :func:`find_python`'s rules, sorted."""
    wanted = {minor(version) for version, _ in _pyenv_pythons()}
    wanted |= {f"3.{n}" for n in range(oldest[1], 30) if shutil.which(f"python3.{n}")}
    wanted = {v for v in wanted if _version_key(v) >= oldest}
    return sorted((v for v in wanted if find_python(v) is not None), key=_version_key)


# --- venvs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Venv:
    """A virtual environment on another interpreter, ready to run cloudflow."""

    python: Path  # <folder>/bin/python
    folder: Path
    version: str  # the interpreter's full version
    installer: str  # "uv" or "pip", of the build
    build_seconds: float  # of the build, whenever it ran
    built_now: bool  # False: reused from an earlier session or another worker

    @property
    def minor(self) -> str:
        return minor(self.version)


def constraints_for(version: str) -> Path:
    """The constraints file a venv of CPython ``version`` (``"3.10.13"`` or ``"3.10"``) uses."""
    return CONSTRAINTS_BY_MINOR.get(minor(version), CONSTRAINTS)


def venv_key(
    base: Path,
    version: str,
    constraints: Sequence[Path] | None = None,
    requirements: Sequence[str] = REQUIREMENTS,
) -> str:
    digest = hashlib.sha256()
    for part in (_LAYOUT, str(base), version, str(REPO_ROOT), *requirements):
        digest.update(part.encode("utf-8") + b"\0")
    files = constraints if constraints is not None else [constraints_for(version)]
    for path in (*files, REPO_ROOT / "pyproject.toml"):
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def exclusive_lock(path: Path, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the block's duration."""
    try:
        import fcntl
    except ImportError:  # no fcntl (Windows): filelock, which the ML stack installs anyway
        import filelock

        with filelock.FileLock(str(path), timeout=timeout):
            yield
        return
    with open(path, "a+b") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{path} still locked after {timeout:.0f} s") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@functools.lru_cache(maxsize=1)
def _uv() -> str | None:
    """The uv executable to build with, or None for pip (looked up once: builds run in threads,
    and a failed parallel lookup was seen once, a TypeError from inside uv's finder)."""
    forced = os.environ.get("CLOUDFLOW_TEST_VENV_INSTALLER", "").strip().lower()
    if forced == "pip":
        return None
    try:
        from uv import find_uv_bin

        found: str | None = find_uv_bin()
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
    if forced == "uv" and found is None:
        raise RuntimeError("CLOUDFLOW_TEST_VENV_INSTALLER=uv, but uv is not installed")
    return found


def _check(argv: Sequence[Path | str], cwd: Path, write_bytecode: bool = False) -> None:
    dropped = {"PYTHONPATH", "VIRTUAL_ENV"} | (
        {"PYTHONDONTWRITEBYTECODE"} if write_bytecode else set()
    )
    env = {k: v for k, v in subprocess_env().items() if k not in dropped}
    done = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )
    if done.returncode != 0:
        output = (done.stdout + done.stderr)[-4000:]
        raise RuntimeError(f"{' '.join(map(str, argv))} failed ({done.returncode}):\n{output}")


def _build(
    base: Path,
    folder: Path,
    uv: str | None,
    constraints: Sequence[Path],
    requirements: Sequence[str] = REQUIREMENTS,
    warm_up: str = WARM_UP,
) -> None:
    python = folder / "bin" / "python"
    install = [*(arg for path in constraints for arg in ("-c", path)), *requirements]
    if uv is not None:
        _check([uv, "venv", "--quiet", "--python", base, folder], folder.parent)
        uv_pip = [uv, "pip", "install", "--quiet", "--python", python]
        _check([*uv_pip, *install], folder.parent)
        # uv writes no bytecode, and the tests' processes run with PYTHONDONTWRITEBYTECODE=1:
        # each would import mlflow and scikit-learn from source (18 s, not 6). One import with
        # bytecode on compiles what the tests import; uv's --compile-bytecode (everything)
        # would take 120 s.
        with contextlib.suppress(RuntimeError):  # best effort: only a matter of speed
            _check([python, "-c", warm_up], folder.parent, write_bytecode=True)
    else:
        _check([base, "-m", "venv", folder], folder.parent)
        pip = [python, "-m", "pip", "--disable-pip-version-check", "--no-input"]
        _check([*pip, "install", "--quiet", *install], folder.parent)


def _stamp_of(folder: Path, version: str) -> dict[str, Any] | None:
    """The stamp of a complete venv on a still-working interpreter, else None."""
    try:
        stamp = json.loads((folder / STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if stamp.get("version") != version or python_version(folder / "bin" / "python") != version:
        return None
    return stamp


def ensure_venv(
    base: Path,
    *,
    constraints: Sequence[Path] | None = None,
    requirements: Sequence[str] = REQUIREMENTS,
    warm_up: str = WARM_UP,
    label: str = "",
) -> Venv:
    """The shared venv on interpreter ``base``, built now if it is missing or incomplete.

    By default it holds the pinned stack and cloudflow with scikit-learn; a framework's venv
    gives its own ``requirements``, the constraints files that pin them (all applied together)
    and the imports that warm its bytecode up; ``label`` goes into the folder's name.
    """
    version = python_version(base)
    if version is None:
        raise RuntimeError(f"{base} does not run as CPython")
    files = list(constraints) if constraints is not None else [constraints_for(version)]
    root = venvs_root()
    root.mkdir(parents=True, exist_ok=True)
    key = venv_key(base, version, files, requirements)
    folder = root / f"py{version}-{label + '-' if label else ''}{key}"
    with exclusive_lock(Path(f"{folder}.lock")):
        stamp = _stamp_of(folder, version)
        built_now = stamp is None
        if stamp is None:
            shutil.rmtree(folder, ignore_errors=True)
            uv = _uv()
            started = time.perf_counter()
            try:
                _build(base, folder, uv, files, requirements, warm_up)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            stamp = {
                "version": version,
                "base": str(base),
                "installer": "pip" if uv is None else "uv",
                "build_seconds": round(time.perf_counter() - started, 1),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            (folder / STAMP).write_text(json.dumps(stamp, indent=1), encoding="utf-8")
    return Venv(
        python=folder / "bin" / "python",
        folder=folder,
        version=version,
        installer=stamp["installer"],
        build_seconds=stamp["build_seconds"],
        built_now=built_now,
    )


# --- running code in another interpreter -----------------------------------------------------


def _run(
    python: Path, argv: Sequence[str], cwd: Path, env: Mapping[str, str] | None, result: Path | None
) -> subprocess.CompletedProcess[str]:
    full_env = subprocess_env(env)
    if result is not None:
        full_env["CLOUDFLOW_TEST_RESULT"] = str(result)
    done = subprocess.run(
        [str(python), *argv],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-40:])
        raise SubprocessFailed(
            f"{python} {' '.join(argv[:1])} ... exited with {done.returncode} (cwd={cwd}).\n"
            f"--- stderr (tail) ---\n{tail}"
        )
    return done


def run_python_snippet(
    python: Path,
    code: str,
    *,
    cwd: Path,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> Any:
    """:func:`helpers.run_snippet` (``emit``, ``attempt``) with the interpreter ``python``."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        _run(python, ["-c", _PRELUDE + textwrap.dedent(code), *args], cwd, env, result)
        if not result.exists():
            raise SubprocessFailed(f"{python}: the snippet exited without calling emit()")
        return json.loads(result.read_text(encoding="utf-8"))


def run_python_script(
    python: Path,
    script: Path,
    args: Sequence[str] = (),
    *,
    cwd: Path,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """:func:`helpers.run_script` with the interpreter ``python``."""
    return _run(python, [str(script), *args], cwd, env, None)
