"""Attacks on the way a bundle is read: each reproduced as it was found, each now refused.

A signed bundle of the release put back in place of a newer one by URI (rollback); a file
swapped between its check and the library that opens it by name; a FIFO where an empty file
was; hostile manifests given to ``inspect``, ``list`` and ``load_bundle``. The bundles hold the
``Tripwire`` model of ``test_attacks.py``, which creates a folder the moment it is unpickled.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import outcome, run_snippet, subprocess_env
from test_attacks import app, in_src, save  # noqa: F401 - the fixtures of the tripwire bundles

HANG_S = 60  # a check that waits on a FIFO would wait forever: fail instead


def cli(*args: str, cwd: Path, key: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m cloudflow ARGS`` in a fresh process, killed (failing the test) if it hangs."""
    return subprocess.run(
        [sys.executable, "-m", "cloudflow", *args],
        cwd=cwd,
        env=subprocess_env({"CLOUDFLOW_SIGNING_KEY": key} if key else None),
        capture_output=True,
        text=True,
        timeout=HANG_S,
    )


# --- a FIFO where a file was --------------------------------------------------------------------

FIFO_LOADS = """
import sys
import cloudflow

key = sys.argv[1]
fifos, intact = sys.argv[2:4], sys.argv[4]
for i, bundle in enumerate(fifos):
    attempt(f"signed {i}", lambda: cloudflow.load_bundle(bundle, signing_key=key).predict(x=1))
    # Unsigned, the data files are hashed in the process-wide pool while the code loads.
    attempt(f"unsigned {i}", lambda: cloudflow.load_bundle(bundle).predict(x=1))
attempt("intact unsigned", lambda: cloudflow.load_bundle(intact).predict(x=1))
attempt("intact signed", lambda: cloudflow.load_bundle(intact, signing_key=key).predict(x=1))
emit(results)
"""


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_where_an_empty_file_was_is_refused_and_starves_no_other_load(
    app: Any,  # noqa: F811
    in_src: None,  # noqa: F811
    tmp_path: Path,
) -> None:
    (tmp_path / "src" / "data" / "empty.txt").write_bytes(b"")
    key = os.urandom(32).hex()
    intact = save(app, tmp_path / "intact", signing_key=key)
    fifos = []
    for i in range(2):
        bundle = save(app, tmp_path / f"fifo{i}", signing_key=key)
        (empty,) = (bundle / "cloudflow").rglob("empty.txt")
        empty.unlink()
        os.mkfifo(empty)  # same name, same size (0): only its kind differs
        fifos.append(bundle)
    results = run_snippet(
        FIFO_LOADS,
        cwd=tmp_path,
        args=[key, *map(str, fifos), str(intact)],
        timeout=HANG_S,
    )
    for name in ("signed 0", "unsigned 0", "signed 1", "unsigned 1"):
        assert not results[name]["ok"], name
        assert "IntegrityError" in results[name]["error"], results[name]["error"]
        assert "is not a regular file (a FIFO)" in results[name]["error"]
    assert outcome(results, "intact unsigned") == 4
    assert outcome(results, "intact signed") == 4
    done = cli("verify", str(fifos[0]), cwd=tmp_path, key=key)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "a FIFO" in done.stdout + done.stderr
    done = cli("inspect", str(fifos[0]), cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "integrity         FAILED" in done.stdout
    assert "a FIFO" in done.stdout
    manifest = fifos[1] / "cloudflow" / "manifest.json"
    manifest.unlink()
    os.mkfifo(manifest)  # the manifest itself
    done = cli("inspect", str(fifos[1]), cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr  # as for any unreadable manifest
    assert "Error: IntegrityError: " in done.stderr
    assert "manifest.json' is not a regular file (a FIFO)" in done.stderr
