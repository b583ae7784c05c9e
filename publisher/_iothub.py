"""The publisher's view of a fleet whose control plane is Azure IoT Hub.

`IotHubFleet` offers what `FleetConnection` offers to the deploy, status and rollout code (a
`FleetSnapshot`, `publish` by topic, `call`, `wait_changed`), built from device twins read and
written through the hub's service REST API (`_iothub_rest`), so `deploy create/update/delete`,
`status` and rollouts run unchanged on either control plane.

Where a document goes (`modules.azureiot._twin` has the layout): a fleet-wide deployment or its
tombstone into the desired properties of every device of the fleet that holds that deployment
already or that its target condition selects (by the tags the device reports; a device that has
not reported yet gets it and judges for itself); an override or keys document into its device's
twin. A device belongs to the fleet when its reported state names the fleet, or its twin's tags
do (`tags.modelfleet.fleet`, set when it is provisioned). Reports come from the reported
properties, presence from the hub's own `connectionState`: IoT Hub has no last will, and needs
none.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from modules import ConfigError
from modules.azureiot import SCHEME, desired_document_patch, document_slots, state_from_summary
from modules.deployment import DeploymentDocument, DeviceFacts
from modules.device_state import (
    MethodResponse,
    Presence,
    ReportedState,
)
from modules.safe_json import PayloadRefused, loads_limited
from modules.topics import FleetTopics
from publisher._hub import FleetSnapshot, HubError, MethodTimeoutError, Retained, signed_method_request
from publisher._iothub_rest import IotHubApiError, ServiceCredentials, TwinApi
from publisher._workspace import Workspace

log = logging.getLogger("modelfleet.publisher.iothub")

CONNECTION_STRING_ENV = "MODELFLEET_IOTHUB_SERVICE_CONNECTION_STRING"
POLL_S = 2.0  # how often a watching rollout reads the twins again


def is_iothub(hub: str) -> bool:
    return hub.startswith(f"{SCHEME}:")


def _api(workspace: Workspace) -> TwinApi:
    text = os.environ.get(CONNECTION_STRING_ENV)
    if not text:
        raise ConfigError(
            f"the hub is IoT Hub ({workspace.hub}): set {CONNECTION_STRING_ENV} to a connection string "
            "of a shared access policy with registry read, service connect (and device connect) rights"
        )
    credentials = ServiceCredentials.from_connection_string(text)
    url = urlsplit(workspace.hub)
    if url.hostname and url.hostname.lower() != credentials.host.lower():
        raise ConfigError(f"the hub URL names {url.hostname} but the connection string {credentials.host}")
    base = f"https://{url.netloc}" if url.netloc else None
    return TwinApi(credentials, base)


class IotHubFleet:
    """`async with IotHubFleet(ws) as hub`: the fleet's twins, read at once and after every write."""

    def __init__(self, workspace: Workspace, *, known_devices: Iterable[str] | None = None) -> None:
        self.workspace = workspace
        self.topics = FleetTopics(workspace.fleet)
        self.snapshot = FleetSnapshot()
        self.changed = asyncio.Event()
        self._api = _api(workspace)
        self._twins: dict[str, dict[str, Any]] = {}

    async def __aenter__(self) -> IotHubFleet:
        await self._api.__aenter__()
        try:
            await self.sync()
        except BaseException:
            await self._api.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._api.__aexit__()

    async def sync(self, timeout: float = 10.0) -> None:
        try:
            twins = await self._api.twins()
        except IotHubApiError as exc:
            raise HubError(str(exc)) from None
        self._twins = {t["deviceId"]: t for t in twins if isinstance(t.get("deviceId"), str)}
        before = self.snapshot
        self.snapshot = self._snapshot()
        if _view(before) != _view(self.snapshot):
            self.changed.set()

    # -- reading ------------------------------------------------------------------------------

    def _members(self) -> dict[str, dict[str, Any]]:
        fleet = self.workspace.fleet
        out = {}
        for device, twin in self._twins.items():
            tags = twin.get("tags") or {}
            tagged = isinstance(tags.get("modelfleet"), dict) and tags["modelfleet"].get("fleet") == fleet
            state = _reported_section(twin).get("state") or {}
            if tagged or state.get("fleet") == fleet:
                out[device] = twin
        return out

    def _snapshot(self) -> FleetSnapshot:
        snap = FleetSnapshot()
        limit = self.workspace.max_payload_bytes
        for device, twin in self._members().items():
            desired = (twin.get("properties") or {}).get("desired") or {}
            for topic, payload in document_slots(desired, self.topics, device).items():
                retained = _retained(topic, payload, limit)
                parsed = self.topics.parse_device_topic(topic)
                if parsed is None:
                    name = topic.rsplit("/", 1)[1]
                    held = snap.documents.get(name)
                    if held is None or _version(retained) > _version(held):
                        snap.documents[name] = retained
                elif parsed[1] == "desired":
                    snap.overrides[device] = retained
                else:
                    snap.keys[(device, parsed[1].split("/", 1)[1])] = retained
            section = _reported_section(twin)
            state = section.get("state")
            if state:
                try:
                    snap.reports[device] = ReportedState.model_validate(state_from_summary(state))
                except ValidationError as exc:
                    snap.unreadable.setdefault(device, {})["reported"] = exc.errors()[0]["msg"]
            presence = section.get("presence") or {}
            online = twin.get("connectionState") == "Connected" if "connectionState" in twin else None
            snap.presence[device] = Presence(
                device_id=device,
                online=bool(presence.get("online")) if online is None else online,
                at=presence.get("at"),
            )
        return snap

    # -- writing ------------------------------------------------------------------------------

    async def publish(self, topic: str, payload: bytes, *, retain: bool = True) -> None:
        """A document into the twins it belongs in (see the module's docstring)."""
        text = payload.decode()
        parsed = self.topics.parse_device_topic(topic)
        writes: dict[str, dict[str, Any]] = {}
        if parsed is None and topic.startswith(f"{self.topics.prefix}/deployments/"):
            name = topic.rsplit("/", 1)[1]
            patch = desired_document_patch("deployments", name, text)
            writes = {d: patch for d in self._targets(name, payload)}
        elif parsed is not None and parsed[1] == "desired":
            writes = {parsed[0]: desired_document_patch("override", None, text)}
        elif parsed is not None and parsed[1].startswith("keys/"):
            writes = {parsed[0]: desired_document_patch("keys", parsed[1].split("/", 1)[1], text)}
        else:
            raise HubError(f"nothing on IoT Hub takes {topic}: its devices' reported state is their own")
        if not writes:
            log.warning(
                "no device of fleet %s is targeted by %s; nothing written", self.workspace.fleet, topic
            )
        try:
            for device, patch in writes.items():
                await self._api.patch_desired(device, patch)
        except IotHubApiError as exc:
            raise HubError(str(exc)) from None
        await self.sync()

    def _targets(self, name: str, payload: bytes) -> list[str]:
        """Devices that hold the deployment now, and those its condition selects (or cannot judge
        yet: no report)."""
        try:
            doc: DeploymentDocument | None = DeploymentDocument.model_validate(json.loads(payload))
        except (ValueError, ValidationError):
            doc = None  # a tombstone: only where the deployment is
        out = []
        for device, twin in self._members().items():
            desired = (twin.get("properties") or {}).get("desired") or {}
            holds = self.topics.deployment(name) in document_slots(desired, self.topics, device)
            report = self.snapshot.reports.get(device)
            selects = doc is not None and (
                report is None or doc.condition.matches(DeviceFacts(device, tags=report.tags).twin())
            )
            if holds or selects:
                out.append(device)
        return sorted(out)

    async def call(
        self, device_id: str, method: str, payload: dict[str, Any] | None = None, timeout: float = 10.0
    ) -> MethodResponse:
        """A direct method through IoT Hub; its payload is the signed request, as on MQTT."""
        _rid, wire = signed_method_request(self.workspace, device_id, method, payload, timeout)
        try:
            status, body = await self._api.invoke(device_id, method, wire, max(5, math.ceil(timeout)))
        except IotHubApiError as exc:
            if exc.status in (404, 504):
                raise MethodTimeoutError(
                    f"device {device_id!r} did not answer {method} within {timeout:g} s (offline?)"
                ) from None
            raise HubError(str(exc)) from None
        return MethodResponse(status=status, payload=body)

    async def wait_changed(self, timeout: float) -> None:
        """IoT Hub pushes nothing to a service client: the twins are read again until they change."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not self.changed.is_set():
                    await asyncio.sleep(POLL_S)
                    await self.sync()
        self.changed.clear()


def _reported_section(twin: dict[str, Any]) -> dict[str, Any]:
    reported = (twin.get("properties") or {}).get("reported") or {}
    section = reported.get("modelfleet")
    return section if isinstance(section, dict) else {}


def _retained(topic: str, payload: bytes, limit: int) -> Retained:
    try:
        raw = loads_limited(payload, max_bytes=limit)
    except PayloadRefused as exc:
        return Retained(topic, None, exc.reason)
    if not isinstance(raw, dict):
        return Retained(topic, None, "not a JSON object")
    return Retained(topic, raw)


def _version(retained: Retained) -> int:
    version = (retained.raw or {}).get("version")
    return version if isinstance(version, int) else -1


def _view(snap: FleetSnapshot) -> Any:
    return (
        {k: v.raw for k, v in snap.documents.items()},
        {k: v.model_dump_json() for k, v in snap.reports.items()},
        {k: v.online for k, v in snap.presence.items()},
    )
