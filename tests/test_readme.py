"""The README's quickstart runs as written, in a fresh process, in an empty folder."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

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
