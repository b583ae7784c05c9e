"""The Python deployment API, shaped like Azure ML v1's web services.

`Model.deploy(workspace, name, models, inference_config, deployment_config)` packages the models
with the entry script as a module and publishes a deployment of it; the `Service` it returns
watches, updates and deletes that deployment. Scripts written against Azure ML port with the
imports changed: `wait_for_deployment(show_output=True)`, `state`, `get_logs()`,
`update(models=[...])`, `delete()`, `scoring_uris`. A "service" here runs on many devices, so
`scoring_uris` and `get_logs()` answer per device.
"""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modules import ModelfleetError
from modules.deployment import DeploymentDocument
from modules.device_state import ReportedState
from modules.spec import HealthProbe, Resources, Scoring
from publisher import _deploy, _service_keys
from publisher._deploy import DeploymentSettings
from publisher._fleet import open_fleet
from publisher._hub import FleetConnection
from publisher._model import Model
from publisher._module import Module
from publisher._rollout import (
    STEP_TIMEOUT_S,
    UNSTAGED_MAX_FAILURE_RATIO,
    ProgressDisplay,
    RolloutResult,
    drive,
)
from publisher._status import deployment_summary, owned_modules
from publisher._workspace import Workspace

DeploymentConfig = DeploymentSettings  # Azure ML's name for the same idea


class DeploymentFailedError(ModelfleetError):
    """A rollout was aborted (and the previous version restored), or did not become healthy."""

    def __init__(self, result: RolloutResult) -> None:
        super().__init__(result.summary)
        self.result = result


@dataclass
class InferenceConfig:
    """How the models are served: the entry script and its environment (Azure ML's InferenceConfig).

    No entry script means the zero-code handler, which serves a single ONNX model as it is.
    """

    entry_script: str | Path | None = None
    source_directory: str | Path | None = None
    requirements: str | Path | None = None
    conda_file: str | Path | None = None
    sample_input: str | Path | None = None
    providers: Sequence[str] | None = None


ADDRESS_TAG = "address"
"""The device tag scoring URIs take their host from: agents do not report an address, and a
device id is rarely a resolvable host name."""


@dataclass
class PackageOptions:
    """What a deployment configuration says about the module itself, enforced by the agent from the
    module spec: Azure ML's cpu/memory/GPU cores, scoring timeout and probe settings land here."""

    resources: Resources | None = None
    scoring: Scoring | None = None
    health_probe: HealthProbe | None = None
    description: str | None = None
    notes: list[str] = field(default_factory=list)


async def _package(
    workspace: Workspace,
    name: str,
    models: Sequence[str | Model],
    config: InferenceConfig,
    options: PackageOptions | None = None,
) -> Module:
    options = options or PackageOptions()
    return await Module.package_async(
        workspace,
        name,
        models,
        entry_script=config.entry_script,
        source_dir=config.source_directory,
        requirements=config.requirements,
        conda_file=config.conda_file,
        sample_input=config.sample_input,
        providers=config.providers,  # type: ignore[arg-type]
        description=options.description or getattr(config, "description", None),
        resources=options.resources,
        scoring=options.scoring,
        health_probe=options.health_probe,
    )


def scoring_uri_of(report: ReportedState, port: int, hosts: Mapping[str, str]) -> str:
    """`hosts` first (set in Python), then the device's `address` tag, then its id."""
    host = hosts.get(report.device_id) or str(report.tags.get(ADDRESS_TAG) or report.device_id)
    return f"http://{host}:{port}/score"


class Service:
    """One deployment, seen from Python. `Service(ws, name)` attaches to an existing one."""

    def __init__(self, workspace: Workspace, name: str, *, device: str | None = None) -> None:
        self.workspace = workspace
        self.name = name
        self.device = device
        self.inference_config: InferenceConfig | None = None
        self.hosts: dict[str, str] = {}  # device id -> address, where the id is not a resolvable host name
        self._previous: DeploymentDocument | None = None  # verified; what an aborted rollout restores
        self._document: DeploymentDocument | None = None
        self.refresh()

    # -- reading ------------------------------------------------------------------------------

    def refresh(self) -> None:
        asyncio.run(self._refresh())

    async def _refresh(self) -> None:
        async with open_fleet(self.workspace) as hub:
            self._read(hub)

    def _read(self, hub: FleetConnection) -> None:
        document = _deploy.current(hub, self.name, self.device)  # refuses one that does not verify
        if document is None:
            raise ModelfleetError(f"deployment {self.name!r} does not exist")
        self._document = document
        self._summary = deployment_summary(self._document, hub.snapshot)
        self._reports = dict(hub.snapshot.reports)

    @property
    def document(self) -> DeploymentDocument:
        assert self._document is not None
        return self._document

    @property
    def version(self) -> int:
        return self.document.version

    @property
    def state(self) -> str:
        """`Healthy`, `Unhealthy`, `Transitioning`, `Failed` or `NoDevices`, as of now (it re-reads
        the fleet). `Unhealthy`: a module of it runs but fails its health probe, or is in backoff
        between restarts, on some device; `Failed` wins over it (the version did not apply)."""
        self.refresh()
        s = self._summary
        if s["failed"]:
            return "Failed"
        if not s["targeted"]:
            return "NoDevices"
        if any(
            m.health == "unhealthy" or m.status in ("unhealthy", "backoff")
            for report in self._reports.values()
            for m in owned_modules(report, self.name)
        ):
            return "Unhealthy"
        if s["healthy"] + s["offline"] == s["targeted"] and s["healthy"]:
            return "Healthy"
        return "Transitioning"

    def status(self) -> dict[str, Any]:
        """Targeted, applied, healthy, failed and offline device counts for the current version."""
        self.refresh()
        return dict(self._summary)

    @property
    def scoring_uris(self) -> dict[str, str]:
        """Device id -> its scoring URL, for every device running this deployment's first module.

        The host is `hosts[device_id]` if set, else the device's `address` tag, else its id."""
        self.refresh()
        uris = {}
        first = next(iter(self.document.content.modules), None)
        for device_id, report in sorted(self._reports.items()):
            for module in owned_modules(report, self.name):
                if module.name == first and module.port and module.status == "running":
                    uris[device_id] = scoring_uri_of(report, module.port, self.hosts)
        return uris

    @property
    def scoring_uri(self) -> str | None:
        """Azure ML's single URI: the first device's (by id) of `scoring_uris`; None if none runs it."""
        return next(iter(self.scoring_uris.values()), None)

    @property
    def swagger_uri(self) -> str | None:
        uri = self.scoring_uri
        return None if uri is None else uri.removesuffix("/score") + "/swagger.json"

    @property
    def auth_enabled(self) -> bool:
        """Whether the deployment's modules want a key (`Authorization: Bearer`)."""
        return any(
            bool((m.settings.model_extra or {}).get("auth")) for m in self.document.content.modules.values()
        )

    def run(self, input_data: Any, *, timeout: float = 60) -> Any:
        """POST `input_data` (JSON text, or anything JSON-serializable) to `scoring_uri` with the
        primary key when auth is on, and return the decoded answer, as Azure ML's `service.run`."""
        uri = self.scoring_uri
        if uri is None:
            raise ModelfleetError(f"deployment {self.name!r} runs on no device yet")
        return post_json(uri, input_data, self.get_keys()[0] if self.auth_enabled else None, timeout)

    def get_logs(self, tail: int = 100, *, device_id: str | None = None) -> dict[str, dict[str, list[str]]]:
        """Device id -> module -> its last `tail` log lines, over the getLogs direct method."""
        return asyncio.run(self._get_logs(tail, device_id))

    async def _get_logs(self, tail: int, device_id: str | None) -> dict[str, dict[str, list[str]]]:
        out: dict[str, dict[str, list[str]]] = {}
        async with open_fleet(self.workspace) as hub:
            self._read(hub)
            for device, report in sorted(hub.snapshot.reports.items()):
                if (device_id is not None and device != device_id) or not hub.snapshot.online(device):
                    continue
                for module in owned_modules(report, self.name):
                    answer = await hub.call(device, "getLogs", {"module": module.name, "tail": tail})
                    if answer.status == 200:
                        out.setdefault(device, {})[module.name] = list(answer.payload.get("lines", []))
        return out

    # -- changing -----------------------------------------------------------------------------

    def wait_for_deployment(
        self,
        show_output: bool = False,
        timeout_sec: float = STEP_TIMEOUT_S,
        *,
        max_failure_ratio: float = UNSTAGED_MAX_FAILURE_RATIO,
    ) -> RolloutResult:
        """Drive the current version through its rollout steps; raise if it is aborted."""
        return asyncio.run(self._wait(show_output, timeout_sec, max_failure_ratio))

    async def _wait(self, show_output: bool, timeout_sec: float, max_failure_ratio: float) -> RolloutResult:
        async with open_fleet(self.workspace) as hub:
            self._read(hub)
            display = ProgressDisplay(sys.stdout, enabled=show_output)
            result = await drive(
                hub,
                self.workspace,
                self.document,
                self._previous,
                step_timeout_s=timeout_sec,
                display=display,
                max_failure_ratio=max_failure_ratio,
            )
            await hub.sync()
            self._read(hub)
        if not result.ok:
            raise DeploymentFailedError(result)
        return result

    def update(
        self,
        models: Sequence[str | Model] | None = None,
        inference_config: InferenceConfig | None = None,
        **settings: Any,
    ) -> Service:
        """Publish a new version: new models are packaged as a new module version first.

        `settings` are `DeploymentConfig` fields (target, priority, env, rollout, ...); the rest
        stay as they are. Follow with `wait_for_deployment()` to drive a rollout.
        """
        asyncio.run(self._update(models, inference_config, settings))
        return self

    async def _update(
        self,
        models: Sequence[str | Model] | None,
        inference_config: InferenceConfig | None,
        settings: Mapping[str, Any],
    ) -> None:
        modules: list[str | Module] | None = None
        if models:
            modules = [await self._new_module(models, inference_config)]
        async with open_fleet(self.workspace) as hub:
            _, self._previous = await _deploy.update(
                hub, self.workspace, self.name, modules, device=self.device, **settings
            )
            await hub.sync()
            self._read(hub)

    async def _new_module(
        self, models: Sequence[str | Model], inference_config: InferenceConfig | None
    ) -> Module:
        """The deployed module again, with `models`: repackaged from the registry (same code layer,
        requirements, resources) unless a new inference configuration is given, so a service
        attached with `Service(ws, name)` updates as the one `Model.deploy` returned does."""
        modules = self.document.content.modules
        if len(modules) != 1:
            raise ModelfleetError("update(models=...) needs a deployment of exactly one module")
        [(name, entry)] = modules.items()
        digest = getattr(entry.settings, "digest", None)
        current = await Module.get_async(self.workspace, name)
        if digest is not None and current.digest != digest:
            current = await _module_by_digest(self.workspace, name, digest)
        if inference_config is None:
            return await Module.repackage_async(self.workspace, current, models)
        options = PackageOptions(
            resources=current.spec.resources,
            scoring=current.spec.scoring,
            health_probe=current.spec.health_probe,
        )
        module = await _package(self.workspace, name, models, inference_config, options)
        self.inference_config = inference_config
        return module

    def get_keys(self) -> tuple[str, str]:
        """(primary, secondary) scoring keys, as Azure ML's `service.get_keys()`."""
        stored = _service_keys.load(self.workspace, self.name)
        if stored is None:
            raise ModelfleetError(f"deployment {self.name!r} has no keys: deploy it with auth enabled")
        return stored.primary, stored.secondary

    def regen_key(self, key: str, set_key: str | None = None) -> None:
        """Replace the 'Primary' or 'Secondary' key (any case, as Azure ML) on every device; the
        other keeps working. Azure's `set_key` (a key of your choosing) is refused: keys are
        generated here, so none is ever typed into a notebook."""
        if set_key is not None:
            raise ModelfleetError("regen_key(set_key=...) is not supported: keys are generated")
        if not isinstance(key, str) or key.lower() not in ("primary", "secondary"):
            raise ModelfleetError("key must be 'Primary' or 'Secondary'")
        asyncio.run(self._regen(key.lower()))

    async def _regen(self, key: str) -> None:
        async with open_fleet(self.workspace) as hub:
            await _service_keys.regenerate(hub, self.workspace, self.name, key)  # type: ignore[arg-type]

    def delete(self) -> None:
        """Remove the deployment: every device stops and removes its modules."""
        asyncio.run(self._delete())

    async def _delete(self) -> None:
        async with open_fleet(self.workspace) as hub:
            await _deploy.delete(hub, self.name, device=self.device, workspace=self.workspace)

    def __repr__(self) -> str:
        version = self._document.version if self._document else None
        return f"Service(name={self.name!r}, version={version})"


async def _module_by_digest(workspace: Workspace, name: str, digest: str) -> Module:
    """The version of module `name` the deployment pins (it may not be the newest one)."""
    for module in await Module.list_async(workspace, name):
        if module.digest == digest:
            return module
    raise ModelfleetError(f"module {name} with digest {digest} is no longer in the registry")


def post_json(uri: str, input_data: Any, key: str | None, timeout: float) -> Any:
    body = input_data if isinstance(input_data, str | bytes) else json.dumps(input_data)
    data = body.encode() if isinstance(body, str) else body
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(uri, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:500].decode("utf-8", errors="replace")
        raise ModelfleetError(f"{uri} answered {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ModelfleetError(f"{uri} did not answer: {getattr(exc, 'reason', exc)}") from None


def deploy(
    workspace: Workspace,
    name: str,
    models: Sequence[str | Model],
    inference_config: InferenceConfig | None = None,
    deployment_config: DeploymentConfig | Mapping[str, Any] | None = None,
    deployment_target: str | None = None,
    overwrite: bool = False,
    show_output: bool = False,
    *,
    package_options: PackageOptions | None = None,
    service_class: type[Service] | None = None,
) -> Service:
    """Package `models` as module `name` and deploy it as deployment `name` (Azure ML's Model.deploy,
    with its parameter order: the 6th is `deployment_target`, never `overwrite`).

    `deployment_target` is a target condition over device tags (Azure's compute target is where
    the service runs; here that is the devices it selects); it overrides the config's `target`.
    With `overwrite`, an existing deployment of that name gets a new version instead of an error.
    """
    config = inference_config or InferenceConfig()
    if isinstance(deployment_config, DeploymentSettings):
        settings = deployment_config
    else:
        settings = DeploymentSettings.model_validate(dict(deployment_config or {}))
    if deployment_target is not None:
        if not isinstance(deployment_target, str):
            raise ModelfleetError(
                "deployment_target is a target condition over device tags here, e.g. \"tags.site = 'a'\""
            )
        settings = settings.model_copy(update={"target": deployment_target})

    async def run() -> DeploymentDocument | None:
        module = await _package(workspace, name, models, config, package_options)
        if show_output:
            print(f"packaged module {module.id} ({module.digest[:19]})")
        async with open_fleet(workspace) as hub:
            if overwrite and _deploy.current(hub, name, settings.device) is not None:
                changes = settings.model_dump(exclude_unset=True)
                changes.pop("device", None)
                _, previous = await _deploy.update(
                    hub, workspace, name, [module], device=settings.device, **changes
                )
                return previous
            await _deploy.create(hub, workspace, name, [module], settings)
            await hub.sync()
        return None

    previous = asyncio.run(run())
    service = (service_class or Service)(workspace, name, device=settings.device)
    service.inference_config = config
    service._previous = previous
    return service


def _model_deploy(
    workspace: Workspace,
    name: str,
    models: Sequence[str | Model],
    inference_config: InferenceConfig | None = None,
    deployment_config: DeploymentConfig | Mapping[str, Any] | None = None,
    deployment_target: str | None = None,
    overwrite: bool = False,
    show_output: bool = False,
) -> Service:
    return deploy(
        workspace,
        name,
        models,
        inference_config,
        deployment_config,
        deployment_target,
        overwrite,
        show_output,
    )


# `Model.deploy` is Azure ML's entry point; it is attached here so that the model registry code
# does not depend on the control plane (importing `publisher` always runs this module).
Model.deploy = staticmethod(_model_deploy)  # type: ignore[attr-defined]
