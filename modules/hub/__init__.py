"""`modelfleet hub up`: an embedded registry and MQTT broker for a one-machine quick start."""

from modules.hub._broker import EmbeddedBroker
from modules.hub._hub import EmbeddedHub
from modules.hub._registry import EmbeddedRegistry

__all__ = ["EmbeddedBroker", "EmbeddedHub", "EmbeddedRegistry"]
