"""`modelfleet status` against a broker whose per-client queue is smaller than the fleet.

Mosquitto drops the retained messages of a subscription that do not fit `max_queued_messages`,
without telling anyone. Status must then either read every device anyway (the devices it knows
by name are read topic by topic) or say plainly that it may not have seen them all; it must never
present a cut count as the fleet.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from modules.device_state import DeviceInfo, Presence, ReportedState
from modules.mqtt import MqttSettings, MqttTransport
from modules.topics import FleetTopics
from publisher import FleetConnection, Workspace
from tests._services import Service, free_port, run_mosquitto_config
from tests.publisher._harness import acli

DEVICES = 300
QUEUE = 20  # Mosquitto's per-client queue here: a 300-device fleet is 15 times that


@contextlib.contextmanager
def small_queue_mosquitto(root: Path) -> Iterator[Service]:
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = root / "mosquitto.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        f"max_queued_messages {QUEUE}\nlog_dest stderr\nlog_type error\n"
    )
    with run_mosquitto_config(config, port) as service:
        yield service


@pytest.fixture
def small_broker(tmp_path: Path) -> Iterator[Service]:
    with small_queue_mosquitto(tmp_path / "mosquitto") as service:
        yield service


async def publish_fleet(url: str, fleet: str, ids: list[str]) -> None:
    """Each device's retained report and presence, as its agent would leave them."""
    topics = FleetTopics(fleet)
    client = MqttTransport(MqttSettings(url=url, client_id=f"seed-{fleet}"))
    await client.start()
    info = DeviceInfo(agent_version="test", platform="linux", python="3.11")
    at = datetime.now(UTC)
    try:
        for device_id in ids:
            report = ReportedState(device_id=device_id, fleet=fleet, at=at, device=info, tags={"site": "a"})
            await client.publish(topics.reported(device_id), report.model_dump_json().encode(), retain=True)
            online = Presence(device_id=device_id, online=True, at=at)
            await client.publish(topics.status(device_id), online.model_dump_json().encode(), retain=True)
    finally:
        await client.stop()


def device_ids(n: int) -> list[str]:
    return [f"dev-{i:04d}" for i in range(n)]


async def test_status_says_when_the_broker_cut_the_fleet_and_reads_known_devices_by_name(
    tmp_path: Path, small_broker: Service
) -> None:
    ws = Workspace.create(tmp_path / "ws", registry="http://127.0.0.1:9", hub=small_broker.url, fleet="big")
    ids = device_ids(DEVICES)
    await publish_fleet(small_broker.url, ws.fleet, ids)

    # Nothing tells status which devices exist: it sees part of the fleet and says so.
    code, out, err = await acli(ws, "status", "--json")
    assert code == 0, err
    status = json.loads(out)
    seen = {d["device_id"] for d in status["devices"]}
    assert len(seen) < DEVICES and seen <= set(ids)
    cut = status["incomplete"]
    assert cut is not None, "a cut fleet was presented as complete"
    assert set(cut["cut"]) == {
        f"modelfleet/{ws.fleet}/devices/+/reported",
        f"modelfleet/{ws.fleet}/devices/+/status",
    }
    assert "max_queued_messages" in cut["note"]

    # Devices known by name (enrolled, or given) are read one by one: all of them, healthy.
    async with FleetConnection(ws, known_devices=ids) as hub:
        assert set(hub.snapshot.reports) == set(ids)
        assert all(hub.snapshot.online(d) for d in ids)
        assert hub.snapshot.cut and not hub.snapshot.missing
        assert hub.snapshot.read_by_name == DEVICES - len(seen)

    # One known device that never reported is named as such, not silently dropped.
    async with FleetConnection(ws, known_devices=[*ids, "dev-never"]) as hub:
        assert hub.snapshot.missing == {"dev-never"}
        assert len(hub.snapshot.reports) == DEVICES


async def test_status_on_a_broker_with_room_reads_everything_and_says_it_is_complete(
    tmp_path: Path, mosquitto: Service
) -> None:
    ws = Workspace.create(tmp_path / "ws", registry="http://127.0.0.1:9", hub=mosquitto.url, fleet="roomy")
    ids = device_ids(DEVICES)
    await publish_fleet(mosquitto.url, ws.fleet, ids)
    code, out, err = await acli(ws, "status", "--json")
    assert code == 0, err
    status = json.loads(out)
    assert {d["device_id"] for d in status["devices"]} == set(ids)
    assert status["incomplete"] is None
