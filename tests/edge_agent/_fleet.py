"""Test harness for the agent: publish signed documents, run agents, wait for reported state."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from edge_agent._agent import Agent
from edge_agent._config import AgentConfig
from modules.deployment import DeploymentDocument, sign_document
from modules.signing import load_signing_key
from modules.topics import FleetTopics
from publisher import Model, Module, Workspace

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SCRIPTS = Path(__file__).resolve().parent / "scripts"
SAMPLE = json.loads((EXAMPLES / "models" / "iris" / "sample-input.json").read_text())


def mqtt_client(name: str) -> mqtt.Client:
    if hasattr(mqtt, "CallbackAPIVersion"):
        return mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name)
    return mqtt.Client(client_id=name)


def publish(port: int, topic: str, payload: bytes, retain: bool = True) -> None:
    client = mqtt_client(f"test-pub-{os.urandom(3).hex()}")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()


def read_retained(port: int, topic: str, timeout: float = 5.0) -> bytes | None:
    got: list[bytes] = []
    done = threading.Event()
    client = mqtt_client(f"test-read-{os.urandom(3).hex()}")

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        got.append(msg.payload)
        done.set()

    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.subscribe(topic, qos=1)
    client.loop_start()
    try:
        done.wait(timeout)
    finally:
        client.loop_stop()
        client.disconnect()
    return got[0] if got else None


class Publisher:
    """The publishing side, reduced to what agent tests need: artifacts and signed documents."""

    def __init__(self, root: Path, registry: str, mqtt_port: int, fleet: str) -> None:
        self.ws = Workspace.create(root, registry=registry, fleet=fleet)
        self.key = load_signing_key(self.ws.signing_key_path)
        self.public_key = root / "publisher.pub.pem"
        self.public_key.write_text(self.ws.public_key_pem())
        self.mqtt_port = mqtt_port
        self.topics = FleetTopics(fleet)
        self.model = Model.register(
            self.ws, EXAMPLES / "models" / "iris" / "model.onnx", f"iris-{os.urandom(3).hex()}"
        )
        self.module_name = f"svc-{os.urandom(3).hex()}"

    async def package(self, script: Path) -> Module:
        return await Module.package_async(
            self.ws,
            self.module_name,
            [self.model],
            entry_script=script,
            sample_input=EXAMPLES / "models" / "iris" / "sample-input.json",
        )

    def document(
        self, name: str, version: int, module: Module, port: int, **fields: Any
    ) -> DeploymentDocument:
        settings = {"module": module.repository, "digest": module.digest, "port": port}
        modules = {
            "scorer": {
                "type": "modelfleet",
                "status": "running",
                "restartPolicy": fields.pop("restart_policy", "on-failure"),
                "env": fields.pop("env", {}),
                "settings": settings,
            }
        }
        modules_content: dict[str, Any] = {
            "$edgeAgent": {"properties.desired": {"schemaVersion": "1.1", "modules": modules}}
        }
        twin = fields.pop("twin", None)  # the module twin's desired properties
        if twin is not None:
            modules_content["scorer"] = {"properties.desired": twin}
        data = {
            "fleet": self.topics.fleet,
            "name": name,
            "version": version,
            "targetCondition": fields.pop("target", "*"),
            "createdAt": datetime.now(UTC).isoformat(),
            "content": {"modulesContent": modules_content},
            **fields,
        }
        return DeploymentDocument.model_validate(data)

    def signed(self, doc: DeploymentDocument) -> bytes:
        return json.dumps(sign_document(doc, self.key).to_json_dict()).encode()

    async def deploy(self, doc: DeploymentDocument) -> None:
        await asyncio.to_thread(publish, self.mqtt_port, self.topics.deployment(doc.name), self.signed(doc))

    async def publish_raw(self, name: str, payload: bytes) -> None:
        await asyncio.to_thread(publish, self.mqtt_port, self.topics.deployment(name), payload)


def agent_config(
    data_dir: Path, device_id: str, hub: str, registry: str, trust: Path, fleet: str, **extra: Any
) -> AgentConfig:
    return AgentConfig(
        device_id=device_id,
        fleet=fleet,
        hub=hub,
        registry=registry,
        trust=[trust],
        data_dir=data_dir,
        listen_host="127.0.0.1",
        status_port=0,
        heartbeat_s=5,
        backoff_base_s=0.2,
        backoff_max_s=2,
        retry_base_s=0.5,
        retry_max_s=2,
        **extra,
    )


async def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def module_state(agent: Agent, name: str = "scorer") -> Any:
    return agent.modules.get(name)


def running_with(agent: Agent, digest: str, name: str = "scorer") -> bool:
    state = agent.modules.get(name)
    return bool(
        state and state.status == "running" and state.digest == digest and state.health != "unhealthy"
    )
