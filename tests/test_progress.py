"""Progress bars on a terminal only (unless asked), and the ``cloudflow`` logger's level.

Each case runs a fresh process that saves and loads a bundle whose one model takes about a
second to pickle and to unpickle (longer than the bars' display delay), with stderr either a
pipe (a CI log) or a pseudo-terminal.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import subprocess_env

SLOW_MODULE = """
    import time


    class Slow:
        def __getstate__(self):
            time.sleep(0.8)
            return {"n": 1}

        def __setstate__(self, state):
            time.sleep(0.8)
            self.n = state["n"]


    def predict(slow, x: int):
        return x + slow.n
    """

SCRIPT = """
    import sys
    import cloudflow
    import slow_mod

    cloudflow.cloudflow_model(log_level=sys.argv[1])
    cloudflow.save_bundle(slow_mod.predict, {"slow": slow_mod.Slow()}, "bundle")
    assert cloudflow.load_bundle("bundle").predict(x=1) == 2
    print("done")
    """

BARS = ("Saving bundle", "Loading bundle")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "slow_mod.py").write_text(textwrap.dedent(SLOW_MODULE))
    (tmp_path / "script.py").write_text(textwrap.dedent(SCRIPT))
    return tmp_path


def _run(project: Path, level: str, *, tty: bool, progress: str | None) -> str:
    """Run the script; returns what it wrote to stderr."""
    env = subprocess_env()
    env.pop("CLOUDFLOW_PROGRESS", None)
    if progress is not None:
        env["CLOUDFLOW_PROGRESS"] = progress
    argv = [sys.executable, "script.py", level]
    if not tty:
        done = subprocess.run(
            argv, cwd=project, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "done"
        return done.stderr
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    # A terminal of 24 x 100 characters (a fresh pty has 0 columns: tqdm would draw nothing).
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    process = subprocess.Popen(
        argv, cwd=project, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave
    )
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
        stdout = process.communicate(timeout=60)[0]
    err = b"".join(chunks).decode("utf-8", errors="replace")
    assert process.returncode == 0, err
    assert stdout.strip() == b"done"
    return err


def test_no_bars_and_no_logs_in_a_pipe_by_default(project: Path) -> None:
    err = _run(project, "ERROR", tty=False, progress=None)
    assert not [bar for bar in BARS if bar in err], err
    assert "Saved bundle" not in err


def test_bars_in_a_pipe_when_asked_and_info_logs(project: Path) -> None:
    err = _run(project, "INFO", tty=False, progress="1")
    assert all(bar in err for bar in BARS), err
    assert "model slow" in err  # the step under way is shown
    assert "cloudflow INFO Saved model 'slow' (pickle)" in err
    assert "cloudflow INFO Loaded bundle" in err


def test_bars_on_a_terminal(project: Path) -> None:
    err = _run(project, "WARNING", tty=True, progress=None)
    assert all(bar in err for bar in BARS), err
    assert "INFO" not in err


def test_no_bars_on_a_terminal_when_turned_off(project: Path) -> None:
    err = _run(project, "WARNING", tty=True, progress="0")
    assert not [bar for bar in BARS if bar in err], err
