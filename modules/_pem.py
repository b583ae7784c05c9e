"""PEM for the two fixed-form keys the agent reads at every start, without cryptography's
`serialization` package.

That package loads a reader for every format it knows (RSA, DSA, EC, OpenSSH with bcrypt, legacy
ciphers): about 1.2 MiB resident in an agent that only ever reads Ed25519 public keys (the
publishers it trusts) and its own X25519 private key. Both have one DER form: a constant prefix
and the 32 raw key bytes. A PEM holding exactly that form is read here; anything else is left to
cryptography (imported then), whose answer and error message it stays.
"""

from __future__ import annotations

import base64
import binascii

# SubjectPublicKeyInfo { AlgorithmIdentifier { id-Ed25519 (1.3.101.112) }, BIT STRING (32 bytes) }
ED25519_PUBLIC_PREFIX = bytes.fromhex("302a300506032b6570032100")
# PKCS#8 PrivateKeyInfo { version 0, AlgorithmIdentifier { id-X25519 (1.3.101.110) },
#                         OCTET STRING { OCTET STRING (32 bytes) } }
X25519_PRIVATE_PREFIX = bytes.fromhex("302e020100300506032b656e04220420")
PUBLIC_KEY = "PUBLIC KEY"
PRIVATE_KEY = "PRIVATE KEY"
_RAW_LEN = 32


def raw_key(data: bytes, label: str, prefix: bytes) -> bytes | None:
    """The 32 key bytes when `data` is one PEM block `label` holding `prefix` + 32 bytes; else None
    (the caller then asks cryptography, which reads every other form or says why not)."""
    begin, end = f"-----BEGIN {label}-----".encode(), f"-----END {label}-----".encode()
    text = data.strip()
    if not text.startswith(begin) or not text.endswith(end):
        return None
    body = b"".join(text[len(begin) : -len(end)].split())
    try:
        der = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(der) != len(prefix) + _RAW_LEN or not der.startswith(prefix):
        return None
    return der[len(prefix) :]


def encode(raw: bytes, label: str, prefix: bytes) -> bytes:
    """The PEM cryptography writes for these keys (DER in base64, 64 columns, a final newline)."""
    b64 = base64.b64encode(prefix + raw)
    lines = [b64[i : i + 64] + b"\n" for i in range(0, len(b64), 64)]
    return f"-----BEGIN {label}-----\n".encode() + b"".join(lines) + f"-----END {label}-----\n".encode()
