"""MLflow's environment files: the files of a bundle MLflow's own model tools rewrite.

``mlflow models update-pip-requirements`` rewrites ``requirements.txt`` and ``conda.yaml``;
``mlflow.models.utils.add_libraries_to_model`` logs the model again with every requirement as a
wheel: it rewrites both files to name ``wheels/*.whl``, keeps the former list as
``original_requirements.txt``, adds the ``wheels/`` folder, and rewrites MLmodel's publication
keys (:data:`PUBLICATION_KEYS`: a new ``model_id``, ``model_uuid``, ``artifact_path`` and
``utc_time_created``, a ``wheels`` entry, and ``run_id`` when logged to another run). These files
tell MLflow's tools how to build an environment for the model; nothing in them runs when a bundle
loads.

The manifest digests them like every other file (``outer_files``, which a signature covers);
what differs is what a mismatch does. An unsigned bundle whose environment files changed loads,
with one warning naming what changed; a signed one is refused, with the way to sign it again
after a review (``cloudflow sign`` shows the difference first). Every other file (the pickles,
the weights, MLmodel's flavors and signature...) must match exactly, signed or not.

Which files are environment files is this module's rule, by path, never something a bundle
says about itself. The manifest's ``environment`` section records, at save, the text of the
small environment files (so a signer can see what changed) and a digest of MLmodel without its
publication keys, with those keys' values. A bundle saved before that section existed keeps an
exact MLmodel, and its changed environment files are named without their earlier text.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudflow.exceptions import IntegrityError
from cloudflow.integrity import digests as _digests

#: Files at a bundle's root that only tell MLflow's tools how to build an environment.
ENVIRONMENT_FILES = frozenset(
    {
        "requirements.txt",
        "conda.yaml",
        "python_env.yaml",
        "constraints.txt",
        "original_requirements.txt",
    }
)
#: Folders at a bundle's root whose files are environment files (``add_libraries_to_model``).
ENVIRONMENT_FOLDERS = ("wheels/",)
#: Top-level MLmodel keys that say where and when the model was logged, which
#: ``add_libraries_to_model`` rewrites when it logs the model again. None of them is read to
#: load the model: the loader, the flavors and the signature stay exact.
PUBLICATION_KEYS = (
    "artifact_path",
    "model_id",
    "model_uuid",
    "run_id",
    "utc_time_created",
    "wheels",
)
MLMODEL = "MLmodel"
#: The largest MLmodel parsed (MLflow writes a few KB): a bigger one is not read.
MLMODEL_MAX = 1024 * 1024
#: Environment files up to this size have their text recorded in the manifest.
TEXT_MAX = 64 * 1024


def is_environment_file(rel: str) -> bool:
    """Whether ``rel`` (a path from the bundle's root) is one of MLflow's environment files."""
    return rel in ENVIRONMENT_FILES or rel.startswith(ENVIRONMENT_FOLDERS)


def read_mlmodel(path: Path) -> dict[str, Any]:
    """MLmodel as a dict, safely: an untrusted bundle's MLmodel may be anything.

    YAML aliases are refused (MLflow never writes them; a few KB of nested aliases expand to
    billions of nodes), and so are files over :data:`MLMODEL_MAX`.

    Raises:
        ValueError: The file is too large, not text, not YAML or not a mapping (the message
            says which).
        OSError: It cannot be read.
    """
    import yaml

    class NoAliases(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.events.AliasEvent):
                raise yaml.YAMLError("it uses YAML aliases, which MLflow never writes")
            return super().compose_node(parent, index)

    try:
        # A regular file only, its size taken from the open descriptor: never a FIFO, never a
        # huge file read whole.
        raw = _digests.read_regular(path, MLMODEL_MAX, "MLmodel")
    except IntegrityError as e:
        raise ValueError(str(e)) from e
    try:
        data = yaml.load(raw.decode("utf-8"), Loader=NoAliases)  # noqa: S506
    except (UnicodeDecodeError, yaml.YAMLError, RecursionError) as e:
        raise ValueError(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else e}") from e
    if not isinstance(data, dict):
        raise ValueError("it is not a YAML mapping")
    return data


def _plain(value: Any) -> Any:
    """A JSON value for what YAML parsed (dates as text)."""
    return json.loads(json.dumps(value, default=str))


def mlmodel_core_digest(data: Mapping[str, Any]) -> str:
    """Digest of MLmodel without its publication keys, in a canonical form."""
    core = {k: v for k, v in data.items() if k not in PUBLICATION_KEYS}
    text = json.dumps(core, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return _digests.digest_bytes(text.encode("ascii"))


def record(root: Path) -> dict[str, Any]:
    """The manifest's ``environment`` section for a bundle whose MLflow files are final."""
    texts = {}
    for rel in sorted(ENVIRONMENT_FILES):
        path = root / rel
        if path.is_file() and path.stat().st_size <= TEXT_MAX:
            try:
                texts[rel] = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
    out: dict[str, Any] = {"texts": texts}
    try:
        data = read_mlmodel(root / MLMODEL)
    except (OSError, ValueError):
        return out
    out["mlmodel"] = {
        "core": mlmodel_core_digest(data),
        "publication": {k: _plain(data[k]) for k in PUBLICATION_KEYS if k in data},
    }
    return out


def check_record(section: Mapping[str, Any]) -> str | None:
    """What is wrong with a manifest's ``environment`` section, or None."""
    texts = section.get("texts", {})
    if not isinstance(texts, dict) or not all(
        isinstance(k, str) and k in ENVIRONMENT_FILES and isinstance(v, str)
        for k, v in texts.items()
    ):
        return "its 'environment' section records texts of files that are not environment files"
    mlmodel = section.get("mlmodel")
    if mlmodel is not None and (
        not isinstance(mlmodel, dict)
        or not isinstance(mlmodel.get("core"), str)
        or not isinstance(mlmodel.get("publication", {}), dict)
    ):
        return "its 'environment' section has no MLmodel digest"
    return None


@dataclass(frozen=True)
class EnvironmentChange:
    """What differs in a bundle's environment files from what its manifest records."""

    changed: tuple[str, ...] = ()
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    #: Bytes of the added files.
    added_bytes: int = 0
    #: Whether MLmodel's bytes differ (in its publication keys only, or in nothing it says).
    mlmodel_changed: bool = False
    #: MLmodel publication key -> (as saved, as now); only keys that differ.
    mlmodel: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.changed or self.added or self.removed or self.mlmodel_changed)

    def summary(self) -> str:
        """One phrase naming what changed, e.g. for a warning."""

        def names(rels: Iterable[str]) -> str:
            rels = list(rels)
            shown = [repr(r) for r in rels if not r.startswith(ENVIRONMENT_FOLDERS)]
            for folder in ENVIRONMENT_FOLDERS:
                inside = [r for r in rels if r.startswith(folder)]
                if inside:
                    shown.append(f"{len(inside)} file(s) in {folder}")
            return ", ".join(shown)

        parts = []
        if self.changed:
            parts.append(f"{names(self.changed)} changed")
        if self.added:
            parts.append(f"{names(self.added)} added ({self.added_bytes / 1e6:.1f} MB)")
        if self.removed:
            parts.append(f"{names(self.removed)} removed")
        if self.mlmodel:
            parts.append(f"MLmodel's {', '.join(sorted(self.mlmodel))} rewritten")
        elif self.mlmodel_changed:
            parts.append("MLmodel rewritten with the same content")
        return "; ".join(parts)

    def republished(self, published: Mapping[str, str]) -> dict[str, str]:
        """Where the bundle is published now: a model logged again has a new model id (and
        a name this bundle does not know, so the name is left out), and maybe a new run."""
        out = dict(published)
        new_id = self.mlmodel.get("model_id", (None, None))[1]
        if new_id:
            out["model_id"] = str(new_id)
            out.pop("name", None)
        new_run = self.mlmodel.get("run_id", (None, None))[1]
        if new_run:
            out["run_id"] = str(new_run)
        return out


def mlmodel_change(root: Path, section: Mapping[str, Any]) -> dict[str, tuple[Any, Any]] | None:
    """The publication keys that differ if MLmodel differs in nothing else; None otherwise.

    ``section`` is the manifest's ``environment`` section; without an MLmodel record (a bundle
    saved before it existed) any change to MLmodel counts as one that matters.
    """
    saved = section.get("mlmodel")
    if not saved:
        return None
    try:
        data = read_mlmodel(root / MLMODEL)
    except (OSError, ValueError):
        return None
    if mlmodel_core_digest(data) != saved["core"]:
        return None
    before = saved.get("publication", {})
    out = {}
    for key in PUBLICATION_KEYS:
        now = _plain(data[key]) if key in data else None
        if now != before.get(key):
            out[key] = (before.get(key), now)
    return out


def compare(
    root: Path,
    listed: Mapping[str, Mapping[str, Any]],
    present: Iterable[str],
    mlmodel: Mapping[str, tuple[Any, Any]] | None = None,
) -> EnvironmentChange:
    """Compare the environment files present at ``root`` with their manifest entries.

    ``mlmodel``: what :func:`mlmodel_change` found, if MLmodel's bytes differ (None: same).
    """
    listed = {rel: entry for rel, entry in listed.items() if is_environment_file(rel)}
    here = sorted(rel for rel in present if is_environment_file(rel))
    added = [rel for rel in here if rel not in listed]
    removed = sorted(set(listed) - set(here))
    both = [rel for rel in here if rel in listed]
    changed = [rel for rel in both if (root / rel).stat().st_size != listed[rel]["size"]]
    same_size = [rel for rel in both if rel not in changed]
    by_algorithm: dict[str, list[str]] = {}
    for rel in same_size:
        algorithm = next(a for a in _digests.ALGORITHMS if a in listed[rel])
        by_algorithm.setdefault(algorithm, []).append(rel)
    for algorithm, group in by_algorithm.items():
        digests = _digests.digest_files(
            [root / rel for rel in group], algorithm=algorithm, use_cache=False
        )
        changed += [
            rel for rel, d in zip(group, digests, strict=True) if d != listed[rel][algorithm]
        ]
    return EnvironmentChange(
        changed=tuple(sorted(changed)),
        added=tuple(added),
        removed=tuple(removed),
        added_bytes=sum((root / rel).stat().st_size for rel in added),
        mlmodel_changed=mlmodel is not None,
        mlmodel=dict(mlmodel or {}),
    )


def resign_hint(bundle: str) -> str:
    return (
        "If the change is yours (mlflow models update-pip-requirements, mlflow.models.utils."
        "add_libraries_to_model), review it and sign the bundle again: `cloudflow sign "
        f"{bundle} --key KEY.pem` shows the difference first. Otherwise do not use this bundle."
    )


def refusal_message(bundle: str, change: EnvironmentChange) -> str:
    """Why a signed bundle whose environment files changed is refused, and the way out."""
    return (
        f"The signed bundle at {bundle!r} changed after it was signed: {change.summary()}. A "
        "signed bundle loads only exactly as it was signed, MLflow's environment files "
        f"included. {resign_hint(bundle)}"
    )


def warning_message(bundle: str, change: EnvironmentChange) -> str:
    """The one warning an unsigned bundle whose environment files changed loads with."""
    return (
        f"The bundle at {bundle!r}: MLflow's environment files changed after it was saved: "
        f"{change.summary()}. It loads: these files only tell MLflow's tools how to build an "
        "environment, and nothing in them runs when it loads (every other file matched). Sign "
        "bundles to have any change refused (cloudflow sign)."
    )


def difference(root: Path, section: Mapping[str, Any], change: EnvironmentChange) -> str:
    """What ``cloudflow sign`` shows before signing a bundle whose environment files changed:
    a unified diff of each text file whose saved text the manifest records, the files added
    and removed, and MLmodel's publication keys before and after."""
    texts = section.get("texts", {})
    lines = [f"MLflow's environment files of {root} differ from its manifest: {change.summary()}."]

    def now(rel: str) -> str:
        path = root / rel
        if path.stat().st_size > TEXT_MAX:
            return ""
        return path.read_text(encoding="utf-8", errors="replace")

    for rel in change.changed:
        if rel in texts:
            lines.extend(
                line.rstrip("\n")
                for line in difflib.unified_diff(
                    texts[rel].splitlines(True),
                    now(rel).splitlines(True),
                    f"{rel} (as saved)",
                    f"{rel} (now)",
                )
            )
        else:
            lines.append(f"changed: {rel} (its saved text is not recorded)")
    for rel in change.added:
        size = (root / rel).stat().st_size
        if rel in ENVIRONMENT_FILES and size <= TEXT_MAX:
            lines.extend(
                line.rstrip("\n")
                for line in difflib.unified_diff(
                    [], now(rel).splitlines(True), f"{rel} (absent)", f"{rel} (now)"
                )
            )
        else:
            lines.append(f"added: {rel} ({size} bytes)")
    lines.extend(f"removed: {rel}" for rel in change.removed)
    for key, (before, after) in sorted(change.mlmodel.items()):
        lines.append(f"MLmodel {key}: {before!r} -> {after!r}")
    if change.mlmodel_changed and not change.mlmodel:
        lines.append("MLmodel: rewritten, with the same content")
    return "\n".join(lines)
