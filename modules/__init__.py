"""The contract between publisher and device: package format, media types, OCI client, errors.

Nothing here imports `publisher`, `edge_agent` or `simulator`; they all import from here.
"""

from modules._errors import (
    AuthenticationError,
    ConfigError,
    DigestMismatchError,
    InvalidModelError,
    InvalidPackageError,
    ModelfleetError,
    NotFoundError,
    RegistryError,
    RegistryUnreachableError,
    VersionConflictError,
)

__all__ = [
    "AuthenticationError",
    "ConfigError",
    "DigestMismatchError",
    "InvalidModelError",
    "InvalidPackageError",
    "ModelfleetError",
    "NotFoundError",
    "RegistryError",
    "RegistryUnreachableError",
    "VersionConflictError",
]
