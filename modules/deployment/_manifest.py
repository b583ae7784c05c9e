"""The deployment manifest: Azure IoT Edge's, plus a module type for modelfleet's own packages.

A manifest written for IoT Edge must parse and come back out unchanged, so that fleets can move
between the two and existing tooling keeps working. Every model therefore keeps fields it does
not know (`extra="allow"`), JSON names are IoT Edge's exact spellings (aliases), and dumping uses
`by_alias=True, exclude_unset=True` so no default is ever invented on the way out
(`Manifest.to_json_dict`). Validation is strict only where a wrong value would make the agent do
the wrong thing: module type, status, restart and pull policies, a modelfleet module's digest.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from modules.safe_json import PayloadRefused, loads_limited
from modules.spec import ExecutionProvider, HealthProbe, Resources

ModuleStatus = Literal["running", "stopped"]
RestartPolicy = Literal["never", "on-failure", "on-unhealthy", "always"]
DEFAULT_RESTART_POLICY: RestartPolicy = "always"
"""IoT Edge's documented default: what a module without `restartPolicy` gets, and what the
publisher writes unless told otherwise."""
STARTUP_ORDER_MAX = 4_294_967_295
"""`startupOrder` is an unsigned 32-bit integer in IoT Edge; a module that gives none starts
after every module that does, as if it had this value."""
ImagePullPolicy = Literal["on-create", "never"]
DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"
MODULE_REFERENCE_PATTERN = r"^modules/[a-z0-9]+(?:[._-][a-z0-9]+)*$"


class _Open(BaseModel):
    """Keeps unknown fields, so IoT Edge features we do not model still round-trip."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class EnvVar(_Open):
    value: str | int | float | bool | None = None


class RegistryCredential(_Open):
    username: str | None = None
    password: str | None = None
    address: str | None = None


class RuntimeSettings(_Open):
    min_docker_version: str | None = Field(None, alias="minDockerVersion")
    logging_options: str | None = Field(None, alias="loggingOptions")
    registry_credentials: dict[str, RegistryCredential] | None = Field(None, alias="registryCredentials")


class Runtime(_Open):
    type: str = Field(description='"docker" for IoT Edge; modelfleet agents also accept "process"')
    settings: RuntimeSettings | None = None


class DockerSettings(_Open):
    image: str
    create_options: str | dict[str, Any] | None = Field(
        None,
        alias="createOptions",
        description="Docker create options; a JSON string in deployments, an object in templates",
    )

    def create_options_dict(self) -> dict[str, Any]:
        """The create options as an object, whichever of the two spellings the manifest used."""
        if isinstance(self.create_options, dict):
            return self.create_options
        if not self.create_options:
            return {}
        try:
            parsed = loads_limited(self.create_options.encode("utf-8", errors="surrogatepass"))
        except PayloadRefused as exc:
            raise ValueError(f"createOptions: {exc}") from None
        if not isinstance(parsed, dict):
            raise ValueError("createOptions must be a JSON object")
        return parsed


class ModelfleetSettings(_Open):
    module: str = Field(pattern=MODULE_REFERENCE_PATTERN, examples=["modules/iris-svc"])
    digest: str = Field(pattern=DIGEST_PATTERN, description="OCI manifest digest of the module artifact")
    port: int = Field(ge=1, le=65535, description="Port the scoring host listens on")
    execution_providers: list[ExecutionProvider] | None = Field(
        None, alias="executionProviders", description="Preference order; overrides the module spec's"
    )
    resources: Resources | None = None
    health_probe: HealthProbe | None = Field(
        None, alias="healthProbe", description="Overrides the module spec's health probe"
    )


class _ModuleCommon(_Open):
    version: str | None = None
    status: ModuleStatus | None = None
    restart_policy: RestartPolicy | None = Field(None, alias="restartPolicy")
    startup_order: int | None = Field(None, ge=0, le=STARTUP_ORDER_MAX, alias="startupOrder")
    image_pull_policy: ImagePullPolicy | None = Field(None, alias="imagePullPolicy")
    env: dict[str, EnvVar] | None = None


class DockerModule(_ModuleCommon):
    type: Literal["docker"]
    settings: DockerSettings


class ModelfleetModule(_ModuleCommon):
    type: Literal["modelfleet"]
    settings: ModelfleetSettings


Module = Annotated[DockerModule | ModelfleetModule, Field(discriminator="type")]


class EdgeAgentDesired(_Open):
    schema_version: str = Field(alias="schemaVersion")
    runtime: Runtime | None = None
    system_modules: dict[str, Module] | None = Field(None, alias="systemModules")
    modules: dict[str, Module] | None = None


class Route(_Open):
    route: str
    priority: int | None = Field(None, ge=0, le=9)
    time_to_live_secs: int | None = Field(None, ge=0, alias="timeToLiveSecs")


class StoreAndForward(_Open):
    time_to_live_secs: int | None = Field(None, ge=0, alias="timeToLiveSecs")


class EdgeHubDesired(_Open):
    schema_version: str = Field(alias="schemaVersion")
    routes: dict[str, str | Route] | None = None
    store_and_forward: StoreAndForward | None = Field(None, alias="storeAndForwardConfiguration")


class EdgeAgentTwin(_Open):
    desired: EdgeAgentDesired = Field(alias="properties.desired")


class EdgeHubTwin(_Open):
    desired: EdgeHubDesired = Field(alias="properties.desired")


class ModuleTwin(_Open):
    """A module's own desired properties: opaque to the agent, handed to the module as they are."""

    desired: dict[str, Any] = Field(alias="properties.desired")


class ModulesContent(_Open):
    # Every key other than the two system twins is a module name with its twin's desired properties.
    __pydantic_extra__: dict[str, ModuleTwin] = Field(init=False)  # type: ignore[assignment]

    edge_agent: EdgeAgentTwin = Field(alias="$edgeAgent")
    edge_hub: EdgeHubTwin | None = Field(None, alias="$edgeHub")

    @property
    def module_twins(self) -> dict[str, ModuleTwin]:
        return dict(self.__pydantic_extra__ or {})


class Manifest(_Open):
    modules_content: ModulesContent = Field(alias="modulesContent")

    @property
    def agent(self) -> EdgeAgentDesired:
        return self.modules_content.edge_agent.desired

    @property
    def modules(self) -> dict[str, DockerModule | ModelfleetModule]:
        return dict(self.agent.modules or {})

    def to_json_dict(self) -> dict[str, Any]:
        """The JSON form, with exactly the fields that were given: what round-trips and is signed."""
        return self.model_dump(by_alias=True, exclude_unset=True, mode="json")
