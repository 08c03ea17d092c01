"""Large bundle files shared through a tracking server's artifact store: uploaded once per
experiment, downloaded once per machine.

A local store shares large files between bundles by hard link (:mod:`cloudflow.store.blobs`). A
bundle logged to a tracking server (proxied ``mlflow-artifacts:``, or an artifact store the client
writes itself, such as S3) does the same through the store:

- **The area.** Each file of the bundle's data folder of :data:`AREA_MIN_SIZE` or more is kept
  once in the experiment's area,
  ``<experiment artifact location>/.cloudflow-blobs/<BLAKE3 digest>``, and uploaded only when
  the area holds no file of that name and size yet. The bundle's own folder holds everything
  else (code, configs, the manifest); the manifest's ``shared`` section lists the files that
  live in the area, and where the area is. Logging an unchanged model again uploads kilobytes.
- **Per experiment, not per server,** as in the local store: access rights on an MLflow server
  follow experiments (its auth plugin grants them per experiment), so a file is only ever read
  through an experiment the reader can read; deleting an experiment frees its files; and the
  clean-up reads one experiment's bundles to know what its area still needs. The cost: the same
  base model logged into two experiments is uploaded twice.
- **Loads.** A load finds the shared files missing from the bundle's folder and takes them from the
  per-machine cache (:mod:`cloudflow.store.cache`), downloading into it, in parallel and verified
  while streaming, only the ones it lacks. The bundle is then read from a folder of the cache that
  links them. Every load path goes through :func:`cloudflow.runtime.read.read_bundle`, so
  ``load_bundle``, the seed API, ``mlflow.pyfunc.load_model``, ``mlflow models serve`` and
  ``spark_udf`` all do this.
- **Safety.** The manifest, signed when a key is given, holds each file's digest, and every file
  is checked against it (while downloading, and again by the load's own verification), so the
  area's files are never trusted by their names. A save first announces the digests it is about
  to reference (``.cloudflow-blobs/.pending/<time>-<id>.json``) and checks the area again once
  its small files are uploaded, uploading whatever went missing; the clean-up
  (:func:`collect_garbage`) never removes a file a bundle's manifest or an announcement names.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import posixpath
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudflow import _mlflow
from cloudflow.exceptions import CloudflowError, IntegrityError, NotFoundError, StoreError
from cloudflow.integrity import digests as _digests
from cloudflow.integrity import manifest as _manifest
from cloudflow.integrity.manifest import (
    DATA_DIR,
    MANIFEST_FILE,
    SHARED_FORMAT_VERSION,
    SIGNATURE_FILE,
    Manifest,
)
from cloudflow.store import blobs as _blobs
from cloudflow.store import cache as _cache

_logger = logging.getLogger("cloudflow")

AREA_DIR = _blobs.BLOB_DIR
PENDING_DIR = ".pending"
#: Files smaller than this travel inside the bundle, not in the experiment's area: a separate
#: upload costs more than it saves. (Lower than the local store's 1 MiB,
#: :data:`cloudflow.store.blobs.LINK_MIN_SIZE`: a shared file costs no request on a repeat log or
#: load, and a tokenizer's 0.2-0.7 MB files are then not uploaded again.)
AREA_MIN_SIZE = 128 * 1024
#: Parallel uploads and downloads of large files.
WORKERS = 4
#: An announcement older than this is left over from a save that died.
PENDING_MAX_AGE_S = 24 * 3600


@dataclass(frozen=True)
class Area:
    """Where an experiment's shared files are: an artifact URI, and the server that resolves it.

    ``mlflow-artifacts:`` URIs name a path on the tracking server; ``server`` is the server the
    bundle was logged to, used when the process loading it has no http tracking URI set.
    """

    uri: str
    server: str | None = None

    @classmethod
    def of_experiment(cls, artifact_location: str, tracking_uri: str | None) -> Area:
        server = tracking_uri if _is_http(tracking_uri) else None
        return cls(f"{artifact_location.rstrip('/')}/{AREA_DIR}", server)

    def describe(self) -> str:
        return f"{self.uri} (server {self.server})" if self.server else self.uri

    def repository(self) -> Any:
        """MLflow's artifact repository of the area.

        Raises:
            StoreError: The area is on a tracking server, and no server is known to reach it.
        """
        if self.uri.startswith("mlflow-artifacts:"):
            from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

            from cloudflow.store.tracking import current_tracking_uri

            current = current_tracking_uri()
            server = current if _is_http(current) else self.server
            if server is None:
                raise StoreError(
                    f"This bundle's large files are on a tracking server ({self.uri}), and no "
                    "server is known: set MLFLOW_TRACKING_URI (or mlflow.set_tracking_uri) to "
                    "the server's http(s) URL, or load a copy made with `cloudflow export`."
                )
            return MlflowArtifactsRepository(self.uri, tracking_uri=server)
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        return get_artifact_repository(self.uri)

    def listing(self, repo: Any) -> dict[str, int]:
        """Digest -> size of the files the area holds."""
        with _server_errors(self, "list the shared files"):
            found = repo.list_artifacts()
        return {
            posixpath.basename(f.path): int(f.file_size)
            for f in found
            if not f.is_dir
            and f.file_size is not None
            and _cache.is_blob(posixpath.basename(f.path))
        }

    def upload(self, repo: Any, path: Path, artifact_path: str | None = None) -> None:
        with _server_errors(self, f"upload {path.name[:16]}..."):
            repo.log_artifact(str(path), artifact_path)

    def download(self, repo: Any, digest: str, path: Path | None, size: int) -> str:
        """Write the file ``digest`` to ``path``; returns the BLAKE3 digest of what arrived.

        A server's stream stops once it passes ``size`` (what the manifest states): a file is
        never written past it. With ``path`` None the bytes are only hashed (a server's stream
        is not written anywhere).
        """
        hasher = _digests.new_hasher()
        written = 0
        with _server_errors(self, f"download {digest[:16]}..."):
            credentials = _mlflow.http_artifact_credentials(repo)
            if credentials is not None:
                # An http repository (proxied artifacts): stream it, hashing each chunk.
                from mlflow.utils.rest_utils import augmented_raise_for_status, http_request

                resp = http_request(credentials, f"/{digest}", "GET", stream=True)
                if resp.status_code == 404:
                    raise _gone(self, digest)
                augmented_raise_for_status(resp)
                out = open(path, "wb") if path is not None else contextlib.nullcontext()  # noqa: SIM115
                with contextlib.closing(resp), out as f:
                    for chunk in resp.iter_content(chunk_size=1 << 20):
                        written += len(chunk)
                        if written > size:
                            raise IntegrityError(
                                f"The download of {digest[:16]}... from {self.describe()} is "
                                f"longer than the {size} bytes the bundle's manifest states; "
                                "stopped there, nothing was kept. The server's copy is not the "
                                "bundle's file."
                            )
                        hasher.update(chunk)
                        if f is not None:
                            f.write(chunk)
                return str(hasher.hexdigest())
            if path is None:  # another store: MLflow downloads to a file, hashed, then deleted
                with tempfile.TemporaryDirectory(prefix="cloudflow-check-") as scratch:
                    return self.download(repo, digest, Path(scratch) / digest, size)
            # Any other store (S3, GCS, Azure...): MLflow's download, then the hash.
            try:
                _mlflow.download_artifact_file(repo, digest, str(path))
            except Exception as e:
                if "404" in str(e) or "NoSuchKey" in str(e) or "Not Found" in str(e):
                    raise _gone(self, digest) from e
                raise
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                hasher.update(chunk)
        return str(hasher.hexdigest())

    def holds(self, repo: Any, digest: str, size: int) -> bool:
        """Whether the area's file ``digest`` is that content: read back and hashed."""
        try:
            return self.download(repo, digest, None, size) == digest
        except (IntegrityError, NotFoundError):
            return False


def _gone(area: Area, digest: str) -> NotFoundError:
    return NotFoundError(
        f"The shared area {area.describe()} has no file {digest[:16]}..., which this bundle "
        "needs: it was removed from the artifact store (by hand, or by a clean-up that did not "
        "know this bundle). Log the model again, or export it (cloudflow export) from a machine "
        "whose download cache still holds it."
    )


def _is_http(uri: str | None) -> bool:
    return bool(uri) and str(uri).lower().startswith(("http://", "https://"))


@contextlib.contextmanager
def _server_errors(area: Area, doing: str) -> Any:
    """Failures of the server or the store while ``doing`` -> StoreError naming the area."""
    try:
        yield
    except CloudflowError:
        raise
    except Exception as e:
        # A file system's errors are the caller's (a full cache disk); requests' errors (a
        # dropped connection) are OSErrors too, and the server's.
        if isinstance(e, OSError) and not type(e).__module__.startswith(("requests", "urllib3")):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise StoreError(
            f"Could not {doing} in the shared area {area.describe()}: {type(e).__name__}: {first}. "
            "Check that the tracking server (or the artifact store) runs and is reachable, then "
            "try again; nothing half-written was kept."
        ) from e


# --- saving ----------------------------------------------------------------------------------


def shared_files(manifest: Manifest) -> list[str]:
    """The files of a bundle's data folder that go to the area: the large ones."""
    return sorted(rel for rel, entry in manifest.files.items() if entry["size"] >= AREA_MIN_SIZE)


def mark_shared(manifest: Manifest, area: Area) -> Manifest:
    """The manifest with its ``shared`` section (and the format that has one), if any file is."""
    rels = shared_files(manifest)
    if not rels:
        return manifest
    shared = {"area": area.uri, "server": area.server, "files": rels}
    return dataclasses.replace(manifest, shared=shared, format_version=SHARED_FORMAT_VERSION)


@dataclass
class UploadReport:
    """What one save sent to the area."""

    uploaded_bytes: int = 0
    uploaded_files: int = 0
    reused_bytes: int = 0
    reused_files: int = 0
    uploaded: list[str] = field(default_factory=list)


def publish(staged: Path, manifest: Manifest, upload_rest: Callable[[], None]) -> UploadReport:
    """Upload a sealed bundle whose manifest has a ``shared`` section.

    The shared files move out of ``staged`` (into a sibling folder) and go to the area unless it
    holds them; ``upload_rest`` then uploads what is left of ``staged``. Afterwards the area is
    listed again and anything a concurrent clean-up removed is uploaded again.
    """
    area = Area(manifest.shared["area"], manifest.shared.get("server"))
    repo = area.repository()
    by_digest: dict[str, Path] = {}
    sizes: dict[str, int] = {}
    out = staged.parent / ".shared"
    out.mkdir(exist_ok=True)
    for rel in manifest.shared["files"]:
        entry = manifest.files[rel]
        digest = entry[_digests.ALGORITHM]
        source = staged / DATA_DIR / rel
        if digest in by_digest:
            source.unlink()
            continue
        target = out / digest
        os.replace(source, target)
        by_digest[digest], sizes[digest] = target, int(entry["size"])
    report = UploadReport()
    marker = _announce(area, repo, sorted(by_digest), out.parent)
    try:
        present = area.listing(repo)
        todo = [d for d in by_digest if present.get(d) != sizes[d]]
        # A file of the right name and size may still be damaged (altered on the server): every
        # bundle that reused it would never load. Each reused copy is read back and hashed;
        # one that differs is uploaded again, which repairs it for the bundles that name it.
        damaged = _damaged_copies(area, repo, [d for d in by_digest if d not in todo], sizes)
        if damaged:
            _logger.warning(
                "%d file(s) of the shared area %s do not match their names (damaged on the "
                "server); uploading this save's copies in their place: %s",
                len(damaged),
                area.describe(),
                ", ".join(d[:16] + "..." for d in damaged),
            )
            todo += damaged
        for d in by_digest:
            if d not in todo:
                report.reused_files += 1
                report.reused_bytes += sizes[d]
        _upload_all(area, repo, [by_digest[d] for d in todo])
        report.uploaded = list(todo)
        upload_rest()
        again = area.listing(repo)
        lost = [d for d in by_digest if again.get(d) != sizes[d]]
        if lost:
            _logger.warning(
                "%d shared file(s) left the area %s while this bundle was uploaded (a clean-up "
                "ran); uploading them again.",
                len(lost),
                area.describe(),
            )
            _upload_all(area, repo, [by_digest[d] for d in lost])
            report.uploaded.extend(d for d in lost if d not in report.uploaded)
    except BaseException:
        _withdraw(area, repo, marker)
        _discard(area, repo, report.uploaded)
        raise
    _withdraw(area, repo, marker)
    report.uploaded_files = len(report.uploaded)
    report.uploaded_bytes = sum(sizes[d] for d in report.uploaded)
    _logger.info(
        "Shared files: uploaded %d (%.1f MB), already on the server %d (%.1f MB)",
        report.uploaded_files,
        report.uploaded_bytes / 1e6,
        report.reused_files,
        report.reused_bytes / 1e6,
    )
    return report


def _damaged_copies(area: Area, repo: Any, digests: list[str], sizes: dict[str, int]) -> list[str]:
    """Those of ``digests`` whose copy in the area is not that content (read back, in parallel)."""
    if not digests:
        return []
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(WORKERS, len(digests))) as pool:
        sound = list(pool.map(lambda d: area.holds(repo, d, sizes[d]), digests))
    return [d for d, ok in zip(digests, sound, strict=True) if not ok]


def _upload_all(area: Area, repo: Any, paths: list[Path]) -> None:
    if len(paths) <= 1:
        for path in paths:
            area.upload(repo, path)
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(WORKERS, len(paths))) as pool:
        for future in [pool.submit(area.upload, repo, p) for p in paths]:
            future.result()


def _announce(area: Area, repo: Any, digests: list[str], scratch: Path) -> str:
    """Upload this save's announcement of the digests it will reference; returns its name."""
    name = f"{int(time.time() * 1000):013d}-{uuid.uuid4().hex[:12]}.json"
    path = scratch / name
    path.write_text(json.dumps({"digests": digests}), encoding="utf-8")
    try:
        area.upload(repo, path, PENDING_DIR)
    finally:
        path.unlink()
    return name


def _withdraw(area: Area, repo: Any, marker: str) -> None:
    try:
        repo.delete_artifacts(f"{PENDING_DIR}/{marker}")
    except Exception:  # the clean-up removes stale ones
        _logger.debug("Could not remove the announcement %s of %s", marker, area.uri, exc_info=True)


def _pending(area: Area, repo: Any, now: float) -> tuple[set[str], list[str]]:
    """Digests that saves in progress announced, and announcements too old to matter."""
    protected: set[str] = set()
    stale: list[str] = []
    with _server_errors(area, "list the announcements of saves in progress"):
        found = [f for f in repo.list_artifacts(PENDING_DIR) if not f.is_dir]
    with tempfile.TemporaryDirectory(prefix="cloudflow-gc-") as tmp:
        for info in found:
            name = posixpath.basename(info.path)
            stamp = name.partition("-")[0]
            if stamp.isdigit() and now - int(stamp) / 1000 > PENDING_MAX_AGE_S:
                stale.append(name)
                continue
            with _server_errors(area, f"read the announcement {name}"):
                local = repo.download_artifacts(f"{PENDING_DIR}/{name}", tmp)
            try:
                protected.update(json.loads(Path(local).read_text(encoding="utf-8"))["digests"])
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise StoreError(
                    f"The announcement {PENDING_DIR}/{name} in {area.describe()} cannot be read "
                    f"({e}); not cleaning up this area. Remove the file if no save is running."
                ) from e
    return protected, stale


def _discard(area: Area, repo: Any, digests: Iterable[str]) -> None:
    """After a failed save: remove the files it uploaded that no other save announced."""
    digests = list(digests)
    if not digests:
        return
    try:
        protected, _ = _pending(area, repo, time.time())
    except CloudflowError:
        return
    for digest in digests:
        if digest not in protected:
            with contextlib.suppress(Exception):
                repo.delete_artifacts(digest)


# --- loading ---------------------------------------------------------------------------------


@dataclass
class DownloadReport:
    downloaded_bytes: int = 0
    downloaded_files: int = 0
    cached_files: int = 0


def bundle_key(data: Path) -> str:
    """The name of a bundle's put-together folder in the cache: the digest of its manifest (and
    signature), which names every file's content."""
    h = hashlib.sha256()
    for name in (MANIFEST_FILE, SIGNATURE_FILE):
        with contextlib.suppress(FileNotFoundError):
            h.update(name.encode() + b"\0" + (data / name).read_bytes() + b"\0")
    return h.hexdigest()[:40]


def complete(
    data: Path, manifest: Manifest, *, rebuild: bool = False
) -> tuple[Path, _cache.BundleFolder | None]:
    """The data folder to read: ``data`` itself, or a folder of the cache with the shared files.

    A bundle whose shared files are all in its folder (an exported copy, a local store) is read
    where it is. Otherwise it is read from its put-together folder in the cache (its small files
    copied from ``data``, the large ones linked from the cache's files, downloaded first where
    needed), built on its first load on this machine and kept for the next ones. The caller
    holds the returned folder while the bundle lives; ``rebuild`` makes it anew (it was found
    damaged).
    """
    shared = manifest.shared
    if not shared:
        return data, None
    missing = [rel for rel in shared["files"] if not (data / rel).is_file()]
    if not missing:
        return data, None
    folder = _cache.BundleFolder(bundle_key(data))
    try:
        if rebuild:
            folder.discard()
        if not folder.ready:
            folder.build(lambda target: _put_together(data, manifest, missing, target, rebuild))
    except BaseException:
        folder.close()
        raise
    return folder.path / DATA_DIR, folder


def _put_together(
    data: Path, manifest: Manifest, missing: list[str], target: Path, check: bool
) -> None:
    """Fill ``target`` with the bundle: ``data``'s folder copied, the missing files linked
    (with ``check``, the cached ones hashed first)."""
    area = Area(manifest.shared["area"], manifest.shared.get("server"))
    targets: dict[str, list[str]] = {}
    sizes: dict[str, int] = {}
    for rel in missing:
        digest = manifest.files[rel][_digests.ALGORITHM]
        targets.setdefault(digest, []).append(rel)
        sizes[digest] = int(manifest.files[rel]["size"])
    shutil.copytree(data.parent, target, dirs_exist_ok=True)
    # The folder is named by the manifest and read by later loads, unverified ones too: what
    # was copied must be the manifest's files before anything is fetched or the folder named
    # (a copy with a genuine manifest and another code.pkl would otherwise stay here).
    _manifest.check_copy(target, manifest, missing, str(data.parent))
    for rel in missing:
        (target / DATA_DIR / rel).parent.mkdir(parents=True, exist_ok=True)

    proven: dict[Path, str] = {}

    def place(digest: str, path: Path, downloaded: bool) -> None:
        # A file downloaded now was hashed as it streamed; a cached one is known if the digest
        # cache holds it as it is. The link changes its ctime (part of its digest-cache key), so
        # it is entered again, and the load's own check of every file needs no second hash.
        known = downloaded or _digests.known_digest(path) == digest
        for rel in targets[digest]:
            into = target / DATA_DIR / rel
            try:
                os.link(path, into)
            except FileNotFoundError:
                raise
            except OSError:  # no hard links between these folders: a copy of the file
                shutil.copyfile(path, into)
            if known:
                with lock:
                    proven[into] = digest

    lock = threading.Lock()
    report = fetch(area, sizes, place, check=check)
    _digests.remember_proven(proven)
    _logger.info(
        "Shared files: downloaded %d (%.1f MB), from the cache %d",
        report.downloaded_files,
        report.downloaded_bytes / 1e6,
        report.cached_files,
    )


def fetch(
    area: Area,
    wanted: Mapping[str, int],
    place: Callable[[str, Path, bool], None],
    *,
    check: bool = False,
) -> DownloadReport:
    """Give ``place(digest, path, downloaded)`` the cache's file of each digest -> size in
    ``wanted`` (``downloaded``: it was downloaded, and hashed, by this call).

    Files the cache lacks are downloaded, several at once. ``place`` runs as soon as a file is
    there, and the files of this call are never pruned by it; a file another process prunes
    between its download and ``place`` is fetched again.
    """
    report = DownloadReport()
    repo: list[Any] = []  # made on the first download: a load from the cache needs no server
    lock = threading.Lock()
    keep = set(wanted)

    def download(digest: str, path: Path, size: int) -> str:
        with lock:
            if not repo:
                repo.append(area.repository())
        return area.download(repo[0], digest, path, size)

    def one(digest: str) -> None:
        for attempt in range(3):
            path, got = _cache.fetch(
                digest,
                wanted[digest],
                download,
                source=area.describe(),
                keep=keep,
                check=check and attempt == 0,
            )
            try:
                place(digest, path, got > 0)
            except FileNotFoundError:
                if attempt == 2:
                    raise
                continue
            with lock:
                if got:
                    report.downloaded_files += 1
                    report.downloaded_bytes += got
                else:
                    report.cached_files += 1
            return

    workers = min(WORKERS, len(wanted)) or 1
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(one, digest) for digest in wanted]:
            future.result()
    return report


def export(data: Path, manifest: Manifest, destination: Path) -> int:
    """Write a self-contained copy of a bundle (every file in it) into ``destination``.

    Returns the bytes written. The copy loads with no server: nothing of it is fetched.
    """
    source, folder = complete(data, manifest)
    try:
        shutil.copytree(source.parent, destination, copy_function=shutil.copyfile)
    finally:
        if folder is not None:
            folder.close()
    return sum(p.stat().st_size for p in destination.rglob("*") if p.is_file())


# --- clean-up --------------------------------------------------------------------------------


@dataclass
class Collected:
    removed_files: int = 0
    removed_bytes: int = 0
    kept_files: int = 0


def collect_garbage(area: Area, manifests: Callable[[], Iterable[Mapping[str, Any]]]) -> Collected:
    """Remove the files of ``area`` that no manifest and no save in progress names.

    ``manifests()`` yields the manifests (as parsed JSON) of every bundle of the experiment; it
    is read after the area is listed, so a file a save uploads meanwhile is either not listed or
    announced. Announcements are read again just before removing.
    """
    repo = area.repository()
    listed = area.listing(repo)
    if not listed:
        return Collected()
    now = time.time()
    protected, stale = _pending(area, repo, now)
    referenced: set[str] = set()
    for data in manifests():
        shared = data.get("shared") or {}
        files = data.get("files") or {}
        for rel in shared.get("files") or []:
            entry = files.get(rel) or {}
            if isinstance(entry.get(_digests.ALGORITHM), str):
                referenced.add(entry[_digests.ALGORITHM])
    again, _ = _pending(area, repo, time.time())
    keep = referenced | protected | again
    out = Collected()
    for digest, size in sorted(listed.items()):
        if digest in keep:
            out.kept_files += 1
            continue
        with _server_errors(area, f"remove {digest[:16]}..."):
            repo.delete_artifacts(digest)
        out.removed_files += 1
        out.removed_bytes += size
    for name in stale:
        _withdraw(area, repo, name)
    return out
