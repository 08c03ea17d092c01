"""Two bundles side by side in one process, and a loading program that keeps its own modules.

Projects A and B both have a top-level module ``utils`` (different content), each imported at
module level and again lazily inside the predict function. Project B also has user modules named
``prettytable`` and ``cycler``, the import names of installed distributions. One fresh subprocess
loads both bundles (source deleted, empty working directory) and checks that each bundle sees its
own modules and that the loading program sees only its own and the installed ones.
"""

from __future__ import annotations

import json

import pytest
from conftest import SavedProject
from helpers import assert_same_predictions, outcome, requirement_names, run_snippet

PROGRAM_UTILS = '''
"""The loading program's own utils module."""

PROGRAM_TAG = "loading-program"


def project_tag():
    return PROGRAM_TAG
'''

LOADER = r"""
import importlib
import json
import sys

spec = json.loads(sys.argv[1])

# The loading program imported the installed prettytable before any bundle was loaded.
import prettytable as installed_prettytable

import cloudflow

a = attempt("load_a", lambda: cloudflow.load_bundle(spec["a"]))
b = attempt("load_b", lambda: cloudflow.load_bundle(spec["b"]))


def round_of_predictions():
    return {
        "a": [a.predict(**case) for case in spec["a_cases"]],
        "b": [b.predict(**case) for case in spec["b_cases"]],
        "a_again": [a.predict(**case) for case in spec["a_cases"]],
    }


if a is not None and b is not None:
    attempt("first_round", round_of_predictions)


def import_utils_afterwards():
    try:
        import utils
    except ModuleNotFoundError:
        return {"found": False}
    return {"found": True, "file": getattr(utils, "__file__", None), "dir": sorted(vars(utils))}


attempt("utils_in_sys_modules", lambda: "utils" in sys.modules)
attempt("import_utils", import_utils_afterwards)

# Now the program puts its own utils on the path and imports it.
sys.path.insert(0, spec["program_dir"])
importlib.invalidate_caches()


def program_utils():
    import utils

    return getattr(utils, "PROGRAM_TAG", repr(utils))


attempt("program_utils", program_utils)
if a is not None and b is not None:
    attempt("second_round", round_of_predictions)


def shadows():
    prettytable_now = sys.modules.get("prettytable")
    import cycler  # the program imports the installed cycler only after the bundles ran

    return {
        "prettytable_same_object": prettytable_now is installed_prettytable,
        "prettytable_has_PrettyTable": hasattr(prettytable_now, "PrettyTable"),
        "prettytable_file": getattr(prettytable_now, "__file__", None),
        "cycler_file": getattr(cycler, "__file__", None),
        "cycler_has_cycler": hasattr(cycler, "cycler"),
    }


attempt("shadows", shadows)


def calibrator():
    model = b.models["calibrator"]
    return {"module": type(model).__module__, "describe": model.describe()}


if b is not None:
    attempt("calibrator", calibrator)
emit(results)
"""


@pytest.fixture(scope="module")
def side_by_side(
    saved_project_a: SavedProject,
    saved_project_b: SavedProject,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict:
    program_dir = tmp_path_factory.mktemp("program")
    (program_dir / "utils.py").write_text(PROGRAM_UTILS, encoding="utf-8")
    spec = {
        "a": str(saved_project_a.bundle_path),
        "b": str(saved_project_b.bundle_path),
        "a_cases": saved_project_a.cases,
        "b_cases": saved_project_b.cases,
        "program_dir": str(program_dir),
    }
    return run_snippet(LOADER, cwd=tmp_path_factory.mktemp("cwd"), args=[json.dumps(spec)])


@pytest.mark.parametrize("round_name", ["first_round", "second_round"])
def test_each_bundle_uses_its_own_utils(
    side_by_side: dict,
    saved_project_a: SavedProject,
    saved_project_b: SavedProject,
    round_name: str,
) -> None:
    outcome(side_by_side, "load_a")
    outcome(side_by_side, "load_b")
    got = outcome(side_by_side, round_name)
    a_info = got["a"][saved_project_a.cases.index({"input_type": "info"})]
    b_info = got["b"][saved_project_b.cases.index({"input_type": "info"})]
    assert (a_info["project"], a_info["lazy_project"]) == ("project-a", "project-a")
    assert (b_info["project"], b_info["lazy_project"]) == ("project-b", "project-b")
    # Every answer, interleaved A, B, A, equals what the saving process computed.
    assert_same_predictions(got["a"], saved_project_a.cases, saved_project_a.expected)
    assert_same_predictions(got["a_again"], saved_project_a.cases, saved_project_a.expected)
    assert_same_predictions(got["b"], saved_project_b.cases, saved_project_b.expected)


def test_loading_program_does_not_see_bundle_utils(side_by_side: dict) -> None:
    outcome(side_by_side, "first_round")
    assert outcome(side_by_side, "utils_in_sys_modules") is False
    assert outcome(side_by_side, "import_utils") == {"found": False}


def test_loading_program_gets_its_own_utils(side_by_side: dict) -> None:
    assert outcome(side_by_side, "program_utils") == "loading-program"


def test_captured_modules_do_not_shadow_installed_packages(side_by_side: dict) -> None:
    outcome(side_by_side, "first_round")  # project B's prettytable and cycler were used
    shadows = outcome(side_by_side, "shadows")
    assert shadows["prettytable_same_object"] is True
    assert shadows["prettytable_has_PrettyTable"] is True
    assert "site-packages" in shadows["prettytable_file"]
    assert shadows["cycler_has_cycler"] is True
    assert "site-packages" in shadows["cycler_file"]


def test_model_of_a_user_class_keeps_its_bundle_module(side_by_side: dict) -> None:
    calibrator = outcome(side_by_side, "calibrator")
    assert calibrator == {"module": "utils", "describe": "utils.Calibrator(offset=0.25)"}


def test_user_modules_named_like_installed_packages_are_not_requirements(
    saved_project_b: SavedProject,
) -> None:
    requirements = requirement_names(saved_project_b.bundle_path / "requirements.txt")
    assert "prettytable" not in requirements
    assert "cycler" not in requirements
    manifest_path = saved_project_b.bundle_path / "cloudflow" / "manifest.json"
    captured = set(json.loads(manifest_path.read_text())["captured_modules"])
    assert {"scorer", "utils", "prettytable", "cycler"} <= captured
