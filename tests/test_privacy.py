"""What a bundle reveals of the saving machine and of the source: no paths, and no docstrings on
request. (The bundle ships bytecode, never source text or comments; bytecode can be decompiled, so
this is obfuscation, not protection against a determined reader.)
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path

import mlflow
import pytest
from conftest import SavedProject, UserModules
from helpers import grep_tree

import cloudflow

DOCSTRINGS = [
    "MODULE_DOC_6b1f",
    "CLASS_DOC_6b1f",
    "METHOD_DOC_6b1f",
    "PROPERTY_DOC_6b1f",
    "STATIC_DOC_6b1f",
    "FUNCTION_DOC_6b1f",
    "NESTED_DOC_6b1f",
    "WRAPPER_DOC_6b1f",
    "PACKAGE_DOC_6b1f",
]
# String constants that are not docstrings: they are the program, they must stay.
KEPT = [
    "GLOBAL_STR_6b1f",
    "FIRST_CONST_6b1f",
    "NESTED_RETURN_6b1f",
    "LAMBDA_STR_6b1f",
    "PROPERTY_RETURN_6b1f",
    "CLASS_ATTR_6b1f",
]

PRIVACY_APP = {
    "privacy_app/__init__.py": '"""PACKAGE_DOC_6b1f"""\n',
    "privacy_app/core.py": '''
        """MODULE_DOC_6b1f"""
        import functools

        GREETING = "GLOBAL_STR_6b1f"


        class Model:
            """CLASS_DOC_6b1f"""

            label = "CLASS_ATTR_6b1f"

            def __init__(self, k):
                self.k = k

            @property
            def name(self):
                """PROPERTY_DOC_6b1f"""
                return "PROPERTY_RETURN_6b1f"

            def scale(self, x):
                """METHOD_DOC_6b1f"""
                if x < 0:
                    raise ValueError("negative input")
                return self.k * x

            @staticmethod
            def unit():
                """STATIC_DOC_6b1f"""
                return 1


        def logged(func):
            @functools.wraps(func)
            def wrapper(*args, **kwargs):
                """WRAPPER_DOC_6b1f"""
                return func(*args, **kwargs)

            return wrapper


        def no_docstring():
            return "FIRST_CONST_6b1f"


        @logged
        def predict(model, x):
            """FUNCTION_DOC_6b1f"""

            def nested():
                """NESTED_DOC_6b1f"""
                return "NESTED_RETURN_6b1f"

            shout = lambda: "LAMBDA_STR_6b1f"  # noqa: E731
            return [
                GREETING, no_docstring(), nested(), shout(), model.name, model.label,
                model.scale(x) * Model.unit(),
            ]
    ''',
}
EXPECTED = [*KEPT, 6]


@pytest.fixture
def privacy_app(user_modules: UserModules, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The app, with the working directory in the project folder, as when a user saves."""
    user_modules.write(PRIVACY_APP)
    monkeypatch.chdir(user_modules.root)
    from privacy_app import core

    return core


def code_bytes(bundle: Path) -> bytes:
    return (bundle / "cloudflow" / "code.pkl").read_bytes() + b"".join(
        p.read_bytes() for p in (bundle / "cloudflow" / "models").rglob("*") if p.is_file()
    )


@pytest.mark.parametrize("strip", [True, False])
def test_strip_docstrings_removes_every_docstring_and_nothing_else(
    privacy_app, tmp_path: Path, strip: bool
) -> None:
    bundle = tmp_path / "bundle"
    model = privacy_app.Model(3)
    cloudflow.save_bundle(privacy_app.predict, {"model": model}, bundle, strip_docstrings=strip)
    raw = code_bytes(bundle)
    for text in KEPT:
        assert text.encode() in raw, text
    for text in DOCSTRINGS:
        assert (text.encode() in raw) is not strip, text
    loaded = cloudflow.load_bundle(bundle)
    assert loaded.predict(x=2) == EXPECTED
    if strip:
        assert loaded.predict_fn.__doc__ is None
        assert type(loaded.models["model"]).__doc__ is None


def _needles(*folders: Path) -> list[str]:
    """Paths of the saving machine that must not appear: the project, its parents, home, cwd."""
    needles = {str(f.resolve()) for f in folders} | {os.getcwd()}
    home = str(Path.home())
    if len(home) > 1:
        needles.add(home)
    return sorted(needles)


def _grep_bundle(root: Path, needles: list[str]) -> list[tuple[str, str]]:
    """Hits of the needles in every file of a bundle.

    MLflow writes the logged model's artifact location into MLmodel (``artifact_path``) for any
    model it logs; that names the tracking store, not the project, and is left out here.
    """
    hits = []
    for rel, needle in grep_tree(root, needles):
        if Path(rel).name == "MLmodel":
            lines = (root / rel).read_text(encoding="utf-8").splitlines()
            if not any(needle in line for line in lines if not line.startswith("artifact_path:")):
                continue
        hits.append((rel, needle))
    return hits


def test_no_path_of_the_saving_machine_in_any_file(
    privacy_app,
    user_modules: UserModules,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    mlflow_state: None,
) -> None:
    """save_bundle and log_bundle bundles: code, models, manifest, MLmodel, requirements."""
    out = tmp_path_factory.mktemp("elsewhere")
    models = {"model": privacy_app.Model(3)}
    cloudflow.save_bundle(privacy_app.predict, models, out / "bundle")
    experiment_id = cloudflow.prepare_env(out / "store", "privacy")
    with mlflow.start_run(experiment_id=experiment_id) as run:
        cloudflow.log_bundle(privacy_app.predict, models)
    logged = cloudflow.load_bundle(f"runs:/{run.info.run_id}/model").path
    needles = _needles(user_modules.root, tmp_path)
    for bundle in (out / "bundle", logged):
        files = {p.name for p in bundle.rglob("*") if p.is_file()}
        assert {"MLmodel", "manifest.json", "code.pkl", "requirements.txt"} <= files
        assert _grep_bundle(bundle, needles) == []
        assert cloudflow.load_bundle(bundle).predict(x=2) == EXPECTED


def test_tracebacks_show_module_relative_paths(privacy_app, tmp_path: Path) -> None:
    cloudflow.save_bundle(privacy_app.predict, {"model": privacy_app.Model(3)}, tmp_path / "b")
    loaded = cloudflow.load_bundle(tmp_path / "b")
    with pytest.raises(ValueError, match="negative input") as info:
        loaded.predict(x=-1)
    frames = [f.filename for f in traceback.extract_tb(info.value.__traceback__)]
    assert "privacy_app/core.py" in frames
    assert not [f for f in frames if "user_src" in f or str(tmp_path) in f]


def test_fixture_project_bundles_hold_no_path_of_their_source(
    saved_project_a: SavedProject,
) -> None:
    """Three flavors, nested packages, a seed-API store: the realistic case."""
    assert saved_project_a.store is not None
    needles = _needles(saved_project_a.source_copy)
    assert any("project_a_source" in n for n in needles)
    assert _grep_bundle(saved_project_a.bundle_path, needles) == []
    assert _grep_bundle(saved_project_a.store / "artifacts", needles) == []
