"""Ed25519 publisher keys: the publisher signs with the private half, agents trust the public one.

cryptography's `serialization` package is imported only by the functions that need more than the
fixed Ed25519 forms (`modules._pem` says why): an agent reads its trusted keys without it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from modules import _pem
from modules._errors import ConfigError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


def generate_signing_key(path: Path) -> Ed25519PrivateKey:
    """Write a new key as unencrypted PKCS#8 PEM, readable by its owner only; never overwrite."""
    from cryptography.hazmat.primitives import serialization

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return key


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"signing key {path} does not exist; run `modelfleet init`") from None
    except OSError as exc:
        raise ConfigError(f"cannot read signing key {path}: {exc.strerror}") from None
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 key")
    return key


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return _pem.encode(public.public_bytes_raw(), _pem.PUBLIC_KEY, _pem.ED25519_PUBLIC_PREFIX).decode()


def public_key_id(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """Short fingerprint naming a key in signatures: first 16 hex of sha256 over the raw 32 key bytes.

    Raw bytes rather than PEM, so that the id does not depend on how the key file was encoded.
    """
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return hashlib.sha256(public.public_bytes_raw()).hexdigest()[:16]


def load_public_key(pem: str | bytes) -> Ed25519PublicKey:
    """Parse a trusted publisher key as configured on an agent (SubjectPublicKeyInfo PEM)."""
    data = pem.encode() if isinstance(pem, str) else pem
    raw = _pem.raw_key(data, _pem.PUBLIC_KEY, _pem.ED25519_PUBLIC_PREFIX)
    if raw is not None:
        return _TrustedKey(raw)
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError("trusted publisher keys must be Ed25519")
    return key


class _TrustedKey(Ed25519PublicKey):
    """A trusted publisher key read from its fixed PEM form, built as an OpenSSL key at its first
    verification.

    The first Ed25519 key a process builds sets up OpenSSL's Ed25519 state, about 0.6 MiB
    resident, which an agent that receives no signed message never needs. Its id, raw bytes and
    equality come from the 32 bytes read; OpenSSL takes any 32 bytes as an Ed25519 public key,
    so building it later fails no more than building it at once would."""

    def __init__(self, raw: bytes) -> None:
        if len(raw) != 32:
            raise ValueError("an Ed25519 public key is 32 bytes")
        self._raw = bytes(raw)
        self._key: Ed25519PublicKey | None = None

    def _built(self) -> Ed25519PublicKey:
        if self._key is None:
            self._key = Ed25519PublicKey.from_public_bytes(self._raw)
        return self._key

    def public_bytes_raw(self) -> bytes:
        return self._raw

    def public_bytes(self, encoding: Encoding, format: PublicFormat) -> bytes:
        return self._built().public_bytes(encoding, format)

    def verify(self, signature: bytes, data: bytes) -> None:
        self._built().verify(signature, data)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ed25519PublicKey):
            return NotImplemented
        return self._raw == other.public_bytes_raw()

    __hash__ = None  # type: ignore[assignment]  # as cryptography's own keys

    def __copy__(self) -> _TrustedKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> _TrustedKey:
        return self
