"""Flip bytes in, and truncate, every file of a small bundle, many times (seeded).

Whatever the damage, a load either raises a CloudflowError or gives the right predictions: never
another exception, never a hang, never a wrong answer. Damage to a file the manifest lists must
always be caught. Of MLflow's own files, an unsigned bundle tolerates a change to the environment
files (requirements.txt, conda.yaml...) and to where MLmodel says the model was logged, which
MLflow's model tools make: the load warns, naming the file, and the answers stay right.
"""

from __future__ import annotations

import contextlib
import logging
import random
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pytest
from conftest import UserModules

import cloudflow
from cloudflow.exceptions import CloudflowError, IntegrityError
from cloudflow.integrity.environment import MLMODEL, is_environment_file

KEY = b"fuzz signing key: 32 bytes or so."
FLIPS = 40  # trials per file that flip 1 to 3 bits
TRUNCATIONS = 20  # trials per file that cut it short
HANG_S = 20


class Hang(Exception):
    pass


@contextlib.contextmanager
def no_hang(seconds: float) -> Iterator[None]:
    if not hasattr(signal, "setitimer"):
        yield
        return

    def alarm(signum: int, frame: Any) -> None:
        raise Hang(f"a load took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def fuzz_app(user_modules: UserModules) -> Any:
    user_modules.write(
        {
            "fuzz_app/__init__.py": "",
            "fuzz_app/scaling.py": """
                class Scaler:
                    def __init__(self, k, offset):
                        self.k = k
                        self.offset = offset

                    def __call__(self, x):
                        return self.k * x + self.offset
            """,
            "fuzz_app/api.py": """
                from fuzz_app.scaling import Scaler

                def predict(scaler, table, x, word="a"):
                    return [scaler(x), table["labels"][x % 3], word.upper()]
            """,
        }
    )
    from fuzz_app import api, scaling

    return api, scaling


CASES = [{"x": 0}, {"x": 4, "word": "zz"}, {"x": -7}]


def answers(bundle: cloudflow.Bundle) -> list[Any]:
    return [bundle.predict(**case) for case in CASES]


def mutate(path: Path, rng: random.Random, trial: int) -> str:
    data = bytearray(path.read_bytes())
    if trial < FLIPS and data:
        for _ in range(rng.choice((1, 1, 2, 3))):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))
        return "flip"
    path.write_bytes(bytes(data[: rng.randrange(len(data))]) if data else b"")
    return "truncate"


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_damaged_bundles_fail_cleanly_or_answer_right(
    fuzz_app: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    signed: bool,
) -> None:
    api, scaling = fuzz_app
    models = {"scaler": scaling.Scaler(3, 1), "table": {"labels": ["neg", "zero", "pos"]}}
    expected = [api.predict(**models, **case) for case in CASES]
    bundle = tmp_path / "bundle"
    key = KEY if signed else None
    cloudflow.save_bundle(api.predict, models, bundle, signing_key=key)
    if signed:  # MLflow's loader gets the key from the environment
        monkeypatch.setenv("CLOUDFLOW_SIGNING_KEY", KEY.decode())
    else:
        monkeypatch.delenv("CLOUDFLOW_SIGNING_KEY", raising=False)
    assert answers(cloudflow.load_bundle(bundle, signing_key=key)) == expected

    manifest = cloudflow.load_bundle(bundle).manifest
    # Every file is covered: cloudflow's by path in its folder, MLflow's by path from the root.
    listed = {f"cloudflow/{rel}" for rel in manifest.files} | set(manifest.outer_files)
    files = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    assert {"cloudflow/code.pkl", "cloudflow/manifest.json", "MLmodel"} <= set(files)
    caplog.set_level(logging.WARNING, logger="cloudflow")
    rng = random.Random(f"cloudflow-fuzz-{signed}")
    outcomes: Counter[str] = Counter()
    for rel in files:
        path = bundle / rel
        original = path.read_bytes()
        for trial in range(FLIPS + TRUNCATIONS):
            kind = mutate(path, rng, trial)
            if path.read_bytes() == original:
                continue  # a truncation that cut nothing
            where = f"{kind} of {rel} (trial {trial})"
            loaders = ["load_bundle"]
            if rel.startswith("cloudflow/") and trial % 4 == 0:
                loaders.append("pyfunc")  # MLflow's entry point, on a subset
            for loader in loaders:
                error: CloudflowError | None = None
                caplog.clear()
                try:
                    with no_hang(HANG_S):
                        if loader == "pyfunc":
                            model = mlflow.pyfunc.load_model(str(bundle))
                            got = [model.predict(case) for case in CASES]
                        else:
                            got = answers(cloudflow.load_bundle(bundle, signing_key=key))
                except CloudflowError as e:  # anything else fails the test as it is
                    error = e
                part = "cloudflow/" if rel.startswith("cloudflow/") else "MLflow's files"
                if error is None:
                    assert got == expected, f"{where} changed an answer"
                    if rel in listed:
                        # Unsigned, a change MLflow's tools make loads, with one warning.
                        tolerated = is_environment_file(rel) or rel == MLMODEL
                        assert tolerated, f"{where} went unseen"
                        assert not signed, f"{where} went unseen in a signed bundle"
                        warned = [r.getMessage() for r in caplog.records if r.name == "cloudflow"]
                        assert len(warned) == 1, f"{where}: {warned}"
                        assert rel in warned[0], f"{where}: {warned}"
                        outcomes[f"{part}: right answers, change warned"] += 1
                        continue
                    outcomes[f"{part}: right answers"] += 1
                    continue
                if rel in listed:
                    assert isinstance(error, IntegrityError), f"{where}: {error!r}"
                    assert rel.removeprefix("cloudflow/") in str(error), f"{where}: {error}"
                outcomes[f"{part}: refused"] += 1
            path.write_bytes(original)
    total = sum(outcomes.values())
    assert total >= len(files) * (FLIPS + TRUNCATIONS) * 0.9
    assert outcomes["cloudflow/: refused"] > 0
    assert outcomes["MLflow's files: right answers"] == 0  # MLflow's files are covered too
    print(f"fuzz ({'signed' if signed else 'unsigned'}): {total} damaged loads, {dict(outcomes)}")
