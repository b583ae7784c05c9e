"""The service fixtures themselves: real processes, reachable, and torn down."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
import pytest

from tests._services import Service, free_port, run_mosquitto


def _client(name: str) -> mqtt.Client:
    if hasattr(mqtt, "CallbackAPIVersion"):  # paho-mqtt 2.x
        return mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name)
    return mqtt.Client(client_id=name)


def test_mosquitto_fixture_is_a_real_broker_with_retained_messages(mosquitto: Service) -> None:
    publisher = _client("fixture-pub")
    publisher.connect("127.0.0.1", mosquitto.port)
    publisher.loop_start()
    publisher.publish("fixture/retained", b"kept", qos=1, retain=True).wait_for_publish(5)
    publisher.loop_stop()
    publisher.disconnect()

    got = threading.Event()
    received: list[bytes] = []
    subscriber = _client("fixture-sub")
    subscriber.on_message = lambda _c, _u, msg: (received.append(msg.payload), got.set())
    subscriber.connect("127.0.0.1", mosquitto.port)
    subscriber.subscribe("fixture/#", qos=1)
    subscriber.loop_start()
    try:
        assert got.wait(5), "retained message not delivered"
        assert received == [b"kept"]
    finally:
        subscriber.loop_stop()
        subscriber.disconnect()


def test_stopped_service_frees_its_port(tmp_path) -> None:
    with run_mosquitto(tmp_path / "m") as svc:
        port = svc.port
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # would raise if the broker were still there


def test_free_port_is_on_loopback_and_bindable() -> None:
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
    assert 1024 <= port <= 65535 or pytest.fail(f"odd port {port}")
