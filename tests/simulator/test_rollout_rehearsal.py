"""The publisher's rollout watcher driving simulated fleets on real Mosquitto: a 200-device staged
rollout step by step, and a release that crashes on start on 30% of the devices, aborted and
restored. The watcher cannot tell these devices from real ones; the assertions read both what the
devices run and what the broker says."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modules.deployment import DeploymentDocument, in_rollout
from publisher import FleetConnection, Workspace, _deploy
from publisher._rollout import drive
from simulator import share
from tests._services import Service
from tests.simulator._documents import DIGEST_1, DIGEST_2, document

pytestmark = [pytest.mark.services, pytest.mark.timeout(300)]


def _workspace(tmp_path: Path, mosquitto: Service) -> tuple[Workspace, Path]:
    ws = Workspace.create(
        tmp_path / "ws",
        registry="http://127.0.0.1:9",
        hub=mosquitto.url,
        fleet=f"rehearse{os.urandom(3).hex()}",
    )
    trust = tmp_path / "publisher.pub.pem"
    trust.write_text(ws.public_key_pem())
    return ws, trust


def _unsigned(doc: DeploymentDocument) -> dict[str, object]:
    return {k: v for k, v in doc.to_json_dict().items() if k != "signature"}


async def test_a_200_device_fleet_on_mosquitto_receives_a_staged_rollout(
    tmp_path: Path, mosquitto: Service, sim_fleet
) -> None:  # type: ignore[no-untyped-def]
    ws, trust = _workspace(tmp_path, mosquitto)
    fleet = await sim_fleet(
        200, hub=mosquitto.url, trust=[trust], fleet=ws.fleet, links=False, tags={"ring": "prod"}
    )
    timeline = fleet.timeline("iris", every_s=0.2)
    steps_seen: list[tuple[int, int]] = []

    async def on_step(doc: DeploymentDocument) -> None:
        # exactly the devices inside the step run the release, the others nothing yet
        assert doc.rollout is not None
        members = {d.device_id for d in fleet.devices if in_rollout("iris", d.device_id, doc.rollout.percent)}
        running = {d.device_id for d in fleet.devices if d.runtime.running_digests() == {"scorer": DIGEST_1}}
        assert running == members and all(
            not d.runtime.running_digests() for d in fleet.devices if d.device_id not in members
        )
        steps_seen.append((doc.rollout.percent, len(members)))

    staged = document(
        1,
        fleet=ws.fleet,
        target="tags.ring = 'prod'",
        rollout={"steps": [10, 50, 100], "minHealthySeconds": 0, "maxFailureRatio": 0.05},
    )
    async with FleetConnection(ws) as hub:
        published = await _deploy.publish(hub, ws, _unsigned(staged))
        result = await drive(hub, ws, published, None, step_timeout_s=120, on_step=on_step)
    assert result.ok, result.summary
    assert [p for p, _ in steps_seen] == [10, 50, 100] and steps_seen[-1][1] == 200
    assert 0 < steps_seen[0][1] < steps_seen[1][1] < 200
    assert result.version == 3 and result.counts["healthy"] == 200
    result3 = await fleet.converged("iris", 3, timeout=60)
    assert result3.counts == {"applied": 200}
    await timeline.stop()
    assert timeline.counts["healthy"] == 200
    assert (
        timeline.time_to("healthy", 10) <= timeline.time_to("healthy", 50) <= timeline.time_to("healthy", 100)
    )


async def test_a_release_crashing_on_start_on_30_percent_aborts_and_the_fleet_is_back_on_the_previous(
    tmp_path: Path, mosquitto: Service, sim_fleet
) -> None:  # type: ignore[no-untyped-def]
    ws, trust = _workspace(tmp_path, mosquitto)

    def bad_release_crashes(device) -> None:  # type: ignore[no-untyped-def]
        if device.tags["bad"]:
            device.runtime.fail_digest(DIGEST_2, "init() raised RuntimeError: CUDA out of memory")

    fleet = await sim_fleet(
        100,
        hub=mosquitto.url,
        trust=[trust],
        fleet=ws.fleet,
        links=False,
        tags={"ring": "prod", "bad": share(True, 30, otherwise=False)},
        prepare=bad_release_crashes,
    )
    bad = {d.device_id for d in fleet.devices if d.tags["bad"]}
    assert len(bad) == 30
    async with FleetConnection(ws) as hub:
        v1 = await _deploy.publish(
            hub, ws, _unsigned(document(1, fleet=ws.fleet, target="tags.ring = 'prod'"))
        )
        first = await drive(hub, ws, v1, None, step_timeout_s=60)
        assert first.ok and first.counts["healthy"] == 100, first.summary
        release = document(
            _deploy.next_version(hub, ws, "iris"),
            DIGEST_2,
            fleet=ws.fleet,
            target="tags.ring = 'prod'",
            rollout={"steps": [50, 100], "minHealthySeconds": 0, "maxFailureRatio": 0.1},
        )
        v2 = await _deploy.publish(hub, ws, _unsigned(release))
        result = await drive(hub, ws, v2, v1, step_timeout_s=60)
    assert not result.ok
    assert "aborted" in result.summary and "restored version 1" in result.summary, result.summary
    assert result.failed_devices and set(result.failed_devices) <= bad
    # every device, the crashed ones included, is back on the first release, healthy
    back = await fleet.converged("iris", result.version, timeout=60)
    assert back.counts == {"applied": 100}
    assert all(d.runtime.running_digests() == {"scorer": DIGEST_1} for d in fleet.devices)
    for device_id in bad:
        report = fleet.report(device_id)
        assert report.modules["scorer"].status == "running" and report.modules["scorer"].digest == DIGEST_1
