"""Optional signing of a bundle's manifest with HMAC-SHA256.

The manifest lists the digest of every file of the bundle's ``cloudflow`` folder, so a valid
signature of the manifest vouches for every file. Digests alone only catch accidents (a truncated
copy, a flipped bit): whoever can change a file can also rewrite the digests. A signature can only
be made with the key, so with a key configured at load, a bundle changed by anyone who lacks the
key refuses to load, before anything in it is unpickled.

The signature is kept in its own file, ``cloudflow/manifest.sig``, so the manifest stays plain
JSON that tools can read. The key is given with ``signing_key=`` or the environment variable
``CLOUDFLOW_SIGNING_KEY``; a good key is 32 random bytes (``python -c "import secrets;
print(secrets.token_hex(32))"``). HMAC is symmetric: whoever can verify can also sign, so keep the
key where only the processes that save and load bundles can read it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path

from cloudflow.exceptions import BundleArgumentError, IntegrityError

ENV_VAR = "CLOUDFLOW_SIGNING_KEY"
SIGNATURE_FILE = "manifest.sig"
ALGORITHM = "hmac-sha256"
# Domain separation: a signature of a manifest is never valid for anything else.
_PREFIX = b"cloudflow manifest v1\n"


def resolve_key(key: str | bytes | None) -> bytes | None:
    """The key given, else the one in ``CLOUDFLOW_SIGNING_KEY``, else None (no signing).

    Raises:
        BundleArgumentError: The key is not a str or bytes, or is empty.
    """
    if key is None:
        env = os.environ.get(ENV_VAR, "")
        return env.encode("utf-8") if env else None
    if isinstance(key, str):
        raw = key.encode("utf-8")
    elif isinstance(key, bytes | bytearray | memoryview):
        raw = bytes(key)
    else:
        raise BundleArgumentError(
            f"signing_key must be a str or bytes, got {type(key).__name__}. Pass the secret key "
            f"itself, or set the environment variable {ENV_VAR}."
        )
    if not raw:
        raise BundleArgumentError(
            f"signing_key is empty. Pass a secret of at least 32 random bytes, or leave it None "
            f"(then {ENV_VAR} is used if set)."
        )
    return raw


def key_id(key: bytes) -> str:
    """A short public name of a key, so a message can say which key signed (reveals nothing)."""
    return hmac.new(key, b"cloudflow signing key id", hashlib.sha256).hexdigest()[:16]


def _mac(manifest_bytes: bytes, key: bytes) -> str:
    return hmac.new(key, _PREFIX + manifest_bytes, hashlib.sha256).hexdigest()


def sign(data_dir: Path, manifest_bytes: bytes, key: bytes) -> None:
    """Write ``manifest.sig`` for the manifest bytes just written."""
    record = {"algorithm": ALGORITHM, "key_id": key_id(key), "signature": _mac(manifest_bytes, key)}
    (data_dir / SIGNATURE_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def check(data_dir: Path, manifest_bytes: bytes, key: bytes) -> None:
    """Refuse a bundle that is unsigned or not signed with ``key``, before anything is read.

    Raises:
        IntegrityError: No signature, an unreadable one, or one that does not match.
    """
    bundle = data_dir.parent
    path = data_dir / SIGNATURE_FILE
    if not path.is_file():
        raise IntegrityError(
            f"The bundle at {str(bundle)!r} is not signed, and a signing key is configured "
            f"(signing_key= or {ENV_VAR}): refusing to load it. Save it again with "
            "signing_key=..., or load it without a key only if you trust where it came from."
        )
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        algorithm, signed_by, signature = (
            record["algorithm"],
            record.get("key_id"),
            record["signature"],
        )
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise IntegrityError(
            f"The signature file {SIGNATURE_FILE!r} of the bundle at {str(bundle)!r} is damaged "
            f"({type(e).__name__}: {e}): refusing to load it. Save the bundle again."
        ) from e
    if algorithm != ALGORITHM or not isinstance(signature, str):
        raise IntegrityError(
            f"The bundle at {str(bundle)!r} is signed with {algorithm!r}; this cloudflow checks "
            f"{ALGORITHM!r} signatures. Refusing to load it: upgrade cloudflow or save it again."
        )
    expected = _mac(manifest_bytes, key).encode("ascii")
    if not hmac.compare_digest(signature.encode("ascii", "replace"), expected):
        mine = key_id(key)
        cause = (
            "its manifest was changed after signing"
            if signed_by == mine
            else f"it was signed with another key (key id {signed_by!r}, the configured key is "
            f"{mine!r}) or its manifest was changed"
        )
        raise IntegrityError(
            f"The signature of the bundle at {str(bundle)!r} does not match: {cause}. Refusing "
            "to load it. Do not use this bundle; save it again from its source."
        )
