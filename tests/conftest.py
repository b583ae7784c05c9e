"""Session-wide real services and per-test registries.

Registry tests run against both Distribution and the embedded registry: the promise is that the
same client and CLI work unchanged against either.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._services import Service, run_distribution, run_mosquitto

REGISTRY_USER = ("fleet-admin", "correct horse battery")


@pytest.fixture(scope="session")
def distribution(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with run_distribution(tmp_path_factory.mktemp("distribution")) as service:
        yield service


@pytest.fixture(scope="session")
def distribution_basic_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with run_distribution(tmp_path_factory.mktemp("distribution-auth"), htpasswd_user=REGISTRY_USER) as svc:
        yield svc


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with run_mosquitto(tmp_path_factory.mktemp("mosquitto")) as service:
        yield service


class _LoopThread:
    """An event loop in a thread, so sync tests (and the CLI under test) can use an async server."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@pytest.fixture(scope="session")
def embedded_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    from modules.hub import EmbeddedRegistry

    root: Path = tmp_path_factory.mktemp("embedded-registry")
    runner = _LoopThread()
    registry = EmbeddedRegistry(root)
    url = runner.run(registry.start("127.0.0.1", 0))
    try:
        yield Service(url, int(url.rsplit(":", 1)[1]), root)
    finally:
        runner.run(registry.stop())
        runner.close()


@pytest.fixture(params=["distribution", "embedded"])
def registry(request: pytest.FixtureRequest) -> Service:
    """Either real registry; tests using it run once against each."""
    name = "distribution" if request.param == "distribution" else "embedded_registry"
    return request.getfixturevalue(name)


SimFleetFactory = Callable[..., Awaitable[Any]]


@pytest.fixture
async def sim_fleet(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[SimFleetFactory]:
    """Simulated fleets of real agents for any suite: `fleet = await sim_fleet(n, **settings)`,
    started (every device connected and reported) and stopped after the test.

    `hub`: "memory" (default: the in-process broker), "mosquitto" (the session's Mosquitto) or a
    URL. `trust`: publisher key files the devices trust; without it a fresh key is made, and
    `fleet.deploy(doc)` signs with it (`fleet.key`). `fleet`: the topic prefix (a fresh one by
    default, so tests sharing the session broker do not see each other's retained messages).
    Everything else goes to `simulator.Fleet` (`tags`, `ids`, `links`, `profiles`, `prepare`...).
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from modules.signing import public_key_pem
    from simulator import Fleet

    fleets: list[Any] = []

    async def make(
        size: int, *, hub: str = "memory", trust: list[Path] | None = None, **settings: Any
    ) -> Any:
        if hub == "mosquitto":
            hub = request.getfixturevalue("mosquitto").url
        folder = tmp_path / f"sim-fleet-{len(fleets)}"
        folder.mkdir()
        if trust is None:
            key = settings.pop("key", None) or Ed25519PrivateKey.generate()
            (folder / "publisher.pub.pem").write_text(public_key_pem(key))
            trust = [folder / "publisher.pub.pem"]
            settings["key"] = key
        settings.setdefault("fleet", f"sim{os.urandom(3).hex()}")
        fleet = Fleet(size, trust=trust, hub=hub, root=folder / "devices", **settings)
        await fleet.start()
        fleets.append(fleet)
        return fleet

    try:
        yield make
    finally:
        for fleet in fleets:
            await fleet.stop()
