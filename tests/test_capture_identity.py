"""Each loaded bundle has its own classes and module state, whatever process saved it.

A "notebook" subprocess writes two projects that both have a module ``scorer`` with a class
``Scorer`` (different logic), saves a bundle of each, then loads its first bundle back, as a
notebook checking its work would, and reports whether its own live objects changed. The sources
are deleted; a fresh process from another folder loads both bundles side by side, then saves the
loaded predict function of one again (promoting it into another folder) and a third process loads
that copy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import outcome, run_snippet

PROJECT = '''
"""Scores with K={k}."""
import threading
from typing import Generic, TypeVar

T = TypeVar("T")
K = {k}
LOCK = threading.Lock()  # nothing reached reads it: it must not stop the save


class Slotted:
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


class Scorer(Generic[T]):
    bonus = {k}

    def score(self, x: T) -> T:
        return x * K + self.bonus


def by_name(name):
    return getattr(__import__(__name__), name)  # a computed name: not visible in bytecode


def predict(model, x):
    import scorer_helpers  # imported at call time: must travel when the bundle is saved again

    if x is None:
        return by_name("K")

    slotted = Slotted(x)
    try:
        slotted.other = 1
        has_slots = False
    except AttributeError:
        has_slots = True
    return {{"score": model.score(x), "tag": scorer_helpers.TAG, "slots": has_slots}}
'''

NOTEBOOK = r"""
import json, shutil, sys, textwrap
from pathlib import Path

import cloudflow

root = Path(sys.argv[1])
project = json.loads(sys.argv[2])
saved = {}
for tag, k in (("a", 1), ("b", 50)):
    src = root / f"src_{tag}"
    src.mkdir()
    (src / "scorer.py").write_text(project.format(k=k))
    (src / "scorer_helpers.py").write_text(f"TAG = {tag!r}\n")
    sys.path.insert(0, str(src))
    import scorer

    model = scorer.Scorer()
    saved[tag] = scorer.predict(model, 2)
    cloudflow.save_bundle(scorer.predict, {"model": model}, root / f"bundle_{tag}")
    if tag == "a":
        kept = scorer, model, sys.modules["scorer_helpers"]
    for name in ("scorer", "scorer_helpers"):
        del sys.modules[name]
    sys.path.remove(str(src))

# The notebook, still holding project a, loads bundle a to check it: its own objects must stay.
scorer_a, live_model, helpers_a = kept
sys.modules.update({"scorer": scorer_a, "scorer_helpers": helpers_a})
live_cls, live_score, live_bonus = scorer_a.Scorer, scorer_a.Scorer.score, scorer_a.Scorer.bonus
loaded = cloudflow.load_bundle(root / "bundle_a")
same_process = loaded.predict(x=2)
untouched = {
    "class": scorer_a.Scorer is live_cls,
    "method": scorer_a.Scorer.score is live_score,
    "bonus": scorer_a.Scorer.bonus == live_bonus,
    "live_answer": scorer_a.predict(live_model, 2) == saved["a"],
    "loaded_class_is_not_live": type(loaded.models["model"]) is not live_cls,
    "sys_modules_scorer": sys.modules["scorer"] is scorer_a,
}
for tag in ("a", "b"):
    shutil.rmtree(root / f"src_{tag}")
emit({"saved": saved, "same_process": same_process, "untouched": untouched})
"""

LOADER = r"""
import sys
from pathlib import Path

import cloudflow
from cloudflow.exceptions import LeftOutGlobalError

root = Path(sys.argv[1])
a = cloudflow.load_bundle(root / "bundle_a")
b = cloudflow.load_bundle(root / "bundle_b")
attempt(
    "side_by_side",
    lambda: {"a": a.predict(x=2), "b": b.predict(x=2), "a_again": a.predict(x=2)},
)
attempt("classes_differ", lambda: type(a.models["model"]) is not type(b.models["model"]))
attempt("scorer_not_in_sys_modules", lambda: "scorer" in sys.modules)


def left_out():
    try:
        a.predict_fn.__globals__["by_name"]("LOCK")
    except LeftOutGlobalError as e:
        return str(e)
    return "no error"


attempt("left_out", left_out)
attempt("resave", lambda: str(cloudflow.save_bundle(a.predict_fn, a.models, root / "resaved")))
emit(results)
"""

RELOADER = r"""
import sys
import cloudflow

emit(cloudflow.load_bundle(sys.argv[1]).predict(x=2))
"""


@pytest.fixture(scope="module")
def notebook(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("notebook")
    work = root / "work"
    work.mkdir()
    report = run_snippet(NOTEBOOK, cwd=work, args=[str(root), json.dumps(PROJECT)])
    return root, report


@pytest.fixture(scope="module")
def loaded_elsewhere(notebook: tuple[Path, dict[str, Any]]) -> dict[str, Any]:
    root, _ = notebook
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    return run_snippet(LOADER, cwd=elsewhere, args=[str(root)])


def test_a_load_in_the_saving_process_leaves_its_live_objects_alone(
    notebook: tuple[Path, dict[str, Any]],
) -> None:
    _, report = notebook
    assert report["saved"]["a"] == {"score": 3, "tag": "a", "slots": True}
    assert report["same_process"] == report["saved"]["a"]
    assert report["untouched"] == {
        "class": True,
        "method": True,
        "bonus": True,
        "live_answer": True,
        "loaded_class_is_not_live": True,
        "sys_modules_scorer": True,
    }


def test_two_bundles_with_the_same_class_names_each_answer_their_own(
    notebook: tuple[Path, dict[str, Any]], loaded_elsewhere: dict[str, Any]
) -> None:
    _, report = notebook
    got = outcome(loaded_elsewhere, "side_by_side")
    assert got == {"a": report["saved"]["a"], "b": report["saved"]["b"], "a_again": got["a"]}
    assert report["saved"]["b"] == {"score": 150, "tag": "b", "slots": True}
    assert outcome(loaded_elsewhere, "classes_differ") is True
    assert outcome(loaded_elsewhere, "scorer_not_in_sys_modules") is False


def test_a_left_out_global_read_by_a_computed_name_says_so(
    loaded_elsewhere: dict[str, Any],
) -> None:
    message = outcome(loaded_elsewhere, "left_out")
    assert "scorer.LOCK is not in this bundle" in message
    assert "include_modules=['scorer']" in message


def test_a_loaded_predict_function_saved_again_keeps_its_call_time_imports(
    notebook: tuple[Path, dict[str, Any]], loaded_elsewhere: dict[str, Any]
) -> None:
    root, report = notebook
    outcome(loaded_elsewhere, "resave")
    third = root / "third"
    third.mkdir()
    assert run_snippet(RELOADER, cwd=third, args=[str(root / "resaved")]) == report["saved"]["a"]
    manifest = json.loads((root / "resaved" / "cloudflow" / "manifest.json").read_text())
    assert {"scorer", "scorer_helpers"} <= set(manifest["captured_modules"])
