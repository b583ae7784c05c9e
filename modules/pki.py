"""A small certificate authority for the broker's mTLS: who may connect, and as whom.

Why it exists and why it looks like this:

- The broker is not trusted with the content (every document is signed), but it is the one place
  that decides who may *write* where. With `use_identity_as_username` Mosquitto takes the client
  certificate's CN as the MQTT user name and its ACL does the rest, so the CN *is* the identity,
  and issuing a certificate is granting an identity. This module is that grant, and nothing more.
- Device CNs are the bare device id, so an ACL `pattern` with `%u` confines a device to its own
  topics. Publisher CNs live in a namespace a device id can never enter (`publisher@<name>`: `@`
  is not allowed in a device id), so no device certificate can ever be mistaken for a publisher.
- Keys are ECDSA P-256: every TLS stack a broker or device is likely to run accepts them for client
  authentication (Ed25519 client certificates are not universal yet).
- Keys are written once, readable by their owner only (0600), and never overwritten. A device can
  make its own key and send only a CSR (`create_request` / `sign_request`), so its key never leaves
  it; `issue_client` exists for when the operator deliberately makes the key on the CA machine.
- Every issued certificate is kept under `issued/` so that revocation can name it later, and a CRL
  always exists (empty after `init_ca`), so a broker config can point at it from day one.

This is a pure library: it knows nothing about the publisher, the agent or MQTT.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from pydantic import BaseModel

from modules._errors import ConfigError
from modules.topics import DEVICE_ID_RE

PUBLISHER_PREFIX = "publisher@"
# The agent's own rule for device ids (edge_agent/_config.py); no '@', so a device id can never
# start with PUBLISHER_PREFIX, and no MQTT wildcard or level separator, so `%u` is one topic level.
PUBLISHER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

CA_DAYS = 3650
LEAF_DAYS = 825  # the longest leaf lifetime common TLS clients still accept
CLOCK_SKEW = datetime.timedelta(minutes=5)  # a device whose clock is a little behind still accepts a new cert

CA_KEY = "ca.key"
CA_CERT = "ca.pem"
CRL = "crl.pem"
CLIENT_KEY = "client.key"
CLIENT_CERT = "client.pem"
CLIENT_CSR = "client.csr"
SERVER_KEY = "server.key"
SERVER_CERT = "server.pem"


class PkiError(ConfigError):
    """A PKI operation refused its input: a bad name, a mismatched CSR, a missing CA, a key in the way."""


class IssuedCertificate(BaseModel):
    """What an issuing command made, for printing and for scripts (`--json`)."""

    common_name: str
    serial: str  # hex
    not_after: datetime.datetime
    cert_file: Path
    key_file: Path | None = None  # None when the key stayed with whoever sent the CSR
    ca_file: Path


@dataclass(frozen=True)
class PkiLayout:
    """Where everything lives under one CA directory."""

    root: Path

    @property
    def ca_key(self) -> Path:
        return self.root / CA_KEY

    @property
    def ca_cert(self) -> Path:
        return self.root / CA_CERT

    @property
    def crl(self) -> Path:
        return self.root / CRL

    @property
    def issued(self) -> Path:
        return self.root / "issued"

    @property
    def server(self) -> Path:
        return self.root / "server"

    def publisher(self, name: str) -> Path:
        return self.root / "publishers" / name

    def device(self, device_id: str) -> Path:
        return self.root / "devices" / device_id

    def publisher_names(self) -> list[str]:
        """Publishers that were issued a certificate here (for the broker's ACL)."""
        folder = self.root / "publishers"
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if (p / CLIENT_CERT).is_file())


# -- names ---------------------------------------------------------------------------------------


def check_device_id(device_id: str) -> str:
    if not DEVICE_ID_RE.match(device_id):
        raise PkiError(
            f"invalid device id {device_id!r}: 1-128 of letters, digits, '.', '_', ':', '-', "
            "starting with a letter or digit"
        )
    return device_id


def check_publisher_name(name: str) -> str:
    if not PUBLISHER_NAME_RE.match(name):
        raise PkiError(
            f"invalid publisher name {name!r}: 1-64 of letters, digits, '.', '_', '-', "
            "starting with a letter or digit"
        )
    return name


def publisher_cn(name: str) -> str:
    """The certificate CN, and so the MQTT user name, of a publisher."""
    return PUBLISHER_PREFIX + check_publisher_name(name)


def device_cn(device_id: str) -> str:
    """The certificate CN, and so the MQTT user name, of a device: its id, unchanged."""
    return check_device_id(device_id)


def _identity_urn(cn: str) -> str:
    if cn.startswith(PUBLISHER_PREFIX):
        return f"urn:modelfleet:publisher:{cn[len(PUBLISHER_PREFIX) :]}"
    return f"urn:modelfleet:device:{cn}"


def common_name(cert: x509.Certificate | x509.CertificateSigningRequest) -> str | None:
    """The single CN of a subject; None when there is none or more than one (never guess)."""
    values = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(values) != 1:
        return None
    value = values[0].value
    return value if isinstance(value, str) else value.decode()


# -- files ---------------------------------------------------------------------------------------


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_private(path: Path, data: bytes) -> None:
    """Create a file readable by its owner only; refuse to replace one (a key is never overwritten)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise PkiError(f"{path} already exists; refusing to overwrite a key") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_public(path: Path, data: bytes) -> None:
    """Replace a certificate/CRL atomically, so a broker reading it never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o644)
    os.replace(tmp, path)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise PkiError(f"certificate {path} does not exist") from None
    except ValueError as exc:
        raise PkiError(f"{path} is not a PEM certificate: {exc}") from None


@dataclass(frozen=True)
class CertificateAuthority:
    layout: PkiLayout
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise PkiError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    except OSError as exc:
        raise PkiError(f"cannot read {path}: {exc.strerror}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise PkiError(f"{path} is not an ECDSA P-256 key")
    return key


def load_ca(root: Path) -> CertificateAuthority:
    layout = PkiLayout(Path(root))
    if not layout.ca_key.is_file() or not layout.ca_cert.is_file():
        raise PkiError(f"no CA in {root}; run `modelfleet pki init --dir {root}` first")
    key = _load_key(layout.ca_key)
    cert = load_certificate(layout.ca_cert)
    if cert.public_key().public_numbers() != key.public_key().public_numbers():
        raise PkiError(f"{layout.ca_cert} does not belong to {layout.ca_key}")
    return CertificateAuthority(layout, key, cert)


# -- the CA --------------------------------------------------------------------------------------


def init_ca(root: Path, *, name: str = "modelfleet CA", days: int = CA_DAYS) -> Path:
    """Create the CA key (0600), its self-signed certificate and an empty CRL; never replace a CA."""
    if days < 1:
        raise PkiError("days must be at least 1")
    layout = PkiLayout(Path(root))
    if layout.ca_key.exists() or layout.ca_cert.exists():
        raise PkiError(f"{root} already holds a CA; refusing to replace it")
    layout.root.mkdir(parents=True, exist_ok=True)
    layout.root.chmod(0o700)
    key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(layout.ca_key, _key_pem(key))
    _write_public(layout.ca_cert, _cert_pem(cert))
    _write_crl(CertificateAuthority(layout, key, cert), [])
    return layout.ca_cert


def _leaf(
    ca: CertificateAuthority,
    cn: str,
    public_key: ec.EllipticCurvePublicKey,
    *,
    server_names: list[x509.GeneralName] | None,
    days: int,
) -> x509.Certificate:
    if days < 1:
        raise PkiError("days must be at least 1")
    now = _now()
    not_after = min(now + datetime.timedelta(days=days), ca.cert.not_valid_after_utc)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server_names is not None else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    # A client certificate names its identity in a SAN too: verifiers that follow RFC 5280 strictly
    # (and brokers that map SANs rather than CNs) want one. The CN stays what Mosquitto reads.
    names = server_names if server_names is not None else [x509.UniformResourceIdentifier(_identity_urn(cn))]
    builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    _write_public(ca.layout.issued / f"{cert.serial_number:x}.pem", _cert_pem(cert))
    return cert


def _result(
    cert: x509.Certificate, cert_file: Path, key_file: Path | None, ca_file: Path
) -> IssuedCertificate:
    return IssuedCertificate(
        common_name=common_name(cert) or "",
        serial=f"{cert.serial_number:x}",
        not_after=cert.not_valid_after_utc,
        cert_file=cert_file,
        key_file=key_file,
        ca_file=ca_file,
    )


def _bundle_dir(ca: CertificateAuthority, *, publisher: str | None, device: str | None) -> tuple[str, Path]:
    if (publisher is None) == (device is None):
        raise PkiError("name exactly one of a publisher or a device")
    if publisher is not None:
        return publisher_cn(publisher), ca.layout.publisher(publisher)
    assert device is not None
    return device_cn(device), ca.layout.device(device)


def issue_client(
    root: Path,
    *,
    publisher: str | None = None,
    device: str | None = None,
    out: Path | None = None,
    days: int = LEAF_DAYS,
) -> IssuedCertificate:
    """Make a key *and* a client certificate here, for a publisher or a device.

    The key is made on the CA machine, so it must then be carried to its owner: fine for the
    publisher (usually the same machine), deliberate for a device (prefer `create_request`).
    """
    ca = load_ca(root)
    cn, default_dir = _bundle_dir(ca, publisher=publisher, device=device)
    folder = Path(out) if out is not None else default_dir
    key_file, cert_file, ca_file = folder / CLIENT_KEY, folder / CLIENT_CERT, folder / CA_CERT
    if key_file.exists():
        raise PkiError(f"{key_file} already exists; keys are never overwritten: remove {folder} or use --out")
    key = _new_key()
    _write_private(key_file, _key_pem(key))
    cert = _leaf(ca, cn, key.public_key(), server_names=None, days=days)
    _write_public(cert_file, _cert_pem(cert))
    shutil.copyfile(ca.layout.ca_cert, ca_file)
    return _result(cert, cert_file, key_file, ca_file)


def _server_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not re.fullmatch(r"(?=.{1,253}$)(\*\.)?([A-Za-z0-9-]{1,63}\.)*[A-Za-z0-9-]{1,63}\.?", host):
        raise PkiError(f"{host!r} is neither an IP address nor a DNS name")
    return x509.DNSName(host.rstrip("."))


def issue_server(root: Path, hosts: list[str], *, days: int = LEAF_DAYS) -> IssuedCertificate:
    """The broker's certificate, valid for every host name and IP address clients will dial."""
    if not hosts:
        raise PkiError("name at least one --host the broker is reached by")
    ca = load_ca(root)
    names = [_server_name(h) for h in dict.fromkeys(hosts)]
    folder = ca.layout.server
    key_file, cert_file = folder / SERVER_KEY, folder / SERVER_CERT
    key = _new_key()
    _write_private(key_file, _key_pem(key))
    cert = _leaf(ca, hosts[0], key.public_key(), server_names=names, days=days)
    _write_public(cert_file, _cert_pem(cert))
    return _result(cert, cert_file, key_file, ca.layout.ca_cert)


# -- the CSR flow: the key stays on the device ---------------------------------------------------


def create_request(out: Path, device_id: str) -> tuple[Path, Path]:
    """On the device: make its key (0600) and a CSR naming it; only the CSR is sent anywhere.

    A key already in `out` is kept and re-used (renewal): keys are never overwritten.
    """
    cn = device_cn(device_id)
    folder = Path(out)
    key_file, csr_file = folder / CLIENT_KEY, folder / CLIENT_CSR
    if key_file.exists():
        key = _load_key(key_file)
    else:
        key = _new_key()
        _write_private(key_file, _key_pem(key))
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    _write_public(csr_file, csr.public_bytes(serialization.Encoding.PEM))
    return key_file, csr_file


def sign_request(
    root: Path, csr_file: Path, *, device: str, out: Path | None = None, days: int = LEAF_DAYS
) -> IssuedCertificate:
    """On the CA machine: certify a device's CSR, but only for the device id the operator names.

    The CSR's subject is the requester's claim; the operator's `--device` is the decision. A CSR
    whose CN differs is refused rather than corrected, because a mismatch means the file is not
    the one the operator thinks it is. Only the public key is taken from the CSR: extensions it
    asks for are ignored.
    """
    ca = load_ca(root)
    cn = device_cn(device)
    try:
        csr = x509.load_pem_x509_csr(Path(csr_file).read_bytes())
    except FileNotFoundError:
        raise PkiError(f"CSR {csr_file} does not exist") from None
    except ValueError as exc:
        raise PkiError(f"{csr_file} is not a PEM certificate signing request: {exc}") from None
    try:
        valid = csr.is_signature_valid
    except InvalidSignature:
        valid = False
    if not valid:
        raise PkiError(f"{csr_file}: the CSR's signature does not verify")
    asked = common_name(csr)
    if asked != cn:
        raise PkiError(f"{csr_file} asks for CN {asked!r}, not {cn!r}; refusing to sign it")
    public_key = csr.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or public_key.curve.name != "secp256r1":
        raise PkiError(f"{csr_file}: only ECDSA P-256 keys are accepted (made by `modelfleet pki request`)")
    folder = Path(out) if out is not None else ca.layout.device(device)
    cert_file, ca_file = folder / CLIENT_CERT, folder / CA_CERT
    cert = _leaf(ca, cn, public_key, server_names=None, days=days)
    _write_public(cert_file, _cert_pem(cert))
    shutil.copyfile(ca.layout.ca_cert, ca_file)
    return _result(cert, cert_file, None, ca_file)


# -- revocation ----------------------------------------------------------------------------------


def _issued(ca: CertificateAuthority) -> list[x509.Certificate]:
    if not ca.layout.issued.is_dir():
        return []
    return [load_certificate(p) for p in sorted(ca.layout.issued.glob("*.pem"))]


def _revoked_serials(ca: CertificateAuthority) -> dict[int, datetime.datetime]:
    if not ca.layout.crl.is_file():
        return {}
    crl = x509.load_pem_x509_crl(ca.layout.crl.read_bytes())
    return {r.serial_number: r.revocation_date_utc for r in crl}


def _write_crl(ca: CertificateAuthority, revoked: list[tuple[int, datetime.datetime]]) -> None:
    # OpenSSL refuses *every* client once a CRL is past its next update, so the CRL lives as long
    # as the CA; revoking re-issues it anyway.
    now = _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - CLOCK_SKEW)
        .next_update(ca.cert.not_valid_after_utc)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    for serial, when in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        )
    crl = builder.sign(ca.key, hashes.SHA256())
    _write_public(ca.layout.crl, crl.public_bytes(serialization.Encoding.PEM))


def revoke(root: Path, *, publisher: str | None = None, device: str | None = None) -> list[str]:
    """Revoke every certificate ever issued to one identity; return their serials (hex).

    By identity rather than by serial, because a lost device is lost with all its renewals.
    """
    ca = load_ca(root)
    cn, _ = _bundle_dir(ca, publisher=publisher, device=device)
    revoked = _revoked_serials(ca)
    hits = [c.serial_number for c in _issued(ca) if common_name(c) == cn]
    if not hits:
        raise PkiError(f"no certificate was issued to {cn!r} by the CA in {root}")
    now = _now()
    for serial in hits:
        revoked.setdefault(serial, now)
    _write_crl(ca, sorted(revoked.items()))
    return [f"{s:x}" for s in hits]


# -- checks --------------------------------------------------------------------------------------


def verify_client(cert_file: Path, ca_file: Path) -> str:
    """Check that a client certificate chains to the CA and is fit for TLS client auth; its CN."""
    leaf, ca = load_certificate(Path(cert_file)), load_certificate(Path(ca_file))
    verifier = PolicyBuilder().store(Store([ca])).time(_now()).build_client_verifier()
    try:
        verifier.verify(leaf, [])
    except VerificationError as exc:
        raise PkiError(f"{cert_file} does not verify against {ca_file}: {exc}") from None
    cn = common_name(leaf)
    if cn is None:
        raise PkiError(f"{cert_file} has no single CN")
    return cn


def verify_server(cert_file: Path, ca_file: Path, host: str) -> None:
    """Check that a server certificate chains to the CA and is valid for `host` (name or IP)."""
    leaf, ca = load_certificate(Path(cert_file)), load_certificate(Path(ca_file))
    name = _server_name(host)
    assert isinstance(name, x509.DNSName | x509.IPAddress)
    verifier = PolicyBuilder().store(Store([ca])).time(_now()).build_server_verifier(name)
    try:
        verifier.verify(leaf, [])
    except VerificationError as exc:
        raise PkiError(f"{cert_file} is not valid for {host} under {ca_file}: {exc}") from None
