"""A registry outage during an update resolves itself: the agent keeps serving the old version,
reports the update as applying with the reason and its next attempt, and applies it once the
registry is back, with no new document. Real Mosquitto, real Distribution, real agent."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from edge_agent import Agent
from tests._services import Service, free_port, run_distribution
from tests.edge_agent._fleet import EXAMPLES, SAMPLE, Publisher, agent_config, running_with, wait_for

pytestmark = [pytest.mark.services, pytest.mark.timeout(180)]

SCRIPTS = Path(__file__).resolve().parent / "scripts"


async def test_an_update_during_a_registry_outage_applies_when_the_registry_is_back(
    tmp_path: Path, mosquitto: Service
) -> None:
    registry_root, port = tmp_path / "registry", free_port()
    fleet = "outage"
    with run_distribution(registry_root, port=port) as registry:
        publisher = await asyncio.to_thread(
            Publisher, tmp_path / "publisher", registry.url, mosquitto.port, fleet
        )
        v1 = await publisher.package(EXAMPLES / "iris-service" / "score.py")
        v2 = await publisher.package(SCRIPTS / "score_v2.py")
        config = agent_config(
            tmp_path / "agent", "dev-o", mosquitto.url, registry.url, publisher.public_key, fleet
        )
        agent = Agent(config)
        await agent.start()
        module_port = free_port()
        await publisher.deploy(publisher.document("iris", 1, v1, module_port))
        await wait_for(lambda: running_with(agent, v1.digest), what="v1 running")
    try:
        # the registry is down: v2 cannot be fetched
        await publisher.deploy(publisher.document("iris", 2, v2, module_port))
        state = await wait_for(
            lambda: (
                (d := agent.deployments.get("iris"))
                and d.version == 2
                and "retrying at" in (d.reason or "")
                and d
            ),
            what="the update retrying",
        )
        assert state.outcome == "applying" and "cannot reach registry" in (state.reason or ""), state.reason
        assert running_with(agent, v1.digest)
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"http://127.0.0.1:{module_port}/score", json=SAMPLE) as resp,
        ):
            assert resp.status == 200 and "version" not in await resp.json()
        with run_distribution(registry_root, port=port):
            await wait_for(
                lambda: running_with(agent, v2.digest) and agent.deployments["iris"].outcome == "applied",
                timeout=60,
                what="v2 applied once the registry is back",
            )
            assert agent.modules["scorer"].last_error is None
            async with (
                aiohttp.ClientSession() as session,
                session.post(f"http://127.0.0.1:{module_port}/score", json=SAMPLE) as resp,
            ):
                assert (await resp.json())["version"] == 2
    finally:
        await agent.stop()
