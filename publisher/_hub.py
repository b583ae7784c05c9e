"""The publisher's view of the control plane: one MQTT connection, the fleet's retained state,
and direct-method calls.

There is no server to ask "what is deployed, who is online": the broker's retained messages are
the answer. A `FleetConnection` subscribes to every retained topic of the fleet and keeps a
`FleetSnapshot` current for as long as it is open, so `status` reads it once and a rollout
watches it change. (Not to be confused with `modules.hub.EmbeddedHub`, the one-machine broker
and registry it may be connected to.)

MQTT has no "end of retained messages" marker. After subscribing, the hub publishes a message to
a topic only it listens on and waits for it to come back (`sync`): a broker queues the retained
messages of a subscription when it handles the SUBSCRIBE, before our later PUBLISH, and delivers
one client's queue in order, so when the echo arrives every retained message already has.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import SecretStr, ValidationError

from modules import ConfigError, ModelfleetError
from modules.device_state import MethodRequest, MethodResponse, Presence, ReportedState
from modules.mqtt import Message, MqttError, MqttSettings, MqttTransport
from modules.tasks import cancel_and_wait
from modules.topics import FleetTopics
from publisher._workspace import Workspace

log = logging.getLogger("modelfleet.publisher.hub")


class HubError(ModelfleetError):
    """The control plane could not be reached or did not answer."""


class MethodTimeoutError(HubError):
    """A direct method got no answer: the device is offline or busy."""


@dataclass
class FleetSnapshot:
    """Every retained message of one fleet, decoded; what `modelfleet status` shows."""

    documents: dict[str, dict[str, Any]] = field(default_factory=dict)  # deployment name -> raw doc
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # device id -> raw per-device doc
    reports: dict[str, ReportedState] = field(default_factory=dict)
    presence: dict[str, Presence] = field(default_factory=dict)

    @property
    def device_ids(self) -> list[str]:
        return sorted(set(self.reports) | set(self.presence))

    def online(self, device_id: str) -> bool:
        presence = self.presence.get(device_id)
        return bool(presence and presence.online)


def _mqtt_settings(workspace: Workspace) -> MqttSettings:
    password = os.environ.get("MODELFLEET_MQTT_PASSWORD")
    try:
        return MqttSettings(
            url=workspace.hub,
            client_id=f"modelfleet-publisher-{os.urandom(6).hex()}",
            username=os.environ.get("MODELFLEET_MQTT_USERNAME") or None,
            password=SecretStr(password) if password else None,
        )
    except ValidationError as exc:
        raise ConfigError(f"invalid hub {workspace.hub!r}: {exc.errors()[0]['msg']}") from None


class FleetConnection:
    """An open connection to one fleet's control plane; use as `async with FleetConnection(ws) as hub`."""

    def __init__(self, workspace: Workspace, *, connect_timeout: float = 10.0) -> None:
        self.workspace = workspace
        self.topics = FleetTopics(workspace.fleet)
        self.snapshot = FleetSnapshot()
        self.changed = asyncio.Event()  # set whenever the snapshot changes; waiters clear it
        self._connect_timeout = connect_timeout
        self._settings = _mqtt_settings(workspace)
        self._token = self._settings.client_id.rsplit("-", 1)[1]
        self._sync_topic = f"{self.topics.prefix}/publisher/sync/{self._token}"
        self._transport = MqttTransport(self._settings)
        self._waiting: dict[str, asyncio.Future[bytes]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> FleetConnection:
        for topic in (
            self.topics.all_deployments,
            f"{self.topics.prefix}/devices/+/desired",
            self.topics.all_reported,
            self.topics.all_status,
            f"{self.topics.prefix}/devices/+/methods/res/+",
            self._sync_topic,
        ):
            self._transport.subscribe(topic)
        try:
            await self._transport.start(connect_timeout=self._connect_timeout)
        except MqttError as exc:
            raise HubError(f"cannot reach the hub at {self.workspace.hub}: {exc}") from None
        self._reader = asyncio.create_task(self._read(), name="hub-reader")
        await self.sync()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await cancel_and_wait(self._reader)
        await self._transport.stop()

    # -- messages -----------------------------------------------------------------------------

    async def _read(self) -> None:
        async for message in self._transport.messages():
            try:
                self._on_message(message)
            except Exception:  # one odd message must not blind the publisher to the rest
                log.exception("could not handle a message on %s", message.topic)

    def _on_message(self, message: Message) -> None:
        topic, payload = message.topic, message.payload
        waiter = self._waiting.pop(topic, None)
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(payload)
            return
        snap = self.snapshot
        head = self.topics.deployment("")
        if topic.startswith(head):
            name = topic[len(head) :]
            if payload:
                snap.documents[name] = json.loads(payload)
            else:
                snap.documents.pop(name, None)
        else:
            parsed = self.topics.parse_device_topic(topic)
            if parsed is None:
                return
            device_id, rest = parsed
            if rest == "reported":
                if payload:
                    snap.reports[device_id] = ReportedState.model_validate_json(payload)
                else:
                    snap.reports.pop(device_id, None)
            elif rest == "status":
                if payload:
                    snap.presence[device_id] = Presence.model_validate_json(payload)
                else:
                    snap.presence.pop(device_id, None)
            elif rest == "desired":
                if payload:
                    snap.overrides[device_id] = json.loads(payload)
                else:
                    snap.overrides.pop(device_id, None)
            else:
                return
        self.changed.set()

    async def _expect(self, topic: str, send: tuple[str, bytes], timeout: float) -> bytes:
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting[topic] = future
        try:
            await self.publish(*send, retain=False)
            async with asyncio.timeout(timeout):
                return await future
        finally:
            self._waiting.pop(topic, None)

    async def sync(self, timeout: float = 10.0) -> None:
        """Return once every message the broker held for us when called has been read."""
        try:
            await self._expect(self._sync_topic, (self._sync_topic, b"sync"), timeout)
        except TimeoutError:
            hub = self.workspace.hub
            raise HubError(f"the hub at {hub} did not echo a message in {timeout:g} s") from None

    # -- actions ------------------------------------------------------------------------------

    async def publish(self, topic: str, payload: bytes, *, retain: bool = True) -> None:
        try:
            await self._transport.publish(topic, payload, qos=1, retain=retain)
        except MqttError as exc:
            raise HubError(str(exc)) from None

    async def call(
        self, device_id: str, method: str, payload: dict[str, Any] | None = None, timeout: float = 10.0
    ) -> MethodResponse:
        """A direct method: request on the device's method topic, answer on a topic of ours."""
        rid = os.urandom(8).hex()
        response_topic = self.topics.method_response(device_id, rid)
        request = MethodRequest(payload=payload or {}, response_topic=response_topic)
        send = (self.topics.method_request(device_id, method, rid), request.model_dump_json().encode())
        try:
            raw = await self._expect(response_topic, send, timeout)
        except TimeoutError:
            raise MethodTimeoutError(
                f"device {device_id!r} did not answer {method} within {timeout:g} s (offline?)"
            ) from None
        return MethodResponse.model_validate_json(raw)

    async def wait_changed(self, timeout: float) -> None:
        """Wait for the next change of the snapshot, or `timeout` seconds, whichever is first."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.changed.wait()
        self.changed.clear()


def now() -> datetime:
    return datetime.now(UTC)
