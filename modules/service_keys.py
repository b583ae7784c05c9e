"""Scoring keys for a deployment, sealed to each device, so no retained message holds one in clear.

Every agent has an X25519 key pair (created on first start, the public half in its reported
state). The publisher seals the deployment's primary/secondary keys to each device with an
ephemeral X25519 exchange, HKDF-SHA256 and ChaCha20-Poly1305, binds the ciphertext to
fleet/deployment/device/version as associated data (so it cannot be replayed onto another device
or deployment), and signs the envelope with the workspace's Ed25519 key like a deployment.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, SecretStr

from modules import _pem
from modules._errors import ConfigError, ModelfleetError
from modules.atomic_file import write_atomic
from modules.deployment import Signature, signing_payload, verify_document
from modules.signing import public_key_id

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

_Opened = TypeVar("_Opened")

log = logging.getLogger(__name__)

DEVICE_KEY_FILE = "device-x25519.pem"
"""The device key's file name in the agent's data folder (its public half beside it, `.pub`)."""

ALG = "x25519-hkdf-sha256-chacha20poly1305"


class SealedKeysError(ModelfleetError):
    """A keys document that cannot be opened by this device (wrong device, tampered, malformed)."""


class SealedBox(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="forbid")

    alg: Literal["x25519-hkdf-sha256-chacha20poly1305"] = ALG
    ephemeral: str
    nonce: str
    ciphertext: str


class ServiceKeysDocument(BaseModel):
    """Wire form on `devices/<id>/keys/<deployment>` (retained)."""

    model_config = ConfigDict(defer_build=True, extra="forbid", populate_by_name=True)

    fleet: str
    name: str = Field(description="The deployment the keys open")
    device: str
    version: int = Field(ge=1)
    sealed: SealedBox
    created_at: AwareDatetime = Field(alias="createdAt")
    signature: Signature | None = None


class ServiceKeys(BaseModel):
    model_config = ConfigDict(defer_build=True)

    primary: SecretStr
    secondary: SecretStr

    @classmethod
    def generate(cls) -> ServiceKeys:
        return cls(primary=_random_key(), secondary=_random_key())


def _random_key() -> SecretStr:
    return SecretStr(base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("="))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


# -- device key pair --------------------------------------------------------------------------


_BINDING_CONTEXT = b"modelfleet device-x25519.pub v1"


def public_key_path(path: Path) -> Path:
    """Where the public half of the device key at `path` is kept: `device-x25519.pem` ->
    `device-x25519.pub`."""
    return path.with_suffix(".pub") if path.suffix == ".pem" else path.with_name(path.name + ".pub")


def _binding(private_raw: bytes, public_raw: bytes) -> str:
    return hashlib.sha256(_BINDING_CONTEXT + private_raw + public_raw).hexdigest()


class DeviceKey:
    """The device's X25519 key pair as the agent holds it: the public half at once, the private
    half as an OpenSSL key only when a sealed box is opened (`private`).

    The first X25519 operation of a process imports cryptography's backend module and sets up
    OpenSSL's X25519 state, about 2 MiB resident for the rest of its life, and an idle agent
    needs none of it: it only reports its public key. So the public
    key is written beside the private one (`public_key_path`) when the pair is made, by this
    code, with the same owner and permissions. Its file also holds a SHA-256 over both halves
    (`_binding`), checked at every start against the private key's bytes: no X25519 operation,
    and a public file that does not belong to the private key (a missing, damaged or stale one,
    e.g. left over after the private key was replaced) is never used; the public key is then
    derived from the private one and the file written again. A key file in another form than
    the fixed PKCS#8 one is read by cryptography, which sets up that state anyway: its public
    key is derived at once and no public file is kept for it. When the private key is built, its
    public key is compared with the one read (free by then).
    """

    def __init__(
        self, path: Path, public: str, *, raw: bytes | None = None, key: X25519PrivateKey | None = None
    ) -> None:
        if raw is None and key is None:
            raise ValueError("a device key needs its private half")
        self.path = path
        self.public = public  # base64 of the 32 raw bytes: what the device reports
        self._raw = None if key is not None else raw
        self._key = key

    @property
    def loaded(self) -> bool:
        """Whether the private key has been built as an OpenSSL key yet."""
        return self._key is not None

    def private(self) -> X25519PrivateKey:
        if self._key is None:
            assert self._raw is not None
            key = X25519PrivateKey.from_private_bytes(self._raw)
            public_raw = key.public_key().public_bytes_raw()
            if _b64(public_raw) != self.public:  # OpenSSL's state is set up now: checking is free
                log.warning("device key %s: its public key file did not match; written again", self.path)
                _write_public(self.path, self._raw, public_raw)
                self.public = _b64(public_raw)
            self._key = key
            self._raw = None
        return self._key


def open_device_key(path: Path, *, make_apart: bool = False) -> DeviceKey:
    """The device's sealing key; created once with owner-only permissions and never replaced.

    The private key is read and written in its one PKCS#8 form without cryptography's
    `serialization` package (see `modules._pem`); a file in any other form is left to that
    package to read or refuse. Either way it is read here, at start, so a damaged key file is
    refused at start.

    `make_apart`: a missing pair is made in a short child process (`_made_apart`), for a process
    that runs one agent: making it here sets up OpenSSL's X25519 state, which then stays for the
    life of the process. The simulator, with many agents in one process, makes them here."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return _create(path, make_apart=make_apart)
    raw = _pem.raw_key(data, _pem.PRIVATE_KEY, _pem.X25519_PRIVATE_PREFIX)
    if raw is None:
        other = _read_other_form(path, data)
        return DeviceKey(path, _b64(other.public_key().public_bytes_raw()), key=other)
    public_raw = _read_public(path, raw)
    if public_raw is not None:
        return DeviceKey(path, _b64(public_raw), raw=raw)
    key = X25519PrivateKey.from_private_bytes(raw)
    public_raw = key.public_key().public_bytes_raw()
    _write_public(path, raw, public_raw)
    return DeviceKey(path, _b64(public_raw), key=key)


def _create(path: Path, *, make_apart: bool) -> DeviceKey:
    pair = _made_apart() if make_apart else None
    key = None
    if pair is None:
        key = X25519PrivateKey.generate()
        pair = key.private_bytes_raw(), key.public_key().public_bytes_raw()
    raw, public_raw = pair
    pem = _pem.encode(raw, _pem.PRIVATE_KEY, _pem.X25519_PRIVATE_PREFIX)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    _write_public(path, raw, public_raw)
    return DeviceKey(path, _b64(public_raw), raw=raw, key=key)


_MAKE_PAIR = (
    "import sys\n"
    "from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey\n"
    "key = X25519PrivateKey.generate()\n"
    "sys.stdout.write(key.private_bytes_raw().hex() + ' ' + key.public_key().public_bytes_raw().hex())\n"
)


def _made_apart() -> tuple[bytes, bytes] | None:
    """A new pair (private, public; raw bytes) made by cryptography in a child process of this
    interpreter (about 30 ms, once per device); None when there is no interpreter to run (an
    embedded one) or the child fails, and the caller makes the pair itself."""
    if not sys.executable:
        return None
    try:
        done = subprocess.run(
            [sys.executable, "-c", _MAKE_PAIR], capture_output=True, text=True, timeout=60, check=True
        )
        private_raw, public_raw = (bytes.fromhex(part) for part in done.stdout.split())
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        log.info("device key made in this process: the child process could not make it (%s)", exc)
        return None
    if len(private_raw) != 32 or len(public_raw) != 32:
        return None
    return private_raw, public_raw


def _read_public(path: Path, private_raw: bytes) -> bytes | None:
    """The raw public key from the file beside `path`, when that file is whole and belongs to
    `private_raw`; else None."""
    try:
        lines = public_key_path(path).read_text(encoding="ascii").split()
        public_raw = _unb64(lines[0])
    except (OSError, UnicodeDecodeError, ValueError, IndexError):
        return None
    if len(lines) != 2 or len(public_raw) != 32 or lines[1] != _binding(private_raw, public_raw):
        return None
    return public_raw


def _write_public(path: Path, private_raw: bytes, public_raw: bytes) -> None:
    """The public key (base64, as reported) and the SHA-256 binding it to the private key."""
    text = f"{_b64(public_raw)}\n{_binding(private_raw, public_raw)}\n"
    write_atomic(public_key_path(path), text.encode(), mode=0o600)


def _read_other_form(path: Path, data: bytes) -> X25519PrivateKey:
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"device key {path} is unreadable: {exc}") from None
    if not isinstance(key, X25519PrivateKey):
        raise ConfigError(f"device key {path} is not an X25519 key")
    return key


def load_or_create_device_key(path: Path) -> X25519PrivateKey:
    """The device's sealing key as an OpenSSL key (`open_device_key`, its private half)."""
    return open_device_key(path).private()


def device_public_key(key: X25519PrivateKey) -> str:
    return _b64(key.public_key().public_bytes_raw())


def key_fingerprint(public_key_b64: str) -> str:
    """What an operator reads on the device (`modelfleet agent key`) and types at the publisher
    (`modelfleet device approve`): the first 32 hex digits (128 bits) of the SHA-256 of the raw
    public key, long enough that no forged report can be made to match it."""
    try:
        raw = _unb64(public_key_b64)
    except ValueError as exc:
        raise ConfigError(f"not a base64 public key: {exc}") from None
    if len(raw) != 32:
        raise ConfigError(f"not an X25519 public key: {len(raw)} bytes instead of 32")
    return hashlib.sha256(raw).hexdigest()[:32]


# -- seal / open ------------------------------------------------------------------------------


def _context(fleet: str, name: str, device: str, version: int) -> bytes:
    return f"modelfleet-keys-v1/{fleet}/{name}/{device}/{version}".encode()


def _cipher(shared: bytes, context: bytes) -> ChaCha20Poly1305:
    # imported here: an agent opens or a publisher seals keys now and then, never while idle
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=context).derive(shared)
    return ChaCha20Poly1305(key)


def seal_plaintext(
    plaintext: bytes,
    device_public: str,
    *,
    fleet: str,
    name: str,
    device: str,
    version: int,
    signing_key: Ed25519PrivateKey,
) -> dict[str, Any]:
    """The signed wire mapping of a box only `device` opens, bound to fleet/name/device/version:
    the one seal scoring keys and everything sealed beside them (registry credentials) share."""
    try:
        recipient = X25519PublicKey.from_public_bytes(_unb64(device_public))
    except ValueError as exc:
        raise SealedKeysError(f"device {device} reported an invalid public key: {exc}") from None
    ephemeral = X25519PrivateKey.generate()
    context = _context(fleet, name, device, version)
    nonce = os.urandom(12)
    ciphertext = _cipher(ephemeral.exchange(recipient), context).encrypt(nonce, plaintext, context)
    doc = ServiceKeysDocument(
        fleet=fleet,
        name=name,
        device=device,
        version=version,
        sealed=SealedBox(
            ephemeral=_b64(ephemeral.public_key().public_bytes_raw()),
            nonce=_b64(nonce),
            ciphertext=_b64(ciphertext),
        ),
        created_at=datetime.now(UTC).replace(microsecond=0),
    )
    wire = doc.model_dump(by_alias=True, exclude_none=True, mode="json")
    value = _b64(signing_key.sign(signing_payload(wire)))
    wire["signature"] = Signature(key_id=public_key_id(signing_key), alg="ed25519", value=value).model_dump(
        by_alias=True, mode="json"
    )
    return wire


def open_sealed(
    wire: Mapping[str, Any],
    device_key: X25519PrivateKey,
    trusted: Iterable[Ed25519PublicKey],
    parse: Callable[[bytes], _Opened],
    *,
    fleet: str,
    device: str,
) -> tuple[ServiceKeysDocument, _Opened]:
    """Verify the publisher's signature, then decrypt and `parse` the plaintext; any failure is a
    `SealedKeysError`/trust error."""
    verify_document(wire, list(trusted))
    try:
        doc = ServiceKeysDocument.model_validate(wire)
    except ValueError as exc:
        raise SealedKeysError(f"malformed keys document: {str(exc).splitlines()[0]}") from None
    if doc.fleet != fleet or doc.device != device:
        raise SealedKeysError(f"keys document is for {doc.fleet}/{doc.device}, not {fleet}/{device}")
    context = _context(doc.fleet, doc.name, doc.device, doc.version)
    try:
        ephemeral = X25519PublicKey.from_public_bytes(_unb64(doc.sealed.ephemeral))
        plaintext = _cipher(device_key.exchange(ephemeral), context).decrypt(
            _unb64(doc.sealed.nonce), _unb64(doc.sealed.ciphertext), context
        )
        return doc, parse(plaintext)
    except (InvalidTag, ValueError) as exc:
        raise SealedKeysError(
            f"keys for {doc.name} cannot be opened by this device ({type(exc).__name__})"
        ) from None


def seal_keys(
    keys: ServiceKeys,
    device_public: str,
    *,
    fleet: str,
    name: str,
    device: str,
    version: int,
    signing_key: Ed25519PrivateKey,
) -> dict[str, Any]:
    """The signed wire mapping for one device."""
    plaintext = json.dumps(
        {"primary": keys.primary.get_secret_value(), "secondary": keys.secondary.get_secret_value()}
    ).encode()
    return seal_plaintext(
        plaintext,
        device_public,
        fleet=fleet,
        name=name,
        device=device,
        version=version,
        signing_key=signing_key,
    )


def open_keys(
    wire: Mapping[str, Any],
    device_key: X25519PrivateKey,
    trusted: Iterable[Ed25519PublicKey],
    *,
    fleet: str,
    device: str,
) -> tuple[ServiceKeysDocument, ServiceKeys]:
    """Verify the publisher's signature, then decrypt; any failure is a `SealedKeysError`/trust error."""
    return open_sealed(wire, device_key, trusted, ServiceKeys.model_validate_json, fleet=fleet, device=device)
