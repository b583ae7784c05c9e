"""The self-hosted control plane's client: MQTT over paho, driven by asyncio, spoken by the
publisher and the agent alike (a `modules.transport.Transport`)."""

from modules.mqtt._client import (
    MqttConnectError,
    MqttError,
    MqttNotConnectedError,
    MqttSettings,
    MqttTransport,
)
from modules.transport import Message

__all__ = [
    "Message",
    "MqttConnectError",
    "MqttError",
    "MqttNotConnectedError",
    "MqttSettings",
    "MqttTransport",
]
