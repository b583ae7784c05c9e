"""Real agents in this process against the real broker and registry, and the publisher's CLI.

The CLI runs in a worker thread (it starts its own event loop, as it does in a terminal) while
the agents keep running on the test's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from edge_agent._agent import Agent
from publisher import Workspace
from publisher.cli import main
from tests._services import Service
from tests.edge_agent._fleet import agent_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
IRIS = EXAMPLES / "models" / "iris" / "model.onnx"
SCRIPTS = Path(__file__).resolve().parent / "scripts"


def workspace(root: Path, distribution: Service, mosquitto: Service, fleet: str) -> Workspace:
    return Workspace.create(root, registry=distribution.url, hub=mosquitto.url, fleet=fleet)


def cli(ws: Workspace, *argv: str) -> tuple[int, str, str]:
    """`modelfleet ARGV --config <ws>`; returns exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*argv, "--config", str(ws.config_path)])
    return code, out.getvalue(), err.getvalue()


async def acli(ws: Workspace, *argv: str) -> tuple[int, str, str]:
    return await asyncio.to_thread(cli, ws, *argv)


async def status_json(ws: Workspace, *extra: str) -> dict[str, Any]:
    code, out, err = await acli(ws, "status", "--json", *extra)
    assert code == 0, err
    return json.loads(out)


class Fleet:
    """Agents by device id, each with its own data folder and port offset."""

    def __init__(self, root: Path, ws: Workspace, distribution: Service, mosquitto: Service) -> None:
        self.root = root
        self.ws = ws
        self.distribution = distribution
        self.mosquitto = mosquitto
        self.trust = root / "publisher.pub.pem"
        self.trust.write_text(ws.public_key_pem())
        self.agents: dict[str, Agent] = {}
        # Public module ports stay below Linux's ephemeral range (32768+), where the agents' own
        # internal ports and client sockets live, so they cannot collide with those.
        self.port_base = 10000 + int.from_bytes(os.urandom(2)) % 10000
        self._offsets: dict[str, int] = {}

    def data_dir(self, device_id: str) -> Path:
        return self.root / "devices" / device_id

    async def start(self, device_id: str, tags: dict[str, Any], **extra: Any) -> Agent:
        offset = self._offsets.setdefault(device_id, len(self._offsets) * 10)
        config = agent_config(
            self.data_dir(device_id),
            device_id,
            self.mosquitto.url,
            self.distribution.url,
            self.trust,
            self.ws.fleet,
            tags=tags,
            port_base=self.port_base + offset,
            **extra,
        )
        agent = Agent(config)
        await agent.start()
        # Reported before the test goes on: a publisher waiting on a rollout must see the device.
        if await agent.transport.wait_connected(30):
            await agent.publish_report()
        self.agents[device_id] = agent
        return agent

    async def stop(self, device_id: str) -> None:
        await self.agents.pop(device_id).stop()

    async def stop_all(self) -> None:
        await asyncio.gather(*(a.stop() for a in self.agents.values()), return_exceptions=True)
        self.agents.clear()


@contextlib.asynccontextmanager
async def fleet(root: Path, ws: Workspace, distribution: Service, mosquitto: Service) -> AsyncIterator[Fleet]:
    f = Fleet(root, ws, distribution, mosquitto)
    try:
        yield f
    finally:
        await f.stop_all()


def running_digests(agent: Agent) -> dict[str, str | None]:
    """Module -> digest, for the modules the agent really runs and that are not unhealthy."""
    return {
        name: state.digest
        for name, state in agent.modules.items()
        if state.status == "running" and state.health != "unhealthy" and name in agent.executor.running
    }


def check_status_matches(status: dict[str, Any], agents: Sequence[Agent]) -> None:
    """`status --json` says, for every agent, what the agent itself holds in memory."""
    rows = {row["device_id"]: row for row in status["devices"]}
    for agent in agents:
        row = rows[agent.device_id]
        assert row["online"] is True
        assert row["tags"] == agent.config.tags
        assert {n: (d["version"], d["outcome"]) for n, d in row["deployments"].items()} == {
            n: (d.version, d.outcome) for n, d in agent.deployments.items()
        }, agent.device_id
        assert {n: (m["digest"], m["status"]) for n, m in row["modules"].items()} == {
            n: (m.digest, m.status) for n, m in agent.modules.items()
        }, agent.device_id


async def settled_status(ws: Workspace, agents: Sequence[Agent], *extra: str, attempts: int = 100) -> dict:
    """`status --json` once it agrees with the agents (reports trail state changes by ~0.1 s)."""
    last: AssertionError | None = None
    for _ in range(attempts):
        status = await status_json(ws, *extra)
        try:
            check_status_matches(status, agents)
            return status
        except (AssertionError, KeyError) as exc:
            last = AssertionError(str(exc))
            await asyncio.sleep(0.2)
    raise AssertionError(f"status --json never matched the agents: {last}")
