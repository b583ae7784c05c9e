"""Staged rollouts over 20 real agents: devices pick their step by hash, the publisher advances
steps on health and restores the previous version when a step fails."""

from __future__ import annotations

import json
import time
from pathlib import Path

from modules.deployment import DeploymentDocument, in_rollout, rollout_bucket
from publisher import FleetConnection, Model, Module, Workspace, _deploy
from publisher._rollout import drive
from tests._services import Service
from tests.edge_agent._fleet import wait_for
from tests.publisher._harness import IRIS, SCRIPTS, acli, fleet, running_digests, settled_status, workspace

DEVICES = [f"dev-{i:02d}" for i in range(20)]
NAME = "iris"  # 2 of the 20 devices fall in its 10% step, 10 in its 50% step


async def test_rollout_advances_step_by_step_then_aborts_and_restores_when_30_percent_fail(
    tmp_path: Path, distribution: Service, mosquitto: Service
) -> None:
    began = time.monotonic()
    ws: Workspace = workspace(
        tmp_path / "ws", distribution, mosquitto, "rollout" + str(abs(hash(str(tmp_path))) % 10**6)
    )
    model = await Model.register_async(ws, IRIS, "iris")
    v1 = await Module.package_async(ws, "iris-svc", [model])  # zero-code: cheap to start
    async with fleet(tmp_path, ws, distribution, mosquitto) as f:
        for device_id in DEVICES:
            await f.start(device_id, {"ring": "prod"}, start_timeout_s=30)
        agents = list(f.agents.values())

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
            for agent in agents:
                expected = {"iris-svc": v1.digest} if agent.device_id in members else {}
                assert running_digests(agent) == expected, (percent, agent.device_id)
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
        assert all(running_digests(a) == {"iris-svc": v1.digest} for a in agents)

        # v2 fails its readiness on 30% of the devices: those that join in the 50% step. The 10%
        # step passes, the 50% step fails (6 of its devices, above 20%), v1 comes back everywhere.
        first = [d for d in DEVICES if in_rollout(NAME, d, 10)]
        later = sorted((d for d in DEVICES if d not in first), key=lambda d: rollout_bucket(NAME, d))
        failing = later[:6]
        assert all(in_rollout(NAME, d, 50) for d in failing)
        for device_id in failing:
            (f.data_dir(device_id) / "FAIL_READINESS").write_text("this device fails readiness")
        v2 = await Module.package_async(
            ws, "iris-svc", [model], entry_script=SCRIPTS / "fail_on_marked_devices.py"
        )
        code, out, err = await acli(
            ws, "deploy", "update", "-n", NAME, "--module", f"iris-svc:{v2.version}", "--wait", "--json"
        )
        assert code == 1, out + err
        outcome = json.loads(out)
        assert "aborted" in outcome["summary"] and "restored version 3" in outcome["summary"], outcome
        assert len(outcome["failed_devices"]) >= 3 and set(outcome["failed_devices"]) <= set(failing)
        assert "step 2/3" in err  # plain progress lines (not a terminal)
        restored = 6  # 4 (step 1), 5 (step 2), then the restore
        for agent in agents:
            await wait_for(
                lambda a=agent: (
                    running_digests(a) == {"iris-svc": v1.digest} and a.deployments[NAME].version == restored
                ),
                what=f"{agent.device_id} back on v1",
            )
        status = await settled_status(ws, agents)
        (summary,) = status["deployments"]
        assert (summary["version"], summary["healthy"], summary["failed"]) == (restored, 20, 0)
        code, out, _ = await acli(ws, "deploy", "show", NAME)
        content = json.loads(out)["content"]["modulesContent"]["$edgeAgent"]["properties.desired"]
        assert content["modules"]["iris-svc"]["settings"]["digest"] == v1.digest
    print(f"rollout test took {time.monotonic() - began:.1f} s")
