"""IoT Edge interop with the docker runtime: a manifest in IoT Edge's own shape (docker modules,
`settings.image`, stringified `settings.createOptions`, a private registry's
`registryCredentials`) deployed as it is, its credentials sealed to the enrolled device, and the
export written back in the same shape with placeholders instead of secrets."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import aiohttp

from edge_agent._agent import Agent
from edge_agent._config import AgentConfig
from publisher import Workspace
from publisher._image import ModuleImage
from tests._docker import DockerEngine
from tests._services import Service, free_port
from tests.docker._harness import EXPECTED, docker_module, label_of, module_containers, score, wait_for
from tests.edge_agent._fleet import read_retained
from tests.publisher._forge import retained_under
from tests.publisher._harness import acli

EDGE_AGENT = "mcr.microsoft.com/azureiotedge-agent:1.5"
EDGE_HUB = "mcr.microsoft.com/azureiotedge-hub:1.5"


def _serving(agent: Agent, digest: str) -> bool:
    state = agent.modules.get("scorer")
    return bool(state and state.status == "running" and state.digest == digest)


def _iotedge_manifest(image: str, port: int, registry: Service) -> dict[str, Any]:
    """What `az iot edge set-modules` takes, docker runtime and system modules included."""
    host = registry.url.removeprefix("http://")
    return {
        "modulesContent": {
            "$edgeAgent": {
                "properties.desired": {
                    "schemaVersion": "1.1",
                    "runtime": {
                        "type": "docker",
                        "settings": {
                            "minDockerVersion": "v1.25",
                            "loggingOptions": "",
                            "registryCredentials": {
                                "private": {
                                    "address": host,
                                    "username": registry.username,
                                    "password": registry.password,
                                }
                            },
                        },
                    },
                    "systemModules": {
                        "edgeAgent": {
                            "type": "docker",
                            "settings": {
                                "image": "mcr.microsoft.com/azureiotedge-agent:1.5",
                                "createOptions": "{}",
                            },
                        },
                        "edgeHub": {
                            "type": "docker",
                            "status": "running",
                            "restartPolicy": "always",
                            "settings": {
                                "image": "mcr.microsoft.com/azureiotedge-hub:1.5",
                                "createOptions": "{}",
                            },
                        },
                    },
                    "modules": {"scorer": docker_module(image, port)},
                }
            },
            "$edgeHub": {
                "properties.desired": {
                    "schemaVersion": "1.1",
                    "routes": {},
                    "storeAndForwardConfiguration": {"timeToLiveSecs": 7200},
                }
            },
        }
    }


async def test_an_iotedge_manifest_with_a_private_registry_deploys_as_it_is_and_its_export_round_trips(
    tmp_path: Path,
    mosquitto: Service,
    distribution_basic_auth: Service,
    docker_engine: DockerEngine,
    iris_image: ModuleImage,
) -> None:
    assert distribution_basic_auth.password
    password = distribution_basic_auth.password.encode()
    fleet = f"e{os.urandom(3).hex()}"
    ws = Workspace.create(
        tmp_path / "ws", registry=distribution_basic_auth.url, hub=mosquitto.url, fleet=fleet
    )
    trust = tmp_path / "publisher.pub.pem"
    trust.write_text(ws.public_key_pem())
    # The agent has no registry credentials of its own: only the deployment's sealed ones open the pull.
    config = AgentConfig(
        device_id="dev-e",
        fleet=fleet,
        hub=mosquitto.url,
        registry=distribution_basic_auth.url,
        trust=[trust],
        data_dir=tmp_path / "agent",
        listen_host="127.0.0.1",
        status_port=0,
        heartbeat_s=5,
        docker_host=docker_engine.host,
    )
    agent = Agent(config)
    mine = label_of(agent)
    await agent.start()
    try:
        await wait_for(
            lambda: read_retained(mosquitto.port, agent.topics.reported("dev-e"), timeout=0.5),
            what="the device's first report (its public key)",
        )
        code, _, err = await acli(ws, "device", "enroll", "dev-e", "--key", agent.device_key.public)
        assert code == 0, err

        # Not on the engine yet (an earlier test may have pulled it): this pull needs the credentials.
        docker_engine.run("rmi", "-f", iris_image.reference, check=False)
        port = free_port()
        manifest = tmp_path / "deployment.json"
        manifest.write_text(
            json.dumps(_iotedge_manifest(iris_image.reference, port, distribution_basic_auth))
        )
        code, out, err = await acli(ws, "deploy", "import", str(manifest), "-n", "edge")
        assert code == 0, err
        await wait_for(
            lambda: (
                (s := agent.modules.get("scorer")) and s.status == "running" and s.digest == iris_image.digest
            ),
            what="the docker module running, pulled with the sealed credentials",
        )
        async with aiohttp.ClientSession() as session:
            status, body = await score(port, session)
        assert (status, body["predictions"]) == (200, EXPECTED)
        [container] = module_containers(docker_engine, mine, "scorer", "running")

        retained = await asyncio.to_thread(retained_under, mosquitto.port, "modelfleet", 1.0)
        assert any("/keys/edge" in topic for topic in retained), "the credentials were not sealed"
        for topic, payload in retained.items():
            assert password not in payload, f"the registry password in clear on {topic}"
        assert password not in (tmp_path / "agent" / "state.json").read_bytes()

        code, out, err = await acli(ws, "deploy", "export", "edge", "--format", "iotedge")
        assert code == 0, err
        assert password.decode() not in out
        exported = json.loads(out)
        desired = exported["modulesContent"]["$edgeAgent"]["properties.desired"]
        scorer = desired["modules"]["scorer"]
        assert scorer["type"] == "docker" and scorer["settings"]["image"] == iris_image.reference
        assert isinstance(scorer["settings"]["createOptions"], str)
        assert json.loads(scorer["settings"]["createOptions"])["HostConfig"]["PortBindings"]
        login = desired["runtime"]["settings"]["registryCredentials"]["private"]
        assert login["password"] == "$CONTAINER_REGISTRY_PASSWORD_PRIVATE"
        assert login["username"] == "$CONTAINER_REGISTRY_USERNAME_PRIVATE"

        # Imported back: the same modules, so the device changes nothing.
        again = tmp_path / "exported.json"
        again.write_text(out)
        code, _, err = await acli(ws, "deploy", "import", str(again), "-n", "edge")
        assert code == 0, err
        await wait_for(
            lambda: (d := agent.deployments.get("edge")) and d.version == 2 and d.outcome == "applied",
            what="the re-imported export applied",
        )
        assert module_containers(docker_engine, mine, "scorer") == [container]
    finally:
        await agent.stop()
