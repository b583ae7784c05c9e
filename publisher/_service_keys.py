"""A deployment's scoring keys on the publisher side: kept in the workspace, sealed to devices.

The keys live in `<workspace>/keys/services/<fleet>--<deployment>.json` (owner-only), which is
what `service.get_keys()` reads. On the broker they only ever travel sealed to one device each
(`modules.service_keys`); every device that reports a public key gets its own copy, so a device
whose tags change later can serve the deployment without another round trip.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, SecretStr

from modules.atomic_file import write_atomic
from modules.service_keys import ServiceKeys, seal_keys
from modules.signing import load_signing_key
from publisher._hub import FleetConnection
from publisher._workspace import Workspace


class StoredKeys(BaseModel):
    primary: str
    secondary: str
    version: int

    def keys(self) -> ServiceKeys:
        return ServiceKeys(primary=SecretStr(self.primary), secondary=SecretStr(self.secondary))


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


async def distribute(hub: FleetConnection, workspace: Workspace, name: str, stored: StoredKeys) -> int:
    """Seal the keys to every device that reports a public key; returns how many got them."""
    signing_key = load_signing_key(workspace.signing_key_path)
    count = 0
    for device_id, report in sorted(hub.snapshot.reports.items()):
        public = report.device.public_key
        if not public:
            continue
        wire = seal_keys(
            stored.keys(),
            public,
            fleet=workspace.fleet,
            name=name,
            device=device_id,
            version=stored.version,
            signing_key=signing_key,
        )
        await hub.publish(hub.topics.keys(device_id, name), json.dumps(wire).encode(), retain=True)
        count += 1
    return count


async def ensure(hub: FleetConnection, workspace: Workspace, name: str) -> StoredKeys:
    """The deployment's keys, created on first use, (re)sent to every device."""
    stored = load(workspace, name)
    if stored is None:
        fresh = ServiceKeys.generate()
        stored = StoredKeys(
            primary=fresh.primary.get_secret_value(), secondary=fresh.secondary.get_secret_value(), version=1
        )
        _save(workspace, name, stored)
    await distribute(hub, workspace, name, stored)
    return stored


async def regenerate(
    hub: FleetConnection, workspace: Workspace, name: str, which: Literal["primary", "secondary"]
) -> StoredKeys:
    """Replace one key (the other keeps working, so clients can rotate without downtime)."""
    if which not in ("primary", "secondary"):
        raise ValueError("key must be 'primary' or 'secondary'")
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


async def withdraw(hub: FleetConnection, workspace: Workspace, name: str) -> None:
    """On deployment delete: clear every device's sealed copy and forget the keys."""
    for device_id in hub.snapshot.reports:
        await hub.publish(hub.topics.keys(device_id, name), b"", retain=True)
    _path(workspace, name).unlink(missing_ok=True)
