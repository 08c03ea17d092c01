"""What a bundle holds, read from its manifest and MLmodel without unpickling anything.

Used by ``cloudflow inspect`` and for the MLflow tags :func:`cloudflow.log_bundle` sets on the run.
Nothing here imports a model's library or runs the bundle's code, so it is safe on a bundle one
does not trust yet.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cloudflow import _model_metadata, _units
from cloudflow.exceptions import IntegrityError
from cloudflow.integrity import digests as _digests
from cloudflow.integrity import environment as _environment
from cloudflow.integrity import manifest as _manifest
from cloudflow.integrity.manifest import DATA_DIR as DATA_DIR_NAME
from cloudflow.store import tracking as _store

#: Model metadata logged as run tags, in this order; values are shortened to TAG_VALUE_MAX.
TAG_KEYS = (
    "framework",
    "class",
    "task",
    "parameters",
    "trainable_parameters",
    "frozen_parameters",
    "dtype",
    "device",
    "layers",
)
TAG_VALUE_MAX = 250
_BATCH = 100  # MLflow's limit of tags per log_batch call
_logger = logging.getLogger("cloudflow")


def _model_sizes(manifest: _manifest.Manifest) -> dict[str, dict[str, int]]:
    out = {}
    for name, entry in manifest.models.items():
        prefix = entry.path.rstrip("/") + "/"
        sizes = [int(f.get("size", 0)) for r, f in manifest.files.items() if r.startswith(prefix)]
        out[name] = {"bytes": sum(sizes), "files": len(sizes)}
    return out


def _mlmodel(root: Path) -> dict[str, Any]:
    """MLmodel as a dict, safely (see :func:`cloudflow.integrity.environment.read_mlmodel`):
    anything
    unreadable gives ``{"unreadable": why}`` instead of a crash or a hang."""
    path = root / "MLmodel"
    if not os.path.lexists(path):
        return {}
    try:
        return _environment.read_mlmodel(path)
    except OSError as e:
        return {"unreadable": f"{type(e).__name__}: {e}"}
    except ValueError as e:
        return {"unreadable": str(e)}


#: The largest requirements.txt read (MLflow writes a few hundred bytes).
REQUIREMENTS_MAX = 1024 * 1024


def _requirements(path: Path, manifest: _manifest.Manifest) -> list[str]:
    """The lines of requirements.txt, or the manifest's list where it is missing or unreadable
    (a FIFO, a huge file: the integrity check names it)."""
    try:
        text = _digests.read_regular(path, REQUIREMENTS_MAX, "requirements.txt")
    except (OSError, IntegrityError):
        return list(manifest.requirements)
    return [line for line in text.decode("utf-8", "replace").splitlines() if line.strip()]


def _signature_inputs(mlmodel: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    signature = mlmodel.get("signature")
    inputs = signature.get("inputs") if isinstance(signature, dict) else None
    if not inputs:
        return None
    try:
        parsed = json.loads(inputs)
    except (TypeError, ValueError):
        return None
    return parsed if isinstance(parsed, list) else None


def _integrity(data: Path, manifest: _manifest.Manifest, verify: bool) -> dict[str, Any]:
    signature_file = getattr(_manifest, "SIGNATURE_FILE", "manifest.sig")
    status: dict[str, Any] = {"signed": (data / signature_file).is_file()}
    if not verify:
        return {"status": "not checked", **status}
    # A server's bundle: its shared files are checked as they download, not downloaded here.
    away = [rel for rel in manifest.shared.get("files", []) if not (data / rel).is_file()]
    if away:
        status["on_server"] = len(away)
        present = {rel: e for rel, e in manifest.files.items() if rel not in away}
        manifest = dataclasses.replace(manifest, files=present)
    try:
        verified = _manifest.verify_files(data, manifest, preload=False)
    except IntegrityError as e:
        return {"status": "FAILED", "error": str(e), **status}
    if verified.environment:
        status["environment_changed"] = verified.environment.summary()
    return {"status": "ok", **status}


def describe_folder(path: Path, *, verify: bool = True) -> dict[str, Any]:
    """Everything ``cloudflow inspect`` shows about the bundle in a local folder, as JSON data."""
    from cloudflow.runtime.read import data_dir_of

    data = data_dir_of(Path(path))
    manifest = _manifest.read_manifest(data)
    root = data.parent
    mlmodel = _mlmodel(root)
    sizes = _model_sizes(manifest)
    saved_python = manifest.python_version
    loads_on = list(manifest.python_versions) or [".".join(saved_python.split(".")[:2])]
    here = platform.python_version()
    requirements = _requirements(root / "requirements.txt", manifest)
    return {
        "path": str(root),
        "requirements_here": requirements_here(requirements),
        "format_version": manifest.format_version,
        "cloudflow_version": manifest.cloudflow_version,
        "mlflow_version": mlmodel.get("mlflow_version"),
        "created": mlmodel.get("utc_time_created"),
        "run_id": mlmodel.get("run_id"),
        "model_id": mlmodel.get("model_id"),
        "python": {
            "saved": saved_python,
            "here": here,
            "loads_on": loads_on,
            "compatible": ".".join(here.split(".")[:2]) in loads_on,
        },
        "predict_fn": dict(manifest.predict_fn),
        "models": {
            name: {
                "flavor": entry.flavor,
                "size_bytes": sizes[name]["bytes"],
                "files": sizes[name]["files"],
                "metadata": dict(entry.metadata),
                "model_metadata": dict(manifest.model_metadata.get(name) or {}),
            }
            for name, entry in manifest.models.items()
        },
        "size_bytes": _units.bundle_totals(manifest.files, manifest.outer_files)[1],
        "captured_modules": list(manifest.captured_modules),
        "captured_globals": dict(manifest.captured_globals),
        "requirements": requirements,
        "libraries": dict(manifest.libraries),
        "signature": _signature_inputs(mlmodel),
        "mlmodel_unreadable": mlmodel.get("unreadable"),
        "metadata": dict(manifest.metadata),
        "provenance": dict(manifest.provenance),
        "data_files": {
            name: {
                "kind": entry.get("kind"),
                "path": f"{DATA_DIR_NAME}/{entry.get('path')}",
                "size_bytes": entry.get("size"),
                "files": entry.get("files"),
            }
            for name, entry in sorted((manifest.data_files.get("entries") or {}).items())
        },
        "shared": (
            {
                "area": manifest.shared["area"],
                "files": list(manifest.shared["files"]),
                "size_bytes": sum(manifest.files[r]["size"] for r in manifest.shared["files"]),
            }
            if manifest.shared
            else {}
        ),
        "integrity": _integrity(data, manifest, verify),
    }


def describe(model_uri: str | os.PathLike[str], *, verify: bool = True) -> dict[str, Any]:
    """:func:`describe_folder` for any model URI (a remote bundle is downloaded to a temp dir).

    Raises:
        NotFoundError: The run, model or path does not exist.
        BundleFormatError: The folder is not a bundle, or its manifest is damaged.
    """
    with _store.bundle_dir(model_uri) as (folder, temporary):
        info = describe_folder(folder, verify=verify)
    info["uri"] = os.fspath(model_uri)
    if temporary:
        info["path"] = None
    return info


def _short(value: Any) -> str:
    if isinstance(value, list | tuple):
        value = ", ".join(str(v) for v in value)
    elif isinstance(value, dict):
        value = json.dumps(value, sort_keys=True, default=str)
    text = str(value)
    return text if len(text) <= TAG_VALUE_MAX else text[: TAG_VALUE_MAX - 3] + "..."


def metadata_tags(manifest: _manifest.Manifest, name: str = "model") -> dict[str, str]:
    """Run tags describing a bundle logged as ``name``: ``cloudflow.<name>.<model>.<key>``.

    Example:
        ``cloudflow.model.sentiment_model.class``: ``transformers.pipelines....Pipeline``,
        ``cloudflow.model.sentiment_model.parameters``: ``4386``.
    """
    prefix = f"cloudflow.{name}"
    tags = {
        f"{prefix}.predict_fn": _short(
            f"{manifest.predict_fn.get('name', '')}{manifest.predict_fn.get('signature', '')}"
        ),
        f"{prefix}.cloudflow_version": manifest.cloudflow_version,
        f"{prefix}.python_version": manifest.python_version,
    }
    checkouts = [c for c in manifest.provenance.get("git") or [] if isinstance(c, dict)]
    if checkouts:  # the checkout of the predict function's module, else the first
        main = next(
            (c for c in checkouts if manifest.predict_fn.get("module") in c.get("modules", [])),
            checkouts[0],
        )
        tags[f"{prefix}.git_commit"] = str(main.get("commit"))
        tags[f"{prefix}.git_dirty"] = str(bool(main.get("dirty"))).lower()
    sizes = _model_sizes(manifest)
    for model, entry in manifest.models.items():
        tags[f"{prefix}.{model}.flavor"] = entry.flavor
        for key in TAG_KEYS:
            value = entry.metadata.get(key)
            if value is not None and value != "":
                tags[f"{prefix}.{model}.{key}"] = _short(value)
        tags[f"{prefix}.{model}.size_bytes"] = str(sizes[model]["bytes"])
    tags.update(_model_metadata.tags(manifest.model_metadata, prefix, _short))
    return tags


def log_metadata_tags(client: Any, run_id: str, manifest: _manifest.Manifest, name: str) -> None:
    """Set :func:`metadata_tags` on the run; a failure is logged, never raised (tags inform)."""
    try:
        from mlflow.entities import RunTag

        tags = [RunTag(k, v) for k, v in metadata_tags(manifest, name).items()]
        for start in range(0, len(tags), _BATCH):
            client.log_batch(run_id, tags=tags[start : start + _BATCH])
    except Exception as e:
        _logger.warning("Could not tag run %s with the models' metadata: %s", run_id, e)


# --- text output of ``cloudflow inspect`` ----------------------------------------------------


def _fmt_number(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)


# Metadata keys shown on a model's line, in this order (trees to providers: boosted trees, ONNX).
_DETAIL_KEYS = (
    *("task", "dtype", "device", "layers", "n_features_in", "n_features", "n_classes"),
    *("trees", "rounds", "objective", "providers"),
)


def _model_details(meta: Mapping[str, Any]) -> list[str]:
    parts = []
    if "parameters" in meta:
        text = f"parameters {_fmt_number(meta['parameters'])}"
        if "trainable_parameters" in meta:
            text += (
                f" (trainable {_fmt_number(meta['trainable_parameters'])}, "
                f"frozen {_fmt_number(meta.get('frozen_parameters', 0))})"
            )
        parts.append(text)
    for key in _DETAIL_KEYS:
        if key in meta and meta[key] is not None:
            value = meta[key]
            value = ", ".join(map(str, value)) if isinstance(value, list) else value
            parts.append(f"{key} {_fmt_number(value)}")
    kinds = meta.get("layer_types")
    if isinstance(kinds, Mapping) and kinds:
        parts.append("layer types " + ", ".join(f"{k} x{n}" for k, n in kinds.items()))
    elements = meta.get("elements")
    if isinstance(elements, Mapping):  # a container: each element's key and flavor
        described = [f"{k} [{v.get('flavor')}]" for k, v in elements.items() if isinstance(v, dict)]
        parts.append("elements " + ", ".join(described))
    return parts


def _user_metadata_lines(given: Mapping[str, Any]) -> list[str]:
    """The metadata given for a model (``model_metadata=``): one line per key, and per metric
    of its training history the number of epochs, the first and the last value."""
    lines = []
    for key, value in given.items():
        if key == _model_metadata.HISTORY and isinstance(value, Mapping):
            for metric, values in value.items():
                if isinstance(values, list) and values:
                    epochs = f"{len(values)} epoch{'s' if len(values) != 1 else ''}"
                    lines.append(f"    history {metric}: {values[0]} -> {values[-1]} ({epochs})")
            continue
        text = json.dumps(value, default=str)
        lines.append(f"    {key}: {text if len(text) <= 200 else text[:197] + '...'}")
    return lines


def _type_text(spec: Mapping[str, Any]) -> str:
    kind = spec.get("type")
    if kind == "array" and isinstance(spec.get("items"), dict):
        return f"array<{_type_text(spec['items'])}>"
    if kind == "map" and isinstance(spec.get("values"), dict):
        return f"map<string, {_type_text(spec['values'])}>"
    return str(kind)


def format_text(info: Mapping[str, Any]) -> str:
    """The human-readable report of ``cloudflow inspect``: one section after the other."""
    sections = (
        _summary_lines(info),
        _model_lines(info),
        _data_file_lines(info),
        _module_lines(info),
        _requirement_lines(info),
        _signature_lines(info),
        _metadata_lines(info),
    )
    return "\n".join(line for section in sections for line in section)


def _summary_lines(info: Mapping[str, Any]) -> list[str]:
    """Where the bundle is, its function, the Python and versions it needs, its integrity."""
    lines: list[str] = []
    add = lines.append
    fn = info["predict_fn"]
    add(f"Bundle            {info.get('uri') or info['path']}")
    add(f"predict function  {fn.get('name', '?')}{fn.get('signature', '')}")
    add(f"inputs            {', '.join(fn.get('inputs', [])) or '(none)'}")
    py = info["python"]
    loads_on = py.get("loads_on") or []
    if len(loads_on) > 1:
        verdict = "loads here" if py["compatible"] else "will not load here"
        add(f"Python            saved under {py['saved']}; loads on {', '.join(loads_on)}")
        add(f"                  (this interpreter: {py['here']}, {verdict})")
    else:
        verdict = (
            "same minor version" if py["compatible"] else "DIFFERENT minor version: will not load"
        )
        add(f"Python            {py['saved']} (this interpreter: {py['here']}, {verdict})")
    add(
        f"cloudflow         {info['cloudflow_version']} (format {info['format_version']}), "
        f"MLflow {info.get('mlflow_version') or '?'}"
    )
    signed = ", signed" if info["integrity"].get("signed") else ""
    add(f"integrity         {_integrity_status(info)}{signed}")
    shared = info.get("shared") or {}
    if shared:
        size = _units.human_size(shared["size_bytes"])
        add(f"shared files      {len(shared['files'])} ({size}) in {shared['area']}")
    if info.get("run_id"):
        add(f"run               {info['run_id']}")
    if info.get("mlmodel_unreadable"):
        add(f"MLmodel           UNREADABLE: {info['mlmodel_unreadable']}")
    return lines


def _integrity_status(info: Mapping[str, Any]) -> str:
    integrity = info["integrity"]
    status = str(integrity["status"])
    if status == "FAILED":
        return f"FAILED: {integrity.get('error')}"
    if status == "ok" and integrity.get("environment_changed"):
        return (
            "ok, but MLflow's environment files changed after saving: "
            f"{integrity['environment_changed']} (they run nothing at load)"
        )
    if status == "ok" and integrity.get("on_server"):
        return (
            f"ok (the files here match their digests; the {integrity['on_server']} shared on "
            "the server are checked as a load downloads them)"
        )
    if status == "ok":
        return f"ok (every file matches its digest; {_units.human_size(info['size_bytes'])})"
    return status


def _model_lines(info: Mapping[str, Any]) -> list[str]:
    lines = ["", f"Models ({len(info['models'])})"]
    for name, model in info["models"].items():
        meta = model["metadata"]
        size = _units.human_size(model["size_bytes"])
        lines.append(f"  {name}  [{model['flavor']}]  {size}  {meta.get('class', '')}".rstrip())
        details = _model_details(meta)
        if details:
            lines.append("    " + " | ".join(details))
        lines.extend(_user_metadata_lines(model.get("model_metadata") or {}))
    return lines


def _data_file_lines(info: Mapping[str, Any]) -> list[str]:
    data_files = info.get("data_files") or {}
    if not data_files:
        return []
    lines = ["", f"Data files ({len(data_files)})"]
    for name, entry in data_files.items():
        count = entry.get("files") or 0
        what = f"folder, {count} file{'s' if count != 1 else ''}"
        kind = what if entry.get("kind") == "folder" else "file"
        size = _units.human_size(entry.get("size_bytes") or 0)
        lines.append(f"  {name}  {size}  ({kind})  {entry['path']}")
    return lines


def _module_lines(info: Mapping[str, Any]) -> list[str]:
    """The captured modules: the git checkouts they came from, each one's globals."""
    modules = info["captured_modules"]
    lines = ["", f"Captured modules ({len(modules)})"]
    add = lines.append
    for checkout in (info.get("provenance") or {}).get("git") or []:
        if not isinstance(checkout, dict):
            continue
        state = "with changes not committed" if checkout.get("dirty") else "as committed"
        held = ", ".join(str(m) for m in checkout.get("modules") or [])
        add(f"  git {str(checkout.get('commit'))[:12]} ({state}): {held}")
    report = info.get("captured_globals") or {}
    if modules and not report:  # bundles of format 2 and older captured modules whole
        add("  " + ", ".join(modules))
    for module in modules:
        entry = report.get(module)
        if entry is None:
            continue
        whole = f"  (whole: {entry['whole']})" if entry.get("whole") else ""
        add(f"  {module}{whole}")
        if entry.get("globals"):
            add("    globals:  " + ", ".join(entry["globals"]))
        if entry.get("left_out") and not entry.get("whole"):
            add("    left out: " + ", ".join(entry["left_out"]))
    for module, entry in sorted(report.items()):
        if isinstance(entry, dict) and entry.get("not_imported"):
            add(
                f"  not in the bundle: {module} (importing it at save raised "
                f"{entry['not_imported']})"
            )
    return lines


def _requirement_lines(info: Mapping[str, Any]) -> list[str]:
    lines = ["", f"Requirements ({len(info['requirements'])})"]
    here = {entry["requirement"]: entry for entry in info.get("requirements_here", [])}
    width = max((len(r) for r in info["requirements"]), default=0)
    for requirement in info["requirements"]:
        entry = here.get(requirement)
        note = ""
        if entry is not None and entry["status"] == "missing":
            note = "missing here"
        elif entry is not None and entry["status"] == "different":
            note = f"different here: {entry['installed']} installed"
        lines.append(f"  {requirement:<{width}}  {note}".rstrip())
    return lines


def _signature_lines(info: Mapping[str, Any]) -> list[str]:
    if not info.get("signature"):
        return []
    lines = ["", "Signature (inputs)"]
    for col in info["signature"]:
        required = "required" if col.get("required", True) else "optional"
        lines.append(f"  {col.get('name')}: {_type_text(col)} ({required})")
    return lines


def _metadata_lines(info: Mapping[str, Any]) -> list[str]:
    if not info.get("metadata"):
        return []
    lines = ["", "Metadata"]
    for key, value in info["metadata"].items():
        lines.append(f"  {key}: {json.dumps(value, default=str)}")
    return lines


def requirements_here(lines: list[str]) -> list[dict[str, Any]]:
    """How this environment meets each requirement line: installed, missing or different.

    Each entry has ``requirement`` (the line), ``installed`` (the installed version or None)
    and ``status``: ``"ok"``, ``"missing"``, ``"different"`` (a version the line excludes), or
    ``"not here"`` (an environment marker that leaves this interpreter out). Option lines
    (``--find-links ...``) and lines that do not parse are left out.
    """
    from importlib import metadata

    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.version import InvalidVersion, Version

    found = []
    for line in lines:
        text = line.split(" #")[0].strip()
        if not text or text.startswith(("-", "#")):
            continue
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            continue
        try:
            installed: str | None = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            installed = None
        if requirement.marker is not None and not requirement.marker.evaluate():
            status = "not here"
        elif installed is None:
            status = "missing"
        else:
            try:  # a local label (torch 2.13.0+cpu) is the same release as the pin
                release = Version(installed).public
                status = (
                    "ok"
                    if requirement.specifier.contains(release, prereleases=True)
                    else ("different")
                )
            except InvalidVersion:
                status = "ok"
        found.append({"requirement": line, "installed": installed, "status": status})
    return found
