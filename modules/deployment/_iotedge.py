"""IoT Edge manifests in and out: the file shapes Azure's tools write, and the mapping of
modelfleet's own module type to a manifest IoT Hub accepts.

In: a deployment manifest is either bare (`{"modulesContent": ...}`, what `az iot edge
set-modules`, iotedgedev and VS Code write) or wrapped as `az iot edge deployment create
--content` and `az iot edge deployment show` write it (`{"content": {"modulesContent": ...},
"metrics": ..., "targetCondition": ..., "priority": ...}`, often with a `$schema`). Both parse and
round-trip exactly (`parse_manifest_file`).

Out (`to_iotedge`): IoT Hub's edge deployment content wants `docker` everywhere: runtime, system
modules, modules. A `modelfleet` module has no container image (its artifact is an OCI artifact
of its own type), so it is exported as a `docker` module whose image is the artifact's reference
by digest and whose own settings travel beside it under `settings.modelfleet`, where IoT Edge
ignores them and `from_iotedge` finds them again: an exported deployment imports back to the same
modules. A real IoT Edge device cannot run such a module; a `docker` module is exported as it is.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from pydantic import Field, ValidationError, model_validator

from modules.deployment._manifest import (
    _CHUNK_KEY,
    AGENT_TWIN,
    DESIRED,
    HUB_TWIN,
    Manifest,
    _Open,
    describe,
    desired_path,
    split_create_options,
)

SEALED_PLACEHOLDER = "$modelfleet-sealed"
"""What a published document holds where its manifest had a registry username or password (they
are sealed to each device, `registry_secrets`); an export writes IoT Edge's template variables."""

MODELFLEET_SETTINGS_KEY = "modelfleet"
"""Where an exported modelfleet module keeps its own settings inside a docker module's settings."""
DEFAULT_EDGE_AGENT_IMAGE = "mcr.microsoft.com/azureiotedge-agent:1.5"
DEFAULT_EDGE_HUB_IMAGE = "mcr.microsoft.com/azureiotedge-hub:1.5"
_HUB_PORTS = {
    "HostConfig": {
        "PortBindings": {p: [{"HostPort": p.split("/")[0]}] for p in ("5671/tcp", "8883/tcp", "443/tcp")}
    }
}


class ManifestError(ValueError):
    """A file that is not an IoT Edge manifest; the message names the path in the file."""


class DeploymentFile(_Open):
    """`az iot edge deployment create --content` / `deployment show`: the manifest under `content`,
    with the hub's own fields (metrics, labels, target condition, priority) kept as they are."""

    schema_uri: str | None = Field(None, alias="$schema")
    id: str | None = None
    content: Manifest
    target_condition: str | None = Field(None, alias="targetCondition")
    priority: int | None = None
    labels: dict[str, str] | None = None
    metrics: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _content_is_a_manifest(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("content"), dict):
            inner = data["content"]
            if "modulesContent" not in inner and ("deviceContent" in inner or "moduleContent" in inner):
                raise ValueError("content holds a device or module configuration, not an edge deployment")
        return data

    @property
    def manifest(self) -> Manifest:
        return self.content

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_unset=True, mode="json")


def parse_manifest_file(data: Any) -> Manifest | DeploymentFile:
    """A manifest file as Azure's tools write it, bare or wrapped; `ManifestError` says where it
    is wrong, with the path in the file (`content.modulesContent.$edgeAgent[...]...`)."""
    if not isinstance(data, dict):
        raise ManifestError("an IoT Edge manifest is a JSON object")
    wrapped = "content" in data and "modulesContent" not in data
    if not wrapped and "modulesContent" not in data:
        raise ManifestError("modulesContent: field required (neither a manifest nor a 'content' wrapper)")
    try:
        return DeploymentFile.model_validate(data) if wrapped else Manifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(describe(exc)) from None


def _is_module_path(key: str) -> bool:
    path = desired_path(key)
    return path is not None and len(path) == 2 and path[0] in ("modules", "systemModules")


def manifest_of(parsed: Manifest | DeploymentFile) -> Manifest:
    return parsed.manifest if isinstance(parsed, DeploymentFile) else parsed


# -- in ----------------------------------------------------------------------------------------


def _module_from_iotedge(module: dict[str, Any]) -> dict[str, Any]:
    settings = module.get("settings")
    if module.get("type") != "docker" or not isinstance(settings, dict):
        return module
    own = settings.get(MODELFLEET_SETTINGS_KEY)
    if not isinstance(own, dict):
        return module
    return {**module, "type": "modelfleet", "settings": copy.deepcopy(own)}


def from_iotedge(manifest: Manifest) -> Manifest:
    """The manifest a modelfleet document carries for an imported one: unchanged, except that a
    module exported by `to_iotedge` becomes the modelfleet module it was."""
    raw = manifest.to_json_dict()
    changed = False
    for key, section in raw["modulesContent"].get(AGENT_TWIN, {}).items():
        if key == DESIRED:
            for group in ("modules", "systemModules"):
                for name, module in (section.get(group) or {}).items():
                    restored = _module_from_iotedge(module)
                    changed |= restored is not module
                    section[group][name] = restored
        elif _is_module_path(key) and isinstance(section, dict):
            restored = _module_from_iotedge(section)
            changed |= restored is not section
            raw["modulesContent"][AGENT_TWIN][key] = restored
    return Manifest.model_validate(raw) if changed else manifest


# -- out ---------------------------------------------------------------------------------------


def _image(settings: dict[str, Any], registry: str | None) -> str:
    """A module built as an image (`settings.image`) exports as that image, which any IoT Edge
    device can run; otherwise the artifact's reference stands in for one."""
    if isinstance(settings.get("image"), str):
        return settings["image"]
    reference = f"{settings['module']}@{settings['digest']}"
    return f"{registry.rstrip('/')}/{reference}" if registry else reference


def _registry_host(image: str) -> str | None:
    first, sep, _ = image.partition("/")
    return first if sep and ("." in first or ":" in first or first == "localhost") else None


def credential_placeholders(key: str) -> dict[str, str]:
    """IoT Edge's template variables for one registry's login (iotedgedev and VS Code fill them
    from the environment): what an export writes instead of a secret."""
    suffix = re.sub(r"[^A-Z0-9]+", "_", key.upper()).strip("_")
    return {
        "username": f"$CONTAINER_REGISTRY_USERNAME_{suffix}",
        "password": f"$CONTAINER_REGISTRY_PASSWORD_{suffix}",
    }


def _credentials(desired: dict[str, Any], runtime_settings: dict[str, Any]) -> None:
    """Every registry login as placeholders, and one for each registry an image module names
    that has none: an export never holds a secret, and IoT Edge can still be told where to log in."""
    entries = runtime_settings.setdefault("registryCredentials", {})
    for key, entry in entries.items():
        if isinstance(entry, dict):
            for field, value in credential_placeholders(key).items():
                if entry.get(field) == SEALED_PLACEHOLDER:
                    entry[field] = value
    known = {
        str(e.get("address", "")).split("://")[-1].rstrip("/")
        for e in entries.values()
        if isinstance(e, dict)
    }
    for module in (desired.get("modules") or {}).values():
        own = (module.get("settings") or {}).get(MODELFLEET_SETTINGS_KEY) or {}
        host = _registry_host(own["image"]) if isinstance(own.get("image"), str) else None
        if host is None or host in known:
            continue
        key = re.sub(r"[^a-z0-9]+", "", host.lower()) or "registry"
        entries[key] = {"address": host, **credential_placeholders(key)}
        known.add(host)


def _docker_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """A docker module's settings as a deployed IoT Edge manifest has them: create options as a
    string, in chunks of 512 characters."""
    create = settings.get("createOptions")
    if create is None:
        return settings
    chunked = [key for key in settings if _CHUNK_KEY.match(key)]
    if isinstance(create, str) and (chunked or len(create) <= 512):
        return settings
    out = {key: value for key, value in settings.items() if key not in ("createOptions", *chunked)}
    position = list(settings).index("createOptions")
    items = list(out.items())
    return dict(items[:position] + list(split_create_options(create).items()) + items[position:])


def _module_to_iotedge(module: dict[str, Any], registry: str | None) -> dict[str, Any]:
    out = copy.deepcopy(module)
    if "env" in out:
        # IoT Edge needs a value for every variable; modelfleet's null means "not set": leave it out.
        out["env"] = {
            k: v for k, v in out["env"].items() if not (isinstance(v, dict) and v.get("value") is None)
        }
    if out.get("type") == "modelfleet":
        own = out["settings"]
        port = f"{own['port']}/tcp"
        create = copy.deepcopy(own.get("createOptions") or {})
        if isinstance(create, str):
            create = json.loads(create) if create.strip() else {}
        create.setdefault("ExposedPorts", {})[port] = {}
        create.setdefault("HostConfig", {}).setdefault("PortBindings", {})[port] = [
            {"HostPort": str(own["port"])}
        ]
        out["type"] = "docker"
        out["settings"] = {
            "image": _image(own, registry),
            **split_create_options(create),
            MODELFLEET_SETTINGS_KEY: own,
        }
    elif isinstance(out.get("settings"), dict):
        out["settings"] = _docker_settings(out["settings"])
    return out


def _system_modules() -> dict[str, Any]:
    return {
        "edgeAgent": {
            "type": "docker",
            "settings": {"image": DEFAULT_EDGE_AGENT_IMAGE, "createOptions": "{}"},
        },
        "edgeHub": {
            "type": "docker",
            "status": "running",
            "restartPolicy": "always",
            "settings": {"image": DEFAULT_EDGE_HUB_IMAGE, **split_create_options(_HUB_PORTS)},
        },
    }


def to_iotedge(manifest: Manifest, *, layered: bool = False, registry: str | None = None) -> dict[str, Any]:
    """The manifest as IoT Hub's edge deployment content (bare `{"modulesContent": ...}`).

    A base gets what IoT Edge requires and modelfleet does not: a docker runtime, the two system
    modules and `$edgeHub` with routes and store-and-forward settings. `registry` (host[:port],
    no scheme) prefixes a modelfleet module's image reference.
    """
    raw = manifest.to_json_dict()
    content = raw["modulesContent"]
    agent_section = content[AGENT_TWIN]
    for key in list(agent_section):
        if _is_module_path(key):
            agent_section[key] = _module_to_iotedge(agent_section[key], registry)
    desired = agent_section.get(DESIRED)
    if desired is not None:
        for group in ("modules", "systemModules"):
            if desired.get(group):
                desired[group] = {n: _module_to_iotedge(m, registry) for n, m in desired[group].items()}
        if not layered:
            runtime = desired.get("runtime") or {}
            if runtime.get("type") != "docker":
                desired["runtime"] = {
                    "type": "docker",
                    "settings": {
                        "minDockerVersion": "v1.25",
                        "loggingOptions": "",
                        "registryCredentials": copy.deepcopy(
                            (runtime.get("settings") or {}).get("registryCredentials") or {}
                        ),
                    },
                }
            else:
                runtime.setdefault("settings", {}).setdefault("minDockerVersion", "v1.25")
            _credentials(desired, desired["runtime"]["settings"])
            system = desired.setdefault("systemModules", {})
            for name, module in _system_modules().items():
                system.setdefault(name, module)
            desired.setdefault("modules", {})
    if not layered:
        hub = content.setdefault(HUB_TWIN, {}).setdefault(DESIRED, {"schemaVersion": "1.1"})
        hub.setdefault("routes", {})
        hub.setdefault("storeAndForwardConfiguration", {"timeToLiveSecs": 7200})
        # Keep $edgeAgent and $edgeHub first, as IoT Edge's own manifests have them.
        ordered = {AGENT_TWIN: content.pop(AGENT_TWIN), HUB_TWIN: content.pop(HUB_TWIN)}
        raw["modulesContent"] = {**ordered, **content}
    return raw
