"""Direct methods: a request on the device's request topic, an answer on the response topic.

`ping`, `getState`, `restartModule` and `getLogs`, as IoT Hub's direct methods, over whatever
transport the agent speaks.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from edge_agent._module_runtime import ModuleRuntime
from modules import ModelfleetError
from modules.device_state import (
    METHOD_REQUEST_MAX_TTL_S,
    MethodRequest,
    MethodResponse,
    ReportedState,
    verify_method_request,
)
from modules.safe_json import loads_limited
from modules.topics import FleetTopics
from modules.transport import Message, Transport, TransportError

MAX_LOG_LINES = 10_000
MAX_REQUEST_BYTES = 64 * 1024
# A getLogs answer stays well under the broker's payload limit (1 MiB by default), which would
# otherwise drop it without telling anyone: the newest lines that fit are sent.
MAX_LOG_BYTES = 256 * 1024
DEFAULT_LOG_LINES = 100


class DirectMethods:
    """Answers signed method requests. Who may call is proven by the signature, not by who could
    publish on the topic: a request must be signed by a trusted publisher key for this fleet,
    device, method and request id, unexpired, and not seen before (ids are remembered until
    their expiry, across restarts). The answer always goes to the response topic the protocol
    fixes for the request id."""

    def __init__(
        self,
        device_id: str,
        topics: FleetTopics,
        runtime: ModuleRuntime,
        reported_state: Callable[[], ReportedState],
        trusted: Sequence[Ed25519PublicKey],
        on_refused: Callable[[str, str], None] = lambda _topic, _reason: None,
        on_seen: Callable[[], None] = lambda: None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """`clock`: the device's time, against which request expiries are judged."""
        self.device_id = device_id
        self.topics = topics
        self.runtime = runtime
        self.reported_state = reported_state
        self.trusted = list(trusted)
        self.on_refused = on_refused
        self.on_seen = on_seen
        self.clock = clock
        # request id -> its expiry (ISO 8601); the agent's state file owns the mapping
        self.seen: dict[str, str] = {}

    def restore(self, seen: dict[str, str]) -> None:
        self.seen = seen
        self._forget_expired(self.clock())

    def _forget_expired(self, now: datetime) -> None:
        for request_id, expiry in list(self.seen.items()):
            if datetime.fromisoformat(expiry) <= now:
                del self.seen[request_id]

    async def answer(self, transport: Transport, message: Message, rest: str) -> None:
        """`rest` is the topic below the device's own prefix: methods/req/<method>/<request id>."""
        parts = rest.split("/")
        if len(parts) != 4:
            return
        method, request_id = parts[2], parts[3]
        response = self.check(message, method, request_id)
        if response is None:
            request = MethodRequest.model_validate(json.loads(message.payload))
            response = await self.call(method, request.payload)
        topic = self.topics.method_response(self.device_id, request_id)
        with contextlib.suppress(TransportError):
            await transport.publish(topic, response.model_dump_json().encode(), qos=1)

    def check(self, message: Message, method: str, request_id: str) -> MethodResponse | None:
        """None when the request may run; otherwise the refusal to answer with."""
        now = self.clock()
        wire: Any = None
        try:
            wire = loads_limited(message.payload, max_bytes=MAX_REQUEST_BYTES)
            if not isinstance(wire, dict):
                raise ValueError("not a JSON object")
            request = verify_method_request(
                wire,
                self.trusted,
                fleet=self.topics.fleet,
                device=self.device_id,
                method=method,
                request_id=request_id,
                now=now,
            )
        except (ModelfleetError, ValueError) as exc:
            reason = f"refused method request {request_id!r}: {_reason(exc)}{_clock_hint(wire, now)}"
            self.on_refused(message.topic, reason)
            return MethodResponse(status=403, payload={"error": reason})
        self._forget_expired(now)
        if request_id in self.seen:
            reason = f"refused method request {request_id!r}: replayed (this id was already answered)"
            self.on_refused(message.topic, reason)
            return MethodResponse(status=409, payload={"error": reason})
        self.seen[request_id] = request.expires_at.isoformat()
        self.on_seen()
        return None

    async def call(self, method: str, payload: dict[str, Any]) -> MethodResponse:
        if method == "ping":
            at = self.clock().isoformat()
            return MethodResponse(status=200, payload={"pong": True, "deviceId": self.device_id, "at": at})
        if method == "getState":
            return MethodResponse(status=200, payload=json.loads(self.reported_state().model_dump_json()))
        if method not in ("restartModule", "getLogs"):
            return MethodResponse(status=404, payload={"error": f"unknown method {method!r}"})
        module = payload.get("module")
        if not isinstance(module, str) or module not in self.runtime.serving():
            return MethodResponse(status=404, payload={"error": f"no running module {module!r}"})
        if method == "getLogs":
            tail = payload.get("tail", DEFAULT_LOG_LINES)
            tail = tail if isinstance(tail, int) and 0 < tail <= MAX_LOG_LINES else DEFAULT_LOG_LINES
            lines, truncated = _within(self.runtime.logs(module, tail), MAX_LOG_BYTES)
            return MethodResponse(
                status=200, payload={"module": module, "lines": lines, "truncated": truncated}
            )
        try:
            await self.runtime.restart(module)
        except ModelfleetError as exc:
            return MethodResponse(status=500, payload={"error": str(exc)})
        return MethodResponse(status=200, payload={"module": module, "restarted": True})


def _clock_hint(wire: Any, now: datetime) -> str:
    """Why a request signed moments ago can look expired (or valid for too long) here: the device's
    clock is off by more than the request's lifetime. Said in the refusal, since the publisher only
    sees a 403 and the remedy (time sync on the device) is nowhere near the signature."""
    try:
        expires = datetime.fromisoformat(wire["expires_at"])
        if expires.tzinfo is None:
            return ""
    except (TypeError, KeyError, ValueError):
        return ""
    if expires > now and (expires - now).total_seconds() <= METHOD_REQUEST_MAX_TTL_S:
        return ""
    return (
        f" (this device's clock reads {now.isoformat(timespec='seconds')}: a request is accepted only "
        f"while the device's time is before its expiry and at most {METHOD_REQUEST_MAX_TTL_S} s "
        "before it, so a clock off by more than that needs fixing; check the device's time sync)"
    )


def _reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        return f"malformed: {'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
    return str(exc)


def _within(lines: list[str], max_bytes: int) -> tuple[list[str], bool]:
    """The newest lines whose total size fits, oldest first; and whether any were left out."""
    kept: list[str] = []
    size = 0
    for line in reversed(lines):
        size += len(line.encode("utf-8", errors="replace")) + 4  # quotes, comma, space
        if size > max_bytes:
            return kept[::-1], True
        kept.append(line)
    return kept[::-1], False
