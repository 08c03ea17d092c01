"""pytest plugin (``-p peer_plugin``) running cloudpickle's suite against cloudflow's pickler.

Loaded before the suite is collected, so ``testutils``'s module-level ``loads = pickle.loads`` and
``from cloudpickle import dumps`` already bind the routing wrappers of :mod:`cloudflow_peer`.
Around each test it writes ``begin <nodeid>`` / ``end`` into the routing log, so the harness can
tell which tests pickled through cloudflow at all (tests run one at a time; child processes append
to the same log while their test runs).
"""

from __future__ import annotations

from collections.abc import Iterator

import cloudflow_peer
import pytest

cloudflow_peer.install()


def pytest_report_header(config: pytest.Config) -> str:
    return (
        "cloudflow peer run: the suite pickles with cloudflow.capture.codewriter.dumps and "
        "cloudflow.runtime.unpickler.loads"
    )


def pytest_sessionstart(session: pytest.Session) -> None:
    import pickle

    import cloudpickle

    if not (pickle.loads is cloudflow_peer.loads and cloudpickle.dumps is cloudflow_peer.dumps):
        raise pytest.UsageError("cloudflow_peer routing is not installed")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    cloudflow_peer.mark(f"begin {item.nodeid}")
    yield
    cloudflow_peer.mark("end")
