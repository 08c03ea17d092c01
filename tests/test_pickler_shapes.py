"""Shapes of real code the pickler writes by value, and models bound without touching libraries.

Fixture projects of tests/fixtures/real_code/ go through the pipeline of tests/test_real_code.py:
copied, saved by a fresh process from the copy (which computes every answer first), the copy
deleted, the bundles loaded by another fresh process from an empty working directory; every
answer must equal the one computed before saving.

The shapes: objects whose ``__reduce__`` returns their name (``functools.lru_cache`` and
``functools.cache`` functions, a ``typing.NewType``, a sentinel), a ``functools.cached_property``
(which keeps a lock on Python 3.10 and 3.11).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable

import pytest
from test_real_code import Pipeline, RealProject, run_project

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
}


@pytest.fixture(scope="session")
def shape_projects(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Callable[[], RealProject]]:
    """Every project of PIPELINES saved and loaded, two at a time; name -> getter."""
    roots = {name: tmp_path_factory.mktemp(name) for name in PIPELINES}
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = {
            name: pool.submit(run_project, name, pipeline, roots[name])
            for name, pipeline in PIPELINES.items()
        }
        concurrent.futures.wait(futures.values())
    return {name: future.result for name, future in futures.items()}


@pytest.fixture
def project(request: pytest.FixtureRequest, shape_projects: dict) -> RealProject:
    return shape_projects[request.param]()


def on(name: str) -> pytest.MarkDecorator:
    """Run the test with ``project`` = the fixture project ``name``."""
    return pytest.mark.parametrize("project", [name], indirect=True)


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
