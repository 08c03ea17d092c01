"""How a bundle's models load: at the same time, each once."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import cloudflow


def test_the_models_of_a_bundle_load_at_the_same_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each model's load waits for the other to start: one after the other, this would time out."""
    import threading

    import cloudflow.flavors as flavors
    from cloudflow import _bundle

    def predict(a, b, x):
        return a["k"] + b["k"] + x

    cloudflow.save_bundle(predict, {"a": {"k": 1}, "b": {"k": 2}}, tmp_path / "bundle")
    both_started = threading.Barrier(2, timeout=20)
    real_get = flavors.get_flavor
    threads: set[str] = set()

    def get_flavor(name: str) -> object:
        flavor = real_get(name)

        def load(path: Path, info: object, ctx: object) -> object:
            threads.add(threading.current_thread().name)
            both_started.wait()
            return flavor.load(path, info, ctx)

        return dataclasses.replace(flavor, load=load)

    monkeypatch.setattr(flavors, "get_flavor", get_flavor)
    assert _bundle.LOAD_WORKERS >= 2
    assert cloudflow.load_bundle(tmp_path / "bundle").predict(x=3) == 6
    assert len(threads) == 2
