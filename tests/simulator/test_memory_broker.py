"""The in-memory broker keeps the MQTT semantics the agent and the publisher rely on."""

from __future__ import annotations

import asyncio

import pytest

from simulator import MemoryBroker, MemoryTransport

pytestmark = pytest.mark.timeout(10)


async def _next(transport: MemoryTransport, timeout: float = 1.0):  # type: ignore[no-untyped-def]
    iterator = transport.messages().__aiter__()
    return await asyncio.wait_for(iterator.__anext__(), timeout)


async def _drain(transport: MemoryTransport) -> list[tuple[str, bytes, bool]]:
    await asyncio.sleep(0)
    return [(m.topic, m.payload, m.retain) for m in list(transport._inbox)]


async def test_a_new_subscriber_gets_matching_retained_messages_flagged_retained() -> None:
    broker = MemoryBroker()
    publisher = MemoryTransport(broker, "pub")
    await publisher.start()
    await publisher.publish("f/deployments/a", b"A", retain=True)
    await publisher.publish("f/deployments/b", b"B", retain=True)
    await publisher.publish("f/devices/x/reported", b"X", retain=True)
    await publisher.publish("f/deployments/c", b"live only")  # not retained
    client = MemoryTransport(broker, "sub")
    client.subscribe("f/deployments/+")
    await client.start()
    assert sorted(await _drain(client)) == [("f/deployments/a", b"A", True), ("f/deployments/b", b"B", True)]


async def test_live_messages_reach_each_client_once_whatever_its_overlapping_filters() -> None:
    broker = MemoryBroker()
    client = MemoryTransport(broker, "sub")
    for topic_filter in ("f/#", "f/devices/+/reported", "f/devices/x/reported"):
        client.subscribe(topic_filter)
    other = MemoryTransport(broker, "other")
    other.subscribe("g/#")
    await client.start()
    await other.start()
    await other.publish("f/devices/x/reported", b"1")
    assert await _drain(client) == [("f/devices/x/reported", b"1", False)]
    assert await _drain(other) == []


async def test_hash_matches_the_parent_level_and_an_empty_retained_payload_clears() -> None:
    broker = MemoryBroker()
    pub = MemoryTransport(broker, "pub")
    await pub.start()
    await pub.publish("f/a", b"1", retain=True)
    await pub.publish("f/a", b"", retain=True)
    assert broker.retained("f/a") is None
    client = MemoryTransport(broker, "sub")
    client.subscribe("f/a/#")
    await client.start()
    assert await _drain(client) == []
    await pub.publish("f/a", b"2")
    assert await _drain(client) == [("f/a", b"2", False)]


def test_malformed_filters_are_refused() -> None:
    client = MemoryTransport(MemoryBroker(), "c")
    for bad in ("a/#/b", "a/b#", "a/+b"):
        with pytest.raises(ValueError):
            client.subscribe(bad)


async def test_a_cut_link_fires_the_will_and_the_client_comes_back_resubscribed() -> None:
    broker = MemoryBroker(reconnect_spread_s=0.01)
    watcher = MemoryTransport(broker, "watcher")
    watcher.subscribe("status/#")
    await watcher.start()
    device = MemoryTransport(broker, "dev", will=("status/dev", b"offline", True))
    device.subscribe("cmd/dev")
    connects: list[int] = []

    async def on_connect() -> None:
        connects.append(1)

    device.on_connect(on_connect)
    await device.start()
    await asyncio.sleep(0)
    broker.cut("dev")
    assert not device.connected
    assert broker.retained("status/dev") == b"offline"
    with pytest.raises(Exception, match="not connected"):
        await device.publish("x", b"1", timeout=0.05)
    await watcher.publish("cmd/dev", b"retained while away", retain=True)
    broker.restore("dev")
    assert await device.wait_connected(1.0)
    message = await _next(device)
    assert (message.topic, message.payload, message.retain) == ("cmd/dev", b"retained while away", True)
    await asyncio.sleep(0.01)
    assert len(connects) == 2


async def test_a_clean_stop_discards_the_will() -> None:
    broker = MemoryBroker()
    device = MemoryTransport(broker, "dev", will=("status/dev", b"offline", True))
    await device.start()
    await device.stop()
    assert broker.retained("status/dev") is None
    assert broker.clients == 0


async def test_a_broker_restart_without_persistence_comes_back_empty_and_clients_reconnect() -> None:
    broker = MemoryBroker(reconnect_spread_s=0.01)
    client = MemoryTransport(broker, "c")
    await client.start()
    await client.publish("t", b"1", retain=True)
    broker.go_down()
    assert not client.connected
    broker.come_up()
    assert await client.wait_connected(1.0)
    assert broker.retained("t") is None


async def test_start_waits_for_a_broker_that_is_down_then_fails_and_may_be_retried() -> None:
    broker = MemoryBroker(reconnect_spread_s=0.01)
    broker.go_down()
    client = MemoryTransport(broker, "c")
    with pytest.raises(Exception, match="not reachable"):
        await client.start(connect_timeout=0.05)
    broker.come_up()
    await client.start(connect_timeout=1)
    assert client.connected
