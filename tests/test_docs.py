"""The documentation site builds with ``--strict``: no broken link or anchor, no stale docstring."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_docs_site_builds_strictly(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    home = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "Quickstart" in home, "the home page is the README"
    reference = (tmp_path / "reference" / "index.html").read_text(encoding="utf-8")
    for name in ("save_bundle", "log_bundle", "load_bundle", "cloudflow_model", "prepare_env"):
        assert name in reference, f"the API reference documents {name}"


def test_every_docs_page_is_in_the_navigation() -> None:
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    listed = set(re.findall(r":\s*([\w-]+\.md)\s*$", nav, flags=re.M))
    assert pages == listed


# index.md is the README itself.
@pytest.mark.parametrize(
    "page", sorted(p.name for p in (ROOT / "docs").glob("*.md") if p.name != "index.md")
)
def test_readme_links_every_page(page: str) -> None:
    assert f"(docs/{page})" in (ROOT / "README.md").read_text(encoding="utf-8")
