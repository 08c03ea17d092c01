"""Bundles saved with ``python_versions=[...]`` load under other CPython minor versions.

The fixture project (tests/fixtures/portable/: a package with a sub-package, relative, aliased
and lazy imports, classes with a property, a ``functools.cached_property`` (a lock in it on
3.10 and 3.11) and zero-argument ``super()``, dataclasses, a closure,
lambdas, a ``functools.partial``, ``match`` statements and a custom scikit-learn transformer in a
Pipeline) is copied, saved by a fresh process of the main venv's interpreter (3.11 in CI), and the
copy deleted. Seven bundles: ``listed`` (``python_versions`` = the other versions below),
``all``, ``default`` (the option left out), ``generated`` (a predict function whose helper was
made by ``exec``: it has no source to recompile), ``records`` (a ``namedtuple`` and a
``typing.NamedTuple`` with methods, made again at load), ``kept`` (a module with a dataclass that
also keeps the model in a global: the model is bound where the regenerated methods see it) and
``seed`` (``listed`` saved through the seed API into a tracking store). Fresh processes of each
interpreter, from an empty working directory, load them with ``cloudflow.load_bundle``,
``mlflow.pyfunc.load_model`` and, for ``seed``, ``cloudflow_model().load_model``: every answer
must equal *exactly* the one the saving process computed before saving. The reverse too: saved
by the 3.13 venv for the main venv's version, loaded by the main venv.

The other interpreters are CPython 3.10, 3.12 and 3.13 (pyenv), each in a venv built once and
shared (tests/pythons.py, this checkout's cloudflow installed editable; with uv, built one after
the other on a busy 2-core machine: 52 s for 3.10, 89 s for 3.12, 86 s for 3.13; the fixture
builds them in parallel). 3.12 and 3.13 take the pins of
requirements/constraints.txt, so they run the very numpy and scikit-learn that saved. 3.10 cannot
(numpy 2.4.6, pandas 3.1.1 and scikit-learn 1.9.1 need 3.11+): its venv takes
requirements/constraints-py310.txt (numpy 2.2.6, scikit-learn 1.7.2). The test still asks for
the same floats there, which this pipeline gives, and checks that the load names the library
versions that differ, that the save's requirements.txt pins those releases for the other versions
only (environment markers), that it resolves in each venv, and that it would not under 3.10
without the markers.

Tests that need a venv of another interpreter are marked slow; one save subprocess per saving
interpreter, one loading subprocess per interpreter.
"""

from __future__ import annotations

import concurrent.futures
import json
import shutil
import subprocess
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
    Venv,
    _uv,
    constraints_for,
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
EXTRA_VERSIONS = ("3.10", "3.12", "3.13")
TARGETS = tuple(v for v in EXTRA_VERSIONS if v != SAVING)
REVERSE_SAVER = TARGETS[-1]  # saves the reverse bundle, for SAVING
MAIN_BUNDLES = ("listed", "all", "default", "generated", "records", "kept", "seed")
# The bundles that list the other versions, and so load there.
PORTABLE_BUNDLES = ("listed", "all", "records", "kept", "seed")


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
        entry = {"path": str(self.bundle(name)), "cases": self.cases(name), "loads": loads}
        if "seed" in self.save(name):
            entry["seed"] = self.save(name)["seed"]
        return entry


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
import logging
import platform
import sys

import mlflow.pyfunc

import cloudflow

spec = json.loads(sys.argv[1])
results["python"] = {"ok": True, "value": platform.python_version()}
results["importable"] = {
    "ok": True,
    "value": [
        m
        for m in ("portable_app", "generated", "records", "calibrated")
        if importlib.util.find_spec(m)
    ],
}


class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


collect = Collect()
logging.getLogger("cloudflow").addHandler(collect)


def seed_answers(seed, cases):
    model = cloudflow.cloudflow_model()
    model.load_model(seed["store"], seed["experiment_id"], seed["run_id"])
    return [model.predict(**case) for case in cases]


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
    collect.messages = []
    bundle = attempt(f"load:{name}", lambda path=path: cloudflow.load_bundle(path))
    results[f"load_warnings:{name}"] = {"ok": True, "value": list(collect.messages)}
    if bundle is not None:
        attempt(f"predict:{name}", lambda b=bundle, c=cases: [b.predict(**case) for case in c])
    if "seed" in entry:
        attempt(f"seed:{name}", lambda s=entry["seed"], c=cases: seed_answers(s, c))
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
    if f"seed:{name}" in loaded:  # a bundle the seed API saved: its load_model and predict
        assert_exactly(outcome(loaded, f"seed:{name}"), cases, expected)


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
    """The bundles of MAIN_BUNDLES, saved by a fresh process of the main venv's interpreter."""
    found = [v for v in TARGETS if interpreters[v] is not None]
    if not found:
        looked = "; ".join(where_we_looked(v) for v in TARGETS)
        pytest.skip(f"no CPython of {list(TARGETS)} on this machine: {looked}")
    listed = ",".join(found)
    root = tmp_path_factory.mktemp("portable_here")
    saves = [
        f"listed={listed}",
        "all=all",
        "default=default",
        f"generated={listed}@generated",
        f"records={listed}@records",
        f"kept={listed}@kept",
        f"seed={listed}@portable@seed",
    ]
    return save_fixture(Path(sys.executable), root, saves)


@pytest.fixture(scope="module")
def loaded_here(saved_here: Saved, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The bundles of MAIN_BUNDLES loaded by a fresh process of the main venv's interpreter."""
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
            name: saved_here.load_entry(name, loads=name in PORTABLE_BUNDLES)
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


def left_behind(saved: Saved, name: str) -> dict[str, str]:
    """The bundle's libraries whose saved release has no 3.10 build, by their saved version.

    Read off the constraints files (constraints-py310.txt pins another release of exactly those),
    not computed the way the save computes it; empty when the bundle does not list 3.10.
    """
    manifest = saved.manifest(name)
    if "3.10" not in manifest["python_versions"] or SAVING == "3.10":
        return {}
    here, old = (
        requirement_names(constraints_for(SAVING)),
        requirement_names(constraints_for("3.10")),
    )
    return {
        dist: version
        for dist, version in sorted(manifest["libraries"].items())
        if dist in here and here[dist] != old.get(dist)
    }


@pytest.mark.parametrize("name", ["listed", "all", "default", "records", "kept", "seed"])
def test_the_project_saves_without_a_code_warning(saved_here: Saved, name: str) -> None:
    """No code keeps the bundle to one version: dataclass methods, namedtuple and NamedTuple
    classes have no source either, but cloudflow makes them again at load. The one warning a
    save may give names the pinned releases that do not install on a listed version."""
    messages = [w["message"] for w in saved_here.save(name)["warnings"]]
    behind = left_behind(saved_here, name)
    if not behind:
        assert messages == []
        return
    assert len(messages) == 1, messages
    assert "do not install on every Python" in messages[0]
    for dist, version in behind.items():
        assert f"{dist} {version} needs Python >=" in messages[0], messages[0]
    assert "so not 3.10" in messages[0]


@pytest.mark.parametrize("name", ["listed", "all", "seed"])
def test_requirements_say_where_each_pin_installs(saved_here: Saved, name: str) -> None:
    import yaml

    bundle, manifest = saved_here.bundle(name), saved_here.manifest(name)
    lines = (bundle / "requirements.txt").read_text(encoding="utf-8").splitlines()
    behind = left_behind(saved_here, name)
    expected_marked = []
    for dist, version in behind.items():
        expected_marked += [f'{dist}=={version}; python_version != "3.10"']
        expected_marked += [f'{dist}; python_version == "3.10"']
    assert [line for line in lines if ";" in line] == expected_marked
    pinned = {f"{d}=={v}" for d, v in manifest["libraries"].items() if d not in behind}
    assert pinned <= set(lines), lines
    env_text = (bundle / "python_env.yaml").read_text(encoding="utf-8")
    assert f"loads on Python {', '.join(manifest['python_versions'])}" in env_text
    # One `python:` field, MLflow's: the saving version, so that serving builds what was saved.
    assert yaml.safe_load(env_text)["python"] == saved_here.data["python_full"]
    mlmodel = yaml.safe_load((bundle / "MLmodel").read_text(encoding="utf-8"))
    assert mlmodel["flavors"]["cloudflow"]["python_versions"] == manifest["python_versions"]


def test_a_pin_without_requires_python_stays_a_pin() -> None:
    from cloudflow.capture.portable import requirement_lines

    assert requirement_lines("no-such-distribution", "1.0", ["3.10", "3.13"]) == (
        ["no-such-distribution==1.0"],
        "",
    )
    # cloudpickle 3.1.2 asks for Python >= 3.8: every listed version installs it.
    assert requirement_lines("cloudpickle", "3.1.2", ["3.10", "3.11", "3.13"]) == (
        ["cloudpickle==3.1.2"],
        "",
    )


def test_a_bundle_for_one_version_keeps_mlflows_files_as_they_were(saved_here: Saved) -> None:
    import yaml

    bundle = saved_here.bundle("default")
    assert "cloudflow:" not in (bundle / "python_env.yaml").read_text(encoding="utf-8")
    mlmodel = yaml.safe_load((bundle / "MLmodel").read_text(encoding="utf-8"))
    assert "python_versions" not in mlmodel["flavors"]["cloudflow"]
    lines = (bundle / "requirements.txt").read_text(encoding="utf-8").splitlines()
    assert [line for line in lines if ";" in line] == []


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


def test_a_model_in_a_module_global_is_bound_next_to_a_regenerated_dataclass(
    saved_here: Saved, loaded_here: dict[str, Any]
) -> None:
    """``dataclass`` is applied again at load while the module's globals still hold the model's
    placeholder; the methods it makes read those very globals, where the model is then bound."""
    assert len(saved_here.manifest("kept")["python_versions"]) > 1  # a portable bundle
    expected = saved_here.expected("kept")
    assert [answer["same_model"] for answer in expected] == [True, True]
    assert expected[1]["converted"] == {"amount": 1.5, "currency": "GBP", "notes": ["from USD"]}
    assert_loads_and_answers(saved_here, loaded_here, "kept")


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
    pins = requirement_names(constraints_for(version))
    assert {d: f"=={v}" for d, v in probe["versions"].items()} == {
        d: pins[d] for d in probe["versions"]
    }


# --- saved here, loaded by another interpreter -------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", PORTABLE_BUNDLES)
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


@pytest.mark.slow
@pytest.mark.parametrize("version", TARGETS)
def test_a_load_names_the_libraries_whose_versions_differ(
    saved_here: Saved, elsewhere: Elsewhere, version: str
) -> None:
    """Under 3.10 the pipeline meets scikit-learn 1.7.2 and numpy 2.2.6 (1.9.1 and 2.4.6 have no
    3.10 build): it answers the same here, and the load says which versions differ."""
    loaded = elsewhere.loaded[version].get()
    here, there = (
        requirement_names(constraints_for(SAVING)),
        requirement_names(constraints_for(version)),
    )
    libraries = saved_here.manifest("listed")["libraries"]
    differ = {d: v for d, v in libraries.items() if d in here and here[d] != there.get(d)}
    mismatch = [m for m in outcome(loaded, "load_warnings:listed") if "other library" in m]
    if not differ:
        assert mismatch == []
        return
    assert len(mismatch) == 1, mismatch
    for dist, version_saved in differ.items():
        assert f"{dist} {version_saved} -> {there[dist].lstrip('=')}" in mismatch[0]


def dry_run(venv: Venv, requirements: Path) -> subprocess.CompletedProcess[str]:
    """Whether ``requirements`` install into ``venv``, resolved offline against what it holds."""
    uv = _uv()
    if uv is not None:
        argv = [uv, "pip", "install", "--dry-run", "--offline", "--python", str(venv.python)]
    else:
        argv = [str(venv.python), "-m", "pip", "install", "--dry-run", "--no-index"]
    return subprocess.run(
        [*argv, "-r", str(requirements)], capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
@pytest.mark.parametrize("version", TARGETS)
def test_requirements_install_on_each_listed_version(
    saved_here: Saved, extra_venvs: dict[str, Got], version: str, tmp_path: Path
) -> None:
    """The bundle's requirements.txt resolves in each listed version's venv (which holds that
    version's pins, cloudflow included), offline; without its markers it would not under 3.10."""
    venv = extra_venvs[version].get()
    requirements = saved_here.bundle("listed") / "requirements.txt"
    done = dry_run(venv, requirements)
    assert done.returncode == 0, done.stdout + done.stderr
    behind = left_behind(saved_here, "listed")
    if version == "3.10" and behind:
        bare = tmp_path / "requirements.txt"
        lines = requirements.read_text(encoding="utf-8").splitlines()
        bare.write_text("\n".join(line.split(";")[0] for line in lines if "==" in line) + "\n")
        done = dry_run(venv, bare)
        assert done.returncode != 0, done.stdout + done.stderr
        assert any(dist in done.stdout + done.stderr for dist in behind), done.stderr


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
