"""What a tracking store holds: its experiments and the runs that have a cloudflow bundle.

Used by ``cloudflow list``. Listing only reads: a folder that holds no store is refused, never
created. An embedded (folder) store, or an ``sqlite:`` URI, is read read-only with
:mod:`sqlite3` and the bundles' manifests from their local folders, without importing MLflow;
any other store (a server, another database, an sqlite schema this does not know) goes through
MLflow's client, which downloads each bundle's small manifest.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cloudflow import _units
from cloudflow.exceptions import CloudflowError, NotFoundError
from cloudflow.integrity import manifest as _manifest
from cloudflow.store import tracking as _store

_STATUS = _store.LOGGED_MODEL_STATUS
_MANIFEST = "cloudflow/manifest.json"


def list_store(tracking_uri: str | os.PathLike[str]) -> dict[str, Any]:
    """The experiments of a store, each with its runs that hold a cloudflow bundle.

    Raises:
        NotFoundError: ``tracking_uri`` is a folder (or an sqlite file) that holds no store.
    """
    text = os.fspath(tracking_uri)
    folder = _store.local_folder(text)
    if folder is not None:
        if not (folder / _store.DB_FILE).is_file():
            _store.existing_store_uri(text)  # raises its NotFoundError, naming the folder
        db: Path | None = folder / _store.DB_FILE
    elif text.startswith("sqlite:"):
        db = _store._sqlite_file(text)
        if db is None:
            raise NotFoundError(
                f"No tracking store at {text!r}: the database file does not exist. Give the "
                "sqlite URI (or the folder given to prepare_env) the model was saved into."
            )
    else:
        db = None
    experiments = None
    if db is not None:
        with contextlib.suppress(sqlite3.Error, ValueError):
            experiments = _from_sqlite(db)
    if experiments is None:
        with _store.store_errors():  # a damaged database named by its sqlite: URI
            experiments = _from_client(_store.existing_store_uri(text))
    _mark_shadowed(experiments)
    return {"tracking_uri": text, "experiments": experiments}


def _mark_shadowed(experiments: list[dict[str, Any]]) -> None:
    """Mark each finished bundle that a newer one of the same name in its run hides.

    ``runs:/<run>/<name>`` loads the newest finished model of that name: a second ``model``
    logged into a run (a metadata example pasted after the quickstart) silently takes the URI.
    Each bundle gets ``shadowed``: False, or the model id of the newer one the URI now means.
    """
    for experiment in experiments:
        for run in experiment["runs"]:
            newest: dict[str, dict[str, Any]] = {}
            for bundle in run["bundles"]:  # oldest first
                if bundle["status"] == "READY":
                    newest[bundle["name"]] = bundle
            for bundle in run["bundles"]:
                latest = newest.get(bundle["name"])
                hidden = bundle["status"] == "READY" and latest is not None and latest is not bundle
                bundle["shadowed"] = (latest or {}).get("model_id") or True if hidden else False


def _iso(ms: Any) -> str | None:
    if ms is None:
        return None
    moment = datetime.datetime.fromtimestamp(int(ms) / 1000, tz=datetime.timezone.utc)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _bundle_entry(
    name: str,
    model_id: str | None,
    location: str,
    status: str,
    created_ms: Any,
    manifest: dict[str, Any] | str,
    registered: list[dict[str, Any]],
) -> dict[str, Any]:
    """One bundle's row; one whose manifest is unreadable says why, with no flavors or size."""
    unreadable = manifest if isinstance(manifest, str) else None
    checked = manifest if isinstance(manifest, dict) else {}
    models = checked.get("models") or {}
    files = checked.get("files") or {}
    return {
        "name": name,
        "model_id": model_id,
        "status": status,
        "flavors": {str(m): str((e or {}).get("flavor", "?")) for m, e in sorted(models.items())},
        "size_bytes": None
        if unreadable
        else _units.bundle_totals(_dict(files), _dict(checked.get("outer_files")))[1],
        "created": _iso(created_ms),
        "registered": registered,
        "artifact_location": location,
        "unreadable": unreadable,
    }


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _local_manifest(location: str) -> dict[str, Any] | str | None:
    """The manifest of the bundle at ``location``; None: no bundle there (or not a local
    folder); a str: a bundle whose manifest cannot be read, and why (listed as such)."""
    root = _store.local_path(location)
    if root is None:
        return None
    from cloudflow.integrity.digests import read_regular

    path = root / _MANIFEST
    try:
        # Never a FIFO waited on, a link followed or a huge file read whole.
        raw = read_regular(path, _manifest.MANIFEST_MAX, "The manifest")
    except FileNotFoundError:
        return None
    except (OSError, CloudflowError) as e:
        return _why(e)
    return _parsed(raw, path)


def _parsed(raw: bytes, path: Path) -> dict[str, Any] | str:
    try:
        return _manifest.parse(raw, path)
    except CloudflowError as e:
        return _why(e)


def _why(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _registered(
    versions: Iterable[tuple[Any, ...]], model_id: str | None, location: str
) -> list[dict[str, str]]:
    """The (name, version) pairs whose source is this logged model or its folder."""
    wanted = {location.rstrip("/")}
    if model_id:
        wanted.add(f"models:/{model_id}")
    return [
        {"name": str(name), "version": str(version)}
        for name, version, source, storage in versions
        if (source or "").rstrip("/") in wanted or (storage or "").rstrip("/") in wanted
    ]


def _from_sqlite(db: Path) -> list[dict[str, Any]]:
    uri = f"{db.resolve().as_uri()}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5.0)) as conn:
        experiments = conn.execute(
            "SELECT experiment_id, name, creation_time FROM experiments "
            "WHERE lifecycle_stage != 'deleted' ORDER BY experiment_id"
        ).fetchall()
        runs = conn.execute(
            "SELECT run_uuid, experiment_id, name, status, start_time, artifact_uri FROM runs "
            "WHERE lifecycle_stage != 'deleted' ORDER BY start_time"
        ).fetchall()
        models = conn.execute(
            "SELECT model_id, name, artifact_location, status, creation_timestamp_ms, "
            "source_run_id FROM logged_models WHERE lifecycle_stage != 'deleted' "
            "AND source_run_id IS NOT NULL ORDER BY creation_timestamp_ms"
        ).fetchall()
        versions = conn.execute(
            "SELECT name, version, source, storage_location FROM model_versions "
            "ORDER BY name, version"
        ).fetchall()
    if any(_store.local_path(str(m[2])) is None for m in models):
        raise ValueError("artifacts outside local folders: MLflow's client downloads them")
    by_run: dict[str, list[Any]] = {}
    for model in models:
        by_run.setdefault(str(model[5]), []).append(model)

    def bundles(run: Any) -> list[dict[str, Any]]:
        out = []
        for model_id, name, location, status, created, _ in by_run.get(str(run[0]), []):
            manifest = _local_manifest(str(location))
            if manifest is not None:
                out.append(
                    _bundle_entry(
                        str(name),
                        str(model_id),
                        str(location),
                        _STATUS.get(int(status), str(status)),
                        created,
                        manifest,
                        _registered(versions, str(model_id), str(location)),
                    )
                )
        if not out and run[5]:  # a bundle logged as plain run artifacts
            location = f"{str(run[5]).rstrip('/')}/model"
            manifest = _local_manifest(location)
            if manifest is not None:
                entry = _bundle_entry(
                    "model",
                    None,
                    location,
                    "READY",
                    run[4],
                    manifest,
                    _registered(versions, None, location),
                )
                out.append(entry)
        return out

    return _assemble(
        [(str(e[0]), str(e[1])) for e in experiments],
        [(str(r[1]), str(r[0]), r[2], r[3], r) for r in runs],
        bundles,
    )


def _assemble(
    experiments: list[tuple[str, str]],
    runs: list[tuple[str, str, Any, Any, Any]],
    bundles: Callable[[Any], list[dict[str, Any]]],
) -> list[dict[str, Any]]:
    out = []
    for experiment_id, name in experiments:
        listed = []
        for run_experiment, run_id, run_name, status, raw in runs:
            if run_experiment != experiment_id:
                continue
            found = bundles(raw)
            if found:
                listed.append(
                    {
                        "run_id": run_id,
                        "run_name": run_name,
                        "status": str(status),
                        "bundles": found,
                    }
                )
        out.append({"experiment_id": experiment_id, "name": name, "runs": listed})
    return out


def _from_client(uri: str) -> list[dict[str, Any]]:
    import mlflow
    from mlflow.entities import ViewType

    client = mlflow.MlflowClient(uri)
    experiments = sorted(
        client.search_experiments(view_type=ViewType.ACTIVE_ONLY),
        key=lambda e: (len(str(e.experiment_id)), str(e.experiment_id)),  # as the sqlite read
    )
    try:
        versions = [
            (v.name, v.version, v.source, getattr(v, "storage_location", None))
            for v in client.search_model_versions()
        ]
    except Exception:  # a store without a registry
        versions = []

    def manifest_of(location: str) -> dict[str, Any] | str | None:
        local = _local_manifest(location)
        if local is not None or _store.local_path(location) is not None:
            return local
        try:
            text = mlflow.artifacts.load_text(f"{location.rstrip('/')}/{_MANIFEST}")
        except Exception:  # not a bundle, or no access
            return None
        return _parsed(text.encode("utf-8"), Path(location) / _MANIFEST)

    out = []
    for experiment in experiments:
        models = _store.logged_models(client, experiment.experiment_id)
        by_run: dict[str, list[Any]] = {}
        for model in sorted(models, key=lambda m: m.creation_timestamp):
            if model.source_run_id:
                by_run.setdefault(model.source_run_id, []).append(model)
        runs = []
        for run_id in by_run:
            try:
                run = client.get_run(run_id)
            except Exception:  # a deleted run
                continue
            if run.info.lifecycle_stage == "deleted":
                continue
            bundles = []
            for model in by_run[run_id]:
                location = str(model.artifact_location)
                manifest = manifest_of(location)
                if manifest is None:
                    continue
                bundles.append(
                    _bundle_entry(
                        model.name,
                        model.model_id,
                        location,
                        str(model.status),
                        model.creation_timestamp,
                        manifest,
                        _registered(versions, model.model_id, location),
                    )
                )
            if bundles:
                runs.append(
                    {
                        "run_id": run_id,
                        "run_name": run.info.run_name,
                        "status": str(run.info.status),
                        "bundles": bundles,
                        "_start": run.info.start_time or 0,
                    }
                )
        runs.sort(key=lambda r: r.pop("_start"))
        out.append(
            {"experiment_id": str(experiment.experiment_id), "name": experiment.name, "runs": runs}
        )
    return out


def format_text(listing: dict[str, Any]) -> str:
    """The listing as aligned tables, one per experiment."""
    lines: list[str] = []
    header = ("RUN ID", "MODEL", "FLAVORS", "SIZE", "CREATED (UTC)", "REGISTERED")
    for experiment in listing["experiments"]:
        runs = experiment["runs"]
        count = sum(len(r["bundles"]) for r in runs)
        lines.append(
            f"experiment {experiment['name']!r} (id {experiment['experiment_id']}): "
            + (f"{count} bundle(s) in {len(runs)} run(s)" if runs else "no bundles")
        )
        rows = []
        for run in runs:
            for b in run["bundles"]:
                flavors = ", ".join(f"{m}: {f}" for m, f in b["flavors"].items()) or "-"
                created = (b["created"] or "-").replace("T", " ").rstrip("Z")
                registered = ", ".join(f"{r['name']} v{r['version']}" for r in b["registered"])
                name = b["name"] if b["status"] == "READY" else f"{b['name']} ({b['status']})"
                size = "-" if b["size_bytes"] is None else _units.human_size(b["size_bytes"])
                if b.get("unreadable"):
                    flavors = f"UNREADABLE: {b['unreadable']}"
                if b.get("shadowed"):
                    name = f"{b['name']} (older: runs:/ loads the newer)"
                rows.append((run["run_id"], name, flavors, size, created, registered))
        if rows:
            widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
            for row in [header, *rows]:
                cells = [c.ljust(w) for c, w in zip(row, widths, strict=True)]
                lines.append(("  " + "  ".join(cells)).rstrip())
    if not listing["experiments"]:
        lines.append("no experiments")
    if any(
        b.get("shadowed") for e in listing["experiments"] for r in e["runs"] for b in r["bundles"]
    ):
        lines.append(
            "a run holds two models of one name: runs:/<RUN ID>/<MODEL> loads the newer; load "
            "the older by its model id, models:/<MODEL ID> (--json lists them)"
        )
    lines.append(
        f"look into one: cloudflow inspect runs:/<RUN ID>/<MODEL> --tracking-uri "
        f"{listing['tracking_uri']}"
    )
    return "\n".join(lines)
