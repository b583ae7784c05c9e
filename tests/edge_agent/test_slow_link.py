"""Over a link with seconds of latency each way, the agent still connects and reports: its
connect attempts get more time after one times out, instead of being cut short for ever."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from modules.mqtt import MqttSettings, MqttTransport
from tests._services import Service
from tests._slow_link import SlowLink
from tests.edge_agent._fleet import publish

pytestmark = [pytest.mark.services, pytest.mark.timeout(120)]

DELAY_S = 3.0  # each way: CONNECT->CONNACK and SUBSCRIBE->SUBACK alone take 12 s, above the first 10 s


async def test_the_transport_connects_over_a_link_with_seconds_of_latency_each_way(
    mosquitto: Service, tmp_path: Path
) -> None:
    link = SlowLink(mosquitto.port, DELAY_S)
    port = await link.start()
    topic = f"test/slow/{time.monotonic_ns()}"
    await asyncio.to_thread(publish, mosquitto.port, topic, json.dumps({"hello": "far away"}).encode())
    transport = MqttTransport(
        MqttSettings(url=f"mqtt://127.0.0.1:{port}", client_id=f"slow-{time.time_ns()}")
    )
    transport.subscribe(topic)
    started = time.monotonic()
    try:
        await transport.start(connect_timeout=90)
        took = time.monotonic() - started
        assert transport.connected
        assert took >= 4 * DELAY_S  # every packet of the handshake really crossed the slow link
        messages = transport.messages()
        async with asyncio.timeout(30):
            message = await anext(messages)
        assert message.topic == topic and json.loads(message.payload) == {"hello": "far away"}
        # and it publishes (acknowledged over the same slow link)
        await transport.publish(f"{topic}/echo", b"back", qos=1, timeout=30)
    finally:
        await transport.stop()
        await link.stop()
