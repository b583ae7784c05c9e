"""Direct methods: a request on the device's request topic, an answer on the response topic.

`ping`, `getState`, `restartModule` and `getLogs`, as IoT Hub's direct methods, over whatever
transport the agent speaks.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from edge_agent._module_runtime import ModuleRuntime
from modules import ModelfleetError
from modules.device_state import MethodRequest, MethodResponse, ReportedState
from modules.topics import FleetTopics
from modules.transport import Message, Transport, TransportError

MAX_LOG_LINES = 10_000
DEFAULT_LOG_LINES = 100


class DirectMethods:
    def __init__(
        self,
        device_id: str,
        topics: FleetTopics,
        runtime: ModuleRuntime,
        reported_state: Callable[[], ReportedState],
    ) -> None:
        self.device_id = device_id
        self.topics = topics
        self.runtime = runtime
        self.reported_state = reported_state

    async def answer(self, transport: Transport, message: Message, rest: str) -> None:
        """`rest` is the topic below the device's own prefix: methods/req/<method>/<request id>."""
        parts = rest.split("/")
        if len(parts) != 4:
            return
        method, request_id = parts[2], parts[3]
        try:
            request = MethodRequest.model_validate_json(message.payload or b"{}")
        except ValidationError:
            response = MethodResponse(status=400, payload={"error": "malformed method request"})
            request = MethodRequest()
        else:
            response = await self.call(method, request.payload)
        topic = request.response_topic or self.topics.method_response(self.device_id, request_id)
        with contextlib.suppress(TransportError):
            await transport.publish(topic, response.model_dump_json().encode(), qos=1)

    async def call(self, method: str, payload: dict[str, Any]) -> MethodResponse:
        if method == "ping":
            at = datetime.now(UTC).isoformat()
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
            return MethodResponse(
                status=200, payload={"module": module, "lines": self.runtime.logs(module, tail)}
            )
        try:
            await self.runtime.restart(module)
        except ModelfleetError as exc:
            return MethodResponse(status=500, payload={"error": str(exc)})
        return MethodResponse(status=200, payload={"module": module, "restarted": True})
