"""Capture on shapes of real code that used to fail the save or the load elsewhere.

Each fixture project (tests/fixtures/real_code/<name>/) is saved by a fresh subprocess from a copy
of it, the copy is deleted, and another fresh subprocess loads the bundles from an empty working
directory: every answer must equal the one computed before saving (the harness of
test_real_code.py, with projects of its own so that its session fixture stays as it is).

- ``optional_gpu``: a function imports its kernel inside the body, on a branch
  (``if use_gpu: from .gpu import kernel``), and ``gpu.py`` raises ``RuntimeError`` where its
  optional library is missing. The save leaves that module out (reported) instead of failing,
  ``exclude_modules`` keeps the capture from ever importing it, and the branch raises the same
  error at load only when it runs.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import UserModules
from test_real_code import (
    Pipeline,
    RealProject,
    child_venv,
    on,
    outcome,
    run_projects,
    run_python,
    write_files,
)

import cloudflow
from cloudflow.runtime import files as _files

PIPELINES: dict[str, Pipeline] = {
    "optional_gpu": Pipeline(
        save_code="""
        import os

        from sklearn.linear_model import LinearRegression

        from scorer import serve

        X, y = regression_data(n=40, d=2, seed=3)
        model = LinearRegression().fit(X, y)
        rows = [[1.0, 2.0], [0.5, -1.0]]
        cases = [{"rows": rows}, {"rows": rows[:1]}]
        sentinel = os.environ["SCORER_GPU_SENTINEL"]


        def gpu_imports():
            if not os.path.exists(sentinel):
                return 0
            with open(sentinel, encoding="utf-8") as f:
                return len(f.read().split())


        verified = {"verify": True, "input_example": cases[0]}
        save("excluded", serve.predict, {"model": model}, cases,
             exclude_modules=["scorer.gpu"], **verified)
        attempt("gpu_imports_after_excluded", gpu_imports)
        save("untaken", serve.predict, {"model": model}, cases, **verified)
        save("guarded", serve.predict_guarded, {"model": model}, cases)
        """,
        save_env={"SCORER_GPU_SENTINEL": "{root}/gpu_imported"},
        after_load="""
        def gpu_branch():
            bundle = cloudflow.load_bundle(spec["bundles"]["untaken"])
            try:
                bundle.predict(rows=[[1.0, 2.0]], use_gpu=True)
            except BaseException as e:
                return {"type": type(e).__name__, "message": str(e), "cause": str(e.__cause__)}
            return None


        attempt("gpu_branch", gpu_branch)
        """,
    ),
    "relative_paths": Pipeline(
        save_code=r"""
        from sklearn.linear_model import LogisticRegression

        from lexicon import score

        np.save("weights.npy", np.array([1.0, 1.5, 2.0, -1.0, -2.0, -0.5, 0.5]))
        model = LogisticRegression().fit([[-2.0], [-1.0], [1.0], [2.0]], [0, 0, 1, 1])
        cases = [{"texts": ["good and fast", "awful slow bad"]}, {"texts": ["love love great"]}]
        files = {"vocab.txt": "vocab.txt", "weights.npy": "weights.npy", "data": "data"}
        save("relative", score.predict, {"model": model}, cases, files=files, verify=True,
             input_example=cases[0])

        # Without files= and without an input example: the save can only warn, once per path,
        # and the files= it suggests is what makes the bundle work elsewhere.
        import ast
        import logging
        import re

        class Collect(logging.Handler):
            def emit(self, record):
                warned.append(record.getMessage())

        warned = []
        logging.getLogger("cloudflow").addHandler(Collect(logging.WARNING))
        save("unbundled", score.predict, {"model": model}, cases)
        results["warned"] = {"ok": True, "value": warned}
        suggested = {}
        for message in warned:
            for found in re.findall(r"files=(\{.*?\})", message):
                suggested.update(ast.literal_eval(found))
        save("suggested", score.predict, {"model": model}, cases, files=suggested)
        """,
    ),
}
GPU_ERROR = "scorer.gpu needs the optional library fastgpu_kernels_not_installed"


@pytest.fixture(scope="session")
def edge_projects(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Callable[[], RealProject]]:
    """Every project of PIPELINES saved and loaded, two at a time; name -> getter."""
    return run_projects(tmp_path_factory, PIPELINES)


@pytest.fixture
def project(request: pytest.FixtureRequest, edge_projects: dict) -> RealProject:
    return edge_projects[request.param]()


# --- imports on branches never taken -----------------------------------------------------------


@pytest.mark.slow
@on("optional_gpu")
def test_an_excluded_body_import_is_never_imported_by_the_capture(project: RealProject) -> None:
    assert outcome(project.saved, "gpu_imports_after_excluded") == 0
    project.assert_loads_and_predicts("excluded")
    assert "scorer.gpu" not in project.captured("excluded")
    assert "scorer.gpu" not in project.manifest("excluded")["captured_globals"]


@pytest.mark.slow
@on("optional_gpu")
def test_a_body_import_failing_at_save_is_left_out_and_reported(project: RealProject) -> None:
    project.assert_loads_and_predicts("untaken")
    assert {"scorer.serve", "scorer.cpu"} <= project.captured("untaken")
    assert "scorer.gpu" not in project.captured("untaken")
    report = project.manifest("untaken")["captured_globals"]
    assert report["scorer.gpu"] == {"not_imported": f"RuntimeError: {GPU_ERROR}"}


@pytest.mark.slow
@on("optional_gpu")
def test_the_untaken_branch_raises_the_same_error_at_load_when_it_runs(
    project: RealProject,
) -> None:
    raised = outcome(project.loaded, "gpu_branch")
    assert raised is not None, "the GPU branch ran at load without its module"
    assert (raised["type"], raised["message"]) == ("RuntimeError", GPU_ERROR)
    assert "'scorer.gpu' is not in this bundle" in raised["cause"]


@pytest.mark.slow
@on("optional_gpu")
def test_code_catching_the_import_error_behaves_as_before_saving(project: RealProject) -> None:
    assert project.expected("guarded")[0]["device"] == f"cpu ({GPU_ERROR})"
    project.assert_loads_and_predicts("guarded")


# --- an installed library that fails to import in a fresh interpreter ----------------------------

#: Two installed libraries, shaped like pandera and pandas 3: ``fraglib`` imports a name that
#: ``basekit.frequencies`` only has after ``basekit.compat`` was imported (as pandera imported
#: only after mlflow had pulled in what it needed). Installed into a venv's site-packages, with
#: their distribution metadata.
BROKEN_LIBRARIES = {
    "basekit/__init__.py": '"""Stands for a data library whose names moved between versions."""\n',
    "basekit/frequencies.py": '"""DateOffset is no longer defined here."""\n',
    "basekit/compat.py": """
        from . import frequencies

        frequencies.DateOffset = type("DateOffset", (), {})
    """,
    "basekit-3.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: basekit\nVersion: 3.0\n",
    "basekit-3.0.dist-info/top_level.txt": "basekit\n",
    "fraglib/__init__.py": """
        from basekit.frequencies import DateOffset  # noqa: F401


        def halve(values):
            return [v / 2 for v in values]
    """,
    "fraglib-0.9.dist-info/METADATA": "Metadata-Version: 2.1\nName: fraglib\nVersion: 0.9\n",
    "fraglib-0.9.dist-info/top_level.txt": "fraglib\n",
}
BROKEN_USER_CODE = {
    "halver.py": """
        import fraglib


        def predict(rows):
            return fraglib.halve(rows)
    """
}
BROKEN_SAVE = """
import sys
from pathlib import Path

import basekit.compat  # the saving program imported it first, through another library

import cloudflow
import halver

out = Path(sys.argv[1])


def save():
    try:
        cloudflow.save_bundle(
            halver.predict, {}, out / "bundle", verify=True, input_example={"rows": [2.0]}
        )
    except cloudflow.CloudflowError as e:
        return {"error": type(e).__name__, "message": str(e)}
    return {"error": None}


attempt("answer", lambda: halver.predict([2.0]))
attempt("save", save)
attempt("exists", lambda: (out / "bundle").exists())
emit(results)
"""


@pytest.mark.slow
def test_a_library_failing_to_import_is_blamed_not_the_capture(tmp_path: Path) -> None:
    python, purelib = child_venv(tmp_path / "venv")
    write_files(purelib, BROKEN_LIBRARIES)
    project = tmp_path / "project"
    write_files(project, BROKEN_USER_CODE)
    saved = run_python(python, textwrap.dedent(BROKEN_SAVE), cwd=project, args=[str(tmp_path)])
    assert outcome(saved, "answer") == [1.0]
    refused = outcome(saved, "save")
    message = refused["message"]
    assert refused["error"] == "CaptureError", message
    assert (
        "the installed library 'fraglib' (fraglib 0.9) fails to import from 'basekit' "
        "(basekit 3.0) in a fresh interpreter"
    ) in message, message
    assert "cannot import name 'DateOffset' from 'basekit.frequencies'" in message
    assert "(fraglib/__init__.py, line 2)" in message
    assert "install versions of 'basekit' and 'fraglib' that do" in message
    assert "include_modules" not in message
    assert "missed the module" not in message
    assert message.endswith("Nothing was saved.")
    assert outcome(saved, "exists") is False


# --- paths relative to the working directory -----------------------------------------------------


@pytest.mark.slow
@on("relative_paths")
def test_relative_paths_of_bundled_files_are_found_from_another_folder(
    project: RealProject,
) -> None:
    """``VOCAB = "vocab.txt"`` read with ``os.path.isfile`` and ``open``, ``WEIGHTS`` read by
    ``np.load`` and a ``"data/bias.csv"`` constant read by ``np.loadtxt``, loaded elsewhere."""
    assert [answer["vocab_size"] for answer in project.expected("relative")] == [7, 7]
    project.assert_loads_and_predicts("relative")


WORDS_AND_PATHS = {
    "paths_or_words.py": """
        import os
        from pathlib import Path

        FOLDER = "data"  # a bare word: also a dict key and a name below, never taken for a path
        COLUMNS = {"data": 1, "vocab": 2}
        VOCAB = "vocab.txt"
        TABLE = Path("data") / "table.csv"
        MISSING = "data/missing.csv"


        def predict(key):
            return {
                "folder": FOLDER,
                "column": COLUMNS[key],
                "vocab": os.path.isfile(VOCAB),
                "vocab_is_copy": os.path.isabs(VOCAB),
                "table": TABLE.read_text().strip(),
                "in_code": open("data/table.csv").read().strip(),
                "missing": MISSING,
            }
    """
}


def test_only_path_shaped_relative_strings_of_bundled_files_are_redirected(
    user_modules: UserModules, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    user_modules.write(WORDS_AND_PATHS)
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "table.csv").write_text("1,2\n")
    (project / "vocab.txt").write_text("good bad\n")
    monkeypatch.chdir(project)
    import paths_or_words

    expected = paths_or_words.predict("data")
    cloudflow.save_bundle(
        paths_or_words.predict,
        {},
        tmp_path / "bundle",
        files={"data": "data", "vocab.txt": "vocab.txt"},
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    got = cloudflow.load_bundle(tmp_path / "bundle").predict(key="data")
    assert expected["vocab_is_copy"] is False
    assert {**got, "vocab_is_copy": False} == expected
    assert got["vocab_is_copy"] is True
    assert paths_or_words.VOCAB == "vocab.txt"  # the saving process's module is untouched

    # A portable bundle's code comes from a code table: its constants are rewritten at load.
    data = tmp_path / "bundle" / "cloudflow"
    manifest = json.loads((data / "manifest.json").read_text(encoding="utf-8"))
    resolver = _files.Resolver(data, manifest["data_files"])
    consts = resolver.rewrite_code(paths_or_words.predict.__code__).co_consts
    assert str(data / "files" / "named" / "data" / "table.csv") in consts
    assert "data/table.csv" not in consts
    words = compile("x = {'data': 1}['data']; y = 'data/missing.csv'", "<words>", "exec")
    assert resolver.rewrite_code(words) is words  # a bare word, a path that exists nowhere


# --- files the code names that files= does not carry --------------------------------------------


def _named_files_module(shared: Path) -> dict[str, str]:
    return {
        "named_files/__init__.py": "",
        "named_files/serve.py": f"""
            import os
            from pathlib import Path

            HERE = Path(__file__).resolve().parent  # the package's folder: code, not data
            VOCAB = "vocab.txt"  # relative, exists, not bundled
            TABLE = "data/table.csv"  # inside a bundled folder
            MODELS = Path("models")  # a relative pathlib folder, exists, not bundled
            SHARED = {str(shared)!r}  # absolute, outside the project, not bundled
            DEVICE = "/dev/null"  # the system's
            LIBRARY = os.path.dirname(os.__file__)  # the interpreter's
            GONE = "missing/nowhere.txt"  # exists nowhere
            STORE = "./store"  # where the bundle itself is saved


            def predict(x):
                again = "./vocab.txt"  # the same file again: still one warning
                return [x, str(HERE), VOCAB, TABLE, str(MODELS), SHARED, DEVICE, LIBRARY, GONE,
                        STORE, again]
        """,
    }


def test_a_file_the_code_names_but_files_lacks_gets_one_warning(
    user_modules: UserModules,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    shared = tmp_path / "shared" / "synonyms.json"
    shared.parent.mkdir()
    shared.write_text("{}")
    user_modules.write(_named_files_module(shared))
    project = tmp_path / "project"
    for folder in ("data", "models", "store"):
        (project / folder).mkdir(parents=True)
    (project / "data" / "table.csv").write_text("1,2\n")
    (project / "vocab.txt").write_text("good bad\n")
    monkeypatch.chdir(project)
    from named_files import serve

    with caplog.at_level("WARNING", logger="cloudflow"):
        cloudflow.save_bundle(serve.predict, {}, project / "store" / "b", files={"data": "data"})
    named = [m for m in caplog.messages if "which the bundle does not" in m]
    assert len(named) == 3, "\n".join(named)
    vocab, models, outside = sorted(named, key=lambda m: ("vocab" not in m, "models" not in m))
    assert "vocab.txt' (a file of this machine, relative to the working directory)" in vocab
    assert "vocab.txt'}." in vocab
    assert "save with files={'vocab': " in vocab
    assert "'models' (a folder of this machine" in models
    assert "files={'models': 'models'}" in models
    assert f"files={{'synonyms': {str(shared)!r}}}" in outside
    assert "relative to the working directory" not in outside


@pytest.mark.slow
@on("relative_paths")
def test_files_the_code_names_are_warned_once_and_the_suggestion_works(
    project: RealProject,
) -> None:
    warned = [m for m in outcome(project.saved, "warned") if "which the bundle does not" in m]
    assert len(warned) == 3, "\n".join(warned)
    for path in ("vocab.txt", "weights.npy", "data/bias.csv"):
        (message,) = [m for m in warned if f"names {path!r}" in m]
        assert "relative to the working directory" in message
        assert f"{path!r}}}." in message  # ends with the files= line that bundles it
    project.assert_loads_and_predicts("suggested")
