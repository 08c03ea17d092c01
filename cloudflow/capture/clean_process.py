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
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cloudflow.exceptions import CaptureError
from cloudflow.integrity import signing as _signing

_logger = logging.getLogger("cloudflow")
TIMEOUT_S = 900

_CHILD = r"""
import json, os, pickle, sys, traceback
bundle, example_file, result_file, hidden, saving_cwd = sys.argv[1:6]
scratch_cwd = os.getcwd()
hidden = json.loads(hidden)
result = {"ok": False, "stage": "import cloudflow"}
reads = []
watching = [False]


def watch_reads(event, args):
    # Every file the predict function opens for reading, and every folder it lists.
    if not watching[0]:
        return
    if event == "open":
        path, mode, flags = args
        if isinstance(path, int):
            return
        if isinstance(mode, str):
            if not ("r" in mode or "+" in mode):
                return
        elif isinstance(flags, int) and flags & os.O_ACCMODE == os.O_WRONLY:
            return
    elif event not in ("os.listdir", "os.scandir"):
        return
    path = args[0]
    if isinstance(path, int) or path is None:
        return
    try:
        reads.append(os.fsdecode(os.fspath(path)))
    except Exception:
        pass


class HideUserSource:
    # The user's source stays importable through editable installs (.pth files, setuptools'
    # finders) even without PYTHONPATH: refuse any module found under a folder the capture
    # treated as the user's, unless it is installed (site-packages) or cloudflow itself.
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "cloudflow":
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            try:
                spec = find(name, path, target)
            except Exception:
                continue
            if spec is None:
                continue
            places = [spec.origin] if spec.origin and spec.has_location else []
            places += list(spec.submodule_search_locations or [])
            real = [os.path.realpath(p) + os.sep for p in places if p]
            if real and all(
                any(r.startswith(h) for h in hidden) and not r.startswith(LIBRARY_DIRS)
                for r in real
            ):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None
        return None


def loaded_files(bundle):
    from cloudflow.runtime.files import Resolver

    return Resolver(bundle.path / "cloudflow", bundle.manifest.data_files)


try:
    from cloudflow import _packages
    from cloudflow.capture import scan as _scan

    LIBRARY_DIRS = _scan.library_dirs()
    hidden = [os.path.realpath(h) + os.sep for h in hidden]
    if hidden:
        sys.meta_path.insert(0, HideUserSource())
    import cloudflow
    from cloudflow.runtime.pyfunc import CloudflowPyfunc
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
            # The example runs from another folder than the saving one, as the bundle will
            # anywhere else: a path relative to the working directory that the bundle does not
            # redirect fails here, as it would there.
            sys.addaudithook(watch_reads)
            watching[0] = True
            try:
                CloudflowPyfunc(loaded).predict(example)
            except BaseException:
                # Run it again from the saving working directory, where it ran before, only to
                # see (and name) every file it reads there, not just the first one missing.
                os.chdir(saving_cwd)
                try:
                    CloudflowPyfunc(loaded).predict(example)
                except BaseException:
                    pass
                finally:
                    os.chdir(scratch_cwd)
                raise
            finally:
                watching[0] = False
    result["ok"] = True
except BaseException as e:
    result["type"] = type(e).__name__
    result["message"] = str(e)
    result["module"] = getattr(e, "name", None) if isinstance(e, ImportError) else None
    result["traceback"] = traceback.format_exc()[-4000:]
    try:
        from cloudflow.capture.clean_process import library_import_failure

        result["library"] = library_import_failure(e)
    except BaseException:
        pass
try:
    from cloudflow.capture.clean_process import outside_reads

    result["outside"] = outside_reads(
        reads,
        saving_cwd,
        bundle,
        loaded_files(loaded),
        os.path.dirname(result_file),
        scratch_cwd=scratch_cwd,
    )
except NameError:  # the bundle did not load
    result["outside"] = []
except BaseException as e:
    result["outside"] = []
    result["outside_error"] = f"{type(e).__name__}: {e}"
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


def check_in_clean_process(
    bundle: Path, input_example: Any = None, hidden_roots: Sequence[str] = ()
) -> float:
    """Load ``bundle`` (and run ``input_example``) in a fresh interpreter; returns the seconds.

    ``hidden_roots`` are folders of the user's source (editable installs included) whose modules
    the clean process must not import, even through an installed ``.pth`` file or finder.

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
            if k not in ("PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME")
            and k not in (_signing.ENV_VAR, _signing.KEY_FILE_ENV, _signing.TRUSTED_ENV)
        }
        env["PYTHONPATH"] = _python_path(scratch)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        flags = ["-P"] if sys.version_info >= (3, 11) else []  # -P: no cwd on sys.path
        argv = [
            sys.executable,
            *flags,
            "-c",
            _CHILD,
            str(bundle),
            example_file,
            str(result_file),
            json.dumps(list(hidden_roots)),
            os.getcwd(),
        ]
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
    if result.get("outside"):
        raise CaptureError(_explain_reads(result["outside"], result))
    if not result.get("ok"):
        raise CaptureError(_explain(result))
    _logger.info("Verified the bundle in a clean process in %.2f s", seconds)
    return seconds


#: Reads that are the machine's, not the program's data: devices, kernel files, system config.
_SYSTEM_DIRS = ("/dev/", "/proc/", "/sys/", "/etc/", "/usr/share/", "/usr/lib/", "/run/")
_SOURCE_SUFFIXES = (".py", ".pyc", ".pyi", ".pth")  # linecache, warnings: never the data


def outside_reads(
    reads: Sequence[str],
    saving_cwd: str,
    bundle: str,
    files: Any,
    result_file_dir: str,
    *,
    scratch_cwd: str = "",
) -> list[dict[str, Any]]:
    """The files and folders ``reads`` (paths opened in the clean process) left out of the bundle.

    A relative path is looked up from the saving working directory, where the function ran
    before, and so is a path inside ``scratch_cwd`` (the clean process's working directory:
    ``os.getcwd()`` there stands for the saving one); what does not exist there is not a file
    the save missed. Files of installed
    libraries, the standard library, the interpreter, the bundle and the system are not data.
    Each is ``{"path": as opened, "found": the saving machine's path, "bundled": whether it is
    the original of a bundled file (read through a call the bundle does not redirect)}``.
    """
    from cloudflow.capture import scan as _scan

    scratch = os.path.realpath(result_file_dir)  # the check's own folder: example, result
    not_data = tuple(
        os.path.realpath(p) + os.sep
        for p in (bundle, scratch, sys.prefix, sys.base_prefix, sys.exec_prefix)
        if p
    )
    not_data += _scan.library_dirs() + _SYSTEM_DIRS
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for path in reads:
        if path.endswith(_SOURCE_SUFFIXES):
            continue
        here = path if os.path.isabs(path) else os.path.join(saving_cwd, path)
        if scratch_cwd and (here == scratch_cwd or here.startswith(scratch_cwd + os.sep)):
            here = os.path.join(saving_cwd, os.path.relpath(here, scratch_cwd))
        real = os.path.realpath(here)
        if real in seen or not os.path.exists(real):
            continue
        seen.add(real)
        if (real + os.sep).startswith(not_data):
            continue
        out.append({"path": path, "found": real, "bundled": files.find(real) is not None})
    return out


def suggest_files(paths: Sequence[str]) -> str:
    """The ``files=`` argument that bundles ``paths``: ``files={'labels': 'data/labels.json'}``."""
    names: dict[str, str] = {}
    for path in paths:
        stem = "".join(
            c if c.isascii() and (c.isalnum() or c in "_-.") else "_" for c in Path(path).stem
        )
        stem = stem.lstrip(".") or "data"
        name, n = stem, 2
        while name in names:
            name, n = f"{stem}{n}", n + 1
        names[name] = path
    return "files={" + ", ".join(f"{k!r}: {v!r}" for k, v in names.items()) + "}"


def _explain_reads(reads: Sequence[dict[str, Any]], result: dict[str, Any]) -> str:
    missing = [r for r in reads if not r["bundled"]]
    bypass = [r for r in reads if r["bundled"]]
    parts = []
    if missing:
        listed = ", ".join(
            repr(r["path"]) + ("" if os.path.isabs(r["path"]) else " (from the working directory)")
            for r in missing
        )
        parts.append(
            f"verify=True: running the input example, the predict function read "
            f"{listed}, which the bundle does not hold: loaded anywhere else it would not find "
            f"{'it' if len(missing) == 1 else 'them'}. Bundle them: "
            f"{suggest_files([r['path'] for r in missing])}."
        )
    if bypass:
        listed = ", ".join(repr(r["path"]) for r in bypass)
        parts.append(
            f"verify=True: the predict function read {listed} from this machine although the "
            "bundle holds a copy: the call that opened it is not one the bundle redirects (a "
            "path built at call time and opened by pathlib or a library). Wrap the path in "
            "cloudflow.bundle_file(...)."
        )
    if not result.get("ok"):
        parts.append(f"(The example then failed: {result.get('type')}: {result.get('message')}.)")
    return " ".join(parts) + " Nothing was saved."


def library_import_failure(error: BaseException) -> dict[str, Any] | None:
    """Where an installed library failed to import, if that is what ``error`` is.

    An ``ImportError`` raised by the body of a module of site-packages or the standard library
    (``from pandas.tseries.frequencies import DateOffset`` in pandera), or by a plain "cannot
    import name" inside one of their functions, is the environment's problem: the capture could
    not have helped. A ``ModuleNotFoundError`` raised by a library's function (cloudpickle
    importing a module by name for the bundle, say) is not: the module may be one of the user's
    that the capture missed. Returns ``{"library", "missing", "chain", "where"}`` or None.
    """
    from cloudflow.capture import scan as _scan

    if not isinstance(error, ImportError):
        return None
    frames = [
        frame
        for frame, _ in traceback.walk_tb(error.__traceback__)
        if os.path.isabs(frame.f_code.co_filename)
    ]
    if not frames:
        return None
    last = frames[-1]

    def top(frame: Any) -> str:
        return str(frame.f_globals.get("__name__") or "").partition(".")[0]

    library, filename = top(last), last.f_code.co_filename
    in_library = _scan.under(filename, _scan.library_dirs())
    body = last.f_code.co_name == "<module>"
    if not library or library == "cloudflow" or not in_library:
        return None
    if not body and type(error) is not ImportError:
        return None
    chain: list[str] = []
    for frame in frames:  # the module bodies being imported, outermost first
        name = top(frame)
        importing = frame.f_code.co_name == "<module>"
        if importing and name and name not in ("cloudflow", *chain, *sys.stdlib_module_names):
            chain.append(name)
    missing = error.name or ""
    return {
        "library": library,
        "missing": missing,
        "chain": chain or [library],
        "where": f"{_library_relative(filename)}, line {last.f_lineno}",
    }


def _library_relative(filename: str) -> str:
    from cloudflow.capture import scan as _scan

    real = os.path.realpath(filename)
    for folder in sorted(_scan.library_dirs(), key=len, reverse=True):  # the deepest first
        if real.startswith(folder):
            return real[len(folder) :]
    return os.path.basename(filename)


def _explain_library(result: dict[str, Any], stage: str) -> str:
    """The message for an installed library that fails to import in a fresh interpreter."""
    from cloudflow import _packages

    found = result["library"]
    library, missing = str(found["library"]), str(found.get("missing") or "")
    source = missing.partition(".")[0]
    tops = {library, source} - {""} - set(sys.stdlib_module_names)
    dists = _packages.top_level_names_to_distributions(tops)

    def named(top: str) -> str:
        dist = dists.get(top)
        version = _packages.distribution_version(dist) if dist else None
        return f"{top!r} ({dist} {version})" if dist and version else repr(top)

    chain = [str(c) for c in found.get("chain") or []]
    through = f", imported through {' -> '.join(chain)}" if len(chain) > 1 else ""
    fails = (
        f"fails to import from {named(source)}"
        if source and source != library
        else ("fails to import")
    )
    return (
        f"The bundle does not load in a clean process: {stage} raised {result.get('type')}: "
        f"{result.get('message')}. This is not a module the capture missed: the installed "
        f"library {named(library)} {fails} in a fresh interpreter ({found.get('where')}"
        f"{through}). The environment's libraries do not work together (the saving process "
        "imported them in another order, or one was upgraded since): install versions of "
        f"{' and '.join(repr(t) for t in sorted(tops))} that do, and check with "
        f"python -c 'import {chain[0] if chain else library}'. Nothing was saved."
    )


def _explain(result: dict[str, Any]) -> str:
    stage = {
        "load": "loading the bundle",
        "predict": "running the input example",
        "input example": "reading the input example",
        "import cloudflow": "importing cloudflow",
    }.get(str(result.get("stage")), str(result.get("stage")))
    error = f"{result.get('type')}: {result.get('message')}"
    module = result.get("module")
    if result.get("library"):
        return _explain_library(result, stage)
    if module:
        top = str(module).partition(".")[0]
        return (
            f"The bundle is incomplete: {stage} in a clean process, without your source, raised "
            f"{error}. The capture missed the module {module!r}. Save again with "
            f"include_modules=[{top!r}] (or install {top!r} where the bundle is loaded and list "
            "it in extra_pip_requirements). Nothing was saved."
        )
    if result.get("type") in ("FileNotFoundError", "NotADirectoryError", "PermissionError"):
        cause = (
            "The function reads a file of the saving machine (a path relative to the working "
            "directory, or one that only exists here); bundle it with files={'name': path}, "
            "load it into a global before saving, or pass its content as a model."
        )
    else:
        cause = (
            "Something it needs is not in the bundle, or does not rebuild from a pickle: the "
            "traceback below shows where."
        )
    return (
        f"The bundle does not work in a clean process, without your source: {stage} raised "
        f"{error}. {cause} Nothing was saved.\n{result.get('traceback', '')}"
    )
