"""Deployments: build the signed document, publish it retained, read it back, version it.

The version of a deployment lives only in its retained document: `update` reads what the broker
holds on `deployments/<name>` and publishes version + 1, so two workstations (or a CI job) need no
shared state beyond the broker. A per-device override is the same document with `device` set,
on `devices/<id>/desired`. Deleting publishes an empty retained payload; agents then remove the
deployment's modules.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from modules import ConfigError, ModelfleetError, NotFoundError
from modules.deployment import (
    DEFAULT_MAX_FAILURE_RATIO,
    DEFAULT_MIN_HEALTHY_SECONDS,
    DEFAULT_RESTART_POLICY,
    DeploymentDocument,
    RestartPolicy,
    sign_document,
)
from modules.signing import load_signing_key
from modules.spec import MODULE_REPOSITORY_PREFIX
from publisher import _service_keys
from publisher._hub import FleetConnection, now
from publisher._module import Module
from publisher._versions import check_name, parse_ref, resolve_version
from publisher._workspace import Workspace

DEFAULT_PORT = 5001


class DeploymentExistsError(ModelfleetError):
    """`create` for a name the broker already holds a document for."""


class DeploymentSettings(BaseModel):
    """Everything about a deployment besides its modules, as given on the command line or in Python."""

    model_config = ConfigDict(extra="forbid")

    target: str = "*"
    priority: int = 0
    env: dict[str, str] = Field(default_factory=dict)
    restart_policy: RestartPolicy = DEFAULT_RESTART_POLICY
    port: int = Field(DEFAULT_PORT, ge=1, le=65535, description="First module's port; the next get +1")
    auth: bool = False
    rollout: list[int] | None = None
    min_healthy_seconds: int = Field(DEFAULT_MIN_HEALTHY_SECONDS, ge=0)
    max_failure_ratio: float = Field(DEFAULT_MAX_FAILURE_RATIO, ge=0, le=1)
    device: str | None = None
    layered: bool = False

    @field_validator("rollout", mode="before")
    @classmethod
    def _steps(cls, value: Any) -> list[int] | None:
        return parse_steps(value)


def parse_steps(text: str | Sequence[int] | None) -> list[int] | None:
    """`"5%,25%,100%"` (or `[5, 25, 100]`) -> `[5, 25, 100]`; the document model checks the order."""
    if text is None:
        return None
    if not isinstance(text, str):
        return [int(step) for step in text]
    steps = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*%?\s*", part)
        if match is None:
            raise ConfigError(f"invalid rollout steps {text!r}: use percentages like 10%,50%,100%")
        steps.append(int(match.group(1)))
    return steps


async def resolve_modules(workspace: Workspace, refs: Sequence[str | Module]) -> list[Module]:
    """`NAME[:VERSION]` strings or `Module`s -> packaged modules, pinned by digest."""
    if not refs:
        raise ConfigError("a deployment needs at least one module (--module NAME[:VERSION])")
    out: list[Module] = []
    async with workspace.registry_client() as client:
        for ref in refs:
            if isinstance(ref, Module):
                out.append(ref)
                continue
            name, version = parse_ref(ref, "module")
            number = await resolve_version(client, MODULE_REPOSITORY_PREFIX + name, version, "module")
            out.append(await Module.from_registry(workspace, client, name, number))
    names = [m.name for m in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"a module appears twice in the deployment: {', '.join(names)}")
    return out


def manifest_modules(modules: Sequence[Module], settings: DeploymentSettings) -> dict[str, Any]:
    """The `$edgeAgent` modules section: one modelfleet module per package, named after it."""
    env = {key: {"value": value} for key, value in sorted(settings.env.items())}
    out: dict[str, Any] = {}
    for index, module in enumerate(modules):
        module_settings: dict[str, Any] = {
            "module": module.repository,
            "digest": module.digest,
            "port": settings.port + index,
        }
        if settings.auth:
            # Kept in the signed manifest (settings keep unknown fields); keys come with the keys feature.
            module_settings["auth"] = True
        out[module.name] = {
            "version": str(module.version),
            "type": "modelfleet",
            "status": "running",
            "restartPolicy": settings.restart_policy,
            "startupOrder": index,
            **({"env": env} if env else {}),
            "settings": module_settings,
        }
    return out


def document_data(
    workspace: Workspace, name: str, version: int, modules: Mapping[str, Any], settings: DeploymentSettings
) -> dict[str, Any]:
    """The unsigned document in its wire form, with only the fields that mean something."""
    data: dict[str, Any] = {
        "fleet": workspace.fleet,
        "name": name,
        "version": version,
        "targetCondition": settings.target,
        "priority": settings.priority,
        "layered": settings.layered,
        "content": {
            "modulesContent": {
                "$edgeAgent": {
                    "properties.desired": {
                        "schemaVersion": "1.1",
                        "runtime": {"type": "process"},
                        "modules": dict(modules),
                    }
                }
            }
        },
        "createdAt": now().isoformat().replace("+00:00", "Z"),
    }
    if settings.rollout is not None:
        data["rollout"] = {
            "steps": settings.rollout,
            "currentStep": 0,
            "minHealthySeconds": settings.min_healthy_seconds,
            "maxFailureRatio": settings.max_failure_ratio,
        }
    if settings.device is not None:
        data["device"] = settings.device
    return data


def validate(data: Mapping[str, Any]) -> DeploymentDocument:
    try:
        return DeploymentDocument.model_validate(dict(data))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "document"
        raise ConfigError(f"invalid deployment: {where}: {first['msg']}") from None


def topic_for(hub: FleetConnection, name: str, device: str | None) -> str:
    return hub.topics.desired(device) if device is not None else hub.topics.deployment(name)


def current(hub: FleetConnection, name: str, device: str | None = None) -> dict[str, Any] | None:
    """The retained document for `name` (or the device's override), as the broker holds it."""
    if device is not None:
        raw = hub.snapshot.overrides.get(device)
        return raw if raw is not None and raw.get("name") == name else None
    return hub.snapshot.documents.get(name)


async def publish(hub: FleetConnection, workspace: Workspace, data: Mapping[str, Any]) -> DeploymentDocument:
    """Validate, sign with the workspace key and publish retained; the signed document is returned."""
    document = validate({k: v for k, v in data.items() if k != "signature"})
    if any((m.settings.model_extra or {}).get("auth") for m in document.content.modules.values()):
        # Keys first: an agent never starts an auth module before its sealed keys arrived.
        await _service_keys.ensure(hub, workspace, document.name)
    signed = sign_document(document, load_signing_key(workspace.signing_key_path))
    payload = json.dumps(signed.to_json_dict(), separators=(",", ":")).encode()
    await hub.publish(topic_for(hub, signed.name, signed.device), payload, retain=True)
    return signed


def republished(raw: Mapping[str, Any], version: int, **changes: Any) -> dict[str, Any]:
    """A copy of a retained document as a new version: fresh timestamp, old signature dropped."""
    data = {k: v for k, v in raw.items() if k != "signature"}
    data.update(changes, version=version, createdAt=now().isoformat().replace("+00:00", "Z"))
    return data


async def create(
    hub: FleetConnection,
    workspace: Workspace,
    name: str,
    modules: Sequence[str | Module],
    settings: DeploymentSettings,
    *,
    version: int = 1,
) -> DeploymentDocument:
    check_name(name, "deployment")
    if current(hub, name, settings.device) is not None:
        raise DeploymentExistsError(
            f"deployment {name!r} already exists; use `modelfleet deploy update` for a new version"
        )
    packages = await resolve_modules(workspace, modules)
    section = manifest_modules(packages, settings)
    return await publish(hub, workspace, document_data(workspace, name, version, section, settings))


async def update(
    hub: FleetConnection,
    workspace: Workspace,
    name: str,
    modules: Sequence[str | Module] | None = None,
    *,
    device: str | None = None,
    **changes: Any,
) -> tuple[DeploymentDocument, dict[str, Any]]:
    """Publish version + 1 of a deployment; returns it and the document it replaces.

    `changes` are `DeploymentSettings` fields; those not given keep the current document's values.
    A document with a rollout policy starts its rollout again from the first step.
    """
    previous = current(hub, name, device)
    if previous is None:
        raise NotFoundError(f"deployment {name!r} does not exist; create it with `modelfleet deploy create`")
    unknown = set(changes) - set(DeploymentSettings.model_fields)
    if unknown:
        raise ConfigError(f"unknown deployment setting(s): {', '.join(sorted(unknown))}")
    old = validate({k: v for k, v in previous.items() if k != "signature"})
    settings = _settings_of(old).model_copy(update={k: v for k, v in changes.items() if v is not None})
    settings = DeploymentSettings.model_validate(settings.model_dump())
    if modules:
        packages = await resolve_modules(workspace, modules)
        section = manifest_modules(packages, settings)
    else:
        section = {
            module_name: module.model_dump(by_alias=True, exclude_unset=True, mode="json")
            for module_name, module in old.content.modules.items()
        }
        for module in section.values():
            module["restartPolicy"] = settings.restart_policy
            if settings.env:
                module["env"] = {k: {"value": v} for k, v in sorted(settings.env.items())}
    data = document_data(workspace, name, old.version + 1, section, settings)
    # What the manifest carries besides the modules (routes, twins, a runtime) stays as it was.
    content = old.content.to_json_dict()
    content["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"] = section
    data["content"] = content
    return await publish(hub, workspace, data), previous


def _settings_of(doc: DeploymentDocument) -> DeploymentSettings:
    """The settings a document was made with, so an update changes only what it is told to."""
    first = next(iter(doc.content.modules.values()), None)
    env = {k: str(v.value) for k, v in (first.env or {}).items()} if first else {}
    extra = (first.settings.model_extra or {}) if first else {}
    rollout = doc.rollout
    return DeploymentSettings(
        target=doc.target_condition,
        priority=doc.priority,
        env=env,
        restart_policy=(first.restart_policy if first and first.restart_policy else DEFAULT_RESTART_POLICY),
        port=getattr(first.settings, "port", DEFAULT_PORT) if first else DEFAULT_PORT,
        auth=bool(extra.get("auth")),
        rollout=rollout.steps if rollout else None,
        min_healthy_seconds=rollout.min_healthy_seconds if rollout else DEFAULT_MIN_HEALTHY_SECONDS,
        max_failure_ratio=rollout.max_failure_ratio if rollout else DEFAULT_MAX_FAILURE_RATIO,
        device=doc.device,
        layered=doc.layered,
    )


async def delete(
    hub: FleetConnection, name: str, *, device: str | None = None, workspace: Workspace | None = None
) -> dict[str, Any]:
    """Clear the retained document (and the devices' sealed keys); returns what was deleted."""
    previous = current(hub, name, device)
    if previous is None:
        raise NotFoundError(f"deployment {name!r} does not exist")
    await hub.publish(topic_for(hub, name, device), b"", retain=True)
    if workspace is not None and device is None:
        await _service_keys.withdraw(hub, workspace, name)
    return previous


def documents(hub: FleetConnection) -> list[DeploymentDocument]:
    """Every deployment and override the broker holds, parsed; odd documents are skipped."""
    out = []
    for raw in [*hub.snapshot.documents.values(), *hub.snapshot.overrides.values()]:
        try:
            out.append(DeploymentDocument.model_validate(raw))
        except ValidationError:
            continue
    return sorted(out, key=lambda d: (d.name, d.device or ""))
