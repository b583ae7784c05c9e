"""What the docker-runtime tests share: module images of the iris sample, signed deployments of
them in IoT Edge's docker shape or as modelfleet image modules, agents pointed at the test engine,
and readers of the engine's containers."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from edge_agent._agent import Agent
from edge_agent._config import AgentConfig
from edge_agent._runtime import agent_label
from modules.deployment import DeploymentDocument, sign_document
from modules.signing import load_signing_key
from modules.topics import FleetTopics
from publisher import Model, Module, Workspace
from publisher._image import ModuleImage, build_module_image_async
from tests._docker import DockerEngine
from tests._services import Service
from tests.edge_agent._fleet import publish

ROOT = Path(__file__).resolve().parents[2]
IRIS_DIR = ROOT / "examples" / "models" / "iris"
SCORE_SCRIPT = ROOT / "examples" / "iris-service" / "score.py"
SCRIPTS = ROOT / "tests" / "edge_agent" / "scripts"
SAMPLE = json.loads((IRIS_DIR / "sample-input.json").read_text())
EXPECTED = ["setosa", "versicolor", "virginica"]
AGENT_LABEL = "io.modelfleet.agent"


async def package_image(ws: Workspace, model: Model, script: Path, name: str | None = None) -> ModuleImage:
    module = await Module.package_async(
        ws,
        name or f"iris-svc-{os.urandom(3).hex()}",
        [model],
        entry_script=script,
        sample_input=IRIS_DIR / "sample-input.json",
    )
    image, _ = await build_module_image_async(ws, module)
    return image


def docker_module(image: str, port: int, **fields: Any) -> dict[str, Any]:
    """A module as IoT Edge writes it: `settings.image`, `settings.createOptions` as a string."""
    create = fields.pop("create", {})
    create.setdefault("HostConfig", {}).setdefault("PortBindings", {"5001/tcp": [{"HostPort": str(port)}]})
    settings: dict[str, Any] = {"image": image, "createOptions": json.dumps(create)}
    settings.update(fields.pop("settings", {}))
    return {
        "version": "1.0",
        "type": "docker",
        "status": "running",
        "restartPolicy": fields.pop("restart_policy", "on-failure"),
        "settings": settings,
        **fields,
    }


class Deployer:
    """Signs deployments with the workspace's key and publishes them retained on Mosquitto."""

    def __init__(self, ws: Workspace, mqtt_port: int, fleet: str) -> None:
        self.ws = ws
        self.key = load_signing_key(ws.signing_key_path)
        self.public_key = ws.root / "publisher.pub.pem"
        self.public_key.write_text(ws.public_key_pem())
        self.mqtt_port = mqtt_port
        self.topics = FleetTopics(fleet)

    def document(self, name: str, version: int, modules: dict[str, Any], **fields: Any) -> DeploymentDocument:
        data = {
            "fleet": self.topics.fleet,
            "name": name,
            "version": version,
            "targetCondition": fields.pop("target", "*"),
            "createdAt": datetime.now(UTC).isoformat(),
            "content": {
                "modulesContent": {
                    "$edgeAgent": {"properties.desired": {"schemaVersion": "1.1", "modules": modules}}
                }
            },
            **fields,
        }
        return DeploymentDocument.model_validate(data)

    async def deploy(self, doc: DeploymentDocument) -> None:
        payload = json.dumps(sign_document(doc, self.key).to_json_dict()).encode()
        await asyncio.to_thread(publish, self.mqtt_port, self.topics.deployment(doc.name), payload)


def agent_config(
    data_dir: Path,
    device_id: str,
    mosquitto: Service,
    registry: Service,
    engine: DockerEngine,
    deployer: Deployer,
    **extra: Any,
) -> AgentConfig:
    return AgentConfig(
        device_id=device_id,
        fleet=deployer.topics.fleet,
        hub=mosquitto.url,
        registry=registry.url,
        registry_username=registry.username,
        registry_password=registry.password,
        trust=[deployer.public_key],
        data_dir=data_dir,
        listen_host="127.0.0.1",
        status_port=0,
        heartbeat_s=5,
        backoff_base_s=0.2,
        backoff_max_s=2,
        retry_base_s=0.5,
        retry_max_s=2,
        docker_host=engine.host,
        **extra,
    )


def containers(engine: DockerEngine, label: str = AGENT_LABEL) -> list[dict[str, Any]]:
    """Every container (running or not) with the label: `docker ps -a` as JSON lines."""
    out = engine.run("ps", "-a", "--no-trunc", "--filter", f"label={label}", "--format", "{{json .}}").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def labels_of(engine: DockerEngine, container: str) -> dict[str, str]:
    return json.loads(engine.run("inspect", "--format", "{{json .Config.Labels}}", container).stdout)


def module_containers(engine: DockerEngine, agent: str, module: str, state: str | None = None) -> list[str]:
    """Ids of one agent's containers (`agent_label`) that run `module`, optionally in one state."""
    found = containers(engine, f"io.modelfleet.agent={agent}")
    return [
        c["ID"]
        for c in found
        if f"io.modelfleet.module-name={module}" in c["Labels"] and (state is None or c["State"] == state)
    ]


def label_of(agent: Agent) -> str:
    """The label an in-process agent puts on its containers."""
    return agent_label(agent.config.device_id, agent.config.data_dir)


async def score(port: int, session: aiohttp.ClientSession, **headers: str) -> tuple[int, Any]:
    async with session.post(f"http://127.0.0.1:{port}/score", json=SAMPLE, headers=headers) as resp:
        body = await resp.read()
        try:
            return resp.status, json.loads(body)
        except ValueError:
            return resp.status, body.decode(errors="replace")


async def wait_for(predicate: Callable[[], Any], timeout: float = 120.0, what: str = "condition") -> Any:
    """Polls until truthy; the timeout only ends a hung test, it asserts nothing about speed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
