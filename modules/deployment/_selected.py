"""What selection works on and gives, apart from how it selects: an agent holds a device's facts
and reports its selection from its first pass, before any deployment (and the manifest's
models) has arrived."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from modules.deployment._manifest import Manifest


@dataclass(frozen=True)
class DeviceFacts:
    """What target conditions can see about a device, shaped like an IoT Hub device twin."""

    device_id: str
    tags: Mapping[str, Any] = field(default_factory=dict)
    reported: Mapping[str, Any] = field(default_factory=dict)
    desired: Mapping[str, Any] = field(default_factory=dict)

    def twin(self) -> dict[str, Any]:
        return {
            "deviceId": self.device_id,
            "tags": self.tags,
            "properties": {"reported": self.reported, "desired": self.desired},
        }


@dataclass(frozen=True)
class DeploymentRef:
    name: str
    version: int


@dataclass(frozen=True)
class Selection:
    """The effective desired state; `applied` lists the base first, then layers in applied order;
    `refused` the layers left out, each with why."""

    manifest: Manifest | None
    applied: tuple[DeploymentRef, ...] = ()
    deferred: tuple[DeploymentRef, ...] = ()
    refused: tuple[tuple[DeploymentRef, str], ...] = ()
