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
from typing import Any, ClassVar, Literal

from modules.deployment import (
    DEFAULT_RESTART_POLICY,
    STARTUP_ORDER_MAX,
    Manifest,
    ModelfleetModule,
    RestartPolicy,
)


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
    out: dict[str, DesiredModule] = {}
    unsupported: list[Unsupported] = []
    for name, module in sorted(manifest.modules.items()):
        if not isinstance(module, ModelfleetModule):
            unsupported.append(Unsupported(name, f"module type {module.type!r} needs the docker runtime"))
            continue
        s = module.settings
        deployment = (owners or {}).get(name)
        out[name] = DesiredModule(
            name=name,
            deployment=deployment,
            repository=s.module,
            digest=s.digest,
            port=s.port,
            status="stopped" if module.status == "stopped" else "running",
            restart_policy=module.restart_policy or DEFAULT_RESTART_POLICY,
            startup_order=module.startup_order if module.startup_order is not None else STARTUP_ORDER_MAX,
            env=module.environment(),  # a null value leaves the variable unset, not "None"
            execution_providers=tuple(s.execution_providers) if s.execution_providers else None,
            health_probe=s.health_probe.model_dump() if s.health_probe else None,
            keys_version=(keys_versions or {}).get(deployment) if deployment else None,
            auth_required=bool((s.model_extra or {}).get("auth", False)),
            resources=s.resources.model_dump(exclude_none=True) if s.resources else None,
        )
    return out, unsupported


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
