"""Writing a bundle folder, as named steps: staged privately, published only when complete.

:func:`write_bundle` takes what the save was given as :mod:`cloudflow._checks` checked and
resolved it, and writes into a private staging folder beside the target: the data files, each
model in its flavor's format, the code, the manifest, MLflow's files (MLmodel and the
environment files), the seal (digests, a signature under a key), the clean-process check if
asked, and publishes the folder with one rename.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import platform
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudflow import _progress
from cloudflow._version import __version__
from cloudflow.capture import files as _files
from cloudflow.capture import portable as _portable
from cloudflow.capture import scan as _scan
from cloudflow.capture.codewriter import CodeWriter
from cloudflow.capture.pickler import SaveContext
from cloudflow.capture.policy import CapturePolicy
from cloudflow.capture.requirements import pinned_requirements, write_mlmodel, write_runtime
from cloudflow.exceptions import BundleArgumentError, CaptureError, StoreError
from cloudflow.integrity import digests as _digests
from cloudflow.integrity import manifest as _manifest
from cloudflow.integrity import staging as _staging
from cloudflow.integrity.manifest import CODE_FILE, DATA_DIR, MODELS_DIR, Manifest, ModelEntry
from cloudflow.runtime.bundle import parameters_of
from cloudflow.runtime.codetables import table_name
from cloudflow.store import blobs as _blobs

_logger = logging.getLogger("cloudflow")


def write_bundle(
    path: Path,
    predict_fn: Callable[..., Any],
    models: Mapping[str, object],
    *,
    pip_requirements: Iterable[str] | None = None,
    extra_pip_requirements: Iterable[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    include_modules: Iterable[str] = (),
    exclude_modules: Iterable[str] = (),
    strip_docstrings: bool = False,
    signature: Any = None,
    input_example: Any = None,
    mlflow_model: Any = None,
    signing_key: Any = None,
    verify: bool = False,
    interpreters: Mapping[str, str] | None = None,
    data_files: Mapping[str, Path] | None = None,
    model_metadata: Mapping[str, dict[str, Any]] | None = None,
    runtime_package: str | None = None,
    staged: bool = False,
) -> Manifest:
    """Write a bundle into ``path``, which must not exist; publish it only when complete.

    The arguments are checked already (:mod:`cloudflow._checks`): ``signature`` is the one to
    write (None: none) and ``interpreters`` the Python versions the bundle loads on -> their
    interpreters (None: this one only).
    With ``signing_key`` the manifest is signed; with ``verify`` the bundle is first loaded (and
    ``input_example`` run) in a clean process, and a failure leaves nothing behind, not even
    the parent folders it created. ``staged``: ``path`` is a staging folder the caller moves
    into place, so the log line naming where the bundle is is the caller's.
    """
    save = _Save(
        predict_fn=predict_fn,
        models=models,
        pip_requirements=pip_requirements,
        extra_pip_requirements=extra_pip_requirements,
        metadata=dict(metadata or {}),
        include_modules=include_modules,
        exclude_modules=exclude_modules,
        strip_docstrings=strip_docstrings,
        signature=signature,
        input_example=input_example,
        mlflow_model=mlflow_model,
        signing_key=signing_key,
        verify=verify,
        interpreters=interpreters or _portable.resolve_versions(None),
        data_files=data_files or {},
        model_metadata=dict(model_metadata or {}),
        runtime_package=runtime_package,
    )
    started = time.perf_counter()
    created = [p for p in path.parents if not p.exists()]  # innermost first
    path.parent.mkdir(parents=True, exist_ok=True)
    with _removed_on_failure(created), contextlib.ExitStack() as stack:
        files = _blobs.current() or stack.enter_context(_blobs.saving(None))
        stack.enter_context(_digests.recording())  # what it writes, digested as written
        manifest = _write_and_publish(path, save, files)
    total = sum(entry["size"] for entry in manifest.files.values())
    _logger.log(
        logging.DEBUG if staged else logging.INFO,
        "Saved bundle %s in %.2f s (%.1f MB written, %.1f MB shared with the store's bundles)",
        path,
        time.perf_counter() - started,
        (total - files.linked_bytes) / 1e6,
        files.linked_bytes / 1e6,
    )
    return manifest


@dataclass(frozen=True)
class _Save:
    """What one save writes, its arguments resolved (see :func:`write_bundle`)."""

    predict_fn: Callable[..., Any]
    models: Mapping[str, object]
    pip_requirements: Iterable[str] | None
    extra_pip_requirements: Iterable[str] | None
    metadata: dict[str, Any]
    include_modules: Iterable[str]
    exclude_modules: Iterable[str]
    strip_docstrings: bool
    signature: Any
    input_example: Any
    mlflow_model: Any
    signing_key: Any
    verify: bool
    interpreters: Mapping[str, str]
    data_files: Mapping[str, Path]
    model_metadata: dict[str, dict[str, Any]]
    runtime_package: str | None


@contextlib.contextmanager
def _removed_on_failure(folders: list[Path]) -> Iterator[None]:
    """Remove the folders a failed save created, innermost first, if nothing else is in them."""
    try:
        yield
    except BaseException:
        for folder in folders:
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def _write_and_publish(path: Path, save: _Save, files: _blobs.SharedFileLinks) -> Manifest:
    """Write the bundle into a private staging folder beside ``path``, then publish it there."""
    private = _staging.beside(path)
    staging = private.path / _staging.BUNDLE
    try:
        staging.mkdir()
        with _progress.Steps("Saving bundle", total=len(save.models) + 1):
            manifest = _write_into(staging, save, files)
        write_mlmodel(
            staging,
            manifest,
            save.mlflow_model,
            save.pip_requirements,
            save.extra_pip_requirements,
            save.signature,
            save.input_example,
            save.runtime_package,
        )
        manifest = _manifest.seal(staging, manifest, save.signing_key)
        if save.verify:
            _check_in_clean_process(staging, manifest, save.input_example)
        try:
            private.publish(staging, path)  # durable first: no bundle with unwritten files
        except OSError as e:
            if path.exists():  # another save published the same path since the check
                raise BundleArgumentError(
                    f"Path {str(path)!r} was created by another save while this one ran. Give "
                    "each save its own folder; nothing of this one was kept."
                ) from e
            raise
    except BaseException as e:
        private.close()
        full = out_of_space(e)
        if full is not None:
            raise StoreError(
                f"The disk is full (or a quota or size limit was reached) while saving the "
                f"bundle to {str(path.parent)!r}: {full.strerror}. Free space there, or save "
                "elsewhere; nothing was kept."
            ) from e
        raise
    private.close()
    return manifest


def _check_in_clean_process(staging: Path, manifest: Manifest, input_example: Any) -> None:
    """Load the staged bundle (and run the input example) where the user's source is hidden."""
    from cloudflow.capture.clean_process import check_in_clean_process

    hidden = _scan.user_roots(manifest.captured_modules)
    check_in_clean_process(staging, input_example, hidden)


_FULL = frozenset(getattr(errno, n) for n in ("ENOSPC", "EDQUOT", "EFBIG") if hasattr(errno, n))


def out_of_space(error: BaseException) -> OSError | None:
    """The OSError of a full disk, a quota or a file size limit behind ``error``, if any."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _FULL:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _write_into(root: Path, save: _Save, files: _blobs.SharedFileLinks) -> Manifest:
    """Write the bundle's ``cloudflow`` data folder into ``root``: data files, models, code,
    the cloudflow wheel, and the manifest that lists them."""
    data = root / DATA_DIR
    (data / MODELS_DIR).mkdir(parents=True)
    # What travels by value (the policy), the flavors' pickles (their context) and code.pkl (the
    # writer): three objects over one policy.
    policy = CapturePolicy(
        include=save.include_modules,
        exclude=save.exclude_modules,
        models=save.models,
        strip_docstrings=save.strip_docstrings,
        python_versions=save.interpreters,
    )
    writer = CodeWriter(policy)
    if save.data_files:
        _copy_data_files(policy, data, save.data_files)
    entries, packages = _save_models(SaveContext(policy, files), data, save.models)
    python_versions = _write_code(writer, save.predict_fn, root)
    requirements, libraries = pinned_requirements(
        policy, packages, python_versions, save.runtime_package
    )
    if save.runtime_package is None:
        write_runtime(data, files)
    manifest = _manifest_of(
        writer,
        save,
        entries,
        libraries=libraries,
        python_versions=python_versions,
        requirements=requirements,
        files=_share_large_files(data, files),
    )
    (data / _manifest.MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")
    return manifest


def _copy_data_files(policy: CapturePolicy, data: Path, data_files: Mapping[str, Path]) -> None:
    """Copy ``files=`` into the bundle; the pickler then points the code's paths at the copies."""
    t0 = time.perf_counter()
    policy.files = _files.copy_files(data, data_files)
    _logger.info("Copied %d data file entries in %.2f s", len(data_files), time.perf_counter() - t0)


def _save_models(
    context: SaveContext, data: Path, models: Mapping[str, object]
) -> tuple[dict[str, ModelEntry], list[str]]:
    """Save each model with its flavor into its folder; their entries and their libraries."""
    from cloudflow.flavors import flavor_for, requirements_for

    entries: dict[str, ModelEntry] = {}
    packages: list[str] = []
    for name, obj in models.items():
        flavor = flavor_for(obj)
        folder = data / MODELS_DIR / name
        folder.mkdir()
        t0 = time.perf_counter()
        try:
            info = flavor.save(obj, folder, context)
        except CaptureError as e:
            raise CaptureError(f"Cannot save model {name!r} ({flavor.name} flavor): {e}") from e
        except Exception as e:
            raise CaptureError(
                f"Cannot save model {name!r} of type {type(obj).__module__}."
                f"{type(obj).__qualname__} with the {flavor.name} flavor: {type(e).__name__}: {e}"
            ) from e
        described: dict[str, Any] = {}
        if flavor.describe is not None:
            try:
                described = flavor.describe(obj)
            except Exception as e:  # metadata is informative: never fail a save for it
                _logger.debug("Could not describe model %r: %s", name, e)
        entries[name] = ModelEntry(
            flavor=flavor.name, path=f"{MODELS_DIR}/{name}", info=info, metadata=described
        )
        packages.extend(requirements_for(flavor.name, info))
        _logger.info("Saved model %r (%s) in %.2f s", name, flavor.name, time.perf_counter() - t0)
        _progress.advance(f"model {name}")
    return entries, packages


def _write_code(writer: CodeWriter, predict_fn: Callable[..., Any], root: Path) -> list[str]:
    """Pickle the function and the modules it reaches, and the code tables of other Pythons.

    Returns the Python versions the bundle loads on.
    """
    data = root / DATA_DIR
    writer.dump_code(predict_fn, data / CODE_FILE)
    _warn_unbundled(writer.policy, root)
    python_versions = [".".join(platform.python_version().split(".")[:2])]
    if writer.policy.code_tables is not None:
        tables, python_versions = writer.policy.code_tables.build()
        for version, table in tables.items():
            _digests.write_hashed(data / table_name(version), table)
    _progress.advance("code")
    return python_versions


def _manifest_of(
    writer: CodeWriter,
    save: _Save,
    entries: dict[str, ModelEntry],
    *,
    libraries: dict[str, str],
    python_versions: list[str],
    requirements: list[str],
    files: dict[str, dict[str, Any]],
) -> Manifest:
    """The manifest of what was written (``files``: the entries of every file, with digests)."""
    from cloudflow.flavors import flavor_sources, walk

    predict_fn = save.predict_fn
    policy = writer.policy
    signature, names, _ = parameters_of(predict_fn)
    return Manifest(
        format_version=_manifest.FORMAT_VERSION,
        cloudflow_version=__version__,
        python_version=platform.python_version(),
        libraries=libraries,
        predict_fn={
            "name": getattr(predict_fn, "__qualname__", type(predict_fn).__name__),
            "module": getattr(predict_fn, "__module__", None),
            "signature": str(signature),
            "parameters": names,
            "inputs": [n for n in names if n not in save.models],
        },
        models=entries,
        captured_modules=sorted(policy.captured),
        captured_globals=writer.capture_report(),
        python_versions=python_versions,
        requirements=requirements,
        files=files,
        metadata=save.metadata,
        data_files=policy.files.manifest_entry(policy.captured) if policy.files else {},
        flavors=flavor_sources(
            name for entry in entries.values() for name, _ in walk(entry.flavor, entry.info)
        ),
        provenance=_provenance_of(policy.captured),
        model_metadata=save.model_metadata,
    )


def _warn_unbundled(policy: CapturePolicy, root: Path) -> None:
    """One warning per file or folder of this machine the saved code names but ``files=`` lacks.

    Without an input example the clean-process check has nothing to call, so a data file the
    function reads when it runs would otherwise only be missed where the bundle loads.
    """
    from cloudflow.capture.clean_process import suggest_files

    found = _files.unbundled_paths(
        policy.path_values, cwd=os.getcwd(), bundle=root, modules=policy.captured
    )
    for text, is_folder in found:
        where = "" if os.path.isabs(text) else ", relative to the working directory"
        _logger.warning(
            "The saved code names %r (a %s of this machine%s), which the bundle does not "
            "carry: where it loads, that path leads nowhere. If the function reads it when it "
            "runs, save with %s.",
            text,
            "folder" if is_folder else "file",
            where,
            suggest_files([text]),
        )


def _provenance_of(captured: Iterable[str]) -> dict[str, Any]:
    from cloudflow.capture.provenance import git_provenance

    checkouts = git_provenance(captured)
    return {"git": checkouts} if checkouts else {}


def _share_large_files(data: Path, files: _blobs.SharedFileLinks) -> dict[str, dict[str, Any]]:
    """The manifest's file entries; large files not shared yet are shared now (see _blobs)."""
    entries = _manifest.digest_files(data, files.known)
    if files.blobs is not None:
        for rel, entry in entries.items():
            path = Path(os.path.abspath(data / rel))
            if path not in files.known and entry["size"] >= _blobs.LINK_MIN_SIZE:
                files.adopt(path, entry[_digests.ALGORITHM], entry["size"])
    return entries
