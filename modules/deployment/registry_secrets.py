"""Container registry credentials of a deployment, sealed to each device with its scoring keys.

IoT Edge carries `runtime.settings.registryCredentials` (address, username, password) in the
deployment manifest, in clear. Here a deployment is a retained message anyone on the broker can
read, so the publisher takes the username and password out of the document (leaving
`SEALED_PLACEHOLDER` in their place) and puts them in the plaintext of the deployment's sealed keys
document (`modules.service_keys`): the same box, the same per-device X25519 seal bound to
fleet/deployment/device/version, the same signature, versions and tombstones. An agent that only
knows scoring keys still opens that document (the extra field is ignored).

Under this scheme, a device that is not enrolled, or not targeted, never gets the credentials;
the agent keeps them in memory only (the sealed document is what it persists).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from modules.deployment._iotedge import SEALED_PLACEHOLDER
from modules.service_keys import ServiceKeys, ServiceKeysDocument, open_sealed, seal_plaintext

__all__ = [
    "SEALED_PLACEHOLDER",
    "DeploymentSecrets",
    "RegistryLogin",
    "is_placeholder",
    "open_secrets",
    "seal_secrets",
    "take_registry_credentials",
]


class RegistryLogin(BaseModel):
    """One entry of `registryCredentials`, as IoT Edge spells it."""

    model_config = ConfigDict(defer_build=True, extra="ignore")

    address: str
    username: str
    password: SecretStr

    def host(self) -> str:
        return self.address.split("://", 1)[-1].rstrip("/")

    def auth_config(self) -> dict[str, str]:
        """What the Docker SDK takes for a pull."""
        return {
            "username": self.username,
            "password": self.password.get_secret_value(),
            "serveraddress": self.host(),
        }


class DeploymentSecrets(ServiceKeys):
    """A deployment's scoring keys and, when its manifest named any, its registry credentials."""

    registry_credentials: dict[str, RegistryLogin] = Field(default_factory=dict)

    def login_for(self, host: str) -> RegistryLogin | None:
        return next((c for c in self.registry_credentials.values() if c.host() == host), None)


def is_placeholder(value: Any) -> bool:
    """An empty value, the sealed marker, or a template variable (`$CONTAINER_REGISTRY_PASSWORD`,
    as IoT Edge's tools write templates): nothing secret to take out."""
    return not value or (isinstance(value, str) and value.startswith("$"))


def take_registry_credentials(data: dict[str, Any]) -> dict[str, RegistryLogin]:
    """The registry credentials a deployment's wire data names in clear, replaced in `data` (in
    place) by SEALED_PLACEHOLDER; {} when it names none (or only placeholders)."""
    content = data.get("content")
    if not isinstance(content, dict):
        return {}
    desired = ((content.get("modulesContent") or {}).get("$edgeAgent") or {}).get("properties.desired")
    runtime = (desired or {}).get("runtime") if isinstance(desired, dict) else None
    settings = runtime.get("settings") if isinstance(runtime, dict) else None
    entries = settings.get("registryCredentials") if isinstance(settings, dict) else None
    if not isinstance(entries, dict):
        return {}
    taken: dict[str, RegistryLogin] = {}
    for name, entry in entries.items():
        if not isinstance(entry, dict):
            continue
        if is_placeholder(entry.get("username")) and is_placeholder(entry.get("password")):
            continue
        taken[name] = RegistryLogin.model_validate(entry)
        entry["username"] = SEALED_PLACEHOLDER
        entry["password"] = SEALED_PLACEHOLDER
    return taken


def seal_secrets(
    keys: ServiceKeys,
    registry: Mapping[str, RegistryLogin],
    device_public: str,
    *,
    fleet: str,
    name: str,
    device: str,
    version: int,
    signing_key: Ed25519PrivateKey,
) -> dict[str, Any]:
    """`modules.service_keys.seal_keys` with the registry credentials in the same sealed box."""
    body: dict[str, Any] = {
        "primary": keys.primary.get_secret_value(),
        "secondary": keys.secondary.get_secret_value(),
    }
    if registry:
        body["registry_credentials"] = {
            key: {"address": c.address, "username": c.username, "password": c.password.get_secret_value()}
            for key, c in registry.items()
        }
    return seal_plaintext(
        json.dumps(body).encode(),
        device_public,
        fleet=fleet,
        name=name,
        device=device,
        version=version,
        signing_key=signing_key,
    )


def open_secrets(
    wire: Mapping[str, Any],
    device_key: X25519PrivateKey,
    trusted: Iterable[Ed25519PublicKey],
    *,
    fleet: str,
    device: str,
) -> tuple[ServiceKeysDocument, DeploymentSecrets]:
    """`modules.service_keys.open_keys`, keeping the registry credentials the box may hold."""
    return open_sealed(
        wire, device_key, trusted, DeploymentSecrets.model_validate_json, fleet=fleet, device=device
    )
