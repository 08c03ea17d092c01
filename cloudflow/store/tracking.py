"""Tracking stores and model URIs.

A folder path (or ``file:`` URI) given as tracking URI is the *embedded default*: an sqlite
database ``<folder>/mlflow.db`` with the artifact root ``<folder>/artifacts``. mlflow 3 no longer
accepts a plain folder as tracking URI (its file store is in maintenance mode), and this keeps
everything of a store in the one folder the user named. Any other URI (``sqlite:``,
``postgresql:``, ``http(s):``, ``databricks``...) goes to MLflow as it is.

A store folder can be moved, copied or zipped and unzipped elsewhere: MLflow's database records
absolute artifact locations (``file:///old/place/artifacts/1/...``), so cloudflow finds them
relative to the folder instead (see :func:`reroot` and :func:`relocate`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import tempfile
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cloudflow import _mlflow
from cloudflow.exceptions import CloudflowError, NotFoundError, StoreError
from cloudflow.store import locks

_logger = logging.getLogger("cloudflow")

DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "artifacts"
LOCK_FILE = ".cloudflow.lock"
_SCHEMES_AS_IS = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks", "uc")
_initialized: set[str] = set()
_init_lock = threading.Lock()


def store_error(error: BaseException) -> StoreError | None:
    """A clear error for a failed store (its database, or a server that does not answer), or None.

    A truncated or overwritten ``mlflow.db`` raises SQLAlchemy's ``DatabaseError`` from deep in
    MLflow ("database disk image is malformed"); a locked or read-only one its own kinds.
    """
    import sqlite3

    kind = type(error)
    from_db = isinstance(error, sqlite3.Error) or kind.__module__.startswith("sqlalchemy")
    text = str(error)
    unreachable = ("Max retries exceeded", "Connection refused", "Failed to establish", "timed out")
    if (
        kind.__name__ == "MlflowException" or kind.__module__.startswith(("requests", "urllib3"))
    ) and any(w in text for w in unreachable):
        uri = current_tracking_uri() or "the tracking server"
        return StoreError(
            f"The tracking server {uri} does not answer ({text.strip().splitlines()[0][:200]}). "
            "Check that it runs and is reachable, then try again; a save that failed this way "
            "published nothing."
        )
    if kind.__name__ == "MlflowException" and any(
        w in text for w in ("malformed", "not a database", "sqlite3.")
    ):
        from_db = True
    if not from_db:
        return None
    first = text.strip().splitlines()[0] if text.strip() else kind.__name__
    if "malformed" in text or "not a database" in text or "file is encrypted" in text:
        return StoreError(
            f"The tracking store's database is damaged ({first}). Restore its mlflow.db from a "
            "backup (`sqlite3 mlflow.db .recover | sqlite3 repaired.db` may save what is left), "
            "or give another store."
        )
    if "locked" in text:
        return StoreError(
            f"The tracking store's database is locked by another process ({first}). Retry when "
            "that process is done; a store on a network share may not support sqlite's locks."
        )
    if "readonly" in text or "read-only" in text:
        return StoreError(
            f"The tracking store's database is read-only ({first}): saving needs write access. "
            "Loads work on a read-only store; save into a store you can write to."
        )
    return StoreError(f"The tracking store's database failed: {first}")


@contextlib.contextmanager
def store_errors() -> Iterator[None]:
    """Turn failures of the store into :class:`StoreError` (see :func:`store_error`)."""
    try:
        yield
    except CloudflowError:
        raise
    except Exception as e:
        translated = store_error(e)
        if translated is None:
            raise
        raise translated from e


_F = TypeVar("_F", bound=Callable[..., Any])


def translates_store_errors(fn: _F) -> _F:
    """Decorate a public entry point with :func:`store_errors`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with store_errors():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def local_folder(tracking_uri: str | os.PathLike[str]) -> Path | None:
    """The folder of an embedded store, or None for a URI that goes to MLflow as it is."""
    text = os.fspath(tracking_uri)
    parsed = urllib.parse.urlparse(text)
    scheme = parsed.scheme.lower()
    if scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path)).expanduser().resolve()
    if scheme and len(scheme) > 1:  # one letter: a Windows drive
        if scheme.partition("+")[0] in _SCHEMES_AS_IS:
            return None
        raise StoreError(
            f"Tracking URI {text!r} has the scheme {scheme!r}, which cloudflow does not know. "
            "Give a folder path (an embedded store), or an http(s)://, sqlite://, postgresql:// "
            "or databricks URI."
        )
    return Path(text).expanduser().resolve()


def resolve_tracking_uri(tracking_uri: str | os.PathLike[str]) -> str:
    """The URI MLflow is given for a tracking URI; creates an embedded store where needed."""
    folder = local_folder(tracking_uri)
    if folder is None:
        return os.fspath(tracking_uri)
    return ensure_local_store(folder)


def existing_store_uri(tracking_uri: str | os.PathLike[str]) -> str:
    """The URI MLflow is given for a store that must already exist (a load, a clean-up).

    Resolving a folder creates an embedded store; what only reads or removes must not, so a
    folder without its database is refused first.

    Raises:
        NotFoundError: ``tracking_uri`` is a folder that holds no store.
    """
    folder = local_folder(tracking_uri)
    if folder is None:
        return os.fspath(tracking_uri)
    if not (folder / DB_FILE).is_file():
        raise NotFoundError(
            f"No tracking store at {os.fspath(tracking_uri)!r}: it has no {DB_FILE}. "
            "Give the folder that was given to prepare_env when the model was saved."
        )
    # Reading needs no write access (a store on a read-only disk or share loads too), and an
    # existing database needs no schema creation.
    reroot(folder, quiet=True)
    return sqlite_uri(folder)


def same_store(uri: str, tracking_uri: str | os.PathLike[str]) -> bool:
    """Whether MLflow's tracking URI ``uri`` is the store ``tracking_uri`` names."""
    try:
        folder = local_folder(tracking_uri)
    except StoreError:
        return False
    if folder is None:
        return uri.rstrip("/") == os.fspath(tracking_uri).rstrip("/")
    return uri == sqlite_uri(folder)


def sqlite_uri(folder: Path) -> str:
    """The URI MLflow is given for the database of the embedded store in ``folder``."""
    return f"sqlite:///{folder / DB_FILE}"


def ensure_local_store(folder: Path) -> str:
    """Create (once per process) the sqlite store of an embedded folder; returns its URI."""
    uri = sqlite_uri(folder)
    with _init_lock:
        if uri in _initialized:
            return uri
        try:
            (folder / ARTIFACTS_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(
                f"Cannot create the tracking store folder {str(folder)!r}: {e.strerror}. Give a "
                "folder you can write to as tracking_uri."
            ) from e
        if not os.access(folder, os.W_OK):
            raise StoreError(
                f"The tracking store folder {str(folder)!r} is not writable. Give a folder you can "
                "write to as tracking_uri, or fix its permissions."
            )
        # Creating the schema of a new database is not safe to run in two processes at once
        # (MLflow's migrations race: "table ... already exists"): one process at a time.
        with locks.flock(folder / LOCK_FILE), _quiet_schema_logs():
            _sqlite_store(folder)
        reroot(folder)
        _initialized.add(uri)
    return uri


#: The columns of MLflow's schema that hold artifact locations (tables or columns an older or
#: newer schema lacks are passed by).
_LOCATION_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
)


def _recorded_root(db: Any) -> str | None:
    """The artifact root the database records: ``file:///<folder when created>/artifacts``.

    Every store cloudflow creates gets its Default experiment (id 0) at ``<root>/0``; a database
    made otherwise (MLflow's own ``./mlruns`` root) answers None and is left as it is.
    """
    row = db.execute("SELECT artifact_location FROM experiments WHERE experiment_id = 0").fetchone()
    if row is None or not isinstance(row[0], str):
        return None
    root, _, last = row[0].rstrip("/").rpartition("/")
    if last != "0" or not root.startswith("file:") or not root.endswith(f"/{ARTIFACTS_DIR}"):
        return None
    return root


def _moved_from(db: Any, folder: Path) -> str | None:
    """The recorded artifact root when the store in ``folder`` was moved there, else None."""
    recorded = _recorded_root(db)
    current = (folder / ARTIFACTS_DIR).as_uri()
    if recorded is None or recorded == current:
        return None
    old = local_path(recorded)
    with contextlib.suppress(OSError):
        if old is not None and old.exists() and old.samefile(folder / ARTIFACTS_DIR):
            return None  # the same folder by another name (a link): not moved
    return recorded


def reroot(folder: Path, *, quiet: bool = False) -> None:
    """Point the locations a moved store's database records into ``folder``, where it now is.

    MLflow's database records absolute artifact locations, and MLflow computes those of new runs
    and models from their experiment's: in a store copied elsewhere, a load would look in the old
    place (gone, or the original's files) and a save would write there. Rewriting the recorded
    root once, in one transaction under the folder's lock, makes the database true again for
    MLflow itself too (``mlflow.pyfunc.load_model``, ``mlflow ui``, ``mlflow.log_artifact``).
    A store cloudflow cannot write (a read-only disk) is left as it is: :func:`relocate` maps
    its locations as they are read.

    Args:
        folder: The store's folder (holding ``mlflow.db``).
        quiet: Pass over a database that cannot be rewritten (a load of a read-only store)
            instead of raising.
    """
    import sqlite3

    db_file = folder / DB_FILE
    try:
        with contextlib.closing(
            sqlite3.connect(f"{db_file.as_uri()}?mode=ro", uri=True, timeout=5.0)
        ) as db:
            old = _moved_from(db, folder)
            if old is None:
                return
    except sqlite3.Error:
        return  # a damaged database: the store's own error comes from MLflow's first query
    if not os.access(db_file, os.W_OK) or not os.access(folder, os.W_OK):
        return
    try:
        with (
            locks.flock(folder / LOCK_FILE),
            contextlib.closing(sqlite3.connect(db_file, timeout=30.0)) as db,
        ):
            db.execute("BEGIN IMMEDIATE")
            old = _moved_from(db, folder)  # again: another process may have done it meanwhile
            if old is None:
                db.rollback()
                return
            new = (folder / ARTIFACTS_DIR).as_uri()
            changed = 0
            for old_prefix, new_prefix in (
                (old, new),
                (str(local_path(old)), str(folder / ARTIFACTS_DIR)),
            ):
                for table, column in _LOCATION_COLUMNS:
                    try:
                        changed += db.execute(
                            f"UPDATE {table} SET {column} = ? || substr({column}, ?) "  # noqa: S608
                            f"WHERE {column} = ? OR substr({column}, 1, ?) = ?",
                            (
                                new_prefix,
                                len(old_prefix) + 1,
                                old_prefix,
                                len(old_prefix) + 1,
                                f"{old_prefix}/",
                            ),
                        ).rowcount
                    except sqlite3.OperationalError:  # a schema without that table or column
                        continue
            db.commit()
    except (sqlite3.Error, OSError) as e:
        if quiet:
            _logger.debug("Could not point the moved store %s at itself: %s", folder, e)
            return
        raise StoreError(
            f"The tracking store {str(folder)!r} was moved from {old!r}, and its database cannot "
            f"be updated to its new place ({e}). Give a folder you can write to."
        ) from e
    _logger.info(
        "The tracking store %s was moved (it recorded %s): %d artifact locations now point "
        "into it.",
        folder,
        old,
        changed,
    )


def relocate(location: str, tracking_uri: str | None) -> str:
    """``location`` as recorded by an embedded store, moved to where the store now is.

    For a store :func:`reroot` could not rewrite (read-only): a location under the artifact root
    the database records becomes the same path under ``<folder>/artifacts``.
    """
    db_file = _sqlite_file(tracking_uri) if tracking_uri else None
    if db_file is None or db_file.name != DB_FILE:
        return location
    import sqlite3

    folder = db_file.resolve().parent
    try:
        with contextlib.closing(
            sqlite3.connect(f"{db_file.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
        ) as db:
            old = _moved_from(db, folder)
    except sqlite3.Error:
        return location
    if old is None:
        return location
    new = (folder / ARTIFACTS_DIR).as_uri()
    for old_prefix, new_prefix in (
        (old, new),
        (str(local_path(old)), str(folder / ARTIFACTS_DIR)),
    ):
        if location == old_prefix or location.startswith(f"{old_prefix}/"):
            return new_prefix + location[len(old_prefix) :]
    return location


@contextlib.contextmanager
def _quiet_schema_logs() -> Iterator[None]:
    """MLflow's "Creating initial MLflow database tables" INFO lines, shown only when cloudflow's
    own logger was set to INFO or DEBUG (``cloudflow_model(log_level="INFO")``), not merely
    inherits it from the root logger: the seed API's default is ERROR."""
    level = logging.getLogger("cloudflow").level
    if level != logging.NOTSET and level <= logging.INFO:
        yield
        return
    loggers = [logging.getLogger(name) for name in ("mlflow.store.db.utils", "alembic")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


_stores: dict[str, Any] = {}


def _sqlite_store(folder: Path) -> Any:
    """An SqlAlchemyStore whose default artifact root is inside the folder.

    Creating it the first time creates the schema and the Default experiment; experiments created
    through it get their artifact location under ``<folder>/artifacts``. (MLflow's own store
    factory would put them under ``./mlruns`` of the current directory.)
    """
    uri = f"sqlite:///{folder / DB_FILE}"
    store = _stores.get(uri)
    if store is None:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        store = SqlAlchemyStore(uri, (folder / ARTIFACTS_DIR).as_uri())
        _stores[uri] = store
    return store


def get_or_create_experiment(tracking_uri: str | os.PathLike[str], name: str) -> str:
    """The id of the experiment ``name``, created (artifacts inside the store) if missing."""
    import mlflow

    uri = resolve_tracking_uri(tracking_uri)
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise StoreError(
                f"The experiment {name!r} is deleted in {tracking_uri!s}. Restore it "
                "(mlflow experiments restore) or choose another name."
            )
        return str(experiment.experiment_id)
    folder = local_folder(tracking_uri)
    try:
        if folder is not None:
            return str(_sqlite_store(folder).create_experiment(name))
        return str(client.create_experiment(name))
    except Exception as e:
        # Another process may have created it at the same moment.
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return str(experiment.experiment_id)
        raise StoreError(f"Cannot create the experiment {name!r}: {e}") from e


def find_experiment(client: Any, experiment: str) -> Any:
    """An experiment by name or id, or NotFoundError listing the ones that exist."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(str(experiment))
    if found is None and str(experiment).isdigit():
        try:
            found = client.get_experiment(str(experiment))
        except MlflowException:
            found = None
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise NotFoundError(
            f"No experiment named or numbered {experiment!r} in this tracking store. Existing "
            f"experiments: {names}. Check the name, or the tracking_uri."
        )
    return found


def find_run(client: Any, run_id: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(str(run_id))
    except MlflowException as e:
        if _deleted_run(client, str(run_id)):
            raise _deleted(run_id) from e
        raise NotFoundError(
            f"No run with id {run_id!r} in the tracking store {_store_name(client)} "
            f"({e.error_code}). Check the run id (`cloudflow list --tracking-uri STORE` lists the "
            "runs that hold a bundle, as does the MLflow UI) and the tracking_uri."
        ) from e
    if getattr(run.info, "lifecycle_stage", "active") == "deleted":
        raise _deleted(run_id)
    return run


def _store_name(client: Any) -> str:
    """The store a client reads, as the user gave it: the folder of an embedded store."""
    uri = str(getattr(client, "_tracking_client", client).tracking_uri)
    db = _sqlite_file(uri)
    if db is not None and db.name == DB_FILE:
        return repr(str(db.parent))
    return repr(uri)


def check_lookup_store() -> None:
    """Refuse a ``runs:/`` or ``models:/`` lookup in a store that does not exist.

    Without a tracking URI, MLflow reads ``./mlflow.db`` of the working folder, and creates it
    (with an ``mlruns`` folder) when it is missing; an sqlite URI naming a missing file is
    created the same way. A read that fails must leave nothing behind, and say where it looked.

    Raises:
        NotFoundError: No tracking URI is set and the working folder has no ``mlflow.db``, or
            the sqlite file named does not exist.
    """
    uri = current_tracking_uri()
    explicit = os.environ.get("MLFLOW_TRACKING_URI")
    import sys

    if "mlflow" in sys.modules:
        explicit = explicit or (uri if _mlflow.tracking_uri_is_set() else None)
    if not explicit:
        if (Path.cwd() / DB_FILE).is_file() or (Path.cwd() / "mlruns").is_dir():
            return  # MLflow's default store, which exists here
        raise NotFoundError(
            "runs:/ and models:/ URIs are looked up in a tracking store, and none is set (MLflow "
            f"would look in ./{DB_FILE} of {str(Path.cwd())!r}, which does not exist). Point "
            "MLflow at the store the model was saved into: cloudflow.prepare_env(FOLDER, ...), "
            "mlflow.set_tracking_uri(...) or MLFLOW_TRACKING_URI; or load the bundle's folder."
        )
    if explicit.startswith("sqlite:///") and _sqlite_file(explicit) is None:
        raise NotFoundError(
            f"The tracking store {explicit!r} does not exist (no such database file). Check the "
            "path: for a store folder, give the folder to prepare_env or "
            "`--tracking-uri FOLDER`."
        )


def _deleted(run_id: str) -> NotFoundError:
    return NotFoundError(
        f"The run {run_id!r} was deleted. Restore it (mlflow.MlflowClient()"
        f".restore_run({run_id!r}), or `mlflow runs restore --run-id {run_id}`), or use "
        "another run."
    )


def _deleted_run(client: Any, run_id: str) -> bool:
    """Whether the store holds ``run_id`` as a deleted run (get_run hides those)."""
    from mlflow.entities import ViewType

    try:
        found = client.search_runs(
            experiment_ids=[e.experiment_id for e in client.search_experiments(ViewType.ALL)],
            filter_string=f"attributes.run_id = '{run_id}'",
            run_view_type=ViewType.DELETED_ONLY,
            max_results=1,
        )
    except Exception:
        return False
    return bool(found)


def local_path(uri: str) -> Path | None:
    """The folder or file a ``file:`` URI or a plain path names; None for any other scheme
    (a server's ``http:``, ``mlflow-artifacts:``, ``s3:``...). A one-letter scheme is a Windows
    drive."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if not parsed.scheme or len(parsed.scheme) == 1:
        return Path(uri)
    return None


#: ``logged_models.status`` as MLflow's ``LoggedModelStatus.from_int`` decodes it.
LOGGED_MODEL_STATUS = {0: "UNSPECIFIED", 1: "PENDING", 2: "READY", 3: "FAILED"}


def current_tracking_uri() -> str | None:
    """MLflow's tracking URI, without importing MLflow when nothing could have set it in code.

    Until ``mlflow`` is imported, ``mlflow.set_tracking_uri`` cannot have run, so the
    ``MLFLOW_TRACKING_URI`` variable is the whole answer (None: MLflow's default applies).
    """
    import sys

    if "mlflow" in sys.modules:
        import mlflow

        return str(mlflow.get_tracking_uri())
    return os.environ.get("MLFLOW_TRACKING_URI") or None


@dataclass(frozen=True)
class RunModel:
    """Where a run's finished model is, as read straight from an sqlite store."""

    experiment_id: str
    experiment_name: str
    artifact_location: str
    model_id: str = ""


def _sqlite_file(tracking_uri: str) -> Path | None:
    if not tracking_uri.startswith("sqlite:///"):
        return None
    path = Path(urllib.parse.unquote(tracking_uri[len("sqlite:///") :].partition("?")[0]))
    return path if path.is_file() else None


def fast_run_model(
    tracking_uri: str, run_id: str, name: str, *, experiment: str | None = None
) -> RunModel | None:
    """The newest finished model ``name`` of a run in an sqlite store, in two indexed queries.

    Resolving ``runs:/`` through MLflow's client costs two ORM round trips whose queries are
    compiled on first use: 20-50 ms in a fresh process, more than a memory-mapped torch model
    takes to load. This reads the same rows read-only with :mod:`sqlite3`, with the filters
    ``search_logged_models`` applies (experiment, name, source run, not deleted), and the status
    decoded as MLflow's ``LoggedModelStatus.from_int`` does, without importing MLflow (2-3 s of
    a command line's time). It answers only the plain case, a run
    with a READY model; anything else (another store, no such run, an unfinished or missing
    model, a schema it does not know) returns None and goes through MLflow's client, which
    gives the full error. With ``experiment`` (a name or id, looked up as
    :func:`find_experiment` does: by name first), the run must also be in that experiment.
    """
    db = _sqlite_file(tracking_uri)
    if db is None:
        return None
    import sqlite3

    try:
        with contextlib.closing(
            sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
        ) as db_conn:
            run = db_conn.execute(
                "SELECT r.experiment_id, e.name FROM runs r JOIN experiments e "
                "ON e.experiment_id = r.experiment_id WHERE r.run_uuid = ?",
                (run_id,),
            ).fetchone()
            if run is None:
                return None
            if experiment is not None:
                named = db_conn.execute(
                    "SELECT experiment_id FROM experiments WHERE name = ?", (str(experiment),)
                ).fetchone()
                wanted = str(named[0]) if named is not None else str(experiment)
                if wanted != str(run[0]):
                    return None
            models = db_conn.execute(
                "SELECT artifact_location, status, creation_timestamp_ms, model_id "
                "FROM logged_models "
                "WHERE experiment_id = ? AND name = ? AND source_run_id = ? "
                "AND lifecycle_stage != 'deleted'",
                (run[0], name, run_id),
            ).fetchall()
    except (sqlite3.Error, ValueError):
        return None
    if any(m[1] not in LOGGED_MODEL_STATUS for m in models):  # a status this code does not know
        return None
    ready = [m for m in models if LOGGED_MODEL_STATUS[m[1]] == "READY"]
    if not ready:
        return None
    newest = max(ready, key=lambda m: m[2])
    return RunModel(str(run[0]), str(run[1]), str(newest[0]), str(newest[3]))


def artifact_uri_of(model_uri: str, identity: dict[str, str] | None = None) -> str:
    """Resolve ``runs:/``, ``models:/`` and plain URIs to where the bundle's files are stored.

    ``identity`` receives where the URI says the bundle was published, as the tracking store
    resolves it: ``run_id``, ``name`` and the ``model_id`` of the run's newest finished model
    for ``runs:/``; the ``model_id`` (and the ``run_id`` that logged it) of the logged model a
    registered version or alias stands for, or that ``models:/<model_id>`` names. A signed
    bundle must record the same (see :func:`check_identity`): another one signed with the same
    key, put in its folder, is refused.
    """
    identity = identity if identity is not None else {}
    parsed = urllib.parse.urlparse(model_uri)
    if parsed.scheme == "runs":
        run_id, _, name = parsed.path.lstrip("/").partition("/")
        name = name.strip("/") or "model"
        identity.update(run_id=run_id, name=name)
        check_lookup_store()
        tracking_uri = current_tracking_uri()
        fast = fast_run_model(tracking_uri, run_id, name) if tracking_uri else None
        if fast is not None:
            identity["model_id"] = fast.model_id
            return relocate(fast.artifact_location, tracking_uri)
    elif parsed.scheme != "models":
        return model_uri
    else:
        check_lookup_store()
    return relocate(_artifact_uri_of(model_uri, parsed, identity), current_tracking_uri())


def _artifact_uri_of(model_uri: str, parsed: Any, identity: dict[str, str]) -> str:
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        if parsed.scheme == "runs":
            run_id, name = identity["run_id"], identity["name"]
            run = find_run(client, run_id)
            mine = [
                m
                for m in logged_models(client, run.info.experiment_id, name)
                if m.source_run_id == run_id
            ]
            # A save killed midway leaves a PENDING model: use the newest finished one.
            ready = [m for m in mine if str(m.status) == "READY"]
            if ready:
                newest = max(ready, key=lambda m: m.creation_timestamp)
                identity["model_id"] = str(newest.model_id)
                return str(newest.artifact_location)
            if mine:
                raise NotFoundError(
                    f"The model {name!r} of run {run_id!r} was never finished (status "
                    f"{mine[0].status}): its save was interrupted. Save it again."
                )
            folder = f"{run.info.artifact_uri.rstrip('/')}/{name}"
            local = local_path(relocate(folder, current_tracking_uri()))
            if local is not None and not local.exists():
                names = sorted(
                    {
                        m.name
                        for m in logged_models(client, run.info.experiment_id)
                        if m.source_run_id == run_id
                    }
                )
                raise NotFoundError(
                    f"Run {run_id!r} has no model named {name!r}; its models: {names}. Load "
                    + (f"'runs:/{run_id}/{names[0]}'." if names else "another run.")
                )
            return folder
        return _registry_artifact_uri(client, model_uri, identity)
    except MlflowException as e:
        raise NotFoundError(
            f"Cannot resolve {model_uri!r}: {e.message}. Check the model name, version or alias "
            "(models:/<name>/<version>, models:/<name>@<alias>), and that MLflow points at the "
            "tracking store that holds it (mlflow.set_tracking_uri or MLFLOW_TRACKING_URI)."
        ) from e


def logged_models(client: Any, experiment_id: str, name: str | None = None) -> list[Any]:
    """Every logged model of an experiment (named ``name``, if given), all pages of them."""
    out: list[Any] = []
    token = None
    where = f"name = '{name}'" if name is not None else None
    while True:
        page = client.search_logged_models(
            experiment_ids=[experiment_id], filter_string=where, page_token=token
        )
        out.extend(page)
        token = page.token
        if not token:
            return out


def _registry_artifact_uri(client: Any, model_uri: str, identity: dict[str, str]) -> str:
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    parsed = _mlflow.parse_model_uri(model_uri)
    if parsed.model_id is not None and parsed.name is None:
        identity["model_id"] = str(parsed.model_id)
        return str(client.get_logged_model(parsed.model_id).artifact_location)
    name, version = get_model_name_and_version(client, model_uri)
    # The version's own record names the logged model (and run) it stands for; its download
    # URI is a plain path in a local store and on a proxied server, which names nothing.
    registered = client.get_model_version(name, version)
    logged = _model_id_of(str(registered.source or "")) or registered.model_id
    if logged:
        identity["model_id"] = str(logged)
    if registered.run_id:
        identity["run_id"] = str(registered.run_id)
    source = client.get_model_version_download_uri(name, version)
    if str(source).startswith("models:/"):
        model_id = str(source)[len("models:/") :].strip("/")
        identity["model_id"] = model_id
        return str(client.get_logged_model(model_id).artifact_location)
    return str(source)


#: The fields of a place of publication, as a message names them.
_IDENTITY_ORDER = ("run_id", "name", "model_id", "experiment_id")


def _model_id_of(source: str) -> str | None:
    """The logged model a version's source names (``models:/<model_id>``), if it names one."""
    if not source.startswith("models:/"):
        return None
    ref = source[len("models:/") :].strip("/")
    return ref if ref and "/" not in ref and "@" not in ref else None


def check_identity(
    published: Mapping[str, Any], expected: Mapping[str, str], bundle: str, signed: bool
) -> None:
    """Refuse a signed bundle found where another was published (one put in another's place).

    ``published`` is what the manifest records (``log_bundle`` writes the run, name, model id
    and experiment into what is signed); ``expected`` what the URI resolved to.

    Raises:
        IntegrityError: Signed, and the two differ, or the bundle records none while a URI
            names a place.
    """
    from cloudflow.exceptions import IntegrityError

    if not expected:
        return
    if not published:
        if signed:
            raise IntegrityError(
                f"The signed bundle at {bundle!r} records no place of publication (it was not "
                "logged with log_bundle), and it is loaded by a URI that names one: refusing it. "
                "Load it by its folder, or log it with log_bundle(signing_key=...)."
            )
        return
    differ = [
        f"{key} {published[key]!r}, not {value!r}"
        for key, value in sorted(expected.items(), key=lambda kv: _IDENTITY_ORDER.index(kv[0]))
        if key in published and str(published[key]) != value
    ]
    if not differ:
        return
    message = (
        f"The bundle at {bundle!r} was published with {', '.join(differ)} as the URI asks: "
        "it was put in another bundle's place"
    )
    if signed:
        raise IntegrityError(f"{message}. Refusing to load it; log the model again.")
    _logger.warning(
        "%s. It loads (unsigned bundles are not checked); sign bundles to refuse.", message
    )


def local_bundle_dir(
    model_uri: str | os.PathLike[str], identity: dict[str, str] | None = None
) -> tuple[Path, bool]:
    """A local folder holding the bundle, and whether it is a temporary download.

    A bundle in a local store is read where it is: no copy of its weights.
    """
    text = os.fspath(model_uri)
    local = local_path(text)
    if local is not None:
        return local, False
    artifact_uri = artifact_uri_of(text, identity)
    local = local_path(artifact_uri)
    if local is not None:
        return local, False
    import mlflow

    # Into a folder of our own, deleted whole by discard_download: MLflow's own would leave
    # an empty folder in the temp dir on every load.
    root = tempfile.mkdtemp(prefix=_DOWNLOAD_PREFIX)
    try:
        folder = mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=root)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return Path(folder), True


_DOWNLOAD_PREFIX = "cloudflow-download-"

_HAND_OVER = (
    "To hand a bundle to another machine, copy the whole store folder (mlflow.db with its "
    "artifacts/), or export the one bundle: `cloudflow export MODEL_URI FOLDER "
    "--tracking-uri STORE`, then load FOLDER."
)


def _missing(model_uri: str, folder: Path) -> NotFoundError:
    """The error for a bundle whose folder is not there, with what the user likely meant."""
    if "://" not in model_uri and ":/" not in model_uri:
        name = Path(model_uri).name
        if len(name) == 32 and all(c in "0123456789abcdef" for c in name):
            return NotFoundError(
                f"No bundle at {model_uri!r}: no such folder. {name!r} looks like a run id: "
                f"load its model with 'runs:/{name}/model' (with MLflow pointed at the store: "
                "mlflow.set_tracking_uri, MLFLOW_TRACKING_URI or prepare_env)."
            )
        return NotFoundError(
            f"No bundle at {model_uri!r}: the folder does not exist. Check the path, or give a "
            "model URI ('runs:/<run_id>/model', 'models:/<name>/<version>')."
        )
    return NotFoundError(
        f"The tracking store records the bundle {model_uri!r} at {str(folder)!r}, which does "
        "not exist: its files were deleted, or the store's artifacts/ folder was not copied "
        f"with its mlflow.db. {_HAND_OVER}"
    )


def discard_download(folder: Path) -> None:
    """Delete a bundle folder ``local_bundle_dir`` downloaded, with the folder made for it."""
    root = folder.parent if folder.parent.name.startswith(_DOWNLOAD_PREFIX) else folder
    shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def bundle_dir(
    model_uri: str | os.PathLike[str],
    *,
    keep: bool = False,
    identity: dict[str, str] | None = None,
) -> Iterator[tuple[Path, bool]]:
    """The local folder of a bundle while the block runs, and whether it is a download.

    A download (a remote store) is deleted when the block ends, unless ``keep`` is true and the
    block ends without an error: the caller then owns it and deletes it with
    :func:`discard_download`. Memory-mapped weights stay valid, since unlinking a file keeps its
    mappings.

    Raises:
        NotFoundError: The run, model or path does not exist.
    """
    from cloudflow import _progress

    try:
        with _progress.mlflow_download_bars():
            folder, temporary = local_bundle_dir(model_uri, identity)
    except CloudflowError:
        raise
    except Exception as e:
        translated = store_error(e)
        if translated is not None:
            raise translated from e
        raise NotFoundError(
            f"Cannot find the bundle {os.fspath(model_uri)!r}: {e}. {_HAND_OVER}"
        ) from e
    if not temporary and not folder.exists():
        raise _missing(os.fspath(model_uri), folder)
    kept = False
    try:
        yield folder, temporary
        kept = temporary and keep
    finally:
        if temporary and not kept:
            discard_download(folder)


def run_in_experiment(client: Any, experiment: str, run_id: str) -> Any:
    """The run ``run_id``, checked to belong to the experiment named or numbered ``experiment``."""
    found = find_experiment(client, experiment)
    run = find_run(client, run_id)
    if run.info.experiment_id != found.experiment_id:
        raise NotFoundError(
            f"Run {run_id!r} is not in experiment {experiment!r} ({found.experiment_id}): it "
            f"belongs to experiment {run.info.experiment_id}. Check the experiment name and the "
            "run id, or pass the run's own experiment."
        )
    return run
