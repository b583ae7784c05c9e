"""The agent's control plane over Azure IoT Hub, through Microsoft's `azure-iot-device` SDK.

The agent speaks topics (`modules.transport.Transport`); this maps them onto the device twin,
direct methods and device-to-cloud messages (`_twin` has the layout):

- the signed documents in the twin's desired properties arrive as the same retained `Message`s,
  on the same topics, that the MQTT control plane delivers: the agent's intake verifies them as
  it always does;
- a publish on the device's `reported` or `status` topic becomes a reported-properties patch, a
  method response answers the pending direct method, anything else (telemetry) is a D2C message;
- a direct method's payload is the publisher's signed method request, delivered on the method
  request topic.

The SDK's sharp edges, and what is done about each:
- after a broker restart without persistence the SDK does not subscribe again, and its own retry
  would leave a client that hears nothing: the SDK's retry is off, and every connection is a
  fresh client (connect, get the twin, then subscribe) built by this transport with backoff;
- a desired-properties handler registered before `get_twin()` loses the initial twin on a fresh
  session, so the twin is read first, the handler set after it, and the twin read once more to
  close the window between the two; a patch whose `$version` skips one reads the whole twin;
- `get_twin()` (like every SDK call) has no timeout of its own: each is bounded here, and a
  connection whose calls time out is replaced;
- `send_message` that raised may still be delivered later: D2C is at least once (telemetry is
  cumulative, so a duplicate is harmless);
- handlers run on the SDK's own loop in another thread: they only hand their argument to the
  agent's loop (`call_soon_threadsafe`); the blocking handler setters run in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from modules.azureiot import _twin
from modules.azureiot._settings import IotHubSettings, parse_connection_string
from modules.safe_json import DEFAULT_MAX_PAYLOAD_BYTES
from modules.topics import FleetTopics
from modules.transport import Message, TransportConnectError, TransportError

log = logging.getLogger("modelfleet.azureiot")

# One topic level: what a method name or a request id may be to be placed in a topic.
_LEVEL_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_STOP_TIMEOUT_S = 10.0
METHOD_PAYLOAD_BYTES = 120 * 1024  # IoT Hub's limit is 128 KB, with the envelope
# reported sections -> the keys whose change alone is not worth a twin write
_ONLY_TIME = {"state": {"seq", "at"}, "presence": {"at"}}


class _Permanent(Exception):
    """A connection failure that retrying cannot fix (credentials, an untrusted server)."""


class IotHubTransport:
    """One device's self-healing connection to IoT Hub, behind the agent's `Transport` protocol."""

    def __init__(self, settings: IotHubSettings, *, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES):
        self._settings = settings
        self._topics = FleetTopics(settings.fleet)
        self._device = settings.device_id
        self._max_payload = max_payload_bytes
        self._filters: list[str] = []
        self._callbacks: list[Callable[[], Awaitable[None]]] = []
        self._inbox: deque[Message] = deque()
        self._inbox_ready = asyncio.Event()
        self._up = asyncio.Event()
        self._dropped = asyncio.Event()
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._client: Any = None
        self._sdk: Any = None
        self._desired: dict[str, Any] = {}
        self._desired_version: int | None = None
        self._delivered: dict[str, bytes] = {}
        self._reported: dict[str, Any] = {}  # the twin's `modelfleet` reported section, as last known
        self._refreshing: asyncio.Task[None] | None = None
        self._stale = False  # a patch went missing while the twin was being read
        self._callbacks_task: asyncio.Task[None] | None = None
        # request id -> the SDK's method request, and the timer that answers it 504
        self._pending: dict[str, tuple[Any, asyncio.TimerHandle]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._where = settings.hostname or "IoT Hub"
        if settings.connection_string is not None:
            cs = parse_connection_string(settings.connection_string.get_secret_value())
            self._where = cs.get("GatewayHostName") or cs["HostName"]

    # ---------------------------------------------------------------- the Transport protocol

    @property
    def connected(self) -> bool:
        return self._up.is_set()

    async def wait_connected(self, timeout: float | None = None) -> bool:
        if self._up.is_set() or self._stopping:
            return self._up.is_set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._up.wait()
        return self._up.is_set()

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """The twin and methods always arrive; a filter chooses which of them become messages."""
        if topic_filter not in self._filters:
            self._filters.append(topic_filter)

    def on_connect(self, callback: Callable[[], Awaitable[None]]) -> None:
        self._callbacks.append(callback)

    async def start(self, connect_timeout: float = 10.0) -> None:
        if self._task is not None:
            raise TransportError("an IotHubTransport starts once (again only after a failed start)")
        self._loop = asyncio.get_running_loop()
        self._sdk = _import_sdk()
        first: asyncio.Future[None] = self._loop.create_future()
        self._task = self._loop.create_task(self._supervise(first, connect_timeout), name="iothub")
        try:
            await first
        except TransportConnectError:
            await _cancel(self._task)
            self._task = None
            raise
        log.info("IoT Hub connected to %s as %s", self._where, self._device)

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, timeout: float = 10.0
    ) -> None:
        if not await self.wait_connected(timeout):
            raise TransportError(f"not connected to {self._where}")
        client = self._client
        response_head = self._topics.method_response(self._device, "")
        try:
            async with asyncio.timeout(timeout):
                if topic == self._topics.reported(self._device):
                    await self._patch_reported(client, "state", _state_section(payload))
                elif topic == self._topics.status(self._device):
                    await self._patch_reported(client, "presence", _presence_section(payload))
                elif topic.startswith(response_head):
                    await self._answer(client, topic[len(response_head) :], payload)
                else:
                    await self._send_d2c(client, topic, payload)
        except TimeoutError:
            raise TransportError(f"IoT Hub did not confirm within {timeout:g} s ({topic})") from None
        except self._sdk.exceptions.ClientError as exc:
            raise TransportError(f"IoT Hub refused or lost {topic}: {_describe(exc)}") from None

    async def messages(self) -> AsyncIterator[Message]:
        """Documents from the twin and method requests, in arrival order, until `stop()`."""
        while True:
            while self._inbox:
                yield self._inbox.popleft()
            if self._stopping:
                return
            self._inbox_ready.clear()
            await self._inbox_ready.wait()

    async def stop(self) -> None:
        """Cancelling the supervisor is what shuts its client down (in its own task, awaited)."""
        self._stopping = True
        self._inbox_ready.set()
        self._up.clear()
        for _, timer in self._pending.values():
            timer.cancel()
        self._pending.clear()
        await _cancel(self._refreshing)
        await _cancel(self._callbacks_task)
        await _cancel(self._task)
        await self._discard()

    # ---------------------------------------------------------------- connection lifecycle

    async def _supervise(self, first: asyncio.Future[None], connect_timeout: float) -> None:
        """Connect (within `connect_timeout` for the first time), then replace every connection
        that drops with a fresh client, with exponential backoff and jitter. Only this task sets
        `self._client`; whatever ends a connection, its client is shut down before the next."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + connect_timeout
        attempt = 0
        while not self._stopping:
            try:
                if first.done():
                    await self._open()
                else:  # the first connection within `connect_timeout`, whatever the SDK does
                    async with asyncio.timeout(max(0.1, deadline - loop.time())):
                        await self._open()
                attempt = 0
                if not first.done():
                    first.set_result(None)
                else:
                    log.info("IoT Hub reconnected to %s", self._where)
                await self._dropped.wait()
                if not self._stopping:
                    log.warning("IoT Hub connection to %s lost", self._where)
            except asyncio.CancelledError:
                await self._discard()
                raise
            except Exception as exc:
                reason = _describe(exc)
                if not first.done() and (isinstance(exc, _Permanent) or loop.time() >= deadline):
                    await self._discard()
                    first.set_exception(
                        TransportConnectError(f"cannot connect to IoT Hub {self._where}: {reason}")
                    )
                    return
                log.warning("IoT Hub connection to %s failed: %s", self._where, reason)
            await self._discard()
            delay = min(self._settings.reconnect_max_s, self._settings.reconnect_min_s * 2**attempt)
            delay *= random.uniform(0.5, 1.0)
            if not first.done():
                delay = max(0.0, min(delay, deadline - loop.time()))
            attempt = min(attempt + 1, 20)
            await asyncio.sleep(delay)

    async def _discard(self) -> None:
        """The connection is over: nothing waits on it, and its client (threads, socket) is shut."""
        self._up.clear()
        await _cancel(self._callbacks_task)
        client, self._client = self._client, None
        await self._close(client)

    async def _open(self) -> None:
        """A fresh client, connected, the twin delivered, then subscribed: what a connection is."""
        sdk = self._sdk
        client = await asyncio.to_thread(self._make_client)
        self._dropped.clear()
        self._client = client
        loop = self._loop
        assert loop is not None

        def state_changed() -> None:  # the SDK's thread
            loop.call_soon_threadsafe(self._state_changed, client)

        await asyncio.to_thread(setattr, client, "on_connection_state_change", state_changed)
        try:
            await self._bounded(client.connect())
        except (sdk.exceptions.CredentialError, sdk.exceptions.ClientError) as exc:
            if isinstance(exc, sdk.exceptions.CredentialError) or _is_tls_refusal(exc):
                raise _Permanent(_describe(exc)) from None
            raise
        twin = await self._bounded(client.get_twin())
        self._take_twin(twin, redeliver=True)

        def patch_received(patch: Any) -> None:  # the SDK's thread
            loop.call_soon_threadsafe(self._on_patch, client, patch)

        def method_received(request: Any) -> None:  # the SDK's thread
            loop.call_soon_threadsafe(self._on_method, client, request)

        await asyncio.to_thread(setattr, client, "on_twin_desired_properties_patch_received", patch_received)
        await asyncio.to_thread(setattr, client, "on_method_request_received", method_received)
        # What changed between the first read and the subscription would otherwise wait for the
        # next patch.
        self._take_twin(await self._bounded(client.get_twin()), redeliver=False)
        if not client.connected:
            raise TransportError("the connection dropped while it was being set up")
        self._up.set()
        self._callbacks_task = asyncio.create_task(self._run_callbacks(), name="iothub-on-connect")

    def _make_client(self) -> Any:
        settings = self._settings
        client_class = self._sdk.aio.IoTHubDeviceClient
        options: dict[str, Any] = {
            "connection_retry": False,  # this transport reconnects, with a fresh client
            "auto_connect": False,  # a call while disconnected fails at once instead of hanging
            "ensure_desired_properties": False,  # the twin is read on every connection anyway
            "keep_alive": settings.keep_alive_s,
        }
        if settings.ca_file is not None:
            options["server_verification_cert"] = settings.ca_file.read_text()
        if settings.connection_string is not None:
            return client_class.create_from_connection_string(
                settings.connection_string.get_secret_value(), **options
            )
        x509 = self._sdk.X509(cert_file=str(settings.x509_cert_file), key_file=str(settings.x509_key_file))
        return client_class.create_from_x509_certificate(
            x509=x509, hostname=settings.hostname, device_id=settings.device_id, **options
        )

    def _state_changed(self, client: Any) -> None:
        if client is self._client and not client.connected:
            self._up.clear()
            self._dropped.set()

    async def _close(self, client: Any) -> None:
        if client is None:
            return
        # shielded: a cancelled wait must not leave the SDK's threads half shut down
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_STOP_TIMEOUT_S):
                await asyncio.shield(client.shutdown())

    async def _bounded(self, call: Awaitable[Any]) -> Any:
        async with asyncio.timeout(self._settings.operation_timeout_s):
            return await call

    async def _run_callbacks(self) -> None:
        for callback in self._callbacks:
            try:
                await callback()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("an on-connect callback failed")

    # ---------------------------------------------------------------- desired properties in

    def _take_twin(self, twin: Any, *, redeliver: bool) -> None:
        """`redeliver` marks a connection's first read: every document is delivered, and the
        reported section read becomes the base of the patches this connection sends (a later
        read could race a patch in flight, so only the first one sets it)."""
        desired = dict((twin or {}).get("desired") or {})
        version = desired.get("$version")
        self._desired = desired
        self._desired_version = version if isinstance(version, int) else None
        if redeliver:
            reported = (twin or {}).get("reported") or {}
            section = reported.get(_twin.ROOT_KEY)
            self._reported = dict(section) if isinstance(section, dict) else {}
        self._deliver(redeliver)

    def _on_patch(self, client: Any, patch: Any) -> None:
        if client is not self._client or not isinstance(patch, dict):
            return
        version = patch.get("$version")
        known = self._desired_version
        if isinstance(version, int) and known is not None and version <= known:
            return  # already in the twin that was read
        if isinstance(version, int) and known is not None and version > known + 1:
            self._refresh(client)  # a patch was missed: read the whole twin
            return
        self._desired = _twin.merge_patch(self._desired, patch)
        self._desired_version = version if isinstance(version, int) else known
        self._deliver(redeliver=False)

    def _refresh(self, client: Any) -> None:
        """Read the whole twin; again when another patch went missing during the read."""
        self._stale = True
        if self._refreshing is not None and not self._refreshing.done():
            return

        async def refresh() -> None:
            while self._stale and client is self._client:
                self._stale = False
                try:
                    twin = await self._bounded(client.get_twin())
                except Exception as exc:
                    log.warning("could not read the twin (%s); replacing the connection", _describe(exc))
                    if client is self._client:
                        self._up.clear()
                        self._dropped.set()
                    return
                if client is self._client:
                    self._take_twin(twin, redeliver=False)

        self._refreshing = asyncio.create_task(refresh(), name="iothub-twin-refresh")

    def _deliver(self, redeliver: bool) -> None:
        """Every document now in the desired properties, as retained messages: all of them on a
        new connection (as a broker delivers retained messages on subscribe), else what changed;
        a document that left the twin arrives as an empty payload, which changes nothing."""
        slots = _twin.document_slots(self._desired, self._topics, self._device)
        for topic, payload in slots.items():
            if redeliver or self._delivered.get(topic) != payload:
                self._emit(topic, payload, retain=True)
        for topic in set(self._delivered) - set(slots):
            self._emit(topic, b"", retain=True)
        self._delivered = slots

    def _emit(self, topic: str, payload: bytes, *, retain: bool) -> None:
        if not any(_matches(f, topic) for f in self._filters):
            return
        if len(payload) > self._max_payload:
            message = Message(topic, b"", retain, oversized=len(payload))
        else:
            message = Message(topic, payload, retain)
        self._inbox.append(message)
        self._inbox_ready.set()

    # ---------------------------------------------------------------- direct methods

    def _on_method(self, client: Any, request: Any) -> None:
        """The signed request goes to the agent on its method topic; the SDK's request waits here
        for the agent's answer on the response topic of the same id. Ids are the correlation, so
        a second request with an id still being answered is refused here (the agent would refuse
        it too, as a replay) rather than taking the first one's answer."""
        if client is not self._client:
            return
        payload = request.payload
        request_id = payload.get("request_id") if isinstance(payload, dict) else None
        if not (
            _LEVEL_RE.match(request.name or "")
            and isinstance(request_id, str)
            and _LEVEL_RE.match(request_id)
        ):
            error = "the payload must be a signed modelfleet method request (with a request_id)"
            self._in_background(self._respond(client, request, 400, {"error": error}))
            return
        topic = self._topics.method_request(self._device, request.name, request_id)
        if not any(_matches(f, topic) for f in self._filters):
            self._in_background(self._respond(client, request, 404, {"error": "methods are not served"}))
            return
        if request_id in self._pending:
            error = f"refused method request {request_id!r}: replayed (this id is being answered)"
            self._in_background(self._respond(client, request, 409, {"error": error}))
            return
        timer = asyncio.get_running_loop().call_later(
            self._settings.method_answer_s, self._unanswered, client, request_id
        )
        self._pending[request_id] = (request, timer)
        self._emit(topic, json.dumps(payload).encode(), retain=False)

    def _unanswered(self, client: Any, request_id: str) -> None:
        request, _ = self._pending.pop(request_id)
        self._in_background(self._respond(client, request, 504, {"error": "the agent did not answer"}))

    async def _answer(self, client: Any, request_id: str, payload: bytes) -> None:
        pending = self._pending.pop(request_id, None)
        if pending is None:
            log.info("a method response for %r that no pending request awaits; dropped", request_id)
            return
        request, timer = pending
        timer.cancel()
        try:
            response = json.loads(payload)
            status, body = int(response["status"]), _fit(response.get("payload"))
        except (ValueError, KeyError, TypeError):
            status, body = 500, {"error": "the agent's answer was not a method response"}
        await self._respond(client, request, status, body)

    def _in_background(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _respond(self, client: Any, request: Any, status: int, payload: Any) -> None:
        response = self._sdk.MethodResponse.create_from_method_request(request, status, payload)
        try:
            await self._bounded(client.send_method_response(response))
        except Exception as exc:
            # the caller times out, as it would for an offline device
            log.info("method response %s not sent: %s", request.request_id, _describe(exc))

    # ---------------------------------------------------------------- reported properties, D2C out

    async def _patch_reported(self, client: Any, key: str, section: dict[str, Any] | None) -> None:
        """A patch with only what changed since the twin was read or last patched: a `null` for
        each property that went away (a patch merges, it does not replace)."""
        old = self._reported.get(key)
        if section is None:
            patch: Any = None if old is not None else {}
        elif isinstance(old, dict):
            patch = _twin.diff_patch(old, section)
            # IoT Hub throttles twin writes: a heartbeat that changes nothing but the time (the
            # presence refresh, a report whose only news is its `seq` and `at`) writes nothing.
            if set(patch) <= _ONLY_TIME[key]:
                patch = {}
        else:
            patch = section
        if patch == {}:
            return
        await client.patch_twin_reported_properties({_twin.ROOT_KEY: {key: patch}})
        if section is None:
            self._reported.pop(key, None)
        else:
            self._reported[key] = section

    async def _send_d2c(self, client: Any, topic: str, payload: bytes) -> None:
        message = self._sdk.Message(payload, content_encoding="utf-8", content_type="application/json")
        parsed = self._topics.parse_device_topic(topic)
        message.custom_properties["modelfleet-topic"] = parsed[1] if parsed else topic
        await client.send_message(message)


def _fit(body: Any) -> Any:
    """A method response payload within IoT Hub's 128 KB: a log answer keeps its newest lines
    (as the agent's own limit does), anything else that is too big becomes an error."""
    if len(json.dumps(body).encode()) <= METHOD_PAYLOAD_BYTES:
        return body
    lines = body.get("lines") if isinstance(body, dict) else None
    if isinstance(lines, list):
        kept = list(lines)
        while kept and len(json.dumps({**body, "lines": kept}).encode()) > METHOD_PAYLOAD_BYTES:
            kept = kept[max(1, len(kept) // 10) :]
        return {**body, "lines": kept, "truncated": True}
    return {"error": f"the answer is above IoT Hub's method payload limit ({METHOD_PAYLOAD_BYTES} bytes)"}


def _state_section(payload: bytes) -> dict[str, Any] | None:
    if not payload:
        return None  # a decommissioned device's report is cleared
    return _twin.reported_summary(json.loads(payload))


def _presence_section(payload: bytes) -> dict[str, Any] | None:
    if not payload:
        return None
    presence = json.loads(payload)
    return {
        k: v for k, v in (("online", presence.get("online")), ("at", presence.get("at"))) if v is not None
    }


def _matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic-filter matching (`+` one level, `#` the rest)."""
    want, have = topic_filter.split("/"), topic.split("/")
    for i, level in enumerate(want):
        if level == "#":
            return True
        if i >= len(have) or (level != "+" and level != have[i]):
            return False
    return len(want) == len(have)


def _import_sdk() -> Any:
    try:
        import azure.iot.device as sdk
        from azure.iot.device import aio, exceptions
    except ImportError as exc:
        raise TransportConnectError(
            "the IoT Hub control plane needs the azure-iot-device SDK: "
            f"pip install 'modelfleet[azure]' ({exc})"
        ) from None
    assert aio.IoTHubDeviceClient and exceptions.ClientError  # what this module uses of them
    return sdk


def _is_tls_refusal(exc: BaseException) -> bool:
    cause: BaseException | None = exc
    while cause is not None:
        if "TlsExchangeAuthError" in type(cause).__name__ or "CERTIFICATE_VERIFY_FAILED" in str(cause):
            return True
        cause = cause.__cause__
    return False


def _describe(exc: BaseException) -> str:
    """One line: the SDK wraps the real reason in a chain of causes."""
    parts = []
    cause: BaseException | None = exc
    while cause is not None and len(parts) < 4:
        text = str(cause) or type(cause).__name__
        if text not in parts:
            parts.append(text)
        cause = cause.__cause__
    return ": ".join(parts)


async def _cancel(task: asyncio.Task[Any] | None) -> None:
    if task is None or task.done():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
