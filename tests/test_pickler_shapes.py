"""Shapes of real code the pickler writes by value, and models bound without touching libraries.

Fixture projects of tests/fixtures/real_code/ go through the pipeline of tests/test_real_code.py:
copied, saved by a fresh process from the copy (which computes every answer first), the copy
deleted, the bundles loaded by another fresh process from an empty working directory; every
answer must equal the one computed before saving.

The shapes: objects whose ``__reduce__`` returns their name (``functools.lru_cache`` and
``functools.cache`` functions, a ``typing.NewType``, a sentinel), a ``functools.cached_property``
(which keeps a lock on Python 3.10 and 3.11), and models kept in a module-level registry of a
module that also holds ``sys``, ``torch`` and an installed library whose module-level objects are
``functools.partial`` subclasses with a ``__setstate__`` of their own: binding the models must
touch none of them; plugins imported by names computed at run time, loaded by a program that has
a ``plugins`` package of its own; modules read as attributes of an object (``KEPT.home.K``) after
the pickle has met them as the globals of their functions.
"""

from __future__ import annotations

import json
import textwrap
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import UserModules
from helpers import outcome
from test_real_code import Pipeline, RealProject, on, run_projects

import cloudflow
from cloudflow.runtime.binder import ModelBinder

# An installed library (its folder is a site-packages on sys.path) whose module-level objects are
# functools.partial subclasses with a __setstate__ that takes two arguments: calling it as
# partial's (one state tuple) fails, as torch's ShufflerIterDataPipe.__setstate__ did.
PARTLIB = textwrap.dedent(
    """
    import functools

    SETSTATE_CALLS = []


    class Step(functools.partial):
        def __setstate__(self, state, extra):
            SETSTATE_CALLS.append(state)
            super().__setstate__(state)


    def _double(x):
        return 2 * x


    def _add(x, by):
        return x + by


    STEPS = [Step(_double), Step(_add, by=1)]


    def apply_all(values):
        for step in STEPS:
            values = [step(v) for v in values]
        return values
    """
)

PIPELINES: dict[str, Pipeline] = {
    # Cached loaders called by name and as module attributes, a NewType in an annotation, a
    # sentinel whose __reduce__ returns "MISSING", a class with a cached_property.
    "named_objects": Pipeline(
        save_code="""
        from lookup import serve

        cases = [
            {"user": "alice", "text": "Hello Big World"},
            {"user": "nobody", "text": "one two"},
        ]
        save("lookup", serve.predict, {"model": {"bias": 100}}, cases)
        """
    ),
    # Plugins loaded by computed names; the loading program has a `plugins` package of its own.
    "plugin_prefix": Pipeline(
        save_code="""
        import router

        model = {"k": 1}
        named = [{"name": "scoring", "x": 1}, {"name": "ranking", "x": 2}]
        given = [{"module": "plugins.scoring", "x": 1}]
        save("fstring", router.by_fstring, {"model": model}, named)
        save("concat", router.by_concat, {"model": model}, named)
        save("argument", router.by_argument, {"model": model}, given)
        save("included", router.by_argument, {"model": model}, given, include_modules=["plugins"])
        """,
        host_files={
            "plugins/__init__.py": "",
            "plugins/scoring.py": "def score(x):\n    return f'HOST:{x}'\n",
            "plugins/ranking.py": "def score(x):\n    return f'HOST-rank:{x}'\n",
        },
        after_load="""
        attempt(
            "plugins_in_sys_modules",
            lambda: sorted(n for n in sys.modules if n.partition(".")[0] == "plugins"),
        )
        """,
    ),
    # KEPT.home is the predict function's own module, KEPT.measures one whose helper it calls.
    "held_modules": Pipeline(
        save_code="""
        from shelf import serve

        save("attribute", serve.predict, {"model": {"k": 3}}, [{"x": 2}, {"x": -1}])
        """
    ),
    # Models in a registry dict of a module holding sys, torch and partlib (above).
    "binding_registry": Pipeline(
        save_code=f"""
        site = BUNDLES.parent / "lib" / "site-packages"
        (site / "partlib").mkdir(parents=True)
        (site / "partlib" / "__init__.py").write_text({PARTLIB!r})
        sys.path.insert(0, str(site))

        import torch

        from scoring import registry

        torch.manual_seed(0)
        small = torch.nn.Linear(2, 1)
        big = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
        registry.register("small", small)
        registry.register("big", big)
        cases = [
            {{"name": "big", "rows": [[1.0, 2.0]]}},
            {{"name": "other", "rows": [[0.5, -1.0], [2.0, 0.0]]}},
        ]
        save("registry", registry.predict, {{"small": small, "big": big}}, cases)
        """,
        before_load="""
        sys.path.insert(0, spec["host_dir"] + "/../lib/site-packages")
        import partlib
        """,
        after_load="""
        def lazily():
            bundle = cloudflow.load_bundle(spec["bundles"]["registry"], lazy=True)
            return [bundle.predict(**case) for case in spec["cases"]["registry"]]


        attempt("lazy:registry", lazily)
        attempt(
            "partlib_untouched",
            lambda: {
                "setstate_calls": len(partlib.SETSTATE_CALLS),
                "steps": [[s.func.__name__, s.args, s.keywords] for s in partlib.STEPS],
            },
        )
        """,
    ),
}


@pytest.fixture(scope="session")
def shape_projects(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Callable[[], RealProject]]:
    """Every project of PIPELINES saved and loaded, two at a time; name -> getter."""
    return run_projects(tmp_path_factory, PIPELINES)


@pytest.fixture
def project(request: pytest.FixtureRequest, shape_projects: dict) -> RealProject:
    return shape_projects[request.param]()


# --- objects that pickle as a name, cached_property ------------------------------------------


@on("named_objects")
def test_cached_functions_newtype_and_sentinel_travel_by_value(project: RealProject) -> None:
    first = project.expected("lookup")[0]
    assert first["cache"] == {"maxsize": 8, "typed": False}
    assert first["one_sentinel"] is True
    assert first["annotation"] is True
    assert first["cached"] is True
    assert {"lookup.tables", "lookup.serve"} <= project.captured("lookup")
    project.assert_loads_and_predicts("lookup")


# --- models bound without touching libraries -------------------------------------------------


@on("binding_registry")
def test_models_in_a_registry_next_to_torch_sys_and_a_library_bind(project: RealProject) -> None:
    assert all(answer["registry_holds_the_models"] for answer in project.expected("registry"))
    project.assert_loads_and_predicts("registry")
    lazy = outcome(project.loaded, "lazy:registry")
    assert [answer["values"] for answer in lazy] == [
        answer["values"] for answer in project.expected("registry")
    ]
    assert outcome(project.loaded, "partlib_untouched") == {
        "setstate_calls": 0,
        "steps": [["_double", [], {}], ["_add", [], {"by": 1}]],
    }


def _home(obj: Any) -> str:
    """The top-level package an object belongs to: a module's own, else its (type's) module's."""
    if isinstance(obj, types.ModuleType):
        return obj.__name__.partition(".")[0]
    named = isinstance(obj, type | types.FunctionType)
    return str((named and obj.__module__) or type(obj).__module__).partition(".")[0]


def test_binding_visits_nothing_of_torch_transformers_or_sys(
    user_modules: UserModules, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    user_modules.write(
        {
            "bind_app.py": """
                import sys

                import torch
                import transformers
                from transformers import AutoConfig

                REGISTRY = {}


                def predict(model, rows):
                    with torch.no_grad():
                        out = REGISTRY["main"](torch.tensor(rows))
                    return {
                        "out": [round(v, 5) for v in out.flatten().tolist()],
                        "same": REGISTRY["main"] is model,
                        "config": AutoConfig.__name__,
                        "library": transformers.__name__,
                        "python": sys.version_info[0],
                    }
            """
        }
    )
    import bind_app

    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    bind_app.REGISTRY["main"] = model
    rows = [[1.0, -2.0], [0.5, 0.5]]
    expected = bind_app.predict(model, rows)
    bundle = tmp_path / "bundle"
    cloudflow.save_bundle(bind_app.predict, {"model": model}, bundle)
    user_modules.forget()

    binders: list[Any] = []
    bind = ModelBinder.bind

    def recording(self: Any, roots: list[Any]) -> Any:
        binders.append(self)
        return bind(self, roots)

    monkeypatch.setattr(ModelBinder, "bind", recording)
    loaded = cloudflow.load_bundle(str(bundle))
    assert loaded.predict(rows=rows) == expected
    assert expected["same"] is True

    (binder,) = binders
    homes = sorted({_home(obj) for obj in binder.visited})
    print(f"the binder visited {len(binder.visited)} objects, of {homes}")
    assert {"torch", "transformers", "sys", "cloudflow"}.isdisjoint(homes)
    assert 0 < len(binder.visited) < 60


def test_a_model_inside_a_library_object_fails_the_load_naming_both(
    user_modules: UserModules, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cloudflow.capture import scan
    from cloudflow.exceptions import CaptureError

    site = tmp_path / "lib" / "site-packages"  # an installed library: a site-packages folder
    (site / "holdlib").mkdir(parents=True)
    (site / "holdlib" / "__init__.py").write_text(
        "import functools\n\n\nclass Bound(functools.partial):\n    pass\n", encoding="utf-8"
    )
    monkeypatch.syspath_prepend(str(site))
    scan.library_dirs.cache_clear()
    try:
        user_modules.write(
            {
                "hold_app.py": """
                    import holdlib

                    def run(model, x):
                        return model["k"] * x

                    HOOK = None

                    def predict(model, x):
                        return HOOK(x)
                """
            }
        )
        import hold_app

        model = {"k": 3}
        hold_app.HOOK = sys_modules_holdlib().Bound(hold_app.run, model)
        assert hold_app.predict(model, 2) == 6
        bundle = tmp_path / "bundle"
        cloudflow.save_bundle(hold_app.predict, {"model": model}, bundle)
        assert (
            "holdlib"
            not in json.loads((bundle / "cloudflow" / "manifest.json").read_text(encoding="utf-8"))[
                "captured_modules"
            ]
        )
        user_modules.forget()
        with pytest.raises(CaptureError, match=r"Model 'model' is kept inside a holdlib\.Bound"):
            cloudflow.load_bundle(str(bundle))
    finally:
        scan.library_dirs.cache_clear()


def sys_modules_holdlib() -> Any:
    import holdlib

    return holdlib


# --- modules reached as attributes of an object ----------------------------------------------


@on("held_modules")
def test_a_module_met_again_as_an_attribute_carries_the_names_read_off_it(
    project: RealProject,
) -> None:
    """Both modules are pickled first as the globals of a function (the predict function's own,
    ``doubled``'s), then met again as ``KEPT.home`` and ``KEPT.measures``: the names the code reads
    off them travel; what no code reads stays out."""
    assert project.expected("attribute") == [
        {"doubled": 4, "own": 13, "units": 20},
        {"doubled": -2, "own": 4, "units": -10},
    ]
    project.assert_loads_and_predicts("attribute")
    report = project.manifest("attribute")["captured_globals"]
    assert "K" in report["shelf.serve"]["globals"]
    assert "SCALE" in report["shelf.units"]["globals"]
    assert "UNREAD_HERE" in report["shelf.serve"]["left_out"]
    assert "UNREAD_UNIT" in report["shelf.units"]["left_out"]


# --- no fallback to the loading program's modules --------------------------------------------


@on("plugin_prefix")
@pytest.mark.parametrize("variant", ["fstring", "concat"])
def test_plugins_named_by_a_constant_prefix_travel(project: RealProject, variant: str) -> None:
    assert project.expected(variant) == ["bundle:1", "bundle-rank:2"]
    project.assert_loads_and_predicts(variant)
    report = project.manifest(variant)["captured_globals"]
    for plugin in ("plugins.scoring", "plugins.ranking"):
        assert "imports 'plugins.' + a name computed at run time" in report[plugin]["whole"]
    assert outcome(project.loaded, "plugins_in_sys_modules") == []  # the host's stay unused


@on("plugin_prefix")
def test_a_plugin_the_bundle_lacks_is_never_the_loading_programs(project: RealProject) -> None:
    assert "plugins" not in {m.partition(".")[0] for m in project.captured("argument")}
    step = project.loaded["predict:argument"]
    assert not step["ok"]
    assert (
        "ModuleNotInBundleError: No module named 'plugins.scoring' in this bundle"
        in (step["error"])
    )
    assert "include_modules=['plugins']" in step["error"]
    project.assert_loads_and_predicts("included")
