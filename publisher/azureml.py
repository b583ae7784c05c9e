"""Azure ML v1's deployment names and signatures, so a notebook ports by changing its imports.

    from azureml.core import Workspace, Model, Environment        ->  from publisher.azureml import (
    from azureml.core.model import InferenceConfig                      Workspace, Model, Environment,
    from azureml.core.webservice import (                               InferenceConfig, Webservice,
        Webservice, LocalWebservice, AciWebservice, AksWebservice)      LocalWebservice, AciWebservice,
                                                                        AksWebservice)

What each name means here (docs/azureml.md has the whole table):

- `LocalWebservice.deploy_configuration(port=...)`: a service on this workstation, the published
  module served by the local scoring host as `modelfleet serve --module` runs it.
- `AciWebservice` / `AksWebservice.deploy_configuration(...)`: a fleet deployment. CPU, memory and
  GPU cores become the module's resources (enforced by the agent), `auth_enabled` key auth
  (keys sealed to enrolled devices only), AKS's scoring timeout and probe settings the module's.
  What has no meaning on a device (regions, DNS labels, autoscaling, replicas, App Insights, ...)
  is accepted with a one-line note on stderr, never dropped silently; what would weaken a promise
  the configuration makes (`ssl_enabled=True`: devices serve plain HTTP) is refused.
- `Webservice(workspace, name)`: the local service of that name if there is one, else the fleet
  deployment.

Extra keywords of `deploy_configuration` are modelfleet's deployment settings (`target`, `port`,
`priority`, `rollout`, ...), for what Azure expresses with a compute target.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from modules import ModelfleetError
from modules.spec import HealthProbe, Resources, Scoring
from publisher import _local_service as _local
from publisher import _service
from publisher._deploy import DeploymentSettings
from publisher._model import Model as _RegistryModel
from publisher._module import Module
from publisher._rollout import STEP_TIMEOUT_S, RolloutResult
from publisher._workspace import Workspace as _Workspace

log = logging.getLogger("modelfleet.azureml")

WebserviceException = ModelfleetError
"""Azure ML's error for a failed service call; every modelfleet error is one."""

LOCAL_READY_TIMEOUT_S = 300.0


def _note(notes: list[str], text: str) -> None:
    """One line on stderr (the logger's last-resort handler when logging is not configured, the
    usual case in a notebook) and kept on the object, so tests and callers can read it back."""
    log.warning("note: %s", text)
    notes.append(text)


# -- workspace and models -------------------------------------------------------------------------


class Workspace(_Workspace):
    """A modelfleet workspace (`modelfleet.toml`) under Azure ML's constructor names."""

    @classmethod
    def from_config(cls, path: str | Path | None = None, auth: Any = None, **_: Any) -> Workspace:
        """`modelfleet.toml` found as Azure finds `config.json`: the given file or folder, else the
        current folder and its parents. `auth` has no meaning (the registry and broker have their
        own credentials, from the environment)."""
        if path is not None and Path(path).is_dir():
            path = Path(path) / "modelfleet.toml"
        return cls.load(path)


class Model(_RegistryModel):
    """`publisher.Model` with Azure ML's `Model.deploy`, which also knows local services."""

    @staticmethod
    def deploy(  # type: ignore[override]
        workspace: _Workspace,
        name: str,
        models: Sequence[str | _RegistryModel],
        inference_config: _service.InferenceConfig | None = None,
        deployment_config: Any = None,
        deployment_target: str | None = None,
        overwrite: bool = False,
        show_output: bool = False,
    ) -> Webservice:
        """Package `models` with the inference configuration and deploy it as `deployment_config`
        says: on this workstation (`LocalWebservice`) or to the fleet (ACI, AKS, a modelfleet
        `DeploymentConfig`, or a mapping of its fields). `deployment_target` is a target condition
        over device tags (`"tags.site = 'a'"`), which is where a service runs here."""
        if isinstance(deployment_config, LocalWebserviceDeploymentConfiguration):
            if deployment_target is not None:
                raise WebserviceException("a local service runs on this machine: drop deployment_target")
            return LocalWebservice._deploy(
                workspace, name, models, inference_config, deployment_config, overwrite, show_output
            )
        if _local.load(workspace, name) is not None:
            raise WebserviceException(
                f"a local service named {name!r} exists: delete it first (Webservice(ws, {name!r}).delete())"
            )
        service_class: type[_service.Service] = FleetWebservice
        options: _service.PackageOptions | None = None
        settings: Any = deployment_config
        if isinstance(deployment_config, _FleetDeploymentConfiguration):
            service_class = deployment_config.service_class
            options = deployment_config.package_options()
            settings = deployment_config.settings
        environment = getattr(inference_config, "environment", None)
        if environment is not None and environment.environment_variables:
            settings = _with_env(settings, environment.environment_variables)
        service = _service.deploy(
            workspace,
            name,
            models,
            inference_config,
            settings,
            deployment_target,
            overwrite,
            show_output,
            package_options=options,
            service_class=service_class,
        )
        assert isinstance(service, Webservice)
        return service


def _with_env(settings: Any, variables: Mapping[str, str]) -> DeploymentSettings:
    if isinstance(settings, DeploymentSettings):
        base = settings
    else:
        base = DeploymentSettings.model_validate(dict(settings or {}))
    return base.model_copy(update={"env": {**{k: str(v) for k, v in variables.items()}, **base.env}})


# -- environments and inference configuration -----------------------------------------------------


class Environment:
    """The part of Azure ML's `Environment` a deployment uses: its pip (or conda pip) packages and
    its environment variables. Conda's own packages and Docker images have no meaning on a device,
    where modules run on the agent's Python (see `publisher._package`)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.conda_file: Path | None = None
        self.requirements_file: Path | None = None
        self.environment_variables: dict[str, str] = {}

    @staticmethod
    def from_conda_specification(name: str, file_path: str | Path) -> Environment:
        env = Environment(name)
        env.conda_file = Path(file_path)
        return env

    @staticmethod
    def from_pip_requirements(
        name: str, file_path: str | Path, pip_version: str | None = None
    ) -> Environment:
        env = Environment(name)
        env.requirements_file = Path(file_path)
        if pip_version is not None:
            log.warning(
                "note: Environment %s: pip_version is not carried over (the agent's pip is used)", name
            )
        return env

    @staticmethod
    def get(workspace: Any, name: str, version: str | None = None) -> Environment:
        raise WebserviceException(
            f"environment {name!r}: curated and registered Azure ML environments do not exist here; "
            "use Environment.from_conda_specification or Environment.from_pip_requirements"
        )

    def __repr__(self) -> str:
        source = self.conda_file or self.requirements_file
        return f"Environment(name={self.name!r}, from={str(source) if source else None!r})"


class InferenceConfig(_service.InferenceConfig):
    """Azure ML's `InferenceConfig`: entry script, source folder, and an environment given as a
    conda file or an `Environment`. Docker build settings are accepted with a note: modules run
    as processes of the device's agent (its Python, the packages the module lists)."""

    def __init__(
        self,
        entry_script: str | Path | None = None,
        runtime: str | None = None,
        conda_file: str | Path | None = None,
        extra_docker_file_steps: str | None = None,
        source_directory: str | Path | None = None,
        enable_gpu: bool | None = None,
        description: str | None = None,
        base_image: str | None = None,
        base_image_registry: Any = None,
        cuda_version: str | None = None,
        environment: Environment | None = None,
    ) -> None:
        if runtime is not None and runtime.lower() != "python":
            raise WebserviceException(f"runtime {runtime!r} is not supported: entry scripts are Python")
        if environment is not None and conda_file is not None:
            raise WebserviceException("give either conda_file or environment, not both (as Azure ML)")
        self.notes: list[str] = []
        docker = {
            "extra_docker_file_steps": extra_docker_file_steps,
            "base_image": base_image,
            "base_image_registry": base_image_registry,
            "cuda_version": cuda_version,
        }
        given = [key for key, value in docker.items() if value is not None]
        if given:
            _note(
                self.notes,
                f"InferenceConfig: {', '.join(given)} not carried over: modules run as processes on the "
                "device's Python, not in an image (list packages in the conda file)",
            )
        super().__init__(
            entry_script=entry_script,
            source_directory=source_directory,
            requirements=environment.requirements_file if environment else None,
            conda_file=conda_file
            if conda_file is not None
            else (environment.conda_file if environment else None),
            providers=["cuda", "cpu"] if enable_gpu else None,
        )
        self.runtime = runtime
        self.description = description
        self.environment = environment
        self.enable_gpu = enable_gpu


# -- deployment configurations --------------------------------------------------------------------


class LocalWebserviceDeploymentConfiguration:
    """A service on this workstation, on `port` (a free one when None, as in Azure ML)."""

    def __init__(self, port: int | None = None) -> None:
        if port is not None and not 1 <= int(port) <= 65535:
            raise WebserviceException(f"port {port} is not a TCP port")
        self.port = None if port is None else int(port)
        self.notes: list[str] = []


class _FleetDeploymentConfiguration:
    """An Azure target's configuration as a fleet deployment: `settings` (auth, port, target, ...)
    and what goes into the module spec (resources, scoring timeout, probe), plus the notes."""

    service_class: ClassVar[type[_service.Service]]
    kind: ClassVar[str]

    def __init__(self, fleet: Mapping[str, Any], auth: bool) -> None:
        self.notes: list[str] = []
        try:
            self.settings = DeploymentSettings.model_validate({**fleet, "auth": auth})
        except Exception as exc:
            raise WebserviceException(f"{self.kind}.deploy_configuration: {exc}") from None
        self.resources: Resources | None = None
        self.scoring: Scoring | None = None
        self.health_probe: HealthProbe | None = None
        self.description: str | None = None

    def _resources(
        self,
        cpu: float | None,
        cpu_limit: float | None,
        memory_gb: float | None,
        memory_limit: float | None,
        gpus: int | None = None,
    ) -> None:
        """One enforced value per resource: the limit when given, else the request."""
        cpus = cpu_limit if cpu_limit is not None else cpu
        memory = memory_limit if memory_limit is not None else memory_gb
        if cpu_limit is not None and cpu is not None:
            _note(
                self.notes,
                f"{self.kind}: cpu_cores {cpu:g} is a reservation; the device enforces cpu_cores_limit",
            )
        if memory_limit is not None and memory_gb is not None:
            _note(
                self.notes,
                f"{self.kind}: memory_gb {memory_gb:g} is a reservation; the device enforces memory_gb_limit",
            )
        if cpus is None and memory is None and not gpus:
            return
        self.resources = Resources(
            cpus=cpus,
            memory_mb=None if memory is None else math.ceil(memory * 1024),
            gpus=int(gpus or 0),
        )

    def _not_carried(self, given: Mapping[str, Any], why: str) -> None:
        names = [key for key, value in given.items() if value is not None and value is not False]
        if names:
            _note(self.notes, f"{self.kind}: {', '.join(names)} not carried over: {why}")

    def package_options(self) -> _service.PackageOptions:
        return _service.PackageOptions(
            resources=self.resources,
            scoring=self.scoring,
            health_probe=self.health_probe,
            description=self.description,
            notes=list(self.notes),
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(auth={self.settings.auth}, port={self.settings.port}, "
            f"target={self.settings.target!r}, resources={self.resources})"
        )


_PLACEMENT = "the service runs on the devices `target` selects, on their network"
_KEYS = "keys are generated (service.get_keys(); regen_key to rotate)"
_TAGS = "deployments carry no tags; devices are selected by theirs (target=...)"


class AciServiceDeploymentConfiguration(_FleetDeploymentConfiguration):
    kind = "AciWebservice"

    def __init__(
        self,
        cpu_cores: float | None = None,
        memory_gb: float | None = None,
        tags: Mapping[str, str] | None = None,
        properties: Mapping[str, str] | None = None,
        description: str | None = None,
        location: str | None = None,
        auth_enabled: bool | None = None,
        ssl_enabled: bool | None = None,
        enable_app_insights: bool | None = None,
        ssl_cert_pem_file: str | None = None,
        ssl_key_pem_file: str | None = None,
        ssl_cname: str | None = None,
        dns_name_label: str | None = None,
        primary_key: str | None = None,
        secondary_key: str | None = None,
        collect_model_data: bool | None = None,
        cmk_vault_base_url: str | None = None,
        cmk_key_name: str | None = None,
        cmk_key_version: str | None = None,
        vnet_name: str | None = None,
        subnet_name: str | None = None,
        cpu_cores_limit: float | None = None,
        memory_gb_limit: float | None = None,
        **fleet: Any,
    ) -> None:
        if ssl_enabled:
            raise WebserviceException(
                "AciWebservice: ssl_enabled=True cannot be honoured: modules serve plain HTTP on the "
                "device; put a TLS-terminating proxy in front and leave ssl_enabled out"
            )
        super().__init__(fleet, bool(auth_enabled))  # ACI's default: no auth
        self._resources(cpu_cores, cpu_cores_limit, memory_gb, memory_gb_limit)
        self.description = description
        self._not_carried({"tags": tags, "properties": properties}, _TAGS)
        self._not_carried(
            {
                "location": location,
                "dns_name_label": dns_name_label,
                "vnet_name": vnet_name,
                "subnet_name": subnet_name,
                "ssl_cert_pem_file": ssl_cert_pem_file,
                "ssl_key_pem_file": ssl_key_pem_file,
                "ssl_cname": ssl_cname,
            },
            _PLACEMENT,
        )
        self._not_carried({"primary_key": primary_key, "secondary_key": secondary_key}, _KEYS)
        self._not_carried(
            {"enable_app_insights": enable_app_insights, "collect_model_data": collect_model_data},
            "`modelfleet status` shows inference rate and latency; modules log on the device",
        )
        self._not_carried(
            {
                "cmk_vault_base_url": cmk_vault_base_url,
                "cmk_key_name": cmk_key_name,
                "cmk_key_version": cmk_key_version,
            },
            "artifacts are verified by digest; encrypt the devices' disks for data at rest",
        )


class AksServiceDeploymentConfiguration(_FleetDeploymentConfiguration):
    kind = "AksWebservice"

    def __init__(
        self,
        autoscale_enabled: bool | None = None,
        autoscale_min_replicas: int | None = None,
        autoscale_max_replicas: int | None = None,
        autoscale_refresh_seconds: int | None = None,
        autoscale_target_utilization: int | None = None,
        collect_model_data: bool | None = None,
        auth_enabled: bool | None = None,
        cpu_cores: float | None = None,
        memory_gb: float | None = None,
        enable_app_insights: bool | None = None,
        scoring_timeout_ms: int | None = None,
        replica_max_concurrent_requests: int | None = None,
        max_request_wait_time: int | None = None,
        num_replicas: int | None = None,
        primary_key: str | None = None,
        secondary_key: str | None = None,
        tags: Mapping[str, str] | None = None,
        properties: Mapping[str, str] | None = None,
        description: str | None = None,
        gpu_cores: int | None = None,
        period_seconds: int | None = None,
        initial_delay_seconds: int | None = None,
        timeout_seconds: int | None = None,
        success_threshold: int | None = None,
        failure_threshold: int | None = None,
        namespace: str | None = None,
        token_auth_enabled: bool | None = None,
        compute_target_name: str | None = None,
        cpu_cores_limit: float | None = None,
        memory_gb_limit: float | None = None,
        blobfuse_enabled: bool | None = None,
        **fleet: Any,
    ) -> None:
        auth = True if auth_enabled is None else bool(auth_enabled)  # AKS's default: key auth on
        super().__init__(fleet, auth or bool(token_auth_enabled))
        if token_auth_enabled:
            _note(
                self.notes,
                "AksWebservice: token_auth_enabled becomes key auth (Azure AD tokens do not exist here)",
            )
        self._resources(cpu_cores, cpu_cores_limit, memory_gb, memory_gb_limit, gpu_cores)
        self.description = description
        if scoring_timeout_ms is not None:
            self.scoring = Scoring(timeout_ms=scoring_timeout_ms)
        probe = {
            "period_s": period_seconds,
            "initial_delay_s": initial_delay_seconds,
            "timeout_s": timeout_seconds,
            "failure_threshold": failure_threshold,
        }
        if any(value is not None for value in probe.values()):
            self.health_probe = HealthProbe(**{k: v for k, v in probe.items() if v is not None})
        self._not_carried({"success_threshold": success_threshold}, "one ready answer makes a module ready")
        self._not_carried(
            {
                "autoscale_enabled": autoscale_enabled,
                "autoscale_min_replicas": autoscale_min_replicas,
                "autoscale_max_replicas": autoscale_max_replicas,
                "autoscale_refresh_seconds": autoscale_refresh_seconds,
                "autoscale_target_utilization": autoscale_target_utilization,
                "num_replicas": num_replicas,
                "replica_max_concurrent_requests": replica_max_concurrent_requests,
                "max_request_wait_time": max_request_wait_time,
            },
            "one instance per device; scale with the number of devices `target` selects",
        )
        self._not_carried(
            {
                "namespace": namespace,
                "compute_target_name": compute_target_name,
                "blobfuse_enabled": blobfuse_enabled,
            },
            _PLACEMENT,
        )
        self._not_carried({"tags": tags, "properties": properties}, _TAGS)
        self._not_carried({"primary_key": primary_key, "secondary_key": secondary_key}, _KEYS)
        self._not_carried(
            {"enable_app_insights": enable_app_insights, "collect_model_data": collect_model_data},
            "`modelfleet status` shows inference rate and latency; modules log on the device",
        )


# -- web services ---------------------------------------------------------------------------------


class Webservice:
    """Azure ML's `Webservice(workspace, name)`: the local service of that name when this workspace
    has one, else the fleet deployment; both answer the same members."""

    compute_type: ClassVar[str] = "Fleet"

    def __new__(cls, workspace: _Workspace | None = None, name: str | None = None, *args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
        if cls is Webservice:
            if workspace is None or name is None:
                raise TypeError("Webservice(workspace, name) needs both")
            cls = LocalWebservice if _local.load(workspace, name) is not None else FleetWebservice
        return super().__new__(cls)

    @staticmethod
    def deploy_from_model(*_: Any, **__: Any) -> Webservice:
        raise WebserviceException(
            "Webservice.deploy_from_model is deprecated in Azure ML too: use Model.deploy"
        )


class FleetWebservice(Webservice, _service.Service):
    """A fleet deployment under Azure ML's webservice members (`publisher.Service` underneath,
    so `scoring_uris`, `status()` and per-device logs stay at hand)."""

    def get_logs(self, num_lines: int = 5000, init: bool = False, *, device_id: str | None = None) -> str:  # type: ignore[override]
        """The last `num_lines` lines of every device's module logs, one text as Azure returns it,
        each device's block headed by its id. `init` (Azure's init-container logs) has no meaning."""
        per_device = _service.Service.get_logs(self, num_lines, device_id=device_id)
        blocks = []
        for device, modules in per_device.items():
            for module, lines in modules.items():
                blocks.append(f"== {device} / {module} ==\n" + "\n".join(lines))
        return "\n".join(blocks) if blocks else f"(no online device runs {self.name})"

    def wait_for_deployment(  # type: ignore[override]
        self, show_output: bool = False, timeout_sec: float | None = None, **kwargs: Any
    ) -> RolloutResult:
        return _service.Service.wait_for_deployment(
            self, show_output, STEP_TIMEOUT_S if timeout_sec is None else timeout_sec, **kwargs
        )

    def update(  # type: ignore[override]
        self,
        models: Sequence[str | _RegistryModel] | None = None,
        inference_config: _service.InferenceConfig | None = None,
        auth_enabled: bool | None = None,
        *,
        wait: bool = True,
        **changes: Any,
    ) -> FleetWebservice:
        """Azure's `update(models=..., inference_config=..., auth_enabled=...)`; modelfleet's
        deployment settings (target, port, rollout, ...) by name; Azure's other keywords with a note.

        It returns once the new version is applied (driving its rollout, as `wait_for_deployment`),
        as a local service's update does, so the `state` and `get_logs()` that follow are the new
        version's; `wait=False` returns as soon as it is published."""
        settings = {k: v for k, v in changes.items() if k in DeploymentSettings.model_fields}
        others = {k: v for k, v in changes.items() if k not in settings}
        if others:
            _note([], f"{type(self).__name__}.update: {', '.join(sorted(others))} not carried over")
        if auth_enabled is not None:
            settings["auth"] = bool(auth_enabled)
        _service.Service.update(self, models, inference_config, **settings)
        if wait:
            self.wait_for_deployment()
        return self


class AciWebservice(FleetWebservice):
    compute_type = "ACI"

    @staticmethod
    def deploy_configuration(*args: Any, **kwargs: Any) -> AciServiceDeploymentConfiguration:
        return AciServiceDeploymentConfiguration(*args, **kwargs)


class AksWebservice(FleetWebservice):
    compute_type = "AKS"

    @staticmethod
    def deploy_configuration(*args: Any, **kwargs: Any) -> AksServiceDeploymentConfiguration:
        return AksServiceDeploymentConfiguration(*args, **kwargs)


AciServiceDeploymentConfiguration.service_class = AciWebservice
AksServiceDeploymentConfiguration.service_class = AksWebservice


class LocalWebservice(Webservice):
    """A service on this workstation: the module served by the local scoring host, in a process
    that outlives this one (`publisher._local_service`). No auth, as in Azure ML."""

    compute_type = "Local"

    def __init__(self, workspace: _Workspace, name: str) -> None:
        self.workspace = workspace
        self.name = name
        self.notes: list[str] = []
        if self._record() is None:
            raise WebserviceException(f"there is no local service {name!r} in this workspace")

    @staticmethod
    def deploy_configuration(port: int | None = None) -> LocalWebserviceDeploymentConfiguration:
        return LocalWebserviceDeploymentConfiguration(port)

    def _record(self) -> _local.LocalRecord | None:
        return _local.load(self.workspace, self.name)

    @property
    def record(self) -> _local.LocalRecord:
        record = self._record()
        if record is None:
            raise WebserviceException(f"the local service {self.name!r} was deleted")
        return record

    # -- deploying ------------------------------------------------------------------------------

    @classmethod
    def _deploy(
        cls,
        workspace: _Workspace,
        name: str,
        models: Sequence[str | _RegistryModel],
        inference_config: _service.InferenceConfig | None,
        config: LocalWebserviceDeploymentConfiguration,
        overwrite: bool,
        show_output: bool,
    ) -> LocalWebservice:
        existing = _local.load(workspace, name)
        if existing is not None:
            if not overwrite:
                raise WebserviceException(
                    f"a local service named {name!r} exists: delete it, or deploy with overwrite=True"
                )
            _local.remove(workspace, existing)
        port = config.port or _local.free_port()
        module = Module.package(
            workspace,
            name,
            models,
            entry_script=getattr(inference_config, "entry_script", None),
            source_dir=getattr(inference_config, "source_directory", None),
            requirements=getattr(inference_config, "requirements", None),
            conda_file=getattr(inference_config, "conda_file", None),
            sample_input=getattr(inference_config, "sample_input", None),
            providers=getattr(inference_config, "providers", None),
            description=getattr(inference_config, "description", None),
        )
        if show_output:
            print(f"packaged module {module.id} ({module.digest[:19]}); starting it on port {port}")
        _local.start(workspace, name, module.id, module.digest, port)
        service = cls(workspace, name)
        service.notes = list(module.notes)
        return service

    def wait_for_deployment(self, show_output: bool = False, timeout_sec: float | None = None) -> None:
        _local.wait_ready(
            self.record, LOCAL_READY_TIMEOUT_S if timeout_sec is None else timeout_sec, show_output
        )

    def update(
        self,
        models: Sequence[str | _RegistryModel] | None = None,
        inference_config: _service.InferenceConfig | None = None,
        deployment_config: LocalWebserviceDeploymentConfiguration | None = None,
        wait: bool = True,
    ) -> LocalWebservice:
        """A new module version (the models given, the same code unless a new inference
        configuration is), served in place of the old one, on the same port unless the new
        configuration names another; it waits for readiness unless `wait` is False."""
        record = self.record
        base = Module(self.workspace, record.module.split(":")[0], version=int(record.module.split(":")[1]))
        if models is None and inference_config is None:
            module = base
        elif inference_config is None:
            module = Module.repackage(self.workspace, base, models)
        else:
            module = Module.package(
                self.workspace,
                self.name,
                models or [f"{m.name}:{m.version}" for m in base.spec.models],
                entry_script=inference_config.entry_script,
                source_dir=inference_config.source_directory,
                requirements=inference_config.requirements,
                conda_file=inference_config.conda_file,
                sample_input=inference_config.sample_input,
                providers=inference_config.providers,  # type: ignore[arg-type]
            )
            self.notes = list(module.notes)
        port = deployment_config.port if deployment_config and deployment_config.port else record.port
        _local.stop(record)
        _local.start(self.workspace, self.name, module.id, module.digest, port)
        if wait:
            self.wait_for_deployment()
        return self

    def reload(self, wait: bool = False) -> None:
        """Restart the host on the same module (Azure reloads the entry script from disk; here the
        script is the one packaged, so edit and `update(inference_config=...)` instead)."""
        record = self.record
        _local.stop(record)
        _local.start(self.workspace, self.name, record.module, record.digest, record.port)
        if wait:
            self.wait_for_deployment()

    def delete(self) -> None:
        _local.remove(self.workspace, self.record)

    # -- reading --------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self.record.port

    @property
    def version(self) -> int:
        return int(self.record.module.rsplit(":", 1)[1])

    @property
    def state(self) -> str:
        """`Healthy` (ready), `Transitioning` (started, not ready yet) or `Failed` (ended)."""
        record = self.record
        if not _local.alive(record):
            return "Failed"
        return "Healthy" if _local.ready(record) else "Transitioning"

    @property
    def scoring_uri(self) -> str:
        return f"http://127.0.0.1:{self.record.port}/score"

    @property
    def scoring_uris(self) -> dict[str, str]:
        return {"local": self.scoring_uri}

    @property
    def swagger_uri(self) -> str:
        return f"http://127.0.0.1:{self.record.port}/swagger.json"

    auth_enabled = False

    def get_keys(self) -> tuple[str, str]:
        raise WebserviceException(
            "a local service has no keys (Azure ML's local services have no auth either)"
        )

    def regen_key(self, key: str, set_key: str | None = None) -> None:
        raise WebserviceException("a local service has no keys")

    def get_logs(self, num_lines: int = 5000, init: bool = False) -> str:
        return _local.log_tail(self.record, num_lines)

    def run(self, input_data: Any, *, timeout: float = 60) -> Any:
        return _service.post_json(self.scoring_uri, input_data, None, timeout)

    def __repr__(self) -> str:
        record = self._record()
        where = f"{record.module} on port {record.port}" if record else "deleted"
        return f"LocalWebservice(name={self.name!r}, {where})"


DeploymentConfig = _service.DeploymentConfig

__all__ = [
    "AciServiceDeploymentConfiguration",
    "AciWebservice",
    "AksServiceDeploymentConfiguration",
    "AksWebservice",
    "DeploymentConfig",
    "Environment",
    "FleetWebservice",
    "InferenceConfig",
    "LocalWebservice",
    "LocalWebserviceDeploymentConfiguration",
    "Model",
    "Webservice",
    "WebserviceException",
    "Workspace",
]
