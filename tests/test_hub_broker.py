"""The embedded broker with real paho clients: retained messages reach late subscribers."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator

import paho.mqtt.client as mqtt
import pytest

from modules.hub import EmbeddedBroker


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
async def broker() -> AsyncIterator[EmbeddedBroker]:
    embedded = EmbeddedBroker("127.0.0.1", free_port())
    await embedded.start()
    yield embedded
    await embedded.stop()


def connect(port: int, client_id: str) -> tuple[mqtt.Client, threading.Event]:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    connected = threading.Event()
    client.on_connect = lambda c, userdata, flags, reason, props: connected.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    return client, connected


async def wait_for(event: threading.Event, timeout: float = 10) -> None:
    # paho runs its own thread; poll so the broker keeps the event loop.
    deadline = asyncio.get_running_loop().time() + timeout
    while not event.is_set():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_start_returns_url(broker: EmbeddedBroker) -> None:
    assert broker.url == f"mqtt://127.0.0.1:{broker.port}"


async def test_retained_message_reaches_late_subscriber(broker: EmbeddedBroker) -> None:
    publisher, pub_connected = connect(broker.port, "publisher")
    try:
        await wait_for(pub_connected)
        info = publisher.publish("fleet/deployments/iris", b'{"version": 3}', qos=1, retain=True)
        await asyncio.to_thread(info.wait_for_publish, 10)
        assert info.is_published()
    finally:
        publisher.loop_stop()
        publisher.disconnect()

    received: list[mqtt.MQTTMessage] = []
    got = threading.Event()

    def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        received.append(message)
        got.set()

    subscriber, sub_connected = connect(broker.port, "late-device")
    subscriber.on_message = on_message
    try:
        await wait_for(sub_connected)
        subscriber.subscribe("fleet/deployments/#", qos=1)
        await wait_for(got)
    finally:
        subscriber.loop_stop()
        subscriber.disconnect()
    assert received[0].topic == "fleet/deployments/iris"
    assert received[0].payload == b'{"version": 3}'
    assert received[0].retain


async def test_port_in_use_is_one_line_error(broker: EmbeddedBroker) -> None:
    from modules._errors import ModelfleetError

    second = EmbeddedBroker("127.0.0.1", broker.port)
    with pytest.raises(ModelfleetError, match="cannot listen"):
        await second.start()
