"""Module twins end to end: a real agent, Mosquitto, Distribution and a real module process."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from edge_agent._agent import Agent
from modules.device_state import ReportedState
from publisher import FleetConnection, Workspace
from publisher._status import device_row
from tests._services import Service, free_port
from tests.edge_agent._fleet import SAMPLE, SCRIPTS, Publisher, read_retained, running_with, wait_for
from tests.edge_agent.test_agent_e2e import agent, fleet_name, publisher  # noqa: F401 (fixtures)


async def _score(port: int) -> dict:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"http://127.0.0.1:{port}/score", data=json.dumps(SAMPLE)) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_a_module_reads_its_twin_sees_an_update_without_a_restart_and_reports(
    agent: Agent,  # noqa: F811
    publisher: Publisher,  # noqa: F811
    mosquitto: Service,
) -> None:
    module = await publisher.package(SCRIPTS / "twin_echo.py")
    port = free_port()
    await publisher.deploy(publisher.document("tuned", 1, module, port, twin={"threshold": 0.5}))
    await wait_for(lambda: running_with(agent, module.digest), what="module running")
    pid = agent.modules["scorer"].pid
    first = await _score(port)
    assert first["twin"] == {"threshold": 0.5}

    # a new version of the document that changes only the twin
    await publisher.deploy(
        publisher.document("tuned", 2, module, port, twin={"threshold": 0.9, "labels": ["cat", "dog"]})
    )
    await wait_for(
        lambda: (
            agent.deployments.get("tuned")
            and agent.deployments["tuned"].version == 2
            and agent.deployments["tuned"].outcome == "applied"
        ),
        what="v2 applied",
    )
    second = await _score(port)
    assert second["twin"] == {"threshold": 0.9, "labels": ["cat", "dog"]}
    assert second["pid"] == first["pid"]  # the same process read it: no restart
    scorer = agent.modules["scorer"]
    assert (scorer.pid, scorer.restart_count, scorer.status) == (pid, 0, "running")

    # what the module reported reaches the device's retained report (what `status` reads)
    async def reported() -> ReportedState | None:
        raw = await asyncio.to_thread(read_retained, mosquitto.port, publisher.topics.reported("dev-1"))
        state = ReportedState.model_validate_json(raw) if raw else None
        scorer = state.modules.get("scorer") if state else None
        if scorer is not None and (scorer.reported_properties or {}).get("seen") == 0.9:
            return state
        return None

    state = None
    for _ in range(60):  # the agent reads reported.json every heartbeat (5 s here)
        if (state := await reported()) is not None:
            break
        await asyncio.sleep(0.5)
    assert state is not None, "reported properties never reached the retained report"
    assert state.modules["scorer"].reported_properties == {
        "started_with": 0.5,
        "seen": 0.9,
        "pid": first["pid"],
    }
    # and `status --json` shows them: the publisher's view of the same retained report
    workspace = Workspace.load(publisher.ws.config_path, hub=mosquitto.url)
    async with FleetConnection(workspace) as hub:
        row = device_row(hub.snapshot, "dev-1")
    assert row["modules"]["scorer"]["reported_properties"]["seen"] == 0.9
