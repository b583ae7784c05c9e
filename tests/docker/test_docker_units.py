"""The docker runtime's pure parts: the device owner's policy over create options, the container
body the agent sends, a docker module's port, and registry credentials sealed with the keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge_agent._config import AgentConfig
from edge_agent._planner import desired_modules
from edge_agent._runtime import ContainerRefused, DockerPolicy, DockerUnavailable, container_config
from edge_agent._runtime._docker_modules import ContainerModules
from modules.deployment import Manifest
from modules.deployment.containers import container_port
from modules.deployment.registry_secrets import (
    SEALED_PLACEHOLDER,
    RegistryLogin,
    open_secrets,
    seal_secrets,
    take_registry_credentials,
)
from modules.service_keys import ServiceKeys, device_public_key, open_keys

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("host_config", "reason"),
    [
        ({"Privileged": True}, "Privileged is refused"),
        ({"PidMode": "host"}, "PidMode=host is refused"),
        ({"IpcMode": "host"}, "IpcMode=host is refused"),
        ({"NetworkMode": "bridge"}, "the host's network only"),
        ({"Binds": ["/etc:/host-etc:ro"]}, "binds host path '/etc'"),
        ({"Binds": ["/data/../etc:/x"]}, "binds host path '/data/../etc'"),
        ({"Mounts": [{"Type": "bind", "Source": "/root", "Target": "/r"}]}, "binds host path '/root'"),
        ({"Devices": [{"PathOnHost": "/dev/mem", "PathInContainer": "/dev/mem"}]}, "passes '/dev/mem'"),
        ({"CapAdd": ["SYS_ADMIN"]}, "CapAdd 'SYS_ADMIN' is refused"),
        ({"Runtime": "nvidia"}, "Runtime 'nvidia' is not one this engine has"),
    ],
)
def test_the_default_policy_refuses_what_would_give_a_container_the_host(
    host_config: dict[str, Any], reason: str
) -> None:
    policy = DockerPolicy(bind_paths=("/data",), device_paths=("/dev/video0",), runtimes=("runc",))
    with pytest.raises(ContainerRefused, match=reason.replace("(", r"\(").replace(")", r"\)")):
        container_config(json.dumps({"HostConfig": host_config}), image="i", env={}, labels={}, policy=policy)


def test_what_the_owner_allows_passes_and_the_agent_sets_network_restart_env_and_labels() -> None:
    policy = DockerPolicy(
        bind_paths=("/data",), device_paths=("/dev/video0",), capabilities=("NET_ADMIN",), runtimes=("runc",)
    )
    create = {
        "Env": ["A=1", "MODELFLEET_PORT=1"],
        "Cmd": ["--flag"],
        "ExposedPorts": {"5001/tcp": {}},
        "HostConfig": {
            "Binds": ["/data/models:/models:ro", "named-volume:/cache"],
            "Devices": [{"PathOnHost": "/dev/video0", "PathInContainer": "/dev/video0"}],
            "CapAdd": ["CAP_NET_ADMIN"],
            "Memory": 256 << 20,
            "NanoCpus": 500_000_000,
            "PortBindings": {"5001/tcp": [{"HostPort": "8080"}]},
            "RestartPolicy": {"Name": "always"},
        },
    }
    body = container_config(
        json.dumps(create),
        image="reg:5000/images/x@" + DIGEST,
        env={"MODELFLEET_PORT": "40001"},
        labels={"io.modelfleet.agent": "a"},
        policy=policy,
        gpu=True,
    )
    host = body["HostConfig"]
    assert host["NetworkMode"] == "host" and host["RestartPolicy"] == {"Name": "no"}
    assert "PortBindings" not in host and "ExposedPorts" not in body
    assert (host["Memory"], host["NanoCpus"], host["Binds"][0]) == (
        256 << 20,
        500_000_000,
        "/data/models:/models:ro",
    )
    assert host["DeviceRequests"] == [
        {"Driver": "", "Count": -1, "DeviceIDs": None, "Capabilities": [["gpu"]], "Options": {}}
    ]
    assert body["Env"] == ["A=1", "MODELFLEET_PORT=40001"]
    assert body["Cmd"] == ["--flag"] and body["Image"].endswith(DIGEST)
    assert body["Labels"] == {"io.modelfleet.agent": "a"}


def test_a_docker_modules_port_is_the_one_its_create_options_publish_or_expose() -> None:
    assert container_port({"HostConfig": {"PortBindings": {"5001/tcp": [{"HostPort": "8890"}]}}}) == 8890
    assert container_port({"HostConfig": {"PortBindings": {"5001/tcp": []}}}) == 5001
    assert container_port({"ExposedPorts": {"53/udp": {}, "9000/tcp": {}}}) == 9000
    assert container_port({"Env": ["A=1"]}) is None


def _edge(version: str, create: str) -> dict[str, Any]:
    return {
        "type": "docker",
        "version": version,
        "settings": {"image": "reg:5000/a:1", "createOptions": create},
    }


def _manifest(modules: dict[str, Any]) -> Manifest:
    return Manifest.model_validate(
        {
            "modulesContent": {
                "$edgeAgent": {"properties.desired": {"schemaVersion": "1.1", "modules": modules}}
            }
        }
    )


def test_docker_modules_and_image_modules_become_container_modules_and_bad_ones_are_reported() -> None:
    create = json.dumps({"HostConfig": {"PortBindings": {"5001/tcp": [{"HostPort": "8890"}]}}})
    manifest = _manifest(
        {
            "edge": {
                "type": "docker",
                "version": "2.0",
                "settings": {"image": "reg:5000/a:1", "createOptions": create},
            },
            "image": {
                "type": "modelfleet",
                "imagePullPolicy": "never",
                "settings": {
                    "module": "modules/iris",
                    "digest": DIGEST,
                    "port": 8891,
                    "image": f"reg:5000/images/iris@{DIGEST}",
                    "gpu": "preferred",
                },
            },
            "process": {
                "type": "modelfleet",
                "settings": {"module": "modules/iris", "digest": DIGEST, "port": 8892},
            },
            "portless": {"type": "docker", "settings": {"image": "reg:5000/a:1"}},
            "tagged": {
                "type": "modelfleet",
                "settings": {"module": "modules/iris", "digest": DIGEST, "port": 1, "image": "reg:5000/i:1"},
            },
        }
    )
    desired, unsupported = desired_modules(manifest, {"edge": "d"}, {"d": 3})
    edge, image, process = desired["edge"], desired["image"], desired["process"]
    assert (edge.kind, edge.port, edge.repository, edge.digest, edge.module_version) == (
        "docker",
        8890,
        "a",
        "",
        "2.0",
    )
    assert edge.keys_version == 3
    assert (image.kind, image.image_pull_policy, image.gpu, image.port) == (
        "docker",
        "never",
        "preferred",
        8891,
    )
    assert process.kind == "process" and process.image is None
    reasons = {u.name: u.reason for u in unsupported}
    assert "needs a port" in reasons["portless"]
    assert "must be pinned by digest" in reasons["tagged"]
    # A change of create options is a new container; the module's free-form version is not.
    other = _manifest(
        {
            "edge": {
                "type": "docker",
                "version": "3.0",
                "settings": {"image": "reg:5000/a:1", "createOptions": create},
            }
        }
    )
    assert desired_modules(other, {"edge": "d"}, {"d": 3})[0]["edge"].fingerprint == edge.fingerprint


def test_registry_passwords_leave_the_document_and_travel_sealed_with_the_keys() -> None:
    data = {
        "content": {
            "modulesContent": {
                "$edgeAgent": {
                    "properties.desired": {
                        "runtime": {
                            "type": "docker",
                            "settings": {
                                "registryCredentials": {
                                    "private": {"address": "reg:5000", "username": "u", "password": "s3cret"},
                                    "template": {
                                        "address": "other:5000",
                                        "username": "$CONTAINER_REGISTRY_USERNAME",
                                        "password": "$CONTAINER_REGISTRY_PASSWORD",
                                    },
                                }
                            },
                        }
                    }
                }
            }
        }
    }
    taken = take_registry_credentials(data)
    assert list(taken) == ["private"] and taken["private"].password.get_secret_value() == "s3cret"
    assert "s3cret" not in json.dumps(data) and SEALED_PLACEHOLDER in json.dumps(data)

    device = X25519PrivateKey.generate()
    signer = Ed25519PrivateKey.generate()
    keys = ServiceKeys.generate()
    wire = seal_secrets(
        keys,
        {"private": RegistryLogin(address="http://reg:5000", username="u", password="s3cret")},  # type: ignore[arg-type]
        device_public_key(device),
        fleet="f",
        name="d",
        device="dev",
        version=1,
        signing_key=signer,
    )
    assert "s3cret" not in json.dumps(wire)
    _, opened = open_secrets(wire, device, [signer.public_key()], fleet="f", device="dev")
    login = opened.login_for("reg:5000")
    assert login is not None and login.auth_config() == {
        "username": "u",
        "password": "s3cret",
        "serveraddress": "reg:5000",
    }
    assert opened.primary.get_secret_value() == keys.primary.get_secret_value()
    # An agent that knows only scoring keys opens the same document.
    _, plain = open_keys(wire, device, [signer.public_key()], fleet="f", device="dev")
    assert plain.secondary.get_secret_value() == keys.secondary.get_secret_value()


async def test_a_container_module_on_a_device_whose_engine_is_unreachable_fails_with_the_reason(
    tmp_path: Path,
) -> None:
    config = AgentConfig(
        device_id="dev-x", data_dir=tmp_path, docker_host=f"unix://{tmp_path}/no-engine.sock"
    )
    [desired] = desired_modules(
        _manifest({"edge": _edge("1", json.dumps({"ExposedPorts": {"5001/tcp": {}}}))})
    )[0].values()
    with pytest.raises(DockerUnavailable, match="cannot reach the Docker engine at unix://"):
        await ContainerModules(config).prepare(desired, None, 40000, None)
