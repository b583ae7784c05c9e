"""The control-plane seam: what the agent and the publisher need from a connection to the fleet.

The MQTT client (`modules.mqtt.MqttTransport`) is one implementation; an Azure IoT Hub transport
and the simulator's in-memory transport are others. Keeping the surface this small is what lets a
simulated fleet run the real agent code: everything above it is decisions, not wiring.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from modules._errors import ModelfleetError


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool
    # set (to the payload's size) when the payload was above the transport's limit and dropped
    # unread: `payload` is then empty, and must not be taken for a cleared retained message
    oversized: int | None = None


class TransportError(ModelfleetError):
    """A publish or a connection failed; the message may not have been delivered."""


class TransportConnectError(TransportError):
    """The first connection could not be made (unreachable, refused, bad credentials)."""


@runtime_checkable
class Transport(Protocol):
    """One self-healing connection: subscriptions and on-connect callbacks survive reconnects."""

    @property
    def connected(self) -> bool: ...

    async def wait_connected(self, timeout: float | None = None) -> bool: ...

    def subscribe(self, topic_filter: str, qos: int = 1) -> None: ...

    def on_connect(self, callback: Callable[[], Awaitable[None]]) -> None: ...

    async def start(self, connect_timeout: float = 10.0) -> None:
        """Connect (raising `TransportConnectError` when it cannot) and stay connected until `stop()`."""
        ...

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False, timeout: float = 10.0
    ) -> None:
        """Deliver (qos >= 1: acknowledged) or raise `TransportError`."""
        ...

    def messages(self) -> AsyncIterator[Message]: ...

    async def stop(self) -> None: ...
