"""The local status endpoint (`GET /status` on 127.0.0.1): what `modelfleet agent status` reads
on the device itself, with no broker in the way."""

from __future__ import annotations

import json
from collections.abc import Callable

from aiohttp import web

from modules import ConfigError
from modules.device_state import ReportedState


class StatusEndpoint:
    def __init__(self, port: int, reported_state: Callable[[], ReportedState]) -> None:
        self.port = port
        self.reported_state = reported_state
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        if self.port == 0:
            return

        async def status(_: web.Request) -> web.Response:
            return web.json_response(json.loads(self.reported_state().model_dump_json()))

        app = web.Application()
        app.router.add_get("/status", status)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        except OSError as exc:
            await self.stop()
            raise ConfigError(
                f"status endpoint cannot listen on 127.0.0.1:{self.port}: {exc.strerror}"
            ) from None

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
