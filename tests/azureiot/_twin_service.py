"""A stand-in for IoT Hub's service REST API: device twins, the twin query, direct methods.

What the publisher calls, with IoT Hub's shapes: `POST /devices/query` (paged with
`x-ms-continuation`), `GET /twins/{id}`, `PATCH /twins/{id}` (desired properties merged as the hub
merges them, `$version` counted) and `POST /twins/{id}/methods`. Every request must carry a SAS
token for this hub's host that the policy's key signed and that has not expired; anything else is
401 and is counted, so a test sees a bad signature rather than a silent pass.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import inspect
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, quote

from aiohttp import web

from modules.azureiot import merge_patch

API_VERSION = "2021-04-12"
PAGE = 2  # small, so a test fleet of a few devices already takes more than one page


class TwinService:
    def __init__(self, host: str, policy: str, key: str) -> None:
        self.host, self.policy, self.key = host, policy, key
        self.twins: dict[str, dict[str, Any]] = {}
        self.refused: list[str] = []  # why requests were refused (401)
        self.patches: list[tuple[str, dict[str, Any]]] = []
        # device -> (method, payload) -> (status, payload), or an awaitable of it; unset: the
        # device is offline (404)
        self.methods: dict[str, Callable[[str, Any], Any]] = {}
        # told of every desired patch (device, patch, new $version): a hub pushes it to the device
        self.on_desired: Callable[[str, dict[str, Any], int], None] = lambda _d, _p, _v: None

    def add_device(self, device_id: str, *, tags: dict[str, Any] | None = None, reported: Any = None) -> None:
        self.twins[device_id] = {
            "deviceId": device_id,
            "etag": "AAAAAAAAAAE=",
            "status": "enabled",
            "connectionState": "Connected",
            "tags": tags or {},
            "properties": {
                "desired": {"$version": 1},
                "reported": {**(reported or {}), "$version": 1},
            },
        }

    def patch_desired(self, device: str, patch: dict[str, Any], *, silent: bool = False) -> int:
        """Merge into the device's desired properties, as the hub does, and tell `on_desired`
        (unless `silent`: a push the device never got)."""
        self.patches.append((device, patch))
        twin = self.twins[device]
        desired = twin["properties"]["desired"]
        version = desired["$version"] + 1
        twin["properties"]["desired"] = {**merge_patch(desired, patch), "$version": version}
        if not silent:
            self.on_desired(device, patch, version)
        return version

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        prefix = "SharedAccessSignature "
        if not header.startswith(prefix):
            return self._refuse("no SharedAccessSignature")
        fields = {k: v[0] for k, v in parse_qs(header[len(prefix) :], keep_blank_values=True).items()}
        resource = quote(self.host.lower(), safe="")
        if quote(fields.get("sr", ""), safe="") != resource or fields.get("skn") != self.policy:
            return self._refuse(f"token for {fields.get('sr')!r} / {fields.get('skn')!r}")
        expiry = fields.get("se", "")
        if not expiry.isdigit() or int(expiry) < time.time():
            return self._refuse("expired")
        expected = hmac.new(base64.b64decode(self.key), f"{resource}\n{expiry}".encode(), hashlib.sha256)
        if not hmac.compare_digest(base64.b64encode(expected.digest()).decode(), fields.get("sig", "")):
            return self._refuse("signature does not match")
        if request.query.get("api-version") != API_VERSION:
            return self._refuse(f"api-version {request.query.get('api-version')}")
        return True

    def _refuse(self, why: str) -> bool:
        self.refused.append(why)
        return False

    def app(self) -> web.Application:
        routes = web.RouteTableDef()

        @web.middleware
        async def auth(request: web.Request, handler: Any) -> web.StreamResponse:
            if not self._authorized(request):
                return web.json_response({"Message": "Unauthorized"}, status=401)
            return await handler(request)

        @routes.post("/devices/query")
        async def query(request: web.Request) -> web.Response:
            body = await request.json()
            assert body["query"].upper().startswith("SELECT * FROM DEVICES"), body
            start = int(request.headers.get("x-ms-continuation") or 0)
            ids = sorted(self.twins)
            page = [self.twins[i] for i in ids[start : start + PAGE]]
            headers = {"x-ms-continuation": str(start + PAGE)} if start + PAGE < len(ids) else {}
            return web.json_response(page, headers=headers)

        @routes.get("/twins/{device}")
        async def get_twin(request: web.Request) -> web.Response:
            twin = self.twins.get(request.match_info["device"])
            if twin is None:
                return web.json_response({"Message": "DeviceNotFound"}, status=404)
            return web.json_response(twin)

        @routes.patch("/twins/{device}")
        async def patch_twin(request: web.Request) -> web.Response:
            device = request.match_info["device"]
            twin = self.twins.get(device)
            if twin is None:
                return web.json_response({"Message": "DeviceNotFound"}, status=404)
            body = await request.json()
            self.patch_desired(device, body["properties"]["desired"])
            return web.json_response(twin)

        @routes.post("/twins/{device}/methods")
        async def invoke(request: web.Request) -> web.Response:
            device = request.match_info["device"]
            body = await request.json()
            answer = self.methods.get(device)
            if answer is None:
                return web.json_response({"Message": "DeviceNotOnline"}, status=404)
            result = answer(body["methodName"], body["payload"])
            status, payload = await result if inspect.isawaitable(result) else result
            return web.json_response({"status": status, "payload": payload})

        app = web.Application(middlewares=[auth])
        app.add_routes(routes)
        return app
