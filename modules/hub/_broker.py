"""The embedded MQTT broker: amqtt, configured for a one-machine quick start.

amqtt is good enough for a developer laptop or a demo fleet of a few hundred simulated devices; a
real fleet belongs on Mosquitto (see docs/hub.md). The agent and publisher only speak MQTT 3.1.1,
so nothing here is specific to amqtt beyond this wrapper.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from modules._errors import ModelfleetError

_AMQTT_LOGGERS = ("amqtt", "transitions")


class BrokerStartError(ModelfleetError):
    """The embedded broker could not listen (port taken, address unavailable)."""


def _quiet_amqtt_logging() -> None:
    """amqtt logs every connection at INFO; a fleet of simulated devices would drown the console.

    Only loggers nobody configured are touched, so an application that wants amqtt's chatter can
    still set a level before starting the hub.
    """
    for name in _AMQTT_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)


@contextlib.contextmanager
def _silenced(name: str):
    """amqtt logs a full traceback before re-raising a failed bind; we report it in one line."""
    logger = logging.getLogger(name)
    previous = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(previous)


class EmbeddedBroker:
    """An in-process MQTT 3.1.1 broker over TCP, anonymous access, retained messages kept in memory.

    Retained messages do not survive a restart: publishers re-publish deployments on start, and
    agents re-publish their reported state on reconnect, so the control plane heals itself.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 1883) -> None:
        self.host = host
        self.port = port
        self._broker: Any = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def _config(self) -> dict[str, Any]:
        # Only the anonymous-auth plugin: the default set also runs $SYS publishing and
        # per-packet logging, which cost CPU for nothing on a quick-start hub.
        return {
            "listeners": {
                "default": {
                    "type": "tcp",
                    "bind": f"{self.host}:{self.port}",
                    "max_connections": 0,
                },
            },
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            },
        }

    async def start(self) -> str:
        if self._broker is not None:
            return self.url
        _quiet_amqtt_logging()
        from amqtt.broker import Broker
        from amqtt.errors import BrokerError

        broker = Broker(self._config(), loop=asyncio.get_running_loop())
        try:
            with _silenced("amqtt.broker"):
                await broker.start()
        except (BrokerError, OSError) as exc:
            cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
            reason = getattr(cause, "strerror", None) or str(cause)
            raise BrokerStartError(f"MQTT broker cannot listen on {self.host}:{self.port}: {reason}") from exc
        self._broker = broker
        return self.url

    async def stop(self) -> None:
        broker, self._broker = self._broker, None
        if broker is not None:
            await broker.shutdown()
