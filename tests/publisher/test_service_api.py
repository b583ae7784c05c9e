"""The Azure-ML-shaped Python API and the device commands, against real agents."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp

from publisher import DeploymentConfig, InferenceConfig, Model, Module, Service, Workspace
from tests._services import Service as RealService
from tests.edge_agent._fleet import SAMPLE, wait_for
from tests.publisher._harness import IRIS, acli, fleet, running_digests, settled_status, workspace

SCORE = Path(__file__).resolve().parents[2] / "examples" / "iris-service" / "score.py"


async def test_model_deploy_update_and_delete_through_the_service_object(
    tmp_path: Path, distribution: RealService, mosquitto: RealService
) -> None:
    ws: Workspace = workspace(
        tmp_path / "ws", distribution, mosquitto, "svc" + str(abs(hash(str(tmp_path))) % 10**6)
    )
    m1 = await Model.register_async(ws, IRIS, "iris")
    async with fleet(tmp_path, ws, distribution, mosquitto) as f:
        agents = [await f.start(d, {"site": "a"}) for d in ("p1", "p2")]
        inference = InferenceConfig(entry_script=SCORE)
        config = DeploymentConfig(target="tags.site = 'a'", port=6100, min_healthy_seconds=0)
        service: Service = await asyncio.to_thread(
            Model.deploy,
            ws,
            "iris-svc",
            [m1],
            inference,
            config,  # type: ignore[attr-defined]
        )
        result = await asyncio.to_thread(service.wait_for_deployment, True, 120)
        assert result.ok and result.version == 1
        assert await asyncio.to_thread(lambda: service.state) == "Healthy"
        first_digest = agents[0].modules["iris-svc"].digest
        service.hosts = {a.device_id: "127.0.0.1" for a in agents}
        uris = await asyncio.to_thread(lambda: service.scoring_uris)
        assert sorted(uris) == ["p1", "p2"]
        async with aiohttp.ClientSession() as session:
            for uri in uris.values():
                async with session.post(uri, data=json.dumps(SAMPLE)) as resp:
                    assert resp.status == 200
                    assert (await resp.json())["predictions"][0] == "setosa"
        logs = await asyncio.to_thread(service.get_logs, 50)
        assert sorted(logs) == ["p1", "p2"] and all("iris-svc" in per for per in logs.values())

        # A new model version rolls out as a new module version.
        m2 = await Model.register_async(ws, IRIS, "iris", tags={"stage": "prod"})
        await asyncio.to_thread(service.update, [m2])
        assert service.version == 2
        await asyncio.to_thread(service.wait_for_deployment, False, 120)
        new_version = (await Module.get_async(ws, "iris-svc")).version
        for agent in agents:
            state = agent.modules["iris-svc"]
            assert (state.status, state.version) == ("running", new_version)
            assert state.digest != first_digest
        await settled_status(ws, agents)

        # Device commands over the direct methods.
        code, out, err = await acli(ws, "device", "ping", "p1")
        assert code == 0 and "p1 answered" in out, err
        code, out, err = await acli(ws, "device", "logs", "p1", "iris-svc", "--tail", "5")
        assert code == 0 and out.strip(), err
        pid = agents[0].modules["iris-svc"].pid
        code, out, err = await acli(ws, "device", "restart", "p1", "iris-svc")
        assert code == 0, err
        await wait_for(lambda: agents[0].modules["iris-svc"].pid not in (None, pid), what="new pid")
        code, out, err = await acli(ws, "device", "logs", "p1", "nope")
        assert code == 1 and "404" in err
        code, out, _ = await acli(ws, "device", "list", "--json")
        assert [d["device_id"] for d in json.loads(out)] == ["p1", "p2"]

        await asyncio.to_thread(service.delete)
        for agent in agents:
            await wait_for(
                lambda a=agent: running_digests(a) == {} and not a.executor.running, what="removed"
            )
        code, out, _ = await acli(ws, "deploy", "list")
        assert out.strip() == "no deployments"
