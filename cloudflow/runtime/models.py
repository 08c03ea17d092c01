"""Loading a bundle's models: the options a load may give them, and each flavor's loader."""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from cloudflow import _progress
from cloudflow.exceptions import BundleArgumentError, IntegrityError
from cloudflow.integrity.manifest import Manifest, ModelEntry
from cloudflow.runtime.unpickler import LoadContext

_logger = logging.getLogger("cloudflow")

#: Models of one bundle loaded at once (``CLOUDFLOW_LOAD_WORKERS``, default 1). Measured on 2
#: cores (benchmarks/parallel_load.py: BERT pipeline, 385 MB MLP, 290 MB forest), loading them
#: in threads was slower than one after the other, warm (1.2 s against 0.8 s) and cold once the
#: files are prefetched (2.4 s against 1.5 s): unpickling and pipeline construction hold the GIL,
#: and the hashing threads want the same two cores. Machines with more cores may gain.
LOAD_WORKERS_ENV = "CLOUDFLOW_LOAD_WORKERS"


def load_workers() -> int:
    """How many models of one bundle load at once (:data:`LOAD_WORKERS_ENV`)."""
    try:
        return max(1, int(os.environ.get(LOAD_WORKERS_ENV, "1")))
    except ValueError:
        raise BundleArgumentError(
            f"{LOAD_WORKERS_ENV}={os.environ[LOAD_WORKERS_ENV]!r} is not a number of threads; "
            "set it to 1 (one model after the other, the default) or more."
        ) from None


#: The keys of MLmodel's pyfunc ``model_config``: load options MLflow's loaders may pass.
PYFUNC_CONFIG = {"device": None, "dtype": None, "lazy": None}


def load_options(
    device: str | Mapping[str, str] | None,
    dtype: str | Mapping[str, str] | None,
    manifest: Manifest,
) -> dict[str, dict[str, str]]:
    """Model name -> ``{"load_device": ..., "load_dtype": ...}`` from ``device=`` / ``dtype=``.

    The values are checked already (:func:`cloudflow._checks.check_load_options`). One value
    applies to every torch and transformers model (and container holding one: its elements of
    those flavors get it); a dict names models (each must be one of those). Other models load
    as they were saved.

    Raises:
        BundleArgumentError: A dict naming a model the bundle does not have or one that takes
            neither.
    """
    from cloudflow.flavors import DEVICE_FLAVORS, walk

    def takes_device(entry: ModelEntry) -> bool:  # itself, or an element of a container
        return any(name in DEVICE_FLAVORS for name, _ in walk(entry.flavor, entry.info))

    out: dict[str, dict[str, str]] = {}
    for key, value in (("load_device", device), ("load_dtype", dtype)):
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
                out.setdefault(name, {})[key] = item
        else:
            for name, entry in manifest.models.items():
                if takes_device(entry):
                    out.setdefault(name, {})[key] = value
    return out


def load_models(
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
        from cloudflow.runtime.lazy import LazyModel

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
