"""REST serving: ``mlflow models serve --env-manager local`` answers what ``predict`` answers.

The shop project is saved twice (its source then deleted): with the inferred signature and an
input example (the default), and with ``signature=False``. Each is served on a free port of
127.0.0.1. Request shapes:

- ``{"inputs": {...}}``: one call; ``{"inputs": [{...}, ...]}``: one call each (both bundles);
- ``{"dataframe_records": [...]}``: one call per row, for a bundle without signature. MLflow
  refuses other keys than ``inputs`` for a model whose signature comes from type hints, as a
  bundle's does.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import assert_same_prediction, assert_same_predictions
from servers import SHOP_CASES, Server, model_server, save_shop

pytestmark = pytest.mark.slow

EXAMPLE = SHOP_CASES[1]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("serving")
    with_sig, without = save_shop(
        root,
        {"mode": "save", "path": str(root / "signed"), "save_kwargs": {"input_example": EXAMPLE}},
        {"mode": "save", "path": str(root / "plain"), "save_kwargs": {"signature": False}},
    )
    assert with_sig["expected"] == without["expected"]
    return {"root": root, "expected": with_sig["expected"]}


@pytest.fixture(scope="module")
def servers(saved: dict[str, Any]) -> Iterator[dict[str, Server]]:
    """Both bundles served, each by its own scoring server."""
    with contextlib.ExitStack() as stack:
        yield {
            name: stack.enter_context(
                model_server(str(saved["root"] / name), saved["root"] / f"{name}.log")
            )
            for name in ("signed", "plain")
        }


@pytest.fixture(params=["signed", "plain"])
def server(request: pytest.FixtureRequest, servers: dict[str, Server]) -> Server:
    return servers[request.param]


def test_inputs_object_is_one_call(server: Server, saved: dict[str, Any]) -> None:
    for case, want in zip(SHOP_CASES, saved["expected"], strict=True):
        status, answer = server.post_json("/invocations", {"inputs": case})
        assert status == 200, answer
        assert_same_prediction(answer["predictions"], want, f"case {case}")


def test_inputs_list_is_one_call_each(server: Server, saved: dict[str, Any]) -> None:
    status, answer = server.post_json("/invocations", {"inputs": SHOP_CASES})
    assert status == 200, answer
    assert_same_predictions(answer["predictions"], SHOP_CASES, saved["expected"])


def test_unknown_parameter_is_a_client_error(server: Server) -> None:
    status, answer = server.post_json("/invocations", {"inputs": {"txt": "hello"}})
    assert status == 400
    # cloudflow's own message is the answer's, not MLflow's generic one; no traceback, no paths.
    assert "predict has no parameter 'txt'" in answer["message"], answer
    assert "Verify that the serialized input" not in answer["message"]
    assert answer["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "stack_trace" not in answer
    assert "/site-packages/" not in json.dumps(answer)


def test_dataframe_records_without_signature(
    servers: dict[str, Server], saved: dict[str, Any]
) -> None:
    """One call per row; a row without 'repeat' or 'tags' gets the defaults, not NaN."""
    records = {"dataframe_records": SHOP_CASES}
    status, answer = servers["plain"].post_json("/invocations", records)
    assert status == 200, answer
    assert_same_predictions(answer["predictions"], SHOP_CASES, saved["expected"])


def test_bundle_with_signature_takes_inputs_only(
    servers: dict[str, Server], saved: dict[str, Any]
) -> None:
    signed = servers["signed"]
    status, answer = signed.post_json("/invocations", {"dataframe_records": SHOP_CASES})
    assert status == 400
    assert "'inputs' key" in answer["message"]
    # The example MLflow wrote beside the model is a valid request as it is.
    example_file = saved["root"] / "signed" / "serving_input_example.json"
    status, answer = signed.post_json("/invocations", json.loads(example_file.read_text()))
    assert status == 200, answer
    assert_same_prediction(answer["predictions"], saved["expected"][1])


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_readme_curl_example(servers: dict[str, Server], saved: dict[str, Any]) -> None:
    """The README's request, run with curl as written (only host and port differ)."""
    command = (
        "curl -s -X POST http://127.0.0.1:5001/invocations "
        "-H 'Content-Type: application/json' "
        """-d '{"inputs": {"text": "not good at all", "repeat": 2}}'"""
    )
    argv = shlex.split(command.replace("http://127.0.0.1:5001", servers["signed"].url))
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)
    assert_same_prediction(json.loads(done.stdout), {"predictions": saved["expected"][1]})
