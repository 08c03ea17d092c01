"""The first save and the load of a process: no scan of every installed distribution, no parse
of whole metadata files, the same files as before.

A training script logs once, so its first ``log_bundle`` is the one users feel. Two scans used to
cost about 2 s of it: ``importlib.metadata.packages_distributions()`` (every file of every
installed distribution mapped to an import name), once in cloudflow's requirements and once in
MLflow's check that the requirements match the environment. The tests hold cloudflow's targeted
lookup to that function's answers, cloudflow's environment files to MLflow's, and count the scans
in a fresh process's first save (the timing is ``benchmarks/bench.py``'s, not a test's).
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
from helpers import run_snippet

from cloudflow import _mlflow, _packages
from cloudflow.capture.requirements import pip_environment

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_import_names_map_to_the_distributions_importlib_names() -> None:
    everything = importlib.metadata.packages_distributions()
    names = {name for name in everything if name.isidentifier()}
    _packages._DIST_OF.clear()
    found = _packages.top_level_names_to_distributions(names)
    assert len(names) > 20, "too few installed distributions to compare"
    for name in sorted(names):
        providers = everything[name]
        # The distribution named after the import name wins where several provide it (mlflow:
        # mlflow-skinny, mlflow, mlflow-tracing), else the first, as packages_distributions()[0].
        expected = name if name in providers else providers[0]
        assert found.get(name) == expected, (name, found.get(name), providers)


def test_names_no_distribution_provides_are_left_out_and_not_remembered() -> None:
    _packages._DIST_OF.clear()
    found = _packages.top_level_names_to_distributions({"numpy", "no_such_library_here"})
    assert found == {"numpy": "numpy"}
    assert "no_such_library_here" not in _packages._DIST_OF
    assert _packages.top_level_names_to_distributions(set()) == {}


@pytest.mark.parametrize(
    "requirements",
    [
        ["cloudflow==2.0.0", "cloudpickle==3.1.2", "numpy==2.4.6", "scikit-learn==1.9.1"],
        ["cloudflow==2.0.0", "mlflow==3.17.2", "pyspark==4.3.0", "numpy==2.4.6"],
        # A portable bundle's pins for the versions a release supports, unpinned elsewhere.
        [
            "cloudflow==2.0.0",
            'numpy==2.4.6; python_version != "3.10"',
            'numpy; python_version == "3.10"',
        ],
    ],
)
def test_environment_files_are_mlflows_own(requirements: list[str]) -> None:
    ours = pip_environment(list(requirements), None, None)
    assert ours == _mlflow.process_pip_requirements(list(requirements))


def test_user_requirements_are_still_checked_against_the_environment(
    capfd: pytest.CaptureFixture[str],
) -> None:
    _, reqs, _ = pip_environment(["cloudflow==2.0.0"], None, ["numpy==0.0.1"])
    assert "numpy==0.0.1" in reqs
    assert "numpy (current: " in capfd.readouterr().err  # MLflow's mismatch warning, logged


def test_a_fresh_process_first_log_scans_no_distribution_list(tmp_path: Path) -> None:
    code = """
        import importlib.metadata, json, sys
        import importlib_metadata
        scans = []
        for module in (importlib.metadata, importlib_metadata):
            original = module.packages_distributions
            def counted(*args, _original=original, _name=module.__name__, **kwargs):
                scans.append(_name)
                return _original(*args, **kwargs)
            module.packages_distributions = counted

        import mlflow, numpy as np, cloudflow
        from sklearn.linear_model import LinearRegression

        def predict(x, reg):
            return reg.predict(np.asarray(x, dtype=float)).tolist()

        reg = LinearRegression().fit([[0.0], [1.0], [2.0]], [1.0, 3.0, 5.0])
        exp_id = cloudflow.prepare_env(sys.argv[1], "first")
        with mlflow.start_run(experiment_id=exp_id):
            info = cloudflow.log_bundle(predict, models={"reg": reg})
        bundle = cloudflow.load_bundle(info.model_uri)
        requirements = (bundle.path / "requirements.txt").read_text().split()
        emit({"scans": scans, "requirements": requirements, "answer": bundle.predict(x=[[3.0]])})
    """
    result = run_snippet(code, cwd=tmp_path, args=[str(tmp_path / "store")])
    assert result["scans"] == []
    names = {line.split("==")[0] for line in result["requirements"]}
    assert {"mlflow", "cloudflow", "numpy", "scikit-learn", "cloudpickle"} <= names
    assert result["answer"] == pytest.approx([7.0])


def test_the_pyfunc_entry_is_mlflows_add_to_model(tmp_path: Path) -> None:
    import numpy as np
    import yaml
    from mlflow.models import Model
    from mlflow.pyfunc import add_to_model

    import cloudflow
    from cloudflow.capture.requirements import LOADER_MODULE, PYFUNC_CONFIG
    from cloudflow.integrity.manifest import DATA_DIR

    def predict(x):
        return np.asarray(x) * 2

    cloudflow.save_bundle(predict, {}, tmp_path / "bundle")
    ours = yaml.safe_load((tmp_path / "bundle" / "MLmodel").read_text())["flavors"]
    expected = add_to_model(
        Model(),
        loader_module=LOADER_MODULE,
        data=DATA_DIR,
        conda_env="conda.yaml",
        python_env="python_env.yaml",
        model_config=dict(PYFUNC_CONFIG),
    ).flavors
    assert ours["python_function"] == expected["python_function"]


def test_versions_are_importlibs_for_every_installed_distribution() -> None:
    names = {str(d.metadata["Name"]) for d in importlib.metadata.distributions()}
    assert len(names) > 20, "too few installed distributions to compare"
    for name in sorted(names):
        assert _packages.distribution_version(name) == importlib.metadata.version(name), name
        requires = importlib.metadata.metadata(name).get("Requires-Python")
        expected = str(requires).strip() or None if requires else None
        assert _packages.distribution_field(name, "Requires-Python") == expected, name
    assert _packages.distribution_version("no-such-distribution-here") is None
    assert _packages.distribution_field("no-such-distribution-here", "Version") is None
