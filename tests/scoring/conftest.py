"""A real scoring host on a real loopback port, in a background thread.

Running the server on its own event loop lets the tests drive it with ordinary blocking clients
(`requests`, `tritonclient`), exactly as a user would.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from aiohttp import web

from modules.scoring import ScoringSettings, create_app
from modules.scoring._fast_path import FastPathRunner, FastPathServer, FastScore

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = Path(__file__).resolve().parent / "scripts"
IRIS_DIR = ROOT / "examples" / "models" / "iris"
CNN_DIR = ROOT / "examples" / "models" / "cnn"
IRIS_SCRIPT = ROOT / "examples" / "iris-service" / "score.py"


class RunningHost:
    """`fast_path`: served as `modelfleet serve` serves (tiny `/score` runs answered below
    aiohttp's request objects once warm); False: aiohttp answers everything."""

    def __init__(self, settings: ScoringSettings, fast_path: bool = True, **runner_args: Any) -> None:
        self.settings = settings.model_copy(update={"port": 0, "host": "127.0.0.1"})
        self.fast_path = fast_path
        self.runner_args = runner_args
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._runner: web.AppRunner | None = None
        self._error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._start())
        except BaseException as exc:  # surfaced to the test by __enter__
            self._error = exc
            self._started.set()
            return
        self._started.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    async def _start(self) -> None:
        runner_class = FastPathRunner if self.fast_path else web.AppRunner
        self._runner = runner_class(create_app(self.settings), access_log=None, **self.runner_args)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def __enter__(self) -> RunningHost:
        self._thread.start()
        self._started.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self._thread.is_alive():
            return  # stopped already (a test may stop a host to see how it shuts down)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)

    @property
    def fast(self) -> FastScore:
        """The fast path's answerer (its `answered` counts the requests it answered)."""
        assert self._runner is not None
        server = self._runner.server
        assert isinstance(server, FastPathServer), "this host does not take the fast path"
        return server.fast

    def wait_loaded(self, timeout: float = 30) -> dict:
        """Until loading finished (ready or failed); returns the liveness details."""
        deadline = time.monotonic() + timeout
        while True:
            details = requests.get(self.url + "/", timeout=5).json()
            if details["status"] != "Initializing" or time.monotonic() > deadline:
                return details
            time.sleep(0.05)


@pytest.fixture
def serve_host() -> Iterator:
    hosts: list[RunningHost] = []

    def start(
        fast_path: bool = True, runner_args: dict[str, Any] | None = None, **values: object
    ) -> RunningHost:
        settings = ScoringSettings.model_validate(values)
        host = RunningHost(settings, fast_path, **(runner_args or {})).__enter__()
        hosts.append(host)
        return host

    yield start
    for host in hosts:
        host.__exit__(None, None, None)
