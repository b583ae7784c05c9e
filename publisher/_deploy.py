"""Deployments: build the signed document, publish it retained, read it back, version it.

`update` builds on what the broker holds on `deployments/<name>`, and only once it has verified
it as this workspace's own (`publisher._trust`): a forged document is never signed over. Versions
come from verified data only: the verified retained document or tombstone, and the workspace's
own record of what it published (`publisher._published`), so two workstations sharing the key need
no shared state beyond the broker, and a broker that lost its retained messages cannot make the
publisher reuse a version agents already saw. A per-device override is the same document with
`device` set, on `devices/<id>/desired`. Deleting publishes a signed tombstone in the document's
place; agents then remove the deployment's modules (an empty payload would prove nothing).
"""

from __future__ import annotations

import copy
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
    DeploymentFile,
    ManifestError,
    RestartPolicy,
    Tombstone,
    from_iotedge,
    parse_manifest_file,
    sign_document,
    to_iotedge,
)
from modules.deployment.registry_secrets import SEALED_PLACEHOLDER, take_registry_credentials
from modules.signing import load_signing_key
from modules.spec import MODULE_REPOSITORY_PREFIX
from publisher import _published, _service_keys
from publisher._hub import FleetConnection, Retained, now
from publisher._module import Module
from publisher._trust import (
    Slot,
    UnverifiedDocumentError,
    deployment_slot,
    judge,
    unverified_documents,
    verified_documents,
)
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


def current(hub: FleetConnection, name: str, device: str | None = None) -> DeploymentDocument | None:
    """The live document `name` (or the device's override), verified as this workspace's own;
    None when there is none or it was deleted, `UnverifiedDocumentError` when what is there is not."""
    slot = deployment_slot(hub, name, device)
    slot.refuse_unverified()
    return slot.document if isinstance(slot.document, DeploymentDocument) else None


def _check_version(slot: Slot, workspace: Workspace, version: int) -> None:
    floor = slot.floor(workspace)
    if version <= floor:
        raise ConfigError(
            f"version {version} of {slot.identity!r} is not above {floor}, the last version published "
            f"(agents refuse it); use a version above {floor}, or leave it out"
        )


async def publish(
    hub: FleetConnection,
    workspace: Workspace,
    data: Mapping[str, Any],
    *,
    replace_unverified: bool = False,
) -> DeploymentDocument:
    """Validate, sign with the workspace key and publish retained; the signed document is returned.

    The last gate before anything is signed: nothing is published over a retained document that
    does not verify (unless `replace_unverified`), nor at a version that is not above every
    verified version of the same identity, the workspace's own record included.
    """
    clean = copy.deepcopy({k: v for k, v in data.items() if k != "signature"})
    # Registry passwords never go out in a retained document: sealed to each device with the keys.
    registry = take_registry_credentials(clean)
    document = validate(clean)
    slot = deployment_slot(hub, document.name, document.device)
    if not replace_unverified:
        slot.refuse_unverified(hint=_UNVERIFIED_HINT)
    _check_version(slot, workspace, document.version)
    auth = any((m.settings.model_extra or {}).get("auth") for m in document.content.modules.values())
    if auth or registry or _sealed_credentials(clean):
        # Keys first: an agent never starts an auth module (nor pulls from a private registry)
        # before its sealed keys arrived.
        await _service_keys.ensure(hub, workspace, document.name, [document], registry=registry)
    signed = sign_document(document, load_signing_key(workspace.signing_key_path))
    payload = json.dumps(signed.to_json_dict(), separators=(",", ":")).encode()
    _published.record(workspace, slot.identity, signed.version)
    await hub.publish(slot.topic, payload, retain=True)
    return signed


def _sealed_credentials(data: Mapping[str, Any]) -> bool:
    """Whether the document names registry credentials sealed earlier (a later version of it)."""
    return SEALED_PLACEHOLDER in json.dumps(data.get("content") or {})


_UNVERIFIED_HINT = (
    "Only documents signed by this workspace's key are built on; inspect it with `modelfleet deploy "
    "show`, then replace it with `modelfleet deploy create --replace-unverified` (a fresh document, "
    "nothing taken from the unverified one)"
)


def republished(doc: DeploymentDocument, version: int, **changes: Any) -> dict[str, Any]:
    """A copy of a verified document as a new version: fresh timestamp, old signature dropped."""
    data = {k: v for k, v in doc.to_json_dict().items() if k != "signature"}
    data.update(changes, version=version, createdAt=now().isoformat().replace("+00:00", "Z"))
    return data


def next_version(hub: FleetConnection, workspace: Workspace, name: str, device: str | None = None) -> int:
    """One above every verified version of the identity: broker (document or tombstone) and workspace."""
    return deployment_slot(hub, name, device).floor(workspace) + 1


def verified(
    doc: DeploymentDocument | Mapping[str, Any], workspace: Workspace, topic: str
) -> DeploymentDocument:
    """`doc` (a document read back earlier, e.g. the one a rollout would restore) re-checked: signed
    by this workspace's key, well-formed and for this fleet; `UnverifiedDocumentError` otherwise."""
    raw = doc.to_json_dict() if isinstance(doc, DeploymentDocument) else dict(doc)
    name = raw.get("name") if isinstance(raw.get("name"), str) else None
    device = raw.get("device") if isinstance(raw.get("device"), str) else None
    parsed, problem = judge(Retained(topic, raw), workspace, name=name, device=device)
    if problem is not None or not isinstance(parsed, DeploymentDocument):
        raise UnverifiedDocumentError(topic, name, problem or "a deletion, not a document")
    return parsed


async def create(
    hub: FleetConnection,
    workspace: Workspace,
    name: str,
    modules: Sequence[str | Module],
    settings: DeploymentSettings,
    *,
    version: int | None = None,
    replace_unverified: bool = False,
) -> DeploymentDocument:
    """Publish a new deployment: version 1, or one above a deleted one of the same name.

    `replace_unverified` publishes over a retained document that does not verify (a forgery, or a
    document of another signing key); nothing is taken from it, not even its version.
    """
    check_name(name, "deployment")
    slot = deployment_slot(hub, name, settings.device)
    if not replace_unverified:
        slot.refuse_unverified(hint=_UNVERIFIED_HINT)
    if slot.document is not None:
        raise DeploymentExistsError(
            f"deployment {name!r} already exists; use `modelfleet deploy update` for a new version"
        )
    number = slot.floor(workspace) + 1 if version is None else version
    _check_version(slot, workspace, number)
    packages = await resolve_modules(workspace, modules)
    section = manifest_modules(packages, settings)
    data = document_data(workspace, name, number, section, settings)
    return await publish(hub, workspace, data, replace_unverified=replace_unverified)


async def update(
    hub: FleetConnection,
    workspace: Workspace,
    name: str,
    modules: Sequence[str | Module] | None = None,
    *,
    device: str | None = None,
    **changes: Any,
) -> tuple[DeploymentDocument, DeploymentDocument]:
    """Publish the next version of a deployment; returns it and the (verified) document it replaces.

    `changes` are `DeploymentSettings` fields; those not given keep the current document's values.
    A document with a rollout policy starts its rollout again from the first step. The current
    document must verify: its content and version are what the new one is built from.
    """
    slot = deployment_slot(hub, name, device)
    slot.refuse_unverified(hint=_UNVERIFIED_HINT)
    old = slot.document
    if not isinstance(old, DeploymentDocument):
        deleted = f" (deleted at version {slot.tombstone.version})" if slot.tombstone else ""
        raise NotFoundError(
            f"deployment {name!r} does not exist{deleted}; create it with `modelfleet deploy create`"
        )
    unknown = set(changes) - set(DeploymentSettings.model_fields)
    if unknown:
        raise ConfigError(f"unknown deployment setting(s): {', '.join(sorted(unknown))}")
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
    data = document_data(workspace, name, slot.floor(workspace) + 1, section, settings)
    # What the manifest carries besides the modules (routes, twins, a runtime) stays as it was.
    content = old.content.to_json_dict()
    content["modulesContent"]["$edgeAgent"]["properties.desired"]["modules"] = section
    data["content"] = content
    return await publish(hub, workspace, data), old


def _settings_of(doc: DeploymentDocument) -> DeploymentSettings:
    """The settings a document was made with, so an update changes only what it is told to."""
    first = next(iter(doc.content.modules.values()), None)
    env = first.environment() if first else {}
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
    hub: FleetConnection,
    name: str,
    *,
    device: str | None = None,
    workspace: Workspace | None = None,
    replace_unverified: bool = False,
) -> Tombstone:
    """Delete with a signed tombstone in the document's place (agents ignore a cleared topic), one
    version above the last; the fleet-wide delete also withdraws the devices' sealed keys.

    Returns the tombstone. A deployment of the same name created later continues above it.
    """
    workspace = workspace or hub.workspace
    slot = deployment_slot(hub, name, device)
    if not replace_unverified:
        slot.refuse_unverified(
            hint="Delete it anyway (a tombstone above the last version this workspace knows) with "
            "`modelfleet deploy delete --replace-unverified`"
        )
    if slot.document is None and slot.problem is None:
        deleted = f" (deleted at version {slot.tombstone.version})" if slot.tombstone else ""
        raise NotFoundError(f"deployment {name!r} does not exist{deleted}")
    tombstone = Tombstone(
        of="deployment",
        fleet=workspace.fleet,
        name=name,
        device=device,
        version=slot.floor(workspace) + 1,
        deleted_at=now().replace(microsecond=0),
    )
    signed = sign_document(tombstone, load_signing_key(workspace.signing_key_path))
    _published.record(workspace, slot.identity, signed.version)
    await hub.publish(
        slot.topic, json.dumps(signed.to_json_dict(), separators=(",", ":")).encode(), retain=True
    )
    if device is None:
        await _service_keys.withdraw(hub, workspace, name)
    return signed


def documents(hub: FleetConnection) -> list[DeploymentDocument]:
    """Every deployment and override the broker holds that verifies as this workspace's."""
    return verified_documents(hub)


def unverified(hub: FleetConnection) -> list[dict[str, Any]]:
    """Every retained document that does not verify: topic, name, device, reason (for `status`)."""
    return unverified_documents(hub)


async def import_manifest(
    hub: FleetConnection,
    workspace: Workspace,
    name: str,
    data: Any,
    *,
    layered: bool = False,
    target: str | None = None,
    priority: int | None = None,
    device: str | None = None,
    replace_unverified: bool = False,
) -> DeploymentDocument:
    """Sign and publish an IoT Edge manifest (bare, or as `az iot edge deployment` files wrap it)
    as the deployment `name`: the first version, or the next one above what the broker holds.

    The manifest is published as written (a module exported by `export_iotedge` becomes the
    modelfleet module it was). Target condition and priority come from the options, else from
    the file (`az iot edge deployment show` output has both), else from the deployment being
    replaced, else `*` and 0. A layered manifest (dot-path keys) needs `layered`, as it does for
    `az iot edge deployment create --layered`.
    """
    check_name(name, "deployment")
    try:
        parsed = parse_manifest_file(data)
    except ManifestError as exc:
        raise ConfigError(f"not an IoT Edge manifest: {exc}") from None
    wrapper = parsed if isinstance(parsed, DeploymentFile) else None
    manifest = from_iotedge(parsed.manifest if wrapper else parsed)  # type: ignore[union-attr]
    if not layered and (problem := manifest.base_problem()) is not None:
        raise ConfigError(f"{problem} (pass --layered for a layered deployment)")
    slot = deployment_slot(hub, name, device)
    if not replace_unverified:
        slot.refuse_unverified(hint=_UNVERIFIED_HINT)
    old = slot.document if isinstance(slot.document, DeploymentDocument) else None
    data_out: dict[str, Any] = {
        "fleet": workspace.fleet,
        "name": name,
        "version": slot.floor(workspace) + 1,
        "targetCondition": _first(
            target, wrapper and wrapper.target_condition, old and old.target_condition, "*"
        ),
        "priority": _first(priority, wrapper and wrapper.priority, old and old.priority, 0),
        "layered": layered,
        "content": manifest.to_json_dict(),
        "createdAt": now().isoformat().replace("+00:00", "Z"),
    }
    if device is not None:
        data_out["device"] = device
    return await publish(hub, workspace, data_out, replace_unverified=replace_unverified)


def _first(*values: Any) -> Any:
    return next(value for value in values if value is not None and value is not False)


def export_iotedge(doc: DeploymentDocument, workspace: Workspace) -> dict[str, Any]:
    """The deployment's manifest as IoT Hub's edge deployment content (`modules/deployment/_iotedge.py`
    says how modelfleet modules are written); images name this workspace's registry."""
    registry = re.sub(r"^[a-z]+://", "", workspace.registry_url).rstrip("/")
    return to_iotedge(doc.content, layered=doc.layered, registry=registry)
