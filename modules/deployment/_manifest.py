"""The deployment manifest: Azure IoT Edge's, plus a module type for modelfleet's own packages.

A manifest written for IoT Edge must parse and come back out unchanged, so that fleets can move
between the two and existing tooling keeps working. Every model therefore keeps fields it does
not know (`extra="allow"`), JSON names are IoT Edge's exact spellings (aliases), values are never
coerced (`strict`: a `"1"` stays a string, a `1.0` a float), the input's key order is remembered
and written back (a text diff of an exported manifest is clean), and dumping uses
`by_alias=True, exclude_unset=True` so no default is ever invented on the way out
(`Manifest.to_json_dict`). Validation is strict only where a wrong value would make the agent (or
IoT Edge) do the wrong thing: module type, status, restart and pull policies, schema versions,
startup order, chunked create options, a modelfleet module's digest.

Both of IoT Hub's manifest shapes parse: a base deployment, where each twin section holds its
whole `properties.desired`, and a layered deployment, where a twin section holds dot-path keys
(`"properties.desired.modules.sensor"`, `"properties.desired.routes.up"`,
`"properties.desired.settings"`) that set one part of the desired properties. How the parts are
merged over a base is `modules/deployment/_layered.py`.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    TypeAdapter,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from modules.deployment._policies import STARTUP_ORDER_MAX, RestartPolicy
from modules.safe_json import PayloadRefused, loads_limited
from modules.spec import ExecutionProvider, HealthProbe, Resources

ModuleStatus = Literal["running", "stopped"]
ImagePullPolicy = Literal["on-create", "never"]
DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"
MODULE_REFERENCE_PATTERN = r"^modules/[a-z0-9]+(?:[._-][a-z0-9]+)*$"

EDGE_AGENT_SCHEMA_VERSIONS = ("1.0", "1.1")
"""What IoT Edge's agent reads in `$edgeAgent` (its desired-properties DTOs): anything else it refuses."""
EDGE_HUB_SCHEMA_VERSIONS = ("1.0", "1.1", "1.2")
"""What IoT Edge's hub reads in `$edgeHub`; route objects (priority, time to live) need 1.1 or later."""

CREATE_OPTIONS_CHUNK = 512
"""IoT Edge splits `createOptions` into values of at most 512 characters (a twin value's limit):
`createOptions`, then `createOptions01` ... `createOptions07`, joined in that order on read."""
CREATE_OPTIONS_MAX_CHUNKS = 8
_CHUNK_KEY = re.compile(r"^createOptions(\d{2})$")

DESIRED = "properties.desired"
"""A twin section's whole desired properties."""
DESIRED_PATH_PREFIX = DESIRED + "."
"""A layered deployment's key for one part of them: `properties.desired.<segment>(.<segment>)*`."""
AGENT_TWIN, HUB_TWIN = "$edgeAgent", "$edgeHub"


class _Open(BaseModel):
    """Keeps unknown fields, values as given and the input's key order, so IoT Edge manifests
    round-trip exactly, including features we do not model."""

    model_config = ConfigDict(defer_build=True, extra="allow", populate_by_name=True, strict=True)

    _key_order: tuple[str, ...] = PrivateAttr(default=())

    @model_validator(mode="wrap")
    @classmethod
    def _remember_key_order(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        parsed = handler(data)
        if isinstance(data, Mapping) and isinstance(parsed, _Open):
            parsed._key_order = tuple(data)
        return parsed

    @model_serializer(mode="wrap")
    def _in_key_order(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        out = handler(self)
        if not self._key_order or not isinstance(out, dict):
            return out
        position = {key: index for index, key in enumerate(self._key_order)}
        # Keys the input did not have (set later by code) keep their place after the known ones.
        return dict(sorted(out.items(), key=lambda item: position.get(item[0], len(position))))


class EnvVar(_Open):
    value: str | int | float | bool | None = None

    def as_text(self) -> str | None:
        """The variable's value in a process environment; None (JSON null) means "not set", never
        the string "None"."""
        if self.value is None:
            return None
        return self.value if isinstance(self.value, str) else str(self.value)


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


def split_create_options(value: str | Mapping[str, Any]) -> dict[str, str]:
    """Docker create options as IoT Edge writes them into a twin: a compact JSON string cut into
    `createOptions`, `createOptions01`, ... of at most 512 characters each (at most eight)."""
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    chunks = [
        text[start : start + CREATE_OPTIONS_CHUNK] for start in range(0, len(text), CREATE_OPTIONS_CHUNK)
    ]
    if len(chunks) > CREATE_OPTIONS_MAX_CHUNKS:
        raise ValueError(
            f"createOptions of {len(text)} characters is above IoT Edge's limit of "
            f"{CREATE_OPTIONS_CHUNK * CREATE_OPTIONS_MAX_CHUNKS} ({CREATE_OPTIONS_MAX_CHUNKS} chunks of "
            f"{CREATE_OPTIONS_CHUNK})"
        )
    return {
        ("createOptions" if index == 0 else f"createOptions{index:02d}"): chunk
        for index, chunk in enumerate(chunks or [""])
    }


class DockerSettings(_Open):
    image: str
    create_options: str | dict[str, Any] | None = Field(
        None,
        alias="createOptions",
        description="Docker create options; a JSON string in deployments (long ones continued in "
        "createOptions01..07), an object in templates",
    )

    @model_validator(mode="after")
    def _chunks_are_contiguous(self) -> DockerSettings:
        numbers = sorted(
            int(match.group(1)) for key in self.model_extra or {} if (match := _CHUNK_KEY.match(key))
        )
        if not numbers:
            return self
        if not isinstance(self.create_options, str):
            raise ValueError("createOptions must be a string when it is continued in createOptions01...")
        expected = list(range(1, len(numbers) + 1))
        if numbers != expected or numbers[-1] >= CREATE_OPTIONS_MAX_CHUNKS:
            given = ", ".join(f"createOptions{n:02d}" for n in numbers)
            raise ValueError(
                f"create option chunks must be createOptions01, createOptions02, ... without gaps, up "
                f"to createOptions{CREATE_OPTIONS_MAX_CHUNKS - 1:02d}; got {given}"
            )
        for number in numbers:
            if not isinstance((self.model_extra or {})[f"createOptions{number:02d}"], str):
                raise ValueError(f"createOptions{number:02d} must be a string")
        return self

    def create_options_text(self) -> str | None:
        """The create options as one JSON string, chunks joined: what IoT Edge hands to Docker."""
        if self.create_options is None or isinstance(self.create_options, dict):
            return (
                None
                if self.create_options is None
                else json.dumps(self.create_options, separators=(",", ":"))
            )
        extra = self.model_extra or {}
        parts = [self.create_options]
        number = 1
        while (chunk := extra.get(f"createOptions{number:02d}")) is not None:
            parts.append(chunk)
            number += 1
        return "".join(parts)

    def create_options_dict(self) -> dict[str, Any]:
        """The create options as an object, whichever of the spellings the manifest used."""
        if isinstance(self.create_options, dict):
            return self.create_options
        text = self.create_options_text()
        if not text or not text.strip():
            return {}
        try:
            parsed = loads_limited(text.encode("utf-8", errors="surrogatepass"))
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

    def environment(self) -> dict[str, str]:
        """The variables the module's process gets: a `null` value leaves the variable unset."""
        out: dict[str, str] = {}
        for name, variable in (self.env or {}).items():
            text = variable.as_text()
            if text is not None:
                out[name] = text
        return out


class DockerModule(_ModuleCommon):
    type: Literal["docker"]
    settings: DockerSettings


class ModelfleetModule(_ModuleCommon):
    type: Literal["modelfleet"]
    settings: ModelfleetSettings


Module = Annotated[DockerModule | ModelfleetModule, Field(discriminator="type")]


class EdgeAgentDesired(_Open):
    schema_version: str = Field(
        alias="schemaVersion", json_schema_extra={"enum": list(EDGE_AGENT_SCHEMA_VERSIONS)}
    )
    runtime: Runtime | None = None
    system_modules: dict[str, Module] | None = Field(None, alias="systemModules")
    modules: dict[str, Module] | None = None

    @field_validator("schema_version")
    @classmethod
    def _supported(cls, value: str) -> str:
        return _check_schema_version(value, EDGE_AGENT_SCHEMA_VERSIONS, AGENT_TWIN)


class Route(_Open):
    route: str
    priority: int | None = Field(None, ge=0, le=9)
    time_to_live_secs: int | None = Field(None, ge=0, alias="timeToLiveSecs")


# What a twin path's value must be. The adapters are built on first use, like the models
# (`defer_build`): one built at import would build the module models with it.
_PATH_TYPES: dict[str, Any] = {
    "module": Module,
    "modules": dict[str, Module],
    "route": str | Route,
    "routes": dict[str, str | Route],
}


@functools.cache
def _adapter(kind: str) -> TypeAdapter[Any]:
    return TypeAdapter(_PATH_TYPES[kind])


class StoreAndForward(_Open):
    time_to_live_secs: int | None = Field(None, ge=0, alias="timeToLiveSecs")


class EdgeHubDesired(_Open):
    schema_version: str = Field(
        alias="schemaVersion", json_schema_extra={"enum": list(EDGE_HUB_SCHEMA_VERSIONS)}
    )
    routes: dict[str, str | Route] | None = None
    store_and_forward: StoreAndForward | None = Field(None, alias="storeAndForwardConfiguration")

    @field_validator("schema_version")
    @classmethod
    def _supported(cls, value: str) -> str:
        return _check_schema_version(value, EDGE_HUB_SCHEMA_VERSIONS, HUB_TWIN)

    @model_validator(mode="after")
    def _route_objects_need_1_1(self) -> EdgeHubDesired:
        if self.schema_version == "1.0":
            for name, route in (self.routes or {}).items():
                if isinstance(route, Route):
                    raise ValueError(
                        f"route {name!r} is an object (route, priority, timeToLiveSecs), which needs "
                        "schemaVersion 1.1 or later; in 1.0 a route is a string"
                    )
        return self


def _check_schema_version(value: str, supported: tuple[str, ...], twin: str) -> str:
    if value not in supported:
        raise ValueError(
            f"schemaVersion {value!r} is not one IoT Edge supports for {twin} ({', '.join(supported)})"
        )
    return value


def desired_path(key: str) -> tuple[str, ...] | None:
    """`"properties.desired.modules.sensor"` -> `("modules", "sensor")`; `"properties.desired"` ->
    `()`; None for any other key. Twin property names cannot contain a dot, so splitting is exact."""
    if key == DESIRED:
        return ()
    if not key.startswith(DESIRED_PATH_PREFIX):
        return None
    segments = tuple(key[len(DESIRED_PATH_PREFIX) :].split("."))
    return None if any(not segment for segment in segments) else segments


class _TwinSection(_Open):
    """One twin of `modulesContent`: its whole desired properties and, in a layered deployment,
    dot-path keys that each set one part of them. Nothing else is a twin property."""

    @model_validator(mode="after")
    def _only_desired_paths(self) -> _TwinSection:
        for key, value in (self.model_extra or {}).items():
            path = desired_path(key)
            if path is None:
                raise ValueError(
                    f"unknown key {key!r}: a twin section holds {DESIRED!r} or, in a layered deployment, "
                    f"'{DESIRED_PATH_PREFIX}<path>' keys"
                )
            if value is not None:  # null removes that part (`_layered`): nothing to check
                self._check_path(key, path, value)
        return self

    def _check_path(self, key: str, path: tuple[str, ...], value: Any) -> None:
        """Validate what a dot path sets where the agent relies on its type; the rest is checked
        once merged over a base (`_layered.merge`)."""

    @property
    def paths(self) -> dict[tuple[str, ...], Any]:
        """The dot-path parts this section sets, in the order given, as raw JSON."""
        out: dict[tuple[str, ...], Any] = {}
        for key, value in (self.model_extra or {}).items():
            path = desired_path(key)
            if path:
                out[path] = value
        return out


_AT = "\u00a7"
"""Marks a message whose location continues the pydantic location it is reported at (`describe`)."""


def _raise_at(key: str, exc: ValidationError) -> None:
    first = exc.errors(include_url=False)[0]
    where, message = _where_and_message({**first, "loc": (key, *first["loc"])})
    raise ValueError(f"{_AT}{where}{_AT}{message}") from None


class EdgeAgentTwin(_TwinSection):
    desired: EdgeAgentDesired | None = Field(None, alias=DESIRED)

    def _check_path(self, key: str, path: tuple[str, ...], value: Any) -> None:
        try:
            if path[0] in ("modules", "systemModules") and len(path) == 2:
                _adapter("module").validate_python(value, strict=True)
            elif path[0] in ("modules", "systemModules") and len(path) == 1:
                _adapter("modules").validate_python(value, strict=True)
            elif path == ("schemaVersion",):
                _check_schema_version(value, EDGE_AGENT_SCHEMA_VERSIONS, AGENT_TWIN)
        except ValidationError as exc:
            _raise_at(key, exc)

    def layer_modules(self) -> dict[str, DockerModule | ModelfleetModule]:
        """Whole modules a layered section sets (`properties.desired.modules.<name>`), parsed."""
        out: dict[str, DockerModule | ModelfleetModule] = {}
        for path, value in self.paths.items():
            if path[0] == "modules" and len(path) == 2:
                out[path[1]] = _adapter("module").validate_python(value, strict=True)
            elif path == ("modules",) and isinstance(value, dict):
                out.update(_adapter("modules").validate_python(value, strict=True))
        return out


class EdgeHubTwin(_TwinSection):
    desired: EdgeHubDesired | None = Field(None, alias=DESIRED)

    def _check_path(self, key: str, path: tuple[str, ...], value: Any) -> None:
        try:
            if path[0] == "routes" and len(path) == 2:
                _adapter("route").validate_python(value, strict=True)
            elif path == ("routes",):
                _adapter("routes").validate_python(value, strict=True)
            elif path == ("schemaVersion",):
                _check_schema_version(value, EDGE_HUB_SCHEMA_VERSIONS, HUB_TWIN)
        except ValidationError as exc:
            _raise_at(key, exc)


class ModuleTwin(_TwinSection):
    """A module's own desired properties: opaque to the agent, handed to the module as they are.
    In a layered deployment `desired` may be absent and `paths` set parts of it instead."""

    desired: dict[str, Any] | None = Field(None, alias=DESIRED)


class ModulesContent(_Open):
    # Every key other than the two system twins is a module name with its twin's desired properties.
    __pydantic_extra__: dict[str, ModuleTwin] = Field(init=False)  # type: ignore[assignment]

    edge_agent: EdgeAgentTwin = Field(alias=AGENT_TWIN)
    edge_hub: EdgeHubTwin | None = Field(None, alias=HUB_TWIN)

    @property
    def module_twins(self) -> dict[str, ModuleTwin]:
        return dict(self.__pydantic_extra__ or {})

    def twins(self) -> Iterator[tuple[str, _TwinSection]]:
        """Every twin section by its key in `modulesContent`, in the manifest's order."""
        yield AGENT_TWIN, self.edge_agent
        if self.edge_hub is not None:
            yield HUB_TWIN, self.edge_hub
        yield from self.module_twins.items()


class Manifest(_Open):
    modules_content: ModulesContent = Field(alias="modulesContent")

    @property
    def agent(self) -> EdgeAgentDesired | None:
        """`$edgeAgent`'s whole desired properties; None in a layered manifest that sets only parts."""
        return self.modules_content.edge_agent.desired

    @property
    def layered_shape(self) -> bool:
        """Whether this is a layer's manifest: a dot-path key anywhere, or no whole `$edgeAgent`
        desired properties (a layer that changes only module twins has `"$edgeAgent": {}`)."""
        if self.agent is None:
            return True
        return any(section.paths for _, section in self.modules_content.twins())

    def base_problem(self) -> str | None:
        """Why this manifest cannot be a base deployment, or None when it can."""
        for name, section in self.modules_content.twins():
            for path in section.paths:
                key = DESIRED_PATH_PREFIX + ".".join(path)
                return (
                    f"modulesContent.{name}[{key!r}] is a layered deployment's key: import it as a "
                    "layered deployment, or give the whole 'properties.desired'"
                )
        if self.agent is None:
            return f"modulesContent.$edgeAgent[{DESIRED!r}]: field required (a base deployment sets it whole)"
        return None

    @property
    def modules(self) -> dict[str, DockerModule | ModelfleetModule]:
        """Every whole module this manifest sets: its `modules`, and a layer's
        `properties.desired.modules.<name>` keys (which win, as they are applied after)."""
        agent = self.agent
        out: dict[str, DockerModule | ModelfleetModule] = dict(agent.modules or {}) if agent else {}
        out.update(self.modules_content.edge_agent.layer_modules())
        return out

    def to_json_dict(self) -> dict[str, Any]:
        """The JSON form, with exactly the fields that were given: what round-trips and is signed."""
        return self.model_dump(by_alias=True, exclude_unset=True, mode="json")


_IDENTIFIER = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$-]*$")
_UNION_TAGS = {
    "docker",
    "modelfleet",
    "str",
    "Route",
    "function-after[_route_objects_need_1_1(), EdgeHubDesired]",
}


def location(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as a path a person can find in the JSON:
    `modulesContent.$edgeAgent['properties.desired'].modules.sensor.settings.image`."""
    parts: list[str] = []
    previous: tuple[int | str, ...] = ()
    for segment in loc:
        text = str(segment)
        # A discriminated union adds its tag ('docker') after the module name: not a JSON key.
        is_tag = (
            len(previous) >= 2
            and previous[-2] in ("modules", "systemModules")
            and text in ("docker", "modelfleet")
        )
        if not is_tag and not text.startswith("function-"):
            if isinstance(segment, int):
                parts.append(f"[{segment}]")
            elif _IDENTIFIER.match(text):
                parts.append(("." if parts else "") + text)
            else:
                parts.append(f"[{text!r}]")
        previous = (*previous, segment)
    return "".join(parts) or "(top level)"


def _message(msg: str) -> str:
    msg = msg.removeprefix("Value error, ")
    return msg[:1].lower() + msg[1:]


def _error_message(error: Any) -> str:
    if error["type"] == "union_tag_not_found":
        return "type: field required (docker or modelfleet)"
    return _message(error["msg"])


def _where_and_message(error: Any) -> tuple[str, str]:
    where, message = location(tuple(error["loc"])), _error_message(error)
    if message.startswith(_AT):
        suffix, message = message[1:].split(_AT, 1)
        where = where + suffix if where != "(top level)" else suffix
    elif message.startswith("type: field required"):
        where, message = f"{where}.type", message.removeprefix("type: ")
    return where, message


def _error_line(error: Any) -> str:
    where, message = _where_and_message(error)
    return f"{where}: {message}"


def describe(exc: ValidationError, limit: int = 3) -> str:
    """The first errors of a validation as `path: message` lines joined by '; '."""
    errors = exc.errors(include_url=False)
    shown = [_error_line(e) for e in errors[:limit]]
    more = f" (and {len(errors) - limit} more)" if len(errors) > limit else ""
    return "; ".join(shown) + more
