"""What this workspace has published: the last version of every document identity it signed.

The broker is where versions are normally read from (the retained document, verified), but it is
not a reliable memory: a broker restarted without persistence forgets every retained message, and
on an open broker a forged document can stand in the real one's place. Agents, meanwhile,
remember the last version of every identity for ever and refuse anything not above it. So the
publisher keeps its own floor per identity (`document_identity`: `iris`, `iris@dev-01`,
`keys:iris@dev-01`) in `<workspace>/fleets/<fleet>/published.json`, and numbers every new
document above both that floor and the verified broker version. A version is recorded *before*
it is published: a failed publish leaves a gap, never a reused number.

For sealed scoring keys it also records which key generation was sealed to which enrolled device
key, so a re-seal is skipped where the device already holds exactly that, and done (as a new
version) where the device's key or the keys changed.

Two workstations sharing a signing key see each other's documents on the broker (they verify),
so this file is a floor, not the source of truth; deleting it loses nothing the broker still holds.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modules import ConfigError
from modules.atomic_file import write_atomic
from publisher._workspace import Workspace

FILE_NAME = "published.json"


class SealedTo(BaseModel):
    """The keys generation (`StoredKeys.version`) sealed to a device, and to which of its keys."""

    model_config = ConfigDict(extra="forbid")

    generation: int
    fingerprint: str


class Published(BaseModel):
    model_config = ConfigDict(extra="forbid")

    versions: dict[str, int] = Field(default_factory=dict)
    sealed: dict[str, SealedTo] = Field(default_factory=dict)


def _path(workspace: Workspace) -> Path:
    return workspace.fleet_dir / FILE_NAME


def load(workspace: Workspace) -> Published:
    path = _path(workspace)
    try:
        return Published.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return Published()
    except (ValidationError, json.JSONDecodeError) as exc:
        raise ConfigError(
            f"{path} is damaged ({str(exc).splitlines()[0]}); fix or remove it "
            "(versions then come from the broker's verified documents only)"
        ) from None


def last_version(workspace: Workspace, identity: str) -> int:
    return load(workspace).versions.get(identity, 0)


def sealed_to(workspace: Workspace, identity: str) -> SealedTo | None:
    return load(workspace).sealed.get(identity)


def record(
    workspace: Workspace, identity: str, version: int, *, sealed: SealedTo | None = None, unseal: bool = False
) -> None:
    """Remember `version` as published for `identity` (never lowering a floor); `sealed` records
    what a keys document holds, `unseal` forgets it (the keys were withdrawn)."""
    # Re-read right before writing, so two commands of one workspace lose neither's floor.
    state = load(workspace)
    state.versions[identity] = max(version, state.versions.get(identity, 0))
    if sealed is not None:
        state.sealed[identity] = sealed
    elif unseal:
        state.sealed.pop(identity, None)
    path = _path(workspace)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, state.model_dump_json(indent=1).encode(), mode=0o600)
