"""Signature and input example: inferred from the predict function, stored in MLmodel, harmless.

MLflow's column-based schema enforcement would turn a dict of parameters into a one-row
DataFrame and refuse list values. These tests pin the promise that holds with and without a
signature: ``mlflow.pyfunc.load_model(uri).predict(params)`` returns exactly what
``predict(**params)`` returns, values and types.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.models import Model, ModelSignature
from mlflow.types.schema import AnyType, Array, ColSpec, DataType, Map, Schema

import cloudflow
from cloudflow.capture.signature import infer_signature

PROBE = {
    "probe_mod.py": """
        from __future__ import annotations


        def describe(value):
            return f"{type(value).__module__}.{type(value).__qualname__}:{value!r}"


        def predict(table, text: str, n: int = 2, items: list[float] | None = None, extra=None):
            return {
                "text": describe(text),
                "n": describe(n),
                "items": describe(items),
                "extra": describe(extra),
                "scaled": table["scale"] * n,
            }
        """
}

# Values of every JSON kind, and objects only a local caller passes (numpy, a tuple).
CASES: list[dict[str, Any]] = [
    {"text": "ab"},
    {"text": "ab", "n": 3, "items": [1.5, 2.0]},
    {"text": "x", "extra": {"k": [1, 2]}},
    {"text": "x", "extra": None, "items": []},
    {"text": "np", "items": np.array([1.0, 2.0]), "extra": np.float32(0.5)},
    {"text": "tuple", "extra": (1, "a")},
]


@pytest.fixture
def probe(user_modules: Any) -> Any:
    user_modules.write(PROBE)
    import probe_mod

    return probe_mod


def _expected(probe: Any, case: dict[str, Any]) -> Any:
    return probe.predict({"scale": 10}, **case)


@pytest.mark.parametrize("signature", [None, False], ids=["inferred", "none"])
def test_pyfunc_dict_gives_exactly_what_predict_gives(
    probe: Any, tmp_path: Path, signature: Any
) -> None:
    path = tmp_path / "bundle"
    cloudflow.save_bundle(probe.predict, {"table": {"scale": 10}}, path, signature=signature)
    assert (Model.load(str(path)).signature is not None) is (signature is None)
    model = mlflow.pyfunc.load_model(str(path))
    for case in CASES:
        assert model.predict(dict(case)) == _expected(probe, case), case


@pytest.mark.parametrize("signature", [None, False], ids=["inferred", "none"])
def test_pyfunc_dataframe_and_list_give_one_result_per_row(
    probe: Any, tmp_path: Path, signature: Any
) -> None:
    path = tmp_path / "bundle"
    cloudflow.save_bundle(probe.predict, {"table": {"scale": 10}}, path, signature=signature)
    model = mlflow.pyfunc.load_model(str(path))
    rows = [{"text": "ab", "n": 3, "items": [1.0]}, {"text": "cd"}]
    # A DataFrame has a cell for every column: the empty ones (NaN, None) of optional
    # parameters are left out so their default applies, and pandas' 3.0 goes back to 3.
    want = [_expected(probe, row) for row in rows]
    assert model.predict(pd.DataFrame(rows)) == want
    assert model.predict(rows) == want
    one_row = model.predict(pd.DataFrame([rows[0]]))
    assert one_row == [want[0]]


def test_signature_inferred_from_annotations_and_defaults() -> None:
    def predict(
        model,
        text: str,
        flag: bool,
        when,
        k: int = 3,
        ratio=0.5,
        names: list[str] | None = None,
        weights: dict[str, float] | None = None,
        raw: Any = None,
        *args: Any,
        **kwargs: Any,
    ) -> None: ...

    signature = infer_signature(predict, ["model"], {"when": "2024-01-01"})
    assert signature.inputs == Schema(
        [
            ColSpec(DataType.string, "text"),
            ColSpec(DataType.boolean, "flag"),
            ColSpec(DataType.string, "when"),  # from the input example
            ColSpec(DataType.long, "k", required=False),
            ColSpec(DataType.double, "ratio", required=False),
            ColSpec(Array(DataType.string), "names", required=False),
            ColSpec(Map(DataType.double), "weights", required=False),
            ColSpec(AnyType(), "raw", required=False),
        ]
    )
    assert signature._is_signature_from_type_hint


def test_no_signature_for_a_function_without_inputs(tmp_path: Path) -> None:
    def predict(model):
        return model["x"]

    cloudflow.save_bundle(predict, {"model": {"x": 1}}, tmp_path / "b")
    assert Model.load(str(tmp_path / "b")).signature is None
    assert mlflow.pyfunc.load_model(str(tmp_path / "b")).predict({}) == 1


def test_mlmodel_holds_signature_and_input_example(probe: Any, tmp_path: Path) -> None:
    path = tmp_path / "bundle"
    example = {"text": "hello", "n": 4, "items": [0.5]}
    cloudflow.save_bundle(probe.predict, {"table": {"scale": 10}}, path, input_example=example)
    mlmodel = yaml.safe_load((path / "MLmodel").read_text())
    # MLflow takes inputs of such a model as given; the UI and `mlflow models serve` show them.
    assert mlmodel["is_signature_from_type_hint"] is True
    inputs = json.loads(mlmodel["signature"]["inputs"])
    assert [(c["name"], c["type"], c["required"]) for c in inputs] == [
        ("text", "string", True),
        ("n", "long", False),
        ("items", "array", False),
        ("extra", "any", False),
    ]
    assert json.loads((path / "input_example.json").read_text()) == example
    serving_file = path / mlmodel["saved_input_example_info"]["serving_input_path"]
    serving = json.loads(serving_file.read_text())
    assert serving == {"inputs": example}
    model = mlflow.pyfunc.load_model(str(path))
    assert model.input_example == example
    assert model.predict(model.input_example) == _expected(probe, example)


def _outputs_of(predict_fn: Any) -> Any:
    return infer_signature(predict_fn, ["model"]).outputs


def test_outputs_are_typed_from_the_return_annotation_else_any(probe: Any, tmp_path: Path) -> None:
    """MLServer's MLflow runtime (KServe, Seldon) fails to load a model whose outputs are null."""

    def score(model, text: str) -> float: ...

    def tags(model, text: str) -> list[str]: ...

    def anything(model, text: str): ...

    assert _outputs_of(score) == Schema([ColSpec(DataType.double)])
    assert _outputs_of(tags) == Schema([ColSpec(Array(DataType.string))])
    assert _outputs_of(anything) == Schema([ColSpec(AnyType())])
    # Saved, and also filled in for a caller's signature that gives inputs only.
    inputs_only = ModelSignature(inputs=Schema([ColSpec(DataType.string, "text")]))
    for name, signature in (("inferred", None), ("inputs_only", inputs_only)):
        cloudflow.save_bundle(
            probe.predict, {"table": {"scale": 10}}, tmp_path / name, signature=signature
        )
        mlmodel = yaml.safe_load((tmp_path / name / "MLmodel").read_text())
        assert json.loads(mlmodel["signature"]["outputs"]) == [{"type": "any", "required": True}]


def test_user_signature_is_kept(probe: Any, tmp_path: Path) -> None:
    signature = ModelSignature(
        inputs=Schema([ColSpec(DataType.string, "text"), ColSpec(DataType.long, "n")]),
        outputs=Schema([ColSpec(AnyType(), "text")]),
    )
    cloudflow.save_bundle(
        probe.predict, {"table": {"scale": 10}}, tmp_path / "b", signature=signature
    )
    saved = Model.load(str(tmp_path / "b")).signature
    assert saved.inputs == signature.inputs
    assert saved.outputs == signature.outputs
    assert saved._is_signature_from_type_hint
    assert not signature._is_signature_from_type_hint  # the caller's object is left alone
    model = mlflow.pyfunc.load_model(str(tmp_path / "b"))
    assert model.predict({"text": "ab", "items": [1]}) == _expected(
        probe, {"text": "ab", "items": [1]}
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"input_example": {"txt": "a"}}, "input_example has the key 'txt'"),
        ({"input_example": {"n": 1}}, "lacks the required input 'text'"),
        ({"input_example": ["a"]}, "input_example must be a dict"),
        ({"signature": "text: str"}, "signature must be an mlflow.models.ModelSignature"),
        (
            {"signature": ModelSignature(inputs=Schema([ColSpec(DataType.string, "table")]))},
            "names the input 'table', which is not an input",
        ),
    ],
    ids=["unknown-key", "missing-required", "not-a-dict", "not-a-signature", "model-as-input"],
)
def test_bad_signature_or_example_fails_before_writing(
    probe: Any, tmp_path: Path, kwargs: dict[str, Any], match: str
) -> None:
    path = tmp_path / "bundle"
    with pytest.raises(cloudflow.BundleArgumentError, match=match):
        cloudflow.save_bundle(probe.predict, {"table": {"scale": 10}}, path, **kwargs)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == [tmp_path / "user_src"]


def test_unknown_parameter_is_named_with_signature(probe: Any, tmp_path: Path) -> None:
    cloudflow.save_bundle(probe.predict, {"table": {"scale": 10}}, tmp_path / "b")
    model = mlflow.pyfunc.load_model(str(tmp_path / "b"))
    with pytest.raises(cloudflow.PredictArgumentError, match="no parameter 'txt'"):
        model.predict({"txt": "a"})
    with pytest.raises(cloudflow.PredictArgumentError, match="missing the required parameter"):
        model.predict({"n": 1})


def test_dataframe_cells_from_arrow_become_plain_values(probe: Any, tmp_path: Path) -> None:
    """Spark hands array columns over as numpy arrays, nested ones as object arrays of arrays."""
    cloudflow.save_bundle(probe.predict, {"table": {"scale": 10}}, tmp_path / "b")
    model = mlflow.pyfunc.load_model(str(tmp_path / "b"))
    nested = np.empty(2, dtype=object)
    nested[0], nested[1] = np.array([1.0, 2.0]), np.array([3.0])
    frame = pd.DataFrame({"text": ["a"], "n": [np.int64(4)], "items": [np.array([1.5])]})
    frame["extra"] = [nested]
    want = {"text": "a", "n": 4, "items": [1.5], "extra": [[1.0, 2.0], [3.0]]}
    assert model.predict(frame) == [_expected(probe, want)]
