"""The ``cloudflow`` command: look into a bundle, call its predict function, free shared files.

Examples::

    cloudflow inspect ./bundle
    cloudflow inspect runs:/<run_id>/model --tracking-uri ./cloudflow_store --json
    cloudflow predict ./bundle --param input_type=sentiment --param data="I love it"
    cloudflow predict models:/sentiment@champion --tracking-uri http://127.0.0.1:5000 --json in.json
    cloudflow list --tracking-uri ./cloudflow_store
    cloudflow gc --tracking-uri ./cloudflow_store
    python -m cloudflow --help
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from typing import Any

import click

from cloudflow._version import __version__

_TRACKING_HELP = (
    "Tracking store for runs:/ and models:/ URIs: a folder (as given to prepare_env) or a server "
    "or database URI. Default: $MLFLOW_TRACKING_URI."
)


def _use_tracking_uri(tracking_uri: str | None, model_uri: str) -> None:
    """Point MLflow at an existing store: the commands that use it only read.

    Without one, a ``runs:/`` or ``models:/`` URI would make MLflow create an empty store in
    the current folder (its default, ``sqlite:///mlflow.db``): refuse instead. A folder store
    is given to MLflow through ``MLFLOW_TRACKING_URI``, so a command that can answer from the
    folder itself (``runs:/`` in an sqlite store) never imports MLflow (2-3 s).
    """
    import os

    from cloudflow.store import tracking as _store

    if not tracking_uri:
        if model_uri.startswith(("runs:/", "models:/")):
            raise click.UsageError(
                f"{model_uri} is looked up in a tracking store: give it with --tracking-uri "
                "STORE (the folder or server the model was saved into) or MLFLOW_TRACKING_URI."
            )
        return
    uri = _store.existing_store_uri(tracking_uri)  # an existing store: never creates one
    os.environ["MLFLOW_TRACKING_URI"] = uri
    if "mlflow" in sys.modules:
        import mlflow

        mlflow.set_tracking_uri(uri)


def _configure_logging(level: str) -> None:
    logger = logging.getLogger("cloudflow")
    logger.setLevel(level.upper())
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("cloudflow %(levelname)s %(message)s"))
        logger.addHandler(handler)


def _jsonable(value: Any) -> Any:
    """What ``json.dumps`` cannot write itself: numpy, pandas, sets; anything else as repr."""
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    if hasattr(value, "to_dict"):  # pandas
        try:
            return value.to_dict(orient="records")
        except TypeError:
            return value.to_dict()
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return repr(value)


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False, default=_jsonable)


def _parse_param(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise click.BadParameter(
            f"{text!r} is not NAME=VALUE. Write e.g. --param text='I love it' or --param top_k=3.",
            param_hint="'--param'",
        )
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


class PredictFunctionError(Exception):
    """What the bundle's own predict function raised, for a one-line message."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


_TRACEBACK_KEY = "cloudflow.traceback"


def _set_traceback(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.meta[_TRACEBACK_KEY] = True


_traceback_option = click.option(
    "--traceback",
    is_flag=True,
    expose_value=False,
    callback=_set_traceback,
    help="On an error, print the full traceback instead of a one-line message.",
)


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines() or [""]
    more = f" [{len(lines) - 1} more line(s): --traceback shows all]" if len(lines) > 1 else ""
    return f"{type(e).__name__}: {lines[0]}{more}"


class _CloudflowErrors(click.Group):
    """Turn cloudflow's, MLflow's and the predict function's errors into one-line messages.

    Exit code 1. With ``--traceback`` the full traceback is printed to stderr instead.
    """

    def invoke(self, ctx: click.Context) -> Any:
        from cloudflow.exceptions import CloudflowError

        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as e:
            known = isinstance(e, CloudflowError | PredictFunctionError)
            if not known and type(e).__name__ != "MlflowException":
                raise
            if ctx.meta.get(_TRACEBACK_KEY):
                shown = e.error if isinstance(e, PredictFunctionError) else e
                traceback.print_exception(shown, file=sys.stderr)
                sys.exit(1)
            if isinstance(e, PredictFunctionError):
                raise click.ClickException(
                    f"the predict function raised {_one_line(e.error)}"
                ) from e
            raise click.ClickException(_one_line(e)) from e


@click.group(cls=_CloudflowErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cloudflow")
@_traceback_option
@click.option(
    "--log-level",
    default="WARNING",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    help="Level of the cloudflow logger (messages go to stderr).",
)
def main(log_level: str) -> None:
    """Inspect cloudflow bundles and call their predict function.

    A bundle is given by a local folder or an MLflow model URI: runs:/<run_id>/<name>,
    models:/<name>/<version>, models:/<name>@<alias> or models:/<model_id>.
    """
    _configure_logging(log_level)


@main.command()
@click.argument("model_uri")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", help=_TRACKING_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--no-verify", is_flag=True, help="Do not check the files' digests.")
def inspect(model_uri: str, tracking_uri: str | None, as_json: bool, no_verify: bool) -> None:
    """Show what the bundle MODEL_URI holds, without running any of its code.

    Models (flavor, size, class, parameter counts...), the predict function's parameters, the
    captured modules, requirements, the Python it was saved with, and whether every file still
    matches its digest. Exits with 2 if the integrity check fails.
    """
    from cloudflow.runtime.inspect import describe, format_text

    _use_tracking_uri(tracking_uri, model_uri)
    info = describe(model_uri, verify=not no_verify)
    click.echo(_dump(info) if as_json else format_text(info))
    if info["integrity"]["status"] == "FAILED":
        sys.exit(2)


@main.command()
@click.argument("model_uri")
@click.option(
    "--param",
    "-p",
    "params",
    multiple=True,
    metavar="NAME=VALUE",
    help="An input of the predict function; VALUE is read as JSON if it parses, else as a "
    "string (3 is a number, '\"3\"' a string). Repeat for each input.",
)
@click.option(
    "--json",
    "json_file",
    type=click.File("r", encoding="utf-8"),
    help="A JSON file ('-' for stdin) with the inputs: an object for one call, or a list of "
    "objects for one call each. --param values are added to every call.",
)
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", help=_TRACKING_HELP)
@click.option("--no-verify", is_flag=True, help="Do not check the files' digests.")
@_traceback_option
def predict(
    model_uri: str,
    params: tuple[str, ...],
    json_file: Any,
    tracking_uri: str | None,
    no_verify: bool,
) -> None:
    """Load the bundle MODEL_URI and print what its predict function returns, as JSON."""
    given = dict(_parse_param(p) for p in params)
    calls: list[dict[str, Any]]
    many = False
    if json_file is not None:
        try:
            loaded = json.load(json_file)
        except ValueError as e:
            raise click.BadParameter(f"not valid JSON: {e}", param_hint="'--json'") from e
        if isinstance(loaded, dict):
            calls = [{**loaded, **given}]
        elif isinstance(loaded, list) and all(isinstance(c, dict) for c in loaded):
            calls, many = [{**c, **given} for c in loaded], True
        else:
            raise click.BadParameter(
                "the file must hold a JSON object of inputs, or a list of such objects.",
                param_hint="'--json'",
            )
    else:
        calls = [given]

    from cloudflow import load_bundle

    _use_tracking_uri(tracking_uri, model_uri)
    bundle = load_bundle(model_uri, verify=not no_verify)
    results = [_call(bundle, call) for call in calls]
    click.echo(_dump(results if many else results[0]))


def _call(bundle: Any, call: dict[str, Any]) -> Any:
    from cloudflow.exceptions import CloudflowError

    try:
        return bundle.predict(**call)
    except CloudflowError:  # a wrong parameter name, a missing input: cloudflow's own message
        raise
    except Exception as e:
        raise PredictFunctionError(e) from e


@main.command("list")
@click.option(
    "--tracking-uri",
    envvar="MLFLOW_TRACKING_URI",
    required=True,
    help="The store: a folder (as given to prepare_env), or a server or database URI. "
    "Default: $MLFLOW_TRACKING_URI.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the listing as JSON.")
def list_(tracking_uri: str, as_json: bool) -> None:
    """List the experiments of a store and the runs that hold a cloudflow bundle.

    For each bundle: the run id, the model name (the NAME of runs:/<run id>/NAME), its models'
    flavors, its size, when it was saved (UTC), and the registered model versions made from it.
    Only reads: a folder that holds no store is refused, not created.
    """
    from cloudflow.store.listing import format_text, list_store

    listing = list_store(tracking_uri)
    click.echo(_dump(listing) if as_json else format_text(listing))


@main.command()
@click.argument("key_file", type=click.Path(dir_okay=False, writable=True))
def keygen(key_file: str) -> None:
    """Write a new Ed25519 key pair: KEY_FILE (private, mode 600) and its .pub.pem beside it.

    Sign bundles with the private key (signing_key=Path(KEY_FILE), CLOUDFLOW_SIGNING_KEY_FILE or
    `cloudflow sign`); give serving machines only the public key (trusted_keys=...,
    CLOUDFLOW_TRUSTED_KEYS or `cloudflow verify --key`).
    """
    from pathlib import Path

    from cloudflow.integrity import signing as _signing

    private = Path(key_file)
    if private.exists():
        raise click.UsageError(f"{key_file} exists: give a new file name (keys are not replaced).")
    public = _signing.generate_key_pair(private)
    signer = _signing.resolve_key(private)
    assert signer is not None
    click.echo(
        f"private key {private} (keep it secret)\npublic key  {public}\nkey id      {signer.key_id}"
    )


@main.command()
@click.argument("model_uri")
@click.option(
    "--key",
    "key_file",
    type=click.Path(exists=True, dir_okay=False),
    help="The Ed25519 private key (PEM) to sign with; default: $CLOUDFLOW_SIGNING_KEY_FILE or "
    "the secret in $CLOUDFLOW_SIGNING_KEY.",
)
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", help=_TRACKING_HELP)
@click.option(
    "--yes",
    is_flag=True,
    help="Sign a bundle whose MLflow environment files changed without asking (the difference "
    "is still printed).",
)
@_traceback_option
def sign(model_uri: str, key_file: str | None, tracking_uri: str | None, yes: bool) -> None:
    """Sign the bundle MODEL_URI in place (a folder, or a bundle of a local store).

    Every file is checked against the manifest first: a damaged bundle is refused, not signed.
    If only MLflow's environment files changed (mlflow models update-pip-requirements,
    add_libraries_to_model), the difference is printed and, once accepted, the bundle is signed
    as it is now. A bundle this key signed must still match that signature.
    """
    from pathlib import Path

    from cloudflow.integrity import manifest as _manifest
    from cloudflow.integrity import signing as _signing
    from cloudflow.store import tracking as _store

    signer = _signing.resolve_key(Path(key_file) if key_file else None)
    if signer is None:
        raise click.UsageError(
            "No key: give --key KEY.pem (cloudflow keygen writes one), or set "
            "CLOUDFLOW_SIGNING_KEY_FILE or CLOUDFLOW_SIGNING_KEY."
        )
    _use_tracking_uri(tracking_uri, model_uri)
    folder, temporary = _store.local_bundle_dir(model_uri)
    if temporary:
        _store.discard_download(folder)  # the download it made to find out
        raise click.UsageError(
            f"{model_uri} is stored on a server: sign it where it is saved (signing_key= at save "
            "time), or sign a local copy."
        )

    def review(difference: str) -> bool:
        click.echo(difference)
        return yes or click.confirm("Sign the bundle as it is now?", default=False)

    _manifest.sign_bundle(folder, signer, review)
    click.echo(f"signed {folder} ({signer.algorithm} {signer.key_id})")


@main.command()
@click.argument("model_uri")
@click.option(
    "--key",
    "key_files",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="A trusted Ed25519 public key (PEM); repeat for several. Default: the files in "
    "$CLOUDFLOW_TRUSTED_KEYS, or the secret in $CLOUDFLOW_SIGNING_KEY.",
)
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", help=_TRACKING_HELP)
@_traceback_option
def verify(model_uri: str, key_files: tuple[str, ...], tracking_uri: str | None) -> None:
    """Check that MODEL_URI is signed by a trusted key and that every file is as signed.

    Reads every file (no digest cache) and runs none of the bundle's code. Exits with 2 if the
    bundle is unsigned, signed by another key, or changed; a change to MLflow's environment
    files is named whether the bundle is signed or not.
    """
    from pathlib import Path

    from cloudflow.exceptions import IntegrityError
    from cloudflow.integrity import manifest as _manifest
    from cloudflow.integrity import signing as _signing
    from cloudflow.store import tracking as _store

    trust = _signing.resolve_trust(None, [Path(k) for k in key_files] if key_files else None)
    if trust is None:
        raise click.UsageError(
            "No key to verify with: give --key KEY.pub.pem, or set CLOUDFLOW_TRUSTED_KEYS (or "
            "CLOUDFLOW_SIGNING_KEY for an HMAC secret)."
        )
    _use_tracking_uri(tracking_uri, model_uri)
    from cloudflow.store import remote as _remote

    with _store.bundle_dir(model_uri) as (folder, _):
        try:
            # A server's bundle: its shared files come from the download cache first.
            data = folder / _manifest.DATA_DIR
            # The signature first: nothing is fetched, pruned or allocated on the word of a
            # manifest that is not checked (it names the files, their sizes and the server).
            manifest = _manifest.read_manifest(data, signing_key=trust)
            complete, load_folder = _remote.complete(data, manifest)
            try:
                report = _manifest.check_bundle(complete.parent, trust)
            finally:
                if load_folder is not None:
                    load_folder.close()
        except IntegrityError as e:
            click.echo(f"FAILED: {e}", err=True)
            if not (folder / _manifest.DATA_DIR / _manifest.SIGNATURE_FILE).is_file():
                change = _manifest.environment_change(folder)
                if change:
                    click.echo(
                        f"MLflow's environment files changed after saving: {change.summary()}",
                        err=True,
                    )
            sys.exit(2)
    click.echo(f"ok: {report['files']} files and the manifest as signed by {report['signed_by']}")


@main.command()
@click.option(
    "--tracking-uri",
    envvar="MLFLOW_TRACKING_URI",
    required=True,
    help="The store: a folder (as given to prepare_env) or a database URI whose experiments keep "
    "their artifacts in local folders. Default: $MLFLOW_TRACKING_URI.",
)
def gc(tracking_uri: str) -> None:
    """Free the shared model files that no bundle of the store holds any more.

    Bundles logged into a local store share their large files by hard link, and bundles logged
    to a tracking server keep them in their experiment's shared area (see the README's Storage
    and Tracking servers sections). Deleting a run's model leaves its files there; this command
    removes the ones no bundle names any more (in a local store, the next save into the
    experiment does too). Files a bundle or a save in progress names are never touched.
    """
    import mlflow
    from mlflow.entities import ViewType

    from cloudflow import _units
    from cloudflow.store import blobs as _blobs
    from cloudflow.store import tracking as _store

    uri = _store.existing_store_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)  # a server's mlflow-artifacts: URIs resolve against it
    client = mlflow.MlflowClient(uri)
    total_files = total_bytes = 0
    for experiment in client.search_experiments(view_type=ViewType.ALL):
        root = _store.local_path(str(experiment.artifact_location))
        if root is None:
            removed, freed = _remote_gc(client, experiment, uri)
        else:
            removed, freed = _blobs.remove_orphans(_blobs.blob_folder(root))
        if removed:
            click.echo(
                f"experiment {experiment.name!r} ({experiment.experiment_id}): removed "
                f"{removed} file(s), {_units.human_size(freed)}"
            )
        total_files += removed
        total_bytes += freed
    click.echo(f"freed {_units.human_size(total_bytes)} ({total_files} file(s) no bundle held)")


def _remote_gc(client: Any, experiment: Any, tracking_uri: str) -> tuple[int, int]:
    """Clean one experiment's shared area on a tracking server or remote artifact store."""
    import tempfile
    from pathlib import Path

    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    from cloudflow.store import remote as _remote
    from cloudflow.store import tracking as _store

    area = _remote.Area.of_experiment(str(experiment.artifact_location), tracking_uri)

    def manifests() -> Any:
        with tempfile.TemporaryDirectory(prefix="cloudflow-gc-") as tmp:
            for model in _store.logged_models(client, experiment.experiment_id):
                repo = get_artifact_repository(str(model.artifact_location))
                names = {f.path.rsplit("/", 1)[-1] for f in repo.list_artifacts("cloudflow")}
                if "manifest.json" not in names:
                    continue  # not a cloudflow bundle
                local = repo.download_artifacts("cloudflow/manifest.json", tmp)
                yield json.loads(Path(local).read_text(encoding="utf-8"))

    done = _remote.collect_garbage(area, manifests)
    return done.removed_files, done.removed_bytes


@main.command("export")
@click.argument("model_uri")
@click.argument("destination", type=click.Path(file_okay=False))
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", help=_TRACKING_HELP)
@_traceback_option
def export(model_uri: str, destination: str, tracking_uri: str | None) -> None:
    """Write a self-contained copy of MODEL_URI into the new folder DESTINATION.

    Every file is in it, the large ones a tracking server keeps in its shared area included:
    it loads with no server (cloudflow.load_bundle(DESTINATION), mlflow.pyfunc.load_model).
    """
    from cloudflow import export_bundle

    _use_tracking_uri(tracking_uri, model_uri)
    from cloudflow import _units
    from cloudflow.integrity import manifest as _manifest

    target = export_bundle(model_uri, destination)
    manifest = _manifest.read_manifest(target / _manifest.DATA_DIR)
    count, size = _units.bundle_totals(manifest.files, manifest.outer_files)
    click.echo(
        f"exported {model_uri} to {target} ({count} files and the manifest, "
        f"{_units.human_size(size)})"
    )


@main.group()
def cache() -> None:
    """The download cache of files from tracking servers (one per machine and user)."""


@cache.command("info")
def cache_info() -> None:
    """Where the cache is, what it holds and its size limit."""
    from cloudflow import _units
    from cloudflow.store import cache as _cache

    found = _cache.info()
    click.echo(f"path      {found.path}")
    click.echo(f"files     {found.files} ({_units.human_size(found.bytes)})")
    click.echo(f"limit     {_units.human_size(found.max_size)} (${_cache.MAX_SIZE_ENV})")
    click.echo(f"bundles   {found.bundles} put together from their files")


@cache.command("prune")
@click.option(
    "--max-size",
    default=None,
    help="Keep at most this much (500MB, 20GB, 0 for nothing). Default: the cache's limit, "
    "$CLOUDFLOW_CACHE_MAX_SIZE or 50GB.",
)
def cache_prune(max_size: str | None) -> None:
    """Remove the least recently used files until the cache fits in --max-size.

    Bundles loaded right now keep working: each holds its own link to its files.
    """
    from cloudflow import _units
    from cloudflow.store import cache as _cache

    limit = _cache.max_size() if max_size is None else _cache.parse_size(max_size, "--max-size")
    removed, freed = _cache.prune(limit)
    left = _cache.info()
    click.echo(
        f"removed {removed} file(s), {_units.human_size(freed)}; the cache holds "
        f"{left.files} file(s), {_units.human_size(left.bytes)}"
    )


if __name__ == "__main__":  # pragma: no cover
    main()
