"""Staging folders that a killed save left behind are cleaned by a later save, once stale."""

from __future__ import annotations

import os
import time
from pathlib import Path

import cloudflow


def _predict(factor, x):
    return factor["k"] * x


def _aged(folder: Path, seconds: float) -> Path:
    folder.mkdir(parents=True)
    (folder / "half-written.bin").write_bytes(b"\0" * 16)
    then = time.time() - seconds
    os.utime(folder, (then, then))
    return folder


def test_a_save_removes_day_old_staging_beside_its_target(tmp_path: Path) -> None:
    stale = _aged(tmp_path / ".bundle.cloudflow-0123456789ab.tmp", 2 * 24 * 3600)
    recent = _aged(tmp_path / ".bundle.cloudflow-ba9876543210.tmp", 60)
    other = _aged(tmp_path / ".unrelated-folder", 2 * 24 * 3600)

    cloudflow.save_bundle(_predict, {"factor": {"k": 3}}, tmp_path / "bundle")

    assert not stale.exists(), "a day-old staging folder of a dead save must go"
    assert recent.exists(), "a recent one may belong to a save still running"
    assert other.exists(), "only cloudflow's own staging folders are touched"
    assert cloudflow.load_bundle(tmp_path / "bundle").predict(x=2) == 6
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp"))
    assert leftovers == [recent.name]
