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
from pydantic import BaseModel, ConfigDict, ValidationError

from modules import ConfigError
from modules.oci import RegistryClient, RegistryCredentials, normalize_registry_url
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

    @property
    def fleet(self) -> str:
        return self.config.fleet

    @property
    def hub(self) -> str:
        return self.config.hub

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
        }
        config = config.model_copy(update={k: v for k, v in overrides.items() if v})
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
            + tomli_w.dumps(config.model_dump())
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
