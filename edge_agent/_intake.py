"""The gate every control-plane document passes before the agent considers it.

Order matters: parse, then the signature (over the document exactly as received), then the schema,
then whether it is for this fleet/device and newer than what was accepted. Whatever fails is a
`Refused` with a reason the publisher will read in `modelfleet status`; nothing refused ever
touches running modules.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from modules.deployment import DeploymentDocument, DeploymentError, verify_document
from modules.topics import FleetTopics


@dataclass(frozen=True)
class Accepted:
    document: DeploymentDocument
    raw: dict[str, Any]
    key_id: str


@dataclass(frozen=True)
class Deleted:
    name: str


@dataclass(frozen=True)
class Unchanged:
    name: str


@dataclass(frozen=True)
class Refused:
    reason: str
    name: str | None = None
    version: int | None = None


Verdict = Accepted | Deleted | Unchanged | Refused


class Intake:
    def __init__(self, topics: FleetTopics, device_id: str, trusted: Sequence[Ed25519PublicKey]) -> None:
        self.topics = topics
        self.device_id = device_id
        self.trusted = list(trusted)

    def _slot(self, topic: str) -> str | None:
        """The key a document is stored under: the deployment name, or `device:<id>` for overrides."""
        head = self.topics.deployment("")
        if topic.startswith(head) and "/" not in topic[len(head) :]:
            return topic[len(head) :] or None
        if topic == self.topics.desired(self.device_id):
            return f"device:{self.device_id}"
        return None

    def evaluate(
        self,
        topic: str,
        payload: bytes,
        accepted_raw: Mapping[str, Mapping[str, Any]],
        last_versions: Mapping[str, int],
    ) -> tuple[str | None, Verdict]:
        slot = self._slot(topic)
        if slot is None:
            return None, Refused(f"not a deployment topic: {topic}")
        if not payload:
            return slot, Deleted(slot)
        try:
            raw = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return slot, Refused(f"malformed document: not JSON ({exc.msg if hasattr(exc, 'msg') else exc})")
        if not isinstance(raw, dict):
            return slot, Refused("malformed document: not a JSON object")
        name = raw.get("name") if isinstance(raw.get("name"), str) else None
        version = raw.get("version") if isinstance(raw.get("version"), int) else None
        try:
            key_id = verify_document(raw, self.trusted)
        except DeploymentError as exc:
            return slot, Refused(str(exc), name, version)
        try:
            doc = DeploymentDocument.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            return slot, Refused(f"malformed document: {where}: {first['msg']}", name, version)
        if doc.fleet != self.topics.fleet:
            return slot, Refused(
                f"document is for fleet {doc.fleet!r}, not {self.topics.fleet!r}", name, version
            )
        if slot.startswith("device:"):
            if doc.device != self.device_id:
                return slot, Refused("a per-device document must name this device", name, version)
        elif doc.name != slot:
            return slot, Refused(
                f"document {doc.name!r} was published on the topic of {slot!r}", name, version
            )
        last = last_versions.get(slot)
        if last is not None and doc.version <= last:
            if doc.version == last and accepted_raw.get(slot) == raw:
                return slot, Unchanged(slot)
            return slot, Refused(
                f"replayed document: version {doc.version} is not above {last}, the last accepted",
                name,
                version,
            )
        return slot, Accepted(doc, raw, key_id)
