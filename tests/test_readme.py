"""The README's quickstart runs as written, in a fresh process, in an empty folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _quickstart_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_quickstart_runs_as_written(tmp_path: Path) -> None:
    blocks = _quickstart_blocks()
    assert len(blocks) == 2, "the quickstart has the seed API block and the MLflow-style block"
    script = tmp_path / "quickstart.py"
    # The second block continues the first (same names), as a reader would paste it below.
    script.write_text(
        blocks[0] + "\n" + blocks[1] + "\nprint(bundle.predict(input_type='iris', "
        "data=[[6.3, 3.3, 6.0, 2.5]]))\n",
        encoding="utf-8",
    )
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert re.fullmatch(r"[0-9a-f]{32}", lines[0]), "the quickstart prints the run id first"
    assert lines[1] == "['setosa']"
    assert lines[-1] == "['virginica']"
    assert (tmp_path / "saving_path" / "mlflow.db").is_file()
    assert not (tmp_path / "mlruns").exists(), "artifacts must stay inside the store folder"


DOCS = README.parent / "docs"


def _blocks(page: str, heading: str, language: str) -> list[str]:
    """The ``language`` code blocks of a section of a documentation page (docs/<page>)."""
    text = "\n" + (DOCS / page).read_text(encoding="utf-8")
    section = text.split(f"\n{heading}\n", 1)[1].split("\n#", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


@pytest.mark.slow  # a dozen command-line processes: about 60 s
def test_metadata_and_command_line_blocks_run_after_the_quickstart(tmp_path: Path) -> None:
    """A reader pastes the metadata example below the quickstart, then types the command line
    block in the same folder: every line works, and each run holds one model ``model``."""
    seed, _ = _quickstart_blocks()
    (metadata,) = _blocks("api.md", "### Metadata of each model", "python")
    script = tmp_path / "quickstart.py"
    script.write_text(seed + "\n" + metadata, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    local, _server = _blocks("cli.md", "# Command line", "bash")
    bin_dir = Path(sys.executable).parent
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", local],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"},
    )
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]
    assert "experiment 'experiment_name' (id 1): 2 bundle(s) in 2 run(s)" in done.stdout
    assert "older" not in done.stdout
    assert '"setosa"' in done.stdout
    assert '"virginica"' in done.stdout
    assert (tmp_path / "bundle" / "MLmodel").is_file()
    assert "ok: " in done.stdout
