"""The names bundles' pickles use for cloudflow's reconstructors stay, and still resolve.

Every bundle's pickles name their reconstructors ``cloudflow._pickler.<name>``: that module is
frozen, whichever module holds the code. A fresh bundle (its code pickle, a model's pickle, the
code pickle of a portable bundle) names nothing else of cloudflow's, and pickles written by
cloudflow before its save and load sides were split (tests/fixtures/golden, see make_golden.py
there) load and answer as they did.
"""

from __future__ import annotations

import importlib
import io
import json
import pickletools
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cloudflow
from cloudflow import _pickler
from cloudflow.capture.codewriter import CodeWriter
from cloudflow.capture.policy import CapturePolicy
from cloudflow.runtime.codetables import read_table
from cloudflow.runtime.unpickler import (
    FORMAT_MODULE,
    RECONSTRUCTORS,
    LoadContext,
    ModuleTable,
    load_code,
)

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
_STRINGS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"}
_STRINGS |= {"SHORT_BINSTRING", "BINSTRING", "STRING"}
_MARK = object()


def globals_named(data: bytes) -> set[tuple[str, str]]:
    """(module, name) of every global the pickles in ``data`` (one after another) name.

    Read with ``pickletools`` alone, nothing is loaded: the opcodes run on a stack of their
    string arguments, so ``STACK_GLOBAL`` finds its two names, memoized ones included (the
    pickles of a code pickle share one memo, as its one pickler wrote them).
    """
    found: set[tuple[str, str]] = set()
    memo: dict[int, Any] = {}
    file = io.BytesIO(data)
    while file.tell() < len(data):
        stack: list[Any] = []
        for op, arg, _ in pickletools.genops(file):
            if op.name == "MARK":
                stack.append(_MARK)
            elif op.name == "MEMOIZE":
                memo[len(memo)] = stack[-1]
            elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[arg] = stack[-1]
            elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo[arg])
            else:
                before = list(op.stack_before)
                if pickletools.stackslice in before:
                    while stack.pop() is not _MARK:
                        pass
                    before = before[: before.index(pickletools.markobject)]
                popped = [stack.pop() for _ in before]
                if op.name == "STACK_GLOBAL":
                    found.add((popped[1], popped[0]))
                elif op.name in ("GLOBAL", "INST"):
                    module, _, name = str(arg).partition(" ")
                    found.add((module, name))
                stack.extend(arg if op.name in _STRINGS else None for _ in op.stack_after)
            if op.name == "STOP":
                break
    return found


def cloudflow_names(*pickles: bytes) -> set[tuple[str, str]]:
    names = set().union(*(globals_named(p) for p in pickles))
    return {(m, n) for m, n in names if m == "cloudflow" or m.startswith("cloudflow.")}


def resolve(module: str, name: str) -> object:
    found: Any = importlib.import_module(module)
    for part in name.split("."):
        found = getattr(found, part)
    return found


@pytest.fixture
def shapes(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The golden project, importable for this test only."""
    monkeypatch.syspath_prepend(str(GOLDEN))
    try:
        yield importlib.import_module("golden_shapes")
    finally:
        sys.modules.pop("golden_shapes", None)


def test_the_frozen_module_holds_every_reconstructor_under_its_own_name() -> None:
    assert _pickler.__name__ == FORMAT_MODULE
    for name, reconstructor in RECONSTRUCTORS.items():
        assert getattr(_pickler, name) is reconstructor, name
        assert reconstructor.__module__ == FORMAT_MODULE, name
        assert reconstructor.__qualname__ == name
    frozen = {n for n in _pickler.__all__ if n.startswith("_")}
    assert frozen == set(RECONSTRUCTORS)


def test_a_fresh_bundle_names_only_frozen_reconstructors(shapes: Any, tmp_path: Path) -> None:
    cloudflow.save_bundle(shapes.predict, {"model": shapes.KEPT}, tmp_path / "bundle")
    data = tmp_path / "bundle" / "cloudflow"
    saved = [(data / "code.pkl").read_bytes(), (data / "models/model/model.pkl").read_bytes()]
    # A portable bundle's code pickle: its code and its generated methods are made at load.
    versions = {"3.11": sys.executable, "3.13": sys.executable}
    portable = io.BytesIO()
    CodeWriter(CapturePolicy(python_versions=versions)).write_code(shapes.predict, portable)
    names = cloudflow_names(*saved, portable.getvalue())
    print(sorted(n for _, n in names))
    assert {m for m, _ in names} == {FORMAT_MODULE}
    for module, name in names:
        assert resolve(module, name) is RECONSTRUCTORS[name]
    # Each reconstructor is met here (the project has one of each shape): none is stale.
    assert {n for _, n in names} == set(RECONSTRUCTORS)


def test_the_golden_pickles_name_every_reconstructor() -> None:
    """What the golden pickles cover: every reconstructor, so each old name is loaded below."""
    pickles = [p.read_bytes() for p in GOLDEN.glob("*/*.pkl")]
    assert {n for _, n in cloudflow_names(*pickles)} == set(RECONSTRUCTORS)


@pytest.mark.parametrize("folder", sorted(p.parent.name for p in GOLDEN.glob("*/golden.json")))
def test_pickles_written_before_the_split_still_load(folder: str) -> None:
    where = GOLDEN / folder
    info = json.loads((where / "golden.json").read_text(encoding="utf-8"))
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if here not in info["python_versions"]:
        pytest.skip(f"{folder} loads on Python {info['python_versions']}, this is {here}")
    names = cloudflow_names((where / "code.pkl").read_bytes(), (where / "model.pkl").read_bytes())
    assert names
    assert {m for m, _ in names} == {FORMAT_MODULE}
    table = ModuleTable()
    table.code_table = read_table(where, info["python_versions"])  # a portable bundle's code
    predict = load_code(where / "code.pkl", table)
    model = LoadContext(table).load(where / "model.pkl")
    table.mark_left_out(info["captured_globals"])
    predict = table.bind_models({"model": model}, [predict])
    assert "golden_shapes" not in sys.modules  # the bundle's module, in its table only
    module = table.modules["golden_shapes"]
    if info["model_global"]:
        assert getattr(module, info["model_global"]) is model  # bound to the loaded model
    assert predict(model, 1.0) == info["expected"]
    with pytest.raises(cloudflow.exceptions.LeftOutGlobalError, match="golden_shapes._namespace"):
        _ = module._namespace
