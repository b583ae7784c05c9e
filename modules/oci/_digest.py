"""Content digests: the only identity an artifact has that cannot lie."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from modules._errors import DigestMismatchError

DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> tuple[str, int]:
    """Digest and size of a file, read in chunks so large models never sit in memory."""
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return "sha256:" + h.hexdigest(), size


def check_digest(digest: str) -> str:
    if not DIGEST_RE.match(digest):
        raise DigestMismatchError(f"not a sha256 digest: {digest!r}")
    return digest


def verify_bytes(data: bytes, expected: str, what: str = "blob") -> bytes:
    actual = sha256_bytes(data)
    if actual != expected:
        raise DigestMismatchError(f"{what} content does not match its digest {expected} (got {actual})")
    return data
