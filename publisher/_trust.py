"""Which retained documents the publisher builds on: only its own, and only where they belong.

The broker is not trusted. On an open (or misconfigured) broker anyone can put a document on
`deployments/<name>`; if `deploy update` took that as "the current version" and signed version +
1 of it, the publisher would launder a forgery into a document every agent trusts, or push its
own numbering so high that agents refuse the real next update. So every retained document the
publisher reads back is judged here before anything is derived from it: signed by this
workspace's key, well-formed, for this fleet, and on the topic of the identity it claims (a
per-device override on the fleet topic is not a fleet-wide document). What fails is reported with
its topic and reason and never used; callers refuse to publish over it unless the operator says
so (`--replace-unverified`), and even then nothing of it is kept, its version included.

Versions come from verified data only: the newest verified document or tombstone on the broker
and the workspace's own record of what it published (`publisher._published`), whichever is
higher.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from modules import ModelfleetError
from modules.deployment import (
    DeploymentDocument,
    Tombstone,
    TombstoneOf,
    document_identity,
    is_tombstone,
    verify_document,
)
from modules.service_keys import ServiceKeysDocument
from publisher import _published
from publisher._hub import FleetConnection, Retained
from publisher._workspace import Workspace

_SHOWN = 200
"""Characters of a name or reason from the broker quoted in a message: a forgery must not flood it."""


class UnverifiedDocumentError(ModelfleetError):
    """A retained document the publisher would have to build on (or overwrite) is not provably its own."""

    def __init__(self, topic: str, name: str | None, reason: str, *, hint: str = "") -> None:
        self.topic = topic
        self.name = name
        self.reason = reason
        what = f"the document on {topic}" + (f" ({name})" if name else "")
        super().__init__(
            f"{what} is not verified: {reason}; nothing was published" + (f". {hint}" if hint else "")
        )


def shown(text: Any) -> str:
    value = str(text)
    return value if len(value) <= _SHOWN else value[:_SHOWN] + "..."


Verified = DeploymentDocument | Tombstone | ServiceKeysDocument


def judge(
    retained: Retained,
    workspace: Workspace,
    *,
    name: str | None,
    device: str | None,
    of: TombstoneOf = "deployment",
) -> tuple[Verified | None, str | None]:
    """`(document, None)` when `retained` is ours and belongs where it is, else `(None, why not)`.

    `name` is the identity the topic implies (None on a device's desired topic, which holds
    whichever override the device has); `device` the device it implies (None on the fleet topic).
    """
    if retained.raw is None:
        return None, shown(retained.problem or "unreadable")
    raw = retained.raw
    try:
        verify_document(raw, [workspace.verify_key], what="it")
    except ModelfleetError as exc:  # every TrustError, and a value with no canonical form
        return None, shown(exc)
    document_model = ServiceKeysDocument if of == "keys" else DeploymentDocument
    model: type[Verified] = Tombstone if is_tombstone(raw) else document_model
    try:
        parsed = model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "document"
        return None, shown(f"signed by this workspace, but malformed: {where}: {first['msg']}")
    if isinstance(parsed, Tombstone) and parsed.of != of:
        return None, f"a deletion of {parsed.of}, on a topic for {of} documents"
    if parsed.fleet != workspace.fleet:
        return None, f"signed for fleet {shown(parsed.fleet)!r}, not {workspace.fleet!r}"
    if name is not None and parsed.name != name:
        return None, f"names {shown(parsed.name)!r}, but sits on the topic of {name!r}"
    if parsed.device != device:
        if device is None:
            return None, f"a per-device document (device {shown(parsed.device)!r}) on a fleet-wide topic"
        return None, f"names device {shown(parsed.device)!r}, but sits on the topic of device {device!r}"
    return parsed, None


@dataclass(frozen=True)
class Slot:
    """What the broker holds for one document identity, judged against the workspace's key."""

    topic: str
    name: str
    device: str | None
    of: TombstoneOf = "deployment"
    retained: Retained | None = None
    document: DeploymentDocument | ServiceKeysDocument | None = None  # a verified live document
    tombstone: Tombstone | None = None  # a verified deletion
    problem: str | None = None  # set when something there does not verify

    @property
    def identity(self) -> str:
        return document_identity(self.name, self.device, of=self.of)

    @property
    def verified_version(self) -> int:
        """The version of what is verifiably there (document or tombstone), 0 for nothing."""
        held = self.document or self.tombstone
        return held.version if held is not None else 0

    def floor(self, workspace: Workspace) -> int:
        """The last version of this identity that anything verified knows of: the broker's
        verified document or tombstone, or the workspace's own record, whichever is higher."""
        return max(self.verified_version, _published.last_version(workspace, self.identity))

    def refuse_unverified(self, hint: str = "") -> None:
        if self.problem is not None:
            raise UnverifiedDocumentError(self.topic, self.name, self.problem, hint=hint)


def _slot(retained: Retained | None, workspace: Workspace, slot: Slot, *, topic_names_it: bool) -> Slot:
    if retained is None:
        return slot
    parsed, problem = judge(
        retained, workspace, name=slot.name if topic_names_it else None, device=slot.device, of=slot.of
    )
    if problem is not None:
        return Slot(slot.topic, slot.name, slot.device, slot.of, retained, problem=problem)
    assert parsed is not None
    if parsed.name != slot.name:  # another deployment's override on this device's desired topic
        return slot
    if isinstance(parsed, Tombstone):
        return Slot(slot.topic, slot.name, slot.device, slot.of, retained, tombstone=parsed)
    return Slot(slot.topic, slot.name, slot.device, slot.of, retained, document=parsed)


def deployment_slot(hub: FleetConnection, name: str, device: str | None = None) -> Slot:
    """The fleet-wide document `name`, or the device's override when `device` is given."""
    if device is None:
        topic = hub.topics.deployment(name)
        retained = hub.snapshot.documents.get(name)
    else:
        topic = hub.topics.desired(device)
        retained = hub.snapshot.overrides.get(device)
    empty = Slot(topic, name, device)
    return _slot(retained, hub.workspace, empty, topic_names_it=device is None)


def keys_slot(hub: FleetConnection, device: str, name: str) -> Slot:
    """The scoring keys of deployment `name` sealed to `device`."""
    empty = Slot(hub.topics.keys(device, name), name, device, "keys")
    return _slot(hub.snapshot.keys.get((device, name)), hub.workspace, empty, topic_names_it=True)


def verified_documents(hub: FleetConnection) -> list[DeploymentDocument]:
    """Every live deployment and override on the broker that is provably this workspace's."""
    out = []
    for name in hub.snapshot.documents:
        slot = deployment_slot(hub, name)
        if isinstance(slot.document, DeploymentDocument):
            out.append(slot.document)
    for device, retained in hub.snapshot.overrides.items():
        parsed, _ = judge(retained, hub.workspace, name=None, device=device)
        if isinstance(parsed, DeploymentDocument):
            out.append(parsed)
    return sorted(out, key=lambda d: (d.name, d.device or ""))


def unverified_documents(hub: FleetConnection) -> list[dict[str, Any]]:
    """Every retained deployment, override or keys document that does not verify, with why."""
    out: list[dict[str, Any]] = []
    snap = hub.snapshot
    for name, retained in sorted(snap.documents.items()):
        _, problem = judge(retained, hub.workspace, name=name, device=None)
        if problem is not None:
            out.append({"topic": retained.topic, "name": shown(name), "device": None, "reason": problem})
    for device, retained in sorted(snap.overrides.items()):
        _, problem = judge(retained, hub.workspace, name=None, device=device)
        if problem is not None:
            claimed = retained.raw.get("name") if retained.raw else None
            name = shown(claimed) if isinstance(claimed, str) else None
            out.append({"topic": retained.topic, "name": name, "device": device, "reason": problem})
    for (device, name), retained in sorted(snap.keys.items()):
        _, problem = judge(retained, hub.workspace, name=name, device=device, of="keys")
        if problem is not None:
            out.append({"topic": retained.topic, "name": shown(name), "device": device, "reason": problem})
    return out
