"""The agent reads its keys without cryptography's serialization package: what it reads and
writes must be exactly what cryptography reads and writes, and every other form still goes to
cryptography, with its answer."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization as s
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from modules import ConfigError
from modules.service_keys import device_public_key, load_or_create_device_key
from modules.signing import load_public_key, public_key_id, public_key_pem

ROOT = Path(__file__).resolve().parents[1]


def _pkcs8(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    return key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption())


def test_trusted_keys_read_as_cryptography_reads_them() -> None:
    public = Ed25519PrivateKey.generate().public_key()
    pem = public.public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo)

    assert public_key_pem(public).encode() == pem
    for form in (pem, pem.decode(), b"\n  " + pem.replace(b"\n", b"\r\n") + b"\n\n"):
        assert load_public_key(form).public_bytes_raw() == public.public_bytes_raw()


def test_other_forms_get_cryptographys_answer() -> None:
    x25519 = X25519PrivateKey.generate().public_key()
    with pytest.raises(ConfigError, match="must be Ed25519"):
        load_public_key(x25519.public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(ConfigError, match="not a PEM public key"):
        load_public_key(b"-----BEGIN PUBLIC KEY-----\nnot base64!\n-----END PUBLIC KEY-----\n")
    # an OpenSSH public key is not the fixed form: cryptography's reader answers
    ssh = Ed25519PrivateKey.generate().public_key().public_bytes(s.Encoding.OpenSSH, s.PublicFormat.OpenSSH)
    with pytest.raises(ConfigError, match="not a PEM public key"):
        load_public_key(ssh)


def test_device_key_file_is_the_pkcs8_cryptography_writes_and_reads(tmp_path: Path) -> None:
    created = load_or_create_device_key(tmp_path / "device.pem")
    written = (tmp_path / "device.pem").read_bytes()

    assert written == _pkcs8(created)
    reread = s.load_pem_private_key(written, password=None)
    assert isinstance(reread, X25519PrivateKey)
    assert device_public_key(reread) == device_public_key(created)
    assert device_public_key(load_or_create_device_key(tmp_path / "device.pem")) == device_public_key(created)


def test_device_key_in_another_form_is_read_or_refused_by_cryptography(tmp_path: Path) -> None:
    key = X25519PrivateKey.generate()
    encrypted = key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.BestAvailableEncryption(b"pw"))
    (tmp_path / "encrypted.pem").write_bytes(encrypted)
    with pytest.raises(ConfigError, match="unreadable"):
        load_or_create_device_key(tmp_path / "encrypted.pem")

    (tmp_path / "ed25519.pem").write_bytes(_pkcs8(Ed25519PrivateKey.generate()))
    with pytest.raises(ConfigError, match="not an X25519 key"):
        load_or_create_device_key(tmp_path / "ed25519.pem")


def test_the_agent_reads_its_keys_without_the_serialization_package(tmp_path: Path) -> None:
    key = X25519PrivateKey.generate()
    (tmp_path / "device.pem").write_bytes(_pkcs8(key))
    (tmp_path / "trust.pem").write_text(public_key_pem(Ed25519PrivateKey.generate()))
    probe = (
        "import sys\n"
        "from pathlib import Path\n"
        "from modules.service_keys import load_or_create_device_key\n"
        "from modules.signing import load_public_key\n"
        f"load_or_create_device_key(Path({str(tmp_path / 'device.pem')!r}))\n"
        f"load_public_key(Path({str(tmp_path / 'trust.pem')!r}).read_bytes())\n"
        "print('cryptography.hazmat.primitives.serialization' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_trusted_key_is_built_as_an_openssl_key_at_its_first_verification() -> None:
    signer = Ed25519PrivateKey.generate()
    trusted = load_public_key(public_key_pem(signer))
    assert trusted._key is None  # type: ignore[attr-defined]
    assert trusted == signer.public_key() and signer.public_key() == trusted
    assert public_key_id(trusted) == public_key_id(signer)
    pem = trusted.public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo)
    assert pem == public_key_pem(signer).encode()

    trusted.verify(signer.sign(b"payload"), b"payload")
    with pytest.raises(InvalidSignature):
        trusted.verify(signer.sign(b"payload"), b"another payload")
    assert trusted._key is not None  # type: ignore[attr-defined]
