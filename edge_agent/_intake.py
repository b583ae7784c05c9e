"""The gate every control-plane document passes before the agent considers it.

Order matters: the size (before any parsing), parse (bounded depth and numbers), then the
signature (over the document exactly as received), then the schema, then whether it is for this
fleet/device (a per-device document only on that device's topic) and above the version floor of
its identity (name and scope, never the topic), then the device's own policy (denied env names).
Whatever fails is a `Refused` with a reason the publisher will read in `modelfleet status`;
nothing refused ever touches running modules.

A deletion is a signed tombstone like any document. A retained message cleared without one (an
empty payload, which anyone who can write the topic can send) is `Cleared`: nothing changes.

Parsing, the signature and the schema depend only on the payload's bytes and the trusted keys, so
their result is kept per process (`_checked`), keyed by the payload's SHA-256, the key set and the
size limit: agents sharing a process (the simulator's fleet) check a document once, and share
the parsed result (nothing mutates it). What depends on the device (topic scope, floors, its env
policy) is judged by each agent, every time.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from edge_agent._config import DEFAULT_DENIED_ENV
from modules.deployment import (
    DeploymentError,
    Tombstone,
    document_identity,
    is_tombstone,
    verify_document,
)
from modules.safe_json import DEFAULT_MAX_PAYLOAD_BYTES, PayloadRefused, loads_limited
from modules.topics import FleetTopics

if TYPE_CHECKING:  # loaded with the first document, not before
    from modules.deployment import DeploymentDocument


@dataclass(frozen=True)
class Accepted:
    document: DeploymentDocument
    raw: dict[str, Any]
    key_id: str
    identity: str


@dataclass(frozen=True)
class Deleted:
    """A signed tombstone: the document in `slot` goes, and `version` is its identity's floor."""

    name: str
    identity: str
    version: int


@dataclass(frozen=True)
class Cleared:
    """The retained message was cleared without a signed tombstone: nothing changes."""

    name: str


@dataclass(frozen=True)
class Unchanged:
    name: str


@dataclass(frozen=True)
class Refused:
    reason: str
    name: str | None = None
    version: int | None = None


Verdict = Accepted | Deleted | Cleared | Unchanged | Refused


@dataclass(frozen=True)
class _Checked:
    """What the bytes alone decide: a refusal, or the parsed, verified, validated object."""

    raw: dict[str, Any] | None = None
    key_id: str = ""
    document: DeploymentDocument | None = None
    tombstone: Tombstone | None = None
    refused: Refused | None = None


# (payload sha256, trusted key set, size limit) -> what those bytes are; most recent last
_checked: OrderedDict[tuple[bytes, frozenset[bytes], int], _Checked] = OrderedDict()
CHECKED_KEPT = 64  # a handful of live documents per fleet; forged floods only churn the oldest


def _key_set(trusted: Sequence[Ed25519PublicKey]) -> frozenset[bytes]:
    return frozenset(k.public_bytes_raw() for k in trusted)


class Intake:
    def __init__(
        self,
        topics: FleetTopics,
        device_id: str,
        trusted: Sequence[Ed25519PublicKey],
        *,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        denied_env: Sequence[str] = DEFAULT_DENIED_ENV,
    ) -> None:
        self.topics = topics
        self.device_id = device_id
        self.trusted = list(trusted)
        self.max_payload_bytes = max_payload_bytes
        self.denied_env = list(denied_env)

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
        """`last_versions` maps document identity -> the floor (highest version accepted)."""
        slot = self._slot(topic)
        if slot is None:
            return None, Refused(f"not a deployment topic: {topic}")
        if not payload:
            return slot, Cleared(slot)
        checked = self._check(payload)
        if checked.refused is not None:
            return slot, checked.refused
        raw = checked.raw
        assert raw is not None
        name = raw.get("name") if isinstance(raw.get("name"), str) else None
        version = raw.get("version") if type(raw.get("version")) is int else None
        if checked.tombstone is not None:
            return slot, self._tombstone(slot, checked.tombstone, accepted_raw, last_versions)
        doc = checked.document
        key_id = checked.key_id
        assert doc is not None
        scope = self._scope_problem(slot, doc.fleet, doc.name, doc.device)
        if scope is not None:
            return slot, Refused(scope, name, version)
        denied = self._denied_env(doc)
        if denied is not None:
            return slot, Refused(denied, name, version)
        identity = document_identity(doc.name, doc.device)
        last = last_versions.get(identity)
        if last is not None and doc.version <= last:
            stored = accepted_raw.get(slot)
            if doc.version == last and (stored is raw or stored == raw):
                return slot, Unchanged(slot)
            return slot, Refused(
                f"replayed document: version {doc.version} is not above {last}, the last accepted",
                name,
                version,
            )
        return slot, Accepted(doc, raw, key_id, identity)

    def _check(self, payload: bytes) -> _Checked:
        """Parse, verify and validate, in that order, once per process for the same bytes."""
        key = (hashlib.sha256(payload).digest(), _key_set(self.trusted), self.max_payload_bytes)
        checked = _checked.get(key)
        if checked is not None:
            _checked.move_to_end(key)
            return checked
        checked = self._check_now(payload)
        _checked[key] = checked
        if len(_checked) > CHECKED_KEPT:
            _checked.popitem(last=False)
        return checked

    def _check_now(self, payload: bytes) -> _Checked:
        try:
            raw = loads_limited(payload, max_bytes=self.max_payload_bytes)
        except PayloadRefused as exc:
            return _Checked(refused=Refused(f"malformed document: {exc}"))
        if not isinstance(raw, dict):
            return _Checked(refused=Refused("malformed document: not a JSON object"))
        name = raw.get("name") if isinstance(raw.get("name"), str) else None
        version = raw.get("version") if type(raw.get("version")) is int else None
        try:
            key_id = verify_document(raw, self.trusted)
        except DeploymentError as exc:
            return _Checked(refused=Refused(str(exc), name, version))
        if is_tombstone(raw):
            try:
                tombstone = Tombstone.model_validate(raw)
            except ValidationError as exc:
                return _Checked(refused=Refused(f"malformed deletion: {_first_error(exc)}", name, version))
            return _Checked(raw=raw, key_id=key_id, tombstone=tombstone)
        from modules.deployment import DeploymentDocument

        try:
            doc = DeploymentDocument.model_validate(raw)
        except ValidationError as exc:
            return _Checked(refused=Refused(f"malformed document: {_first_error(exc)}", name, version))
        return _Checked(raw=raw, key_id=key_id, document=doc)

    def _scope_problem(self, slot: str, fleet: str, name: str, device: str | None) -> str | None:
        """Why a document does not belong on the topic it came on (None when it does)."""
        if fleet != self.topics.fleet:
            return f"document is for fleet {fleet!r}, not {self.topics.fleet!r}"
        if slot.startswith("device:"):
            if device != self.device_id:
                return "a per-device document must name this device"
        elif device is not None:
            return f"a per-device document for {device!r} was published on the fleet topic of {slot!r}"
        elif name != slot:
            return f"document {name!r} was published on the topic of {slot!r}"
        return None

    def _tombstone(
        self,
        slot: str,
        tombstone: Tombstone,
        accepted_raw: Mapping[str, Mapping[str, Any]],
        last_versions: Mapping[str, int],
    ) -> Verdict:
        name, version = tombstone.name, tombstone.version
        if tombstone.of != "deployment":
            return Refused(f"a deletion of {tombstone.of} on a deployment topic", name, version)
        scope = self._scope_problem(slot, tombstone.fleet, tombstone.name, tombstone.device)
        if scope is not None:
            return Refused(scope, name, version)
        last = last_versions.get(tombstone.identity)
        if last is not None and version <= last:
            if version == last and accepted_raw.get(slot) is None:
                return Unchanged(slot)  # this deletion was applied already (a retained redelivery)
            return Refused(f"replayed deletion: version {version} is not above {last}", name, version)
        return Deleted(slot, tombstone.identity, version)

    def _denied_env(self, doc: DeploymentDocument) -> str | None:
        for module_name, module in doc.content.modules.items():
            reason = self.denied_env_reason(module_name, module.env or {})
            if reason is not None:
                return reason
        return None

    def denied_env_reason(self, module_name: str, env: Mapping[str, Any]) -> str | None:
        """Why this device's policy refuses a module's environment (None when it does not)."""
        for variable in env:
            pattern = next((p for p in self.denied_env if fnmatch.fnmatchcase(variable, p)), None)
            if pattern is not None:
                return (
                    f"module {module_name!r} sets {variable}, which this device's policy denies "
                    f"(pattern {pattern!r})"
                )
        return None


def _first_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{where}: {first['msg']}"
