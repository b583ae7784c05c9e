"""Scoring keys: deployed with auth, rotated with regen_key, never in clear on the broker."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import aiohttp

from publisher import DeploymentConfig, InferenceConfig, Model, Service, Workspace
from tests._services import Service as RealService
from tests.edge_agent._fleet import SAMPLE, wait_for
from tests.publisher._forge import retained_under
from tests.publisher._harness import IRIS, acli, fleet, workspace

SCORE = Path(__file__).resolve().parents[2] / "examples" / "iris-service" / "score.py"


def _every_retained_message(port: int, idle: float = 1.5) -> dict[str, bytes]:
    """All retained messages of the fleet's topics, read the way anyone on the broker could."""
    return retained_under(port, "modelfleet", idle)


async def _status(uri: str, key: str | None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with (
        aiohttp.ClientSession() as session,
        session.post(uri, data=json.dumps(SAMPLE), headers=headers) as resp,
    ):
        return resp.status


async def test_primary_key_works_regen_revokes_it_and_no_retained_message_holds_a_key(
    tmp_path: Path, distribution: RealService, mosquitto: RealService
) -> None:
    ws: Workspace = workspace(tmp_path / "ws", distribution, mosquitto, "keys" + os.urandom(3).hex())
    model = await Model.register_async(ws, IRIS, "iris")
    async with fleet(tmp_path, ws, distribution, mosquitto) as f:
        agent = await f.start("k1", {"site": "a"})
        await wait_for(lambda: agent.transport and agent.transport.connected, what="agent online")
        await asyncio.sleep(0.3)  # its first report (with its public key) is on the broker
        # Keys are sealed only to enrolled devices: the operator enrols the key read on the device.
        code, _, err = await acli(ws, "device", "enroll", "k1", "--key", agent.device_key.public)
        assert code == 0, err
        config = DeploymentConfig(target="tags.site = 'a'", port=6200, auth=True, min_healthy_seconds=0)
        service: Service = await asyncio.to_thread(
            Model.deploy,
            ws,
            "secure",
            [model],
            InferenceConfig(entry_script=SCORE),
            config,  # type: ignore[attr-defined]
        )
        result = await asyncio.to_thread(service.wait_for_deployment, False, 120)
        assert result.ok
        primary, secondary = service.get_keys()
        uri = f"http://127.0.0.1:{agent.config.module_port(6200)}/score"
        assert await _status(uri, primary) == 200
        assert await _status(uri, secondary) == 200
        assert await _status(uri, None) == 401
        assert await _status(uri, "not-the-key") == 401

        digest_before = agent.modules["secure"].pid
        await asyncio.to_thread(service.regen_key, "primary")
        new_primary, same_secondary = service.get_keys()
        assert new_primary != primary and same_secondary == secondary
        await wait_for(
            lambda: (
                agent.modules["secure"].status == "running" and agent.modules["secure"].pid != digest_before
            ),
            what="module restarted with the new keys",
        )
        assert await _status(uri, primary) == 401
        assert await _status(uri, new_primary) == 200
        assert await _status(uri, secondary) == 200

        retained = await asyncio.to_thread(_every_retained_message, mosquitto.port)
        assert any("/keys/secure" in topic for topic in retained), "sealed keys were not published"
        for topic, payload in retained.items():
            for key in (primary, secondary, new_primary):
                assert key.encode() not in payload, f"a key in clear on {topic}"
        on_disk = (f.data_dir("k1") / "state.json").read_bytes()
        assert all(k.encode() not in on_disk for k in (primary, secondary, new_primary))
