"""Run Python in a fresh subprocess, the way a user's other program would, and read back JSON.

The promise of cloudflow is about *another* process: one where the user's source cannot be
imported. Everything here starts the test interpreter (``sys.executable``) with a chosen working
directory and a clean environment, so nothing of the test process (``sys.path``, imported modules,
the ``tests`` folder) leaks into it.

``PYTHONPATH`` is a single switch (:data:`CLOUDFLOW_INSTALLED`): when cloudflow is installed in the
interpreter (as in CI, ``pip install .[test]``) the subprocess gets no ``PYTHONPATH`` at all;
otherwise it points only at the repository root so that ``import cloudflow`` works from a checkout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
FIXTURES_DIR = TESTS_DIR / "fixtures"

SUBPROCESS_TIMEOUT = 600


def _cloudflow_installed() -> bool:
    """Whether ``import cloudflow`` works in a fresh interpreter without ``PYTHONPATH``.

    ``CLOUDFLOW_TESTS_INSTALLED=1`` or ``0`` forces the answer.
    """
    forced = os.environ.get("CLOUDFLOW_TESTS_INSTALLED")
    if forced is not None:
        return forced.strip().lower() in {"1", "true", "yes"}
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('cloudflow') is None)"
    with tempfile.TemporaryDirectory() as cwd:  # not the repo root, which holds cloudflow/
        done = subprocess.run([sys.executable, "-c", probe], cwd=cwd, env=env, timeout=60)
    return done.returncode == 0


CLOUDFLOW_INSTALLED = _cloudflow_installed()

# Keep subprocesses offline and quiet; never reach the Hugging Face hub.
_QUIET_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONHASHSEED": "0",
}


def subprocess_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a fresh user process: no ``PYTHONPATH`` unless cloudflow needs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHONPATH", "MLFLOW_"))}
    env.update(_QUIET_ENV)
    if not CLOUDFLOW_INSTALLED:
        env["PYTHONPATH"] = str(REPO_ROOT)
    if extra:
        env.update(extra)
    return env


class SubprocessFailed(AssertionError):
    """A subprocess exited with an error; the message carries the tail of its stderr."""


def _run(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str] | None,
    timeout: float,
    result_path: Path | None,
) -> Any:
    full_env = subprocess_env(env)
    if result_path is not None:
        full_env["CLOUDFLOW_TEST_RESULT"] = str(result_path)
    done = subprocess.run(
        list(argv), cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-40:])
        raise SubprocessFailed(
            f"{' '.join(str(a) for a in argv[:2])} ... exited with {done.returncode} "
            f"(cwd={cwd}).\n--- stderr (tail) ---\n{tail}"
        )
    return done


_PRELUDE = """\
import json as _cf_json, os as _cf_os, traceback as _cf_traceback

_CF_RESULT = _cf_os.environ.pop("CLOUDFLOW_TEST_RESULT")
results = {}


def emit(obj):
    with open(_CF_RESULT, "w", encoding="utf-8") as _cf_f:
        _cf_json.dump(obj, _cf_f)


def attempt(name, fn):
    try:
        value = fn()
    except BaseException:
        results[name] = {"ok": False, "error": _cf_traceback.format_exc()}
        return None
    results[name] = {"ok": True, "value": _cf_json.loads(_cf_json.dumps(value, default=repr))}
    return value
"""


def run_snippet(
    code: str,
    *,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    timeout: float = SUBPROCESS_TIMEOUT,
) -> Any:
    """Run ``code`` with ``python -c`` in ``cwd``; the code calls ``emit(obj)`` once.

    The code can also call ``attempt(name, fn)``: it records ``fn()``'s JSON-able result, or the
    traceback if it raised, in the dict ``results`` (then ``emit(results)``), so that one process
    serves several tests and each reports its own failure (see :func:`outcome`).

    ``sys.path[0]`` is the working directory, as for any ``python -c``. ``args`` land in
    ``sys.argv[1:]``. Returns the emitted object, parsed from JSON; raises
    :class:`SubprocessFailed` with the stderr tail if the process fails or emits nothing.
    """
    with tempfile.TemporaryDirectory() as tmp:
        result_path = Path(tmp) / "result.json"
        source = _PRELUDE + textwrap.dedent(code)
        _run(
            [sys.executable, "-c", source, *args],
            cwd=cwd,
            env=env,
            timeout=timeout,
            result_path=result_path,
        )
        if not result_path.exists():
            raise SubprocessFailed("the snippet exited without calling emit()")
        return json.loads(result_path.read_text(encoding="utf-8"))


def outcome(results: Mapping[str, Any], name: str) -> Any:
    """The value ``attempt(name, ...)`` recorded; fails the test with the traceback if it raised."""
    assert name in results, f"the subprocess never reached step {name!r}"
    step = results[name]
    if not step["ok"]:
        tail = "\n".join(step["error"].strip().splitlines()[-25:])
        raise AssertionError(f"step {name!r} raised in the subprocess:\n{tail}")
    return step["value"]


def run_script(
    script: Path,
    args: Sequence[str] = (),
    *,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = SUBPROCESS_TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run a script file in a fresh interpreter (``sys.path[0]`` is the script's folder)."""
    return _run(
        [sys.executable, str(script), *args], cwd=cwd, env=env, timeout=timeout, result_path=None
    )


# Floats are compared to float32 precision: a transformers model reloaded from save_pretrained
# (same weights, same config) already differs from the live one by an ulp or so in its logits.
REL_TOL = 1e-5
ABS_TOL = 1e-6


def assert_same_prediction(got: Any, want: Any, where: str = "result") -> None:
    """``got`` equals ``want``: same structure, types and strings; floats to float32 precision."""
    import math

    if isinstance(want, float) or isinstance(got, float):
        numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (got, want))
        assert numbers, f"{where}: {got!r} != {want!r}"
        assert math.isclose(got, want, rel_tol=REL_TOL, abs_tol=ABS_TOL), (
            f"{where}: {got!r} != {want!r}"
        )
    elif isinstance(want, dict):
        assert isinstance(got, dict), f"{where}: {got!r} is not a dict like {want!r}"
        assert sorted(got) == sorted(want), f"{where}: keys {sorted(got)} != {sorted(want)}"
        for key in want:
            assert_same_prediction(got[key], want[key], f"{where}[{key!r}]")
    elif isinstance(want, list):
        assert isinstance(got, list), f"{where}: {got!r} is not a list like {want!r}"
        assert len(got) == len(want), f"{where}: {len(got)} items != {len(want)}: {got!r}"
        for i, (have, expected) in enumerate(zip(got, want, strict=True)):
            assert_same_prediction(have, expected, f"{where}[{i}]")
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"
        assert type(got) is type(want), f"{where}: {type(got).__name__} != {type(want).__name__}"


def assert_same_predictions(got: Any, cases: list[Any], expected: list[Any]) -> None:
    """One result per case, each :func:`assert_same_prediction` to the expected one."""
    assert isinstance(got, list), f"expected a list of results, got {got!r}"
    assert len(got) == len(cases), f"{len(got)} results for {len(cases)} cases"
    for case, have, want in zip(cases, got, expected, strict=True):
        assert_same_prediction(have, want, f"case {case}")


def sqlite_uri(store: Path) -> str:
    """The MLflow tracking URI cloudflow uses for a folder store."""
    return f"sqlite:///{Path(store).resolve()}/mlflow.db"


def source_fragments(root: Path) -> dict[str, list[str]]:
    """Comment texts and code lines of every ``.py`` file under ``root``, for grepping a bundle.

    Docstrings are left out (the bundle may keep them); so are lines shorter than 10 characters,
    which could occur by chance in binary weights. Returns ``{"comments": [...], "code": [...]}``.
    """
    import ast
    import io
    import tokenize

    comments: list[str] = []
    code: list[str] = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        docstring_lines: set[int] = set()
        for node in ast.walk(ast.parse(text)):
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
                value = body[0].value
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    end = body[0].end_lineno or body[0].lineno
                    docstring_lines.update(range(body[0].lineno, end + 1))
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.COMMENT and len(tok.string) >= 10:
                comments.append(tok.string)
                comments.append(tok.string.lstrip("#").strip())
        for number, line in enumerate(text.splitlines(), start=1):
            stripped = line.strip()
            if number in docstring_lines or len(stripped) < 10 or stripped.startswith("#"):
                continue
            code.append(stripped)
    return {"comments": comments, "code": code}


def requirement_names(path: Path) -> dict[str, str]:
    """``{normalized distribution name: version specifier}`` of a requirements.txt."""
    import re

    found = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)", line)
        if match:
            found[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = match.group(3).strip()
    return found


def grep_tree(root: Path, needles: Sequence[str]) -> list[tuple[str, str]]:
    """``(file, needle)`` for every needle found in the bytes of any file under ``root``."""
    encoded = [(n, n.encode("utf-8")) for n in needles]
    hits = []
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        data = path.read_bytes()
        hits.extend((str(path.relative_to(root)), needle) for needle, raw in encoded if raw in data)
    return hits


#: The head of a user module for tamper tests: a model class, and one that creates the folder
#: it names the moment it is unpickled (so "nothing was unpickled" is checked, not assumed).
#: The predict functions follow it, at column 0.
TRIPWIRE_MODELS = '''\
import os

class Scaler:
    def __init__(self, k):
        self.k = k

class Tripwire:
    """Creates the folder it names the moment it is unpickled."""

    def __init__(self, path):
        self.path = path

    def __setstate__(self, state):
        self.__dict__.update(state)
        os.makedirs(state["path"], exist_ok=True)

'''


#: Loads a bundle saved by a framework test every way, in a fresh process: the seed API, then
#: ``load_bundle`` (eagerly and lazily) and ``mlflow.pyfunc``. ``sys.argv[1]`` is a JSON spec:
#: ``app`` (the user module, which must not be importable), ``experiment``, ``store``,
#: ``tracking_uri``, ``run_id``, ``rows``, ``kinds`` (one answer each) and ``lazy_kind`` (the
#: kind the lazy load is asked first).
EVERY_WAY_LOADER = r"""
import importlib.util
import json
import sys

spec = json.loads(sys.argv[1])
found = importlib.util.find_spec(spec["app"]) is not None
results["importable"] = {"ok": True, "value": found}

import cloudflow


def answers(predict):
    return {kind: predict(kind=kind, rows=spec["rows"]) for kind in spec["kinds"]}


def seed():
    model = cloudflow.cloudflow_model()
    model.load_model(
        tracking_uri=spec["store"], experiment_id=spec["experiment"], run_id=spec["run_id"]
    )
    return answers(model.predict)


attempt("seed", seed)

import mlflow

mlflow.set_tracking_uri(spec["tracking_uri"])
uri = f"runs:/{spec['run_id']}/model"
bundle = attempt("load_bundle", lambda: cloudflow.load_bundle(uri))
if bundle is not None:
    results["path"] = {"ok": True, "value": str(bundle.path)}
    attempt("load_bundle_answers", lambda: answers(bundle.predict))


def lazily():
    lazy = cloudflow.load_bundle(uri, lazy=True)
    before = dict(lazy.loaded)
    got = lazy.predict(kind=spec["lazy_kind"], rows=spec["rows"])
    return {"before": before, "after": dict(lazy.loaded), "answer": got}


attempt("lazy", lazily)
pyfunc = attempt("pyfunc", lambda: mlflow.pyfunc.load_model(uri))
if pyfunc is not None:
    attempt("pyfunc_answers", lambda: answers(lambda **kw: pyfunc.predict(kw)))
emit(results)
"""


def write_files(root: Path, files: Mapping[str, str]) -> None:
    """Write ``files`` (relative path -> source, dedented) under ``root``: a user's project."""
    for relative, source in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source), encoding="utf-8")


#: The start of a script that scores with Spark: a local one-core session on 127.0.0.1, quiet,
#: with ``mlflow.pyfunc``, ``SparkSession`` and ``struct`` imported, as ``spark``.
LOCAL_SPARK = """import mlflow.pyfunc
from pyspark.sql import SparkSession
from pyspark.sql.functions import struct

spark = (
    SparkSession.builder.master("local[1]")
    .appName("cloudflow-test")
    .config("spark.driver.memory", "1g")
    .config("spark.ui.enabled", "false")
    .config("spark.sql.shuffle.partitions", "1")
    .config("spark.driver.host", "127.0.0.1")
    .config("spark.driver.bindAddress", "127.0.0.1")
    .getOrCreate()
)
spark.sparkContext.setLogLevel("ERROR")
"""
