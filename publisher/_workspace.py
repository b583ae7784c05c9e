"""Where a publisher's settings come from: flags, then environment, then modelfleet.toml, then defaults.

A workspace is found like git finds a repository: `--config`, `MODELFLEET_CONFIG`, or the nearest
`modelfleet.toml` in the current folder or its parents.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path

import tomli_w
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modules import ConfigError
from modules.oci import RegistryClient, RegistryCredentials, normalize_registry_url
from modules.safe_json import DEFAULT_MAX_PAYLOAD_BYTES
from modules.signing import generate_signing_key, load_signing_key, public_key_pem

CONFIG_NAME = "modelfleet.toml"
DEFAULT_REGISTRY = "http://127.0.0.1:5000"
DEFAULT_HUB = "mqtt://127.0.0.1:1883"
DEFAULT_FLEET = "default"
DEFAULT_KEY = "keys/publisher-ed25519.pem"


class WorkspaceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fleet: str = DEFAULT_FLEET
    registry: str = DEFAULT_REGISTRY
    hub: str = DEFAULT_HUB
    signing_key: str = DEFAULT_KEY
    max_payload_bytes: int = Field(
        DEFAULT_MAX_PAYLOAD_BYTES,
        ge=1024,
        description="Largest retained payload the publisher decodes; bigger ones are shown as unreadable",
    )
    # mTLS to the broker (`modelfleet pki issue --publisher NAME`): relative paths are relative to
    # the workspace folder, as the signing key's is
    mqtt_tls_ca_file: str | None = None
    mqtt_tls_cert_file: str | None = None
    mqtt_tls_key_file: str | None = None


def find_config(start: Path | None = None) -> Path | None:
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / CONFIG_NAME
        if candidate.is_file():
            return candidate
    return None


def _read_config(path: Path) -> WorkspaceConfig:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"workspace config {path} does not exist; run `modelfleet init`") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    try:
        return WorkspaceConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{path}: {where}: {first['msg']}") from None


def _with_payload_cap(config: WorkspaceConfig, text: str) -> WorkspaceConfig:
    try:
        return WorkspaceConfig.model_validate({**config.model_dump(), "max_payload_bytes": text.strip()})
    except ValidationError as exc:
        raise ConfigError(
            f"MODELFLEET_MAX_PAYLOAD_BYTES={text!r}: {exc.errors()[0]['msg']} (a byte count, at least 1024)"
        ) from None


class Workspace:
    """The publisher's connection to one fleet: registry, hub, fleet name, signing key."""

    def __init__(
        self,
        config: WorkspaceConfig,
        *,
        root: Path,
        credentials: RegistryCredentials | None = None,
        config_path: Path | None = None,
    ) -> None:
        self.config = config
        self.root = root
        self.credentials = credentials or RegistryCredentials()
        self.config_path = config_path
        self.registry_url = normalize_registry_url(config.registry)
        self._verify_key: Ed25519PublicKey | None = None

    @property
    def fleet(self) -> str:
        return self.config.fleet

    @property
    def hub(self) -> str:
        return self.config.hub

    @property
    def max_payload_bytes(self) -> int:
        return self.config.max_payload_bytes

    @property
    def fleet_dir(self) -> Path:
        """Where the workspace keeps what it knows about its fleet (published versions,
        enrolled devices): per fleet, since one workspace may drive several with --fleet."""
        return self.root / "fleets" / self.fleet

    @property
    def verify_key(self) -> Ed25519PublicKey:
        """The public half of the signing key: the only key whose documents the publisher builds on."""
        if self._verify_key is None:
            self._verify_key = load_signing_key(self.signing_key_path).public_key()
        return self._verify_key

    def path_setting(self, value: str | None) -> Path | None:
        """A file setting of the workspace, resolved against the workspace folder."""
        if not value:
            return None
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.root / path

    @property
    def signing_key_path(self) -> Path:
        path = Path(self.config.signing_key).expanduser()
        return path if path.is_absolute() else self.root / path

    @classmethod
    def load(
        cls,
        config_path: Path | str | None = None,
        *,
        registry: str | None = None,
        hub: str | None = None,
        fleet: str | None = None,
        registry_user: str | None = None,
        registry_password: str | None = None,
        registry_token: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Workspace:
        env = os.environ if environ is None else environ
        path: Path | None = Path(config_path) if config_path else None
        if path is None and env.get("MODELFLEET_CONFIG"):
            path = Path(env["MODELFLEET_CONFIG"])
        if path is None:
            path = find_config()
        config = _read_config(path) if path is not None else WorkspaceConfig()
        overrides = {
            "registry": registry or env.get("MODELFLEET_REGISTRY"),
            "hub": hub or env.get("MODELFLEET_HUB"),
            "fleet": fleet or env.get("MODELFLEET_FLEET"),
            "mqtt_tls_ca_file": env.get("MODELFLEET_MQTT_TLS_CA_FILE"),
            "mqtt_tls_cert_file": env.get("MODELFLEET_MQTT_TLS_CERT_FILE"),
            "mqtt_tls_key_file": env.get("MODELFLEET_MQTT_TLS_KEY_FILE"),
        }
        config = config.model_copy(update={k: v for k, v in overrides.items() if v})
        if env.get("MODELFLEET_MAX_PAYLOAD_BYTES"):
            config = _with_payload_cap(config, env["MODELFLEET_MAX_PAYLOAD_BYTES"])
        credentials = RegistryCredentials(
            username=registry_user or env.get("MODELFLEET_REGISTRY_USERNAME") or None,
            password=registry_password or env.get("MODELFLEET_REGISTRY_PASSWORD") or None,
            token=registry_token or env.get("MODELFLEET_REGISTRY_TOKEN") or None,
        )
        root = path.resolve().parent if path is not None else Path.cwd()
        return cls(config, root=root, credentials=credentials, config_path=path)

    @classmethod
    def create(
        cls,
        directory: Path | str = ".",
        *,
        registry: str = DEFAULT_REGISTRY,
        hub: str = DEFAULT_HUB,
        fleet: str = DEFAULT_FLEET,
        signing_key: str = DEFAULT_KEY,
        force: bool = False,
    ) -> Workspace:
        """Write modelfleet.toml and generate the signing key (an existing key is kept, never replaced)."""
        root = Path(directory).resolve()
        path = root / CONFIG_NAME
        if path.exists() and not force:
            raise ConfigError(f"{path} already exists (use --force to rewrite it)")
        config = WorkspaceConfig(
            registry=normalize_registry_url(registry), hub=hub, fleet=fleet, signing_key=signing_key
        )
        root.mkdir(parents=True, exist_ok=True)
        path.write_text(
            "# modelfleet workspace; every value can be overridden by a flag or MODELFLEET_* variable\n"
            + tomli_w.dumps(config.model_dump(exclude_none=True))
        )
        workspace = cls(config, root=root, config_path=path)
        if not workspace.signing_key_path.exists():
            generate_signing_key(workspace.signing_key_path)
        return workspace

    def public_key_pem(self) -> str:
        return public_key_pem(load_signing_key(self.signing_key_path))

    def registry_client(self) -> RegistryClient:
        return RegistryClient(self.registry_url, self.credentials)

    def __repr__(self) -> str:
        return f"Workspace(fleet={self.fleet!r}, registry={self.registry_url!r}, hub={self.hub!r})"
