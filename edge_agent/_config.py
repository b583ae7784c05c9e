"""Agent settings: flags, then environment, then the TOML file, then defaults.

Secrets never need to sit in the TOML file: each password has a `*_file` twin and an environment
variable, which is how systemd credentials and container secrets hand them over.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from modules import ConfigError
from modules.safe_json import DEFAULT_MAX_PAYLOAD_BYTES
from modules.topics import DEVICE_ID_RE

# Env names a deployment may not set: they steer the dynamic loader or the interpreter before any
# module code runs (defence in depth should a publisher key leak).
DEFAULT_DENIED_ENV = ("LD_*", "PYTHON*")


# setting -> environment variable
ENVIRONMENT = {
    "device_id": "MODELFLEET_DEVICE_ID",
    "fleet": "MODELFLEET_FLEET",
    "hub": "MODELFLEET_HUB",
    "registry": "MODELFLEET_REGISTRY",
    "registry_username": "MODELFLEET_REGISTRY_USERNAME",
    "registry_password": "MODELFLEET_REGISTRY_PASSWORD",
    "registry_token": "MODELFLEET_REGISTRY_TOKEN",
    "mqtt_username": "MODELFLEET_MQTT_USERNAME",
    "mqtt_password": "MODELFLEET_MQTT_PASSWORD",
    "data_dir": "MODELFLEET_DATA_DIR",
    "docker_host": "MODELFLEET_DOCKER_HOST",
    "module_limits": "MODELFLEET_MODULE_LIMITS",
    "iothub_connection_string": "MODELFLEET_IOTHUB_CONNECTION_STRING",
}


class AgentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_id: str
    fleet: str = "default"
    tags: dict[str, Any] = Field(default_factory=dict)
    hub: str = "mqtt://127.0.0.1:1883"
    registry: str = "http://127.0.0.1:5000"
    registry_username: str | None = None
    registry_password: SecretStr | None = None
    registry_password_file: Path | None = None
    registry_token: SecretStr | None = None
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    mqtt_password_file: Path | None = None
    mqtt_tls_ca_file: Path | None = None
    mqtt_tls_cert_file: Path | None = None
    mqtt_tls_key_file: Path | None = None
    # Azure IoT Hub as the control plane (`hub = "azureiot://..."`): a device connection string
    # (symmetric key) or an X.509 certificate and key, and the CA that verifies the hub's server.
    iothub_connection_string: SecretStr | None = None
    iothub_connection_string_file: Path | None = None
    iothub_x509_cert_file: Path | None = None
    iothub_x509_key_file: Path | None = None
    iothub_ca_file: Path | None = None
    trust: list[Path] = Field(default_factory=list, description="Publisher public keys (PEM) to trust")
    data_dir: Path = Path("/var/lib/modelfleet")
    listen_host: str = Field("0.0.0.0", description="Address module ports listen on")
    port_base: int = Field(0, ge=0, le=60000, description="Added to every module port and the status port")
    status_port: int = Field(8780, ge=0, le=65535, description="Local status endpoint on 127.0.0.1; 0 = off")
    heartbeat_s: float = Field(30.0, gt=0)
    reserve_bytes: int = Field(64 << 20, ge=0, description="Disk space always left free when pulling")
    backoff_base_s: float = Field(1.0, gt=0)
    backoff_max_s: float = Field(300.0, gt=0)
    start_timeout_s: float = Field(120.0, gt=0)
    retry_base_s: float = Field(5.0, gt=0, description="First retry of a transient failure")
    retry_max_s: float = Field(300.0, gt=0, description="Longest wait between retries")
    max_payload_bytes: int = Field(
        DEFAULT_MAX_PAYLOAD_BYTES, ge=1024, description="Control-plane payloads above this are refused unread"
    )
    # What enforces a process module's `resources`: the kernel, through a cgroup per module, where
    # the agent may make one; else the runtime itself (resident-memory watch, rlimits, affinity).
    module_limits: Literal["auto", "cgroup", "rlimit"] = Field(
        "auto",
        description="auto: a cgroup per module where possible, else rlimits; cgroup: a module that "
        "cannot have one fails; rlimit: never a cgroup",
    )
    deny_env: list[str] = Field(
        default_factory=lambda: list(DEFAULT_DENIED_ENV),
        description="Env names (shell patterns) a deployment may not set in a module",
    )
    # The docker runtime (modules with an image): the engine, and what a deployment's create
    # options may ask of it. The device owner sets these; a deployment cannot.
    docker_host: str | None = Field(
        None, description="Docker engine URL for container modules (default: DOCKER_HOST, else the socket)"
    )
    docker_allow_privileged: bool = Field(False, description="Allow HostConfig.Privileged")
    docker_allow_host_namespaces: bool = Field(
        False, description="Allow the host's PID, IPC, UTS, user and cgroup namespaces"
    )
    docker_bind_paths: list[str] = Field(
        default_factory=list, description="Host paths (and what is below them) a container may bind"
    )
    docker_device_paths: list[str] = Field(
        default_factory=list, description="Host devices (and what is below them) a container may be given"
    )
    docker_capabilities: list[str] = Field(
        default_factory=list, description="Capabilities a container may add (HostConfig.CapAdd)"
    )
    docker_tag_poll_s: float = Field(
        300.0, gt=0, description="How often an image named by tag is looked up again (a re-pushed tag)"
    )

    @field_validator(
        "data_dir",
        "trust",
        "registry_password_file",
        "mqtt_password_file",
        "mqtt_tls_ca_file",
        "mqtt_tls_cert_file",
        "mqtt_tls_key_file",
        "iothub_connection_string_file",
        "iothub_x509_cert_file",
        "iothub_x509_key_file",
        "iothub_ca_file",
    )
    @classmethod
    def _absolute(cls, value: Path | list[Path] | None) -> Path | list[Path] | None:
        """Every path the agent derives from its settings is absolute, resolved once here: a
        relative `--data-dir` would otherwise mean something else to a module process that runs
        in its own folder."""
        if value is None:
            return None
        if isinstance(value, list):
            return [Path(v).expanduser().resolve() for v in value]
        return Path(value).expanduser().resolve()

    @field_validator("device_id")
    @classmethod
    def _device_id(cls, value: str) -> str:
        if not DEVICE_ID_RE.match(value):
            raise ValueError("device ids are 1-128 of letters, digits, '.', '_', ':', '-'")
        return value

    def secret(self, name: str) -> str | None:
        """A password from the setting itself or its `*_file` twin (first line, stripped)."""
        value: SecretStr | None = getattr(self, name)
        if value is not None:
            return value.get_secret_value()
        path: Path | None = getattr(self, f"{name}_file", None)
        if path is None:
            return None
        try:
            return path.read_text().splitlines()[0].strip()
        except (OSError, IndexError) as exc:
            raise ConfigError(f"cannot read {name} from {path}: {exc}") from None

    def module_port(self, port: int) -> int:
        return port + self.port_base

    @property
    def effective_status_port(self) -> int:
        return 0 if self.status_port == 0 else self.status_port + self.port_base


def load_agent_config(
    path: Path | None, overrides: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> AgentConfig:
    """File `[agent]` table (or top level), then environment, then explicit overrides (flags)."""
    env = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    if path is not None:
        import tomllib  # only a device configured by file needs the TOML parser

        try:
            raw = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"agent config {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from None
        data = dict(raw.get("agent", raw))
    for setting, variable in ENVIRONMENT.items():
        if env.get(variable):
            data[setting] = env[variable]
    for key, value in overrides.items():
        if value is None or value == [] or value == {}:
            continue
        if key == "tags":
            data["tags"] = {**data.get("tags", {}), **value}
        elif key == "trust":
            data["trust"] = [*data.get("trust", []), *value]
        else:
            data[key] = value
    if "device_id" not in data:
        raise ConfigError(
            "no device id: pass --device-id, set MODELFLEET_DEVICE_ID or device_id in the config"
        )
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "config"
        raise ConfigError(f"invalid agent setting {where}: {first['msg']}") from None
