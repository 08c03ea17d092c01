"""The bundle manifest: what a bundle holds, and the digests that prove it is unchanged."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudflow.exceptions import BundleFormatError, IntegrityError

#: Version of the on-disk layout of a bundle (``cloudflow/`` folder, manifest keys, pickle
#: reconstructors). Bump it when a bundle written by this version cannot be read by an older
#: cloudflow: a new required manifest key, a renamed file, a removed reconstructor. Adding an
#: optional key or a new flavor does not need a bump. Older formats must keep loading.
FORMAT_VERSION = 1

DATA_DIR = "cloudflow"
MANIFEST_FILE = "manifest.json"
CODE_FILE = "code.pkl"
MODELS_DIR = "models"
_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class ModelEntry:
    """One model of a bundle: which flavor saved it, where, and what its load needs."""

    flavor: str
    path: str
    info: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    """Everything a bundle records about itself, written as ``cloudflow/manifest.json``."""

    format_version: int
    cloudflow_version: str
    python_version: str
    libraries: dict[str, str]
    predict_fn: dict[str, Any]
    models: dict[str, ModelEntry]
    captured_modules: list[str]
    requirements: list[str]
    files: dict[str, dict[str, Any]]
    metadata: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True, default=str)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        known = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(
            f.name
            for f in dataclasses.fields(cls)
            if f.name not in data
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        )
        if missing:
            raise BundleFormatError(
                f"The bundle manifest lacks the keys {missing}: it is damaged or not a cloudflow "
                "manifest. Save the bundle again."
            )
        values = {k: v for k, v in data.items() if k in known}
        values["extra"] = {
            **data.get("extra", {}),
            **{k: v for k, v in data.items() if k not in known},
        }
        values["models"] = {
            name: ModelEntry(**entry) for name, entry in (data.get("models") or {}).items()
        }
        return cls(**values)


def read_manifest(data_dir: Path) -> Manifest:
    """Read and check the manifest of a bundle's data folder."""
    path = data_dir / MANIFEST_FILE
    if not path.is_file():
        raise BundleFormatError(
            f"{data_dir.parent} is not a cloudflow bundle: {DATA_DIR}/{MANIFEST_FILE} is missing. "
            "Give the folder that holds the MLmodel file of a bundle saved by cloudflow."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IntegrityError(
            f"The manifest {path} is not valid JSON ({e}): the bundle is damaged. Save it again."
        ) from e
    if not isinstance(data, dict):
        raise IntegrityError(f"The manifest {path} is not a JSON object: the bundle is damaged.")
    version = data.get("format_version")
    if not isinstance(version, int):
        raise IntegrityError(f"The manifest {path} has no integer format_version: it is damaged.")
    if version > FORMAT_VERSION:
        from cloudflow._version import __version__

        raise BundleFormatError(
            f"This bundle has format version {version}, newer than the {FORMAT_VERSION} this "
            f"cloudflow {__version__} reads. Upgrade cloudflow: pip install -U cloudflow"
        )
    return Manifest.from_dict(data)


def digest_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _walk_files(data_dir: Path) -> list[str]:
    out = []
    for root, _dirs, files in os.walk(data_dir):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), data_dir).replace(os.sep, "/")
            if rel != MANIFEST_FILE:
                out.append(rel)
    return sorted(out)


def digest_files(data_dir: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file of a data folder but the manifest (hashed in parallel)."""
    rels = _walk_files(data_dir)
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(4, max(1, len(rels)))) as pool:
        digests = list(pool.map(lambda rel: digest_file(data_dir / rel), rels))
    return {
        rel: {"sha256": digest, "size": (data_dir / rel).stat().st_size}
        for rel, digest in zip(rels, digests, strict=True)
    }


def verify_files(data_dir: Path, manifest: Manifest) -> None:
    """Check every file against the manifest before anything is unpickled."""
    present = set(_walk_files(data_dir))
    expected = set(manifest.files)
    missing = sorted(expected - present)
    if missing:
        raise IntegrityError(
            f"The bundle at {data_dir.parent} is missing {missing[0]!r} (listed in its manifest)"
            + (f" and {len(missing) - 1} more file(s)" if len(missing) > 1 else "")
            + ". It is incomplete: copy it again or save it again."
        )
    extra = sorted(present - expected)
    if extra:
        raise IntegrityError(
            f"The bundle at {data_dir.parent} holds a file its manifest does not list: "
            f"{extra[0]!r}. Files were added after saving; remove them or save the bundle again."
        )
    for rel, entry in manifest.files.items():
        size = (data_dir / rel).stat().st_size
        if size != entry.get("size"):
            raise IntegrityError(
                f"The file {rel!r} of the bundle at {data_dir.parent} has {size} bytes, but "
                f"{entry.get('size')} were saved: it was changed or truncated. Save the bundle "
                "again."
            )
    rels = sorted(manifest.files)
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(4, max(1, len(rels)))) as pool:
        digests = dict(
            zip(rels, pool.map(lambda rel: digest_file(data_dir / rel), rels), strict=True)
        )
    for rel in rels:
        if digests[rel] != manifest.files[rel].get("sha256"):
            raise IntegrityError(
                f"The file {rel!r} of the bundle at {data_dir.parent} does not match the sha256 "
                "digest in its manifest: it was changed after saving. Do not load it; save the "
                "bundle again from its source."
            )
