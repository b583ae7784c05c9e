"""Scoring keys sealed to this device: opened into memory only, stored sealed.

A keys document arrives encrypted to the device's X25519 key and signed by a trusted publisher.
The plaintext keys never touch the disk here; what is persisted is the sealed document as
received, reopened at start-up. A document whose version is not above the one in use is a replay.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from modules import ModelfleetError
from modules.service_keys import ServiceKeys, open_keys


@dataclass(frozen=True)
class KeysChanged:
    version: int | None  # None: withdrawn


@dataclass(frozen=True)
class KeysRefused:
    reason: str


class SealedKeys:
    def __init__(
        self,
        device_key: X25519PrivateKey,
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
        self._opened: dict[str, tuple[int, ServiceKeys]] = {}  # deployment -> (version, keys)

    def restore(self, sealed: dict[str, dict[str, Any]]) -> None:
        self.sealed = sealed
        self._opened.clear()
        for name, wire in list(sealed.items()):
            self._open(name, wire)

    def keys_for(self, deployment: str | None) -> ServiceKeys | None:
        entry = self._opened.get(deployment) if deployment else None
        return entry[1] if entry else None

    def versions(self) -> dict[str, int]:
        return {name: version for name, (version, _) in self._opened.items()}

    def receive(self, name: str, payload: bytes) -> KeysChanged | KeysRefused | None:
        """A keys document for deployment `name`; None when nothing changed."""
        if not payload:
            if self.sealed.pop(name, None) is None:
                return None
            self._opened.pop(name, None)
            return KeysChanged(None)
        previous = self._opened.get(name)
        try:
            wire = json.loads(payload)
            if not isinstance(wire, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            return KeysRefused(f"malformed keys document: {exc}")
        version = wire.get("version")
        if previous is not None and isinstance(version, int) and version <= previous[0]:
            if self.sealed.get(name) == wire:
                return None
            return KeysRefused(f"replayed keys document: version {version} is not above {previous[0]}")
        reason = self._open(name, wire)
        if reason is not None:
            return KeysRefused(reason)
        self.sealed[name] = wire
        return KeysChanged(self._opened[name][0])

    def _open(self, name: str, wire: dict[str, Any]) -> str | None:
        """Open a sealed keys document into memory; the reason when it cannot be used."""
        try:
            doc, keys = open_keys(
                wire, self.device_key, self.trusted, fleet=self.fleet, device=self.device_id
            )
        except ModelfleetError as exc:
            return str(exc)
        if doc.name != name:
            return f"keys for {doc.name!r} were published on the topic of {name!r}"
        self._opened[name] = (doc.version, keys)
        return None
