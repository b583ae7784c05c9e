"""A module's Docker create options, judged against the device owner's policy and completed.

IoT Edge hands `createOptions` to Docker as they are. Here they pass through the same way (the
body of Docker's `POST /containers/create`), after a check against the policy the device owner
sets in the agent config: by default a deployment cannot make a container privileged, share the
host's PID, IPC, UTS or user namespaces, add capabilities, bind host paths or pass devices outside
the allowed ones, or use any network but the host's. A refused document is reported with the
reason and nothing running changes: the check runs before anything is pulled or stopped.

What the agent sets itself, whatever the options say: host networking (the front proxy and the
readiness checks reach the module on 127.0.0.1), no Docker restart policy (the agent supervises,
with IoT Edge's policies and its own backoff), the module's port and keys in the environment,
and the labels that let a restarted agent find its containers.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from modules import ModelfleetError

# Top-level create options the agent decides itself; a value in the manifest is overridden.
_OURS = ("Image", "Hostname", "Domainname", "NetworkingConfig", "ExposedPorts")
# HostConfig entries meaningless or harmful under host networking and agent supervision.
_DROPPED_HOST_CONFIG = ("PortBindings", "PublishAllPorts", "RestartPolicy", "AutoRemove", "Links", "Dns")
_HOST_NAMESPACES = ("PidMode", "IpcMode", "UTSMode", "UsernsMode", "CgroupnsMode")


class ContainerRefused(ModelfleetError):
    """The module's create options ask for something the device's policy does not allow."""


@dataclass(frozen=True)
class DockerPolicy:
    """What a deployment may ask of this device's container engine (`docker_*` agent settings)."""

    allow_privileged: bool = False
    allow_host_namespaces: bool = False
    bind_paths: Sequence[str] = ()
    device_paths: Sequence[str] = ()
    capabilities: Sequence[str] = ()
    runtimes: Sequence[str] = field(default_factory=tuple)


def _under(path: str, allowed: Sequence[str]) -> bool:
    candidate = PurePosixPath(path)
    if not candidate.is_absolute() or ".." in candidate.parts:
        return False
    return any(candidate == PurePosixPath(a) or PurePosixPath(a) in candidate.parents for a in allowed)


def _bind_sources(host_config: Mapping[str, Any]) -> list[str]:
    sources: list[str] = []
    for bind in host_config.get("Binds") or []:
        source = str(bind).split(":", 1)[0]
        if source.startswith("/") or source.startswith("."):
            sources.append(source)
        # a bare name is a named volume: the engine's own storage, not a host path
    for mount in host_config.get("Mounts") or []:
        if isinstance(mount, Mapping) and mount.get("Type", "volume") == "bind":
            sources.append(str(mount.get("Source", "")))
    return sources


def check_policy(create: Mapping[str, Any], policy: DockerPolicy) -> None:
    """Raise ContainerRefused naming the first option the policy forbids."""
    host_config = create.get("HostConfig") or {}
    if not isinstance(host_config, Mapping):
        raise ContainerRefused("createOptions.HostConfig must be an object")
    if host_config.get("Privileged") and not policy.allow_privileged:
        raise ContainerRefused(
            "createOptions.HostConfig.Privileged is refused by this device's policy (docker_allow_privileged)"
        )
    for key in _HOST_NAMESPACES:
        if str(host_config.get(key) or "").lower() == "host" and not policy.allow_host_namespaces:
            raise ContainerRefused(
                f"createOptions.HostConfig.{key}=host is refused by this device's policy "
                "(docker_allow_host_namespaces)"
            )
    network = host_config.get("NetworkMode")
    if network not in (None, "", "host", "default"):
        raise ContainerRefused(
            f"createOptions.HostConfig.NetworkMode={network!r}: a modelfleet agent runs containers on the "
            "host's network only"
        )
    for source in _bind_sources(host_config):
        if not _under(source, policy.bind_paths):
            allowed = ", ".join(policy.bind_paths) or "none"
            raise ContainerRefused(
                f"createOptions.HostConfig binds host path {source!r}, outside the paths this device allows "
                f"(docker_bind_paths: {allowed})"
            )
    for device in host_config.get("Devices") or []:
        path = str(device.get("PathOnHost", "")) if isinstance(device, Mapping) else str(device)
        if not _under(path, policy.device_paths):
            raise ContainerRefused(
                f"createOptions.HostConfig.Devices passes {path!r}, which this device does not allow "
                "(docker_device_paths)"
            )
    for capability in host_config.get("CapAdd") or []:
        if str(capability).upper().removeprefix("CAP_") not in {
            c.upper().removeprefix("CAP_") for c in policy.capabilities
        }:
            raise ContainerRefused(
                f"createOptions.HostConfig.CapAdd {capability!r} is refused by this device's policy "
                "(docker_capabilities)"
            )
    runtime = host_config.get("Runtime")
    if runtime and runtime not in policy.runtimes:
        raise ContainerRefused(f"createOptions.HostConfig.Runtime {runtime!r} is not one this engine has")
    for option in host_config.get("SecurityOpt") or []:
        if "unconfined" in str(option) and not policy.allow_privileged:
            raise ContainerRefused(
                f"createOptions.HostConfig.SecurityOpt {option!r} is refused by this device's policy"
            )


def gpu_request() -> dict[str, Any]:
    """Docker's `--gpus all`: the `gpu` capability on every device the GPU runtime has."""
    return {"Driver": "", "Count": -1, "DeviceIDs": None, "Capabilities": [["gpu"]], "Options": {}}


def container_config(
    create_options: str | None,
    *,
    image: str,
    env: Mapping[str, str],
    labels: Mapping[str, str],
    policy: DockerPolicy,
    gpu: bool = False,
) -> dict[str, Any]:
    """The body of `POST /containers/create` for one instance; ContainerRefused under the policy."""
    create: dict[str, Any] = json.loads(create_options) if create_options else {}
    if not isinstance(create, dict):
        raise ContainerRefused("createOptions must be a JSON object")
    check_policy(create, policy)
    config = {k: copy.deepcopy(v) for k, v in create.items() if k not in _OURS}
    host_config = {k: v for k, v in (config.pop("HostConfig", None) or {}).items()}
    for key in _DROPPED_HOST_CONFIG:
        host_config.pop(key, None)
    host_config["NetworkMode"] = "host"
    host_config["RestartPolicy"] = {"Name": "no"}
    if gpu:
        requests = [r for r in host_config.get("DeviceRequests") or [] if isinstance(r, dict)]
        if not any(["gpu"] in (r.get("Capabilities") or []) for r in requests):
            requests.append(gpu_request())
        host_config["DeviceRequests"] = requests
    variables = [str(e) for e in config.pop("Env", None) or []]
    names = set(env)
    config["Env"] = [e for e in variables if e.split("=", 1)[0] not in names] + [
        f"{k}={v}" for k, v in sorted(env.items())
    ]
    config["Labels"] = {**(config.get("Labels") or {}), **labels}
    config["Image"] = image
    config["HostConfig"] = host_config
    return config


def describe_limits(body: Mapping[str, Any], gpu: GpuWanted) -> str | None:
    """What reported state says of a container's limits (enforced by the engine) and its GPU: for
    `gpu: preferred` on a device without a GPU runtime, that it runs on the CPU provider."""
    host = body.get("HostConfig") or {}
    parts = []
    if host.get("Memory"):
        parts.append(f"memory {int(host['Memory']) / 2**20:g} MiB")
    if host.get("NanoCpus"):
        parts.append(f"cpus {int(host['NanoCpus']) / 1e9:g}")
    enforced = [f"{', '.join(parts)} (enforced by the Docker engine)"] if parts else []
    if gpu.granted:
        enforced.append("GPU: all devices of the GPU runtime (DeviceRequests gpu)")
    elif gpu.requested == "preferred":
        enforced.append("GPU: none on this device (gpu: preferred): CPU execution provider")
    return "; ".join(enforced) or None


@dataclass(frozen=True)
class GpuWanted:
    requested: str | None  # the module's `gpu`: required, preferred, or None
    granted: bool  # the engine has a GPU runtime and the container gets the GPUs
