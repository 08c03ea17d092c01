"""Reading a bundle folder into a :class:`~cloudflow.runtime.bundle.Bundle`, as named steps.

:func:`read_bundle` opens the bundle (manifest, signature, flavors, MLflow's files, identity),
completes it from the machine's cache if its large files live on a tracking server, then loads
it: files checked (:class:`~cloudflow.runtime.verifying.DigestPlan` says when), code unpickled
into its own module table, models loaded by their flavors and bound into the code.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import platform
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudflow import _progress
from cloudflow._packages import distribution_version, relative_filename
from cloudflow.exceptions import (
    EnvironmentMismatchError,
    IntegrityError,
    NotFoundError,
)
from cloudflow.integrity import environment as _environment
from cloudflow.integrity import manifest as _manifest
from cloudflow.integrity import sealed as _sealed
from cloudflow.integrity.manifest import CODE_FILE, DATA_DIR, Manifest
from cloudflow.runtime import files as _files
from cloudflow.runtime.bundle import Bundle
from cloudflow.runtime.codetables import read_table
from cloudflow.runtime.missing import missing_library_error
from cloudflow.runtime.models import load_models, load_options
from cloudflow.runtime.unpickler import LoadContext, ModuleTable, load_code
from cloudflow.runtime.verifying import VERIFIER, DigestPlan, prefetch, report_damage

_logger = logging.getLogger("cloudflow")


def read_bundle(path: Path, **options: Any) -> Bundle:
    """Load a bundle from a local folder (its root, or its ``cloudflow`` data folder).

    See :func:`_read`; a library the bundle needs that is not installed raises
    :class:`MissingDependencyError` naming it and the version the bundle pins.
    """
    try:
        return _read(path, **options)
    except Exception as e:
        translated = _translate_missing(e, path)
        if translated is e:
            raise
        raise translated from e


def _translate_missing(error: Exception, path: Path) -> BaseException:
    try:
        manifest = _manifest.read_manifest(data_dir_of(path))
    except Exception:  # the manifest's own error was raised already
        return error
    return missing_library_error(error, manifest)


@dataclass(frozen=True)
class _Request:
    """What the caller of a load asked for, the trust resolved."""

    verify: bool
    allow_python_mismatch: bool
    trust: Any
    expected_identity: Mapping[str, str] | None
    device: Any
    dtype: Any
    lazy: bool | str
    started: float

    @property
    def checked(self) -> bool:
        """Whether files are hashed: ``verify``, or a key (then whatever ``verify`` says)."""
        return self.verify or self.trust is not None


@dataclass(frozen=True)
class _Opened:
    """A bundle folder whose manifest (and, when checked, MLflow's files) passed the checks."""

    data: Path
    manifest: Manifest
    options: dict[str, dict[str, str]]
    environment: _environment.EnvironmentChange


def _read(
    path: Path,
    *,
    verify: bool = True,
    allow_python_mismatch: bool = False,
    signing_key: Any = None,
    trusted_keys: Any = None,
    expected_identity: Mapping[str, str] | None = None,
    device: Any = None,
    dtype: Any = None,
    lazy: bool | str = False,
) -> Bundle:
    """Load a bundle from a local folder (its root, or its ``cloudflow`` data folder).

    The manifest, its signature (when a key is given or configured by the environment: then
    every file is checked whatever ``verify`` says, none from the digest cache) and the files
    are checked before anything is unpickled. Files whose loading runs code are read once,
    checked in memory and loaded from those bytes.
    """
    from cloudflow.integrity.signing import resolve_trust

    request = _Request(
        verify=verify,
        allow_python_mismatch=allow_python_mismatch,
        trust=resolve_trust(signing_key, trusted_keys),
        expected_identity=expected_identity,
        device=device,
        dtype=dtype,
        lazy=lazy,
        started=time.perf_counter(),
    )
    opened = _open(data_dir_of(path), request)
    bundle = _read_completed_from_cache(opened, request)
    if bundle is not None:
        return bundle
    return _load(opened, request, defer=True)


def data_dir_of(path: Path) -> Path:
    """The ``cloudflow`` data folder of a bundle given by its root or by the data folder itself."""
    if (path / _manifest.MANIFEST_FILE).is_file() and path.name == DATA_DIR:
        return path
    if not path.exists():
        raise NotFoundError(
            f"No bundle at {str(path)!r}: the folder does not exist. Check the path or model URI."
        )
    return path / DATA_DIR


def _open(data: Path, request: _Request) -> _Opened:
    """Read the manifest (its signature checked under a key), and check what precedes any read.

    A flavor missing here fails at once, naming what to install; MLflow's files are checked
    first (small; the wheels ``add_libraries_to_model`` adds are hashed in 0.1 s): a change
    MLflow's tools make to the environment files is refused here if signed, and a model they
    logged again is found where MLmodel now says it is.
    """
    from cloudflow.flavors import check_installed, prepare_load

    manifest = _manifest.read_manifest(data, signing_key=request.trust)
    saved = {name: (entry.flavor, entry.info) for name, entry in manifest.models.items()}
    check_installed(saved, manifest.flavors)
    # Before the code too, which may import a library as it is unpickled (Keras's backend).
    prepare_load(saved)
    options = load_options(request.device, request.dtype, manifest)
    environment = _environment.EnvironmentChange()
    if request.checked:
        environment = _manifest.check_outer(
            data.parent, manifest, required=request.trust is not None
        )
    if request.expected_identity:
        from cloudflow.store.tracking import check_identity

        published = environment.republished(manifest.published)
        check_identity(
            published, request.expected_identity, str(data.parent), request.trust is not None
        )
    return _Opened(data, manifest, options, environment)


def _read_completed_from_cache(opened: _Opened, request: _Request) -> Bundle | None:
    """A bundle from a tracking server lacks its large files: read it from the machine's cache.

    They come from the cache (downloaded once), and the bundle is read from a folder of the
    cache that holds them all, checked whole before the load returns. A folder of the cache
    found changed since an earlier load put it together is put together again at once, from
    the download and the (verified) cached files. None for a bundle that holds all its files.
    """
    from cloudflow.store import remote as _remote

    complete, folder = _remote.complete(opened.data, opened.manifest)
    if folder is None:
        return None
    try:
        try:
            bundle = _load(_open(complete, request), request, defer=False)
        except IntegrityError as e:
            _logger.warning("Putting %s together again: %s", complete.parent, e)
            folder.close()
            complete, rebuilt = _remote.complete(opened.data, opened.manifest, rebuild=True)
            assert rebuilt is not None
            folder = rebuilt
            bundle = _load(_open(complete, request), request, defer=False)
    except BaseException:
        folder.close()
        raise
    weakref.finalize(bundle, folder.close)
    return bundle


def _load(opened: _Opened, request: _Request, *, defer: bool) -> Bundle:
    """Check the files, unpickle the code, load the models and bind them (see the module doc).

    ``defer`` lets data-only weights be hashed beside the load (see :class:`DigestPlan`).
    """
    data, manifest = opened.data, opened.manifest
    signed = request.trust is not None
    plan = DigestPlan.for_load(
        manifest, checked=request.checked, signed=signed, lazy=bool(request.lazy), defer=defer
    )
    late: list[concurrent.futures.Future[None]] = []  # lazy models' weights, being hashed
    prefetch(data, plan.read_ahead(manifest))
    with _progress.Steps("Loading bundle", total=len(manifest.models) + 2) as steps:
        verified, pending = _check_files(data, manifest, plan)
        steps.advance("files verified")
        try:
            _check_python(manifest, request.allow_python_mismatch)
            table, predict_fn, models = _load_code_and_models(
                opened, request, verified, plan.model_check(data, manifest, late), steps
            )
        except BaseException:
            # A damaged weights file may be why a model failed to load: say that first.
            if pending is not None:
                pending.result()
            raise
        if pending is not None and signed:
            pending.result()  # a signed bundle is proven whole before anything of it is used
            pending = None
    return _bound(opened, request, table, predict_fn, models, pending, late)


def _check_files(
    data: Path, manifest: Manifest, plan: DigestPlan
) -> tuple[_manifest.VerifiedBytes, concurrent.futures.Future[None] | None]:
    """Hash what must be checked before anything is unpickled; start hashing the deferred.

    Returns the checked bytes of the files read once (pickles) and the deferred hashing.
    """
    use_cache = not plan.signed
    if not plan.checked:
        return _manifest.VerifiedBytes(data, None), None
    verified = _manifest.verify_files(
        data, manifest, skip_digests=plan.not_now(), use_cache=use_cache, outer=False
    )
    pending = None
    if plan.deferred:
        pending = VERIFIER.submit(
            _manifest.verify_digests, data, manifest, list(plan.deferred), use_cache=use_cache
        )
    return verified, pending


def _load_code_and_models(
    opened: _Opened,
    request: _Request,
    verified: _manifest.VerifiedBytes,
    check_model: Callable[[str], None],
    steps: _progress.Steps,
) -> tuple[ModuleTable, Any, dict[str, object]]:
    """Unpickle the code into a module table of its own; load the models, before the code
    when they load lazily (their stand-ins are put in place as it is unpickled), else after.
    """
    data, manifest = opened.data, opened.manifest
    table = ModuleTable()
    resolver = _files.Resolver(data, manifest.data_files)
    if resolver:
        _files.install(table, resolver)
    table.code_table = read_table(data, manifest.python_versions, read=verified.read)
    if resolver and table.code_table is not None:
        table.code_table = {k: resolver.rewrite_code(c) for k, c in table.code_table.items()}
    context = LoadContext(table, read=verified.read)
    seal = None
    if request.trust is not None:  # each model loads from a private folder of its checked files
        seal = functools.partial(_sealed.sealed_folder, data, manifest, verified=verified)
    models: dict[str, object] = {}
    if request.lazy:
        models = load_models(
            data, manifest, context, steps, opened.options, lazy=check_model, seal=seal
        )
        table.known_models = models
    predict_fn = load_code(data / CODE_FILE, table, read=verified.read)
    table.mark_left_out(manifest.captured_globals)
    if resolver:
        _files.place_modules(table, resolver, relative_filename)
    steps.advance("code")
    if not request.lazy:
        models = load_models(data, manifest, context, steps, opened.options, seal=seal)
    return table, predict_fn, models


def _bound(
    opened: _Opened,
    request: _Request,
    table: ModuleTable,
    predict_fn: Any,
    models: dict[str, object],
    pending: concurrent.futures.Future[None] | None,
    late: list[concurrent.futures.Future[None]],
) -> Bundle:
    """The models bound into the code, the :class:`Bundle` made, lazy models warmed if asked."""
    data = opened.data
    predict_fn = table.bind_models(models, [predict_fn])
    _logger.info("Loaded bundle %s in %.2f s", data.parent, time.perf_counter() - request.started)
    if opened.environment:
        _logger.warning(_environment.warning_message(str(data.parent), opened.environment))
    if pending is not None:
        pending.add_done_callback(functools.partial(report_damage, data.parent))
    bundle = Bundle(predict_fn, models, opened.manifest, data.parent, verifying=pending, late=late)
    if request.lazy == "background":
        threading.Thread(target=bundle.warm, name="cloudflow-warm", daemon=True).start()
    return bundle


def _check_python(manifest: Manifest, allow_python_mismatch: bool) -> None:
    """Refuse a Python the bundle's code does not run on; warn of other library versions."""
    here = ".".join(platform.python_version().split(".")[:2])
    saved = ".".join(manifest.python_version.split(".")[:2])
    # Bundles of format 2 and older list no versions: they load on the saving one.
    versions = manifest.python_versions or [saved]
    portable = len(versions) > 1
    if not portable:
        versions = [saved]
    if here not in versions and not allow_python_mismatch:
        raise EnvironmentMismatchError(
            f"This bundle loads on Python {', '.join(versions)} (saved under Python "
            f"{manifest.python_version}); this is Python {platform.python_version()}. "
            + (
                ""
                if portable
                else "Pickled bytecode only runs on the minor version that wrote it. "
            )
            + f"Load it under Python {' or '.join(versions)}, or save it again with "
            f"python_versions=[..., {here!r}] (or pass allow_python_mismatch=True to try "
            "anyway)."
        )
    mismatched = []
    for dist, version in sorted(manifest.libraries.items()):
        current = distribution_version(dist)
        if current is not None and current != version:
            mismatched.append(f"{dist} {version} -> {current}")
    if mismatched:
        _logger.warning(
            "This bundle was saved with other library versions: %s. If it misbehaves, install "
            "the versions in its requirements.txt.",
            ", ".join(mismatched),
        )
