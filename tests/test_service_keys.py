"""Sealed scoring keys: only the addressed device opens them, and only from a trusted publisher."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from modules.deployment import BadSignatureError, UntrustedKeyError
from modules.service_keys import (
    SealedKeysError,
    ServiceKeys,
    device_public_key,
    load_or_create_device_key,
    open_device_key,
    open_keys,
    seal_keys,
)

PUBLISHER = Ed25519PrivateKey.generate()
DEVICE = X25519PrivateKey.generate()


def _sealed(keys: ServiceKeys, device: str = "d1", version: int = 1, to: X25519PrivateKey = DEVICE) -> dict:
    return seal_keys(
        keys,
        device_public_key(to),
        fleet="f",
        name="iris",
        device=device,
        version=version,
        signing_key=PUBLISHER,
    )


def test_device_opens_its_keys_and_the_wire_form_holds_no_key_in_clear() -> None:
    keys = ServiceKeys.generate()
    wire = _sealed(keys)
    text = json.dumps(wire)
    assert keys.primary.get_secret_value() not in text and keys.secondary.get_secret_value() not in text
    doc, opened = open_keys(wire, DEVICE, [PUBLISHER.public_key()], fleet="f", device="d1")
    assert (doc.name, doc.version) == ("iris", 1)
    assert opened.primary.get_secret_value() == keys.primary.get_secret_value()


def test_another_device_cannot_open_them() -> None:
    wire = _sealed(ServiceKeys.generate())
    with pytest.raises(SealedKeysError, match="cannot be opened"):
        open_keys(wire, X25519PrivateKey.generate(), [PUBLISHER.public_key()], fleet="f", device="d1")
    with pytest.raises(SealedKeysError, match="not f/d2"):
        open_keys(wire, DEVICE, [PUBLISHER.public_key()], fleet="f", device="d2")


def test_tampered_or_untrusted_documents_are_refused() -> None:
    wire = _sealed(ServiceKeys.generate())
    moved = {**wire, "device": "d2"}
    with pytest.raises(BadSignatureError):
        open_keys(moved, DEVICE, [PUBLISHER.public_key()], fleet="f", device="d2")
    with pytest.raises(UntrustedKeyError):
        open_keys(wire, DEVICE, [Ed25519PrivateKey.generate().public_key()], fleet="f", device="d1")


def test_device_key_is_created_once_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "k" / "device.pem"
    first = load_or_create_device_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert device_public_key(load_or_create_device_key(path)) == device_public_key(first)


def test_the_public_key_is_kept_beside_the_private_key_and_read_without_it(tmp_path: Path) -> None:
    path = tmp_path / "device-x25519.pem"
    created = open_device_key(path)
    public_file = tmp_path / "device-x25519.pub"
    assert stat.S_IMODE(public_file.stat().st_mode) == 0o600
    assert public_file.read_text().split()[0] == created.public == device_public_key(created.private())

    reread = open_device_key(path)
    assert reread.public == created.public
    assert not reread.loaded  # the private key is built only when a box is opened
    assert device_public_key(reread.private()) == created.public


@pytest.mark.parametrize("damage", ["missing", "empty", "garbage", "another key's", "no binding"])
def test_a_public_file_that_does_not_belong_to_the_key_is_written_again(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "device-x25519.pem"
    public = open_device_key(path).public
    public_file = tmp_path / "device-x25519.pub"
    other = tmp_path / "other.pem"
    open_device_key(other)
    content = {
        "missing": None,
        "empty": "",
        "garbage": "not base64!\n",
        # a stale file: the private key was replaced and the old public key stayed
        "another key's": (tmp_path / "other.pub").read_text(),
        "no binding": public + "\n",
    }[damage]
    if content is None:
        public_file.unlink()
    else:
        public_file.write_text(content)

    reopened = open_device_key(path)
    assert reopened.public == public == device_public_key(load_or_create_device_key(path))
    assert public_file.read_text().split()[0] == public
    assert open_device_key(path).public == public and not open_device_key(path).loaded


def test_sealed_keys_build_the_private_key_at_the_first_box_only(tmp_path: Path) -> None:
    from edge_agent._sealed_keys import KeysChanged, SealedKeys

    path = tmp_path / "device-x25519.pem"
    public = open_device_key(path).public
    device_key = open_device_key(path)
    sealed = SealedKeys(device_key, [PUBLISHER.public_key()], fleet="f", device_id="d1")
    sealed.restore({}, {})
    assert not device_key.loaded

    keys = ServiceKeys.generate()
    wire = seal_keys(keys, public, fleet="f", name="iris", device="d1", version=1, signing_key=PUBLISHER)
    assert sealed.receive("iris", json.dumps(wire).encode()) == KeysChanged(1)
    assert device_key.loaded
    opened = sealed.keys_for("iris")
    assert opened is not None and opened.primary.get_secret_value() == keys.primary.get_secret_value()


def test_a_key_pair_made_apart_leaves_this_process_without_x25519_state(tmp_path: Path) -> None:
    path = tmp_path / "device-x25519.pem"
    probe = (
        "import sys\n"
        "from pathlib import Path\n"
        "from modules.service_keys import open_device_key\n"
        f"key = open_device_key(Path({str(path)!r}), make_apart=True)\n"
        "print(key.public, key.loaded, 'cryptography.hazmat.backends.openssl.backend' in sys.modules)\n"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", probe], cwd=root, capture_output=True, text=True, check=True)
    public, loaded, backend = out.stdout.split()
    assert (loaded, backend) == ("False", "False")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert device_public_key(load_or_create_device_key(path)) == public == open_device_key(path).public


@pytest.mark.parametrize("executable", ["", "/bin/false"])
def test_a_key_pair_is_made_here_when_no_child_can_make_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, executable: str
) -> None:
    monkeypatch.setattr(sys, "executable", executable)
    key = open_device_key(tmp_path / "device-x25519.pem", make_apart=True)
    assert key.public == device_public_key(key.private())
    monkeypatch.undo()
    assert open_device_key(tmp_path / "device-x25519.pem").public == key.public


def test_building_the_private_key_checks_the_public_key_read(tmp_path: Path) -> None:
    from modules.service_keys import _write_public

    path = tmp_path / "device-x25519.pem"
    right = open_device_key(path).public
    raw = load_or_create_device_key(path).private_bytes_raw()
    wrong = X25519PrivateKey.generate().public_key().public_bytes_raw()
    _write_public(path, raw, wrong)  # as a faulty maker would have bound it

    key = open_device_key(path)
    assert key.public != right
    key.private()
    assert key.public == right and open_device_key(path).public == right
