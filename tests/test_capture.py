"""What a bundle captures by value, checked in-process on small throw-away user projects.

Each test writes user modules into a temp folder on ``sys.path`` (the ``user_modules`` fixture),
saves a predict function, reads ``captured_modules`` from the bundle's manifest, and where it
matters deletes the source and purges ``sys.modules`` before loading the bundle back.
Module names differ between tests so that no state can carry over from one test to the next.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import UserModules

import cloudflow

MODEL = {"k": 3}  # a plain object: the pickle fallback flavor, nothing framework-specific


def captured_modules(bundle: Path) -> set[str]:
    manifest = json.loads((bundle / "cloudflow" / "manifest.json").read_text(encoding="utf-8"))
    return set(manifest["captured_modules"])


def test_only_what_the_function_reaches_is_captured_or_executed(
    user_modules: UserModules, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    side_effect = """
        from pathlib import Path
        Path(__file__).resolve().parent.parent.joinpath("{name}.ran").write_text("ran")
    """
    root = user_modules.write(
        {
            "reach_main.py": """
                from reach_pkg.used import transform

                def predict(model, x):
                    return transform(x) * model["k"]
            """,
            "reach_pkg/__init__.py": "",
            "reach_pkg/used.py": """
                from reach_pkg.helpers import double

                def transform(x):
                    return double(x) + 1
            """,
            "reach_pkg/helpers.py": "def double(x):\n    return 2 * x\n",
            # Next to reached modules, in a reached package and in the working directory:
            "reach_pkg/unused.py": side_effect.format(name="reach_pkg_unused"),
            "reach_sibling.py": side_effect.format(name="reach_sibling"),
        }
    )
    monkeypatch.chdir(root)  # the classic tool executed every .py file under the cwd
    import reach_main

    bundle = tmp_path / "bundle"
    cloudflow.save_bundle(reach_main.predict, {"model": MODEL}, bundle)

    captured = captured_modules(bundle)
    assert {"reach_main", "reach_pkg.used", "reach_pkg.helpers"} <= captured
    assert captured & {"reach_pkg.unused", "reach_sibling"} == set()
    assert "reach_pkg.unused" not in sys.modules
    assert "reach_sibling" not in sys.modules
    assert sorted(p.name for p in tmp_path.rglob("*.ran")) == []

    user_modules.forget()
    loaded = cloudflow.load_bundle(str(bundle))
    assert loaded.predict(x=5) == (2 * 5 + 1) * 3
    assert sorted(p.name for p in tmp_path.rglob("*.ran")) == []


def test_stdlib_and_installed_packages_stay_by_reference(
    user_modules: UserModules, tmp_path: Path
) -> None:
    user_modules.write(
        {
            "byref_main.py": """
                import collections
                import json

                import numpy as np
                from sklearn.preprocessing import StandardScaler

                import byref_helper

                def predict(model, rows):
                    scaled = StandardScaler().fit_transform(np.asarray(rows, dtype=float))
                    counts = collections.Counter(int(v > 0) for v in scaled.ravel())
                    return json.dumps({"pos": counts[1], "k": byref_helper.twice(model["k"])})
            """,
            "byref_helper.py": "def twice(v):\n    return 2 * v\n",
        }
    )
    import byref_main

    bundle = tmp_path / "bundle"
    cloudflow.save_bundle(byref_main.predict, {"model": MODEL}, bundle)

    assert captured_modules(bundle) == {"byref_main", "byref_helper"}
    # numpy or scikit-learn by value would weigh megabytes.
    assert (bundle / "cloudflow" / "code.pkl").stat().st_size < 1_000_000

    numpy_before = sys.modules["numpy"]
    user_modules.forget()
    loaded = cloudflow.load_bundle(str(bundle))
    assert json.loads(loaded.predict(rows=[[1.0, 2.0], [3.0, 5.0]])) == {"pos": 2, "k": 6}
    assert sys.modules["numpy"] is numpy_before


def test_imports_inside_function_bodies_are_captured(
    user_modules: UserModules, tmp_path: Path
) -> None:
    user_modules.write(
        {
            "lazy_main.py": """
                def predict(model, x):
                    from lazy_pkg import scoring          # a submodule, by from-import
                    import lazy_pkg.sub.deep as deep      # aliased dotted import, depth 2

                    def bump(v):
                        from lazy_other import offset     # in a nested code object
                        return v + offset()

                    return scoring.score(x) + deep.DEPTH + bump(model["k"])
            """,
            "lazy_pkg/__init__.py": "",
            "lazy_pkg/scoring.py": "def score(x):\n    return 10 * x\n",
            "lazy_pkg/sub/__init__.py": "",
            "lazy_pkg/sub/deep.py": "DEPTH = 100\n",
            "lazy_other.py": "def offset():\n    return 1000\n",
        }
    )
    import lazy_main

    assert "lazy_pkg" not in sys.modules  # nothing imported it before the save

    bundle = tmp_path / "bundle"
    cloudflow.save_bundle(lazy_main.predict, {"model": MODEL}, bundle)

    captured = captured_modules(bundle)
    assert {"lazy_main", "lazy_pkg.scoring", "lazy_pkg.sub.deep", "lazy_other"} <= captured

    user_modules.forget()
    loaded = cloudflow.load_bundle(str(bundle))
    assert loaded.predict(x=2) == 20 + 100 + 3 + 1000


def test_modules_reached_through_closures_partials_and_decorators(
    user_modules: UserModules, tmp_path: Path
) -> None:
    user_modules.write(
        {
            "chan_pkg/__init__.py": "",
            "chan_pkg/main.py": """
                from .wiring import build   # relative import

                predict = build()
            """,
            "chan_pkg/wiring.py": """
                import functools

                def build():
                    from chan_pkg.closure_target import offset
                    from chan_pkg.deco_target import traced
                    from chan_pkg.partial_target import scale

                    scaled = functools.partial(scale, factor=3)

                    @traced
                    def predict(model, x):
                        return scaled(x) + offset(model["k"])

                    return predict
            """,
            "chan_pkg/closure_target.py": "def offset(k):\n    return 1000 * k\n",
            "chan_pkg/partial_target.py": "def scale(x, factor):\n    return x * factor\n",
            "chan_pkg/deco_target.py": """
                import functools

                class Tag:
                    def __init__(self, value):
                        self.value = value

                def traced(fn):
                    @functools.wraps(fn)
                    def wrapper(*args, **kwargs):
                        return [Tag("traced").value, fn(*args, **kwargs)]
                    return wrapper
            """,
        }
    )
    from chan_pkg import main

    bundle = tmp_path / "bundle"
    cloudflow.save_bundle(main.predict, {"model": MODEL}, bundle)

    captured = captured_modules(bundle)
    expected = {
        "chan_pkg.wiring",
        "chan_pkg.closure_target",
        "chan_pkg.partial_target",
        "chan_pkg.deco_target",
    }
    assert expected <= captured, f"not captured: {sorted(expected - captured)}"

    user_modules.forget()
    loaded = cloudflow.load_bundle(str(bundle))
    assert loaded.predict(x=7) == ["traced", 21 + 3000]


_DYNAMIC_MAIN = """
    import importlib

    PLUGIN = "_".join(("{prefix}", "plugin"))   # a name no scan of the code can see

    def predict(model, x):
        return importlib.import_module(PLUGIN).answer(x) + model["k"]
"""


def test_include_modules_adds_a_module_by_name(user_modules: UserModules, tmp_path: Path) -> None:
    user_modules.write(
        {
            "dyn_main.py": _DYNAMIC_MAIN.format(prefix="dyn"),
            "dyn_plugin.py": "def answer(x):\n    return 40 + x\n",
        }
    )
    import dyn_main

    bundle = tmp_path / "bundle"
    cloudflow.save_bundle(
        dyn_main.predict, {"model": MODEL}, bundle, include_modules=["dyn_plugin"]
    )
    assert {"dyn_main", "dyn_plugin"} <= captured_modules(bundle)


def test_included_module_resolves_after_load_without_source(
    user_modules: UserModules, tmp_path: Path
) -> None:
    user_modules.write(
        {
            "dyn2_main.py": _DYNAMIC_MAIN.format(prefix="dyn2"),
            "dyn2_plugin.py": "def answer(x):\n    return 40 + x\n",
        }
    )
    import dyn2_main

    bundle = tmp_path / "bundle"
    cloudflow.save_bundle(
        dyn2_main.predict, {"model": MODEL}, bundle, include_modules=["dyn2_plugin"]
    )
    user_modules.forget()
    loaded = cloudflow.load_bundle(str(bundle))
    assert loaded.predict(x=2) == 45


def test_exclude_modules_keeps_a_user_module_by_reference(
    user_modules: UserModules, tmp_path: Path
) -> None:
    user_modules.write(
        {
            "excl_main.py": """
                import excl_helper

                def predict(model, x):
                    return excl_helper.inc(x) + model["k"]
            """,
            "excl_helper.py": "def inc(x):\n    return x + 1\n",
        }
    )
    import excl_main

    bundle = tmp_path / "bundle"
    cloudflow.save_bundle(
        excl_main.predict, {"model": MODEL}, bundle, exclude_modules=["excl_helper"]
    )
    captured = captured_modules(bundle)
    assert "excl_main" in captured
    assert "excl_helper" not in captured

    # Still importable here (by reference), so the bundle works.
    user_modules.purge()
    loaded = cloudflow.load_bundle(str(bundle))
    assert loaded.predict(x=1) == 1 + 1 + 3


def test_a_function_made_by_exec_without_a_module_name_travels_by_value(
    user_modules: UserModules, tmp_path: Path
) -> None:
    """exec into a bare dict gives a function whose __module__ is None; cloudpickle finds it in
    the module that holds it and would write a reference into that captured module."""
    user_modules.write(
        {
            "exec_main.py": """
                namespace = {}
                exec("def helper(x):\\n    return x + 1\\n", namespace)
                helper = namespace["helper"]

                def predict(model, x):
                    return helper(x) * model["k"]
            """,
        }
    )
    import exec_main

    assert exec_main.helper.__module__ is None
    bundle = tmp_path / "bundle"
    cloudflow.save_bundle(exec_main.predict, {"model": MODEL}, bundle)
    user_modules.forget()
    assert cloudflow.load_bundle(str(bundle)).predict(x=4) == 15
