"""A deployment's scoring keys on the publisher side: kept in the workspace, sealed to devices.

The keys live in `<workspace>/keys/services/<fleet>--<deployment>.json` (owner-only), which is
what `service.get_keys()` reads. On the broker they only ever travel sealed to one device each
(`modules.service_keys`), and only to a device that is both **enrolled** (its X25519 key bound to
its id by the operator, `publisher._enrolment`) and **targeted** by a verified document of the
deployment (its condition, or its `device`, against the device's reported tags). The seal is to
the enrolled key, never to the key a report carries: a forged report can claim tags and get a
copy sealed to the real device's key, which it cannot open.

Versions are per device (`keys:<deployment>@<device>`, as agents keep them): a new version is
published where the device does not hold the current key generation sealed to its current
enrolled key, nothing where it does. A device that stops being targeted keeps what it has until
the keys are regenerated (`deploy keys --regen`), which is the way to revoke them. Deleting the
deployment withdraws every copy with a signed tombstone.

A deployment's container registry credentials (`runtime.settings.registryCredentials`) travel in
the same sealed box (`modules.deployment.registry_secrets`): the published document keeps only
placeholders, and a change of credentials is a new generation sealed again to every device.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr

from modules.atomic_file import write_atomic
from modules.deployment import DeploymentDocument, DeviceFacts, Tombstone, sign_document
from modules.deployment.registry_secrets import RegistryLogin, seal_secrets
from modules.service_keys import ServiceKeys
from modules.signing import load_signing_key
from publisher import _enrolment, _published
from publisher._hub import FleetConnection
from publisher._trust import deployment_slot, keys_slot, verified_documents
from publisher._workspace import Workspace


class StoredKeys(BaseModel):
    primary: str
    secondary: str
    version: int  # the keys' generation: +1 on every regeneration (and registry credentials change)
    # the deployment's container registry credentials (`registryCredentials`), sealed with the keys
    registry: dict[str, dict[str, str]] = Field(default_factory=dict)

    def keys(self) -> ServiceKeys:
        return ServiceKeys(primary=SecretStr(self.primary), secondary=SecretStr(self.secondary))

    def logins(self) -> dict[str, RegistryLogin]:
        return {name: RegistryLogin.model_validate(entry) for name, entry in self.registry.items()}


def _path(workspace: Workspace, name: str) -> Path:
    return workspace.root / "keys" / "services" / f"{workspace.fleet}--{name}.json"


def load(workspace: Workspace, name: str) -> StoredKeys | None:
    try:
        return StoredKeys.model_validate_json(_path(workspace, name).read_text())
    except FileNotFoundError:
        return None


def _save(workspace: Workspace, name: str, stored: StoredKeys) -> None:
    path = _path(workspace, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, stored.model_dump_json().encode(), mode=0o600)


def targeted(doc: DeploymentDocument, device_id: str, tags: dict[str, object]) -> bool:
    """Whether `doc` is meant for the device, by its own rule: `device`, else the condition over
    the tags the device reports (rollout steps aside: keys go ahead of the step)."""
    if doc.device is not None:
        return doc.device == device_id
    return doc.condition.matches(DeviceFacts(device_id, tags=tags).twin())


def eligible(hub: FleetConnection, workspace: Workspace, docs: Iterable[DeploymentDocument]) -> list[str]:
    """Enrolled devices that one of `docs` (verified, or about to be signed) targets."""
    enrolled = _enrolment.all_enrolled(workspace)
    docs = list(docs)
    out = []
    for device_id in sorted(enrolled):
        report = hub.snapshot.reports.get(device_id)
        if report is not None and any(targeted(d, device_id, report.tags) for d in docs):
            out.append(device_id)
    return out


def _documents_of(hub: FleetConnection, name: str) -> list[DeploymentDocument]:
    return [d for d in verified_documents(hub) if d.name == name]


async def distribute(
    hub: FleetConnection,
    workspace: Workspace,
    name: str,
    stored: StoredKeys,
    docs: Iterable[DeploymentDocument] | None = None,
) -> int:
    """Seal the keys to every enrolled device a document of `name` targets; returns how many
    devices got a new copy. `docs` defaults to the verified documents of `name` on the broker."""
    signing_key = load_signing_key(workspace.signing_key_path)
    enrolled = _enrolment.all_enrolled(workspace)
    count = 0
    for device_id in eligible(hub, workspace, _documents_of(hub, name) if docs is None else docs):
        enrolment = enrolled[device_id]
        slot = keys_slot(hub, device_id, name)
        want = _published.SealedTo(generation=stored.version, fingerprint=enrolment.fingerprint)
        have = _published.sealed_to(workspace, slot.identity)
        if have == want and slot.document is not None and slot.document.version == slot.floor(workspace):
            continue  # the device holds exactly this already
        version = slot.floor(workspace) + 1
        wire = seal_secrets(
            stored.keys(),
            stored.logins(),
            enrolment.public_key,
            fleet=workspace.fleet,
            name=name,
            device=device_id,
            version=version,
            signing_key=signing_key,
        )
        _published.record(workspace, slot.identity, version, sealed=want)
        await hub.publish(slot.topic, json.dumps(wire).encode(), retain=True)
        count += 1
    return count


async def ensure(
    hub: FleetConnection,
    workspace: Workspace,
    name: str,
    docs: Iterable[DeploymentDocument] | None = None,
    *,
    registry: Mapping[str, RegistryLogin] | None = None,
) -> StoredKeys:
    """The deployment's keys, created on first use, sealed to every eligible device that lacks them.

    `docs`: the document about to be published, which decides the targets together with the
    verified documents of the same name in other scopes (the fleet-wide one and overrides).
    `registry`: registry credentials taken out of that document; new ones are a new generation,
    sealed again to every device."""
    stored = load(workspace, name)
    if stored is None:
        fresh = ServiceKeys.generate()
        stored = StoredKeys(
            primary=fresh.primary.get_secret_value(), secondary=fresh.secondary.get_secret_value(), version=1
        )
        if registry:
            stored = stored.model_copy(update={"registry": _plain(registry)})
        _save(workspace, name, stored)
    elif registry and _plain(registry) != stored.registry:
        stored = stored.model_copy(update={"registry": _plain(registry), "version": stored.version + 1})
        _save(workspace, name, stored)
    targets = list(docs or [])
    scopes = {d.device for d in targets}
    targets += [d for d in _documents_of(hub, name) if d.device not in scopes]
    await distribute(hub, workspace, name, stored, targets)
    return stored


def _plain(registry: Mapping[str, RegistryLogin]) -> dict[str, dict[str, str]]:
    return {
        name: {"address": c.address, "username": c.username, "password": c.password.get_secret_value()}
        for name, c in sorted(registry.items())
    }


async def regenerate(
    hub: FleetConnection, workspace: Workspace, name: str, which: Literal["primary", "secondary"]
) -> StoredKeys:
    """Replace one key (the other keeps working, so clients can rotate without downtime)."""
    if which not in ("primary", "secondary"):
        raise ValueError("key must be 'primary' or 'secondary'")
    # The targets come from the deployment's document, so it must be ours before anything is sealed.
    deployment_slot(hub, name).refuse_unverified()
    current = load(workspace, name)
    fresh = ServiceKeys.generate().primary.get_secret_value()
    if current is None:
        other = ServiceKeys.generate().secondary.get_secret_value()
        stored = StoredKeys(primary=fresh, secondary=other, version=1)
    else:
        stored = current.model_copy(update={which: fresh, "version": current.version + 1})
    _save(workspace, name, stored)
    await distribute(hub, workspace, name, stored)
    return stored


async def withdraw(hub: FleetConnection, workspace: Workspace, name: str) -> int:
    """On deployment delete: a signed tombstone on every device's keys topic that holds (or, as far
    as this workspace knows, held) keys of `name`; then forget the keys. Returns how many."""
    signing_key = load_signing_key(workspace.signing_key_path)
    devices = {device for device, deployment in hub.snapshot.keys if deployment == name}
    prefix = f"keys:{name}@"
    devices |= {i[len(prefix) :] for i in _published.load(workspace).sealed if i.startswith(prefix)}
    count = 0
    for device_id in sorted(devices):
        slot = keys_slot(hub, device_id, name)
        if slot.tombstone is not None and slot.tombstone.version >= slot.floor(workspace):
            continue  # already withdrawn
        tombstone = Tombstone(
            of="keys",
            fleet=workspace.fleet,
            name=name,
            device=device_id,
            version=slot.floor(workspace) + 1,
            deleted_at=datetime.now(UTC).replace(microsecond=0),
        )
        signed = sign_document(tombstone, signing_key)
        _published.record(workspace, slot.identity, signed.version, unseal=True)
        await hub.publish(slot.topic, json.dumps(signed.to_json_dict()).encode(), retain=True)
        count += 1
    _path(workspace, name).unlink(missing_ok=True)
    return count
