"""`modules.pki`: the CA that decides which identities the broker will let in.

No broker here; tests/security/test_broker_acl.py proves the same certificates against Mosquitto.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from modules import ConfigError, pki


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    root = tmp_path / "ca"
    pki.init_ca(root, name="test fleet CA")
    return root


def test_init_writes_a_private_key_and_a_ca_certificate(ca_dir: Path) -> None:
    layout = pki.PkiLayout(ca_dir)
    assert mode(layout.ca_key) == 0o600
    assert mode(ca_dir) == 0o700
    cert = pki.load_certificate(layout.ca_cert)
    assert pki.common_name(cert) == "test fleet CA"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    crl = x509.load_pem_x509_crl(layout.crl.read_bytes())
    assert crl.is_signature_valid(cert.public_key()) and len(crl) == 0  # type: ignore[arg-type]


def test_init_never_replaces_a_ca(ca_dir: Path) -> None:
    before = (ca_dir / pki.CA_KEY).read_bytes()
    with pytest.raises(pki.PkiError, match="already holds a CA"):
        pki.init_ca(ca_dir)
    assert (ca_dir / pki.CA_KEY).read_bytes() == before


def test_issue_without_a_ca_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="pki init"):
        pki.issue_client(tmp_path / "nothing", device="d1")


@pytest.mark.parametrize(
    ("who", "cn"), [({"device": "press-07"}, "press-07"), ({"publisher": "main"}, "publisher@main")]
)
def test_client_certificate_chains_to_the_ca_with_the_identity_as_cn(
    ca_dir: Path, who: dict[str, str], cn: str
) -> None:
    issued = pki.issue_client(ca_dir, **who)
    assert issued.common_name == cn
    assert issued.key_file is not None and mode(issued.key_file) == 0o600
    assert pki.verify_client(issued.cert_file, issued.ca_file) == cn
    cert = pki.load_certificate(issued.cert_file)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    key = serialization.load_pem_private_key(issued.key_file.read_bytes(), password=None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]
    assert (ca_dir / "issued" / f"{issued.serial}.pem").is_file()  # kept, so it can be revoked


def test_a_certificate_from_another_ca_does_not_verify(ca_dir: Path, tmp_path: Path) -> None:
    pki.init_ca(tmp_path / "other")
    stranger = pki.issue_client(tmp_path / "other", device="press-07")
    with pytest.raises(pki.PkiError, match="does not verify"):
        pki.verify_client(stranger.cert_file, ca_dir / pki.CA_CERT)


def test_keys_are_never_overwritten(ca_dir: Path) -> None:
    first = pki.issue_client(ca_dir, device="d1")
    assert first.key_file is not None
    key = first.key_file.read_bytes()
    with pytest.raises(pki.PkiError, match="never overwritten"):
        pki.issue_client(ca_dir, device="d1")
    assert first.key_file.read_bytes() == key


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#", "dev ice", "publisher@main", "-lead", "x" * 129])
def test_device_ids_that_would_break_the_acl_are_refused(ca_dir: Path, bad: str) -> None:
    with pytest.raises(pki.PkiError, match="invalid device id"):
        pki.issue_client(ca_dir, device=bad)


def test_publisher_and_device_namespaces_cannot_meet() -> None:
    # The ACL tells publishers from devices by CN: no device id may look like a publisher CN.
    assert pki.publisher_cn("main") == "publisher@main"
    with pytest.raises(pki.PkiError):
        pki.device_cn(pki.publisher_cn("main"))
    with pytest.raises(pki.PkiError, match="invalid publisher name"):
        pki.publisher_cn("a@b")


def test_server_certificate_is_valid_for_every_host_named(ca_dir: Path) -> None:
    issued = pki.issue_server(ca_dir, ["127.0.0.1", "localhost", "broker.example"])
    assert issued.key_file is not None and mode(issued.key_file) == 0o600
    for host in ("127.0.0.1", "localhost", "broker.example"):
        pki.verify_server(issued.cert_file, issued.ca_file, host)
    with pytest.raises(pki.PkiError, match="not valid for"):
        pki.verify_server(issued.cert_file, issued.ca_file, "10.0.0.1")
    with pytest.raises(pki.PkiError, match="neither an IP address nor a DNS name"):
        pki.issue_server(ca_dir, ["bad host"])


def test_csr_flow_keeps_the_key_on_the_device(ca_dir: Path, tmp_path: Path) -> None:
    device = tmp_path / "device"
    key_file, csr_file = pki.create_request(device, "press-07")
    assert mode(key_file) == 0o600
    assert b"PRIVATE KEY" not in csr_file.read_bytes()
    issued = pki.sign_request(ca_dir, csr_file, device="press-07")
    assert issued.key_file is None
    assert pki.verify_client(issued.cert_file, issued.ca_file) == "press-07"
    cert = pki.load_certificate(issued.cert_file)
    key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()  # type: ignore[union-attr]


def test_a_new_request_reuses_the_device_key(tmp_path: Path) -> None:
    key_file, _ = pki.create_request(tmp_path, "press-07")
    key = key_file.read_bytes()
    pki.create_request(tmp_path, "press-07")
    assert key_file.read_bytes() == key


def test_sign_refuses_a_csr_whose_cn_is_not_the_device(ca_dir: Path, tmp_path: Path) -> None:
    _, csr_file = pki.create_request(tmp_path / "device", "press-07")
    with pytest.raises(pki.PkiError, match="asks for CN 'press-07', not 'press-08'"):
        pki.sign_request(ca_dir, csr_file, device="press-08")
    assert not (ca_dir / "devices" / "press-08").exists()
    assert not list((ca_dir / "issued").glob("*.pem"))  # nothing was issued


def _csr(path: Path, key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey, names: list[str]) -> Path:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, n) for n in names])
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, algorithm)
    path.write_bytes(csr.public_bytes(serialization.Encoding.PEM))
    return path


def test_sign_refuses_a_csr_with_two_cns(ca_dir: Path, tmp_path: Path) -> None:
    csr = _csr(tmp_path / "two.csr", ec.generate_private_key(ec.SECP256R1()), ["press-07", "publisher@main"])
    with pytest.raises(pki.PkiError, match="asks for CN None"):
        pki.sign_request(ca_dir, csr, device="press-07")


def test_sign_refuses_keys_other_than_p256(ca_dir: Path, tmp_path: Path) -> None:
    csr = _csr(tmp_path / "ed.csr", ed25519.Ed25519PrivateKey.generate(), ["press-07"])
    with pytest.raises(pki.PkiError, match="P-256"):
        pki.sign_request(ca_dir, csr, device="press-07")


def test_sign_refuses_what_is_not_a_csr(ca_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "junk.csr").write_text("not a csr")
    with pytest.raises(pki.PkiError, match="not a PEM certificate signing request"):
        pki.sign_request(ca_dir, tmp_path / "junk.csr", device="press-07")


def test_revoke_lists_every_certificate_of_the_identity_in_the_crl(ca_dir: Path, tmp_path: Path) -> None:
    first = pki.issue_client(ca_dir, device="press-07")
    _, csr = pki.create_request(tmp_path / "renewal", "press-07")
    second = pki.sign_request(ca_dir, csr, device="press-07", out=tmp_path / "renewed")
    other = pki.issue_client(ca_dir, device="press-08")
    assert sorted(pki.revoke(ca_dir, device="press-07")) == sorted([first.serial, second.serial])
    crl = x509.load_pem_x509_crl((ca_dir / pki.CRL).read_bytes())
    revoked = {f"{r.serial_number:x}" for r in crl}
    assert revoked == {first.serial, second.serial} and other.serial not in revoked
    with pytest.raises(pki.PkiError, match="no certificate was issued"):
        pki.revoke(ca_dir, device="never-enrolled")
