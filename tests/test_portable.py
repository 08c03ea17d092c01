"""Bundles saved with ``python_versions=[...]`` load under other CPython minor versions.

The fixture project (tests/fixtures/portable/: a package with a sub-package, relative, aliased
and lazy imports, classes with a property and zero-argument ``super()``, dataclasses, a closure,
lambdas, a ``functools.partial``, ``match`` statements and a custom scikit-learn transformer in a
Pipeline) is copied, saved by a fresh process of the main venv's interpreter (3.11 in CI), and the
copy deleted. Four bundles: ``listed`` (``python_versions`` = the other versions below), ``all``,
``default`` (the option left out) and ``generated`` (a predict function whose helper was made by
``exec``: it has no source to recompile). Fresh processes of each interpreter, from an empty
working directory, load them with ``cloudflow.load_bundle`` and ``mlflow.pyfunc.load_model``: every
answer must equal *exactly* the one the saving process computed before saving (the same numpy and
scikit-learn everywhere, so the same floats). The reverse too: saved by the 3.13 venv for the main
venv's version, loaded by the main venv.

The other interpreters are CPython 3.12 and 3.13 (pyenv), each in a venv built once and shared
(tests/pythons.py: the pinned stack of requirements/constraints.txt and this checkout's cloudflow;
uv builds both in about 30 s, pip one in about 150 s). CPython 3.10 is left out of the load
tests: the pins (numpy 2.4.6, pandas 3.1.1, scikit-learn 1.9.1) need Python 3.11 or later. A
save with ``python_versions="all"`` still compiles for 3.10 where it is installed, which the
manifest test checks. The seed API is not exercised here: it only adds a tracking store in front
of the same loading code.

Tests that need a venv of another interpreter are marked slow; one save subprocess per saving
interpreter, one loading subprocess per interpreter.
"""

from __future__ import annotations

import concurrent.futures
import json
import shutil
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    FIXTURES_DIR,
    REPO_ROOT,
    grep_tree,
    outcome,
    requirement_names,
    source_fragments,
)
from pythons import (
    CONSTRAINTS,
    Venv,
    _uv,
    ensure_venv,
    find_python,
    installed_minors,
    run_python_script,
    run_python_snippet,
    where_we_looked,
)

PORTABLE = FIXTURES_DIR / "portable"
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")

SAVING = "{}.{}".format(*sys.version_info[:2])  # the main venv's: 3.11 in CI
EXTRA_VERSIONS = ("3.12", "3.13")
TARGETS = tuple(v for v in EXTRA_VERSIONS if v != SAVING)
REVERSE_SAVER = TARGETS[-1]  # saves the reverse bundle, for SAVING
MAIN_BUNDLES = ("listed", "all", "default", "generated")


def by_version(versions: Any) -> list[str]:
    return sorted(set(versions), key=lambda v: tuple(int(p) for p in v.split(".")))


# --- outcomes that fail (or skip) only the tests that read them -------------------------------


@dataclass(frozen=True)
class Got:
    """A fixture step's value, or why there is none (an error fails the test, a skip skips it)."""

    value: Any = None
    error: str | None = None
    skip: str | None = None

    def get(self) -> Any:
        if self.skip is not None:
            pytest.skip(self.skip)
        if self.error is not None:
            raise AssertionError(self.error)
        return self.value


def gather(fn: Callable[..., Any], *args: Any) -> Got:
    try:
        return Got(value=fn(*args))
    except pytest.skip.Exception as skipped:
        return Got(skip=str(skipped))
    except Exception:  # noqa: BLE001 - reported by every test that reads the step
        return Got(error=traceback.format_exc()[-3000:])


# --- saving ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Saved:
    """What save_project.py wrote: answers before and after saving, and each save's outcome."""

    data: dict[str, Any]

    def save(self, name: str) -> dict[str, Any]:
        entry = self.data["saves"][name]
        if not entry["ok"]:
            tail = "\n".join(entry["error"].strip().splitlines()[-25:])
            raise AssertionError(f"save {name!r} raised in the saving process:\n{tail}")
        return entry

    def bundle(self, name: str) -> Path:
        return Path(self.save(name)["path"])

    def manifest(self, name: str) -> dict[str, Any]:
        path = self.bundle(name) / "cloudflow" / "manifest.json"
        return json.loads(path.read_text(encoding="utf-8"))

    def cases(self, name: str) -> list[dict[str, Any]]:
        return self.data["cases"][self.data["saves"][name]["function"]]

    def expected(self, name: str) -> list[Any]:
        return self.data["expected"][self.data["saves"][name]["function"]]

    def load_entry(self, name: str, loads: bool) -> dict[str, Any]:
        return {"path": str(self.bundle(name)), "cases": self.cases(name), "loads": loads}


def save_fixture(python: Path, root: Path, saves: list[str]) -> Saved:
    """Copy the project, run save_project.py from the copy with ``python``, delete the copy."""
    copy = root / "portable_source"
    shutil.copytree(PORTABLE, copy, ignore=_IGNORE)
    out = root / "saved.json"
    args = ["--bundles", str(root / "bundles"), "--out", str(out), *(f"--save={s}" for s in saves)]
    try:
        run_python_script(python, copy / "save_project.py", args, cwd=copy)
    finally:
        shutil.rmtree(copy)  # from here on, the project's source cannot be imported
    return Saved(json.loads(out.read_text(encoding="utf-8")))


# --- loading -----------------------------------------------------------------------------------

# argv[1]: {bundle name: {"path", "cases", "loads"}}. A bundle that "loads" is loaded and asked
# every case both ways; one that does not is expected to be refused, and the error is recorded.
LOADER = """
import importlib.util
import json
import platform
import sys

import mlflow.pyfunc

import cloudflow

spec = json.loads(sys.argv[1])
results["python"] = {"ok": True, "value": platform.python_version()}
results["importable"] = {
    "ok": True,
    "value": [m for m in ("portable_app", "generated") if importlib.util.find_spec(m)],
}


def refused(load, path):
    try:
        load(path)
    except Exception as error:
        return {"error": type(error).__name__, "message": str(error)}
    return {"error": None, "message": ""}


for name, entry in spec.items():
    path, cases = entry["path"], entry["cases"]
    if not entry["loads"]:
        attempt(f"refused:{name}", lambda path=path: refused(cloudflow.load_bundle, path))
        attempt(f"pyfunc_refused:{name}", lambda path=path: refused(mlflow.pyfunc.load_model, path))
        continue
    bundle = attempt(f"load:{name}", lambda path=path: cloudflow.load_bundle(path))
    if bundle is not None:
        attempt(f"predict:{name}", lambda b=bundle, c=cases: [b.predict(**case) for case in c])
    model = attempt(f"pyfunc_load:{name}", lambda path=path: mlflow.pyfunc.load_model(path))
    if model is not None:
        attempt(f"pyfunc:{name}", lambda m=model, c=cases: [m.predict(dict(case)) for case in c])
emit(results)
"""


def load_in(python: Path, cwd: Path, spec: Mapping[str, Any]) -> dict[str, Any]:
    cwd.mkdir(parents=True, exist_ok=True)  # empty: not where anything was saved
    return run_python_snippet(python, LOADER, cwd=cwd, args=[json.dumps(spec)])


def assert_exactly(got: list[Any], cases: list[Any], expected: list[Any]) -> None:
    """Same answers, compared through JSON: same types (1 is not 1.0) and bit-equal floats."""
    assert isinstance(got, list), f"expected a list of answers, got {got!r}"
    assert len(got) == len(expected), f"{len(got)} answers for {len(expected)} cases"
    for case, have, want in zip(cases, got, expected, strict=True):
        same = json.dumps(have, sort_keys=True) == json.dumps(want, sort_keys=True)
        assert same, f"case {case}:\n got  {have!r}\n want {want!r}"


def assert_loads_and_answers(saved: Saved, loaded: dict[str, Any], name: str) -> None:
    assert outcome(loaded, "importable") == [], "the fixture's source is importable here"
    cases, expected = saved.cases(name), saved.expected(name)
    outcome(loaded, f"load:{name}")
    assert_exactly(outcome(loaded, f"predict:{name}"), cases, expected)
    outcome(loaded, f"pyfunc_load:{name}")
    assert_exactly(outcome(loaded, f"pyfunc:{name}"), cases, expected)


def assert_refused(loaded: dict[str, Any], name: str, listed: list[str]) -> None:
    here = outcome(loaded, "python")
    for step in (f"refused:{name}", f"pyfunc_refused:{name}"):
        refusal = outcome(loaded, step)
        assert refusal["error"] == "EnvironmentMismatchError", f"{step} under {here}: {refusal}"
        missing = [v for v in listed if v not in refusal["message"]]
        assert not missing, f"{step}: {missing} not in the message: {refusal['message']}"


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def interpreters() -> dict[str, Path | None]:
    """The base interpreter of each other version, or None where this machine has none."""
    return {v: find_python(v) for v in TARGETS}


@pytest.fixture(scope="session")
def extra_venvs(interpreters: dict[str, Path | None]) -> dict[str, Got]:
    """Each other version's shared venv (built in parallel if missing), or why there is none."""

    def build(version: str) -> Venv:
        base = interpreters[version]
        if base is None:
            pytest.skip(f"no CPython {version} on this machine: {where_we_looked(version)}")
        return ensure_venv(base)

    _uv()  # once, before the threads
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(TARGETS) or 1) as pool:
        futures = {v: pool.submit(gather, build, v) for v in TARGETS}
    return {v: future.result() for v, future in futures.items()}


@pytest.fixture(scope="module")
def saved_here(
    interpreters: dict[str, Path | None], tmp_path_factory: pytest.TempPathFactory
) -> Saved:
    """The four bundles, saved by a fresh process of the main venv's interpreter."""
    found = [v for v in TARGETS if interpreters[v] is not None]
    if not found:
        looked = "; ".join(where_we_looked(v) for v in TARGETS)
        pytest.skip(f"no CPython of {list(TARGETS)} on this machine: {looked}")
    listed = ",".join(found)
    root = tmp_path_factory.mktemp("portable_here")
    saves = [f"listed={listed}", "all=all", "default=default", f"generated={listed}@generated"]
    return save_fixture(Path(sys.executable), root, saves)


@pytest.fixture(scope="module")
def loaded_here(saved_here: Saved, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The four bundles loaded by a fresh process of the main venv's interpreter."""
    spec = {name: saved_here.load_entry(name, True) for name in MAIN_BUNDLES}
    return load_in(Path(sys.executable), tmp_path_factory.mktemp("load_here"), spec)


@dataclass(frozen=True)
class Elsewhere:
    """The reverse save (by REVERSE_SAVER's venv), and the loads by each other interpreter."""

    reverse: Got  # Saved
    loaded: dict[str, Got]  # version (SAVING included, for the reverse bundle) -> LOADER results


@pytest.fixture(scope="module")
def elsewhere(
    saved_here: Saved, extra_venvs: dict[str, Got], tmp_path_factory: pytest.TempPathFactory
) -> Elsewhere:
    root = tmp_path_factory.mktemp("portable_elsewhere")

    def save_reverse() -> Saved:
        venv = extra_venvs[REVERSE_SAVER].get()
        return save_fixture(venv.python, root / "reverse", [f"reverse={SAVING}"])

    reverse = gather(save_reverse)

    def spec_for(version: str) -> dict[str, Any]:
        spec = {
            name: saved_here.load_entry(name, loads=name in ("listed", "all"))
            for name in MAIN_BUNDLES
            if saved_here.data["saves"][name]["ok"]
        }
        if reverse.error is None and reverse.skip is None:
            spec["reverse"] = reverse.value.load_entry("reverse", version == REVERSE_SAVER)
        return spec

    def load_under(version: str) -> dict[str, Any]:
        python = extra_venvs[version].get().python
        return load_in(python, root / f"load_{version}", spec_for(version))

    def load_reverse_here() -> dict[str, Any]:
        saved = reverse.get()
        spec = {"reverse": saved.load_entry("reverse", True)}
        return load_in(Path(sys.executable), root / "load_reverse_here", spec)

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(TARGETS) + 1) as pool:
        futures = {v: pool.submit(gather, load_under, v) for v in TARGETS}
        futures[SAVING] = pool.submit(gather, load_reverse_here)
    return Elsewhere(reverse=reverse, loaded={v: f.result() for v, f in futures.items()})


# --- saved here, loaded here -------------------------------------------------------------------


def test_saving_leaves_the_live_answers_alone(saved_here: Saved) -> None:
    for name in MAIN_BUNDLES:
        saved_here.save(name)
    assert saved_here.data["python"] == SAVING
    assert saved_here.data["expected_after_save"] == saved_here.data["expected"]


@pytest.mark.parametrize("name", ["listed", "all", "default"])
def test_the_project_saves_without_a_warning(saved_here: Saved, name: str) -> None:
    # Dataclass methods have no source either, but cloudflow generates them again at load.
    assert saved_here.save(name)["warnings"] == []


def test_manifest_lists_the_requested_versions_and_the_saving_one(
    saved_here: Saved, interpreters: dict[str, Path | None]
) -> None:
    found = [v for v in TARGETS if interpreters[v] is not None]
    assert saved_here.manifest("listed")["python_versions"] == by_version([SAVING, *found])


def test_manifest_of_python_versions_all(saved_here: Saved) -> None:
    versions = saved_here.manifest("all")["python_versions"]
    assert versions == by_version(versions), f"not sorted: {versions}"
    found = installed_minors()
    assert set(found) | {SAVING} <= set(versions), f"found {found}, manifest has {versions}"
    old = [v for v in versions if tuple(int(p) for p in v.split(".")) < (3, 10)]
    assert old == [], f"versions older than 3.10: {old}"


def test_manifest_without_python_versions_lists_the_saving_version_only(saved_here: Saved) -> None:
    manifest = saved_here.manifest("default")
    assert manifest.get("python_versions", [SAVING]) == [SAVING]
    assert manifest["python_version"].startswith(f"{SAVING}.")


@pytest.mark.parametrize("name", MAIN_BUNDLES)
def test_bundle_holds_no_source(saved_here: Saved, name: str) -> None:
    fragments = source_fragments(PORTABLE)
    assert len(fragments["code"]) > 100, fragments
    assert len(fragments["comments"]) > 2, fragments
    bundle = saved_here.bundle(name)
    assert grep_tree(bundle, fragments["code"] + fragments["comments"]) == []
    sources = [p.relative_to(bundle) for p in bundle.rglob("*") if p.suffix in (".py", ".pyc")]
    assert sources == []


@pytest.mark.parametrize("name", MAIN_BUNDLES)
def test_loads_under_the_saving_python(
    saved_here: Saved, loaded_here: dict[str, Any], name: str
) -> None:
    assert outcome(loaded_here, "python").startswith(f"{SAVING}.")
    assert_loads_and_answers(saved_here, loaded_here, name)


def test_code_without_source_keeps_the_bundle_to_the_saving_python(
    saved_here: Saved, loaded_here: dict[str, Any]
) -> None:
    """A helper made by exec cannot be recompiled: the save warns, naming it, and goes on."""
    save = saved_here.save("generated")
    assert len(save["options"]["python_versions"]) >= 1  # other versions were asked for
    warnings = [w for w in save["warnings"] if w["level"] == "WARNING"]
    assert any("exec_generated_bump" in w["message"] for w in warnings), save["warnings"]
    assert saved_here.manifest("generated")["python_versions"] == [SAVING]
    assert_loads_and_answers(saved_here, loaded_here, "generated")


# --- the venvs of the other interpreters -------------------------------------------------------

VENV_PROBE = """
import importlib.metadata as md
import platform

import cloudflow

emit({
    "python": platform.python_version(),
    "cloudflow": cloudflow.__file__,
    "versions": {d: md.version(d) for d in ("numpy", "scikit-learn", "pandas", "mlflow")},
})
"""


@pytest.mark.slow
@pytest.mark.parametrize("version", TARGETS)
def test_extra_venv_has_the_pinned_stack_and_this_checkout(
    extra_venvs: dict[str, Got], version: str, tmp_path: Path
) -> None:
    venv = extra_venvs[version].get()
    assert venv.minor == version
    probe = run_python_snippet(venv.python, VENV_PROBE, cwd=tmp_path)
    assert probe["python"] == venv.version
    assert Path(probe["cloudflow"]).resolve() == (REPO_ROOT / "cloudflow" / "__init__.py")
    pins = requirement_names(CONSTRAINTS)
    assert {d: f"=={v}" for d, v in probe["versions"].items()} == {
        d: pins[d] for d in probe["versions"]
    }


# --- saved here, loaded by another interpreter -------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["listed", "all"])
@pytest.mark.parametrize("version", TARGETS)
def test_loads_under_another_python(
    saved_here: Saved, elsewhere: Elsewhere, version: str, name: str
) -> None:
    loaded = elsewhere.loaded[version].get()
    assert outcome(loaded, "python").startswith(f"{version}.")
    assert_loads_and_answers(saved_here, loaded, name)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["default", "generated"])
@pytest.mark.parametrize("version", TARGETS)
def test_a_python_the_manifest_does_not_list_is_refused(
    saved_here: Saved, elsewhere: Elsewhere, version: str, name: str
) -> None:
    saved_here.save(name)
    assert_refused(elsewhere.loaded[version].get(), name, [SAVING])


# --- saved by another interpreter, loaded here -------------------------------------------------


@pytest.mark.slow
def test_saved_under_another_python_loads_here(elsewhere: Elsewhere) -> None:
    saved = elsewhere.reverse.get()
    assert saved.data["python"] == REVERSE_SAVER
    assert saved.data["expected_after_save"] == saved.data["expected"]
    assert saved.save("reverse")["warnings"] == []
    assert saved.manifest("reverse")["python_versions"] == by_version([SAVING, REVERSE_SAVER])
    loaded = elsewhere.loaded[SAVING].get()
    assert outcome(loaded, "python").startswith(f"{SAVING}.")
    assert_loads_and_answers(saved, loaded, "reverse")


@pytest.mark.slow
def test_saved_under_another_python_loads_there_too(elsewhere: Elsewhere) -> None:
    saved = elsewhere.reverse.get()
    assert_loads_and_answers(saved, elsewhere.loaded[REVERSE_SAVER].get(), "reverse")


@pytest.mark.slow
def test_saved_under_another_python_answers_as_saved_here(
    saved_here: Saved, elsewhere: Elsewhere
) -> None:
    """The same project gives the same answers whichever interpreter saved it."""
    assert elsewhere.reverse.get().data["expected"] == saved_here.data["expected"]


@pytest.mark.slow
@pytest.mark.skipif(len(TARGETS) < 2, reason="needs a third CPython version")
def test_saved_under_another_python_is_refused_by_a_third(elsewhere: Elsewhere) -> None:
    saved = elsewhere.reverse.get()
    listed = saved.manifest("reverse")["python_versions"]
    assert_refused(elsewhere.loaded[TARGETS[0]].get(), "reverse", listed)


@pytest.mark.slow
def test_bundle_saved_under_another_python_holds_no_source(elsewhere: Elsewhere) -> None:
    bundle = elsewhere.reverse.get().bundle("reverse")
    fragments = source_fragments(PORTABLE)
    assert grep_tree(bundle, fragments["code"] + fragments["comments"]) == []


def test_inspect_says_where_the_bundle_loads(saved_here: Saved) -> None:
    from click.testing import CliRunner

    from cloudflow.cli import main

    listed = saved_here.manifest("listed")["python_versions"]
    result = CliRunner().invoke(main, ["inspect", str(saved_here.bundle("listed"))])
    assert result.exit_code == 0, result.output
    assert f"loads on {', '.join(listed)}" in result.output
    as_json = CliRunner().invoke(main, ["inspect", str(saved_here.bundle("listed")), "--json"])
    assert json.loads(as_json.output)["python"]["loads_on"] == listed
