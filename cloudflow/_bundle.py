"""Writing and reading a bundle folder, and the loaded :class:`Bundle`."""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import errno
import functools
import inspect
import io
import logging
import os
import platform
import re
import stat
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from cloudflow import (
    _blobs,
    _capture,
    _digests,
    _environment,
    _files,
    _manifest,
    _portable,
    _progress,
    _runtime,
    _sealed,
    _signature,
    _staging,
)
from cloudflow._manifest import CODE_FILE, DATA_DIR, MODELS_DIR, Manifest, ModelEntry
from cloudflow._pickler import CaptureSession, LoadContext, ModuleTable, load_code
from cloudflow._version import __version__
from cloudflow.exceptions import (
    BundleArgumentError,
    CaptureError,
    EnvironmentMismatchError,
    IntegrityError,
    MissingDependencyError,
    ModelKeyError,
    NotFoundError,
    PredictArgumentError,
    StoreError,
)

_logger = logging.getLogger("cloudflow")
FLAVOR_NAME = "cloudflow"
LOADER_MODULE = "cloudflow._pyfunc"
PYFUNC_FLAVOR = "python_function"  # mlflow.pyfunc.FLAVOR_NAME
_BASE_PACKAGES = ("cloudpickle",)


# --- checking arguments (before anything is written) ------------------------------------------


def _parameters(predict_fn: Callable[..., Any]) -> tuple[inspect.Signature, list[str], bool]:
    try:
        signature = inspect.signature(predict_fn)
    except (TypeError, ValueError) as e:
        raise BundleArgumentError(
            f"predict_fn {predict_fn!r} has no inspectable signature ({e}). Pass a Python function "
            "(def or lambda), a functools.partial of one, or an object with a Python __call__."
        ) from e
    names = [
        p.name
        for p in signature.parameters.values()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    has_var_kw = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    return signature, names, has_var_kw


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


# --- writing ---------------------------------------------------------------------------------


def _requirements(
    session: CaptureSession,
    flavor_packages: Iterable[str],
    python_versions: list[str],
    runtime_package: str | None,
) -> tuple[list[str], dict[str, str]]:
    """Pinned requirements: cloudflow, its flavors' libraries, libraries the code imports.

    cloudflow is the wheel the bundle carries, or ``runtime_package`` pinned at this version
    (see :mod:`cloudflow._runtime`).

    For a bundle that loads on several Python versions, a pinned release that does not support
    one of them gets environment markers (see :func:`cloudflow._portable.requirement_lines`),
    and the save warns, naming it.
    """
    dists: dict[str, None] = dict.fromkeys(_BASE_PACKAGES)
    dists.update(dict.fromkeys(flavor_packages))
    tops = {t for t in session.third_party if t not in ("mlflow", "cloudflow")}
    dists.update(dict.fromkeys(_capture.top_level_names_to_distributions(tops).values()))
    versions: dict[str, str] = {}
    for dist in dists:
        version = _capture.distribution_version(dist)
        if version is not None:
            versions[dist] = version
    # A local version label (torch 2.13.0+cpu) names a build no index serves: pin the release.
    reqs = _runtime.requirement_lines(runtime_package)
    left_out = []
    for dist, version in sorted(versions.items()):
        lines, why = _portable.requirement_lines(dist, version.partition("+")[0], python_versions)
        reqs += lines
        if why:
            left_out.append(why)
    if left_out:
        _portable.warn(
            "Some pinned requirements do not install on every Python this bundle loads on ("
            + "; ".join(left_out)
            + "). requirements.txt pins them for the other versions and leaves them unpinned "
            "there, where pip picks a release that supports it, and a load warns that the "
            "library versions differ. To pin one there too, add a line such as "
            "'numpy==2.2.6; python_version == \"3.10\"' with extra_pip_requirements."
        )
    libraries = {"cloudflow": __version__, **versions}
    return reqs, libraries


def _write_mlmodel(
    root: Path,
    manifest: Manifest,
    mlflow_model: Any,
    pip_requirements: Iterable[str] | None,
    extra_pip_requirements: Iterable[str] | None,
    signature: Any,
    input_example: Any,
    runtime_package: str | None,
) -> None:
    import yaml
    from mlflow.models import Model
    from mlflow.utils.environment import (
        _CONDA_ENV_FILE_NAME,
        _CONSTRAINTS_FILE_NAME,
        _PYTHON_ENV_FILE_NAME,
        _REQUIREMENTS_FILE_NAME,
        _PythonEnv,
    )

    model = mlflow_model if mlflow_model is not None else Model()
    portable = len(manifest.python_versions) > 1
    if signature is not None:
        model.signature = signature
    if input_example is not None:
        from mlflow.models.utils import _save_example

        _save_example(model, input_example, str(root))
    # mlflow.pyfunc.add_to_model's entry, written without importing mlflow.pyfunc (0.7 s of a
    # process's first save: its agent loaders build pydantic models on import);
    # test_first_save holds the two equal. "config" lists what mlflow.pyfunc.load_model(uri,
    # model_config={...}) and serving's MLFLOW_PYFUNC_INFERENCE_CONFIG may set: MLflow passes
    # only keys listed there.
    model.add_flavor(
        PYFUNC_FLAVOR,
        loader_module=LOADER_MODULE,
        python_version="{}.{}.{}".format(*sys.version_info[:3]),
        data=DATA_DIR,
        env={"conda": _CONDA_ENV_FILE_NAME, "virtualenv": _PYTHON_ENV_FILE_NAME},
        config=dict(PYFUNC_CONFIG),
    )
    model.add_flavor(
        FLAVOR_NAME,
        format_version=manifest.format_version,
        cloudflow_version=__version__,
        predict_fn=manifest.predict_fn["name"],
        models={name: entry.flavor for name, entry in manifest.models.items()},
        **({"python_versions": manifest.python_versions} if portable else {}),
    )
    if manifest.metadata:
        model.metadata = {**(model.metadata or {}), **manifest.metadata}
    mlmodel = io.StringIO()
    model.to_yaml(mlmodel)  # what Model.save writes, digested as written
    _digests.write_hashed(root / "MLmodel", mlmodel.getvalue().encode("utf-8"))
    runtime = _runtime.requirement_lines(runtime_package)
    if pip_requirements is not None and not any(_names_cloudflow(r) for r in pip_requirements):
        # The user's list replaces the inferred one, but no bundle loads without cloudflow.
        pip_requirements = [*runtime, *pip_requirements]
    conda_env, pip_reqs, constraints = pip_environment(
        manifest.requirements,
        list(pip_requirements) if pip_requirements is not None else None,
        list(extra_pip_requirements) if extra_pip_requirements is not None else None,
    )
    if runtime_package is None:
        _runtime.add_docker_conda_location(conda_env)
    # Digested as written (cloudflow._digests.write_hashed): the seal reads none of them back.
    conda_text = yaml.safe_dump(conda_env, default_flow_style=False)
    _digests.write_hashed(root / _CONDA_ENV_FILE_NAME, conda_text.encode("utf-8"))
    if constraints:
        _digests.write_hashed(root / _CONSTRAINTS_FILE_NAME, _lines(constraints))
    _digests.write_hashed(root / _REQUIREMENTS_FILE_NAME, _lines(pip_reqs))
    python_env = root / _PYTHON_ENV_FILE_NAME
    _PythonEnv.current().to_yaml(str(python_env))
    if portable:
        note = _portable.python_env_note(manifest.python_versions)
        python_env.write_text(note + python_env.read_text(encoding="utf-8"), encoding="utf-8")


def _lines(lines: list[str]) -> bytes:
    return ("\n".join(lines) + "\n").encode("utf-8")


def _names_cloudflow(requirement: str) -> bool:
    name = re.split(r"[\s\[<>=!~;@]", requirement.strip(), maxsplit=1)[0]
    return name.lower() == "cloudflow"


def pip_environment(
    requirements: list[str],
    pip_requirements: list[str] | None,
    extra_pip_requirements: list[str] | None,
) -> tuple[dict[str, Any], list[str], list[str]]:
    """``(conda_env, pip requirements, constraints)`` for the bundle's environment files.

    With the user's own requirements this is MLflow's ``_process_pip_requirements``, which also
    warns where they disagree with the installed versions. Without them, the requirements are
    this environment's own pins (:func:`_requirements`), which cannot disagree with it, so the
    same steps run without that check: it maps every installed distribution's files to import
    names, about 1 s of a process's first save. ``test_first_save`` holds the two outputs equal.
    """
    from mlflow.utils import environment as env

    steps = (
        "_contains_mlflow_requirement",
        "_generate_mlflow_version_pinning",
        "_remove_incompatible_requirements",
        "_lock_requirements",
        "_mlflow_conda_env",
    )
    if (
        pip_requirements is not None
        or extra_pip_requirements is not None
        or not all(hasattr(env, step) for step in steps)
    ):
        return env._process_pip_requirements(
            list(requirements), pip_requirements, extra_pip_requirements
        )
    reqs = list(dict.fromkeys(requirements))
    if not env._contains_mlflow_requirement(reqs):
        reqs.insert(0, env._generate_mlflow_version_pinning())
    reqs = env._remove_incompatible_requirements(reqs)
    reqs = env._lock_requirements(reqs, []) or reqs
    conda_env = env._mlflow_conda_env(additional_pip_deps=reqs, install_mlflow=False)
    return conda_env, reqs, []


_FULL = frozenset(getattr(errno, n) for n in ("ENOSPC", "EDQUOT", "EFBIG") if hasattr(errno, n))


def out_of_space(error: BaseException) -> OSError | None:
    """The OSError of a full disk, a quota or a file size limit behind ``error``, if any."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _FULL:
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


#: A private staging folder beside a bundle's path (see :mod:`cloudflow._staging`).
staging_dir_for = _staging.beside  # transitional: cloudflow._staging.beside


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
    python_versions: str | Iterable[str] | None = None,
    data_files: Mapping[str, Path] | None = None,
    model_metadata: Mapping[str, dict[str, Any]] | None = None,
    runtime_package: str | None = None,
    staged: bool = False,
) -> Manifest:
    """Write a bundle into ``path``, which must not exist; publish it only when complete.

    With ``signing_key`` the manifest is signed; with ``verify`` the bundle is first loaded (and
    ``input_example`` run) in a clean process, and a failure leaves nothing behind, not even
    the parent folders it created. ``staged``: ``path`` is a staging folder the caller moves
    into place, so the log line naming where the bundle is is the caller's.
    """
    signature = _signature.resolve_signature(signature, predict_fn, models, input_example)
    interpreters = _portable.resolve_versions(python_versions)
    if path.exists():
        raise BundleArgumentError(
            f"Path {str(path)!r} already exists. Give a new folder, or delete the old bundle first."
        )
    started = time.perf_counter()
    created = [p for p in path.parents if not p.exists()]  # innermost first
    path.parent.mkdir(parents=True, exist_ok=True)
    with _removed_on_failure(created), contextlib.ExitStack() as stack:
        files = _blobs.current() or stack.enter_context(_blobs.saving(None))
        stack.enter_context(_digests.recording())  # what it writes, digested as written
        manifest = _write_and_publish(
            path,
            predict_fn,
            models,
            files,
            pip_requirements=pip_requirements,
            extra_pip_requirements=extra_pip_requirements,
            metadata=metadata,
            include_modules=include_modules,
            exclude_modules=exclude_modules,
            strip_docstrings=strip_docstrings,
            signature=signature,
            input_example=input_example,
            mlflow_model=mlflow_model,
            signing_key=signing_key,
            verify=verify,
            interpreters=interpreters,
            data_files=data_files or {},
            model_metadata=dict(model_metadata or {}),
            runtime_package=runtime_package,
        )
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


def _write_and_publish(
    path: Path,
    predict_fn: Callable[..., Any],
    models: Mapping[str, object],
    files: _blobs.SaveFiles,
    *,
    pip_requirements: Iterable[str] | None,
    extra_pip_requirements: Iterable[str] | None,
    metadata: Mapping[str, Any] | None,
    include_modules: Iterable[str],
    exclude_modules: Iterable[str],
    strip_docstrings: bool,
    signature: Any,
    input_example: Any,
    mlflow_model: Any,
    signing_key: Any,
    verify: bool,
    interpreters: Mapping[str, str],
    data_files: Mapping[str, Path],
    model_metadata: dict[str, dict[str, Any]],
    runtime_package: str | None,
) -> Manifest:
    private = staging_dir_for(path)
    staging = private.path / _staging.BUNDLE
    try:
        staging.mkdir()
        with _progress.Steps("Saving bundle", total=len(models) + 1):
            manifest = _write_into(
                staging,
                predict_fn,
                models,
                metadata=dict(metadata or {}),
                include_modules=include_modules,
                exclude_modules=exclude_modules,
                strip_docstrings=strip_docstrings,
                files=files,
                interpreters=interpreters,
                data_files=data_files,
                model_metadata=model_metadata,
                runtime_package=runtime_package,
            )
        _write_mlmodel(
            staging,
            manifest,
            mlflow_model,
            pip_requirements,
            extra_pip_requirements,
            signature,
            input_example,
            runtime_package,
        )
        manifest = _manifest.seal(staging, manifest, signing_key)
        if verify:
            from cloudflow._verify import check_in_clean_process

            hidden = _capture.user_roots(manifest.captured_modules)
            check_in_clean_process(staging, input_example, hidden)
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


def _write_into(
    root: Path,
    predict_fn: Callable[..., Any],
    models: Mapping[str, object],
    *,
    metadata: dict[str, Any],
    include_modules: Iterable[str],
    exclude_modules: Iterable[str],
    strip_docstrings: bool,
    files: _blobs.SaveFiles,
    interpreters: Mapping[str, str],
    data_files: Mapping[str, Path],
    model_metadata: dict[str, dict[str, Any]],
    runtime_package: str | None,
) -> Manifest:
    from cloudflow.flavors import flavor_for, flavor_sources, requirements_for, walk

    data = root / DATA_DIR
    (data / MODELS_DIR).mkdir(parents=True)
    session = CaptureSession(
        include=include_modules,
        exclude=exclude_modules,
        models=models,
        strip_docstrings=strip_docstrings,
        python_versions=interpreters,
    )
    if data_files:
        t0 = time.perf_counter()
        session.files = _files.copy_files(data, data_files)
        _logger.info(
            "Copied %d data file entries in %.2f s", len(data_files), time.perf_counter() - t0
        )
    entries: dict[str, ModelEntry] = {}
    packages: list[str] = []
    for name, obj in models.items():
        flavor = flavor_for(obj)
        folder = data / MODELS_DIR / name
        folder.mkdir()
        t0 = time.perf_counter()
        try:
            info = flavor.save(obj, folder, session)
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
    session.dump_code(predict_fn, data / CODE_FILE)
    _warn_unbundled(session, root)
    python_versions = [".".join(platform.python_version().split(".")[:2])]
    if session.code_tables is not None:
        tables, python_versions = session.code_tables.build()
        for version, table in tables.items():
            _digests.write_hashed(data / _portable.table_name(version), table)
    _progress.advance("code")
    signature, names, _ = _parameters(predict_fn)
    requirements, libraries = _requirements(session, packages, python_versions, runtime_package)
    if runtime_package is None:
        _write_runtime(data, files)
    manifest = Manifest(
        format_version=_manifest.FORMAT_VERSION,
        cloudflow_version=__version__,
        python_version=platform.python_version(),
        libraries=libraries,
        predict_fn={
            "name": getattr(predict_fn, "__qualname__", type(predict_fn).__name__),
            "module": getattr(predict_fn, "__module__", None),
            "signature": str(signature),
            "parameters": names,
            "inputs": [n for n in names if n not in models],
        },
        models=entries,
        captured_modules=sorted(session.captured),
        captured_globals=session.capture_report(),
        python_versions=python_versions,
        requirements=requirements,
        files=_share_large_files(data, files),
        metadata=metadata,
        data_files=session.files.manifest_entry(session.captured) if session.files else {},
        flavors=flavor_sources(
            name for entry in entries.values() for name, _ in walk(entry.flavor, entry.info)
        ),
        provenance=_provenance_of(session.captured),
        model_metadata=model_metadata,
    )
    (data / _manifest.MANIFEST_FILE).write_text(manifest.to_json(), encoding="utf-8")
    return manifest


def _warn_unbundled(session: CaptureSession, root: Path) -> None:
    """One warning per file or folder of this machine the saved code names but ``files=`` lacks.

    Without an input example the clean-process check has nothing to call, so a data file the
    function reads when it runs would otherwise only be missed where the bundle loads.
    """
    from cloudflow._verify import suggest_files

    found = _files.unbundled_paths(
        session.path_values, cwd=os.getcwd(), bundle=root, modules=session.captured
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
    from cloudflow._provenance import git_provenance

    checkouts = git_provenance(captured)
    return {"git": checkouts} if checkouts else {}


def _write_runtime(data: Path, files: _blobs.SaveFiles) -> None:
    """Put the wheel of this cloudflow into the bundle: a link to the store's copy if it has one.

    The wheel is small (about 230 KB) but the same in every bundle a cloudflow version saves,
    so it is shared whatever its size.
    """
    wheel = _runtime.build_wheel()
    folder = data / _runtime.folder_of(wheel)
    folder.mkdir(parents=True)
    target = folder / wheel.name
    digest = _digests.digest_bytes(wheel.data)
    if not files.link_existing(digest, len(wheel.data), target, min_size=0):
        _digests.write_hashed(target, wheel.data)
        files.adopt(target, digest, len(wheel.data), min_size=0)


def _share_large_files(data: Path, files: _blobs.SaveFiles) -> dict[str, dict[str, Any]]:
    """The manifest's file entries; large files not shared yet are shared now (see _blobs)."""
    entries = _manifest.digest_files(data, files.known)
    if files.blobs is not None:
        for rel, entry in entries.items():
            path = Path(os.path.abspath(data / rel))
            if path not in files.known and entry["size"] >= _blobs.MIN_SIZE:
                files.adopt(path, entry[_digests.ALGORITHM], entry["size"])
    return entries


# --- reading ---------------------------------------------------------------------------------


def _check_python(manifest: Manifest, allow_python_mismatch: bool) -> None:
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
        current = _capture.distribution_version(dist)
        if current is not None and current != version:
            mismatched.append(f"{dist} {version} -> {current}")
    if mismatched:
        _logger.warning(
            "This bundle was saved with other library versions: %s. If it misbehaves, install "
            "the versions in its requirements.txt.",
            ", ".join(mismatched),
        )


def data_dir_of(path: Path) -> Path:
    """The ``cloudflow`` data folder of a bundle given by its root or by the data folder itself."""
    if (path / _manifest.MANIFEST_FILE).is_file() and path.name == DATA_DIR:
        return path
    if not path.exists():
        raise NotFoundError(
            f"No bundle at {str(path)!r}: the folder does not exist. Check the path or model URI."
        )
    return path / DATA_DIR


_VERIFIER = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="cloudflow")
#: Models of one bundle loaded at once (``CLOUDFLOW_LOAD_WORKERS``, default 1). Measured on 2
#: cores (benchmarks/parallel_load.py: BERT pipeline, 385 MB MLP, 290 MB forest), loading them
#: in threads was slower than one after the other, warm (1.2 s against 0.8 s) and cold once the
#: files are prefetched (2.4 s against 1.5 s): unpickling and pipeline construction hold the GIL,
#: and the hashing threads want the same two cores. Machines with more cores may gain.
LOAD_WORKERS_ENV = "CLOUDFLOW_LOAD_WORKERS"


def load_workers() -> int:
    try:
        return max(1, int(os.environ.get(LOAD_WORKERS_ENV, "1")))
    except ValueError:
        raise BundleArgumentError(
            f"{LOAD_WORKERS_ENV}={os.environ[LOAD_WORKERS_ENV]!r} is not a number of threads; "
            "set it to 1 (one model after the other, the default) or more."
        ) from None


#: The keys of MLmodel's pyfunc ``model_config``: load options MLflow's loaders may pass.
PYFUNC_CONFIG = {"device": None, "dtype": None, "lazy": None}
DTYPES = ("float32", "float16", "bfloat16", "float64")
_DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


def _check_device(value: object) -> str:
    if not isinstance(value, str) or not _DEVICE.match(value):
        raise BundleArgumentError(
            f"device {value!r} is not one of 'cpu', 'cuda', 'cuda:N', 'mps'. Pass e.g. "
            "device='cuda:1', or a dict of model name -> device."
        )
    return value


def _check_dtype(value: object) -> str:
    name = str(value).removeprefix("torch.") if value is not None else ""
    if name not in DTYPES:
        raise BundleArgumentError(
            f"dtype {value!r} is not one of {list(DTYPES)} (a name or a torch.dtype). Pass e.g. "
            "dtype='bfloat16', or a dict of model name -> dtype."
        )
    return name


def load_options(device: object, dtype: object, manifest: Manifest) -> dict[str, dict[str, str]]:
    """Model name -> ``{"load_device": ..., "load_dtype": ...}`` from ``device=`` / ``dtype=``.

    One value applies to every torch and transformers model (and container holding one: its
    elements of those flavors get it); a dict names models (each must be one of those). Other
    models load as they were saved.

    Raises:
        BundleArgumentError: A value that is not a device or dtype, or a dict naming a model the
            bundle does not have or one that takes neither.
    """
    from cloudflow.flavors import DEVICE_FLAVORS, walk

    def takes_device(entry: ModelEntry) -> bool:  # itself, or an element of a container
        return any(name in DEVICE_FLAVORS for name, _ in walk(entry.flavor, entry.info))

    out: dict[str, dict[str, str]] = {}
    for key, value, check in (
        ("load_device", device, _check_device),
        ("load_dtype", dtype, _check_dtype),
    ):
        if value is None:
            continue
        what = key.removeprefix("load_")
        if isinstance(value, Mapping):
            for name, item in value.items():
                entry = manifest.models.get(name)
                if entry is None:
                    raise BundleArgumentError(
                        f"{what}= names the model {name!r}, which this bundle does not have; its "
                        f"models are {sorted(manifest.models)}."
                    )
                if not takes_device(entry):
                    raise BundleArgumentError(
                        f"{what}= names the model {name!r}, a {entry.flavor} model: a {what} "
                        f"applies to torch and transformers models only."
                    )
                out.setdefault(name, {})[key] = check(item)
        else:
            checked = check(value)
            for name, entry in manifest.models.items():
                if takes_device(entry):
                    out.setdefault(name, {})[key] = checked
    return out


def prefetch(data: Path, rels: Iterable[str]) -> None:
    """Ask the kernel to read a bundle's files ahead (``posix_fadvise(WILLNEED)``), all at once.

    A first load on a machine reads its files from the disk; the kernel then reads them in the
    background while the verification and the models work, instead of on demand, one page
    fault or read at a time. Costs a few system calls; a no-op where the call does not exist.
    """
    advise = getattr(os, "posix_fadvise", None)
    if advise is None:
        return
    # Non-blocking: opening a FIFO put in a file's place must not wait for a writer (the
    # verification that follows refuses it).
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)
    for rel in rels:
        try:
            fd = os.open(data / rel, flags)
        except OSError:
            continue
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                advise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)


def _load_models(
    data: Path,
    manifest: Manifest,
    context: LoadContext,
    steps: _progress.Steps,
    options: Mapping[str, Mapping[str, str]] | None = None,
    lazy: Callable[[str], None] | None = None,
    seal: Callable[[str], contextlib.AbstractContextManager[Path]] | None = None,
) -> dict[str, object]:
    """Load every model of a bundle; the result keeps the manifest's order.

    One after the other by default; in :func:`load_workers` threads if set. If models fail in
    threads, the first in the manifest's order is raised, after the others have finished.
    """
    from cloudflow.flavors import get_flavor

    def load(name: str, entry: ModelEntry) -> object:
        flavor = get_flavor(entry.flavor)
        t0 = time.perf_counter()
        info = {**entry.info, **(options or {}).get(name, {})}
        try:
            if seal is None:
                obj = flavor.load(data / entry.path, info, context)
            else:  # under a key: from a private folder of the checked files
                with seal(entry.path) as folder:
                    obj = flavor.load(folder, info, context)
        except FileNotFoundError as e:
            # Only where nothing checked the files against the manifest (verify=False), or
            # where the manifest names a file its own listing lacks.
            raise IntegrityError(
                f"Model {name!r} of {str(data.parent)!r} needs the file {e.filename!r}, which "
                "the bundle does not hold: the bundle is damaged or incomplete. Load an intact "
                "copy, or save it again."
            ) from e
        elapsed = time.perf_counter() - t0
        _logger.info("Loaded model %r (%s) in %.2f s", name, flavor.name, elapsed)
        return obj

    entries = list(manifest.models.items())
    if lazy is not None:
        from cloudflow._lazy import LazyModel

        def on_first_use(name: str, entry: ModelEntry) -> Callable[[], object]:
            def load_now() -> object:
                lazy(name)  # its files are checked first
                return load(name, entry)

            return load_now

        return {name: LazyModel(name, on_first_use(name, entry)) for name, entry in entries}
    workers = min(load_workers(), len(entries))
    if workers <= 1:
        out = {}
        for name, entry in entries:
            out[name] = load(name, entry)
            steps.advance(f"model {name}")
        return out
    with concurrent.futures.ThreadPoolExecutor(
        workers, thread_name_prefix="cloudflow-load"
    ) as pool:
        futures = {pool.submit(load, name, entry): name for name, entry in entries}
        for future in concurrent.futures.as_completed(futures):
            steps.advance(f"model {futures[future]}")
    results = {futures[f]: f for f in futures}
    for name, _ in entries:
        error = results[name].exception()
        if error is not None:
            raise error
    return {name: results[name].result() for name, _ in entries}


# Import names whose distribution is named otherwise, for the message of a missing library.
_DISTRIBUTION_OF = {
    "sklearn": "scikit-learn",
    "PIL": "pillow",
    "cv2": "opencv-python",
    "yaml": "pyyaml",
    "google": "protobuf",
}


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def missing_library_error(error: BaseException, manifest: Manifest) -> BaseException:
    """A library the bundle needs is not installed: name it and the pin it was saved with.

    ``error`` is what the load raised; when a missing module (a ``ModuleNotFoundError`` in its
    chain) is the cause, the result is a :class:`MissingDependencyError` naming the package
    and its version in the bundle's requirements, else ``error`` itself.
    """
    if isinstance(error, MissingDependencyError) and getattr(error, "pin", None):
        return error
    seen: BaseException | None = error
    while seen is not None and not isinstance(seen, ModuleNotFoundError):
        seen = seen.__cause__ or seen.__context__
    if seen is None or not seen.name:
        return error
    top = seen.name.split(".")[0]
    wanted = _normalized(_DISTRIBUTION_OF.get(top, top))
    versions = {_normalized(d): (d, v) for d, v in manifest.libraries.items()}
    # The module's own distribution, or a build of it named with a suffix (xgboost-cpu).
    found = versions.get(wanted) or next(
        (dv for n, dv in sorted(versions.items()) if n.startswith(wanted + "-")), None
    )
    if found is None:
        return error
    dist, version = found
    pin = f"{dist}=={version.partition('+')[0]}"
    translated = MissingDependencyError(
        f"This bundle needs {dist} (it was saved with {pin}), which is not installed here "
        f"(No module named {top!r}). Install it with: pip install {pin}; or let MLflow build "
        "the environment from the bundle's requirements.txt (mlflow models serve "
        "--env-manager uv)."
    )
    translated.pin = pin  # type: ignore[attr-defined]
    return translated


def read_bundle(path: Path, **options: Any) -> Bundle:
    """Load a bundle from a local folder (its root, or its ``cloudflow`` data folder).

    See :func:`_read_bundle`; a library the bundle needs that is not installed raises
    :class:`MissingDependencyError` naming it and the version the bundle pins.
    """
    try:
        return _read_bundle(path, **options)
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


def _read_bundle(
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
    _defer_checks: bool = True,
) -> Bundle:
    """Load a bundle from a local folder (its root, or its ``cloudflow`` data folder).

    The manifest, its signature (when a key is given or configured by the environment: then
    every file is checked whatever ``verify`` says, none from the digest cache) and the files
    are checked before anything is unpickled. Files whose loading runs code are read once,
    checked in memory and loaded from those bytes.
    """
    from cloudflow._signing import resolve_trust
    from cloudflow.flavors import check_installed, prepare_load

    if lazy not in (False, True, "background"):
        raise BundleArgumentError(
            f"lazy must be False, True or 'background', got {lazy!r}. True loads each model on "
            "its first use; 'background' also starts loading them all at once."
        )
    started = time.perf_counter()
    trust = resolve_trust(signing_key, trusted_keys)
    data = data_dir_of(path)
    manifest = _manifest.read_manifest(data, signing_key=trust)
    # Before anything is read: a flavor missing here fails at once, naming what to install.
    saved = {name: (entry.flavor, entry.info) for name, entry in manifest.models.items()}
    check_installed(saved, manifest.flavors)
    # Before the code too, which may import a library as it is unpickled (Keras's backend).
    prepare_load(saved)
    options = load_options(device, dtype, manifest)
    checked = verify or trust is not None
    # MLflow's files first (small; the wheels add_libraries_to_model adds are hashed in 0.1 s):
    # a change MLflow's tools make to the environment files is refused here if signed, and
    # a model they logged again is found where MLmodel now says it is.
    environment = _environment.EnvironmentChange()
    if checked:
        environment = _manifest.check_outer(data.parent, manifest, required=trust is not None)
    if expected_identity:
        from cloudflow._store import check_identity

        published = environment.republished(manifest.published)
        check_identity(published, expected_identity, str(data.parent), trust is not None)
    from cloudflow import _remote

    # A bundle from a tracking server lacks its large files: they come from the machine's cache
    # (downloaded once), and the bundle is read from a folder of the cache that holds them all.
    complete, load_folder = _remote.complete(data, manifest)
    if load_folder is not None:
        again = functools.partial(
            read_bundle,
            verify=verify,
            allow_python_mismatch=allow_python_mismatch,
            signing_key=trust,
            expected_identity=expected_identity,
            device=device,
            dtype=dtype,
            lazy=lazy,
            # Checked before the load returns: a folder of the cache found changed is then put
            # together again at once. Its digests are usually in the digest cache already.
            _defer_checks=False,
        )
        try:
            try:
                bundle = again(complete)
            except IntegrityError as e:
                # Its folder in the cache was changed since an earlier load put it together:
                # put it together again from the download and the (verified) cached files.
                _logger.warning("Putting %s together again: %s", complete.parent, e)
                load_folder.close()
                complete, load_folder = _remote.complete(data, manifest, rebuild=True)
                assert load_folder is not None
                bundle = again(complete)
        except BaseException:
            if load_folder is not None:
                load_folder.close()
            raise
        weakref.finalize(bundle, load_folder.close)
        return bundle
    models: dict[str, object] = {}
    # Pickles (which run code) and everything else are verified before anything is unpickled.
    # Weights in safetensors, a format parsed without running code, are hashed on another core
    # while the models load and, unsigned, while the first predict runs: its answer is given
    # only once they match (Bundle.predict). A signed bundle returns once they match.
    deferrable = set(_manifest.deferred_files(manifest)) if checked and _defer_checks else set()
    # Under a key, a model's files (but pickles) are checked as they are put in a private
    # folder the model loads from (cloudflow._sealed), not by name beforehand.
    sealed = (
        {r for e in manifest.models.values() for r in _sealed.sealed_files(manifest, e.path)}
        if trust is not None
        else set()
    )
    deferrable -= sealed
    # Lazily loaded models have their files checked when they load, not now.
    by_model = {
        name: [r for r in manifest.files if r.startswith(entry.path.rstrip("/") + "/")]
        for name, entry in manifest.models.items()
    }
    later = {r for rels in by_model.values() for r in rels} if lazy else set()
    deferred = sorted(deferrable - later)
    pending: concurrent.futures.Future[None] | None = None
    verified = _manifest.VerifiedBytes(data, None)

    late: list[concurrent.futures.Future[None]] = []  # lazy models' weights, being hashed

    def check_model(name: str) -> None:
        if not checked or trust is not None:  # under a key: checked as sealed, when it loads
            return
        rels = [r for r in by_model[name] if not r.endswith(_manifest.READ_ONCE_SUFFIXES)]
        if trust is None and _IN_PREDICT.get():
            # Loaded by a predict call of an unsigned bundle: its data-only files are hashed
            # while that call runs, and Bundle.predict gives its answer only once they match.
            weights = deferrable.intersection(rels)
            rels = [r for r in rels if r not in weights]
            if weights:
                future = _VERIFIER.submit(
                    _manifest.verify_digests, data, manifest, sorted(weights), use_cache=True
                )
                future.add_done_callback(functools.partial(_report_damage, data.parent))
                late.append(future)
        _manifest.verify_digests(data, manifest, rels, use_cache=trust is None)

    prefetch(data, [r for r in manifest.files if r not in later])
    with _progress.Steps("Loading bundle", total=len(manifest.models) + 2) as steps:
        if checked:
            verified = _manifest.verify_files(
                data,
                manifest,
                skip_digests=[*deferred, *later, *sealed],
                use_cache=trust is None,
                outer=False,
            )
            if deferred:
                pending = _VERIFIER.submit(
                    _manifest.verify_digests, data, manifest, deferred, use_cache=trust is None
                )
        steps.advance("files verified")
        try:
            _check_python(manifest, allow_python_mismatch)
            table = ModuleTable()
            resolver = _files.Resolver(data, manifest.data_files)
            if resolver:
                _files.install(table, resolver)
            table.code_table = _portable.read_table(
                data, manifest.python_versions, read=verified.read
            )
            if resolver and table.code_table is not None:
                table.code_table = {
                    k: resolver.rewrite_code(c) for k, c in table.code_table.items()
                }
            context = LoadContext(table, read=verified.read)
            seal = functools.partial(_sealed.sealed_folder, data, manifest, verified=verified)
            sealing = seal if trust is not None else None
            if lazy:
                # Stand-ins known before the code is read: the unpickler puts them in place.
                models = _load_models(
                    data, manifest, context, steps, options, lazy=check_model, seal=sealing
                )
                table.known_models = models
            predict_fn = load_code(data / CODE_FILE, table, read=verified.read)
            table.mark_left_out(manifest.captured_globals)
            if resolver:
                _files.place_modules(table, resolver, _capture.relative_filename)
            steps.advance("code")
            if not lazy:
                models = _load_models(data, manifest, context, steps, options, seal=sealing)
        except BaseException:
            # A damaged weights file may be why a model failed to load: say that first.
            if pending is not None:
                pending.result()
            raise
        if pending is not None and trust is not None:
            pending.result()  # a signed bundle is proven whole before anything of it is used
            pending = None
    predict_fn = table.bind_models(models, [predict_fn])
    _logger.info("Loaded bundle %s in %.2f s", data.parent, time.perf_counter() - started)
    if environment:
        _logger.warning(_environment.warning_message(str(data.parent), environment))
    if pending is not None:
        pending.add_done_callback(functools.partial(_report_damage, data.parent))
    bundle = Bundle(predict_fn, models, manifest, data.parent, verifying=pending, late=late)
    if lazy == "background":
        threading.Thread(target=bundle.warm, name="cloudflow-warm", daemon=True).start()
    return bundle


#: Set while Bundle.predict calls the predict function: a lazy model it loads then has its weights
#: hashed while the call runs (Bundle.predict waits for them before answering). Elsewhere (a
#: model used outside predict, or from a thread the function starts) they are hashed first.
_IN_PREDICT: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "cloudflow_in_predict", default=False
)


def _report_damage(where: Path, verifying: concurrent.futures.Future[None]) -> None:
    """Say at once, not only at the first predict, that a file checked after the load is bad."""
    error = None if verifying.cancelled() else verifying.exception()
    if error is not None:
        _logger.error("Bundle %s is damaged; its predict will refuse to answer: %s", where, error)


class Bundle:
    """A loaded bundle: the predict function and its live models.

    Attributes:
        models: Model name -> the loaded model object.
        predict_fn: The saved predict function, its models bound.
        metadata: The user metadata given at save time (``metadata=``, for the whole bundle).
        model_metadata: Model name -> the metadata given for that model at save time
            (``model_metadata=``: free JSON values, ``training_history``); ``{}`` for a model
            without any.
        manifest: Everything the bundle records (flavors, captured modules, requirements, files).
        path: The local folder the bundle was read from.

    Weights files parsed without running code (safetensors) may still be being hashed when
    :func:`~cloudflow.load_bundle` returns: the first :meth:`predict` runs meanwhile and its
    answer is returned only once they match (else :class:`~cloudflow.exceptions.IntegrityError`,
    naming the file, and no answer). ``models``, ``predict_fn`` and :meth:`model` wait for the
    check before handing anything out; :meth:`wait_verified` waits for it.
    """

    def __init__(
        self,
        predict_fn: Callable[..., Any],
        models: dict[str, object],
        manifest: Manifest,
        path: Path,
        *,
        verifying: concurrent.futures.Future[None] | None = None,
        late: list[concurrent.futures.Future[None]] | None = None,
    ) -> None:
        self._predict_fn = predict_fn
        self._models = models
        self._verifying = verifying
        self._late = late if late is not None else []
        self._lazy = not all(self.loaded.values())  # stand-ins that may load during a call
        self.manifest = manifest
        self.metadata = dict(manifest.metadata)
        self.model_metadata = {
            name: dict(manifest.model_metadata.get(name) or {}) for name in manifest.models
        }
        self.path = path
        _, names, has_var_kw = _parameters(predict_fn)
        signature = inspect.signature(predict_fn)
        self.parameters = [n for n in names if n not in models]
        self._accepted = None if has_var_kw else frozenset(self.parameters)
        self._required = frozenset(
            p.name
            for p in signature.parameters.values()
            if p.default is p.empty
            and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p.name not in models
        )
        # def predict(model, /, x): positional-only parameters cannot be passed by name.
        self._positional = [
            p.name for p in signature.parameters.values() if p.kind is p.POSITIONAL_ONLY
        ]

    def release_when_unread(self, release: Callable[[], object]) -> None:
        """Call ``release`` (which deletes the bundle's folder) once nothing reads the folder:
        at once; once the weights hashed in the background are checked; or with the Bundle,
        when models load lazily from it or its code reads data files from it."""
        if self._lazy or self.manifest.data_files:
            weakref.finalize(self, release)
        elif self._verifying is not None:
            self._verifying.add_done_callback(lambda _: release())
        else:
            release()

    @property
    def models(self) -> dict[str, object]:
        self.wait_verified()
        return self._models

    @property
    def predict_fn(self) -> Callable[..., Any]:
        self.wait_verified()
        return self._predict_fn

    def wait_verified(self) -> None:
        """Wait until every file of the bundle is checked; raise if one does not match.

        Raises:
            IntegrityError: A file differs from what the bundle recorded (named in the message).
        """
        verifying = self._verifying
        if verifying is not None:
            verifying.result()
            self._verifying = None
        for future in list(self._late):  # lazy models loaded by a predict call
            future.result()  # a failed check stays listed: every later call raises too
            with contextlib.suppress(ValueError):
                self._late.remove(future)

    @property
    def loaded(self) -> dict[str, bool]:
        """Model name -> whether it is loaded (always True unless loaded with ``lazy=``)."""
        from cloudflow._lazy import is_loaded

        return {name: is_loaded(model) for name, model in self._models.items()}

    def model(self, name: str) -> object:
        """The model ``name`` itself, loading it now if it was loaded lazily."""
        from cloudflow._lazy import loaded

        if name not in self._models:
            raise ModelKeyError(
                f"This bundle has no model {name!r}; its models are {sorted(self._models)}."
            )
        model = loaded(self._models[name])
        self.wait_verified()  # handed out only once its files are proven
        return model

    def warm(self) -> None:
        """Load every model not loaded yet, one after the other (``lazy="background"``)."""
        for name in self._models:
            try:
                self.model(name)
            except Exception:  # raised again, named, where the model is used
                _logger.warning("Loading model %r in the background failed", name, exc_info=True)

    def predict(self, *inputs: Any, **params: Any) -> Any:
        """Call the saved predict function with the bundle's models and ``params``.

        The inputs go by name (``predict(input_type="iris", data=rows)``), or as one dict of
        them, as ``mlflow.pyfunc`` takes them (``predict({"input_type": "iris", ...})``).

        Raises:
            PredictArgumentError: A parameter the function does not take, one that names a model,
                or a required one missing, or inputs given by position. The message lists the
                function's parameters.
        """
        if inputs:
            params = self._by_name(inputs, params)
        keys = params.keys()
        if (
            (self._accepted is not None and not keys <= self._accepted)
            or not (self._required <= keys)
            or not keys.isdisjoint(self._models)
        ):
            self._raise_for(params)
        if self._verifying is None and not self._late and not self._lazy:
            return self._call(params)
        token = _IN_PREDICT.set(True)
        try:
            answer = self._call(params)
        except BaseException:
            self.wait_verified()  # a damaged weights file may be why it failed: say that first
            raise
        finally:
            _IN_PREDICT.reset(token)
        self.wait_verified()  # the answer is given only once the weights are proven
        return answer

    def _call(self, params: Mapping[str, Any]) -> Any:
        models, predict_fn = self._models, self._predict_fn
        if self._positional:
            named = {**models, **params}
            args = []
            for name in self._positional:
                if name not in named:
                    break
                args.append(named.pop(name))
            return predict_fn(*args, **named)
        if not models:
            return predict_fn(**params)
        return predict_fn(**models, **params)

    def _by_name(self, inputs: tuple[Any, ...], params: dict[str, Any]) -> dict[str, Any]:
        """The inputs of a call that gave one dict of them, as pyfunc does; else refuse."""
        if len(inputs) == 1 and not params and isinstance(inputs[0], Mapping):
            given = dict(inputs[0])
            if all(isinstance(k, str) for k in given):
                return given
        name = self.manifest.predict_fn.get("name", "predict_fn")
        shown = ", ".join(f"{p}=..." for p in self.parameters[: max(len(inputs), 1)])
        raise PredictArgumentError(
            f"predict takes the inputs of {name} by name, got {len(inputs)} by position. Call "
            f"bundle.predict({shown}), or give one dict of them: bundle.predict({{...}}). Its "
            f"inputs are {self.parameters}."
        )

    def _raise_for(self, params: Mapping[str, Any]) -> None:
        name = self.manifest.predict_fn.get("name", "predict_fn")
        models = [p for p in params if p in self._models]
        if models:
            raise PredictArgumentError(
                f"{models[0]!r} is a model of this bundle and is passed to {name} automatically; "
                f"do not pass it to predict. Its inputs are {self.parameters}."
            )
        unknown = sorted(set(params) - (self._accepted or set()))
        if unknown:
            raise PredictArgumentError(
                f"{name} has no parameter {unknown[0]!r}. Its inputs are {self.parameters} "
                f"(models, passed automatically: {sorted(self._models)}). Check the spelling."
            )
        missing = sorted(self._required - set(params))
        raise PredictArgumentError(
            f"{name} is missing the required parameter {missing[0]!r}. Its inputs are "
            f"{self.parameters}; required: {sorted(self._required)}."
        )

    def __repr__(self) -> str:
        name = self.manifest.predict_fn.get("name")
        return (
            f"<cloudflow.Bundle {name}({', '.join(self.parameters)}) "
            f"models={sorted(self._models)} path={str(self.path)!r}>"
        )
