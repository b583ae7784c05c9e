"""Devices whose clocks are off: the agent runs on the clock it is given, so a skewed device's
reports are consistent in its own time, and the publisher (which never compares a device's
times with its own) judges it truthfully. Signed method requests are where time matters: a
device accepts a fresh request while its clock is within the request's lifetime, and refuses
one beyond that with a reason that names the clock."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

from modules.signing import load_signing_key
from publisher import FleetConnection, Workspace
from simulator import parse_fault, run_scenario
from simulator._scenario import Scenario
from tests._services import Service
from tests.publisher._harness import status_json
from tests.simulator._documents import DIGEST_2, document

# seconds each device's clock is off: far behind, a little behind, right, a little ahead, far ahead
OFFSETS = [-600.0, -3.0, 0.0, 3.0, 600.0]


async def test_skewed_devices_converge_and_status_judges_them_truthfully(
    tmp_path: Path, mosquitto: Service, sim_fleet
) -> None:  # type: ignore[no-untyped-def]
    ws = Workspace.create(
        tmp_path / "ws", registry="http://127.0.0.1:9", hub=mosquitto.url, fleet=f"skew{os.urandom(3).hex()}"
    )
    (tmp_path / "publisher.pub.pem").write_text(ws.public_key_pem())
    key = load_signing_key(ws.signing_key_path)
    fleet = await sim_fleet(
        len(OFFSETS) * 2,
        hub=mosquitto.url,
        fleet=ws.fleet,
        trust=[tmp_path / "publisher.pub.pem"],
        key=key,
        clock_offsets=lambda i: OFFSETS[i % len(OFFSETS)],
    )
    await fleet.deploy(document(1, fleet=ws.fleet))
    assert (await fleet.converged("iris", 1, timeout=30)).counts == {"applied": 10}
    for device in fleet.devices:
        device.crash("scorer")  # a restart stamps exited_at and next_restart_at in device time
    await fleet.wait_for(
        lambda: all(fleet.report(d.device_id).modules["scorer"].restart_count == 1 for d in fleet.devices),
        timeout=30,
        what="every device restarted its module once",
    )

    # every time a device publishes is in its own clock...
    real = datetime.now(UTC)
    for device in fleet.devices:
        report = fleet.report(device.device_id)
        assert report is not None
        drift = (report.at - real).total_seconds() - device.clock_offset_s
        assert -120 < drift <= 1, (device.device_id, drift)
        module = report.modules["scorer"]
        assert module.exited_at is not None and module.started_at is not None
        assert module.exited_at <= module.started_at <= report.at
        assert report.deployments["iris"].at <= report.at

    # ...and status judges each device from what it says, not from when: online, applied, healthy
    status = await status_json(ws)
    rows = {row["device_id"]: row for row in status["devices"]}
    assert set(rows) == {d.device_id for d in fleet.devices}
    for device in fleet.devices:
        row = rows[device.device_id]
        assert row["online"] is True and row["health"] == "healthy"
        assert row["deployments"]["iris"]["outcome"] == "applied"
        assert row["modules"]["scorer"]["restart_count"] == 1
        # `last seen` is the device's own time: off by as much as its clock
        seen = datetime.fromisoformat(row["last_seen"])
        assert abs((seen - real).total_seconds() - device.clock_offset_s) < 120

    # a new version converges on every device whatever its clock
    await fleet.deploy(document(2, DIGEST_2, fleet=ws.fleet))
    assert (await fleet.converged("iris", 2, timeout=30)).counts == {"applied": 10}


async def test_method_requests_on_skewed_clocks_are_accepted_within_their_lifetime_or_refused_saying_why(
    tmp_path: Path, mosquitto: Service, sim_fleet
) -> None:  # type: ignore[no-untyped-def]
    ws = Workspace.create(
        tmp_path / "ws", registry="http://127.0.0.1:9", hub=mosquitto.url, fleet=f"skewm{os.urandom(3).hex()}"
    )
    (tmp_path / "publisher.pub.pem").write_text(ws.public_key_pem())
    fleet = await sim_fleet(
        len(OFFSETS),
        hub=mosquitto.url,
        fleet=ws.fleet,
        trust=[tmp_path / "publisher.pub.pem"],
        clock_offsets=lambda i: OFFSETS[i],
    )
    answers = {}
    async with FleetConnection(ws) as hub:
        for device in fleet.devices:
            # the publisher signs a request valid for 10 s of its own time
            answers[device.clock_offset_s] = await hub.call(device.device_id, "ping", timeout=10)
    for offset in (-3.0, 0.0, 3.0):  # within the request's lifetime: answered
        assert answers[offset].status == 200 and answers[offset].payload["pong"] is True
    ahead, behind = answers[600.0], answers[-600.0]
    assert ahead.status == 403 and "expired at" in ahead.payload["error"]
    assert behind.status == 403 and "stays valid for more than 600 s" in behind.payload["error"]
    for refused in (ahead, behind):
        assert "this device's clock reads" in refused.payload["error"]
        assert "time sync" in refused.payload["error"]
    # the refusal is in the device's report too, where `status` shows it
    far = fleet.device(4)
    await fleet.wait_for(lambda: fleet.report(far.device_id).refused, timeout=10, what="the refusal reported")
    assert "this device's clock reads" in fleet.report(far.device_id).refused[0].reason

    # a clock put right (a scenario step, undone after a while) answers again
    step = parse_fault(f"do=skew-clock,seconds=0,devices={far.device_id}")
    await run_scenario(fleet, Scenario(steps=[step]))
    async with FleetConnection(ws) as hub:
        answer = await hub.call(far.device_id, "ping", timeout=10)
    assert answer.status == 200
    assert json.loads(json.dumps(answer.payload))["deviceId"] == far.device_id
