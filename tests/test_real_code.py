"""End to end on fixture projects shaped like real data-science code (tests/fixtures/real_code/).

Each project is copied to a temp folder and saved there by a fresh subprocess (``cwd`` = the copy,
so its modules are importable as a user's are), which also computes every answer before saving.
The copy is then deleted and the bundles are loaded by another fresh subprocess from an empty
working directory: each answer must equal the one computed before saving.

The real-code traits under test: a package that reads its ``VERSION`` file at import (leaving a
closed file object in its namespace), modules holding locks, sockets, log handlers on open files
and web-app objects the predict function never reads, sibling service modules imported by the
saving process only, models kept in module-level registries, a 50 MB global next to a small
function, a positional-only model parameter, dispatch by name through ``sys.modules`` or
``globals()``, plugins loaded with ``importlib.import_module``, and a project installed with
``pip install -e`` into a virtual environment.

The projects are saved and loaded in parallel (two threads of subprocesses) by one session
fixture; a project whose pipeline failed fails only its own tests.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import json
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import UserModules
from helpers import (
    _PRELUDE,
    FIXTURES_DIR,
    SUBPROCESS_TIMEOUT,
    SubprocessFailed,
    assert_same_predictions,
    outcome,
    requirement_names,
    run_snippet,
    subprocess_env,
    write_files,
)

import cloudflow
from cloudflow.exceptions import CaptureError

REAL_CODE = FIXTURES_DIR / "real_code"
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "build", "*.egg-info")

# --- the saving and loading programs ---------------------------------------------------------

# Shared head of every saving program. ``save(variant, ...)`` records the answers computed before
# saving (step "expected:<variant>") and the save itself (step "save:<variant>").
SAVE_HEAD = """
import sys
from pathlib import Path

import numpy as np

import cloudflow

BUNDLES = Path(sys.argv[1])
results["cases"] = {"ok": True, "value": {}}


def save(variant, predict, models, cases, call=None, **options):
    call = call or (lambda case: predict(**models, **case))
    results["cases"]["value"][variant] = cases
    attempt(f"expected:{variant}", lambda: [call(case) for case in cases])

    def do_save():
        cloudflow.save_bundle(predict, models, BUNDLES / variant, **options)
        return str(BUNDLES / variant)

    attempt(f"save:{variant}", do_save)


def regression_data(n=60, d=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = X @ np.arange(1.0, d + 1.0) + 0.1 * rng.normal(size=n)
    return X, y
"""

SAVE_TAIL = """
emit(results)
"""

# Shared loading program: the spec (argv[1]) names the bundles and the cases of each variant.
LOAD_HEAD = """
import importlib
import json
import sys

import cloudflow

spec = json.loads(sys.argv[1])
"""

LOAD_BODY = """
for variant, path in spec["bundles"].items():
    bundle = attempt(f"load:{variant}", lambda path=path: cloudflow.load_bundle(path))
    if bundle is not None:
        cases = spec["cases"][variant]
        attempt(
            f"predict:{variant}",
            lambda bundle=bundle, cases=cases: [bundle.predict(**case) for case in cases],
        )
"""


@dataclass(frozen=True)
class Pipeline:
    """How one fixture project is saved and loaded."""

    save_code: str
    save_env: Mapping[str, str] = field(default_factory=dict)
    load_env: Mapping[str, str] = field(default_factory=dict)
    before_load: str = ""  # code run in the loading process before any bundle is loaded
    after_load: str = ""  # code run after every prediction
    host_files: Mapping[str, str] = field(default_factory=dict)  # written into the load cwd


@dataclass(frozen=True)
class RealProject:
    """A fixture project after its save and load subprocesses."""

    name: str
    root: Path
    saved: dict[str, Any]
    loaded: dict[str, Any]

    def bundle(self, variant: str) -> Path:
        return Path(outcome(self.saved, f"save:{variant}"))

    def cases(self, variant: str) -> list[dict[str, Any]]:
        return outcome(self.saved, "cases")[variant]

    def expected(self, variant: str) -> list[Any]:
        return outcome(self.saved, f"expected:{variant}")

    def manifest(self, variant: str) -> dict[str, Any]:
        path = self.bundle(variant) / "cloudflow" / "manifest.json"
        return json.loads(path.read_text(encoding="utf-8"))

    def captured(self, variant: str) -> set[str]:
        return set(self.manifest(variant)["captured_modules"])

    def assert_loads_and_predicts(self, variant: str) -> None:
        """Saved, loaded without the source, and every answer equals the one before saving."""
        expected = self.expected(variant)
        self.bundle(variant)  # fails with the save's traceback if the save raised
        outcome(self.loaded, f"load:{variant}")
        got = outcome(self.loaded, f"predict:{variant}")
        assert_same_predictions(got, self.cases(variant), expected)


def run_python(
    python: Path | str,
    code: str,
    *,
    cwd: Path,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> Any:
    """:func:`helpers.run_snippet` with another interpreter (a virtual environment's)."""
    if Path(python) == Path(sys.executable):
        return run_snippet(code, cwd=cwd, args=args, env=env)
    with tempfile.TemporaryDirectory() as tmp:
        result_path = Path(tmp) / "result.json"
        full_env = subprocess_env(env) | {"CLOUDFLOW_TEST_RESULT": str(result_path)}
        done = subprocess.run(
            [str(python), "-c", _PRELUDE + textwrap.dedent(code), *args],
            cwd=cwd,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=SUBPROCESS_TIMEOUT,
        )
        if done.returncode != 0 or not result_path.exists():
            tail = "\n".join(done.stderr.strip().splitlines()[-40:])
            raise SubprocessFailed(f"{python} -c ... exited with {done.returncode}:\n{tail}")
        return json.loads(result_path.read_text(encoding="utf-8"))


def load_spec(saved: Mapping[str, Any], **extra: Any) -> str:
    """The loading program's argv[1]: every variant whose save succeeded, with its cases."""
    cases = saved["cases"]["value"]
    bundles = {
        variant: saved[f"save:{variant}"]["value"]
        for variant in cases
        if saved.get(f"save:{variant}", {}).get("ok")
    }
    return json.dumps({"bundles": bundles, "cases": cases, **extra})


def run_project(name: str, pipeline: Pipeline, root: Path) -> RealProject:
    """Copy the project, save it from the copy, delete the copy, load from an empty cwd."""
    copy = root / f"{name}_source"
    shutil.copytree(REAL_CODE / name, copy, ignore=_IGNORE)
    bundles = root / "bundles"
    try:
        saved = run_snippet(
            SAVE_HEAD + textwrap.dedent(pipeline.save_code) + SAVE_TAIL,
            cwd=copy,
            args=[str(bundles)],
            env={k: v.format(root=root) for k, v in pipeline.save_env.items()},
        )
    finally:
        shutil.rmtree(copy)  # from here on, the project's source cannot be imported
    load_cwd = root / "load_cwd"
    load_cwd.mkdir()
    write_files(load_cwd, pipeline.host_files)
    loaded = run_snippet(
        LOAD_HEAD
        + textwrap.dedent(pipeline.before_load)
        + LOAD_BODY
        + textwrap.dedent(pipeline.after_load)
        + "\nemit(results)\n",
        cwd=load_cwd,
        args=[load_spec(saved, host_dir=str(load_cwd))],
        env={k: v.format(root=root) for k, v in pipeline.load_env.items()},
    )
    return RealProject(name=name, root=root, saved=saved, loaded=loaded)


# --- the projects ----------------------------------------------------------------------------

PIPELINES: dict[str, Pipeline] = {
    # 1. __init__ reads VERSION with `with open(...) as version_file`.
    "versioned_pkg": Pipeline(
        save_code="""
        from sklearn.linear_model import LogisticRegression

        import textstats
        from textstats import serve

        reviews = [
            ("good great film", 1), ("awful boring plot", 0), ("i love it, excellent", 1),
            ("bad and poor", 0), ("nice, good acting", 1), ("hate it", 0),
        ]
        classifier = LogisticRegression().fit(
            textstats.featurize([t for t, _ in reviews]), [label for _, label in reviews]
        )
        save(
            "versioned",
            serve.predict,
            {"classifier": classifier},
            [{"texts": ["a great, nice movie", "boring and awful"]}, {"texts": ["so so"]}],
        )
        """
    ),
    # 2. Locks, a socket, a log handler on an open file, a web app holding an Event and a
    #    generator, none of which the saved functions read.
    "web_service": Pipeline(
        save_code="""
        from sklearn.linear_model import LogisticRegression

        import churn_service.webapp  # the service imports its app at start-up
        from churn_service import runtime, scoring
        from churn_service.features import COLUMNS, build_features

        rng = np.random.default_rng(3)
        records = [
            dict(zip(COLUMNS, (int(t), float(c), int(s))))
            for t, c, s in zip(
                rng.integers(1, 72, 80), rng.uniform(15, 120, 80), rng.integers(0, 6, 80)
            )
        ]
        churned = [int(r["support_calls"] >= 3 or r["monthly_charges"] > 90) for r in records]
        model = LogisticRegression().fit(build_features(records), churned)
        customers = [
            {"tenure_months": 2, "monthly_charges": 99.0, "support_calls": 5},
            {"tenure_months": 60, "monthly_charges": 25.0, "support_calls": 0},
            {"tenure_months": 14, "monthly_charges": 70.0, "support_calls": 2},
        ]
        cases = [{"records": customers}, {"records": customers[1:]}]
        save("same_module", runtime.predict, {"model": model}, cases)
        save("sibling", scoring.predict, {"model": model}, cases)
        save(
            "route_handler",
            churn_service.webapp.predict_endpoint,
            {"model": model},
            [{"payload": case} for case in cases],
        )
        """
    ),
    # 3. The saving process imports svc.api (a web layer with import side effects).
    "svc_project": Pipeline(
        save_code="""
        from sklearn.datasets import load_iris
        from sklearn.linear_model import LogisticRegression

        import svc.api  # the server imports its whole package
        from svc.classifier.inference import predict
        from svc.classifier.model import Model

        iris = load_iris()
        model = Model(LogisticRegression(max_iter=500).fit(iris.data, iris.target),
                      iris.target_names.tolist())
        rows = [[5.1, 3.5, 1.4, 0.2], [6.3, 2.5, 4.9, 1.5], [7.7, 3.0, 6.1, 2.3]]
        save(
            "classifier",
            predict,
            {"model": model},
            [{"rows": rows}, {"rows": rows[:1], "with_scores": True}],
        )
        """,
        save_env={"SVC_API_SENTINEL": "{root}/svc_api_ran_while_saving"},
        load_env={"SVC_API_SENTINEL": "{root}/svc_api_ran_while_loading"},
    ),
    # 4. Models kept in module-level containers, the same objects also passed as models.
    "model_registry": Pipeline(
        save_code="""
        from sklearn.linear_model import LogisticRegression, Ridge
        from sklearn.preprocessing import StandardScaler
        from sklearn.tree import DecisionTreeClassifier

        from forecasting import registry, serve

        X, y = regression_data(n=80, d=3, seed=11)
        labels = (y > np.median(y)).astype(int)
        clf = LogisticRegression().fit(X, labels)
        shallow = DecisionTreeClassifier(max_depth=2, random_state=0).fit(X, labels)
        scaler = StandardScaler().fit(X)
        reg = Ridge(alpha=0.3).fit(scaler.transform(X), y)

        registry.MODELS["clf"] = clf
        registry.ENSEMBLE.extend([clf, shallow])
        registry.CHAIN = (scaler, reg)
        registry.Holder.model = reg

        cases = [{"rows": X[:4].round(3).tolist()}, {"rows": [[0.0, 0.0, 0.0]]}]
        save("dict", serve.predict_from_dict, {"clf": clf}, cases)
        save("list", serve.predict_from_list, {"clf": clf, "shallow": shallow}, cases)
        save("tuple", serve.predict_from_tuple, {"scaler": scaler, "reg": reg}, cases)
        save("class_attribute", serve.predict_from_holder, {"reg": reg}, cases)
        """
    ),
    # 5. A ~50 MB global next to a small function.
    "big_global": Pipeline(
        save_code="""
        from sklearn.linear_model import LinearRegression

        import embeddings

        X, y = regression_data(n=40, d=2, seed=5)
        model = LinearRegression().fit(X, y)
        save("small_function", embeddings.predict, {"model": model},
             [{"rows": [[0.5, -1.0], [2.0, 0.25]]}])
        """
    ),
    # 6. def predict(model, /, x)
    "posonly": Pipeline(
        save_code="""
        from sklearn.linear_model import Ridge

        import scorer

        X, y = regression_data(n=40, d=2, seed=6)
        model = Ridge().fit(X, y)
        save(
            "positional_only",
            scorer.predict,
            {"model": model},
            [{"x": [[1.0, 2.0], [-0.5, 0.0]]}],
            call=lambda case: scorer.predict(model, **case),
        )
        """
    ),
    # 8. Handlers found by a runtime string.
    "dispatch": Pipeline(
        save_code="""
        from sklearn.linear_model import LinearRegression

        import metrics_dispatch
        import transforms_dispatch

        X, y = regression_data(n=40, d=2, seed=8)
        model = LinearRegression().fit(X, y)
        rows = [[1.0, 2.0], [-3.0, 0.5], [0.25, 0.25]]
        save(
            "sys_modules_getattr",
            metrics_dispatch.predict,
            {"model": model},
            [{"metric": m, "rows": rows} for m in ("mean", "spread", "median")],
        )
        save(
            "globals_lookup",
            transforms_dispatch.predict,
            {"model": model},
            [{"transform": t, "rows": rows} for t in ("identity", "log", "square")],
        )
        """
    ),
    # 9. importlib.import_module("plugins.scaler") in the predict function; the loading program
    #    has a different `plugins` package of its own on sys.path.
    "plugin_loader": Pipeline(
        save_code="""
        from sklearn.linear_model import LinearRegression

        import pipeline

        X, y = regression_data(n=40, d=2, seed=9)
        model = LinearRegression().fit(X, y)
        save("import_module", pipeline.predict, {"model": model}, [{"rows": [[1.0, 1.0]]}])
        """,
        host_files={
            "host_plugins/plugins/__init__.py": 'ORIGIN = "host"\n',
            "host_plugins/plugins/scaler.py": """
                ORIGIN = "host"


                def scale(values):
                    return [-v for v in values]
            """,
        },
        before_load="""
        sys.path.insert(0, spec["host_dir"] + "/host_plugins")
        importlib.invalidate_caches()
        """,
        after_load="""
        attempt(
            "plugins_in_sys_modules",
            lambda: sorted(n for n in sys.modules if n.partition(".")[0] == "plugins"),
        )


        def host_plugins():
            import plugins
            import plugins.scaler

            return {
                "package": plugins.ORIGIN,
                "scaler": plugins.scaler.ORIGIN,
                "scaled": plugins.scaler.scale([2.0]),
                "from_host_dir": plugins.__file__.startswith(spec["host_dir"]),
            }


        attempt("host_plugins", host_plugins)
        """,
    ),
}


@pytest.fixture(scope="session")
def real_projects(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Callable[[], RealProject]]:
    """Every project of PIPELINES saved and loaded, two at a time; name -> getter."""
    return run_projects(tmp_path_factory, PIPELINES)


def run_projects(
    tmp_path_factory: pytest.TempPathFactory, pipelines: Mapping[str, Pipeline]
) -> dict[str, Callable[[], RealProject]]:
    """Every project of ``pipelines`` saved and loaded, two at a time; name -> getter.

    The getter re-raises the failure of that project's pipeline, so it fails its own tests only.
    """
    roots = {name: tmp_path_factory.mktemp(name) for name in pipelines}
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            name: pool.submit(run_project, name, pipeline, roots[name])
            for name, pipeline in pipelines.items()
        }
        concurrent.futures.wait(futures.values())
    return {name: future.result for name, future in futures.items()}


@pytest.fixture
def project(request: pytest.FixtureRequest, real_projects: dict) -> RealProject:
    return real_projects[request.param]()


def on(name: str) -> pytest.MarkDecorator:
    """Run the test with ``project`` = the fixture project ``name``."""
    return pytest.mark.parametrize("project", [name], indirect=True)


# --- 1. a package that reads its VERSION file ------------------------------------------------


@on("versioned_pkg")
def test_package_reading_its_version_file_saves_and_loads(project: RealProject) -> None:
    assert [answer["version"] for answer in project.expected("versioned")] == ["1.4.2"] * 2
    assert {"textstats", "textstats.tokens", "textstats.serve"} <= project.captured("versioned")
    project.assert_loads_and_predicts("versioned")


# --- 2. unpicklable globals nothing reads ------------------------------------------------------


@on("web_service")
@pytest.mark.parametrize("variant", ["same_module", "sibling", "route_handler"])
def test_unread_unpicklable_globals_do_not_block_the_save(
    project: RealProject, variant: str
) -> None:
    project.assert_loads_and_predicts(variant)


@on("web_service")
def test_predict_in_a_module_with_a_lock_socket_and_log_file_is_captured(
    project: RealProject,
) -> None:
    assert "churn_service.runtime" in project.captured("same_module")
    project.assert_loads_and_predicts("same_module")


@on("web_service")
def test_sibling_predict_does_not_drag_in_the_web_app(project: RealProject) -> None:
    captured = project.captured("sibling")
    assert {"churn_service.scoring", "churn_service.features"} <= captured
    assert captured & {"churn_service.webapp", "churn_service.runtime"} == set()


def test_predict_reading_an_unpicklable_global_fails_naming_it(
    user_modules: UserModules, tmp_path: Path
) -> None:
    from sklearn.linear_model import LogisticRegression

    source = REAL_CODE / "web_service"
    user_modules.write(
        {
            relative: (source / relative).read_text(encoding="utf-8")
            for relative in ("churn_service/__init__.py", "churn_service/guarded.py")
        }
    )
    guarded = importlib.import_module("churn_service.guarded")
    model = LogisticRegression().fit([[0.0], [1.0], [2.0], [3.0]], [0, 0, 1, 1])
    assert guarded.predict(model, [[2.5]]) == [1]

    bundle = tmp_path / "bundle"
    with pytest.raises(CaptureError, match=r"churn_service\.guarded\._CACHE_LOCK"):
        cloudflow.save_bundle(guarded.predict, {"model": model}, bundle)
    assert not bundle.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["user_src"]


# --- 3. sibling submodules the saving process imported --------------------------------------


@on("svc_project")
def test_unreached_sibling_service_module_is_not_captured(project: RealProject) -> None:
    assert (project.root / "svc_api_ran_while_saving").exists()  # the save did import svc.api
    captured = project.captured("classifier")
    assert {"svc.classifier.model", "svc.classifier.inference"} <= captured
    assert "svc.api" not in captured


@on("svc_project")
def test_unreached_sibling_service_module_is_never_executed_at_load(
    project: RealProject,
) -> None:
    project.assert_loads_and_predicts("classifier")
    assert not (project.root / "svc_api_ran_while_loading").exists()


# --- 4. models kept in module-level containers -------------------------------------------------


@on("model_registry")
@pytest.mark.parametrize("variant", ["dict", "list", "tuple", "class_attribute"])
def test_models_in_module_level_containers_are_the_loaded_models(
    project: RealProject, variant: str
) -> None:
    # "same" in each answer: the container holds the very model passed to the function.
    assert all(answer["same"] is True for answer in project.expected(variant))
    project.assert_loads_and_predicts(variant)


# --- 5. a large global nothing reads -----------------------------------------------------------


@on("big_global")
def test_large_unreached_global_stays_out_of_the_bundle(
    project: RealProject, record_property: Callable[[str, object], None]
) -> None:
    bundle = project.bundle("small_function")
    size = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
    record_property("bundle_bytes", size)
    print(f"big_global bundle: {size} bytes")
    assert size < 5_000_000, f"the bundle weighs {size} bytes: the 50 MB global travelled"
    project.assert_loads_and_predicts("small_function")


# --- 6. a positional-only model parameter ------------------------------------------------------


@on("posonly")
def test_positional_only_model_parameter(project: RealProject) -> None:
    project.assert_loads_and_predicts("positional_only")


# --- 8. dispatch by name at run time -----------------------------------------------------------


@on("dispatch")
@pytest.mark.parametrize("variant", ["sys_modules_getattr", "globals_lookup"])
def test_dispatch_by_runtime_name_finds_every_handler(project: RealProject, variant: str) -> None:
    project.assert_loads_and_predicts(variant)


# --- 9. importlib.import_module of a user plugin ---------------------------------------------


@on("plugin_loader")
def test_import_module_uses_the_bundles_plugin_not_the_hosts(project: RealProject) -> None:
    assert project.expected("import_module")[0]["origin"] == "bundle"
    project.assert_loads_and_predicts("import_module")
    assert {"pipeline", "plugins.scaler"} <= project.captured("import_module")


@on("plugin_loader")
def test_host_plugins_package_is_untouched_by_the_bundle(project: RealProject) -> None:
    outcome(project.loaded, "predict:import_module")
    assert outcome(project.loaded, "plugins_in_sys_modules") == []
    assert outcome(project.loaded, "host_plugins") == {
        "package": "host",
        "scaler": "host",
        "scaled": [-2.0],
        "from_host_dir": True,
    }


# --- 7. a project installed with pip install -e in a virtual environment ----------------------

EDITABLE_SAVE = """
import myproj.serve
import tinyfeat
import tinyfeat.sub
from myproj import serve
from myproj.pipeline import ClippedRidge


def layout():
    return {
        "myproj": myproj.serve.__file__,
        "tinyfeat": tinyfeat.sub.__file__,
        "python": sys.prefix,
    }


attempt("layout", layout)
rng = np.random.default_rng(7)
X = rng.uniform(0.0, 4.0, size=(60, 2))
y = 3.0 * X[:, 0] - X[:, 1] + 0.5 * X[:, 0] * X[:, 1]
model = ClippedRidge(alpha=0.5, floor=1.0).fit(X, y)
cases = [{"rows": [[1.0, 2.0], [3.5, 0.5]]}, {"rows": [[0.0, 4.0]]}]
save("default", serve.predict, {"model": model}, cases)
save("exclude", serve.predict, {"model": model}, cases, exclude_modules=["myproj"])
save(
    "include",
    serve.predict_with_features,
    {"model": model},
    cases,
    include_modules=["tinyfeat"],
)
# The clean process of verify=True cannot import the editable project: by value it loads, by
# reference it fails the save, naming the module that only this machine has.
save("verified", serve.predict, {"model": model}, cases, verify=True, input_example=cases[0])


def verify_by_reference():
    try:
        cloudflow.save_bundle(
            serve.predict,
            {"model": model},
            BUNDLES / "verified_by_reference",
            exclude_modules=["myproj"],
            verify=True,
            input_example=cases[0],
        )
    except cloudflow.CloudflowError as e:
        return {"error": type(e).__name__, "message": str(e)}
    return {"error": None}


attempt("verify_by_reference", verify_by_reference)
"""


@dataclass(frozen=True)
class VenvProject:
    root: Path
    python: Path
    project: RealProject


def _check(argv: Sequence[str], cwd: Path) -> str:
    done = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )
    assert done.returncode == 0, f"{' '.join(map(str, argv))} failed:\n{done.stderr[-3000:]}"
    return done.stdout


def child_venv(venv: Path) -> tuple[Path, Path]:
    """A new virtual environment that sees this one's packages: (its python, its purelib).

    The running interpreter is itself a venv, so ``--system-site-packages`` would expose the
    base interpreter's packages, which lack mlflow. The new venv instead gets a ``.pth`` file
    adding this environment's site-packages (cloudflow, mlflow, scikit-learn, pip,
    setuptools): no network, no copy. What is installed into it stays out of this one.
    """
    _check([sys.executable, "-m", "venv", "--without-pip", venv], venv.parent)
    python = venv / "bin" / "python"
    purelib = _check(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], venv.parent
    )
    here = sysconfig.get_paths()["purelib"]
    Path(purelib.strip(), "_cloudflow_tests_parent_env.pth").write_text(
        f"import site; site.addsitedir({here!r})\n", encoding="utf-8"
    )
    return python, Path(purelib.strip())


@pytest.fixture(scope="session")
def editable_project(tmp_path_factory: pytest.TempPathFactory) -> VenvProject:
    """acme-myproj installed with ``pip install -e`` (and tinyfeat-lib normally) in a new venv.

    Saved by the venv's python (:func:`child_venv`) from a neutral cwd, then both distributions
    are uninstalled and their sources deleted, then loaded by the venv's python from another cwd.
    """
    root = tmp_path_factory.mktemp("editable")
    python, _ = child_venv(root / "venv")
    sources = root / "sources"
    shutil.copytree(REAL_CODE / "editable_project", sources, ignore=_IGNORE)
    pip = [python, "-m", "pip", "--disable-pip-version-check", "--no-input", "install"]
    _check([*pip, "--no-deps", "--no-build-isolation", "-e", sources / "acme_myproj"], root)
    _check([*pip, "--no-deps", "--no-build-isolation", sources / "tinyfeat"], root)

    bundles = root / "bundles"
    save_cwd = root / "save_cwd"
    save_cwd.mkdir()
    saved = run_python(
        python, SAVE_HEAD + EDITABLE_SAVE + SAVE_TAIL, cwd=save_cwd, args=[str(bundles)]
    )
    _check([python, "-m", "pip", "uninstall", "-y", "acme-myproj", "tinyfeat-lib"], root)
    shutil.rmtree(sources)

    load_cwd = root / "load_cwd"
    load_cwd.mkdir()
    spec = json.loads(load_spec(saved))
    spec["bundles"].pop("exclude", None)  # by reference: cannot load once uninstalled
    loaded = run_python(
        python, LOAD_HEAD + LOAD_BODY + "\nemit(results)\n", cwd=load_cwd, args=[json.dumps(spec)]
    )
    return VenvProject(
        root=root,
        python=python,
        project=RealProject(name="editable_project", root=root, saved=saved, loaded=loaded),
    )


@pytest.mark.slow
def test_editable_install_is_captured_and_loads_after_uninstall(
    editable_project: VenvProject,
) -> None:
    project = editable_project.project
    layout = outcome(project.saved, "layout")
    assert "site-packages" not in layout["myproj"]  # the editable source tree
    assert "site-packages" in layout["tinyfeat"]  # a normal install
    assert Path(layout["python"]).resolve() == (editable_project.root / "venv").resolve()
    captured = project.captured("default")
    expected = {"myproj.serve"}
    assert expected <= captured, f"not captured: {sorted(expected - captured)}"
    project.assert_loads_and_predicts("default")


@pytest.mark.slow
def test_editable_project_is_not_a_requirement(editable_project: VenvProject) -> None:
    project = editable_project.project
    requirements = requirement_names(project.bundle("default") / "requirements.txt")
    assert "acme-myproj" not in requirements
    assert "myproj" not in requirements


@pytest.mark.slow
def test_model_class_of_the_editable_subpackage_travels_with_the_bundle(
    editable_project: VenvProject,
) -> None:
    captured = editable_project.project.captured("default")
    assert {"myproj.pipeline.estimators", "myproj.pipeline.features"} <= captured


@pytest.mark.slow
def test_exclude_modules_keeps_the_editable_project_by_reference(
    editable_project: VenvProject,
) -> None:
    captured = editable_project.project.captured("exclude")
    assert sorted(m for m in captured if m == "myproj" or m.startswith("myproj.")) == []


@pytest.mark.slow
def test_verify_hides_the_editable_project_from_the_clean_process(
    editable_project: VenvProject,
) -> None:
    project = editable_project.project
    project.assert_loads_and_predicts("verified")
    failed = outcome(project.saved, "verify_by_reference")
    assert failed["error"] == "CaptureError"
    assert "myproj" in failed["message"]
    assert "Nothing was saved" in failed["message"]
    assert not (project.root / "bundles" / "verified_by_reference").exists()


@pytest.mark.slow
def test_include_modules_covers_submodules_of_an_installed_package(
    editable_project: VenvProject,
) -> None:
    project = editable_project.project
    assert {"tinyfeat", "tinyfeat.sub"} <= project.captured("include")
    project.assert_loads_and_predicts("include")  # tinyfeat-lib is uninstalled by now
