"""Tamper-evident bundles: file digests, the manifest's checksum, signatures, the environment guard.

Everything is checked before anything of a bundle is unpickled. The tests prove it with pickles
that would create a sentinel folder the moment they were loaded, and with a model whose
``__setstate__`` does the same: the sentinel must not exist after a refused load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import platform
import random
import re
import shutil
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3
import mlflow.pyfunc
import pytest
from conftest import UserModules
from helpers import TRIPWIRE_MODELS

import cloudflow
from cloudflow.exceptions import (
    BundleArgumentError,
    EnvironmentMismatchError,
    IntegrityError,
)
from cloudflow.integrity import digests as _digests

KEY = "4f1c0f0e5b6a7d8e9f00112233445566778899aabbccddeeff0011223344556677"
OTHER_KEY = b"another secret of the same kind, not the one that signed"


# --- a small bundle, and ways to damage it ------------------------------------------------------


@pytest.fixture
def app(user_modules: UserModules, tmp_path: Path) -> Any:
    """A user module with a predict function and a model class that trips a wire when unpickled."""
    user_modules.write(
        {
            "tamper_app.py": TRIPWIRE_MODELS
            + textwrap.dedent(
                """
                def predict(scaler, wire, x):
                    return scaler.k * x

                def get(blob, i):
                    return blob[i]
                """
            )
        }
    )
    import tamper_app

    tamper_app.SENTINEL = tmp_path / "UNPICKLED"
    return tamper_app


def save(app: Any, path: Path, **kwargs: object) -> Path:
    models = {"scaler": app.Scaler(3), "wire": app.Tripwire(str(app.SENTINEL))}
    cloudflow.save_bundle(app.predict, models, path, **kwargs)
    return path


def payload(sentinel: Path) -> bytes:
    """An attacker's pickle: creates ``sentinel`` when loaded, then stands in for a function."""

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (eval, (f"__import__('os').mkdir({str(sentinel)!r}) or (lambda **kw: 'pwned')",))

    return pickle.dumps(Payload()) + pickle.dumps(None)


def data_files(bundle: Path) -> list[str]:
    data = bundle / "cloudflow"
    return sorted(
        p.relative_to(data).as_posix()
        for p in data.rglob("*")
        if p.is_file() and p.name not in ("manifest.json", "manifest.sig")
    )


def rewrite_manifest(bundle: Path, change: Callable[[dict], None]) -> None:
    """Edit the manifest as anyone can: change it, then recompute its documented checksum."""
    path = bundle / "cloudflow" / "manifest.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    body = {k: v for k, v in data.items() if k != "manifest_sha256"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    data["manifest_sha256"] = hashlib.sha256(canonical.encode("ascii")).hexdigest()
    path.write_text(json.dumps(data, indent=2, sort_keys=True), encoding="utf-8")


def _flip(path: Path, rng: random.Random) -> None:
    data = bytearray(path.read_bytes())
    i = rng.randrange(len(data))
    data[i] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))


def _truncate(path: Path, rng: random.Random) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: rng.randrange(len(data))])


def _append(path: Path, rng: random.Random) -> None:
    path.write_bytes(path.read_bytes() + b"\0")


def _same_size_garbage(path: Path, rng: random.Random) -> None:
    path.write_bytes(rng.randbytes(path.stat().st_size))


def _delete(path: Path, rng: random.Random) -> None:
    path.unlink()


def _symlink_elsewhere(path: Path, rng: random.Random) -> None:
    data_dir = next(p for p in path.parents if p.name == "cloudflow")
    outside = data_dir.parent.parent / f"outside-{data_dir.parent.name}-{path.name}"
    outside.write_bytes(path.read_bytes() + b"x")
    path.unlink()
    path.symlink_to(outside)


def _fifo(path: Path, rng: random.Random) -> None:
    path.unlink()
    os.mkfifo(path)


TAMPERS: dict[str, Callable[[Path, random.Random], None]] = {
    "flip_bit": _flip,
    "truncate": _truncate,
    "append_byte": _append,
    "same_size_garbage": _same_size_garbage,
    "delete": _delete,
    "symlink_elsewhere": _symlink_elsewhere,
}
if hasattr(os, "mkfifo"):
    TAMPERS["fifo"] = _fifo  # a load that opened it would hang


# --- the manifest -------------------------------------------------------------------------------


def test_manifest_lists_every_file_with_blake3_and_size(app: Any, tmp_path: Path) -> None:
    bundle = save(app, tmp_path / "bundle")
    manifest = json.loads((bundle / "cloudflow" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["format_version"] == 3
    assert sorted(manifest["files"]) == data_files(bundle)
    for rel, entry in manifest["files"].items():
        raw = (bundle / "cloudflow" / rel).read_bytes()
        assert entry == {"blake3": blake3.blake3(raw).hexdigest(), "size": len(raw)}
    assert len(manifest["manifest_sha256"]) == 64
    assert cloudflow.load_bundle(bundle).predict(x=2) == 6


def test_format_1_bundles_with_sha256_digests_still_load_and_are_checked(
    app: Any, tmp_path: Path
) -> None:
    bundle = save(app, tmp_path / "bundle")

    def as_format_1(m: dict[str, Any]) -> None:
        m["format_version"] = 1
        for rel in list(m["files"]):
            raw = (bundle / "cloudflow" / rel).read_bytes()
            m["files"][rel] = {"sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw)}

    rewrite_manifest(bundle, as_format_1)
    assert cloudflow.load_bundle(bundle).predict(x=2) == 6
    _flip(bundle / "cloudflow" / "code.pkl", random.Random(3))
    with pytest.raises(IntegrityError, match=r"'code\.pkl'.*does not match the sha256 digest"):
        cloudflow.load_bundle(bundle)


# --- tampering ----------------------------------------------------------------------------------


@pytest.mark.parametrize("tamper", sorted(TAMPERS))
def test_tampered_file_is_named_and_refused_before_unpickling(
    app: Any, tmp_path: Path, tamper: str
) -> None:
    bundle = save(app, tmp_path / "bundle")
    rng = random.Random(tamper)
    for rel in data_files(bundle):
        copy = tmp_path / f"copy-{rel.replace('/', '_')}"
        shutil.copytree(bundle, copy, symlinks=True)
        TAMPERS[tamper](copy / "cloudflow" / rel, rng)
        with pytest.raises(IntegrityError, match=re.escape(repr(rel))):
            cloudflow.load_bundle(copy)
        assert not app.SENTINEL.exists()


@pytest.mark.parametrize("where", ["cloudflow/EXTRA.py", "cloudflow/models/scaler/extra.pkl"])
def test_added_file_is_named(app: Any, tmp_path: Path, where: str) -> None:
    bundle = save(app, tmp_path / "bundle")
    (bundle / where).write_bytes(pickle.dumps("added later"))
    rel = where.removeprefix("cloudflow/")
    with pytest.raises(IntegrityError, match=rf"does not list: {re.escape(repr(rel))}"):
        cloudflow.load_bundle(bundle)


@pytest.mark.parametrize("loader", ["load_bundle", "mlflow.pyfunc.load_model"])
@pytest.mark.parametrize("target", ["code.pkl", "models/scaler/model.pkl"])
def test_a_replaced_pickle_never_runs(app: Any, tmp_path: Path, loader: str, target: str) -> None:
    bundle = save(app, tmp_path / "bundle")
    sentinel = tmp_path / "PAYLOAD_RAN"
    (bundle / "cloudflow" / target).write_bytes(payload(sentinel))
    load = cloudflow.load_bundle if loader == "load_bundle" else mlflow.pyfunc.load_model
    with pytest.raises(IntegrityError, match=re.escape(repr(target))):
        load(str(bundle))
    assert not sentinel.exists()
    assert not app.SENTINEL.exists()


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda t: t.replace('"3.', '"2.', 1), id="a_version"),
        pytest.param(lambda t: t.replace('"pickle"', '"pickld"', 1), id="flavor_name"),
        pytest.param(lambda t: re.sub(r'"size": \d+', '"size": 1', t, count=1), id="size"),
        pytest.param(lambda t: re.sub(r"[0-9a-f]{64}", "0" * 64, t, count=1), id="digest"),
    ],
)
def test_a_damaged_manifest_is_refused(app: Any, tmp_path: Path, edit: Callable) -> None:
    bundle = save(app, tmp_path / "bundle")
    path = bundle / "cloudflow" / "manifest.json"
    text = path.read_text(encoding="utf-8")
    assert edit(text) != text
    path.write_text(edit(text), encoding="utf-8")
    with pytest.raises(IntegrityError, match=r"manifest\.json.*checksum"):
        cloudflow.load_bundle(bundle)
    assert not app.SENTINEL.exists()


def test_verify_false_skips_the_digests_only_without_a_key(
    app: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = save(app, tmp_path / "bundle", signing_key=KEY)
    (bundle / "cloudflow" / "models" / "scaler" / "notes.txt").write_text("added")
    assert cloudflow.load_bundle(bundle, verify=False).predict(x=1) == 3
    with pytest.raises(IntegrityError, match="notes.txt"):
        cloudflow.load_bundle(bundle, verify=False, signing_key=KEY)
    monkeypatch.setenv("CLOUDFLOW_SIGNING_KEY", KEY)
    with pytest.raises(IntegrityError, match="notes.txt"):
        cloudflow.load_bundle(bundle, verify=False)


# --- signing ------------------------------------------------------------------------------------


def test_digests_alone_do_not_stop_a_deliberate_rewrite_a_signature_does(
    app: Any, tmp_path: Path
) -> None:
    """Whoever can write the files can rewrite their digests: only a key makes that show."""

    target = "models/wire/model.pkl"

    def attack(bundle: Path, sentinel: Path) -> None:
        raw = payload(sentinel)
        (bundle / "cloudflow" / target).write_bytes(raw)
        rewrite_manifest(
            bundle,
            lambda m: m["files"].update(
                {target: {"blake3": blake3.blake3(raw).hexdigest(), "size": len(raw)}}
            ),
        )

    unsigned = save(app, tmp_path / "unsigned")
    attack(unsigned, tmp_path / "RAN_UNSIGNED")
    assert cloudflow.load_bundle(unsigned).predict(x=1) == 3
    assert (tmp_path / "RAN_UNSIGNED").exists()  # the attacker's code ran, unnoticed

    signed = save(app, tmp_path / "signed", signing_key=KEY)
    attack(signed, tmp_path / "RAN_SIGNED")
    with pytest.raises(IntegrityError, match="changed after signing"):
        cloudflow.load_bundle(signed, signing_key=KEY)
    with pytest.raises(IntegrityError, match="changed after signing"):
        cloudflow.load_bundle(signed, signing_key=KEY.encode())
    assert not (tmp_path / "RAN_SIGNED").exists()
    assert not app.SENTINEL.exists()


def test_signed_bundle_loads_with_its_key_or_without_one(app: Any, tmp_path: Path) -> None:
    bundle = save(app, tmp_path / "bundle", signing_key=KEY)
    record = json.loads((bundle / "cloudflow" / "manifest.sig").read_text(encoding="utf-8"))
    assert record["algorithm"] == "hmac-sha256"
    assert KEY not in (bundle / "cloudflow" / "manifest.sig").read_text(encoding="utf-8")
    assert cloudflow.load_bundle(bundle, signing_key=KEY).predict(x=2) == 6
    assert cloudflow.load_bundle(bundle).predict(x=2) == 6  # no key configured: not checked
    assert (
        "manifest.sig"
        not in json.loads((bundle / "cloudflow" / "manifest.json").read_text(encoding="utf-8"))[
            "files"
        ]
    )


def test_wrong_key_is_refused_naming_both_key_ids(app: Any, tmp_path: Path) -> None:
    bundle = save(app, tmp_path / "bundle", signing_key=KEY)
    with pytest.raises(IntegrityError, match=r"another key \(key id '[0-9a-f]{16}'"):
        cloudflow.load_bundle(bundle, signing_key=OTHER_KEY)
    assert not app.SENTINEL.exists()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        pytest.param(lambda sig: sig.unlink(), "is not signed", id="signature_deleted"),
        pytest.param(lambda sig: sig.write_text("{not json"), "damaged", id="signature_garbage"),
        pytest.param(
            lambda sig: sig.write_text(sig.read_text().replace("hmac-sha256", "md5")),
            "'md5'",
            id="other_algorithm",
        ),
    ],
)
def test_unsigned_or_damaged_signature_is_refused_with_a_key(
    app: Any, tmp_path: Path, damage: Callable[[Path], None], message: str
) -> None:
    bundle = save(app, tmp_path / "bundle", signing_key=KEY)
    damage(bundle / "cloudflow" / "manifest.sig")
    with pytest.raises(IntegrityError, match=re.escape(message)):
        cloudflow.load_bundle(bundle, signing_key=KEY)
    assert not app.SENTINEL.exists()


def test_the_environment_variable_signs_and_checks(
    app: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    unsigned = save(app, tmp_path / "unsigned")
    monkeypatch.setenv("CLOUDFLOW_SIGNING_KEY", KEY)
    signed = save(app, tmp_path / "signed")
    assert (signed / "cloudflow" / "manifest.sig").is_file()
    for load in (cloudflow.load_bundle, mlflow.pyfunc.load_model):
        with pytest.raises(IntegrityError, match=r"is not signed.*CLOUDFLOW_SIGNING_KEY"):
            load(str(unsigned))
    assert not app.SENTINEL.exists()
    assert cloudflow.load_bundle(signed).predict(x=1) == 3
    assert mlflow.pyfunc.load_model(str(signed)).predict({"x": 2}) == 6


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (b"", "signing_key is empty"),
        (b"short", "signing_key is 5 bytes long; a signing secret needs at least 32"),
        (12345, r"signing_key must be a secret \(str or bytes\), an Ed25519 private key.*got int"),
    ],
)
def test_a_bad_key_is_refused_before_anything_is_written(
    app: Any, tmp_path: Path, key: object, message: str
) -> None:
    with pytest.raises(BundleArgumentError, match=message):
        save(app, tmp_path / "bundle", signing_key=key)
    assert not (tmp_path / "bundle").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["user_src"]


# --- the environment guard ----------------------------------------------------------------------


def test_another_python_minor_is_refused_before_unpickling(
    app: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Saved (for real, digests and signature included) by a Python that reports 3.99.1."""
    with monkeypatch.context() as m:
        m.setattr(platform, "python_version", lambda: "3.99.1")
        bundle = save(app, tmp_path / "bundle", signing_key=KEY)
    manifest = json.loads((bundle / "cloudflow" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["python_version"] == "3.99.1"
    for key in (None, KEY):
        with pytest.raises(EnvironmentMismatchError, match=r"3\.99\.1.*allow_python_mismatch"):
            cloudflow.load_bundle(bundle, signing_key=key)
    with pytest.raises(EnvironmentMismatchError, match=r"Python 3\.99"):
        mlflow.pyfunc.load_model(str(bundle))
    assert not app.SENTINEL.exists()
    forced = cloudflow.load_bundle(bundle, allow_python_mismatch=True, signing_key=KEY)
    assert forced.predict(x=2) == 6
    assert app.SENTINEL.exists()  # the tripwire does work


def test_an_edited_python_version_is_caught_by_the_signature_not_by_the_guard(
    app: Any, tmp_path: Path
) -> None:
    """Without a key an edited manifest is believed (the guard fires); with one it is refused."""
    bundle = save(app, tmp_path / "bundle", signing_key=KEY)
    rewrite_manifest(bundle, lambda m: m.update(python_version="3.2.0"))
    with pytest.raises(EnvironmentMismatchError, match=r"3\.2\.0"):
        cloudflow.load_bundle(bundle)
    with pytest.raises(IntegrityError, match="changed after signing"):
        cloudflow.load_bundle(bundle, signing_key=KEY)
    assert not app.SENTINEL.exists()


def test_other_library_versions_give_exactly_one_warning_listing_them(
    user_modules: UserModules,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    user_modules.write(
        {
            "versions_app.py": """
                import numpy as np

                def predict(table, x):
                    return float(np.float64(x) * table["k"])
            """
        }
    )
    import versions_app

    from cloudflow import _packages

    real = _packages.distribution_version
    fake = {"cloudpickle": "0.0.1", "numpy": "0.0.2"}
    with monkeypatch.context() as m:
        # The save writes these versions into the bundle.
        m.setattr(_packages, "distribution_version", lambda d: fake.get(d) or real(d))
        cloudflow.save_bundle(versions_app.predict, {"table": {"k": 2}}, tmp_path / "bundle")
    caplog.set_level(logging.WARNING, logger="cloudflow")
    assert cloudflow.load_bundle(tmp_path / "bundle").predict(x=2) == 4.0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    message = warnings[0].getMessage()
    assert f"cloudpickle 0.0.1 -> {real('cloudpickle')}" in message
    assert f"numpy 0.0.2 -> {real('numpy')}" in message


# --- the digest cache ---------------------------------------------------------------------------


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("CLOUDFLOW_CACHE_DIR", str(folder))
    monkeypatch.delenv("CLOUDFLOW_DIGEST_CACHE", raising=False)
    return folder / "digests"


def big_bundle(app: Any, path: Path) -> Path:
    """A bundle with one file above the cache's size threshold (a data file, not a pickle:
    pickles are read once and hashed in memory, never taken from the cache)."""
    table = path.parent / "blob.bin"
    table.write_bytes(bytes(range(256)) * (_digests.DIGEST_CACHE_MIN_SIZE // 256 + 1))
    cloudflow.save_bundle(app.get, {"blob": bytes(range(10))}, path, files={"blob": table})
    return path


def big_file(bundle: Path) -> Path:
    (found,) = (bundle / "cloudflow" / "files").rglob("blob.bin")
    return found


def count_hashes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    hashed: list[Path] = []
    real = _digests._hash_open_file

    def spy(path: Path, *args: Any) -> object:
        hashed.append(path)
        return real(path, *args)

    monkeypatch.setattr(_digests, "_hash_open_file", spy)
    return hashed


def test_digest_cache_skips_rehashing_a_settled_file_and_sees_any_change(
    app: Any, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_digests, "SETTLED_FINE_S", 3600.0)
    bundle = big_bundle(app, tmp_path / "bundle")
    weights = big_file(bundle)
    assert weights.stat().st_size >= _digests.DIGEST_CACHE_MIN_SIZE
    assert not cache.exists() or not any(cache.iterdir())  # just written: not settled yet
    monkeypatch.setattr(_digests, "SETTLED_S", 0.0)
    monkeypatch.setattr(_digests, "SETTLED_FINE_S", 0.0)
    assert cloudflow.load_bundle(bundle).predict(i=3) == 3
    assert len(list(cache.iterdir())) == 1

    hashed = count_hashes(monkeypatch)
    assert cloudflow.load_bundle(bundle).predict(i=4) == 4
    assert weights not in hashed  # from the cache
    assert any(p.name == "MLmodel" for p in hashed)  # small files are always hashed

    time.sleep(0.05)
    info = weights.stat()
    _flip(weights, random.Random(1))
    os.utime(weights, ns=(info.st_atime_ns, info.st_mtime_ns))  # same size, same mtime
    with pytest.raises(IntegrityError, match=r"blob\.bin'.*blake3"):
        cloudflow.load_bundle(bundle).predict(i=5)
    assert weights in hashed


def test_digest_cache_waits_until_a_file_has_settled(
    app: Any, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_digests, "SETTLED_S", 3600.0)  # nothing is old enough
    monkeypatch.setattr(_digests, "SETTLED_FINE_S", 3600.0)
    bundle = big_bundle(app, tmp_path / "bundle")
    hashed = count_hashes(monkeypatch)
    for _ in range(2):
        cloudflow.load_bundle(bundle).wait_verified()  # the weights are hashed meanwhile
    weights = big_file(bundle)
    assert hashed.count(weights) == 2
    assert not cache.exists() or not any(cache.iterdir())


def test_a_save_remembers_the_digests_it_computed(
    app: Any, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The save hashes its large files once they have settled; the first load then reads the
    # digest from the cache instead of hashing the weights a second time.
    monkeypatch.setattr(_digests, "SETTLED_S", 0.0)
    monkeypatch.setattr(_digests, "SETTLED_FINE_S", 0.0)
    bundle = big_bundle(app, tmp_path / "bundle")
    weights = big_file(bundle)
    assert len(list(cache.iterdir())) == 1
    hashed = count_hashes(monkeypatch)
    assert cloudflow.load_bundle(bundle).predict(i=5) == 5
    assert weights not in hashed
    assert any(p.name == "MLmodel" for p in hashed)


def test_whole_second_timestamps_wait_longer() -> None:
    now = time.time_ns()
    fine = now - int(0.5e9) + 123  # half a second old, sub-second digits
    coarse = (now - int(0.5e9)) // 1_000_000_000 * 1_000_000_000
    assert _digests._settled(fine)
    if now - coarse < _digests.SETTLED_S * 1e9:
        assert not _digests._settled(coarse)


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX permissions")
def test_digest_cache_off_or_shared_is_not_used(
    app: Any, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_digests, "SETTLED_S", 0.0)
    monkeypatch.setattr(_digests, "SETTLED_FINE_S", 0.0)
    monkeypatch.setenv("CLOUDFLOW_DIGEST_CACHE", "0")
    bundle = big_bundle(app, tmp_path / "bundle")
    cloudflow.load_bundle(bundle)
    assert not cache.exists()
    monkeypatch.delenv("CLOUDFLOW_DIGEST_CACHE")
    cache.mkdir(parents=True)
    cache.chmod(0o777)  # anyone could write entries: ignore them all
    assert _digests.cache_dir() is None
    cloudflow.load_bundle(bundle)
    assert list(cache.iterdir()) == []


@pytest.mark.parametrize("algorithm", ["blake3", "sha256"])
def test_file_digests_match_the_digest_of_the_bytes_across_window_edges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, algorithm: str
) -> None:
    # Large files are hashed through memory-mapped windows: every edge case of the windowing
    # (empty, below the mapping threshold, exactly one window, a window and a byte) must give
    # the digest of the whole content.
    monkeypatch.setattr(_digests, "_CHUNK", 16 * 1024)
    monkeypatch.setattr(_digests, "_WINDOW", 64 * 1024)
    rng = random.Random(7)
    for size in (0, 1, 16 * 1024 - 1, 16 * 1024, 64 * 1024, 64 * 1024 + 1, 200 * 1024 + 3):
        data = rng.randbytes(size)
        path = tmp_path / f"{size}.bin"
        path.write_bytes(data)
        expected = (
            blake3.blake3(data).hexdigest()
            if algorithm == "blake3"
            else hashlib.sha256(data).hexdigest()
        )
        assert _digests.digest_file(path, algorithm=algorithm) == expected, size
