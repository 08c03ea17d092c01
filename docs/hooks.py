"""MkDocs hook: the site's home page is the repository's README, its links made site-relative."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_README = Path(__file__).resolve().parents[1] / "README.md"


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if page.file.src_uri != "index.md":
        return markdown
    text = _README.read_text(encoding="utf-8")
    # README links point into docs/ (as GitHub shows them); on the site the pages are siblings.
    text = re.sub(r"\]\(docs/([^)]*)\)", r"](\1)", text)
    return text.replace("](docs/)", "](api.md)")
