"""The ``cloudflow`` command: ``inspect`` and ``predict`` on a bundle whose source is gone.

The shop project (tests/servers.py) is saved once in a subprocess and its source deleted. Most
tests call the click command in-process (click's CliRunner); ``python -m cloudflow`` and the
``import cloudflow`` weight are checked in fresh processes.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from helpers import assert_same_prediction, assert_same_predictions, run_snippet, subprocess_env
from servers import SHOP_CASES, save_shop

import cloudflow
from cloudflow.cli import main


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("cli_shop")
    path, store = root / "bundle", root / "store"
    saved, logged = save_shop(
        root,
        {"mode": "save", "path": str(path)},
        {"mode": "log", "tracking_uri": str(store), "experiment": "cli"},
    )
    return {"path": path, "expected": saved["expected"], "store": store, "logged": logged}


def _run(*args: str, input: str | None = None) -> Any:
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def test_inspect_json_reports_everything_without_running_code(shop: dict[str, Any]) -> None:
    result = _run("inspect", str(shop["path"]), "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["integrity"] == {"status": "ok", "signed": False}
    assert info["python"] == {
        "saved": platform.python_version(),
        "here": platform.python_version(),
        "loads_on": [".".join(platform.python_version().split(".")[:2])],
        "compatible": True,
    }
    assert info["predict_fn"]["name"] == "predict"
    assert info["predict_fn"]["inputs"] == ["text", "repeat", "tags"]
    assert info["predict_fn"]["parameters"] == ["mlp", "settings", "text", "repeat", "tags"]
    assert set(info["captured_modules"]) >= {"shop.predict", "shop.features", "shop.labels"}
    report = info["captured_globals"]
    assert report["shop.features"] == {
        "globals": ["VOWELS", "normalize", "vectorize"],
        "left_out": [],
    }
    # `from __future__ import annotations` leaves a __future__ feature nothing reads.
    assert "annotations" in report["shop.predict"]["left_out"]
    assert {"normalize", "vectorize"} <= set(report["shop.predict"]["globals"])
    assert {r.split("==")[0] for r in info["requirements"]} >= {"cloudflow", "torch", "mlflow"}
    mlp = info["models"]["mlp"]
    assert mlp["flavor"] == "torch"
    assert mlp["size_bytes"] > 0
    # tiny_torch_mlp(4, 16, 8, 3) with a BatchNorm1d(16): 80 + 32 + 136 + 27 parameters.
    assert mlp["metadata"]["parameters"] == 275
    assert mlp["metadata"]["trainable_parameters"] == 275
    assert mlp["metadata"]["frozen_parameters"] == 0
    assert (mlp["metadata"]["dtype"], mlp["metadata"]["device"]) == ("float32", "cpu")
    assert mlp["metadata"]["layers"] == 4
    assert mlp["metadata"]["class"] == "torch.nn.modules.container.Sequential"
    assert info["models"]["settings"]["flavor"] == "pickle"
    assert info["size_bytes"] >= mlp["size_bytes"] + info["models"]["settings"]["size_bytes"]
    assert [c["name"] for c in info["signature"]] == ["text", "repeat", "tags"]


def test_inspect_text(shop: dict[str, Any]) -> None:
    result = _run("inspect", str(shop["path"]))
    assert result.exit_code == 0, result.output
    out = result.output
    for needle in (
        "predict function  predict(mlp, settings, text: 'str', repeat: 'int' = 1",
        "inputs            text, repeat, tags",
        f"Python            {platform.python_version()} (this interpreter",
        "integrity         ok",
        "mlp  [torch]",
        "torch.nn.modules.container.Sequential",
        "parameters 275 (trainable 275, frozen 0)",
        "settings  [pickle]",
        "shop.features",
        "    globals:  VOWELS, normalize, vectorize",
        "text: string (required)",
        "tags: array<string> (optional)",
    ):
        assert needle in out, f"{needle!r} not in:\n{out}"


def test_inspect_finds_a_changed_file(shop: dict[str, Any], tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(shop["path"], copy)
    weights = next((copy / "cloudflow" / "models" / "mlp").rglob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    result = _run("inspect", str(copy))
    assert result.exit_code == 2
    assert "integrity         FAILED" in result.output
    assert "blake3" in result.output
    assert _run("inspect", str(copy), "--no-verify").exit_code == 0


def test_predict_with_params(shop: dict[str, Any]) -> None:
    case = SHOP_CASES[3]  # text, repeat=3, tags=[]
    result = _run(
        "predict",
        str(shop["path"]),
        "--param",
        f"text={case['text']}",
        "-p",
        "repeat=3",
        "-p",
        "tags=[]",
    )
    assert result.exit_code == 0, result.output
    assert_same_prediction(json.loads(result.output), shop["expected"][3])


def test_predict_with_json_file_and_stdin(shop: dict[str, Any], tmp_path: Path) -> None:
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps(SHOP_CASES))
    result = _run("predict", str(shop["path"]), "--json", str(inputs))
    assert result.exit_code == 0, result.output
    assert_same_predictions(json.loads(result.output), SHOP_CASES, shop["expected"])
    # One object: one call. --param is added to it.
    result = _run(
        "predict", str(shop["path"]), "--json", "-", "-p", "repeat=2", input='{"text": "ok"}'
    )
    assert result.exit_code == 0, result.output
    want = json.loads(_run("predict", str(shop["path"]), "-p", "text=ok", "-p", "repeat=2").output)
    assert json.loads(result.output) == want


def test_predict_errors_are_one_line_messages(shop: dict[str, Any], tmp_path: Path) -> None:
    result = _run("predict", str(shop["path"]), "-p", "txt=hello")
    assert result.exit_code == 1
    assert "PredictArgumentError: predict has no parameter 'txt'" in result.output
    assert "Traceback" not in result.output
    result = _run("predict", str(shop["path"]), "-p", "no-equals-sign")
    assert result.exit_code == 2
    assert "is not NAME=VALUE" in result.output
    result = _run("inspect", str(tmp_path / "nothing"))
    assert result.exit_code == 1
    assert "nothing" in result.output


def test_python_dash_m_and_runs_uri(shop: dict[str, Any], tmp_path: Path) -> None:
    """``python -m cloudflow`` in a fresh process, on a runs:/ URI of a folder store."""
    store, logged = shop["store"], shop["logged"]
    uri = f"runs:/{logged['run_id']}/model"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cloudflow", *args],
            cwd=tmp_path,
            env=subprocess_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )

    tags = "tags=" + json.dumps(["b", "a"])
    done = cli("predict", uri, "--tracking-uri", str(store), "-p", "text=ok", "-p", tags)
    assert done.returncode == 0, done.stderr
    assert_same_prediction(json.loads(done.stdout), logged["expected"][2])
    done = cli("inspect", uri, "--tracking-uri", str(store))
    assert done.returncode == 0, done.stderr
    assert "integrity         ok" in done.stdout
    assert f"run               {logged['run_id']}" in done.stdout
    assert cli("--version").stdout.strip() == f"cloudflow, version {cloudflow.__version__}"


def test_import_cloudflow_stays_light(tmp_path: Path) -> None:
    heavy = ["torch", "transformers", "sklearn", "mlflow", "pandas", "tqdm", "click", "pyspark"]
    loaded = run_snippet(
        f"""
        import sys
        import cloudflow
        emit(sorted(m for m in {heavy!r} if m in sys.modules))
        """,
        cwd=tmp_path,
    )
    assert loaded == []


def test_inspect_and_list_of_a_folder_store_do_not_import_mlflow(
    shop: dict[str, Any], tmp_path: Path
) -> None:
    """A folder store answers from its sqlite file and its folders: no 2-3 s ``import mlflow``."""
    store, logged = shop["store"], shop["logged"]
    uri = f"runs:/{logged['run_id']}/model"
    seen = run_snippet(
        f"""
        import contextlib, io, sys
        from cloudflow.cli import main
        out = {{}}
        for args in (["inspect", {uri!r}], ["list"]):
            text = io.StringIO()
            with contextlib.redirect_stdout(text):
                main([*args, "--tracking-uri", {str(store)!r}], standalone_mode=False)
            out[args[0]] = text.getvalue()
        emit({{"mlflow": "mlflow" in sys.modules, **out}})
        """,
        cwd=tmp_path,
    )
    assert f"run               {logged['run_id']}" in seen["inspect"]
    assert "integrity         ok" in seen["inspect"]
    assert logged["run_id"][:8] in seen["list"]
    assert seen["mlflow"] is False
