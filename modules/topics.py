"""Every MQTT topic of the self-hosted control plane, in one place.

Layout, under one prefix per fleet (`modelfleet/<fleet>/`):

    deployments/<name>                         retained  signed DeploymentDocument
    devices/<id>/desired                       retained  signed per-device override document
    devices/<id>/reported                      retained  ReportedState
    devices/<id>/status                        retained  Presence (also the last-will message)
    devices/<id>/keys/<deployment>             retained  scoring keys sealed to the device (signed)
    devices/<id>/telemetry                                Telemetry
    devices/<id>/methods/req/<method>/<rid>               MethodRequest
    devices/<id>/methods/res/<rid>                        MethodResponse

Deployments, overrides and keys are deleted by a signed tombstone published retained in their
place (`modules.deployment.Tombstone`); an empty retained payload (an unsigned clear) is ignored
by agents.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ROOT = "modelfleet"

# A device id is one topic level (and the CN of its client certificate, the broker's user name):
# no '/', '+', '#', '@' or spaces.
DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


@dataclass(frozen=True)
class FleetTopics:
    fleet: str

    @property
    def prefix(self) -> str:
        return f"{ROOT}/{self.fleet}"

    # deployments
    def deployment(self, name: str) -> str:
        return f"{self.prefix}/deployments/{name}"

    @property
    def all_deployments(self) -> str:
        return f"{self.prefix}/deployments/+"

    # per device
    def device(self, device_id: str) -> str:
        return f"{self.prefix}/devices/{device_id}"

    def desired(self, device_id: str) -> str:
        return f"{self.device(device_id)}/desired"

    def reported(self, device_id: str) -> str:
        return f"{self.device(device_id)}/reported"

    def status(self, device_id: str) -> str:
        return f"{self.device(device_id)}/status"

    def keys(self, device_id: str, deployment: str) -> str:
        return f"{self.device(device_id)}/keys/{deployment}"

    def all_keys(self, device_id: str) -> str:
        return f"{self.device(device_id)}/keys/+"

    def telemetry(self, device_id: str) -> str:
        return f"{self.device(device_id)}/telemetry"

    def method_request(self, device_id: str, method: str, request_id: str) -> str:
        return f"{self.device(device_id)}/methods/req/{method}/{request_id}"

    def method_requests(self, device_id: str) -> str:
        return f"{self.device(device_id)}/methods/req/+/+"

    def method_response(self, device_id: str, request_id: str) -> str:
        return f"{self.device(device_id)}/methods/res/{request_id}"

    @property
    def all_reported(self) -> str:
        return f"{self.prefix}/devices/+/reported"

    @property
    def all_status(self) -> str:
        return f"{self.prefix}/devices/+/status"

    def parse_device_topic(self, topic: str) -> tuple[str, str] | None:
        """`(device_id, rest)` for a topic under devices/, else None."""
        head = f"{self.prefix}/devices/"
        if not topic.startswith(head):
            return None
        device_id, _, rest = topic[len(head) :].partition("/")
        return (device_id, rest) if device_id and rest else None
