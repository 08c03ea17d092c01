"""Signing a bundle's manifest: Ed25519 (public key) or HMAC-SHA256 (shared secret).

The manifest lists the digest of every file of the bundle, MLflow's files included, so a valid
signature of the manifest vouches for every file. Digests alone only catch accidents (a truncated
copy, a flipped bit): whoever can change a file can also rewrite the digests. A signature can only
be made with the key, so with a key configured at load, a bundle changed by anyone who lacks the
key refuses to load, before anything in it is unpickled.

Two kinds of key:

- **Ed25519** (recommended): sign with a private key where bundles are made, verify with the
  public key where they are served, which then cannot sign. ``cloudflow keygen`` writes a pair.
  Save with ``signing_key=Path("key.pem")`` (or ``CLOUDFLOW_SIGNING_KEY_FILE``), load with
  ``trusted_keys=[Path("key.pub.pem")]`` (or ``CLOUDFLOW_TRUSTED_KEYS``, paths separated by
  ``os.pathsep``).
- **HMAC-SHA256**: one secret of at least 32 bytes for both (``signing_key="..."`` or
  ``CLOUDFLOW_SIGNING_KEY``); whoever can verify can also sign.

A variable that is set must hold a usable key: an empty or short one is an error, never "no
signing" (that would fail open). The signature lives in its own file, ``cloudflow/manifest.sig``,
so the manifest stays plain JSON that tools can read.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudflow.exceptions import BundleArgumentError, IntegrityError

ENV_VAR = "CLOUDFLOW_SIGNING_KEY"
KEY_FILE_ENV = "CLOUDFLOW_SIGNING_KEY_FILE"
TRUSTED_ENV = "CLOUDFLOW_TRUSTED_KEYS"
SIGNATURE_FILE = "manifest.sig"
HMAC = "hmac-sha256"
ED25519 = "ed25519"
ALGORITHM = HMAC  # the algorithm of bundles signed before public keys existed
#: The shortest HMAC secret accepted: 32 bytes, as ``secrets.token_hex(16)`` gives (hex, 32 chars).
MIN_SECRET_BYTES = 32
# Domain separation: a signature of a manifest is never valid for anything else.
_PREFIX = b"cloudflow manifest v1\n"
_PEM = b"-----BEGIN"


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as e:  # pragma: no cover - cryptography comes with MLflow
        raise BundleArgumentError(
            "Ed25519 signing needs the 'cryptography' library: pip install cryptography"
        ) from e
    return ed25519


def _secret(raw: bytes, where: str) -> HmacKey:
    if not raw:
        raise BundleArgumentError(
            f"{where} is empty. Pass a secret of at least {MIN_SECRET_BYTES} random bytes (python "
            '-c "import secrets; print(secrets.token_hex(32))"), an Ed25519 private key, or '
            "nothing (no signing)."
        )
    if len(raw) < MIN_SECRET_BYTES:
        raise BundleArgumentError(
            f"{where} is {len(raw)} bytes long; a signing secret needs at least "
            f'{MIN_SECRET_BYTES} (python -c "import secrets; print(secrets.token_hex(32))"). '
            "A short secret can be guessed, and then anyone can sign."
        )
    return HmacKey(raw)


def _read_pem(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        return Path(os.fspath(path)).expanduser().read_bytes()
    except OSError as e:
        raise BundleArgumentError(
            f"Cannot read the {what} file {os.fspath(path)!r}: {e.strerror}. Give the path of a "
            "PEM file, as `cloudflow keygen` writes."
        ) from e


def _private_key(pem: bytes, where: str) -> Ed25519Signer:
    ed25519 = _crypto()
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise BundleArgumentError(
            f"{where} is not an unencrypted PEM private key ({e}). Write one with `cloudflow "
            "keygen KEY.pem`."
        ) from e
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise BundleArgumentError(
            f"{where} is a {type(key).__name__}; cloudflow signs with Ed25519 keys. Write one "
            "with `cloudflow keygen KEY.pem`."
        )
    return Ed25519Signer(key)


def _public_key(value: object, where: str) -> Ed25519Verifier:
    ed25519 = _crypto()
    from cryptography.hazmat.primitives import serialization

    if isinstance(value, ed25519.Ed25519PublicKey):
        return Ed25519Verifier(value)
    if isinstance(value, ed25519.Ed25519PrivateKey):
        return Ed25519Verifier(value.public_key())
    if isinstance(value, str) and value.lstrip().startswith("-----BEGIN"):
        pem = value.encode("ascii")
    elif isinstance(value, bytes) and value.lstrip().startswith(_PEM):
        pem = value
    elif isinstance(value, str | os.PathLike):
        pem = _read_pem(value, "public key")
    else:
        raise BundleArgumentError(
            f"{where} must hold Ed25519 public keys (PEM text, a PEM file's path, or key "
            f"objects), got {type(value).__name__}. Pass e.g. trusted_keys=['key.pub.pem']."
        )
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError) as e:
        raise BundleArgumentError(
            f"{where}: {str(value)[:80]!r} is not a PEM public key ({e}). Give the .pub.pem "
            "file `cloudflow keygen` wrote."
        ) from e
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise BundleArgumentError(
            f"{where} holds a {type(key).__name__}; cloudflow verifies Ed25519 signatures."
        )
    return Ed25519Verifier(key)


# --- keys ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HmacKey:
    """A shared secret: signs and verifies."""

    secret: bytes = field(repr=False)
    algorithm: str = HMAC

    @property
    def key_id(self) -> str:
        return key_id(self.secret)

    def sign(self, manifest_bytes: bytes) -> str:
        return hmac.new(self.secret, _PREFIX + manifest_bytes, hashlib.sha256).hexdigest()

    def verifies(self, manifest_bytes: bytes, signature: str) -> bool:
        expected = self.sign(manifest_bytes).encode("ascii")
        return hmac.compare_digest(signature.encode("ascii", "replace"), expected)


@dataclass(frozen=True)
class Ed25519Verifier:
    """A public key: verifies only."""

    key: Any
    algorithm: str = ED25519

    @property
    def key_id(self) -> str:
        from cryptography.hazmat.primitives import serialization

        raw = self.key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return hashlib.sha256(b"cloudflow ed25519 key id" + raw).hexdigest()[:16]

    def verifies(self, manifest_bytes: bytes, signature: str) -> bool:
        from cryptography.exceptions import InvalidSignature

        try:
            self.key.verify(bytes.fromhex(signature), _PREFIX + manifest_bytes)
        except (InvalidSignature, ValueError):
            return False
        return True


@dataclass(frozen=True)
class Ed25519Signer:
    """A private key: signs (and verifies through its public key)."""

    key: Any = field(repr=False)
    algorithm: str = ED25519

    @property
    def public(self) -> Ed25519Verifier:
        return Ed25519Verifier(self.key.public_key())

    @property
    def key_id(self) -> str:
        return self.public.key_id

    def sign(self, manifest_bytes: bytes) -> str:
        return str(self.key.sign(_PREFIX + manifest_bytes).hex())

    def verifies(self, manifest_bytes: bytes, signature: str) -> bool:
        return self.public.verifies(manifest_bytes, signature)


Signer = HmacKey | Ed25519Signer
Verifier = HmacKey | Ed25519Verifier | Ed25519Signer


def resolve_key(key: object) -> Signer | None:
    """The key to sign with: the one given, else the environment's, else None (no signing).

    ``key`` is an HMAC secret (str or bytes, at least 32 bytes), an Ed25519 private key (PEM
    text or bytes, the path of a PEM file as ``os.PathLike``, or a ``cryptography`` key object),
    or an already resolved key. Without one, ``CLOUDFLOW_SIGNING_KEY`` (a secret or PEM text)
    or ``CLOUDFLOW_SIGNING_KEY_FILE`` (a PEM file) is used when set.

    Raises:
        BundleArgumentError: The key is of another type, empty, too short or not a key; or a
            variable is set to something that is not a usable key.
    """
    if isinstance(key, HmacKey | Ed25519Signer):
        return key
    if key is None:
        if ENV_VAR in os.environ:
            return resolve_key_text(os.environ[ENV_VAR].encode("utf-8"), ENV_VAR)
        if KEY_FILE_ENV in os.environ:
            return _private_key(_read_pem(os.environ[KEY_FILE_ENV], "private key"), KEY_FILE_ENV)
        return None
    if isinstance(key, os.PathLike):
        return _private_key(_read_pem(key, "private key"), f"signing_key {os.fspath(key)!r}")
    if isinstance(key, str):
        return resolve_key_text(key.encode("utf-8"), "signing_key")
    if isinstance(key, bytes | bytearray | memoryview):
        return resolve_key_text(bytes(key), "signing_key")
    ed25519 = _crypto()
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return Ed25519Signer(key)
    raise BundleArgumentError(
        f"signing_key must be a secret (str or bytes), an Ed25519 private key or the path of "
        f"one, got {type(key).__name__}. Pass the key itself, or set the environment variable "
        f"{ENV_VAR} (or {KEY_FILE_ENV})."
    )


def resolve_key_text(raw: bytes, where: str) -> Signer:
    if raw.lstrip().startswith(_PEM):
        return _private_key(raw, where)
    return _secret(raw, where)


@dataclass(frozen=True)
class Trust:
    """What a load accepts: bundles signed by one of these keys, and nothing else."""

    keys: tuple[Verifier, ...]

    def describe(self) -> str:
        return ", ".join(f"{k.algorithm} {k.key_id}" for k in self.keys)

    def check(self, data_dir: Path, manifest_bytes: bytes) -> None:
        """Refuse a bundle that is unsigned or not signed with one of the keys.

        Raises:
            IntegrityError: No signature, an unreadable one, or one that matches no key.
        """
        bundle = data_dir.parent
        record = read_signature(data_dir)
        if record is None:
            raise IntegrityError(
                f"The bundle at {str(bundle)!r} is not signed, and a key is configured "
                f"(signing_key=, trusted_keys=, {ENV_VAR} or {TRUSTED_ENV}): refusing to load "
                "it. Sign it (cloudflow sign), or load it without a key only if you trust where "
                "it came from."
            )
        algorithm, signed_by, signature = record
        candidates = [k for k in self.keys if k.algorithm == algorithm]
        if not candidates:
            raise IntegrityError(
                f"The bundle at {str(bundle)!r} is signed with {algorithm!r} (key id "
                f"{signed_by!r}), and no key of that kind is trusted here ({self.describe()}). "
                "Refusing to load it: configure the key that signed it."
            )
        if any(k.verifies(manifest_bytes, signature) for k in candidates):
            return
        mine = {k.key_id for k in candidates}
        cause = (
            "its manifest was changed after signing"
            if signed_by in mine
            else f"it was signed with another key (key id {signed_by!r}; trusted: "
            f"{self.describe()}) or its manifest was changed"
        )
        raise IntegrityError(
            f"The signature of the bundle at {str(bundle)!r} does not match: {cause}. Refusing "
            "to load it. Do not use this bundle; save it again from its source."
        )


def resolve_trust(signing_key: object = None, trusted_keys: object = None) -> Trust | None:
    """The keys a load checks signatures against; None: no check (digests only).

    ``signing_key`` is an HMAC secret (or an Ed25519 private key, whose public key is used);
    ``trusted_keys`` one or more Ed25519 public keys. Without either, ``CLOUDFLOW_SIGNING_KEY``,
    ``CLOUDFLOW_SIGNING_KEY_FILE`` and ``CLOUDFLOW_TRUSTED_KEYS`` are used when set.
    """
    if isinstance(signing_key, Trust):
        return signing_key
    keys: list[Verifier] = []
    signer = resolve_key(signing_key)
    if signer is not None:
        keys.append(signer)
    if trusted_keys is None and TRUSTED_ENV in os.environ:
        paths = [p for p in os.environ[TRUSTED_ENV].split(os.pathsep) if p.strip()]
        if not paths:
            raise BundleArgumentError(
                f"{TRUSTED_ENV} is set but empty. Give the paths of Ed25519 public key files "
                f"(separated by {os.pathsep!r}), or unset it."
            )
        trusted_keys = [Path(p) for p in paths]
    if trusted_keys is not None:
        if isinstance(trusted_keys, str | bytes | os.PathLike) or not isinstance(
            trusted_keys, Iterable
        ):
            trusted_keys = [trusted_keys]
        items = list(trusted_keys)
        if not items:
            raise BundleArgumentError(
                "trusted_keys is empty: no bundle could load. Give Ed25519 public keys, or None."
            )
        keys.extend(_public_key(item, "trusted_keys") for item in items)
    return Trust(tuple(keys)) if keys else None


def key_id(key: bytes) -> str:
    """A short public name of a secret, so a message can say which key signed (reveals nothing)."""
    return hmac.new(key, b"cloudflow signing key id", hashlib.sha256).hexdigest()[:16]


def sign(data_dir: Path, manifest_bytes: bytes, key: Signer | bytes) -> None:
    """Write ``manifest.sig`` for the manifest bytes just written."""
    signer = HmacKey(key) if isinstance(key, bytes) else key
    record = {
        "algorithm": signer.algorithm,
        "key_id": signer.key_id,
        "signature": signer.sign(manifest_bytes),
    }
    (data_dir / SIGNATURE_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def read_signature(data_dir: Path) -> tuple[str, str | None, str] | None:
    """``(algorithm, key id, signature)`` of a bundle, or None if it is unsigned."""
    from cloudflow.integrity.digests import read_regular

    path = data_dir / SIGNATURE_FILE
    if not os.path.lexists(path):
        return None
    try:
        # A few hundred bytes; never a FIFO waited on, a link followed or a huge file read.
        record = json.loads(read_regular(path, 64 * 1024, "The signature file").decode("utf-8"))
        algorithm, signed_by, signature = (
            record["algorithm"],
            record.get("key_id"),
            record["signature"],
        )
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise IntegrityError(
            f"The signature file {SIGNATURE_FILE!r} of the bundle at {str(data_dir.parent)!r} is "
            f"damaged ({type(e).__name__}: {e}): refusing to load it. Save the bundle again."
        ) from e
    if not isinstance(algorithm, str) or not isinstance(signature, str):
        raise IntegrityError(
            f"The signature file of the bundle at {str(data_dir.parent)!r} is damaged: refusing "
            "to load it."
        )
    return algorithm, signed_by if isinstance(signed_by, str) else None, signature


def check(data_dir: Path, manifest_bytes: bytes, key: bytes | Trust) -> None:
    """Refuse a bundle that is unsigned or not signed with ``key`` (see :meth:`Trust.check`)."""
    trust = key if isinstance(key, Trust) else Trust((HmacKey(key),))
    trust.check(data_dir, manifest_bytes)


def generate_key_pair(private_path: Path) -> Path:
    """Write a new Ed25519 private key (PEM, mode 600) and its public key beside it.

    Returns the public key's path: ``KEY.pub.pem`` for ``KEY.pem``.
    """
    ed25519 = _crypto()
    from cryptography.hazmat.primitives import serialization

    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    stem = private_path.name[: -len(".pem")] if private_path.name.endswith(".pem") else None
    public_path = private_path.with_name(f"{stem or private_path.name}.pub.pem")
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    public_path.write_bytes(public)
    return public_path
