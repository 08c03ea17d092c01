"""Save-time verification: load the fresh bundle in a clean process before publishing it.

A capture that missed a module (imported through ``importlib``, say, or excluded by mistake)
otherwise fails months later, on another machine. Here the bundle is loaded by a new interpreter
(``sys.executable``) started in an empty folder, with no ``PYTHONPATH`` but a folder that holds
only cloudflow itself, so the user's source cannot be imported; if an input example was given it
is run through the pyfunc wrapper, as MLflow serving would. Any failure fails the save, with the
missing module named.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cloudflow import _signing
from cloudflow.exceptions import CaptureError

_logger = logging.getLogger("cloudflow")
TIMEOUT_S = 900

_CHILD = r"""
import json, pickle, sys, traceback
bundle, example_file, result_file = sys.argv[1:4]
result = {"ok": False, "stage": "import cloudflow"}
try:
    import cloudflow
    from cloudflow._pyfunc import CloudflowPyfunc
    result["stage"] = "load"
    loaded = cloudflow.load_bundle(bundle)
    if example_file:
        result["stage"] = "input example"
        try:
            with open(example_file, "rb") as f:
                example = pickle.load(f)
        except Exception as e:
            result["example_skipped"] = f"{type(e).__name__}: {e}"
        else:
            result["stage"] = "predict"
            CloudflowPyfunc(loaded).predict(example)
    result["ok"] = True
except BaseException as e:
    result["type"] = type(e).__name__
    result["message"] = str(e)
    result["module"] = getattr(e, "name", None) if isinstance(e, ImportError) else None
    result["traceback"] = traceback.format_exc()[-4000:]
with open(result_file, "w", encoding="utf-8") as f:
    json.dump(result, f)
"""


def _python_path(scratch: Path) -> str:
    """A folder holding only the cloudflow package, so no user module rides along."""
    import cloudflow

    package = Path(cloudflow.__file__).resolve().parent
    only = scratch / "path"
    only.mkdir()
    try:
        os.symlink(package, only / "cloudflow", target_is_directory=True)
    except OSError:  # no symlinks (Windows without the privilege): the package's parent folder
        return str(package.parent)
    return str(only)


def check_in_clean_process(bundle: Path, input_example: Any = None) -> float:
    """Load ``bundle`` (and run ``input_example``) in a fresh interpreter; returns the seconds.

    Raises:
        CaptureError: The bundle does not load, or the example fails, without the user's source.
    """
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cloudflow-verify-") as tmp:
        scratch = Path(tmp)
        cwd = scratch / "cwd"
        cwd.mkdir()
        example_file = ""
        if input_example is not None:
            try:
                data = pickle.dumps(input_example, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as e:
                _logger.warning("The input example cannot be passed to the check: %s", e)
            else:
                example_file = str(scratch / "example.pkl")
                Path(example_file).write_bytes(data)
        result_file = scratch / "result.json"
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME", _signing.ENV_VAR)
        }
        env["PYTHONPATH"] = _python_path(scratch)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        flags = ["-P"] if sys.version_info >= (3, 11) else []  # -P: no cwd on sys.path
        argv = [sys.executable, *flags, "-c", _CHILD, str(bundle), example_file, str(result_file)]
        try:
            done = subprocess.run(
                argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
            )
        except subprocess.TimeoutExpired as e:
            raise CaptureError(
                f"verify=True: loading the saved bundle in a clean process took more than "
                f"{TIMEOUT_S} s. Save with verify=False, and load it once yourself."
            ) from e
        try:
            result = json.loads(result_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            tail = "\n".join(done.stderr.strip().splitlines()[-20:])
            raise CaptureError(
                f"verify=True: the clean process that loads the saved bundle died (exit code "
                f"{done.returncode}) before reporting:\n{tail}"
            ) from None
    seconds = time.perf_counter() - started
    if result.get("example_skipped"):
        _logger.warning(
            "verify=True: the input example could not be rebuilt in a clean process (%s); only "
            "the load was checked.",
            result["example_skipped"],
        )
    if not result.get("ok"):
        raise CaptureError(_explain(result))
    _logger.info("Verified the bundle in a clean process in %.2f s", seconds)
    return seconds


def _explain(result: dict[str, Any]) -> str:
    stage = {
        "load": "loading the bundle",
        "predict": "running the input example",
        "input example": "reading the input example",
        "import cloudflow": "importing cloudflow",
    }.get(str(result.get("stage")), str(result.get("stage")))
    error = f"{result.get('type')}: {result.get('message')}"
    module = result.get("module")
    if module:
        top = str(module).partition(".")[0]
        return (
            f"The bundle is incomplete: {stage} in a clean process, without your source, raised "
            f"{error}. The capture missed the module {module!r}. Save again with "
            f"include_modules=[{top!r}] (or install {top!r} where the bundle is loaded and list "
            "it in extra_pip_requirements). Nothing was saved."
        )
    return (
        f"The bundle does not work in a clean process, without your source: {stage} raised "
        f"{error}. The function may read files or state of the saving process (paths relative "
        "to the working directory, environment variables). Nothing was saved.\n"
        f"{result.get('traceback', '')}"
    )
