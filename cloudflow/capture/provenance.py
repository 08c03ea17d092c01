"""Where the captured code comes from: the git commit of each checkout it was imported from.

A bundle records, for every git checkout holding captured modules, the commit checked out and
whether the captured files differ from it (changed, staged or not tracked): with ``dirty``
false, that commit holds exactly the code the bundle runs. No path is recorded (paths of the
saving machine never enter a bundle), only the modules each checkout holds. Nothing is recorded
where git is not installed or the code is not in a checkout; a save never fails for it.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_logger = logging.getLogger("cloudflow")
_GIT_TIMEOUT_S = 10


def git_provenance(module_names: Iterable[str]) -> list[dict[str, Any]]:
    """``[{"commit", "dirty", "modules"}]``, one entry per checkout of the captured modules."""
    git = shutil.which("git")
    if git is None:
        return []
    by_checkout: dict[Path, dict[str, Path]] = {}
    for name in sorted(set(module_names)):
        file = getattr(sys.modules.get(name), "__file__", None)
        if not isinstance(file, str):
            continue
        path = Path(os.path.realpath(file))
        top = _checkout_of(path.parent)
        if top is not None:
            by_checkout.setdefault(top, {})[name] = path
    found = []
    for top, files in sorted(by_checkout.items()):
        commit = _git(git, top, "rev-parse", "--verify", "HEAD")
        if not commit:
            continue  # a checkout with no commit yet
        changed = _git(
            git,
            top,
            "status",
            "--porcelain",
            "--untracked-files=all",
            "--",
            *(str(p.relative_to(top)) for p in files.values()),
        )
        if changed is None:
            continue
        found.append({"commit": commit, "dirty": bool(changed), "modules": sorted(files)})
    return found


def _checkout_of(folder: Path) -> Path | None:
    """The top folder of the git checkout holding ``folder`` (``.git`` a folder or a file)."""
    for candidate in (folder, *folder.parents):
        if (candidate / ".git").exists():
            return candidate
    return None


def _git(git: str, top: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            [git, "-C", str(top), *args],
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},  # a read never takes the index lock
        )
    except (OSError, subprocess.SubprocessError) as e:
        _logger.debug("git %s in a captured checkout failed: %s", args[0], e)
        return None
    if done.returncode != 0:
        _logger.debug("git %s in a captured checkout: %s", args[0], done.stderr.strip())
        return None
    return done.stdout.strip()
