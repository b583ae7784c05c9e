"""Scoring keys sealed to this device: opened into memory only, stored sealed.

The same sealed box may also hold the deployment's container registry credentials
(`modules.deployment.registry_secrets`); `keys_for` hands both to the module runtime.

A keys document arrives encrypted to the device's X25519 key and signed by a trusted publisher.
The plaintext keys never touch the disk here; what is persisted is the sealed document as
received, reopened at start-up. A document whose version is not above the floor of its
deployment's keys is a replay; the floors are persisted, so a clear on the broker or a restart
does not make an older captured document acceptable again. Keys are withdrawn only by a signed
tombstone; an empty payload (an unsigned clear) changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from modules import ModelfleetError
from modules.deployment import DeploymentError, Tombstone, is_tombstone, verify_document
from modules.safe_json import DEFAULT_MAX_PAYLOAD_BYTES, PayloadRefused, loads_limited
from modules.service_keys import DeviceKey, ServiceKeys

if TYPE_CHECKING:
    from modules.deployment.registry_secrets import DeploymentSecrets


@dataclass(frozen=True)
class KeysChanged:
    version: int | None  # None: withdrawn


@dataclass(frozen=True)
class KeysRefused:
    reason: str


@dataclass(frozen=True)
class KeysCleared:
    """The retained keys document was cleared without a signed tombstone: the keys stay."""


class SealedKeys:
    def __init__(
        self,
        device_key: DeviceKey,
        trusted: Sequence[Ed25519PublicKey],
        *,
        fleet: str,
        device_id: str,
    ) -> None:
        self.device_key = device_key
        self.trusted = list(trusted)
        self.fleet = fleet
        self.device_id = device_id
        # deployment -> the sealed document as received (the persisted form); the agent's state
        # file owns this mapping, `restore` hands it over
        self.sealed: dict[str, dict[str, Any]] = {}
        # deployment -> the highest keys version accepted (documents and tombstones); persisted
        self.floors: dict[str, int] = {}
        # deployment -> (version, keys), with its registry credentials when it has any
        self._opened: dict[str, tuple[int, ServiceKeys | DeploymentSecrets]] = {}

    def restore(self, sealed: dict[str, dict[str, Any]], floors: dict[str, int]) -> None:
        self.sealed = sealed
        self.floors = floors
        self._opened.clear()
        for name, wire in list(sealed.items()):
            if self._open(name, wire) is None:
                version = self._opened[name][0]
                self.floors[name] = max(self.floors.get(name, 0), version)

    def keys_for(self, deployment: str | None) -> ServiceKeys | None:
        entry = self._opened.get(deployment) if deployment else None
        return entry[1] if entry else None

    def versions(self) -> dict[str, int]:
        return {name: version for name, (version, _) in self._opened.items()}

    def receive(
        self, name: str, payload: bytes, *, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    ) -> KeysChanged | KeysRefused | KeysCleared | None:
        """A keys document (or a signed tombstone) for deployment `name`; None when nothing changed."""
        if not payload:
            return KeysCleared() if name in self.sealed else None
        try:
            wire = loads_limited(payload, max_bytes=max_bytes)
            if not isinstance(wire, dict):
                raise ValueError("not a JSON object")
        except (PayloadRefused, ValueError) as exc:
            return KeysRefused(f"malformed keys document: {exc}")
        if is_tombstone(wire):
            return self._withdraw(name, wire)
        version = wire.get("version")
        floor = self.floors.get(name)
        if floor is not None and isinstance(version, int) and version <= floor:
            if self.sealed.get(name) == wire:
                return None
            return KeysRefused(f"replayed keys document: version {version} is not above {floor}")
        reason = self._open(name, wire)
        if reason is not None:
            return KeysRefused(reason)
        self.sealed[name] = wire
        self.floors[name] = self._opened[name][0]
        return KeysChanged(self._opened[name][0])

    def _withdraw(self, name: str, wire: dict[str, Any]) -> KeysChanged | KeysRefused | None:
        try:
            verify_document(wire, self.trusted, what=f"deletion of the keys of {name!r}")
            tombstone = Tombstone.model_validate(wire)
        except (DeploymentError, ValidationError) as exc:
            return KeysRefused(f"refused deletion of keys: {exc}")
        if (tombstone.of, tombstone.fleet, tombstone.name, tombstone.device) != (
            "keys",
            self.fleet,
            name,
            self.device_id,
        ):
            return KeysRefused(
                f"a deletion for another fleet, device or document arrived on the keys of {name!r}"
            )
        floor = self.floors.get(name, 0)
        if tombstone.version <= floor:
            if tombstone.version == floor and name not in self.sealed:
                return None  # applied already (a retained redelivery)
            return KeysRefused(f"replayed deletion of keys: version {tombstone.version} is not above {floor}")
        self.floors[name] = tombstone.version
        self.sealed.pop(name, None)
        self._opened.pop(name, None)
        return KeysChanged(None)

    def _open(self, name: str, wire: dict[str, Any]) -> str | None:
        """Open a sealed keys document into memory; the reason when it cannot be used."""
        from modules.deployment.registry_secrets import open_secrets  # with the first sealed box

        try:
            doc, keys = open_secrets(
                wire, self.device_key.private(), self.trusted, fleet=self.fleet, device=self.device_id
            )
        except ModelfleetError as exc:
            return str(exc)
        if doc.name != name:
            return f"keys for {doc.name!r} were published on the topic of {name!r}"
        if not keys.registry_credentials:  # keys alone: as an agent without the docker runtime has them
            keys = ServiceKeys(primary=keys.primary, secondary=keys.secondary)  # type: ignore[assignment]
        self._opened[name] = (doc.version, keys)
        return None
