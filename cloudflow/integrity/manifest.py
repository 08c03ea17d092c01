"""The bundle manifest: what a bundle holds, and the digests that prove it is unchanged.

Three layers, each checked before anything of the bundle is unpickled:

- ``files``: the digest (BLAKE3; sha256 in format 1) and size of every file of the ``cloudflow``
  folder but the manifest, so a changed, truncated, missing or added file is found and named;
- ``manifest_sha256``: a checksum of the manifest's own content, so damage to the manifest itself
  (a flipped byte in a digest, a version or a model entry) is found too;
- optionally ``manifest.sig`` (:mod:`cloudflow.integrity.signing`): an HMAC of the manifest. Digests
  and checksum catch accidents; only a signature catches someone who rewrote a file *and* its
  digest.

MLflow's environment files (``requirements.txt``, ``conda.yaml``, ``wheels/``...; see
:mod:`cloudflow.integrity.environment`) are digested like every other file, but a change to them,
which MLflow's own model tools make, only warns when the bundle is unsigned; signed, it is refused.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import os
import posixpath
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudflow.exceptions import BundleFormatError, IntegrityError
from cloudflow.integrity import digests as _digests
from cloudflow.integrity import environment as _environment
from cloudflow.integrity import signing as _signing

#: Version of the on-disk layout of a bundle (``cloudflow/`` folder, manifest keys, pickle
#: reconstructors). Bump it when a bundle written by this version cannot be read by an older
#: cloudflow: a new required manifest key, a renamed file, a removed reconstructor. Adding an
#: optional key or a new flavor does not need a bump. Older formats must keep loading.
#: Format 2 lists BLAKE3 digests of files (``{"blake3": ..., "size": ...}``) where format 1 listed
#: sha256 digests; both are read. Format 3 pickles carry only the globals saved code reaches and
#: rebuild classes through cloudflow's own reconstructors (per-bundle class identity), which an
#: older cloudflow does not have.
FORMAT_VERSION = 3
#: Format 4: a bundle logged to a tracking server keeps its large files in the experiment's shared
#: area (the ``shared`` section, :mod:`cloudflow.store.remote`); an older cloudflow would find them
#: missing. Bundles without shared files are still written as format 3.
SHARED_FORMAT_VERSION = 4
#: The newest format this cloudflow reads.
NEWEST_FORMAT_VERSION = SHARED_FORMAT_VERSION

DATA_DIR = "cloudflow"
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = _signing.SIGNATURE_FILE
CODE_FILE = "code.pkl"
MODELS_DIR = "models"
#: The manifest's checksum of itself (optional: bundles written before it existed have none).
CHECKSUM_KEY = "manifest_sha256"
#: The largest manifest read: one of a bundle with thousands of files and modules is a few MB.
MANIFEST_MAX = 64 * 1024 * 1024
# Files of the data folder that describe the others and are not listed in ``files``.
_META_FILES = frozenset({MANIFEST_FILE, SIGNATURE_FILE})


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
    #: Captured module -> ``{"globals": [...], "left_out": [...], "whole": why}`` (format 3+).
    captured_globals: dict[str, Any] = field(default_factory=dict)
    #: CPython minor versions the bundle loads on (format 3+; empty: the saving one only).
    python_versions: list[str] = field(default_factory=list)
    #: Data files given as ``files=`` (see :mod:`cloudflow._files`); empty: none.
    data_files: dict[str, Any] = field(default_factory=dict)
    #: Digest and size of every file of the bundle outside ``cloudflow/`` (MLmodel,
    #: requirements.txt, python_env.yaml, conda.yaml, input examples), by path from the bundle's
    #: root; written last, when MLmodel is final (see :func:`seal`). Empty: an older bundle.
    outer_files: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Where ``log_bundle`` published the bundle (run_id, name, model_id, experiment_id), in
    #: what is signed: a signed bundle found in another's place is refused.
    published: dict[str, str] = field(default_factory=dict)
    #: Flavors users added (``register_flavor``, plugins) that the models use: name ->
    #: ``{"module", "distribution", "version", "entry_point"}`` (what is known), so a load
    #: without the flavor can say what to install. Empty: built-in flavors only.
    flavors: dict[str, dict[str, str]] = field(default_factory=dict)
    #: Where the captured code comes from: ``{"git": [{"commit", "dirty", "modules"}]}`` for
    #: each git checkout holding captured modules (see :mod:`cloudflow.capture.provenance`). Empty:
    #: none was in a checkout, or an older bundle.
    provenance: dict[str, Any] = field(default_factory=dict)
    #: Model name -> the metadata the user gave for it (``model_metadata=``: JSON values and a
    #: ``training_history``); see :mod:`cloudflow._model_metadata`. Empty: none given.
    model_metadata: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Large files kept in the experiment's shared area of a tracking server's artifact store
    #: (see :mod:`cloudflow.store.remote`): ``area`` (artifact URI), ``server``, ``files`` (paths).
    shared: dict[str, Any] = field(default_factory=dict)
    #: What MLflow's environment files were when sealed (see
    #: :mod:`cloudflow.integrity.environment`): ``texts`` (rel -> text of the small ones) and
    #: ``mlmodel`` (``core``: digest of MLmodel without its publication keys; ``publication``: those
    #: keys' values). Empty: an older bundle.
    environment: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """The manifest file's text, with its checksum."""
        # Round-trip first: the checksum is of what a reader will parse (default=str turns odd
        # metadata values into strings, int keys into str keys).
        data = json.loads(json.dumps(dataclasses.asdict(self), default=str))
        data[CHECKSUM_KEY] = checksum(data)
        return json.dumps(data, indent=2, sort_keys=True)

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
            **{k: v for k, v in data.items() if k not in known and k != CHECKSUM_KEY},
        }
        values["models"] = {
            name: ModelEntry(**entry) for name, entry in (data.get("models") or {}).items()
        }
        return cls(**values)


def checksum(data: dict[str, Any]) -> str:
    """sha256 of the manifest's content (every key but the checksum), in a canonical form."""
    body = {k: v for k, v in data.items() if k != CHECKSUM_KEY}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def _damaged(path: Path, what: str) -> IntegrityError:
    return IntegrityError(
        f"The manifest {str(path)!r} is damaged: {what}. Do not load this bundle; copy it again "
        "or save it again."
    )


def _safe_relative(rel: object) -> bool:
    """A path inside the data folder: relative, '/'-separated, no '..', no empty parts."""
    if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel or "\0" in rel:
        return False
    parts = rel.split("/")
    return all(p not in ("", ".", "..") for p in parts) and posixpath.normpath(rel) == rel


def _check_data_files(section: dict[str, Any], path: Path) -> None:
    """Every place ``files=`` leads to is inside the bundle's ``files`` folder."""
    if not section:
        return

    def inside(rel: object) -> bool:
        return _safe_relative(rel) and str(rel).startswith("files/")

    entries, keys = section.get("entries"), section.get("keys")
    trees = section.get("module_trees", {})
    if not (
        isinstance(section.get("salt"), str)
        and isinstance(entries, dict)
        and isinstance(keys, dict)
        and isinstance(trees, dict)
    ):
        raise _damaged(path, "its 'data_files' section lacks its salt, entries or keys")
    for name, entry in entries.items():
        if not isinstance(entry, dict) or not inside(entry.get("path")):
            raise _damaged(path, f"the data file {name!r} does not lead into the bundle")
    for where in [*keys.values(), *trees.values()]:
        if not inside(where):
            raise _damaged(path, f"a data file path leads to {where!r}, outside the bundle")


def _check_shared(data: dict[str, Any], path: Path) -> None:
    """The ``shared`` section names an area and files the manifest lists."""
    shared = data.get("shared") or {}
    if not shared:
        return
    files = data.get("files") or {}
    rels = shared.get("files")
    if (
        not isinstance(shared.get("area"), str)
        or not isinstance(shared.get("server"), str | None)
        or not isinstance(rels, list)
        or not all(isinstance(rel, str) and rel in files for rel in rels)
    ):
        raise _damaged(path, "its 'shared' section is not an area and files the manifest lists")


#: The deepest nesting of JSON values a manifest holds (metadata is limited to 32 levels).
MAX_DEPTH = 64


def _too_deep(data: Any) -> bool:
    """Whether ``data`` nests deeper than :data:`MAX_DEPTH` (walked without recursion)."""
    stack = [(data, 0)]
    while stack:
        value, level = stack.pop()
        if level > MAX_DEPTH:
            return True
        if isinstance(value, dict):
            stack.extend((v, level + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, level + 1) for v in value)
    return False


def _is_str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _is_str_dict(value: object, of: type | tuple[type, ...] = object) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, of) for k, v in value.items()
    )


#: Keys of a model's ``info`` that name a file or folder of the model's own folder.
_INFO_PATHS = (
    *("file", "weights", "module", "tree", "arrays", "archive", "custom_objects"),
    *("saved_model", "wrapper"),
)
#: Keys of a model's ``info`` holding a list, or a mapping, when present.
_INFO_LISTS = ("items", "boosters", "providers", "components", "custom_names")
_INFO_DICTS = ("session_options", "provider_options")


def _check_info(info: dict[str, Any], where: str, path: Path) -> None:
    """A model's ``info`` (flavor-specific): the keys loaders build paths and loops from."""
    for key in _INFO_PATHS:
        if key in info and not _safe_relative(info[key]):
            raise _damaged(path, f"{where}'s info {key!r} is {info[key]!r}, not a path inside it")
    for key in _INFO_LISTS:
        if key in info and not isinstance(info[key], list):
            raise _damaged(path, f"{where}'s info {key!r} is not a list")
    for key in _INFO_DICTS:
        if key in info and not _is_str_dict(info[key]):
            raise _damaged(path, f"{where}'s info {key!r} is not a mapping")
    for index, item in enumerate(info.get("items") or []):
        if not isinstance(item, dict) or not isinstance(item.get("info", {}), dict):
            raise _damaged(path, f"element {index} of {where} is not a flavor, path and info")
        if isinstance(item.get("info"), dict):
            _check_info(item["info"], f"{where} element {index}", path)
    for index, booster in enumerate(info.get("boosters") or []):
        if not isinstance(booster, dict):
            raise _damaged(path, f"booster {index} of {where} is not a mapping")


def _check_sections(data: dict[str, Any], path: Path) -> None:
    """The nested fields ``inspect``, ``list`` and the load read, each of the type they expect."""
    fn = data.get("predict_fn") or {}
    for key in ("name", "module", "signature"):
        if key in fn and not isinstance(fn[key], str):
            raise _damaged(path, f"predict_fn {key!r} is not a string")
    for key in ("inputs", "parameters"):
        if key in fn and not _is_str_list(fn[key]):
            raise _damaged(path, f"predict_fn {key!r} is not a list of names")
    for key in ("captured_modules", "requirements", "python_versions"):
        if key in data and not _is_str_list(data[key]):
            raise _damaged(path, f"{key!r} is not a list of strings")
    for module, entry in (data.get("captured_globals") or {}).items():
        if (
            not isinstance(entry, dict)
            or not _is_str_list(entry.get("globals", []))
            or not _is_str_list(entry.get("left_out", []))
            or not isinstance(entry.get("whole"), str | None)
        ):
            raise _damaged(path, f"the captured globals of {module!r} are not lists of names")
    if not _is_str_dict(data.get("published") or {}, str):
        raise _damaged(path, "'published' does not map names to strings")
    for name, source in (data.get("flavors") or {}).items():
        if not _is_str_dict(source, (str, type(None))):
            raise _damaged(path, f"the source of the flavor {name!r} is not a mapping of strings")
    for name, given in (data.get("model_metadata") or {}).items():
        history = given.get("training_history", {}) if isinstance(given, dict) else None
        if not _is_str_dict(given) or not _is_str_dict(history, list):
            raise _damaged(path, f"the metadata of model {name!r} is not a mapping of values")
    git = (data.get("provenance") or {}).get("git", [])
    if not isinstance(git, list) or not all(
        isinstance(c, dict)
        and isinstance(c.get("commit", ""), str)
        and _is_str_list(c.get("modules", []))
        for c in git
    ):
        raise _damaged(path, "its provenance is not a list of git checkouts")
    for name, entry in ((data.get("data_files") or {}).get("entries") or {}).items():
        if not isinstance(entry.get("kind", ""), str) or not all(
            type(entry.get(k, 0)) is int for k in ("size", "files")
        ):
            raise _damaged(path, f"the data file {name!r} has no kind, size and count")
    for name, entry in (data.get("models") or {}).items():
        _check_info(entry.get("info") or {}, f"model {name!r}", path)


def _check_shape(data: dict[str, Any], path: Path) -> None:
    """The types every reader relies on; a damaged manifest says so instead of a TypeError."""
    for key, kind in (
        ("cloudflow_version", str),
        ("python_version", str),
        ("libraries", dict),
        ("predict_fn", dict),
        ("models", dict),
        ("captured_modules", list),
        ("requirements", list),
        ("files", dict),
        ("metadata", dict),
        ("captured_globals", dict),
        ("python_versions", list),
        ("data_files", dict),
        ("outer_files", dict),
        ("published", dict),
        ("flavors", dict),
        ("provenance", dict),
        ("model_metadata", dict),
        ("shared", dict),
        ("environment", dict),
        ("extra", dict),
    ):
        if key in data and not isinstance(data[key], kind):
            raise _damaged(path, f"{key!r} is a {type(data[key]).__name__}, not a {kind.__name__}")
    for rel, entry in (data.get("files") or {}).items():
        if not _safe_relative(rel) or rel in _META_FILES:
            raise _damaged(path, f"it lists the file {rel!r}, which is not a path in the bundle")
        if (
            not isinstance(entry, dict)
            or len([a for a in _digests.ALGORITHMS if isinstance(entry.get(a), str)]) != 1
            or type(entry.get("size")) is not int
        ):
            raise _damaged(path, f"the entry of {rel!r} has no digest and size")
    _check_data_files(data.get("data_files") or {}, path)
    _check_shared(data, path)
    wrong = _environment.check_record(data.get("environment") or {})
    if wrong:
        raise _damaged(path, wrong)
    for rel, entry in (data.get("outer_files") or {}).items():
        if not _safe_relative(rel) or rel.split("/")[0] == DATA_DIR:
            raise _damaged(path, f"it lists the file {rel!r}, which is not a path in the bundle")
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get(_digests.ALGORITHM), str)
            or type(entry.get("size")) is not int
        ):
            raise _damaged(path, f"the entry of {rel!r} has no digest and size")
    for name, entry in (data.get("models") or {}).items():
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("flavor"), str)
            or not _safe_relative(entry.get("path"))
            or not str(entry.get("path")).startswith(MODELS_DIR + "/")
            or not isinstance(entry.get("info", {}), dict)
            or not isinstance(entry.get("metadata", {}), dict)
            or set(entry) - {"flavor", "path", "info", "metadata"}
        ):
            raise _damaged(path, f"the entry of model {name!r} is not a flavor, path and info")
    for dist, version in (data.get("libraries") or {}).items():
        if not isinstance(version, str):
            raise _damaged(path, f"the version of {dist!r} is not a string")
    _check_sections(data, path)


def read_manifest(data_dir: Path, *, signing_key: Any = None) -> Manifest:
    """Read and check the manifest of a bundle's data folder.

    With a key, the signature is checked on the very bytes that are then parsed.

    Raises:
        BundleFormatError: The folder is not a bundle, or of a newer format.
        IntegrityError: The manifest is damaged, or unsigned / wrongly signed under the key.
    """
    path = data_dir / MANIFEST_FILE
    try:
        raw = _digests.read_regular(path, MANIFEST_MAX, "The manifest")
    except FileNotFoundError:
        raw = None
    except OSError as e:
        raise IntegrityError(f"The manifest {str(path)!r} cannot be read: {e.strerror}.") from e
    if raw is None:
        raise BundleFormatError(
            f"{str(data_dir.parent)!r} is not a cloudflow bundle: {DATA_DIR}/{MANIFEST_FILE} is "
            "missing. Give the folder that holds the MLmodel file of a bundle saved by cloudflow."
        )
    if signing_key is not None:
        _signing.check(data_dir, raw, signing_key)
    return Manifest.from_dict(parse(raw, path))


def parse(raw: bytes, path: Path) -> dict[str, Any]:
    """The manifest's bytes as a checked dict: JSON, every field of the type readers expect.

    Raises:
        BundleFormatError: Of a newer format.
        IntegrityError: Damaged or hostile (not JSON, nested too deep, a field of another type,
            a path out of the bundle); the message names the field.
    """
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise _damaged(path, f"it is not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise _damaged(path, "it is not a JSON object")
    if _too_deep(data):
        raise _damaged(path, f"it nests values deeper than {MAX_DEPTH} levels")
    version = data.get("format_version")
    if type(version) is not int or version < 1:
        raise _damaged(path, "it has no valid format_version")
    if version > NEWEST_FORMAT_VERSION:
        from cloudflow._version import __version__

        raise BundleFormatError(
            f"This bundle has format version {version}, newer than the "
            f"{NEWEST_FORMAT_VERSION} this cloudflow {__version__} reads. Upgrade cloudflow: "
            "pip install -U cloudflow"
        )
    if CHECKSUM_KEY in data and data[CHECKSUM_KEY] != checksum(data):
        raise _damaged(path, "its content does not match its checksum (manifest_sha256)")
    _check_shape(data, path)
    return data


def sign(data_dir: Path, signing_key: Any) -> None:
    """Sign the manifest written in ``data_dir`` (writes ``manifest.sig`` beside it)."""
    _signing.sign(data_dir, (data_dir / MANIFEST_FILE).read_bytes(), signing_key)


def _outer_rels(root: Path) -> list[str]:
    """The files of a bundle outside its ``cloudflow`` folder, but MLflow's download notes."""
    return [rel for rel in _walk_files(root, skip_top=DATA_DIR) if rel not in DOWNLOAD_FILES]


def outer_digests(root: Path) -> dict[str, dict[str, Any]]:
    """Digest and size of every file of a bundle outside its ``cloudflow`` folder."""
    paths = {rel: root / rel for rel in _outer_rels(root)}
    digests = _digests.written_digests(paths)  # those cloudflow wrote: not read back
    todo = [rel for rel in paths if rel not in digests]
    hashed = _digests.digest_files([paths[rel] for rel in todo], use_cache=False)
    digests.update(zip(todo, hashed, strict=True))
    return {
        rel: {_digests.ALGORITHM: digests[rel], "size": path.stat().st_size}
        for rel, path in paths.items()
    }


def seal(root: Path, manifest: Manifest, signing_key: Any = None) -> Manifest:
    """Write the manifest again with the digests of MLflow's files (now final), and sign it.

    Called when MLmodel and the files beside it will not change any more, just before the
    bundle is published; again if they do change (``log_bundle`` records the run in MLmodel).
    """
    data = root / DATA_DIR
    sealed = dataclasses.replace(
        manifest, outer_files=outer_digests(root), environment=_environment.record(root)
    )
    raw = sealed.to_json().encode("utf-8")
    (data / MANIFEST_FILE).write_bytes(raw)
    (data / SIGNATURE_FILE).unlink(missing_ok=True)
    if signing_key is not None:
        _signing.sign(data, raw, signing_key)  # the bytes just written, never read back
    return sealed


def file_digest(entry: dict[str, Any]) -> tuple[str, str]:
    """The algorithm and digest a manifest's file entry records."""
    for algorithm in _digests.ALGORITHMS:
        if algorithm in entry:
            return algorithm, str(entry[algorithm])
    raise BundleFormatError(f"A file entry of the manifest has no known digest: {entry!r}")


def _walk_files(data_dir: Path, *, skip_top: str | None = None) -> list[str]:
    """The files under a folder, by '/'-separated relative path (not the manifest's own).

    Raises:
        IntegrityError: A symbolic link (to a file or a folder) lies inside: a bundle holds
            only regular files, and a link can lead anywhere, even where the content matches.
    """
    out = []
    for root, dirs, files in os.walk(data_dir):
        if skip_top is not None and root == os.fspath(data_dir):
            dirs[:] = [d for d in dirs if d != skip_top]
        for name in [*dirs, *files]:
            full = os.path.join(root, name)
            if os.path.islink(full):
                rel = os.path.relpath(full, data_dir).replace(os.sep, "/")
                raise IntegrityError(
                    f"The bundle at {str(data_dir)!r} holds a symbolic link, {rel!r} -> "
                    f"{os.readlink(full)!r}: a bundle holds only regular files. Refusing to load "
                    "it; copy the bundle again without links (cp -L) or save it again."
                )
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), data_dir).replace(os.sep, "/")
            if skip_top is not None or rel not in _META_FILES:
                out.append(rel)
    return sorted(out)


def digest_files(
    data_dir: Path, known: Mapping[Path, str] | None = None
) -> dict[str, dict[str, Any]]:
    """Digest and size of every file of a data folder but the manifest (hashed in parallel).

    Args:
        known: Absolute path -> digest of files whose digest was computed before they were
            written (weights, from memory) or proven as they were linked; not hashed again.
            Files written through :func:`cloudflow.integrity.digests.open_hashed` and its kin take
            the digest of the bytes written (:func:`cloudflow.integrity.digests.written_digests`),
            unread.
    Raises:
        IntegrityError: A file this save wrote was changed since (see ``written_digests``).
    """
    # Not resolved: a save's folder is reached through its descriptor (cloudflow.integrity.staging),
    # and resolving would lead back through parents other users of a store may rename.
    paths = {rel: Path(os.path.abspath(data_dir / rel)) for rel in _walk_files(data_dir)}
    digests = dict(known or {})
    written = _digests.written_digests(
        {rel: path for rel, path in paths.items() if path not in digests}
    )
    digests.update((paths[rel], digest) for rel, digest in written.items())
    todo = [path for path in paths.values() if path not in digests]
    digests.update(zip(todo, _digests.digest_files(todo), strict=True))
    return {
        rel: {_digests.ALGORITHM: digests[path], "size": path.stat().st_size}
        for rel, path in paths.items()
    }


#: Files in formats built to be read from untrusted sources, parsed without running code: their
#: digests may be checked while they load (see :func:`deferred_files`). Pickles never are.
DEFERRABLE_SUFFIXES = (".safetensors",)


#: Data files (``files=``) are read by the predict function only, never while loading: their
#: digests are checked while the models load too (the bundle is returned once they match).
DEFERRABLE_PREFIXES = ("files/",)


def deferred_files(manifest: Manifest) -> list[str]:
    """The data-only files whose digests can be checked while the models load."""
    return sorted(
        rel
        for rel in manifest.files
        if rel.endswith(DEFERRABLE_SUFFIXES) or rel.startswith(DEFERRABLE_PREFIXES)
    )


#: Files whose loading runs code (pickles, marshalled code objects, skops): read once into
#: memory, hashed there, and loaded from those very bytes, so that nothing can swap the file
#: between the check and the load.
READ_ONCE_SUFFIXES = (".pkl", ".marshal", ".skops")


def verify_files(
    data_dir: Path,
    manifest: Manifest,
    *,
    skip_digests: Iterable[str] = (),
    use_cache: bool = True,
    require_outer: bool = False,
    outer: bool = True,
    refuse_signed_change: bool = True,
    preload: bool = True,
) -> VerifiedBytes:
    """Check every file against the manifest before anything is unpickled.

    Args:
        skip_digests: Files whose presence and size are checked here but whose digests the
            caller checks itself (with :func:`verify_digests`), while they load.
        use_cache: Take digests of unchanged large files from this machine's digest cache
            (never for the files read once, which are hashed from memory). Off under a key.
        require_outer: Refuse a bundle whose manifest does not cover MLflow's files.
        outer: Check MLflow's files too (see :func:`check_outer`); False when the caller did.
        refuse_signed_change: Refuse a signed bundle whose environment files changed.
        preload: Read the files that run code into memory, to be loaded from there. Without
            (a check that loads nothing: ``inspect``, ``verify``), every file is hashed as it
            streams, so a huge (or sparse) file is never held whole in memory.

    Returns:
        The verified bytes of the files that run code when loaded (:data:`READ_ONCE_SUFFIXES`),
        with the change to MLflow's environment files found (``environment``).

    Raises:
        IntegrityError: A file is missing, added, of another size or another digest, or a link;
            the message names it. Changes to MLflow's environment files only when signed.
    """
    bundle = str(data_dir.parent)
    if os.path.islink(data_dir):
        raise IntegrityError(
            f"The {DATA_DIR} folder of the bundle at {bundle!r} is a symbolic link: a bundle holds "
            "only regular files and folders. Copy it again without links (cp -L)."
        )
    _check_listing(bundle, set(_walk_files(data_dir)), manifest.files)
    for rel in sorted(manifest.files):
        _check_size(data_dir / rel, rel, bundle, manifest.files[rel]["size"])
    change = _environment.EnvironmentChange()
    if outer:
        change = check_outer(
            data_dir.parent, manifest, required=require_outer, refuse_signed=refuse_signed_change
        )
    skipped = set(skip_digests)
    once = [rel for rel in manifest.files if preload and rel.endswith(READ_ONCE_SUFFIXES)]
    verified = VerifiedBytes(data_dir, manifest)
    verified.environment = change
    verified.preload([rel for rel in once if rel not in skipped])
    rest = [rel for rel in sorted(manifest.files) if rel not in skipped and rel not in once]
    verify_digests(data_dir, manifest, rest, use_cache=use_cache)
    return verified


def _check_listing(bundle: str, present: set[str], listed: Mapping[str, Any]) -> None:
    expected = set(listed)
    missing = sorted(expected - present)
    if missing:
        raise IntegrityError(
            f"The bundle at {bundle!r} is missing {missing[0]!r} (listed in its manifest)"
            + (f" and {len(missing) - 1} more file(s)" if len(missing) > 1 else "")
            + ". It is incomplete: copy it again or save it again."
        )
    extra = sorted(present - expected)
    if extra:
        raise IntegrityError(
            f"The bundle at {bundle!r} holds a file its manifest does not list: {extra[0]!r}. "
            "Files were added after saving; remove them or save the bundle again."
        )


def _check_size(path: Path, rel: str, bundle: str, size: int) -> None:
    try:
        found = path.stat().st_size
    except OSError as e:
        raise IntegrityError(
            f"The file {rel!r} of the bundle at {bundle!r} cannot be read ({e.strerror})."
        ) from e
    if found != size:
        raise IntegrityError(
            f"The file {rel!r} of the bundle at {bundle!r} has {found} bytes, but {size} were "
            "saved: it was changed or truncated. Save the bundle again."
        )


#: Files MLflow writes into a model's folder when it downloads it, after saving: the registered
#: name and version of a ``models:/`` download. Plain YAML MLflow parses safely; not listed.
DOWNLOAD_FILES = frozenset({"registered_model_meta"})


def check_outer(
    root: Path, manifest: Manifest, *, required: bool = False, refuse_signed: bool = True
) -> _environment.EnvironmentChange:
    """MLflow's files against the manifest: each exactly, but the environment files.

    Returns what changed in MLflow's environment files (see :mod:`cloudflow.integrity.environment`);
    an unsigned bundle loads with it, a signed one (``manifest.sig``) is refused.

    Raises:
        IntegrityError: Another of MLflow's files is missing, added or changed (MLmodel in
            more than its publication keys); or the bundle is signed and its environment files
            changed (with ``refuse_signed``).
    """
    change = _verify_outer(root, manifest, required)
    if change and refuse_signed and (root / DATA_DIR / SIGNATURE_FILE).is_file():
        raise IntegrityError(_environment.refusal_message(str(root), change))
    return change


def _verify_outer(root: Path, manifest: Manifest, required: bool) -> _environment.EnvironmentChange:
    """MLflow's files (MLmodel, requirements, environments, examples) against the manifest."""
    bundle = str(root)
    if not manifest.outer_files:
        if required:
            raise IntegrityError(
                f"The bundle at {bundle!r} is signed, but its manifest does not cover MLflow's "
                "files (MLmodel, requirements.txt...): it was saved by an older cloudflow. Sign it "
                "again with `cloudflow sign`, or save it again."
            )
        return _environment.EnvironmentChange()
    present = set(_outer_rels(root))
    strict = {
        rel: entry
        for rel, entry in manifest.outer_files.items()
        if not _environment.is_environment_file(rel)
    }
    _check_listing(
        bundle, {rel for rel in present if not _environment.is_environment_file(rel)}, strict
    )
    rels = sorted(strict)
    mlmodel = None
    if _environment.MLMODEL in strict and manifest.environment.get("mlmodel"):
        # MLmodel may differ in where and when it was logged (add_libraries_to_model logs it
        # again), nothing else: its loader, flavors and signature stay exact.
        entry = strict[_environment.MLMODEL]
        path = root / _environment.MLMODEL
        algorithm, expected = file_digest(entry)
        same = path.stat().st_size == entry["size"] and (
            _digests.digest_files([path], algorithm=algorithm, use_cache=False)[0] == expected
        )
        if not same:
            mlmodel = _environment.mlmodel_change(root, manifest.environment)
            if mlmodel is not None:
                rels.remove(_environment.MLMODEL)
    for rel in rels:
        _check_size(root / rel, rel, bundle, strict[rel]["size"])
    _check_digests(root, bundle, strict, rels, use_cache=False)
    return _environment.compare(root, manifest.outer_files, present, mlmodel)


def environment_change(root: Path) -> _environment.EnvironmentChange:
    """What changed in a bundle's environment files; empty if it cannot tell (damaged)."""
    try:
        return _verify_outer(root, read_manifest(root / DATA_DIR), False)
    except (IntegrityError, BundleFormatError, OSError):
        return _environment.EnvironmentChange()


def check_copy(root: Path, manifest: Manifest, absent: Iterable[str], source: str) -> None:
    """Check a copy of a bundle's files, all but the ``absent`` ones, against its manifest:
    none missing or added, each of its size and digest, no link (hashed, no digest cache).

    ``source`` names where the files were copied from, in the message.

    Raises:
        IntegrityError: A file differs; the message names it.
    """
    data = root / DATA_DIR
    skip = set(absent)
    listed = {rel: entry for rel, entry in manifest.files.items() if rel not in skip}
    _check_listing(source, set(_walk_files(data)), listed)
    for rel in sorted(listed):
        _check_size(data / rel, rel, source, listed[rel]["size"])
    _check_digests(data, source, listed, sorted(listed), use_cache=False)
    if manifest.outer_files:
        _check_listing(source, set(_outer_rels(root)), manifest.outer_files)
        rels = sorted(manifest.outer_files)
        for rel in rels:
            _check_size(root / rel, rel, source, manifest.outer_files[rel]["size"])
        _check_digests(root, source, manifest.outer_files, rels, use_cache=False)


def check_bundle(root: Path, trust: Any) -> dict[str, Any]:
    """Check a bundle's signature and every file, without the digest cache; unpickles nothing.

    Returns ``{"signed_by": "<algorithm> <key id>", "files": n}``.

    Raises:
        IntegrityError: Unsigned, wrongly signed, or any file changed, missing, added or a link.
    """
    data = root / DATA_DIR
    manifest = read_manifest(data, signing_key=trust)
    verify_files(data, manifest, use_cache=False, require_outer=True, preload=False)
    record = _signing.read_signature(data)
    assert record is not None  # read_manifest refused an unsigned bundle
    return {
        "signed_by": f"{record[0]} {record[1]}",
        "files": len(manifest.files) + len(manifest.outer_files),
    }


def sign_bundle(root: Path, signer: Any, review: Callable[[str], bool] | None = None) -> Manifest:
    """Sign an existing bundle in place, after checking every file against its manifest.

    A bundle saved before MLflow's files were covered gets their digests first. A damaged
    bundle is refused, never signed. A bundle whose MLflow environment files changed (see
    :mod:`cloudflow.integrity.environment`) is signed as it is now only if ``review``, shown the
    difference, accepts it: the manifest then records the files as they are, and where MLmodel
    now says the model is published. A bundle this key signed must still match that signature,
    so the difference shown is all that changed since.

    Raises:
        IntegrityError: A file does not match the manifest, the manifest no longer matches this
            key's signature, or the environment's change was not accepted.
    """
    data = root / DATA_DIR
    raw = (data / MANIFEST_FILE).read_bytes()
    manifest = read_manifest(data)
    record = _signing.read_signature(data)
    if record is not None and (record[0], record[1]) == (signer.algorithm, signer.key_id):
        try:
            _signing.check(data, raw, _signing.Trust((signer,)))
        except IntegrityError as e:
            raise IntegrityError(
                f"Not signing {str(root)!r}: its manifest was changed after this key signed "
                f"it ({e}). Save the bundle again from its source."
            ) from e
    verified = verify_files(
        data, manifest, use_cache=False, refuse_signed_change=False, preload=False
    )
    change = verified.environment
    if change:
        shown = _environment.difference(root, manifest.environment, change)
        if review is None or not review(shown):
            raise IntegrityError(
                f"Not signing {str(root)!r}: its environment files changed "
                f"({change.summary()}) and the change was not accepted."
            )
        manifest = dataclasses.replace(manifest, published=change.republished(manifest.published))
        return seal(root, manifest, signer)
    if not manifest.outer_files:
        return seal(root, manifest, signer)
    sign(data, signer)
    return manifest


class VerifiedBytes:
    """Files of a bundle read once and checked against the manifest, to be loaded from memory.

    :meth:`read` hands each preloaded file's bytes over once; any other file is read and
    checked when asked for. Without a manifest to check against (``verify=False``), files are
    read as they are.
    """

    def __init__(self, data_dir: Path, manifest: Manifest | None) -> None:
        self.data_dir = data_dir
        self.manifest = manifest
        self.environment = _environment.EnvironmentChange()
        self._bytes: dict[str, bytes] = {}
        self._aliases: dict[str, str] = {}

    def _rel(self, path: Path) -> str:
        where = os.path.normpath(path)
        for alias, folder in list(self._aliases.items()):
            if where == alias or where.startswith(alias + os.sep):
                where = folder + where[len(alias) :]
                break
        return os.path.relpath(where, self.data_dir).replace(os.sep, "/")

    @contextlib.contextmanager
    def aliased(self, alias: Path, folder: Path) -> Iterator[None]:
        """While the block runs, paths under ``alias`` stand for the same under ``folder`` (a
        model's files placed in a private folder: see :mod:`cloudflow.integrity.sealed`)."""
        key = os.path.normpath(alias)
        self._aliases[key] = os.path.normpath(folder)
        try:
            yield
        finally:
            self._aliases.pop(key, None)

    def _read_checked(self, rel: str) -> bytes:
        assert self.manifest is not None
        bundle = str(self.data_dir.parent)
        entry = self.manifest.files.get(rel)
        if entry is None:
            raise IntegrityError(
                f"The bundle at {bundle!r} loads {rel!r}, which its manifest does not list. "
                "Refusing to load it; save the bundle again."
            )
        algorithm, expected = file_digest(entry)
        try:
            # Non-blocking, no links: a FIFO or a link swapped in after the listing is refused,
            # never waited on or followed; never more read than the manifest's size and one byte.
            with os.fdopen(_digests.open_regular(self.data_dir / rel), "rb") as f:
                if os.fstat(f.fileno()).st_size != entry["size"]:
                    raise IntegrityError(
                        f"The file {rel!r} of the bundle at {bundle!r} is not of the size its "
                        "manifest records: it was changed after saving. Save the bundle again."
                    )
                data = f.read(entry["size"] + 1)
        except OSError as e:
            raise IntegrityError(f"A file of the bundle at {bundle!r} cannot be read: {e}") from e
        if len(data) != entry["size"] or _digests.digest_bytes(data, algorithm) != expected:
            raise IntegrityError(
                f"The file {rel!r} of the bundle at {bundle!r} does not match the {algorithm} "
                "digest in its manifest: it was changed after saving. Do not load it; save the "
                "bundle again from its source."
            )
        return data

    def preload(self, rels: Sequence[str]) -> None:
        """Read and check files, in parallel threads (hashing releases the GIL)."""
        if len(rels) <= 1:
            self._bytes.update((rel, self._read_checked(rel)) for rel in rels)
            return
        workers = min(4, len(rels), os.cpu_count() or 1) or 1
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            self._bytes.update(zip(rels, pool.map(self._read_checked, rels), strict=True))

    def read(self, path: Path) -> bytes:
        """The checked bytes of a file of the bundle (its path as the loaders build it)."""
        rel = self._rel(path)
        data = self._bytes.pop(rel, None)
        if data is not None:
            return data
        if self.manifest is None:
            return Path(path).read_bytes()
        return self._read_checked(rel)


def verify_digests(
    data_dir: Path, manifest: Manifest, rels: Sequence[str], *, use_cache: bool = True
) -> None:
    """Check the digests of some files of a bundle's data folder (hashed in parallel)."""
    _check_digests(data_dir, str(data_dir.parent), manifest.files, rels, use_cache=use_cache)


def _check_digests(
    folder: Path,
    bundle: str,
    entries: Mapping[str, dict[str, Any]],
    rels: Sequence[str],
    *,
    use_cache: bool,
) -> None:
    """Check files of ``folder`` against their manifest ``entries`` (hashed in parallel)."""
    by_algorithm: dict[str, list[str]] = {}
    for rel in rels:
        by_algorithm.setdefault(file_digest(entries[rel])[0], []).append(rel)
    for algorithm, group in by_algorithm.items():
        try:
            digests = _digests.digest_files(
                [folder / rel for rel in group], algorithm=algorithm, use_cache=use_cache
            )
        except OSError as e:
            raise IntegrityError(f"A file of the bundle at {bundle!r} cannot be read: {e}") from e
        for rel, digest in zip(group, digests, strict=True):
            if digest != entries[rel][algorithm]:
                raise IntegrityError(
                    f"The file {rel!r} of the bundle at {bundle!r} does not match the {algorithm} "
                    "digest in its manifest: it was changed after saving. Do not load it; save "
                    "the bundle again from its source."
                )
