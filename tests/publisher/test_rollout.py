"""Staged rollouts over a fleet of 20 simulated devices (`sim_fleet`: the real agent code, modules
that only "run"): devices pick their step by hash, the publisher advances steps on health and
restores the previous version when a step fails.

What a real module's failing readiness looks like to the agent is the edge agent's tests' subject;
here the release fails to start on chosen devices through the simulator, which reports it exactly as
the agent does, so the rollout logic is what is under test, against the real broker, registry and
CLI."""

from __future__ import annotations

import json
from pathlib import Path

from modules.deployment import DeploymentDocument, in_rollout, rollout_bucket
from publisher import FleetConnection, Model, Module, Workspace, _deploy
from publisher._rollout import drive
from tests._services import Service
from tests.publisher._harness import IRIS, SCRIPTS, acli, settled_status, workspace

DEVICES = [f"dev-{i:02d}" for i in range(20)]
NAME = "iris"  # 2 of the 20 devices fall in its 10% step, 10 in its 50% step


async def test_rollout_advances_step_by_step_then_aborts_and_restores_when_30_percent_fail(
    tmp_path: Path, distribution: Service, mosquitto: Service, sim_fleet
) -> None:  # type: ignore[no-untyped-def]
    ws: Workspace = workspace(
        tmp_path / "ws", distribution, mosquitto, "rollout" + str(abs(hash(str(tmp_path))) % 10**6)
    )
    model = await Model.register_async(ws, IRIS, "iris")
    v1 = await Module.package_async(ws, "iris-svc", [model])
    trust = tmp_path / "publisher.pub.pem"
    trust.write_text(ws.public_key_pem())
    fleet = await sim_fleet(
        20,
        hub=mosquitto.url,
        trust=[trust],
        fleet=ws.fleet,
        ids="dev-{i:02d}",
        tags={"ring": "prod"},
        links=False,
    )
    assert [d.device_id for d in fleet.devices] == DEVICES
    agents = [d.agent for d in fleet.devices]

    # v1, staged 10% -> 50% -> 100%: at every step exactly the devices whose hash is inside
    # the step run it, and `status --json` says so.
    code, out, err = await acli(
        ws, "deploy", "create", "-n", NAME, "--module", f"iris-svc:{v1.version}",
        "--target", "tags.ring = 'prod'",
        "--rollout", "10%,50%,100%", "--min-healthy", "0", "--max-failure-ratio", "0.2", "--port", "7000",
    )  # fmt: skip
    assert code == 0, err
    seen_steps: list[int] = []

    async def on_step(doc: DeploymentDocument) -> None:
        assert doc.rollout is not None
        percent = doc.rollout.percent
        seen_steps.append(percent)
        members = {d for d in DEVICES if in_rollout(NAME, d, percent)}
        for device in fleet.devices:
            expected = {"iris-svc": v1.digest} if device.device_id in members else {}
            assert device.runtime.running_digests() == expected, (percent, device.device_id)
        status = await settled_status(ws, agents)
        (summary,) = status["deployments"]
        assert (summary["version"], summary["in_step"], summary["healthy"]) == (
            doc.version, len(members), len(members)
        )  # fmt: skip

    async with FleetConnection(ws) as hub:
        doc = _deploy.current(hub, NAME)  # verified as this workspace's own
        assert doc is not None
        result = await drive(hub, ws, doc, None, step_timeout_s=120, on_step=on_step)
    assert result.ok, result.summary
    assert seen_steps == [10, 50, 100]
    assert result.version == 3  # one published version per step
    assert all(d.runtime.running_digests() == {"iris-svc": v1.digest} for d in fleet.devices)

    # v2 fails to start on 30% of the devices: those that join in the 50% step. The 10% step
    # passes, the 50% step fails (6 of its devices, above 20%), v1 comes back everywhere.
    first = [d for d in DEVICES if in_rollout(NAME, d, 10)]
    later = sorted((d for d in DEVICES if d not in first), key=lambda d: rollout_bucket(NAME, d))
    failing = later[:6]
    assert all(in_rollout(NAME, d, 50) for d in failing)
    # a second release (other code, so another digest); the simulator makes it fail on `failing`
    v2 = await Module.package_async(
        ws, "iris-svc", [model], entry_script=SCRIPTS / "fail_on_marked_devices.py"
    )
    for device_id in failing:
        fleet.device(device_id).runtime.fail_digest(v2.digest, "readiness failed on this device")
    code, out, err = await acli(
        ws, "deploy", "update", "-n", NAME, "--module", f"iris-svc:{v2.version}", "--wait", "--json"
    )
    assert code == 1, out + err
    outcome = json.loads(out)
    assert "aborted" in outcome["summary"] and "restored version 3" in outcome["summary"], outcome
    assert len(outcome["failed_devices"]) >= 3 and set(outcome["failed_devices"]) <= set(failing)
    assert "step 2/3" in err  # plain progress lines (not a terminal)
    restored = 6  # 4 (step 1), 5 (step 2), then the restore
    back = await fleet.converged(NAME, restored, timeout=60)
    assert back.counts == {"applied": 20}
    assert all(d.runtime.running_digests() == {"iris-svc": v1.digest} for d in fleet.devices)
    status = await settled_status(ws, agents)
    (summary,) = status["deployments"]
    assert (summary["version"], summary["healthy"], summary["failed"]) == (restored, 20, 0)
    code, out, _ = await acli(ws, "deploy", "show", NAME)
    content = json.loads(out)["content"]["modulesContent"]["$edgeAgent"]["properties.desired"]
    assert content["modules"]["iris-svc"]["settings"]["digest"] == v1.digest
