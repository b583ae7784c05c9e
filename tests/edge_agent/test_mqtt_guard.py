"""The payload cap on the wire: an oversized PUBLISH is dropped as it arrives and replaced by a
small one paho acknowledges as usual; every other packet passes through byte for byte."""

from __future__ import annotations

import asyncio
import random
import socket
import uuid

import pytest

from modules.mqtt import MqttSettings, MqttTransport
from modules.mqtt._guard import MARKER, GuardedSocket, _varint
from tests._services import Service

pytestmark = pytest.mark.timeout(60)


def _publish(topic: str, payload: bytes, *, qos: int = 0, mid: int = 0, retain: bool = False) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic.encode() + (mid.to_bytes(2, "big") if qos else b"") + payload
    return bytes([0x30 | (qos << 1) | int(retain)]) + _varint(len(body)) + body


def _read_all(stream: bytes, limit: int, seed: int) -> bytes:
    """Feed `stream` through a socket pair in random pieces and read it back through the guard."""
    rng = random.Random(seed)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    guard = GuardedSocket(ours, limit)
    out = bytearray()
    sent = 0
    try:
        while sent < len(stream) or True:
            if sent < len(stream):
                piece = stream[sent : sent + rng.choice([1, 2, 7, 100, 5000, 70000])]
                theirs.sendall(piece)
                sent += len(piece)
            try:
                while chunk := guard.recv(rng.choice([1, 2, 3, 50, 4096, 1 << 20])):
                    out += chunk
            except BlockingIOError:
                pass
            if sent >= len(stream):
                theirs.close()
                try:
                    while chunk := guard.recv(4096):
                        out += chunk
                except BlockingIOError:
                    continue
                return bytes(out)
    finally:
        ours.close()


@pytest.mark.parametrize("seed", range(8))
def test_only_oversized_publishes_are_replaced_and_the_rest_passes_unchanged(seed: int) -> None:
    small = _publish("a/b", b'{"ok": 1}', qos=1, mid=7, retain=True)
    ping = bytes([0xD0, 0x00])
    suback = bytes([0x90, 0x03, 0x00, 0x01, 0x01])
    big = _publish("fleet/deployments/huge", b"[" * 300_000, qos=1, mid=513, retain=True)
    big_qos0 = _publish("t", b"x" * 200_000)
    exact = _publish("t", b"y" * (1000 - 3))  # body exactly at the limit: not replaced
    stream = small + ping + big + suback + big_qos0 + exact + small
    got = _read_all(stream, limit=1000, seed=seed)
    marker_big = _publish("fleet/deployments/huge", MARKER + b"300000", qos=1, mid=513, retain=True)
    marker_qos0 = _publish("t", MARKER + b"200000")
    assert got == small + ping + marker_big + suback + marker_qos0 + exact + small


async def test_the_transport_delivers_an_oversized_message_unread_then_carries_on(mosquitto: Service) -> None:
    root = f"test/guard/{uuid.uuid4().hex[:8]}"
    settings = MqttSettings(url=mosquitto.url, client_id=f"t-{uuid.uuid4().hex[:10]}")
    receiver = MqttTransport(settings, max_payload_bytes=1024)
    receiver.subscribe(f"{root}/#")
    sender = MqttTransport(MqttSettings(url=mosquitto.url, client_id=f"t-{uuid.uuid4().hex[:10]}"))
    try:
        await receiver.start(connect_timeout=10)
        await sender.start(connect_timeout=10)
        await sender.publish(f"{root}/big", b"z" * 5_000_000, qos=1)
        await sender.publish(f"{root}/small", b"fine", qos=1)
        messages = receiver.messages()
        async with asyncio.timeout(30):
            big = await anext(messages)
            small = await anext(messages)
        assert (big.topic, big.payload, big.oversized) == (
            f"{root}/big",
            b"",
            5_000_000,
        )
        assert (small.payload, small.oversized) == (b"fine", None)
    finally:
        await sender.stop()
        await receiver.stop()
