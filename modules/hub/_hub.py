"""The registry and the broker started and stopped as one unit, as `modelfleet hub up` runs them."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

from modules.hub._broker import EmbeddedBroker
from modules.hub._registry import EmbeddedRegistry


class EmbeddedHub:
    """Both embedded services over one data directory; either both run or neither does."""

    def __init__(
        self,
        data_dir: Path,
        host: str = "127.0.0.1",
        registry_port: int = 5000,
        mqtt_port: int = 1883,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.registry = EmbeddedRegistry(self.data_dir / "registry")
        self.broker = EmbeddedBroker(host, mqtt_port)
        self._registry_port = registry_port
        self.registry_url: str | None = None
        self.mqtt_url: str | None = None

    async def start(self) -> None:
        self.registry_url = await self.registry.start(self.host, self._registry_port)
        try:
            self.mqtt_url = await self.broker.start()
        except BaseException:
            # A half-started hub would hold the registry port until the process exits.
            await self.registry.stop()
            self.registry_url = None
            raise

    async def stop(self) -> None:
        try:
            await self.broker.stop()
        finally:
            await self.registry.stop()
            self.registry_url = self.mqtt_url = None

    async def __aenter__(self) -> EmbeddedHub:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
