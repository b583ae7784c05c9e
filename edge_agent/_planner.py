"""Desired vs actual -> the commands that close the gap. Pure, so it is tested without processes.

Like IoT Edge's edgeAgent planner: removals first (highest startupOrder first), then starts and
replacements in ascending startupOrder. A module whose desired configuration is what runs, or what
already failed, gets no command: applying the same document twice does nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from modules.deployment import DEFAULT_RESTART_POLICY, STARTUP_ORDER_MAX, RestartPolicy
from modules.deployment.containers import (
    GpuRequest,
    ImagePullPolicy,
    container_port,
    image_settings,
    parse_image_reference,
)

if TYPE_CHECKING:  # the manifest's models: only a manifest brings them
    from modules.deployment import DockerModule, Manifest, ModelfleetModule


@dataclass(frozen=True)
class DesiredModule:
    name: str
    deployment: str | None
    repository: str
    digest: str
    port: int
    status: Literal["running", "stopped"] = "running"
    restart_policy: RestartPolicy = DEFAULT_RESTART_POLICY
    startup_order: int = STARTUP_ORDER_MAX
    env: Mapping[str, str] = field(default_factory=dict)
    execution_providers: tuple[str, ...] | None = None
    health_probe: Mapping[str, Any] | None = None
    keys_version: int | None = None
    auth_required: bool = False
    # the deployment's `resources` for the module, overriding its spec's (None: the spec's)
    resources: Mapping[str, Any] | None = None
    # set for a module that runs as a container: the image as the manifest names it, its create
    # options (compact JSON, keys sorted), IoT Edge's pull policy and the module's GPU request
    image: str | None = None
    create_options: str | None = None
    image_pull_policy: ImagePullPolicy = "on-create"
    gpu: GpuRequest | None = None
    # IoT Edge's free-form module `version`: a label on the container, never a reason to restart
    module_version: str | None = None

    @property
    def kind(self) -> Literal["process", "docker"]:
        return "docker" if self.image is not None else "process"

    @property
    def fingerprint(self) -> str:
        """Everything that needs a new process when it changes; the deployment name does not."""
        body = {
            "repository": self.repository,
            "digest": self.digest,
            "port": self.port,
            "restart_policy": self.restart_policy,
            "env": dict(sorted(self.env.items())),
            "execution_providers": list(self.execution_providers or []),
            "health_probe": self.health_probe,
            "keys_version": self.keys_version,
        }
        if self.resources:  # only when set: records from before resources keep their fingerprint
            body["resources"] = dict(sorted(self.resources.items()))
        if self.image is not None:  # likewise: process modules keep their fingerprint
            body["image"] = self.image
            body["create_options"] = self.create_options
            body["image_pull_policy"] = self.image_pull_policy
            body["gpu"] = self.gpu
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ActualModule:
    name: str
    fingerprint: str
    digest: str
    startup_order: int = STARTUP_ORDER_MAX


@dataclass(frozen=True)
class Start:
    desired: DesiredModule
    # the method of the module runtime that carries the command out
    verb: ClassVar[str] = "start"

    @property
    def name(self) -> str:
        return self.desired.name


@dataclass(frozen=True)
class Replace:
    actual: ActualModule
    desired: DesiredModule
    verb: ClassVar[str] = "replace"

    @property
    def name(self) -> str:
        return self.desired.name


@dataclass(frozen=True)
class Remove:
    actual: ActualModule
    verb: ClassVar[str] = "remove"

    @property
    def name(self) -> str:
        return self.actual.name


Command = Start | Replace | Remove


@dataclass(frozen=True)
class Unsupported:
    name: str
    reason: str


def desired_modules(
    manifest: Manifest | None,
    owners: Mapping[str, str] | None = None,
    keys_versions: Mapping[str, int] | None = None,
) -> tuple[dict[str, DesiredModule], list[Unsupported]]:
    """The modules this agent runs from an effective manifest; others are reported, not run."""
    if manifest is None:
        return {}, []
    from modules.deployment import DockerModule  # loaded with the first manifest

    out: dict[str, DesiredModule] = {}
    unsupported: list[Unsupported] = []
    for name, module in sorted(manifest.modules.items()):
        deployment = (owners or {}).get(name)
        try:
            if isinstance(module, DockerModule):
                out[name] = _docker_module(name, module, deployment, keys_versions)
            else:
                out[name] = _modelfleet_module(name, module, deployment, keys_versions)
        except ValueError as exc:
            unsupported.append(Unsupported(name, str(exc)))
    return out, unsupported


def _common(module: DockerModule | ModelfleetModule) -> dict[str, Any]:
    return {
        "status": "stopped" if module.status == "stopped" else "running",
        "restart_policy": module.restart_policy or DEFAULT_RESTART_POLICY,
        "startup_order": module.startup_order if module.startup_order is not None else STARTUP_ORDER_MAX,
        "env": module.environment(),  # a null value leaves the variable unset, not "None"
        "image_pull_policy": module.image_pull_policy or "on-create",
        "module_version": module.version,
    }


def _modelfleet_module(
    name: str, module: ModelfleetModule, deployment: str | None, keys_versions: Mapping[str, int] | None
) -> DesiredModule:
    s = module.settings
    image = image_settings(s.model_extra or {})
    return DesiredModule(
        name=name,
        deployment=deployment,
        repository=s.module,
        digest=s.digest,
        port=s.port,
        execution_providers=tuple(s.execution_providers) if s.execution_providers else None,
        health_probe=s.health_probe.model_dump() if s.health_probe else None,
        keys_version=(keys_versions or {}).get(deployment) if deployment else None,
        auth_required=bool((s.model_extra or {}).get("auth", False)),
        resources=s.resources.model_dump(exclude_none=True) if s.resources else None,
        image=image.image if image else None,
        create_options=image.create_options if image else None,
        gpu=image.gpu if image else None,
        **_common(module),
    )


def _docker_module(
    name: str, module: DockerModule, deployment: str | None, keys_versions: Mapping[str, int] | None
) -> DesiredModule:
    """An IoT Edge docker module: its port is the one its create options publish (or expose)."""
    try:
        create = module.settings.create_options_dict()
    except ValueError as exc:
        raise ValueError(f"settings.createOptions: {exc}") from None
    port = container_port(create)
    if port is None:
        raise ValueError(
            "a docker module needs a port on a modelfleet agent: HostConfig.PortBindings or ExposedPorts in "
            "settings.createOptions"
        )
    reference = parse_image_reference(module.settings.image)
    extra = module.settings.model_extra or {}
    gpu = extra.get("gpu")
    if gpu not in (None, "required", "preferred"):
        raise ValueError(f"settings.gpu must be 'required' or 'preferred', not {gpu!r}")
    return DesiredModule(
        name=name,
        deployment=deployment,
        repository=reference.repository,
        digest=reference.digest or "",
        port=port,
        image=module.settings.image,
        create_options=json.dumps(create, sort_keys=True, separators=(",", ":")),
        gpu=gpu,
        # the sealed document may carry the registry credentials: a new one is a reason to retry
        keys_version=(keys_versions or {}).get(deployment) if deployment else None,
        auth_required=bool(extra.get("auth", False)),
        **_common(module),
    )


def plan(
    desired: Mapping[str, DesiredModule],
    actual: Mapping[str, ActualModule],
    failed: Mapping[str, str] | None = None,
) -> list[Command]:
    """`failed` maps module name -> fingerprint that already failed: not retried until it changes."""
    failed = failed or {}
    removals: list[Remove] = []
    starts: list[Start | Replace] = []
    for name, current in actual.items():
        wanted = desired.get(name)
        if wanted is None or wanted.status == "stopped":
            removals.append(Remove(current))
    for name, wanted in desired.items():
        if wanted.status == "stopped" or failed.get(name) == wanted.fingerprint:
            continue
        current = actual.get(name)
        if current is None:
            starts.append(Start(wanted))
        elif current.fingerprint != wanted.fingerprint:
            starts.append(Replace(current, wanted))
    removals.sort(key=lambda c: (-c.actual.startup_order, c.actual.name))
    starts.sort(key=lambda c: (c.desired.startup_order, c.desired.name))
    return [*removals, *starts]
