"""The OCI distribution client and the media types of modelfleet's artifacts."""

from modules.oci._auth import RegistryCredentials
from modules.oci._client import ImageManifest, PushOutcome, RegistryClient, TransferStats
from modules.oci._digest import check_digest, sha256_bytes, sha256_file
from modules.oci._url import normalize_registry_url, registry_host

__all__ = [
    "ImageManifest",
    "PushOutcome",
    "RegistryClient",
    "RegistryCredentials",
    "TransferStats",
    "check_digest",
    "normalize_registry_url",
    "registry_host",
    "sha256_bytes",
    "sha256_file",
]
