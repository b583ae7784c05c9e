"""The publisher's view of the control plane: one MQTT connection, the fleet's retained state,
and direct-method calls.

There is no server to ask "what is deployed, who is online": the broker's retained messages are
the answer. A `FleetConnection` subscribes to every retained topic of the fleet and keeps a
`FleetSnapshot` current for as long as it is open, so `status` reads it once and a rollout
watches it change. (Not to be confused with `modules.hub.EmbeddedHub`, the one-machine broker
and registry it may be connected to.)

The snapshot is what the broker holds, not what the publisher believes: every payload is decoded
with `loads_limited` under the workspace's `max_payload_bytes`, documents are kept as received
(`Retained`, with the reason when they could not be decoded) for `publisher._trust` to verify,
and a report or presence that does not parse marks its device unreadable instead of keeping an
older, healthier-looking one. Nothing a forger sends can crash the reader.

MQTT has no "end of retained messages" marker. After subscribing, the hub publishes a message to
a topic only it listens on and waits for it to come back (`sync`): a broker queues the retained
messages of a subscription when it handles the SUBSCRIBE, before our later PUBLISH, and delivers
one client's queue in order, so when the echo arrives every retained message already has.

A fleet larger than the broker's per-client queue (Mosquitto's `max_queued_messages`, 1000 by
default) does not fit in one subscription's retained delivery: the broker drops what does not fit,
silently. So each wildcard is subscribed on its own, each with the whole queue to itself, and its
echo is the witness: the echo is queued behind the retained messages, so when it is lost while a
second echo comes back, the queue was full and the delivery was cut. Then the devices known some
other way (enrolled in the workspace, or seen on the other wildcard) are read topic by topic in
batches that fit, and what still cannot be known is said: `FleetSnapshot.cut` (and `modelfleet
status --json`'s `incomplete`). docs/hub.md has the broker settings a large fleet needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import SecretStr, ValidationError

from modules import ConfigError, ModelfleetError
from modules.device_state import (
    METHOD_REQUEST_MAX_TTL_S,
    MethodRequest,
    MethodResponse,
    Presence,
    ReportedState,
    sign_method_request,
)
from modules.mqtt import Message, MqttError, MqttSettings, MqttTransport
from modules.safe_json import PayloadRefused, loads_limited
from modules.signing import load_signing_key
from modules.tasks import cancel_and_wait
from modules.topics import FleetTopics
from publisher._enrolment import all_enrolled
from publisher._workspace import Workspace

log = logging.getLogger("modelfleet.publisher.hub")


class HubError(ModelfleetError):
    """The control plane could not be reached or did not answer."""


class MethodTimeoutError(HubError):
    """A direct method got no answer: the device is offline or busy."""


@dataclass(frozen=True)
class Retained:
    """One retained document as the broker holds it: decoded, never trusted.

    Anyone who can write a topic can put anything there, so the snapshot keeps what arrived and
    why it could not be read, and leaves the question "is this ours?" to `publisher._trust`.
    """

    topic: str
    raw: dict[str, Any] | None  # the JSON object as received; None when it could not be decoded
    problem: str | None = None  # why it could not be decoded


@dataclass
class FleetSnapshot:
    """Every retained message of one fleet, decoded; what `modelfleet status` shows."""

    documents: dict[str, Retained] = field(default_factory=dict)  # deployment name -> its topic's content
    overrides: dict[str, Retained] = field(default_factory=dict)  # device id -> its desired topic's content
    keys: dict[tuple[str, str], Retained] = field(default_factory=dict)  # (device id, deployment) -> keys doc
    reports: dict[str, ReportedState] = field(default_factory=dict)
    presence: dict[str, Presence] = field(default_factory=dict)
    # device id -> {"reported" | "status": why it could not be read}; such a device is listed, not trusted
    unreadable: dict[str, dict[str, str]] = field(default_factory=dict)
    # topic filter -> retained messages received before the broker cut its delivery (queue full)
    cut: dict[str, int] = field(default_factory=dict)
    # after a cut: devices read by name, and those known to exist (enrolled, given, or seen on
    # one wildcard) whose report still could not be read. Devices known nowhere stay unknown.
    read_by_name: int = 0
    missing: set[str] = field(default_factory=set)

    @property
    def device_ids(self) -> list[str]:
        return sorted(set(self.reports) | set(self.presence) | set(self.unreadable))

    def online(self, device_id: str) -> bool:
        presence = self.presence.get(device_id)
        return bool(presence and presence.online)

    def problem(self, device_id: str) -> str | None:
        """Why the device's report or presence could not be read, or None."""
        problems = self.unreadable.get(device_id) or {}
        return "; ".join(f"unreadable {kind}: {why}" for kind, why in sorted(problems.items())) or None


def _mqtt_settings(workspace: Workspace) -> MqttSettings:
    password = os.environ.get("MODELFLEET_MQTT_PASSWORD")
    try:
        return MqttSettings(
            url=workspace.hub,
            client_id=f"modelfleet-publisher-{os.urandom(6).hex()}",
            username=os.environ.get("MODELFLEET_MQTT_USERNAME") or None,
            password=SecretStr(password) if password else None,
            tls_ca_file=workspace.path_setting(workspace.config.mqtt_tls_ca_file),
            tls_cert_file=workspace.path_setting(workspace.config.mqtt_tls_cert_file),
            tls_key_file=workspace.path_setting(workspace.config.mqtt_tls_key_file),
        )
    except ValidationError as exc:
        raise ConfigError(f"invalid hub {workspace.hub!r}: {exc.errors()[0]['msg']}") from None


class FleetConnection:
    """An open connection to one fleet's control plane; use as `async with FleetConnection(ws) as hub`."""

    def __init__(
        self,
        workspace: Workspace,
        *,
        connect_timeout: float = 10.0,
        known_devices: Iterable[str] | None = None,
    ) -> None:
        """`known_devices`: ids that exist besides the workspace's enrolled devices, read by name
        when the broker cuts a wildcard's retained delivery."""
        self.workspace = workspace
        self._known = set(known_devices or ())
        self._echoes = itertools.count()
        self._received = 0  # messages read: a delivery still flowing is not a lost echo
        self.topics = FleetTopics(workspace.fleet)
        self.snapshot = FleetSnapshot()
        self.changed = asyncio.Event()  # set whenever the snapshot changes; waiters clear it
        self._connect_timeout = connect_timeout
        self._settings = _mqtt_settings(workspace)
        self._token = self._settings.client_id.rsplit("-", 1)[1]
        self._sync_topic = f"{self.topics.prefix}/publisher/sync/{self._token}"
        self._transport = MqttTransport(self._settings, max_payload_bytes=workspace.max_payload_bytes)
        self._waiting: dict[str, asyncio.Future[bytes]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._oversized: int | None = None  # the size of the message being handled, if dropped unread

    async def __aenter__(self) -> FleetConnection:
        # Nothing retained on these: they go with the connection.
        for topic in (f"{self.topics.prefix}/devices/+/methods/res/+", f"{self._sync_topic}/+"):
            self._transport.subscribe(topic)
        try:
            await self._transport.start(connect_timeout=self._connect_timeout)
        except MqttError as exc:
            raise HubError(f"cannot reach the hub at {self.workspace.hub}: {exc}") from None
        self._reader = asyncio.create_task(self._read(), name="hub-reader")
        try:
            await self.sync()
            # One wildcard at a time: each has the broker's whole queue for its retained messages.
            for topic in (
                self.topics.all_deployments,
                f"{self.topics.prefix}/devices/+/desired",
                f"{self.topics.prefix}/devices/+/keys/+",
                self.topics.all_reported,
                self.topics.all_status,
            ):
                await self._subscribe_whole(topic)
            if self.snapshot.cut:
                await self._read_known_devices()
        except BaseException:
            await self.__aexit__()
            raise
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
        self._oversized = message.oversized
        self._received += 1
        waiter = self._waiting.pop(topic, None)
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(payload)
            return
        snap = self.snapshot
        head = self.topics.deployment("")
        if topic.startswith(head):
            _keep(snap.documents, topic[len(head) :], self._retained(topic, payload))
        else:
            parsed = self.topics.parse_device_topic(topic)
            if parsed is None:
                return
            device_id, rest = parsed
            if rest in ("reported", "status"):
                self._on_device_state(device_id, rest, payload)
            elif rest == "desired":
                _keep(snap.overrides, device_id, self._retained(topic, payload))
            elif rest.startswith("keys/") and "/" not in rest[len("keys/") :]:
                _keep(snap.keys, (device_id, rest[len("keys/") :]), self._retained(topic, payload))
            else:
                return
        self.changed.set()

    def _decode(self, payload: bytes) -> Any:
        if self._oversized is not None:  # dropped unread by the transport
            limit = self.workspace.max_payload_bytes
            raise PayloadRefused(f"payload of {self._oversized} bytes is above the limit of {limit}")
        return loads_limited(payload, max_bytes=self.workspace.max_payload_bytes)

    def _retained(self, topic: str, payload: bytes) -> Retained | None:
        """None for an empty payload (nothing retained); otherwise what arrived, or why not."""
        if not payload and self._oversized is None:
            return None
        try:
            raw = self._decode(payload)
        except PayloadRefused as exc:
            return Retained(topic, None, exc.reason)
        if not isinstance(raw, dict):
            return Retained(topic, None, f"a JSON {type(raw).__name__}, not an object")
        return Retained(topic, raw)

    def _on_device_state(self, device_id: str, rest: str, payload: bytes) -> None:
        """A report or presence that does not parse replaces what was known: a device that now
        sends garbage must not keep looking healthy from its last good report."""
        snap = self.snapshot
        book: dict[str, Any] = snap.reports if rest == "reported" else snap.presence
        model = ReportedState if rest == "reported" else Presence
        problems = snap.unreadable.setdefault(device_id, {})
        problems.pop(rest, None)
        if not problems:
            del snap.unreadable[device_id]
        if not payload and self._oversized is None:
            book.pop(device_id, None)
            return
        try:
            value = model.model_validate(self._decode(payload))
        except PayloadRefused as exc:
            problem = exc.reason
        except ValidationError as exc:
            first = exc.errors()[0]
            problem = f"{'.'.join(str(p) for p in first['loc']) or rest}: {first['msg']}"
        else:
            if rest == "reported" and value.device_id != device_id:
                problem = f"report names device {value.device_id[:64]!r}"
            else:
                book[device_id] = value
                return
        book.pop(device_id, None)
        snap.unreadable.setdefault(device_id, {})[rest] = problem[:300]

    async def _expect(self, topic: str, send: tuple[str, bytes], timeout: float) -> bytes:
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting[topic] = future
        try:
            await self.publish(*send, retain=False)
            async with asyncio.timeout(timeout):
                return await future
        finally:
            self._waiting.pop(topic, None)

    def _echo_topic(self) -> str:
        """A fresh topic per echo: a late first echo must not pass for the second."""
        return f"{self._sync_topic}/{next(self._echoes)}"

    async def sync(self, timeout: float = 10.0) -> None:
        """Return once every message the broker held for us when called has been read."""
        topic = self._echo_topic()
        try:
            await self._expect(topic, (topic, b"sync"), timeout)
        except TimeoutError:
            hub = self.workspace.hub
            raise HubError(f"the hub at {hub} did not echo a message in {timeout:g} s") from None

    async def _echoed(self, quiet_s: float = 1.0) -> bool:
        """Whether an echo comes back; waits as long as other messages keep arriving (a large
        retained delivery ahead of it) and otherwise `quiet_s`. Not back by then: a second echo
        decides between "dropped" (False: the second comes back first) and "late" (True)."""
        topic = self._echo_topic()
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting[topic] = future
        try:
            await self.publish(topic, b"sync", retain=False)
            while not future.done():
                seen = self._received
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(quiet_s):
                        await asyncio.shield(future)
                if not future.done() and self._received == seen:
                    await self.sync()  # reachable and answering; the first echo had its chance
                    return future.done()
            return True
        finally:
            self._waiting.pop(topic, None)

    async def _subscribe_whole(self, topic_filter: str) -> None:
        """Subscribe and read every retained message of `topic_filter`, or record that the broker
        cut the delivery (its queue was full: the echo behind the messages was dropped)."""
        before = self._received
        self._transport.subscribe(topic_filter)
        if await self._echoed():
            return
        got = self._received - before - 1  # less the second echo
        self.snapshot.cut[topic_filter] = got
        log.warning(
            "the hub at %s cut the retained messages of %s after %d (its per-client queue is full; "
            "Mosquitto: raise max_queued_messages, docs/hub.md); reading known devices one by one",
            self.workspace.hub,
            topic_filter,
            got,
        )

    async def _read_known_devices(self) -> None:
        """After a cut: the devices known by name (enrolled, given, or seen on one wildcard but
        not the other) are read topic by topic, in batches that fit the queue the cut revealed."""
        snap = self.snapshot
        known = set(self._known) | set(all_enrolled(self.workspace)) | set(snap.reports) | set(snap.presence)
        known |= set(snap.unreadable)
        wanted = sorted(d for d in known if d not in snap.reports or d not in snap.presence)
        per_batch = max(1, (min(snap.cut.values()) - 2) // 4)  # two topics each, room for the echo
        pending = wanted
        for _attempt in range(3):  # a batch cut again is read again, in smaller batches
            for at in range(0, len(pending), per_batch):
                for device_id in pending[at : at + per_batch]:
                    if device_id not in snap.reports:
                        self._transport.subscribe(self.topics.reported(device_id))
                    if device_id not in snap.presence:
                        self._transport.subscribe(self.topics.status(device_id))
                if not await self._echoed():
                    per_batch = max(1, per_batch // 2)
            pending = [d for d in pending if d not in snap.reports and d not in snap.unreadable]
            if not pending:
                break
        snap.read_by_name = sum(d in snap.reports or d in snap.unreadable for d in wanted)
        snap.missing = set(pending)
        if snap.missing:
            log.warning("%d known devices have no retained report on the hub", len(snap.missing))

    # -- actions ------------------------------------------------------------------------------

    async def publish(self, topic: str, payload: bytes, *, retain: bool = True) -> None:
        try:
            await self._transport.publish(topic, payload, qos=1, retain=retain)
        except MqttError as exc:
            raise HubError(str(exc)) from None

    async def call(
        self, device_id: str, method: str, payload: dict[str, Any] | None = None, timeout: float = 10.0
    ) -> MethodResponse:
        """A direct method: a signed request on the device's method topic, valid for `timeout`
        seconds; the answer comes on the response topic the protocol fixes for its id."""
        rid, wire = signed_method_request(self.workspace, device_id, method, payload, timeout)
        response_topic = self.topics.method_response(device_id, rid)
        send = (self.topics.method_request(device_id, method, rid), json.dumps(wire).encode())
        try:
            raw = await self._expect(response_topic, send, timeout)
        except TimeoutError:
            raise MethodTimeoutError(
                f"device {device_id!r} did not answer {method} within {timeout:g} s (offline?)"
            ) from None
        try:
            return MethodResponse.model_validate(self._decode(raw))
        except (PayloadRefused, ValidationError) as exc:
            reason = exc.reason if isinstance(exc, PayloadRefused) else exc.errors()[0]["msg"]
            raise HubError(
                f"device {device_id!r} answered {method} with an unreadable response: {reason}"
            ) from None

    async def wait_changed(self, timeout: float) -> None:
        """Wait for the next change of the snapshot, or `timeout` seconds, whichever is first."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.changed.wait()
        self.changed.clear()


def _keep(book: dict[Any, Retained], key: Any, value: Retained | None) -> None:
    if value is None:
        book.pop(key, None)
    else:
        book[key] = value


def signed_method_request(
    workspace: Workspace, device_id: str, method: str, payload: dict[str, Any] | None, timeout: float
) -> tuple[str, dict[str, Any]]:
    """A new request id and the workspace's signed request for it, valid for `timeout` seconds:
    what a device checks whichever control plane carries the request."""
    rid = os.urandom(8).hex()
    request = MethodRequest(
        fleet=workspace.fleet,
        device=device_id,
        method=method,
        request_id=rid,
        # Agents refuse a request valid for longer than METHOD_REQUEST_MAX_TTL_S.
        expires_at=now() + timedelta(seconds=min(max(timeout, 1.0), METHOD_REQUEST_MAX_TTL_S)),
        payload=payload or {},
    )
    return rid, sign_method_request(request, load_signing_key(workspace.signing_key_path))


def now() -> datetime:
    return datetime.now(UTC)
