"""Staging folders: cleaned by a later save once a killed save left them stale, and made safely
while concurrent saves remove their empty parent."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path

import cloudflow
from cloudflow.integrity.staging import inside


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


def test_a_staging_folder_is_made_while_other_saves_remove_the_empty_parent(
    tmp_path: Path,
) -> None:
    # A save that finishes removes the store's staging parent when it is empty. A save starting
    # at that moment sees it vanish between mkdir and mkdtemp, or inside mkdir itself (pathlib
    # then raises FileExistsError: the folder was there, then is_dir() says no). Seen in the
    # 8-process test; here a thread removes the parent over and over while staging folders are
    # made in it.
    parent = tmp_path / ".cloudflow-staging"
    stop = threading.Event()

    def remover() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):  # not empty: a staging folder is in it
                parent.rmdir()
            time.sleep(0.0002)

    thread = threading.Thread(target=remover)
    thread.start()
    try:
        for _ in range(3000):
            staging = inside(parent)
            assert staging.path.is_dir()
            assert staging.name.parent == parent
            staging.close()
            assert not staging.name.exists()
    finally:
        stop.set()
        thread.join()
